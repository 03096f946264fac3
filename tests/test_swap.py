"""A small torch model, trained a few steps, gives the same numbers with refimpl's norms."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import refimpl.nn as rnn


def _model(dtype):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.GroupNorm(4, 8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3, padding=1),
        nn.InstanceNorm2d(4, affine=True, track_running_stats=True),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 16),
        nn.LayerNorm(16),
        nn.ReLU(),
        nn.Linear(16, 16),
        nn.RMSNorm(16),
        nn.BatchNorm1d(16, momentum=None),
        nn.Linear(16, 5),
    ).to(dtype)


def _train(model, steps, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        x = torch.randn(6, 3, 6, 6, generator=generator, dtype=dtype)
        target = torch.randint(0, 5, (6,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), target).backward()
        optimizer.step()


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_swapped_model_matches_torch(dtype, tol):
    torch.manual_seed(0)
    theirs = _model(dtype)
    _train(theirs, steps=3, dtype=dtype)  # trained under torch
    ours = rnn.swap_norms(copy.deepcopy(theirs))

    kinds = {type(m) for m in ours.modules()}
    assert not kinds & {
        nn.BatchNorm1d,
        nn.BatchNorm2d,
        nn.GroupNorm,
        nn.InstanceNorm2d,
        nn.LayerNorm,
        nn.RMSNorm,
    }
    assert {
        rnn.BatchNorm1d,
        rnn.BatchNorm2d,
        rnn.GroupNorm,
        rnn.InstanceNorm2d,
        rnn.LayerNorm,
        rnn.RMSNorm,
    } <= kinds
    assert theirs.state_dict().keys() == ours.state_dict().keys()

    # two more training steps side by side, then eval: same outputs, grads and buffers
    x = torch.randn(6, 3, 6, 6, dtype=dtype)
    for mode in ("train", "train", "eval"):
        theirs.train(mode == "train")
        ours.train(mode == "train")
        theirs.zero_grad()
        ours.zero_grad()
        y_theirs, y_ours = theirs(x), ours(x)
        scale = y_theirs.abs().max().item() + 1
        assert (y_ours - y_theirs).abs().max().item() <= tol * scale
        y_theirs.square().sum().backward()
        y_ours.square().sum().backward()
        for (name, p_theirs), p_ours in zip(
            theirs.named_parameters(), ours.parameters(), strict=True
        ):
            scale = p_theirs.grad.abs().max().item() + 1
            assert (p_ours.grad - p_theirs.grad).abs().max().item() <= tol * scale, name
        for (key, b_theirs), b_ours in zip(
            theirs.state_dict().items(), ours.state_dict().values(), strict=True
        ):
            assert torch.allclose(b_ours.double(), b_theirs.double(), rtol=tol, atol=tol), key
        x = x + 0.1


def test_state_dict_round_trip_both_ways():
    pairs = [
        (nn.BatchNorm2d(5), rnn.BatchNorm2d(5)),
        (nn.BatchNorm1d(5, affine=False), rnn.BatchNorm1d(5, affine=False)),
        (
            nn.BatchNorm3d(5, track_running_stats=False),
            rnn.BatchNorm3d(5, track_running_stats=False),
        ),
        (
            nn.InstanceNorm1d(5, affine=True, track_running_stats=True),
            rnn.InstanceNorm1d(5, affine=True, track_running_stats=True),
        ),
        (nn.InstanceNorm2d(5), rnn.InstanceNorm2d(5)),
        (nn.LayerNorm((5, 2), bias=False), rnn.LayerNorm((5, 2), bias=False)),
        (nn.GroupNorm(5, 10), rnn.GroupNorm(5, 10)),
        (nn.RMSNorm(5, eps=1e-4), rnn.RMSNorm(5, eps=1e-4)),
    ]
    for theirs, ours in pairs:
        assert repr(ours) == repr(theirs)
        assert ours.state_dict().keys() == theirs.state_dict().keys()
        with torch.no_grad():
            for tensor in theirs.state_dict().values():
                tensor.copy_(torch.rand_like(tensor.float()).to(tensor.dtype) * 3 + 1)
        ours.load_state_dict(theirs.state_dict())
        for key, value in theirs.state_dict().items():
            assert torch.equal(ours.state_dict()[key], value), key
        fresh = type(theirs)(*_ctor_args(theirs))
        fresh.load_state_dict(ours.state_dict())
        for key, value in ours.state_dict().items():
            assert torch.equal(fresh.state_dict()[key], value), key


def _ctor_args(module):
    return {
        nn.GroupNorm: lambda m: (m.num_groups, m.num_channels, m.eps, m.affine),
        nn.LayerNorm: lambda m: (
            m.normalized_shape,
            m.eps,
            m.elementwise_affine,
            m.bias is not None,
        ),
        nn.RMSNorm: lambda m: (m.normalized_shape, m.eps, m.elementwise_affine),
    }.get(
        type(module), lambda m: (m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
    )(module)


def test_swap_keeps_training_mode_and_dtype():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).double().eval()
    swapped = rnn.swap_norms(model)
    assert isinstance(swapped[1], rnn.BatchNorm1d)
    assert not swapped[1].training
    assert swapped[1].running_mean.dtype == torch.float64
