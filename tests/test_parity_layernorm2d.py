"""refimpl's channels-last layer norm on NCHW (``LayerNorm2d``) against torch.

torch.nn has no such class, so the reference is what ConvNeXt, timm and torchvision do:
``F.layer_norm`` on the channels-last view, ``x.permute(0, 2, 3, 1)``, and back. The
cases, tolerances and comparisons are those of the other parity tests (tests/conftest.py):
forward, autograd backward, the closed-form backward, the NumPy path. Then what it is
not (``GroupNorm(1, C)``), and the errors for bad input.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import refimpl.nn as rnn
from refimpl import backward, core, functional
from tests.conftest import Stats, assert_close, compare_step, randomize_, sample_step


class TorchLayerNorm2d(torch.nn.LayerNorm):
    """The reference: torch's own layer norm kernel on the channels-last view (timm's and
    torchvision's ``LayerNorm2d``)."""

    def forward(self, x):
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                         self.eps)
        return y.permute(0, 3, 1, 2)


def torch_layer_norm_2d(x, weight=None, bias=None, eps=1e-6):
    """The functional reference, for any (N, C, *) input."""
    return F.layer_norm(x.movedim(1, -1), (x.shape[1],), weight, bias, eps).movedim(-1, 1)


@st.composite
def image_cases(draw):
    return {
        "shape": (
            draw(st.integers(1, 6)),
            draw(st.integers(1, 16)),
            draw(st.integers(1, 6)),
            draw(st.integers(1, 6)),
        ),
        "dtype": draw(st.sampled_from([torch.float64, torch.float32])),
        "affine": draw(st.booleans()),
        "bias": draw(st.booleans()),
        "eps": draw(st.sampled_from([1e-6, 1e-5, 1e-3, 0.1])),
        "offset": draw(st.sampled_from([0.0, 3.0, -10.0])),
        "scale": draw(st.sampled_from([1.0, 0.1, 5.0])),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


@given(image_cases())
def test_layer_norm_2d_matches_torch_on_the_permuted_input(case):
    rng = np.random.default_rng(case["seed"])
    shape, dtype, eps = case["shape"], case["dtype"], case["eps"]
    kwargs = dict(eps=eps, elementwise_affine=case["affine"], bias=case["bias"], dtype=dtype)
    theirs = TorchLayerNorm2d(shape[1], **kwargs)
    randomize_(theirs, rng, dtype)
    ours = rnn.LayerNorm2d(shape[1], **kwargs)
    ours.load_state_dict(theirs.state_dict())

    def closed_form(grad_output, x):
        weight = None if theirs.weight is None else theirs.weight.detach()
        return backward.layer_norm_2d_backward(grad_output, x, weight, eps)

    for step in range(2):
        x, grad_output = sample_step(rng, shape, dtype, case)
        stats = Stats(x, shape, (1,), (1,), eps=eps)
        compare_step(f"step {step}", theirs, ours, x, grad_output, stats, closed_form)


@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 7), (2, 3, 4, 5), (2, 3, 2, 3, 4)])
def test_the_functional_matches_torch_for_any_rank_and_on_numpy(shape):
    rng = np.random.default_rng(len(shape))
    x = 2.0 + 3.0 * rng.standard_normal(shape)
    w, b = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    ref = torch_layer_norm_2d(torch.tensor(x), torch.tensor(w), torch.tensor(b), 1e-6).numpy()
    ours = functional.layer_norm_2d(x, w, b)  # NumPy in, NumPy out
    assert isinstance(ours, np.ndarray)
    assert_close("numpy", ours, ref, 1e-12 * (np.abs(ref).max() + 1))
    ours_torch = functional.layer_norm_2d(torch.tensor(x), torch.tensor(w), torch.tensor(b))
    assert_close("torch", ours_torch, ref, 1e-12 * (np.abs(ref).max() + 1))


@pytest.mark.parametrize("dtype, ulps", [(torch.float16, 2 ** -10), (torch.bfloat16, 2 ** -7)])
def test_half_precision_is_computed_in_float32_as_torch_does(dtype, ulps):
    """float16 / bfloat16: statistics in float32, one rounding at the end, as torch's
    kernel does; so the two differ by at most one rounding of the output."""
    x = (3.0 + torch.randn(4, 8, 5, 5)).to(dtype)
    w, b = torch.randn(8).to(dtype), torch.randn(8).to(dtype)
    ours, ref = functional.layer_norm_2d(x, w, b), torch_layer_norm_2d(x, w, b)
    assert ours.dtype == dtype
    assert_close("half", ours, ref, 2 * ulps * np.abs(ref.float().numpy()) + 1e-6)


def test_state_dict_and_repr_are_torch_layer_norms():
    theirs, ours = torch.nn.LayerNorm(6, eps=1e-6), rnn.LayerNorm2d(6)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    assert ours.extra_repr() == theirs.extra_repr()
    ours.load_state_dict(theirs.state_dict())
    assert isinstance(ours, rnn.LayerNorm) and ours.eps == 1e-6  # ConvNeXt's default


def test_one_statistic_per_pixel_over_the_channels():
    shape = (2, 3, 4, 5)
    labels = core.statistic_groups("layer2d", shape)
    n, c, h, w = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    np.testing.assert_array_equal(labels, (n * 4 + h) * 5 + w)
    y = functional.layer_norm_2d(np.random.default_rng(1).standard_normal(shape) + 4, eps=0.0)
    for label in range(labels.max() + 1):
        values = y[labels == label]
        assert values.size == 3 and abs(values.mean()) < 1e-12 and abs(values.var() - 1) < 1e-9


def test_it_is_not_group_norm_with_one_group():
    """GroupNorm(1, C) normalizes each sample over (C, H, W): one statistic per sample,
    where LayerNorm2d has one per pixel. They agree only when every pixel of a sample has
    the same channel mean and variance."""
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64) + torch.randn(2, 1, 3, 3, dtype=torch.float64)
    ln2d, gn = rnn.LayerNorm2d(4, eps=1e-6).double(), torch.nn.GroupNorm(1, 4, eps=1e-6).double()
    with torch.no_grad():
        assert (ln2d(x) - gn(x)).abs().max() > 0.1
        # the same for an image whose pixels all share their statistics
        pixel = torch.randn(1, 4, 1, 1, dtype=torch.float64)
        flat = pixel.expand(2, 4, 3, 3).clone()
        assert_close("constant pixels", ln2d(flat), gn(flat), 1e-12)
    # ... and GroupNorm(1, C) is layer norm over (C, H, W), without its per-element gain
    assert_close(
        "GN(1, C) = LN([C, H, W])",
        functional.group_norm(x, 1, eps=1e-6),
        F.layer_norm(x, x.shape[1:], eps=1e-6),
        1e-12,
    )


def _raises(fn):
    try:
        fn()
    except Exception as error:  # noqa: BLE001 - the type is what is compared
        return type(error), str(error)
    return None, None


@pytest.mark.parametrize(
    "make",
    [
        lambda m: m(torch.randn(4)),  # rank 1: no channel dim
        lambda m: m(torch.randn(3, 4), torch.randn(5)),  # weight of the wrong size
        lambda m: m(torch.randn(3, 4, 2), None, torch.randn(3)),  # bias of the wrong size
    ],
    ids=["rank 1", "weight size", "bias size"],
)
def test_functional_errors_are_torch_s_on_the_permuted_input(make):
    theirs = _raises(lambda: make(torch_layer_norm_2d))
    assert theirs[0] is not None
    assert _raises(lambda: make(functional.layer_norm_2d)) == theirs
    numpy_version = _raises(
        lambda: make(lambda x, *p: functional.layer_norm_2d(
            x.numpy(), *[None if a is None else a.numpy() for a in p]))
    )
    assert numpy_version == theirs


def test_module_errors():
    ours, reference = rnn.LayerNorm2d(3), TorchLayerNorm2d(3)
    # wrong rank: torch's 2d modules' ValueError (the reference fails inside permute)
    expected = _raises(lambda: torch.nn.BatchNorm2d(3)(torch.randn(2, 3, 4)))
    assert expected[0] is ValueError
    assert _raises(lambda: ours(torch.randn(2, 3, 4))) == expected
    assert _raises(lambda: reference(torch.randn(2, 3, 4)))[0] is RuntimeError
    # wrong channel count: the same type as the reference's, naming the NCHW shape
    kind, message = _raises(lambda: ours(torch.randn(2, 5, 4, 4)))
    assert kind is _raises(lambda: reference(torch.randn(2, 5, 4, 4)))[0] is RuntimeError
    assert message == (
        "Given normalized_shape=[3], expected input with shape [N, 3, H, W], "
        "but got input of size[2, 5, 4, 4]"
    )
    # without affine parameters the channel count is still checked
    no_affine = rnn.LayerNorm2d(3, elementwise_affine=False)
    assert _raises(lambda: no_affine(torch.randn(2, 5, 4, 4)))[0] is RuntimeError
