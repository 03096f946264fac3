"""float16 / bfloat16: refimpl computes in float32 and rounds once, as torch does.

Bound: both libraries round a float32 result to the half type. Those float32 results
differ by the float32 bound (see conftest), and rounding can then split them across one
step of the half grid, so elementwise

    |ours - torch| <= eps_half * |torch| + C32 * eps32 * (terms + 1)

where eps_half is the type's machine epsilon (2**-10 for float16, 2**-7 for bfloat16):
one unit in the last place, never more. Running statistics follow the same rule.
Exception: with half-precision *parameters*, torch's batch-norm kernel (batch and
instance norm) keeps alpha = w * rstd and beta = b - mean * alpha in the half type, which
adds torch's own 2 * eps_half * terms (x * alpha and mean * alpha each rounded once).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import refimpl.nn as rnn
from tests.conftest import C32, EPS32, Stats, assert_close, randomize_, to_numpy

NORMS = {
    # name: (make(nn), input shape, statistics view, reduce axes, param axes)
    "batch": (lambda nn: nn.BatchNorm2d(6), (4, 6, 3, 3), None, (0, 2, 3), (1,)),
    "instance": (
        lambda nn: nn.InstanceNorm1d(6, affine=True, track_running_stats=True),
        (4, 6, 7),
        None,
        (2,),
        (1,),
    ),
    "layer": (lambda nn: nn.LayerNorm((3, 5)), (4, 3, 5), None, (1, 2), (1, 2)),
    "group": (lambda nn: nn.GroupNorm(3, 6), (4, 6, 5), (4, 3, 2, 5), (2, 3), (1,)),
    "rms": (lambda nn: nn.RMSNorm(5), (4, 3, 5), None, (2,), (2,)),
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("params_dtype", ["half", "float32"])
@pytest.mark.parametrize("name", sorted(NORMS))
@pytest.mark.parametrize("seed", range(5))
def test_half_precision_matches_torch(name, dtype, params_dtype, seed):
    make, shape, view, reduce, params = NORMS[name]
    rng = np.random.default_rng(seed)
    pdtype = dtype if params_dtype == "half" else torch.float32
    theirs = make(torch.nn)
    randomize_(theirs, rng, torch.float32)
    theirs = theirs.to(pdtype)
    ours = make(rnn).to(pdtype)
    ours.load_state_dict(theirs.state_dict())
    eps_half = torch.finfo(dtype).eps
    steps = 0
    for _ in range(2):
        x = torch.as_tensor(2 + 3 * rng.standard_normal(shape), dtype=dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's "cannot dispatch to fused" for RMS
            y_theirs, y_ours = theirs(x), ours(x)
        assert y_ours.dtype == y_theirs.dtype == dtype
        stats = Stats(
            x, view or shape, reduce, params, centered=name != "rms", eps=theirs.eps or EPS32
        )
        weight, bias = getattr(theirs, "weight", None), getattr(theirs, "bias", None)
        terms = stats.condition() * stats.param_view(weight) + (
            stats.param_view(bias) if bias is not None else 0
        )
        atol = eps_half * np.abs(to_numpy(y_theirs)) + C32 * EPS32 * (terms + 1)
        if name in ("batch", "instance") and params_dtype == "half":
            # torch's batch-norm kernel keeps alpha = w * rstd and beta = b - mean * alpha
            # in the parameters' dtype: its own error is then eps_half * terms
            atol = atol + 2 * eps_half * terms
        assert_close(f"{name} {dtype}", y_ours, y_theirs, atol)
        steps += 1
        if getattr(theirs, "running_mean", None) is not None:
            # a half buffer is updated by momentum * stat + (1 - momentum) * running with
            # each product and the sum rounded to the half type: per step at most
            # eps_half * (2 |running| + momentum * |stat|), |stat| <= max|x| (or its square)
            x_max = np.abs(to_numpy(x)).max()
            for buffer, stat in (("running_mean", x_max), ("running_var", x_max**2)):
                ref = np.abs(to_numpy(getattr(theirs, buffer)))
                half = getattr(theirs, buffer).dtype != torch.float32
                bound = C32 * EPS32 * (ref + stat)
                if half:
                    bound = bound + steps * eps_half * (2 * ref + theirs.momentum * stat)
                assert_close(
                    f"{name} {buffer}", getattr(ours, buffer), getattr(theirs, buffer), bound
                )
