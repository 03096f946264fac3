"""Weight standardization and FRN + TLU against independent naive formulas.

torch has none of these, so the reference is written here from the papers' equations,
element by element (loops, no shared helper with refimpl), and the gradients are checked
against autograd through that naive version and against finite differences (gradcheck,
float64). Bad input must fail the way torch's own layers fail.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from refimpl import nn as rnn
from refimpl.nn import (
    TLU,
    FilterResponseNorm2d,
    WSConv2d,
    filter_response_norm,
    tlu,
    weight_standardize,
)

# ----------------------------------------------------------------- naive references


def naive_ws(weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qiao et al.'s equation, filter by filter: mean and biased variance of its values."""
    rows = []
    for w in weight:
        flat = w.reshape(-1)
        m = flat.numel()
        mean = sum(flat) / m
        var = sum((v - mean) ** 2 for v in flat) / m
        rows.append((w - mean) / torch.sqrt(var + eps))
    return torch.stack(rows)


def naive_frn(x, gamma, beta, eps):
    """Singh & Krishnan's equation, sample by sample and channel by channel."""
    out = torch.empty_like(x)
    n, c, h, w = x.shape
    for i in range(n):
        for j in range(c):
            nu2 = sum(x[i, j, a, b] ** 2 for a in range(h) for b in range(w)) / (h * w)
            e = eps if isinstance(eps, float) else eps[j]
            out[i, j] = gamma[j] * x[i, j] / torch.sqrt(nu2 + e) + beta[j]
    return out


def _double(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


# ----------------------------------------------------------------- weight standardization


@pytest.mark.parametrize("shape", [(4, 3, 3, 3), (2, 5), (6, 2, 1, 3)])
def test_ws_matches_the_naive_formula(shape):
    w = _double(*shape) * 0.3 + 0.1
    ours = weight_standardize(w, eps=1e-5)
    torch.testing.assert_close(ours, naive_ws(w, 1e-5), rtol=1e-12, atol=1e-12)


def test_ws_filters_have_zero_mean_and_unit_std():
    w = _double(8, 4, 3, 3) * 5 + 2
    s = weight_standardize(w, eps=0.0)
    flat = s.reshape(8, -1)
    assert flat.mean(dim=1).abs().max() < 1e-12
    assert (flat.std(dim=1, unbiased=False) - 1).abs().max() < 1e-12


def test_ws_on_numpy_equals_torch():
    w = _double(4, 2, 3, 3)
    ours = weight_standardize(w.numpy(), eps=1e-5)
    np.testing.assert_allclose(ours, weight_standardize(w, 1e-5).numpy(), rtol=1e-13)


def test_ws_gradient_matches_autograd_through_the_naive_version():
    w = _double(3, 2, 2, 2).requires_grad_()
    g = _double(3, 2, 2, 2, seed=1)
    (ours,) = torch.autograd.grad((weight_standardize(w, 1e-5) * g).sum(), w)
    (ref,) = torch.autograd.grad((naive_ws(w, 1e-5) * g).sum(), w)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_ws_gradcheck():
    w = _double(3, 2, 2, 2).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: weight_standardize(v, 1e-5), (w,))


def test_ws_gradient_is_orthogonal_to_mean_and_scale():
    """The output does not change when a filter is shifted or scaled (eps = 0), so the
    gradient of any loss has zero sum and zero inner product with the filter (per filter)."""
    w = _double(4, 3, 3, 3).requires_grad_()
    (grad,) = torch.autograd.grad((weight_standardize(w, 0.0) * _double(4, 3, 3, 3, seed=1)).sum(),
                                  w)
    assert grad.sum(dim=(1, 2, 3)).abs().max() < 1e-10
    assert (grad * w).sum(dim=(1, 2, 3)).abs().max() < 1e-10


def test_wsconv_equals_conv2d_with_the_standardized_weight():
    torch.manual_seed(0)
    conv = WSConv2d(3, 4, 3, padding=1, groups=1, dtype=torch.float64)
    x = _double(2, 3, 5, 5)
    ref = torch.nn.functional.conv2d(x, naive_ws(conv.weight, conv.eps), conv.bias, padding=1)
    torch.testing.assert_close(conv(x), ref, rtol=1e-12, atol=1e-12)
    assert sorted(conv.state_dict()) == sorted(torch.nn.Conv2d(3, 4, 3).state_dict())


def test_wsconv_grouped_standardizes_each_output_filter():
    conv = WSConv2d(4, 6, 3, groups=2, dtype=torch.float64)
    w = conv.standardized_weight()
    assert w.shape == (6, 2, 3, 3)
    torch.testing.assert_close(w, naive_ws(conv.weight, conv.eps), rtol=1e-12, atol=1e-12)


def test_wsconv_gradcheck():
    torch.manual_seed(0)
    conv = WSConv2d(2, 3, 2, dtype=torch.float64)
    x = _double(2, 2, 3, 3).requires_grad_()
    assert torch.autograd.gradcheck(lambda v, w: torch.nn.functional.conv2d(
        v, weight_standardize(w, conv.eps), conv.bias), (x, conv.weight))


@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 4, 5, 5)])
def test_wsconv_fails_like_conv2d(shape):
    """Wrong rank and wrong channel count: Conv2d's own errors, type and message."""
    torch.manual_seed(0)
    ours, theirs = WSConv2d(3, 4, 3), torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(*shape)
    with pytest.raises(RuntimeError) as mine:
        ours(x)
    with pytest.raises(RuntimeError) as ref:
        theirs(x)
    assert str(mine.value) == str(ref.value)


def test_ws_bad_input():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        weight_standardize(torch.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        WSConv2d(1, 1, 1, eps=-1.0)


# ----------------------------------------------------------------- FRN and TLU


@pytest.mark.parametrize("learnable_eps", [False, True])
def test_frn_matches_the_naive_formula(learnable_eps):
    frn = FilterResponseNorm2d(3, learnable_eps=learnable_eps, dtype=torch.float64)
    with torch.no_grad():
        frn.weight.copy_(torch.tensor([1.0, -0.5, 2.0]))
        frn.bias.copy_(torch.tensor([0.0, 0.3, -1.0]))
        if learnable_eps:
            frn.eps_l.copy_(torch.tensor([0.1, -0.2, 0.0]))  # |eps_l| counts
    x = _double(2, 3, 4, 3) * 2 + 1
    eps = frn.eps if not learnable_eps else frn.eps + frn.eps_l.detach().abs()
    ref = naive_frn(x, frn.weight.detach(), frn.bias.detach(), eps)
    torch.testing.assert_close(frn(x), ref, rtol=1e-12, atol=1e-12)


def test_frn_on_numpy_equals_torch():
    x, gamma, beta = _double(2, 3, 4, 4), _double(3, seed=1), _double(3, seed=2)
    ours = filter_response_norm(x.numpy(), gamma.numpy(), beta.numpy(), 1e-6)
    np.testing.assert_allclose(ours, filter_response_norm(x, gamma, beta, 1e-6).numpy(),
                               rtol=1e-13)


def test_frn_has_no_batch_dependence_and_no_mean_subtraction():
    frn = FilterResponseNorm2d(3, dtype=torch.float64)
    x = _double(4, 3, 5, 5) + 3.0
    alone = torch.cat([frn(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(frn(x), alone, rtol=0, atol=0)  # each sample by itself
    assert frn(x).mean() > 0.5  # a positive input stays positive: nothing is centred
    frn.eval()
    torch.testing.assert_close(frn(x), alone, rtol=0, atol=0)  # eval is the same map


def test_frn_gradient_matches_autograd_and_gradcheck():
    x = _double(2, 2, 3, 3).requires_grad_()
    gamma = _double(2, seed=1).requires_grad_()
    beta = _double(2, seed=2).requires_grad_()
    eps_l = torch.tensor([0.05, 0.2], dtype=torch.float64, requires_grad=True)
    g = _double(2, 2, 3, 3, seed=3)

    def ours(x, gamma, beta, eps_l):
        return filter_response_norm(x, gamma, beta, 1e-6 + eps_l.abs())

    def ref(x, gamma, beta, eps_l):
        return naive_frn(x, gamma, beta, 1e-6 + eps_l.abs())

    inputs = (x, gamma, beta, eps_l)
    mine = torch.autograd.grad((ours(*inputs) * g).sum(), inputs)
    theirs = torch.autograd.grad((ref(*inputs) * g).sum(), inputs)
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(ours, inputs)


def test_frn_is_invariant_to_the_scale_of_its_input_up_to_eps():
    """x and 1000 x give the same output up to eps / nu^2 (about 1e-6 here)."""
    frn = FilterResponseNorm2d(3, dtype=torch.float64)
    x = _double(2, 3, 4, 4)
    torch.testing.assert_close(frn(x * 1e3), frn(x), rtol=1e-5, atol=1e-5)
    exact = FilterResponseNorm2d(3, eps=1e-300, dtype=torch.float64)
    torch.testing.assert_close(exact(x * 1e3), exact(x), rtol=1e-13, atol=1e-13)


def test_frn_on_one_position_is_nearly_sign_without_learned_eps():
    """nu^2 of a 1 x 1 map is x^2 itself: the output is x / sqrt(x^2 + eps), about +-1."""
    x = torch.tensor([[[[0.3]], [[-2.0]]]], dtype=torch.float64)
    y = FilterResponseNorm2d(2, dtype=torch.float64)(x).flatten()
    assert torch.allclose(y, torch.tensor([1.0, -1.0], dtype=torch.float64), atol=1e-4)


def test_tlu_matches_max_and_its_gradient():
    x = _double(3, 4, 2, 2).requires_grad_()
    tau = _double(4, seed=1).requires_grad_()
    y = tlu(x, tau)
    ref = torch.maximum(x, tau.reshape(1, 4, 1, 1))
    torch.testing.assert_close(y, ref, rtol=0, atol=0)
    g = _double(3, 4, 2, 2, seed=2)
    grad_x, grad_tau = torch.autograd.grad((y * g).sum(), (x, tau))
    above = x.detach() > tau.detach().reshape(1, 4, 1, 1)
    torch.testing.assert_close(grad_x, g * above, rtol=0, atol=0)
    torch.testing.assert_close(grad_tau, (g * ~above).sum(dim=(0, 2, 3)), rtol=1e-12, atol=0)


def test_tlu_at_zero_is_relu():
    x = _double(5, 3)
    torch.testing.assert_close(TLU(3, dtype=torch.float64)(x), torch.relu(x), rtol=0, atol=0)


def test_frn_and_tlu_state_dicts_and_repr():
    frn = FilterResponseNorm2d(4)
    assert sorted(frn.state_dict()) == ["bias", "weight"]
    assert repr(frn) == "FilterResponseNorm2d(4, eps=1e-06, learnable_eps=False)"
    assert sorted(TLU(4).state_dict()) == ["tau"] and repr(TLU(4)) == "TLU(4)"
    assert rnn.FilterResponseNorm2d is FilterResponseNorm2d


# ----------------------------------------------------------------- bad input


def _message(callable_):
    with pytest.raises(Exception) as info:
        callable_()
    return type(info.value), str(info.value)


def test_frn_wrong_rank_fails_like_batchnorm2d():
    x = torch.randn(2, 3, 4)
    assert _message(lambda: FilterResponseNorm2d(3)(x)) == _message(
        lambda: torch.nn.BatchNorm2d(3)(x))


def test_frn_wrong_channel_count_fails_like_group_norm():
    """torch's per-channel-parameter message (group norm's, the norm without running
    statistics): RuntimeError naming the weight's shape and the input's."""
    x = torch.randn(2, 4, 3, 3)
    ours = _message(lambda: FilterResponseNorm2d(3)(x))
    theirs = _message(lambda: torch.nn.functional.group_norm(x, 1, torch.ones(3)))
    assert ours == theirs


def test_tlu_wrong_channel_count_and_rank():
    kind, text = _message(lambda: TLU(3)(torch.randn(2, 4, 2)))
    assert kind is RuntimeError and "Expected tau to be a vector of size equal" in text
    kind, _ = _message(lambda: TLU(3)(torch.randn(3)))
    assert kind is RuntimeError


def test_frn_bad_eps_and_rank():
    with pytest.raises(ValueError, match="positive"):
        FilterResponseNorm2d(3, eps=0.0)
    with pytest.raises(ValueError, match="positive"):
        filter_response_norm(torch.randn(2, 3, 4), eps=-1e-6)
    with pytest.raises(RuntimeError, match="at least 3 dimensions"):
        filter_response_norm(torch.randn(2, 3))


def test_frn_float32_close_to_float64():
    x = _double(2, 3, 4, 4)
    ref = filter_response_norm(x, eps=1e-6)
    ours = filter_response_norm(x.float(), eps=1e-6).double()
    assert (ours - ref).abs().max() < 8 * math.sqrt(16) * torch.finfo(torch.float32).eps * 4
