"""refimpl batch norm against torch.nn on generated cases (forward, buffers, backward)."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import refimpl.nn as rnn
from refimpl import backward, functional
from tests.conftest import Stats, assert_close, compare_step, randomize_, sample_step

TWINS = {
    "1d": (torch.nn.BatchNorm1d, rnn.BatchNorm1d, 0),
    "1d-seq": (torch.nn.BatchNorm1d, rnn.BatchNorm1d, 1),
    "2d": (torch.nn.BatchNorm2d, rnn.BatchNorm2d, 2),
    "3d": (torch.nn.BatchNorm3d, rnn.BatchNorm3d, 3),
}
MOMENTA = st.one_of(st.sampled_from([0.1, None, 0.0, 1.0]), st.floats(0.0, 1.0))


@st.composite
def batch_norm_cases(draw):
    kind = draw(st.sampled_from(sorted(TWINS)))
    spatial_dims = TWINS[kind][2]
    n = draw(st.integers(1, 8))
    spatial = draw(st.lists(st.integers(1, 8), min_size=spatial_dims, max_size=spatial_dims))
    if n * math.prod(spatial) == 1:  # training needs two values per channel
        n = 2
    return {
        "kind": kind,
        "shape": (n, draw(st.integers(1, 16)), *spatial),
        "dtype": draw(st.sampled_from([torch.float64, torch.float32])),
        "affine": draw(st.booleans()),
        "bias": draw(st.booleans()),
        "track": draw(st.booleans()),
        "momentum": draw(MOMENTA),
        "eps": draw(st.sampled_from([1e-5, 1e-3, 0.1])),
        "steps": draw(st.integers(1, 3)),
        "offset": draw(st.sampled_from([0.0, 3.0, -10.0])),
        "scale": draw(st.sampled_from([1.0, 0.1, 5.0])),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def batch_stats(x, eps):
    return Stats(x, tuple(x.shape), (0, *range(2, x.ndim)), (1,), eps=eps)


def _explicit(**changes):
    case = {
        "kind": "2d",
        "shape": (4, 3, 5, 2),
        "dtype": torch.float64,
        "affine": True,
        "bias": True,
        "track": True,
        "momentum": 0.1,
        "eps": 1e-5,
        "steps": 3,
        "offset": 3.0,
        "scale": 1.0,
        "seed": 1,
    }
    return {**case, **changes}


@given(batch_norm_cases())
@example(_explicit())  # every momentum case, always exercised
@example(_explicit(momentum=None, dtype=torch.float32, kind="1d", shape=(8, 16)))
@example(_explicit(momentum=0.0, kind="3d", shape=(2, 3, 2, 3, 4)))
@example(_explicit(momentum=1.0, bias=False, kind="1d-seq", shape=(3, 4, 5)))
@example(_explicit(track=False, affine=False))
def test_batch_norm_modules_match_torch(case):
    torch_cls, our_cls, _ = TWINS[case["kind"]]
    rng = np.random.default_rng(case["seed"])
    dtype, eps, shape = case["dtype"], case["eps"], case["shape"]
    kwargs = dict(
        eps=eps,
        momentum=case["momentum"],
        affine=case["affine"],
        track_running_stats=case["track"],
        dtype=dtype,
        bias=case["bias"],
    )
    theirs = torch_cls(shape[1], **kwargs)
    randomize_(theirs, rng, dtype)
    ours = our_cls(shape[1], **kwargs)
    ours.load_state_dict(theirs.state_dict())

    def closed_form(training):
        def grads(grad_output, x):
            weight = None if theirs.weight is None else theirs.weight.detach()
            return backward.batch_norm_backward(
                grad_output, x, weight, eps, training, theirs.running_mean, theirs.running_var
            )

        return grads

    for step in range(case["steps"]):
        x, grad_output = sample_step(rng, shape, dtype, case)
        compare_step(
            f"train step {step}",
            theirs,
            ours,
            x,
            grad_output,
            batch_stats(x, eps),
            closed_form(True),
        )

    theirs.eval()
    ours.eval()
    x, grad_output = sample_step(rng, shape, dtype, case)
    if case["track"]:
        stats = Stats.running(x, theirs.running_mean, theirs.running_var, eps)
    else:
        stats = batch_stats(x, eps)
    compare_step("eval", theirs, ours, x, grad_output, stats, closed_form(not case["track"]))


@given(batch_norm_cases())
def test_batch_norm_on_numpy_matches_torch(case):
    """The NumPy float64 reference: same function, NumPy arrays in, buffers updated in place."""
    rng = np.random.default_rng(case["seed"])
    shape, eps, momentum = case["shape"], case["eps"], case["momentum"] or 0.0
    x = case["offset"] + case["scale"] * rng.standard_normal(shape)
    weight, bias = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    mean_np, var_np = rng.standard_normal(shape[1]), rng.random(shape[1]) + 0.1
    mean_t, var_t = torch.tensor(mean_np), torch.tensor(var_np)
    for training in (True, False):
        ours = functional.batch_norm(x, mean_np, var_np, weight, bias, training, momentum, eps)
        theirs = torch.nn.functional.batch_norm(
            torch.tensor(x),
            mean_t,
            var_t,
            torch.tensor(weight),
            torch.tensor(bias),
            training,
            momentum,
            eps,
        )
        assert isinstance(ours, np.ndarray)
        stats = batch_stats(x, eps) if training else Stats.running(x, mean_t, var_t, eps)
        assert_close(
            "numpy output", ours, theirs, stats.forward_atol(theirs, torch.float64, weight, bias)
        )
        assert_close("numpy running_mean", mean_np, mean_t, 1e-12 * (np.abs(x).max() + 1))
        assert_close("numpy running_var", var_np, var_t, 1e-12 * np.abs(var_np).max())
