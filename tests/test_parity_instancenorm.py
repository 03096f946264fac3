"""refimpl instance norm against torch.nn on generated cases (forward, buffers, backward)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import refimpl.nn as rnn
from refimpl import backward
from tests.conftest import Stats, compare_step, randomize_, sample_step

TWINS = {
    1: (torch.nn.InstanceNorm1d, rnn.InstanceNorm1d),
    2: (torch.nn.InstanceNorm2d, rnn.InstanceNorm2d),
    3: (torch.nn.InstanceNorm3d, rnn.InstanceNorm3d),
}


@st.composite
def instance_norm_cases(draw):
    spatial_dims = draw(st.sampled_from(sorted(TWINS)))
    spatial = draw(st.lists(st.integers(1, 8), min_size=spatial_dims, max_size=spatial_dims))
    if math.prod(spatial) == 1:  # training needs two spatial values per instance
        spatial[0] = 2
    return {
        "spatial_dims": spatial_dims,
        "shape": (draw(st.integers(1, 8)), draw(st.integers(1, 16)), *spatial),
        "unbatched": draw(st.booleans()),
        "dtype": draw(st.sampled_from([torch.float64, torch.float32])),
        "affine": draw(st.booleans()),
        "bias": draw(st.booleans()),
        "track": draw(st.booleans()),
        "momentum": draw(st.one_of(st.sampled_from([0.1, None, 0.0, 1.0]), st.floats(0, 1))),
        "eps": draw(st.sampled_from([1e-5, 1e-3, 0.1])),
        "steps": draw(st.integers(1, 3)),
        "offset": draw(st.sampled_from([0.0, 3.0, -10.0])),
        "scale": draw(st.sampled_from([1.0, 0.1, 5.0])),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def _explicit(**changes):
    case = {
        "spatial_dims": 2,
        "shape": (4, 3, 5, 2),
        "unbatched": False,
        "dtype": torch.float64,
        "affine": True,
        "bias": True,
        "track": True,
        "momentum": 0.1,
        "eps": 1e-5,
        "steps": 2,
        "offset": 3.0,
        "scale": 1.0,
        "seed": 1,
    }
    return {**case, **changes}


@given(instance_norm_cases())
@example(_explicit())  # the running-stat average over instances, always exercised
@example(
    _explicit(dtype=torch.float32, momentum=None, unbatched=True, spatial_dims=1, shape=(3, 4, 5))
)
@example(_explicit(track=False, affine=False, spatial_dims=1, shape=(2, 3, 7)))
def test_instance_norm_modules_match_torch(case):
    torch_cls, our_cls = TWINS[case["spatial_dims"]]
    rng = np.random.default_rng(case["seed"])
    dtype, eps, shape = case["dtype"], case["eps"], case["shape"]
    if case["unbatched"]:
        shape = shape[1:]
    kwargs = dict(
        eps=eps,
        momentum=case["momentum"],
        affine=case["affine"],
        track_running_stats=case["track"],
        dtype=dtype,
        bias=case["bias"],
    )
    channels = shape[0] if case["unbatched"] else shape[1]
    theirs = torch_cls(channels, **kwargs)
    randomize_(theirs, rng, dtype)
    ours = our_cls(channels, **kwargs)
    ours.load_state_dict(theirs.state_dict())

    def batched(t):
        return t.unsqueeze(0) if case["unbatched"] else t

    def closed_form(grad_output, x):
        weight = None if theirs.weight is None else theirs.weight.detach()
        gi, gw, gb = backward.instance_norm_backward(batched(grad_output), batched(x), weight, eps)
        return (gi.squeeze(0) if case["unbatched"] else gi), gw, gb

    def stats(x, training):
        x4 = batched(x)
        if training or not case["track"]:
            return Stats(x4, tuple(x4.shape), tuple(range(2, x4.ndim)), (1,), eps=eps)
        return Stats.running(x4, theirs.running_mean, theirs.running_var, eps)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no spurious warnings from either side
        for step in range(case["steps"]):
            x, grad_output = sample_step(rng, shape, dtype, case)
            compare_step(
                f"train step {step}",
                theirs,
                ours,
                x,
                grad_output,
                _batched_stats(stats(x, True), case["unbatched"]),
                closed_form,
            )
        theirs.eval()
        ours.eval()
        x, grad_output = sample_step(rng, shape, dtype, case)
        use_batch = not case["track"]
        compare_step(
            "eval",
            theirs,
            ours,
            x,
            grad_output,
            _batched_stats(stats(x, False), case["unbatched"]),
            closed_form if use_batch else None,
        )


class _batched_stats:
    """Stats computed on the batched view, judged on the (maybe unbatched) tensors."""

    def __init__(self, stats, unbatched):
        self.stats, self.unbatched = stats, unbatched

    def forward_atol(self, y_ref, dtype, weight=None, bias=None):
        atol = self.stats.forward_atol(y_ref, dtype, weight, bias)
        return atol[0] if self.unbatched and np.ndim(atol) else atol

    def backward_atols(self, grad_output, dtype, weight=None):
        g = grad_output.unsqueeze(0) if self.unbatched else grad_output
        return self.stats.backward_atols(g, dtype, weight)
