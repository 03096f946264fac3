"""refimpl.recurrent against independent computations.

- MaskedBatchNorm1d: torch.nn.BatchNorm1d on the (M, C) matrix of the M real positions
  (forward, buffers over several steps, input and parameter gradients, eval), and on the
  whole (N, C, L) batch when every position is real.
- PerStepBatchNorm1d: one torch.nn.BatchNorm1d per step on the sliced data.
- BNLSTMCell / LNLSTMCell: hand-written cells on torch.nn.BatchNorm1d / torch.nn.LayerNorm.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import refimpl.nn as rnn
from refimpl.recurrent import BNLSTMCell, LNLSTMCell, PerStepBatchNorm1d, lstm_sequence

TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def close(ours, ref, dtype, what, scale=1.0, cond=1.0):
    """max|ours - ref| <= tol * cond * max(|ref|, scale).

    ``scale`` is the size of the terms that cancel into ``ref`` (a batch-norm input
    gradient is a difference of terms of size rstd * |upstream|); ``cond`` is the float32
    condition number (|x| + |mean|) * rstd: an error of eps32 * |mean| in the mean becomes
    eps32 * |mean| * rstd in the normalized value (see tests/conftest.py).
    """
    ours, ref = ours.detach().double(), ref.detach().double()
    assert ours.shape == ref.shape, what
    scale = max(ref.abs().max().item() if ref.numel() else 0.0, scale)
    err = (ours - ref).abs().max().item() if ref.numel() else 0.0
    bound = TOL[dtype] * (cond if dtype == torch.float32 else 1.0) * scale
    assert err <= bound, f"{what}: {err:.3e} > {bound:.3e}"


def conditioning(rows, eps):
    """(max|x| + max|mean|) * max rstd of an (M, C) matrix, and max rstd."""
    rows = rows.double()
    rstd = (rows.var(0, unbiased=False) + eps).rsqrt().max().item()
    return (rows.abs().max().item() + rows.mean(0).abs().max().item()) * rstd + 1, rstd


def real_matrix(x, mask):
    """(M, C) matrix of the real positions, in (sample, time) order."""
    return x.permute(0, 2, 1)[mask]


def scatter_back(rows, mask, channels):
    """Inverse of real_matrix, with zeros at padding: (M, C) -> (N, C, L)."""
    n, steps = mask.shape
    out = rows.new_zeros(n, steps, channels)
    out[mask] = rows
    return out.permute(0, 2, 1)


@st.composite
def masked_cases(draw):
    n = draw(st.integers(1, 6))
    steps = draw(st.integers(1, 7))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["random", "lengths", "all", "one-row"]))
    if kind == "random":
        mask = rng.random((n, steps)) < draw(st.sampled_from([0.3, 0.6, 0.9]))
    elif kind == "lengths":
        lengths = rng.integers(0, steps + 1, size=n)
        mask = np.arange(steps)[None, :] < lengths[:, None]
    elif kind == "all":
        mask = np.ones((n, steps), dtype=bool)
    else:
        mask = np.zeros((n, steps), dtype=bool)
        mask[0] = True
    if mask.sum() < 2:  # training needs two real values per channel (tested separately)
        flat = mask.reshape(-1)
        if flat.size < 2:
            n, steps, mask = 2, steps, np.ones((2, steps), dtype=bool)
        else:
            flat[:2] = True
    return {
        "mask": torch.as_tensor(mask),
        "channels": draw(st.integers(1, 5)),
        "dtype": draw(st.sampled_from([torch.float64, torch.float32])),
        "momentum": draw(st.sampled_from([0.1, None, 0.0, 1.0, 0.37])),
        "affine": draw(st.booleans()),
        "track": draw(st.booleans()),
        "eps": draw(st.sampled_from([1e-5, 1e-3])),
        "offset": draw(st.sampled_from([0.0, 5.0])),
        "seed": int(rng.integers(2**31)),
    }


def make_pair(case):
    opts = dict(
        eps=case["eps"],
        momentum=case["momentum"],
        affine=case["affine"],
        track_running_stats=case["track"],
        dtype=case["dtype"],
    )
    ours = rnn.MaskedBatchNorm1d(case["channels"], **opts)
    ref = torch.nn.BatchNorm1d(case["channels"], **opts)
    if case["affine"]:
        gen = torch.Generator().manual_seed(case["seed"])
        with torch.no_grad():
            for module in (ours, ref):
                module.weight.copy_(torch.randn(case["channels"], generator=gen.manual_seed(1)) + 1)
                module.bias.copy_(torch.randn(case["channels"], generator=gen.manual_seed(2)))
    return ours, ref


@given(masked_cases())
def test_masked_equals_batchnorm_on_real_positions(case):
    """Forward, running buffers (3 steps), gradients and eval equal BatchNorm1d on (M, C)."""
    ours, ref = make_pair(case)
    mask, dtype, channels = case["mask"], case["dtype"], case["channels"]
    gen = torch.Generator().manual_seed(case["seed"])
    n, steps = mask.shape
    for _ in range(3):
        x = torch.randn(n, channels, steps, generator=gen, dtype=dtype) + case["offset"]
        x[~mask.unsqueeze(1).expand_as(x)] = 1e3  # garbage in the padding must not matter
        x.requires_grad_(True)
        upstream = torch.randn(n, channels, steps, generator=gen, dtype=dtype)
        rows = real_matrix(x.detach(), mask).clone().requires_grad_(True)
        cond, rstd = conditioning(rows.detach(), case["eps"])
        w = ours.weight.abs().max().item() if case["affine"] else 1.0
        up = real_matrix(upstream, mask).abs().max().item()
        y = ours(x, mask)
        y_ref = ref(rows)
        close(real_matrix(y, mask), y_ref, dtype, "output at real positions", cond=cond)
        assert (y.detach()[~mask.unsqueeze(1).expand_as(y)] == 0).all(), "padding must be 0"
        y.backward(upstream)
        y_ref.backward(real_matrix(upstream, mask))
        grad_scale = rstd * w * up
        input_grad = scatter_back(rows.grad, mask, channels)
        close(x.grad, input_grad, dtype, "input gradient", scale=grad_scale, cond=cond)
        if case["affine"]:
            m = int(mask.sum())
            close(ours.weight.grad, ref.weight.grad, dtype, "weight grad", scale=m * up, cond=cond)
            close(ours.bias.grad, ref.bias.grad, dtype, "bias gradient", scale=m * up)
            for module in (ours, ref):
                module.weight.grad = module.bias.grad = None
        if case["track"]:
            close(ours.running_mean, ref.running_mean, dtype, "running_mean", cond=cond)
            close(ours.running_var, ref.running_var, dtype, "running_var", cond=cond)
            assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked)
    ours.eval()
    ref.eval()
    x = torch.randn(n, channels, steps, generator=gen, dtype=dtype)
    rows = real_matrix(x, mask)
    if case["track"]:
        cond = 1 + rows.abs().max().item() * (ref.running_var + case["eps"]).rsqrt().max().item()
    else:
        cond = conditioning(rows, case["eps"])[0]
    close(real_matrix(ours(x, mask), mask), ref(rows), dtype, "eval output", cond=cond)


@pytest.mark.parametrize("shape", [(4, 3, 7), (2, 1, 5), (8, 6, 1), (3, 2, 2)])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_all_real_mask_equals_batchnorm_on_the_sequence(shape, momentum):
    """float64, 1e-12 relative: an all-True mask (or no mask) is plain BatchNorm1d on (N, C, L)."""
    torch.manual_seed(0)
    ours = rnn.MaskedBatchNorm1d(shape[1], momentum=momentum, dtype=torch.float64)
    ref = torch.nn.BatchNorm1d(shape[1], momentum=momentum, dtype=torch.float64)
    mask = torch.ones(shape[0], shape[2], dtype=torch.bool)
    for use_mask in (True, False, True):
        x = (torch.randn(shape, dtype=torch.float64) * 3 + 2).requires_grad_(True)
        x_ref = x.detach().clone().requires_grad_(True)
        upstream = torch.randn(shape, dtype=torch.float64)
        y = ours(x, mask if use_mask else None)
        y_ref = ref(x_ref)
        close(y, y_ref, torch.float64, "output")
        y.backward(upstream)
        y_ref.backward(upstream)
        close(x.grad, x_ref.grad, torch.float64, "input gradient")
        close(ours.weight.grad, ref.weight.grad, torch.float64, "weight gradient")
        close(ours.bias.grad, ref.bias.grad, torch.float64, "bias gradient")
        close(ours.running_mean, ref.running_mean, torch.float64, "running_mean")
        close(ours.running_var, ref.running_var, torch.float64, "running_var")
        assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked)
    ours.eval()
    ref.eval()
    x = torch.randn(shape, dtype=torch.float64)
    close(ours(x, mask), ref(x), torch.float64, "eval output")


def test_padding_does_not_move_the_statistics():
    """Zero padding changes plain BN's output at real positions; the masked BN's not at all."""
    torch.manual_seed(1)
    x = torch.randn(4, 3, 5, dtype=torch.float64) + 2
    mask = torch.ones(4, 5, dtype=torch.bool)
    padded = torch.cat([x, torch.zeros(4, 3, 5, dtype=torch.float64)], dim=2)
    padded_mask = torch.cat([mask, torch.zeros(4, 5, dtype=torch.bool)], dim=1)
    masked = rnn.MaskedBatchNorm1d(3, dtype=torch.float64)
    short = masked(x, mask)
    long = masked(padded, padded_mask)[:, :, :5]
    close(long, short, torch.float64, "masked BN ignores padding")
    plain = torch.nn.BatchNorm1d(3, dtype=torch.float64)
    assert (plain(padded)[:, :, :5] - plain(x)).abs().max() > 0.1


def test_padding_gets_zero_gradient_even_if_nan():
    bn = rnn.MaskedBatchNorm1d(2, dtype=torch.float64)
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    x[~mask.unsqueeze(1).expand_as(x)] = float("nan")
    x.requires_grad_(True)
    y = bn(x, mask)
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad[~mask.unsqueeze(1).expand_as(x)] == 0).all()


def test_one_real_value_per_channel_raises_torchs_error():
    bn = rnn.MaskedBatchNorm1d(3)
    x = torch.randn(2, 3, 4)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[1, 2] = True
    with pytest.raises(ValueError) as ours:
        bn(x, mask)
    with pytest.raises(ValueError) as theirs:
        torch.nn.BatchNorm1d(3)(real_matrix(x, mask))
    assert str(ours.value) == str(theirs.value)
    assert "got input size torch.Size([1, 3])" in str(ours.value)
    bn.eval()  # eval with running statistics has no such requirement, as in torch
    assert bn(x, mask).shape == x.shape


def test_no_real_position_gives_zeros_and_keeps_running_stats():
    bn = rnn.MaskedBatchNorm1d(3)
    ref = torch.nn.BatchNorm1d(3)
    y = bn(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.bool))
    ref(torch.randn(0, 3))
    assert (y == 0).all()
    assert torch.equal(bn.running_mean, ref.running_mean)
    assert torch.equal(bn.running_var, ref.running_var)
    assert int(bn.num_batches_tracked) == int(ref.num_batches_tracked) == 1


def test_state_dict_matches_batchnorm1d():
    ours, ref = rnn.MaskedBatchNorm1d(4), torch.nn.BatchNorm1d(4)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert [n for n, _ in ours.named_parameters()] == ["weight", "bias"]
    ref(torch.randn(5, 4) * 2 + 1)
    ours.load_state_dict(ref.state_dict())
    assert torch.equal(ours.running_var, ref.running_var)
    ref.load_state_dict(ours.state_dict())
    no_track = rnn.MaskedBatchNorm1d(4, affine=False, track_running_stats=False)
    assert list(no_track.state_dict()) == []
    assert "MaskedBatchNorm1d(4, eps=1e-05, momentum=0.1" in repr(ours)


def test_eval_without_running_stats_uses_the_batch():
    ours = rnn.MaskedBatchNorm1d(2, track_running_stats=False, dtype=torch.float64).eval()
    ref = torch.nn.BatchNorm1d(2, track_running_stats=False, dtype=torch.float64).eval()
    x = torch.randn(3, 2, 5, dtype=torch.float64)
    mask = torch.rand(3, 5) < 0.7
    mask[0, :2] = True
    close(real_matrix(ours(x, mask), mask), ref(real_matrix(x, mask)), torch.float64, "eval")


@pytest.mark.parametrize(
    "x, mask, error, words",
    [
        (torch.randn(4, 3), torch.ones(4, 3, dtype=torch.bool), ValueError, "3D"),
        (torch.randn(2, 4, 3, 1), torch.ones(2, 3, dtype=torch.bool), ValueError, "4D"),
        (torch.randn(2, 5, 3), torch.ones(2, 3, dtype=torch.bool), RuntimeError, "3 channels"),
        (torch.randn(2, 5, 3), torch.ones(2, 3, dtype=torch.bool), ValueError, "3 channels"),
        (
            torch.randn(2, 3, 4),
            torch.ones(2, 5, dtype=torch.bool),
            ValueError,
            "mask must have shape",
        ),
        (torch.randn(2, 3, 4), torch.ones(4, 2, dtype=torch.bool), ValueError, "(N, L)"),
        (torch.randn(2, 3, 4), torch.ones(2, 4), TypeError, "torch.bool"),
        (torch.randn(2, 3, 4), torch.ones(2, 4, dtype=torch.int64), ValueError, "torch.bool"),
    ],
)
def test_bad_input_gets_a_clear_error(x, mask, error, words):
    with pytest.raises(error, match=None) as info:
        rnn.MaskedBatchNorm1d(3)(x, mask)
    assert words in str(info.value)


# --------------------------------------------------------------------------- per step


@given(
    n=st.integers(2, 6),
    steps=st.integers(1, 6),
    channels=st.integers(1, 4),
    momentum=st.sampled_from([0.1, None, 0.5]),
    seed=st.integers(0, 2**31),
)
def test_per_step_equals_batchnorm_per_slice(n, steps, channels, momentum, seed):
    """Step t of the output, buffers and gradients equal a BatchNorm1d of its own on x[:, :, t]."""
    gen = torch.Generator().manual_seed(seed)
    ours = PerStepBatchNorm1d(channels, steps, momentum=momentum, dtype=torch.float64)
    refs = [
        torch.nn.BatchNorm1d(channels, momentum=momentum, dtype=torch.float64) for _ in range(steps)
    ]
    with torch.no_grad():
        ours.weight.copy_(torch.rand(channels, generator=gen, dtype=torch.float64) + 0.5)
        for ref in refs:
            ref.weight.copy_(ours.weight)
    # Variable lengths, every step reached by two sequences or none.
    lengths = torch.randint(0, steps + 1, (n,), generator=gen)
    lengths[:2] = steps
    mask = torch.arange(steps) < lengths[:, None]
    for _ in range(2):
        x = torch.randn(n, channels, steps, generator=gen, dtype=torch.float64).requires_grad_(True)
        y = ours(x, mask)
        y.sum().backward()
        for t, ref in enumerate(refs):
            alive = mask[:, t]
            xt = x.detach()[:, :, t][alive].clone().requires_grad_(True)
            yt = ref(xt)
            close(y[:, :, t][alive], yt, torch.float64, f"step {t} output")
            assert (y.detach()[:, :, t][~alive] == 0).all()
            yt.sum().backward()
            close(x.grad[:, :, t][alive], xt.grad, torch.float64, f"step {t} input gradient")
            close(ours.running_mean[t], ref.running_mean, torch.float64, f"step {t} running_mean")
            close(ours.running_var[t], ref.running_var, torch.float64, f"step {t} running_var")
            assert int(ours.num_batches_tracked[t]) == int(ref.num_batches_tracked)
        weight_grad = sum(ref.weight.grad for ref in refs)
        close(ours.weight.grad, weight_grad, torch.float64, "shared weight gradient")
        ours.weight.grad = None
        for ref in refs:
            ref.weight.grad = None
    ours.eval()
    for ref in refs:
        ref.eval()
    x = torch.randn(n, channels, steps + 3, dtype=torch.float64, generator=gen)
    y = ours(x)
    for t in range(steps + 3):
        ref = refs[min(t, steps - 1)]  # reuse_last: past T_max, T_max's statistics
        close(y[:, :, t], ref(x[:, :, t]), torch.float64, f"eval step {t}")


def test_beyond_max_error_policy():
    bn = PerStepBatchNorm1d(2, max_steps=3, beyond_max="error")
    bn(torch.randn(4, 2, 3))
    with pytest.raises(IndexError, match="time step 3 has no statistics"):
        bn(torch.randn(4, 2, 4))
    bn.eval()
    with pytest.raises(IndexError, match="max_steps"):
        bn(torch.randn(4, 2, 5))
    with pytest.raises(ValueError, match="beyond_max"):
        PerStepBatchNorm1d(2, 3, beyond_max="extrapolate")


def test_reuse_last_in_training_folds_late_steps_into_the_last_slot():
    """max_steps=1: one running average over every step (one BN reused in a loop)."""
    torch.manual_seed(3)
    ours = PerStepBatchNorm1d(2, max_steps=1, dtype=torch.float64)
    ref = torch.nn.BatchNorm1d(2, dtype=torch.float64)
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    y = ours(x)
    for t in range(4):
        close(y[:, :, t], ref(x[:, :, t]), torch.float64, f"step {t}")
    close(ours.running_mean[0], ref.running_mean, torch.float64, "running_mean")
    close(ours.running_var[0], ref.running_var, torch.float64, "running_var")


def test_per_step_one_sequence_alive_raises():
    bn = PerStepBatchNorm1d(2, max_steps=3)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    with pytest.raises(ValueError, match=r"got input size torch.Size\(\[1, 2\]\)"):
        bn(torch.randn(2, 2, 3), mask)


# --------------------------------------------------------------------------- cells


def hand_bn_lstm(cell, xs, mask):
    """Cooijmans et al.'s equations with torch.nn.BatchNorm1d, one per step and role."""
    hidden = cell.hidden_size
    steps = xs.size(1)

    def bns(features, weight, bias):
        out = []
        for _ in range(steps):
            bn = torch.nn.BatchNorm1d(features, dtype=xs.dtype)
            with torch.no_grad():
                bn.weight.copy_(weight)
                bn.bias.copy_(bias)
            out.append(bn)
        return out

    bn_x = bns(4 * hidden, cell.bn_ih.weight, torch.zeros(4 * hidden))
    bn_h = bns(4 * hidden, cell.bn_hh.weight, torch.zeros(4 * hidden))
    bn_c = bns(hidden, cell.bn_c.weight, cell.bn_c.bias)
    n = xs.size(0)
    h = xs.new_zeros(n, hidden)
    c = xs.new_zeros(n, hidden)
    for t in range(steps):
        alive = mask[:, t]
        ha, ca, xa = h[alive], c[alive], xs[alive, t]
        gates = bn_h[t](ha @ cell.weight_hh.T) + bn_x[t](xa @ cell.weight_ih.T) + cell.bias
        i, f, g, o = gates.chunk(4, dim=1)
        c_new = torch.sigmoid(f) * ca + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(bn_c[t](c_new))
        h = h.clone()
        c = c.clone()
        h[alive] = h_new
        c[alive] = c_new
    return h


def test_bn_lstm_cell_equals_hand_written_cell():
    torch.manual_seed(4)
    cell = BNLSTMCell(3, 5, max_steps=6, gamma_init=0.1).double()
    xs = torch.randn(7, 6, 3, dtype=torch.float64)
    lengths = torch.tensor([6, 6, 5, 3, 2, 6, 4])
    mask = torch.arange(6) < lengths[:, None]
    h = lstm_sequence(cell, xs, mask)
    h_ref = hand_bn_lstm(cell, xs, mask)
    close(h, h_ref, torch.float64, "BN-LSTM final state")
    grad = torch.autograd.grad(h.sum(), cell.weight_hh)[0]
    grad_ref = torch.autograd.grad(hand_bn_lstm(cell, xs, mask).sum(), cell.weight_hh)[0]
    close(grad, grad_ref, torch.float64, "BN-LSTM weight_hh gradient")
    assert torch.allclose(cell.bn_ih.weight, torch.full((20,), 0.1, dtype=torch.float64))


def test_ln_lstm_cell_equals_hand_written_cell_and_is_batch_independent():
    torch.manual_seed(5)
    cell = LNLSTMCell(3, 4).double()
    with torch.no_grad():
        for p in cell.parameters():
            p.add_(0.1 * torch.randn_like(p))
    xs = torch.randn(5, 6, 3, dtype=torch.float64)
    ln_x, ln_h, ln_c = (torch.nn.LayerNorm(k, dtype=torch.float64) for k in (16, 16, 4))
    with torch.no_grad():
        for ln, name in ((ln_x, "ih"), (ln_h, "hh"), (ln_c, "c")):
            ln.weight.copy_(getattr(cell, f"ln_{name}_weight"))
            ln.bias.copy_(getattr(cell, f"ln_{name}_bias"))
    h = c = xs.new_zeros(5, 4)
    for t in range(6):
        gates = ln_h(h @ cell.weight_hh.T) + ln_x(xs[:, t] @ cell.weight_ih.T) + cell.bias
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(ln_c(c))
    close(lstm_sequence(cell, xs), h, torch.float64, "LN-LSTM final state")
    # One sample alone, or in eval mode: the same numbers (no batch statistics).
    alone = lstm_sequence(cell.eval(), xs[2:3])
    close(alone, h[2:3], torch.float64, "LN-LSTM sample alone, eval")
