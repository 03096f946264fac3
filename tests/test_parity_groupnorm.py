"""refimpl group norm against torch.nn on generated cases."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

import refimpl.nn as rnn
from refimpl import backward, functional
from tests.conftest import (
    Stats,
    assert_numpy_matches_torch,
    compare_step,
    randomize_,
    sample_step,
)


@st.composite
def group_cases(draw):
    groups = draw(st.integers(1, 8))
    channels = groups * draw(st.integers(1, 16 // groups))
    spatial = draw(st.lists(st.integers(1, 8), min_size=0, max_size=3))
    n = draw(st.integers(1, 8))
    if n * channels // groups * int(np.prod(spatial)) == 1:  # torch's training-size check
        n = 2
    return {
        "shape": (n, channels, *spatial),
        "groups": groups,
        "dtype": draw(st.sampled_from([torch.float64, torch.float32])),
        "affine": draw(st.booleans()),
        "bias": draw(st.booleans()),
        "eps": draw(st.sampled_from([1e-5, 1e-3, 0.1])),
        "offset": draw(st.sampled_from([0.0, 3.0, -10.0])),
        "scale": draw(st.sampled_from([1.0, 0.1, 5.0])),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


@given(group_cases())
def test_group_norm_modules_match_torch(case):
    rng = np.random.default_rng(case["seed"])
    shape, dtype, eps, groups = case["shape"], case["dtype"], case["eps"], case["groups"]
    kwargs = dict(eps=eps, affine=case["affine"], bias=case["bias"], dtype=dtype)
    theirs = torch.nn.GroupNorm(groups, shape[1], **kwargs)
    randomize_(theirs, rng, dtype)
    ours = rnn.GroupNorm(groups, shape[1], **kwargs)
    ours.load_state_dict(theirs.state_dict())
    view = (shape[0], groups, shape[1] // groups, *shape[2:])

    def closed_form(grad_output, x):
        weight = None if theirs.weight is None else theirs.weight.detach()
        return backward.group_norm_backward(grad_output, x, groups, weight, eps)

    for step in range(2):
        x, grad_output = sample_step(rng, shape, dtype, case)
        stats = Stats(x, view, tuple(range(2, len(view))), (1,), eps=eps)
        compare_step(f"step {step}", theirs, ours, x, grad_output, stats, closed_form)
    assert_numpy_matches_torch(
        rng, shape, case, functional.group_norm, torch.nn.functional.group_norm, groups, eps=eps
    )
