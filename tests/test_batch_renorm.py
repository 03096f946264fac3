"""Batch renorm (refimpl.batch_renorm, refimpl.nn.batchrenorm) against independent formulas.

torch has no batch renorm, so the references are: a naive per-channel NumPy loop of the
paper's Algorithm 1 (forward and running statistics), autograd through a naive torch
version with r and d detached, finite differences of the function with r and d frozen
(backward), and torch's batch norm where batch renorm must equal it (r_max = 1, d_max = 0
in training; eval mode always; the errors for bad input).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import refimpl.nn as rnn
from refimpl import backward, functional
from refimpl.batch_renorm import (
    RenormSchedule,
    batch_renorm,
    batch_renorm_backward,
    renorm_corrections,
)
from refimpl.check import max_relative_error
from refimpl.nn.batchrenorm import BatchRenorm1d, BatchRenorm2d, convert_batch_renorm

TOL = 1e-12
SHAPES = [(6, 3), (4, 3, 5), (3, 2, 4, 3)]


def data(shape, seed=0, scale=1.0, shift=0.0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape) * scale + shift


def naive_forward(x, running_mean, running_var, weight, bias, momentum, eps, r_max, d_max):
    """Algorithm 1 of the paper, one channel at a time, in plain NumPy loops (with the
    running variance kept as batch norm keeps it). Returns y, new mean, new var, r, d."""
    x = np.asarray(x, dtype=np.float64)
    y = np.empty_like(x)
    new_mean, new_var = running_mean.copy(), running_var.copy()
    rs, ds = [], []
    for c in range(x.shape[1]):
        values = x[:, c].reshape(-1)
        m = values.size
        mu_b = sum(values) / m
        var_b = sum((v - mu_b) ** 2 for v in values) / m
        sigma_b = (var_b + eps) ** 0.5
        sigma = (running_var[c] + eps) ** 0.5
        r = min(max(sigma_b / sigma, 1 / r_max), r_max)
        d = min(max((mu_b - running_mean[c]) / sigma, -d_max), d_max)
        y[:, c] = weight[c] * ((x[:, c] - mu_b) / sigma_b * r + d) + bias[c]
        new_mean[c] = (1 - momentum) * running_mean[c] + momentum * mu_b
        new_var[c] = (1 - momentum) * running_var[c] + momentum * var_b * m / (m - 1)
        rs.append(r)
        ds.append(d)
    return y, new_mean, new_var, np.array(rs), np.array(ds)


def naive_torch(x, running_mean, running_var, weight, bias, eps, r_max, d_max, detach=True):
    """The same forward in torch ops (for autograd), with r and d detached or not."""
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    mu_b = x.mean(dim=dims, keepdim=True)
    sigma_b = torch.sqrt(((x - mu_b) ** 2).mean(dim=dims, keepdim=True) + eps)
    sigma = torch.sqrt(running_var.reshape(shape) + eps)
    r = torch.clamp(sigma_b / sigma, 1 / r_max, r_max)
    d = torch.clamp((mu_b - running_mean.reshape(shape)) / sigma, -d_max, d_max)
    if detach:
        r, d = r.detach(), d.detach()
    return weight.reshape(shape) * ((x - mu_b) / sigma_b * r + d) + bias.reshape(shape)


def stats_for(shape, seed=1, spread=1.0):
    """Running statistics near the data's (mean 0.5, std 2): clips bite with small limits."""
    rng = np.random.default_rng(seed)
    c = shape[1]
    return 0.5 + spread * rng.standard_normal(c), 4.0 * np.exp(spread * rng.standard_normal(c))


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("limits", [(3.0, 5.0), (1.2, 0.1), (1.0, 0.0)])
@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_forward_and_running_stats_match_the_naive_formula(shape, limits, library):
    r_max, d_max = limits
    x = data(shape, scale=2.0, shift=0.5)
    mean0, var0 = stats_for(shape)
    rng = np.random.default_rng(2)
    w, b = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    want, want_mean, want_var, _, _ = naive_forward(x, mean0, var0, w, b, 0.1, 1e-5, *limits)
    arrays = [x, mean0.copy(), var0.copy(), w, b]
    if library == "torch":
        arrays = [torch.tensor(a) for a in arrays]
    y = batch_renorm(
        *arrays[:3],
        arrays[3],
        arrays[4],
        training=True,
        momentum=0.1,
        eps=1e-5,
        r_max=r_max,
        d_max=d_max,
    )
    assert max_relative_error(y, want) <= TOL
    assert max_relative_error(arrays[1], want_mean) <= TOL
    assert max_relative_error(arrays[2], want_var) <= TOL


def test_the_clips_bite_in_the_parametrized_cases():
    """The (1.2, 0.1) case above is not vacuous: r and d are clipped in some channels."""
    x = data((6, 3), scale=2.0, shift=0.5)
    mean0, var0 = stats_for((6, 3))
    *_, r, d = naive_forward(x, mean0, var0, np.ones(3), np.zeros(3), 0.1, 1e-5, 1.2, 0.1)
    assert np.any(np.isclose(np.abs(np.log(r)), np.log(1.2)))
    assert np.any(np.isclose(np.abs(d), 0.1))
    *_, r, d = naive_forward(x, mean0, var0, np.ones(3), np.zeros(3), 0.1, 1e-5, 3.0, 5.0)
    assert np.all(np.abs(np.log(r)) < np.log(3.0)) and np.all(np.abs(d) < 5.0)


def test_corrections_are_the_clipped_ratios():
    r, d = renorm_corrections(
        np.array([2.0, -9.0]),
        np.array([0.25, 16.0]),
        np.zeros(2),
        np.ones(2),
        eps=0.0,
        r_max=3.0,
        d_max=5.0,
    )
    assert r.tolist() == [0.5, 3.0] and d.tolist() == [2.0, -5.0]


def test_unclipped_training_output_is_the_eval_output():
    x = torch.tensor(data((5, 3, 4), scale=2.0, shift=0.5))
    mean0, var0 = (torch.tensor(a) for a in stats_for((5, 3, 4), spread=0.3))
    r, d = renorm_corrections(
        *functional_moments(x), mean0.reshape(1, -1, 1), var0.reshape(1, -1, 1), 1e-5, 3.0, 5.0
    )
    assert bool((r < 3.0).all() and (r > 1 / 3.0).all() and (d.abs() < 5.0).all())
    train = batch_renorm(x, mean0.clone(), var0.clone(), training=True)
    evaluated = batch_renorm(x, mean0, var0, training=False)
    assert max_relative_error(train, evaluated) <= TOL


def functional_moments(x):
    from refimpl import core

    return core.moments(x, (0, *range(2, x.ndim)))


@pytest.mark.parametrize("shape", SHAPES)
def test_limits_one_and_zero_are_batch_norm_in_training(shape):
    x = torch.tensor(data(shape, scale=3.0, shift=-1.0))
    mean0, var0 = (torch.tensor(a) for a in stats_for(shape))
    w, b = torch.tensor(data(shape[1], 3)), torch.tensor(data(shape[1], 4))
    ours_mean, ours_var, bn_mean, bn_var = mean0.clone(), var0.clone(), mean0.clone(), var0.clone()
    ours = batch_renorm(x, ours_mean, ours_var, w, b, True, 0.1, 1e-5, r_max=1.0, d_max=0.0)
    theirs = torch.nn.functional.batch_norm(x, bn_mean, bn_var, w, b, True, 0.1, 1e-5)
    for a, b_ in ((ours, theirs), (ours_mean, bn_mean), (ours_var, bn_var)):
        assert max_relative_error(a, b_) <= TOL


def test_eval_mode_is_batch_norm_eval():
    x = torch.tensor(data((4, 3, 2, 2)))
    mean0, var0 = (torch.tensor(a) for a in stats_for((4, 3, 2, 2)))
    w, b = torch.tensor(data(3, 3)), torch.tensor(data(3, 4))
    ours = batch_renorm(x, mean0, var0, w, b, training=False)
    theirs = torch.nn.functional.batch_norm(x, mean0, var0, w, b, training=False)
    assert max_relative_error(ours, theirs) <= TOL


def test_module_with_limits_one_and_zero_is_torch_batch_norm_step_by_step():
    torch.manual_seed(0)
    ours = BatchRenorm2d(3, r_max=1.0, d_max=0.0, dtype=torch.float64)
    theirs = torch.nn.BatchNorm2d(3, dtype=torch.float64)
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
        theirs.bias.copy_(torch.tensor([0.1, 0.0, -0.3]))
    ours.load_state_dict(theirs.state_dict())
    for _ in range(5):
        x = torch.randn(2, 3, 3, 3, dtype=torch.float64) * 2 + 1
        assert max_relative_error(ours(x), theirs(x)) <= TOL
    for key, value in theirs.state_dict().items():
        assert max_relative_error(ours.state_dict()[key], value) <= TOL, key
    ours.eval()
    theirs.eval()
    x = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    assert max_relative_error(ours(x), theirs(x)) <= TOL


def test_module_in_training_matches_the_naive_formula_over_steps():
    torch.manual_seed(1)
    layer = BatchRenorm1d(3, momentum=0.3, r_max=1.5, d_max=0.5, dtype=torch.float64)
    mean, var = np.zeros(3), np.ones(3)
    for _ in range(6):
        x = torch.randn(4, 3, dtype=torch.float64) * 2 + 1
        want, mean, var, _, _ = naive_forward(
            x.numpy(), mean, var, np.ones(3), np.zeros(3), 0.3, 1e-5, 1.5, 0.5
        )
        assert max_relative_error(layer(x), want) <= TOL
    assert max_relative_error(layer.running_mean, mean) <= TOL
    assert max_relative_error(layer.running_var, var) <= TOL
    assert int(layer.num_batches_tracked) == 6


def test_momentum_none_is_a_cumulative_average_as_in_batch_norm():
    torch.manual_seed(2)
    ours = BatchRenorm1d(3, momentum=None, dtype=torch.float64)
    theirs = torch.nn.BatchNorm1d(3, momentum=None, dtype=torch.float64)
    for _ in range(4):
        x = torch.randn(5, 3, dtype=torch.float64)
        ours(x)
        theirs(x)
    assert max_relative_error(ours.running_mean, theirs.running_mean) <= TOL
    assert max_relative_error(ours.running_var, theirs.running_var) <= TOL


def test_half_precision_is_computed_in_float32():
    x = torch.randn(8, 3, dtype=torch.float16)
    y = batch_renorm(x, torch.zeros(3), torch.ones(3), training=True)
    want = batch_renorm(x.float(), torch.zeros(3), torch.ones(3), training=True)
    assert y.dtype == torch.float16 and torch.allclose(y.float(), want, atol=1e-2)


def test_empty_batch_gives_an_empty_output_and_keeps_the_running_stats():
    mean, var = torch.full((3,), 0.5), torch.full((3,), 2.0)
    y = batch_renorm(torch.randn(0, 3, 2), mean, var, training=True)
    assert y.shape == (0, 3, 2) and bool((mean == 0.5).all()) and bool((var == 2.0).all())


# --------------------------------------------------------------------------- backward


def _backward_case(shape, limits, seed=0):
    x = data(shape, seed, scale=2.0, shift=0.5)
    g = data(shape, seed + 10)
    mean0, var0 = stats_for(shape, seed + 1)
    w, b = data(shape[1], seed + 20), data(shape[1], seed + 30)
    return x, g, mean0, var0, w, b


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("limits", [(3.0, 5.0), (1.2, 0.1), (1.0, 0.0)])
def test_closed_form_backward_matches_autograd_through_the_naive_version(shape, limits):
    x, g, mean0, var0, w, b = _backward_case(shape, limits)
    dx, dw, db = batch_renorm_backward(g, x, mean0, var0, w, 1e-5, True, *limits)
    xt = torch.tensor(x, requires_grad=True)
    wt, bt = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    naive_torch(xt, torch.tensor(mean0), torch.tensor(var0), wt, bt, 1e-5, *limits).backward(
        torch.tensor(g)
    )
    for ours, theirs in ((dx, xt.grad), (dw, wt.grad), (db, bt.grad)):
        assert max_relative_error(ours, theirs) <= 1e-11


@pytest.mark.parametrize("shape", SHAPES)
def test_closed_form_backward_matches_autograd_through_refimpls_forward(shape):
    x, g, mean0, var0, w, b = _backward_case(shape, (3.0, 5.0), seed=3)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    batch_renorm(
        xt, torch.tensor(mean0), torch.tensor(var0), wt, torch.tensor(b), training=True
    ).backward(torch.tensor(g))
    dx, dw, _ = batch_renorm_backward(
        torch.tensor(g), torch.tensor(x), torch.tensor(mean0), torch.tensor(var0), torch.tensor(w)
    )
    assert max_relative_error(dx, xt.grad) <= 1e-11
    assert max_relative_error(dw, wt.grad) <= 1e-11


@pytest.mark.parametrize("limits", [(3.0, 5.0), (1.2, 0.1)])
def test_closed_form_backward_matches_finite_differences_with_r_and_d_frozen(limits):
    shape = (4, 2, 3)
    x, g, mean0, var0, w, b = _backward_case(shape, limits, seed=5)
    r, d = renorm_corrections(
        *functional_moments(x), mean0.reshape(1, -1, 1), var0.reshape(1, -1, 1), 1e-5, *limits
    )

    def frozen(x_):  # L = sum(g * y) with r and d fixed at their values at x
        mu, var = functional_moments(x_)
        y = w.reshape(1, -1, 1) * ((x_ - mu) / np.sqrt(var + 1e-5) * r + d) + b.reshape(1, -1, 1)
        return float(np.sum(g * y))

    h = 1e-6
    numeric = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = h
        numeric[i] = (frozen(x + step) - frozen(x - step)) / (2 * h)
    dx, _, _ = batch_renorm_backward(g, x, mean0, var0, w, 1e-5, True, *limits)
    assert np.max(np.abs(dx - numeric)) <= 1e-7 * np.max(np.abs(dx))


def test_the_gradient_is_batch_norms_scaled_by_r():
    x, g, mean0, var0, w, _ = _backward_case((6, 3), (3.0, 5.0), seed=7)
    r, _ = renorm_corrections(*functional_moments(x), mean0, var0, 1e-5, 3.0, 5.0)
    dx, _, _ = batch_renorm_backward(g, x, mean0, var0, w)
    bn_dx, _, _ = backward.batch_norm_backward(g * r, x, w)
    assert max_relative_error(dx, bn_dx) <= TOL


def test_without_stop_gradient_the_gradient_is_eval_modes_not_batch_renorms():
    """Unclipped, y = w (x - mu) / sigma + b exactly, so differentiating through r and d
    gives the eval-mode gradient g * w / sigma: nothing of the batch statistics is left."""
    x, g, mean0, var0, w, b = _backward_case((6, 3), (3.0, 5.0), seed=8)
    mean0, var0 = (torch.tensor(a) for a in stats_for((6, 3), spread=0.2))
    xt = torch.tensor(x, requires_grad=True)
    naive_torch(
        xt, mean0, var0, torch.tensor(w), torch.tensor(b), 1e-5, 3.0, 5.0, detach=False
    ).backward(torch.tensor(g))
    eval_dx = torch.tensor(g * w) / torch.sqrt(var0 + 1e-5)
    assert max_relative_error(xt.grad, eval_dx) <= 1e-11
    ours, _, _ = batch_renorm_backward(g, x, mean0.numpy(), var0.numpy(), w)
    assert max_relative_error(ours, eval_dx) > 0.1


def test_eval_backward_is_batch_norms():
    x, g, mean0, var0, w, _ = _backward_case((5, 3, 2), (3.0, 5.0))
    ours = batch_renorm_backward(g, x, mean0, var0, w, training=False)
    theirs = backward.batch_norm_backward(g, x, w, 1e-5, False, mean0, var0)
    for a, b in zip(ours, theirs, strict=True):
        assert max_relative_error(a, b) <= TOL


# --------------------------------------------------------------------------- schedule


def test_schedule_warms_up_from_batch_norm_to_the_final_limits():
    schedule = RenormSchedule()  # the paper's: 5k steps of BN, r_max 3 at 40k, d_max 5 at 25k
    assert schedule(0) == schedule(5000) == (1.0, 0.0)
    assert schedule(25000)[1] == 5.0 and schedule(40000)[0] == 3.0
    assert schedule(22500) == (2.0, 4.375)
    assert schedule(15000) == (1.0 + 2.0 * 10000 / 35000, 2.5)
    values = [schedule(s) for s in range(0, 50000, 500)]
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))


def test_schedule_rejects_bad_settings():
    with pytest.raises(ValueError, match="r_max must be at least 1"):
        RenormSchedule(r_max=0.9)
    with pytest.raises(ValueError, match="d_max must be non-negative"):
        RenormSchedule(d_max=-1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        RenormSchedule(warmup_steps=100, r_max_steps=50)


def test_module_follows_the_schedule_and_resumes_it_from_a_checkpoint():
    schedule = RenormSchedule(warmup_steps=2, r_max_steps=6, d_max_steps=4)
    layer = BatchRenorm1d(3, schedule=schedule)
    seen = []
    for _ in range(7):
        layer(torch.randn(4, 3))
        seen.append((layer.r_max, layer.d_max))
    assert seen == [schedule(step) for step in range(7)]
    resumed = BatchRenorm1d(3, schedule=schedule)
    resumed.load_state_dict(layer.state_dict())
    resumed(torch.randn(4, 3))
    assert (resumed.r_max, resumed.d_max) == schedule(7)
    layer.eval()
    layer(torch.randn(4, 3))  # eval: neither counted nor rescheduled
    assert int(layer.num_batches_tracked) == 7


# --------------------------------------------------------------------------- module


def test_state_dict_loads_both_ways_with_torch_batch_norm():
    theirs = torch.nn.BatchNorm2d(4)
    theirs(torch.randn(3, 4, 2, 2))
    ours = BatchRenorm2d(4)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    ours(torch.randn(3, 4, 2, 2))
    back = torch.nn.BatchNorm2d(4)
    back.load_state_dict(ours.state_dict())
    assert torch.equal(back.running_mean, ours.running_mean)


def test_ghost_batches_are_separate_renorm_batches_against_the_same_running_stats():
    torch.manual_seed(3)
    x = torch.randn(8, 3, 2, 2, dtype=torch.float64) * 2 + 1
    layer = BatchRenorm2d(3, r_max=1.5, d_max=0.3, ghost_size=2, dtype=torch.float64)
    with torch.no_grad():
        layer.running_mean.fill_(0.5)
        layer.running_var.fill_(2.0)
    before = copy.deepcopy(layer)
    y = layer(x)
    means, variances = [], []
    for k in range(4):
        part = x[2 * k : 2 * k + 2]
        rm, rv = before.running_mean.clone(), before.running_var.clone()
        want = batch_renorm(part, rm, rv, training=True, momentum=1.0, r_max=1.5, d_max=0.3)
        assert max_relative_error(y[2 * k : 2 * k + 2], want) <= TOL
        means.append(rm)
        variances.append(rv)  # momentum 1: the ghost batch's own (unbiased) statistics
    m = 0.1
    want_mean = m * torch.stack(means).mean(0) + (1 - m) * before.running_mean
    want_var = m * torch.stack(variances).mean(0) + (1 - m) * before.running_var
    assert max_relative_error(layer.running_mean, want_mean) <= TOL
    assert max_relative_error(layer.running_var, want_var) <= TOL
    whole = BatchRenorm2d(3, ghost_size=8, dtype=torch.float64)
    plain = BatchRenorm2d(3, dtype=torch.float64)
    assert max_relative_error(whole(x), plain(x)) <= TOL
    with pytest.raises(ValueError, match="must divide the batch size"):
        BatchRenorm2d(3, ghost_size=3)(x)


def test_ghost_size_with_limits_one_and_zero_is_ghost_batch_norm():
    from refimpl.ghost_norm import GhostBatchNorm

    x = torch.randn(8, 3, 2, 2, dtype=torch.float64)
    ours = BatchRenorm2d(3, r_max=1.0, d_max=0.0, ghost_size=4, dtype=torch.float64)
    theirs = GhostBatchNorm(3, ghost_size=4, dtype=torch.float64)
    assert max_relative_error(ours(x), theirs(x)) <= TOL
    assert max_relative_error(ours.running_var, theirs.running_var) <= TOL


def test_convert_batch_renorm_swaps_every_batch_norm_and_keeps_the_state():
    torch.manual_seed(4)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 16, 5),
        rnn.BatchNorm1d(5),
    ).double()
    x = torch.randn(6, 1, 6, 6, dtype=torch.float64)
    model(x)
    reference = copy.deepcopy(model)
    converted = convert_batch_renorm(model, r_max=1.0, d_max=0.0)
    assert isinstance(converted[1], BatchRenorm2d) and isinstance(converted[5], BatchRenorm1d)
    assert converted[1].running_mean.dtype == torch.float64
    for key, value in reference.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value), key
    assert max_relative_error(converted(x), reference(x)) <= 1e-10  # training: = BN
    converted.eval()
    reference.eval()
    assert max_relative_error(converted(x), reference(x)) <= 1e-10


def test_module_repr():
    assert repr(BatchRenorm1d(3, r_max=2.0, d_max=1.0, ghost_size=4)) == (
        "BatchRenorm1d(3, eps=1e-05, momentum=0.1, affine=True, bias=True, "
        "track_running_stats=True, r_max=2.0, d_max=1.0, ghost_size=4)"
    )


# --------------------------------------------------------------------------- errors


def _error(make):
    with pytest.raises(Exception) as info:
        make()
    return info.value


# (torch's batch norm case, ours): rank and channel errors are batch norm's, word for word.
SAME_AS_BATCH_NORM = {
    "rank 1d": (
        lambda: torch.nn.BatchNorm1d(3)(torch.randn(2, 3, 2, 2)),
        lambda: BatchRenorm1d(3)(torch.randn(2, 3, 2, 2)),
    ),
    "rank 2d": (
        lambda: torch.nn.BatchNorm2d(3)(torch.randn(2, 3, 2)),
        lambda: BatchRenorm2d(3)(torch.randn(2, 3, 2)),
    ),
    "channels": (
        lambda: torch.nn.BatchNorm2d(3)(torch.randn(2, 4, 2, 2)),
        lambda: BatchRenorm2d(3)(torch.randn(2, 4, 2, 2)),
    ),
    "channels eval": (
        lambda: torch.nn.BatchNorm2d(3).eval()(torch.randn(2, 4, 2, 2)),
        lambda: BatchRenorm2d(3).eval()(torch.randn(2, 4, 2, 2)),
    ),
    "weight channels": (
        lambda: torch.nn.functional.batch_norm(
            torch.randn(2, 3), torch.zeros(3), torch.ones(3), torch.ones(4), training=True
        ),
        lambda: batch_renorm(
            torch.randn(2, 3), torch.zeros(3), torch.ones(3), torch.ones(4), training=True
        ),
    ),
    "one value per channel": (
        lambda: torch.nn.BatchNorm1d(3)(torch.randn(1, 3)),
        lambda: BatchRenorm1d(3)(torch.randn(1, 3)),
    ),
    "eval without running stats": (
        lambda: torch.nn.functional.batch_norm(torch.randn(2, 3), None, None),
        lambda: batch_renorm(torch.randn(2, 3), None, None),
    ),
    "only running_mean": (
        lambda: torch.nn.functional.batch_norm(
            torch.randn(2, 3), torch.zeros(3), None, training=True
        ),
        lambda: batch_renorm(torch.randn(2, 3), torch.zeros(3), None, training=True),
    ),
}


@pytest.mark.parametrize("name", sorted(SAME_AS_BATCH_NORM))
@pytest.mark.parametrize("library", ["torch", "numpy"])
def test_same_error_as_torch_batch_norm(name, library):
    theirs_case, ours_case = SAME_AS_BATCH_NORM[name]
    theirs, ours = _error(theirs_case), _error(ours_case)
    assert type(ours) is type(theirs)
    assert str(ours) == str(theirs)
    if library == "numpy" and name in {"weight channels", "eval without running stats"}:
        x = np.zeros((2, 3))
        args = (np.zeros(3), np.ones(3), np.ones(4)) if name == "weight channels" else (None, None)
        on_numpy = _error(lambda: batch_renorm(x, *args, training=name == "weight channels"))
        assert type(on_numpy) is type(theirs) and str(on_numpy) == str(theirs)


@pytest.mark.parametrize("eps, training", [(0.0, True), (-1.0, True), (-1e-3, False)])
def test_eps_errors_are_batch_norms_with_the_function_named(eps, training):
    x, mean, var = torch.randn(2, 3), torch.zeros(3), torch.ones(3)
    theirs = _error(
        lambda: torch.nn.functional.batch_norm(x, mean, var, training=training, eps=eps)
    )
    ours = _error(lambda: batch_renorm(x, mean, var, training=training, eps=eps))
    assert type(ours) is type(theirs)
    assert str(ours) == str(theirs).replace("batch_norm", "batch_renorm")


@pytest.mark.parametrize("bad", [{"r_max": 0.99}, {"r_max": float("nan")}, {"d_max": -0.1}])
def test_bad_limits_raise_value_error_everywhere(bad):
    message = "r_max must be at least 1" if "r_max" in bad else "d_max must be non-negative"
    with pytest.raises(ValueError, match=message):
        batch_renorm(torch.randn(4, 3), torch.zeros(3), torch.ones(3), training=True, **bad)
    with pytest.raises(ValueError, match=message):
        batch_renorm(np.zeros((4, 3)), np.zeros(3), np.ones(3), training=True, **bad)
    with pytest.raises(ValueError, match=message):
        BatchRenorm2d(3, **bad)
    layer = BatchRenorm2d(3, ghost_size=2)
    for key, value in bad.items():
        setattr(layer, key, value)
    with pytest.raises(ValueError, match=message):
        layer(torch.randn(4, 3, 2, 2))


def test_batch_renorm_needs_running_stats_in_training():
    with pytest.raises(RuntimeError, match="running_mean must be defined in training mode"):
        batch_renorm(torch.randn(4, 3), None, None, training=True)
    with pytest.raises(ValueError, match="track_running_stats=True"):
        BatchRenorm2d(3, track_running_stats=False)


def test_numpy_and_torch_agree():
    x = data((5, 3, 2), 9)
    mean0, var0 = stats_for((5, 3, 2))
    on_numpy = batch_renorm(x, mean0.copy(), var0.copy(), training=True, r_max=1.3, d_max=0.2)
    on_torch = batch_renorm(
        torch.tensor(x),
        torch.tensor(mean0),
        torch.tensor(var0),
        training=True,
        r_max=1.3,
        d_max=0.2,
    )
    assert max_relative_error(on_numpy, on_torch) <= TOL


def test_functional_batch_norm_is_untouched():
    """batch_renorm reuses functional's checks; batch_norm itself still equals torch's."""
    x = torch.randn(4, 3, dtype=torch.float64)
    assert (
        max_relative_error(
            functional.batch_norm(x, None, None, training=True),
            torch.nn.functional.batch_norm(x, None, None, training=True),
        )
        <= TOL
    )
