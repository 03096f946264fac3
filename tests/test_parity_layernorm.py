"""refimpl layer norm and RMS norm against torch.nn on generated cases."""

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
def layer_cases(draw):
    ndim = draw(st.integers(2, 5))
    shape = (
        draw(st.integers(1, 8)),
        draw(st.integers(1, 16)),
        *draw(st.lists(st.integers(1, 8), min_size=ndim - 2, max_size=ndim - 2)),
    )
    return {
        "shape": shape,
        "normalized_ndim": draw(st.integers(1, ndim - 1)),
        "dtype": draw(st.sampled_from([torch.float64, torch.float32])),
        "affine": draw(st.booleans()),
        "bias": draw(st.booleans()),
        "eps": draw(st.sampled_from([1e-5, 1e-3, 0.1, None])),
        "offset": draw(st.sampled_from([0.0, 3.0, -10.0])),
        "scale": draw(st.sampled_from([1.0, 0.1, 5.0])),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def _twins(torch_module, our_module, rng, dtype):
    randomize_(torch_module, rng, dtype)
    our_module.load_state_dict(torch_module.state_dict())
    return torch_module, our_module


@given(layer_cases())
def test_layer_norm_modules_match_torch(case):
    rng = np.random.default_rng(case["seed"])
    shape, dtype, eps = case["shape"], case["dtype"], case["eps"] or 1e-5
    normalized = shape[len(shape) - case["normalized_ndim"] :]
    kwargs = dict(eps=eps, elementwise_affine=case["affine"], bias=case["bias"], dtype=dtype)
    theirs, ours = _twins(
        torch.nn.LayerNorm(normalized, **kwargs), rnn.LayerNorm(normalized, **kwargs), rng, dtype
    )
    trailing = tuple(range(len(shape) - len(normalized), len(shape)))

    def closed_form(grad_output, x):
        weight = None if theirs.weight is None else theirs.weight.detach()
        return backward.layer_norm_backward(grad_output, x, normalized, weight, eps)

    for step in range(2):
        x, grad_output = sample_step(rng, shape, dtype, case)
        compare_step(
            f"step {step}",
            theirs,
            ours,
            x,
            grad_output,
            Stats(x, shape, trailing, trailing, eps=eps),
            closed_form,
        )
    # the NumPy reference path of the same function
    assert_numpy_matches_torch(
        rng, shape, case, functional.layer_norm, torch.nn.functional.layer_norm, normalized, eps=eps
    )


@given(layer_cases())
def test_rms_norm_modules_match_torch(case):
    rng = np.random.default_rng(case["seed"])
    shape, dtype, eps = case["shape"], case["dtype"], case["eps"]  # None: dtype's eps
    normalized = shape[len(shape) - case["normalized_ndim"] :]
    kwargs = dict(eps=eps, elementwise_affine=case["affine"], dtype=dtype)
    theirs, ours = _twins(
        torch.nn.RMSNorm(normalized, **kwargs), rnn.RMSNorm(normalized, **kwargs), rng, dtype
    )
    trailing = tuple(range(len(shape) - len(normalized), len(shape)))
    eps_value = torch.finfo(dtype).eps if eps is None else eps

    def closed_form(grad_output, x):
        weight = None if theirs.weight is None else theirs.weight.detach()
        gi, gw = backward.rms_norm_backward(grad_output, x, normalized, weight, eps)
        return gi, gw, None

    for step in range(2):
        x, grad_output = sample_step(rng, shape, dtype, case)
        stats = Stats(x, shape, trailing, trailing, centered=False, eps=eps_value)
        compare_step(f"step {step}", theirs, ours, x, grad_output, stats, closed_form)
    assert_numpy_matches_torch(
        rng, shape, case, functional.rms_norm, torch.nn.functional.rms_norm, normalized, eps=eps
    )
