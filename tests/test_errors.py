"""Bad input: refimpl raises what torch raises (type and message), and torch really does.

Each case is run three ways: torch, refimpl on torch tensors, and (for the functional
cases) refimpl on NumPy arrays. Then the edge cases that are *not* errors (empty batch,
eps = 0 in eval, NaN, RMS norm's default eps) are checked to behave as torch's do.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import refimpl.nn as rnn
from refimpl import functional

TORCH = (torch.nn.functional, torch.nn)
OURS = (functional, rnn)


def torch_array(*shape):
    return torch.randn(*shape)  # float32, like the modules' parameters


def numpy_array(*shape):
    return np.random.default_rng(0).standard_normal(shape)


# name -> f(F, nn, a) where a(*shape) makes an array of the library under test.
FUNCTIONAL_CASES = {
    "bn one value per channel (N,C)": lambda F, nn, a: F.batch_norm(
        a(1, 3), None, None, training=True
    ),
    "bn one value per channel (N,C,1,1)": lambda F, nn, a: F.batch_norm(
        a(1, 3, 1, 1), a(3), a(3) ** 2, training=True
    ),
    "bn eps 0 in training": lambda F, nn, a: F.batch_norm(
        a(2, 3), None, None, training=True, eps=0.0
    ),
    "bn eps < 0 in training": lambda F, nn, a: F.batch_norm(
        a(2, 3), None, None, training=True, eps=-1.0
    ),
    "bn eps < 0 in eval": lambda F, nn, a: F.batch_norm(
        a(2, 3), a(3), a(3) ** 2, training=False, eps=-1e-3
    ),
    "bn running_mean channels": lambda F, nn, a: F.batch_norm(
        a(2, 4, 2), a(3), a(3) ** 2, training=True
    ),
    "bn running_var channels": lambda F, nn, a: F.batch_norm(
        a(2, 3, 2), a(3), a(4) ** 2, training=True
    ),
    "bn weight channels": lambda F, nn, a: F.batch_norm(
        a(2, 3, 2), None, None, a(4), training=True
    ),
    "bn bias channels": lambda F, nn, a: F.batch_norm(
        a(2, 3, 2), None, None, a(3), a(4), training=True
    ),
    "bn only running_mean": lambda F, nn, a: F.batch_norm(a(2, 3), a(3), None, training=True),
    "bn eval without running stats": lambda F, nn, a: F.batch_norm(
        a(2, 3), None, None, training=False
    ),
    "ln shape mismatch": lambda F, nn, a: F.layer_norm(a(2, 3), (4,)),
    "ln shape longer than input": lambda F, nn, a: F.layer_norm(a(3), (2, 3)),
    "ln empty shape": lambda F, nn, a: F.layer_norm(a(2, 3), ()),
    "ln weight shape": lambda F, nn, a: F.layer_norm(a(2, 3), (3,), a(4)),
    "ln bias shape": lambda F, nn, a: F.layer_norm(a(2, 3), (3,), a(3), a(4)),
    "ln int shape": lambda F, nn, a: F.layer_norm(a(2, 3), 3),
    "rms shape mismatch": lambda F, nn, a: F.rms_norm(a(2, 3), (4,)),
    "rms weight shape": lambda F, nn, a: F.rms_norm(a(2, 3), (3,), a(4)),
    "gn groups do not divide channels": lambda F, nn, a: F.group_norm(a(2, 4, 3), 3),
    "gn weight channels": lambda F, nn, a: F.group_norm(a(2, 6, 3), 2, a(4)),
    "gn bias channels": lambda F, nn, a: F.group_norm(a(2, 4, 3), 2, a(4), a(3)),
    "gn one value per group": lambda F, nn, a: F.group_norm(a(1, 2), 2),
    "gn one value per group, spatial": lambda F, nn, a: F.group_norm(a(1, 2, 1), 2),
    "gn rank 1": lambda F, nn, a: F.group_norm(a(4), 2),
    "in one spatial element": lambda F, nn, a: F.instance_norm(a(2, 3, 1)),
    "in no spatial dims": lambda F, nn, a: F.instance_norm(a(2, 3)),
    "in running channels": lambda F, nn, a: F.instance_norm(a(2, 4, 5), a(3), a(3) ** 2),
    "in weight channels": lambda F, nn, a: F.instance_norm(a(2, 4, 5), weight=a(3)),
    "in eval without running stats": lambda F, nn, a: F.instance_norm(
        a(2, 4, 5), use_input_stats=False
    ),
}

MODULE_CASES = {
    "BatchNorm1d 4D": lambda F, nn, a: nn.BatchNorm1d(3)(a(2, 3, 2, 2)),
    "BatchNorm1d 1D": lambda F, nn, a: nn.BatchNorm1d(3)(a(3)),
    "BatchNorm2d 3D": lambda F, nn, a: nn.BatchNorm2d(3)(a(2, 3, 2)),
    "BatchNorm3d 4D": lambda F, nn, a: nn.BatchNorm3d(3)(a(2, 3, 2, 2)),
    "BatchNorm2d channels": lambda F, nn, a: nn.BatchNorm2d(3)(a(2, 4, 2, 2)),
    "BatchNorm2d channels eval": lambda F, nn, a: nn.BatchNorm2d(3).eval()(a(2, 4, 2, 2)),
    "BatchNorm1d one value": lambda F, nn, a: nn.BatchNorm1d(3)(a(1, 3)),
    "BatchNorm1d one value (N,C,1)": lambda F, nn, a: nn.BatchNorm1d(3)(a(1, 3, 1)),
    "BatchNorm2d eps 0 training": lambda F, nn, a: nn.BatchNorm2d(3, eps=0)(a(2, 3, 2, 2)),
    "BatchNorm2d eps < 0 eval": lambda F, nn, a: nn.BatchNorm2d(3, eps=-1).eval()(a(2, 3, 2, 2)),
    "LayerNorm shape": lambda F, nn, a: nn.LayerNorm(4)(a(2, 3)),
    "RMSNorm shape": lambda F, nn, a: nn.RMSNorm([2, 4])(a(2, 3, 4)),
    "GroupNorm ctor groups": lambda F, nn, a: nn.GroupNorm(3, 4),
    "GroupNorm channels": lambda F, nn, a: nn.GroupNorm(2, 4)(a(2, 6, 3)),
    "InstanceNorm1d 4D": lambda F, nn, a: nn.InstanceNorm1d(3)(a(2, 3, 2, 2)),
    "InstanceNorm2d 2D": lambda F, nn, a: nn.InstanceNorm2d(3)(a(3, 2)),
    "InstanceNorm3d 6D": lambda F, nn, a: nn.InstanceNorm3d(3)(a(1, 2, 3, 2, 2, 2)),
    "InstanceNorm1d one spatial": lambda F, nn, a: nn.InstanceNorm1d(3)(a(2, 3, 1)),
    "InstanceNorm1d one spatial eval": lambda F, nn, a: nn.InstanceNorm1d(3).eval()(a(2, 3, 1)),
    "InstanceNorm1d affine channels": lambda F, nn, a: nn.InstanceNorm1d(3, affine=True)(
        a(2, 4, 5)
    ),
    "InstanceNorm1d tracked channels": lambda F, nn, a: nn.InstanceNorm1d(
        3, track_running_stats=True
    )(a(2, 4, 5)),
}


def _raised(case, lib, make):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the mismatched-channels warning of IN
        with pytest.raises(Exception) as info:
            case(*lib, make)
    return info.value


@pytest.mark.parametrize("name", sorted({**FUNCTIONAL_CASES, **MODULE_CASES}))
def test_same_error_as_torch(name):
    case = {**FUNCTIONAL_CASES, **MODULE_CASES}[name]
    theirs = _raised(case, TORCH, torch_array)  # torch really raises here...
    ours = _raised(case, OURS, torch_array)  # ...and so do we, the same way
    assert type(ours) is type(theirs), f"{type(ours).__name__} != {type(theirs).__name__}"
    if name not in SAME_MEANING_ONLY:
        assert _message(ours) == _message(theirs)


# torch 2.13 prints the *weight's* shape when the bias is wrong; ours names the bias's.
SAME_MEANING_ONLY = {"gn bias channels"}


@pytest.mark.parametrize("name", sorted(FUNCTIONAL_CASES))
def test_same_error_on_numpy(name):
    theirs = _raised(FUNCTIONAL_CASES[name], TORCH, torch_array)
    ours = _raised(FUNCTIONAL_CASES[name], OURS, numpy_array)
    assert type(ours) is type(theirs)


def _message(error) -> str:
    # torch's argument parser names the argument's position; ours is plain Python.
    return str(error).replace(" (position 2)", "").split("(): ")[-1]


# --------------------------------------------------------------------------- not errors


@pytest.mark.parametrize("training", [True, False])
def test_empty_batch_norm_keeps_running_stats_and_counts_the_batch(training):
    """torch: N = 0 gives an empty output; training leaves the running statistics alone
    but still increments num_batches_tracked."""
    theirs, ours = torch.nn.BatchNorm2d(3), rnn.BatchNorm2d(3)
    with torch.no_grad():
        theirs.running_mean.fill_(0.5)
    ours.load_state_dict(theirs.state_dict())
    theirs.train(training)
    ours.train(training)
    x = torch.randn(0, 3, 2, 2)
    y_theirs, y_ours = theirs(x), ours(x)
    assert y_ours.shape == y_theirs.shape == (0, 3, 2, 2)
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    assert ours.num_batches_tracked.item() == int(training)


def test_empty_batch_instance_norm_sets_running_stats_to_nan():
    """torch averages the per-instance statistics over zero instances: NaN."""
    theirs = torch.nn.InstanceNorm1d(3, track_running_stats=True)
    ours = rnn.InstanceNorm1d(3, track_running_stats=True)
    x = torch.randn(0, 3, 5)
    assert ours(x).shape == theirs(x).shape
    assert torch.isnan(theirs.running_mean).all() and torch.isnan(ours.running_mean).all()
    assert torch.isnan(theirs.running_var).all() and torch.isnan(ours.running_var).all()


@pytest.mark.parametrize(
    "make",
    [
        lambda nn: (nn.LayerNorm(4), (0, 4)),
        lambda nn: (nn.GroupNorm(2, 4), (0, 4, 3)),
        lambda nn: (nn.RMSNorm(4), (0, 4)),
        lambda nn: (nn.InstanceNorm1d(4), (0, 4, 3)),
    ],
)
def test_empty_batch_other_norms(make):
    (theirs, shape), (ours, _) = make(torch.nn), make(rnn)
    x = torch.randn(shape)
    assert theirs(x).shape == ours(x).shape == shape


def test_nan_and_inf_propagate_like_torch():
    x = torch.tensor([[1.0, float("nan"), 0.0], [2.0, 3.0, float("inf")], [0.5, 1.0, 2.0]])
    for make in (
        lambda nn: nn.BatchNorm1d(3),
        lambda nn: nn.LayerNorm(3),
        lambda nn: nn.GroupNorm(1, 3),
        lambda nn: nn.RMSNorm(3),
    ):
        theirs, ours = make(torch.nn)(x), make(rnn)(x)
        assert torch.equal(torch.isnan(theirs), torch.isnan(ours))
        finite = torch.isfinite(theirs)
        assert torch.equal(finite, torch.isfinite(ours))
        assert torch.allclose(theirs[finite], ours[finite], atol=1e-6)


def test_zero_eps_is_allowed_outside_batch_norm_training():
    """Only batch norm checks eps, and only eps <= 0 in training / eps < 0 in eval."""
    x = torch.zeros(2, 4, 3)  # zero variance: 0 / sqrt(0 + 0) is NaN in both
    cases = [
        lambda F: F.batch_norm(x, torch.zeros(4), torch.zeros(4), training=False, eps=0.0),
        lambda F: F.layer_norm(x, (3,), eps=0.0),
        lambda F: F.group_norm(x, 2, eps=-1.0),
        lambda F: F.instance_norm(x, eps=-1.0),
    ]
    for case in cases:
        theirs, ours = case(torch.nn.functional), case(functional)
        assert torch.equal(torch.isnan(theirs), torch.isnan(ours))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rms_norm_default_eps_is_the_dtype_machine_epsilon(dtype):
    """eps=None: torch uses torch.finfo(dtype).eps. With mean(x^2) ~ eps, it matters."""
    tiny = float(torch.finfo(dtype).eps) ** 0.5
    x = torch.tensor([[tiny, 0.0, 0.0]], dtype=dtype)
    theirs = torch.nn.functional.rms_norm(x, (3,))
    ours = functional.rms_norm(x, (3,))
    # The value itself: tiny / sqrt(tiny^2 / 3 + eps) = sqrt(3/4).
    assert abs(theirs[0, 0].item() - 0.75**0.5) < 1e-3
    assert abs(ours[0, 0].item() - theirs[0, 0].item()) <= 4 * torch.finfo(dtype).eps
    ours_np = functional.rms_norm(x.numpy(), (3,))
    assert abs(ours_np[0, 0] - theirs[0, 0].item()) <= 4 * torch.finfo(dtype).eps


def test_instance_norm_warns_like_torch_on_channel_mismatch_without_affine():
    x = torch.randn(2, 4, 5)
    with pytest.warns(UserWarning, match="does not match num_features"):
        torch.nn.InstanceNorm1d(3)(x)
    with pytest.warns(UserWarning, match="does not match num_features"):
        ours = rnn.InstanceNorm1d(3)(x)
    assert torch.allclose(ours, torch.nn.functional.instance_norm(x), atol=1e-6)
