"""Shared test setup: hypothesis profiles, seeding, and the tolerance helpers.

Profiles: "ci" (300 examples, derandomized) when the CI environment variable is set,
"dev" (40 examples) otherwise; HYPOTHESIS_PROFILE overrides either ("stress": 2,000
fresh random examples, to check that the tolerances below are not tuned to one sample).

Tolerances against torch
------------------------

float64: max|ours - torch| <= 1e-12 * scale, where scale is the size of the quantity
(max|torch|) or, where the result is a cancellation of larger terms, the size of those
terms: torch's y = x*alpha + beta adds terms of size (|x| + |mean|) * rstd * |w| + |b|,
and a gradient that is exactly zero in exact arithmetic is judged against the terms
that cancel, not against its own rounding noise. Without cancellation the two agree.

float32: torch's CPU kernels compute y = x * alpha + beta with alpha = w * rstd and
beta = b - mean * alpha, each rounded to float32; refimpl computes (x - mean) * rstd * w
+ b with a float32 mean. Both are within a few roundings of the exact result, each
rounding at most eps32 relative to the magnitudes it touches, so elementwise

    |ours - torch| <= C32 * eps32 * ((|x| + |mean|) * rstd * |w| + |b| + 1)

The (|x| + |mean|) * rstd factor is the condition number: an error of eps32 * |mean| in
the float32 mean becomes eps32 * |mean| * rstd in x_hat, which is large when the channel
mean is large compared to its standard deviation. Each side is within a couple of
roundings of that size (float32 reductions are pairwise, so their error grows like
log2(n) * eps32 only in the worst case and like sqrt(log2 n) * eps32 in practice).
C32 = 8: over the ~2,000 CI cases the worst error needs C = 2.4 (a running variance of
instance norm); 8 leaves a margin of 3, while any semantic error (biased vs unbiased
variance, a wrong momentum, a missing eps) is orders of magnitude larger.
Running statistics and gradients use the same constant with the analogous sizes (see
Stats.backward_atols and running_atols).
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from hypothesis import settings

# One intra-op thread: pytest-xdist already runs one worker per core, and torch's thread
# pool on tiny tensors costs ~20 ms a call in contention (10x the work itself).
torch.set_num_threads(1)

settings.register_profile("ci", max_examples=300, deadline=None, derandomize=True, print_blob=True)
settings.register_profile("dev", max_examples=40, deadline=None)
# HYPOTHESIS_PROFILE=stress: many fresh random cases, for checking the tolerances hold.
settings.register_profile("stress", max_examples=2000, deadline=None)
_default_profile = "ci" if os.environ.get("CI") else "dev"
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or _default_profile)


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


# --------------------------------------------------------------------------- tolerances
# (derived in the module docstring)

EPS32 = float(np.finfo(np.float32).eps)
C32 = 8.0
REL64 = 1e-12


def to_numpy(t) -> np.ndarray:
    if t is None:
        return None
    return t.detach().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, float)


def assert_close(name: str, ours, theirs, atol) -> None:
    """Fail with the worst ratio when |ours - theirs| exceeds atol (scalar or elementwise)."""
    a, b = to_numpy(ours), to_numpy(theirs)
    assert a.shape == b.shape, f"{name}: shape {a.shape} != {b.shape}"
    err = np.abs(a - b)
    # NaN must match NaN (torch's own edge cases); otherwise compare.
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    assert np.array_equal(nan_a, nan_b), f"{name}: NaN pattern differs"
    bound = np.broadcast_to(np.asarray(atol, float), err.shape)
    bad = ~nan_a & (err > bound)
    if bad.any():
        worst = np.max(err[bad] / np.maximum(bound[bad], 1e-300))
        raise AssertionError(
            f"{name}: {bad.sum()} of {err.size} elements exceed the bound, worst "
            f"error/bound = {worst:.3g}, max err = {err.max():.3g}"
        )


class Stats:
    """float64 statistics of x computed here with NumPy, independent of refimpl.

    view: shape the statistics are taken in (group norm splits channels),
    reduce: axes of that view averaged over, params: axes of x the affine spans.
    """

    def __init__(self, x, view, reduce, params, centered=True, eps=1e-5):
        x = to_numpy(x)
        grouped = x.reshape(view)
        self.mean = grouped.mean(axis=reduce, keepdims=True) if centered else 0.0 * grouped
        var = ((grouped - self.mean) ** 2).mean(axis=reduce, keepdims=True)
        self.rstd = np.broadcast_to(1 / np.sqrt(var + eps), view).reshape(x.shape)
        self.mean = np.broadcast_to(self.mean, view).reshape(x.shape)
        self.x = x
        self.x_hat = (x - self.mean) * self.rstd
        self.params = params
        self.view, self.reduce = view, reduce

    @classmethod
    def running(cls, x, running_mean, running_var, eps):
        """Statistics of eval mode: the per-channel running buffers, not the batch."""
        x = to_numpy(x)
        shape = [1] * x.ndim
        shape[1] = x.shape[1]
        self = cls.__new__(cls)
        self.x, self.params = x, (1,)
        self.mean = np.broadcast_to(to_numpy(running_mean).reshape(shape), x.shape)
        var = to_numpy(running_var).reshape(shape)
        self.rstd = np.broadcast_to(1 / np.sqrt(var + eps), x.shape)
        self.x_hat = (x - self.mean) * self.rstd
        return self

    def param_view(self, p):
        """A parameter (or ones) broadcast against x."""
        shape = [self.x.shape[a] if a in self.params else 1 for a in range(self.x.ndim)]
        return np.ones(shape) if p is None else np.abs(to_numpy(p)).reshape(shape)

    def condition(self):
        """(|x| + |mean|) * rstd: how much a rounding of x or the mean is amplified."""
        return (np.abs(self.x) + np.abs(self.mean)) * self.rstd

    def forward_atol(self, y_ref, dtype, weight=None, bias=None):
        w, b = self.param_view(weight), self.param_view(bias) if bias is not None else 0.0
        terms = self.condition() * w + b  # sizes of the terms torch's x*alpha + beta adds
        if dtype == torch.float64:
            scale = max(np.max(np.abs(to_numpy(y_ref)), initial=0.0), np.max(terms, initial=0))
            return REL64 * max(scale, 1e-300)
        return C32 * EPS32 * (terms + 1)

    def backward_atols(self, grad_output, dtype, weight=None):
        """Bounds for (grad_input, grad_weight, grad_bias) from the size of their terms."""
        g = np.abs(to_numpy(grad_output))
        w = self.param_view(weight)
        others = tuple(a for a in range(self.x.ndim) if a not in self.params)
        # dL/dx = rstd * (g_hat - mean(g_hat) - x_hat * mean(g_hat * x_hat)): its terms
        scale_input = (
            np.max(g * w, initial=0.0)
            * np.max(self.rstd, initial=0.0)
            * (2 + np.max(self.x_hat**2, initial=0.0))
        )
        if dtype == torch.float64:
            rel, amplify = REL64, 1.0
        else:  # float32: x_hat itself carries the forward's condition number
            rel, amplify = C32 * EPS32, 1.0 + np.max(self.condition(), initial=0.0)
        scale_weight = np.sum(g * (np.abs(self.x_hat) + amplify), axis=others)
        scale_bias = np.sum(g, axis=others)
        return (
            rel * max(scale_input * amplify, 1e-300),
            rel * np.maximum(scale_weight, 1e-300),
            rel * np.maximum(scale_bias, 1e-300),
        )


def running_atols(x, dtype, running_mean_ref, running_var_ref):
    """Bounds for running statistics, from the sizes their roundings touch.

    mean: a rounding of any x moves it by eps * |x|, so the bound is relative to
    |mean| + max|x|. variance: a deviation d = x - mean that is off by eps * |x| moves d^2
    by 2 * eps * |x| * |d|, and |d| ~ sqrt(var): relative to var + max|x| * sqrt(var).
    """
    rel = REL64 if dtype == torch.float64 else C32 * EPS32
    scale_x = np.max(np.abs(to_numpy(x)), initial=0.0)
    var = np.abs(to_numpy(running_var_ref))
    return (
        rel * (np.abs(to_numpy(running_mean_ref)) + scale_x),
        rel * (var + scale_x * np.sqrt(var)) + 1e-300,
    )


def compare_step(name, torch_module, our_module, x, grad_output, stats, closed_form=None):
    """One forward/backward of both modules on the same input; compare everything.

    Compares outputs, input and parameter gradients (autograd through refimpl against
    torch autograd), running buffers and num_batches_tracked; with ``closed_form``, also
    the closed-form backward ``closed_form(grad_output, x) -> (gi, gw, gb)`` against torch.
    """
    dtype = x.dtype
    x_torch = x.clone().requires_grad_()
    x_ours = x.clone().requires_grad_()
    y_torch = torch_module(x_torch)
    y_ours = our_module(x_ours)
    weight = getattr(torch_module, "weight", None)
    bias = getattr(torch_module, "bias", None)
    assert_close(
        f"{name}: output", y_ours, y_torch, stats.forward_atol(y_torch, dtype, weight, bias)
    )

    y_torch.backward(grad_output)
    y_ours.backward(grad_output)
    atol_input, atol_weight, atol_bias = stats.backward_atols(grad_output, dtype, weight)
    assert_close(f"{name}: grad input", x_ours.grad, x_torch.grad, atol_input)
    if weight is not None:
        assert_close(f"{name}: grad weight", our_module.weight.grad, weight.grad, atol_weight)
    if bias is not None:
        assert_close(f"{name}: grad bias", our_module.bias.grad, bias.grad, atol_bias)

    if getattr(torch_module, "running_mean", None) is not None:
        atol_mean, atol_var = running_atols(
            x, dtype, torch_module.running_mean, torch_module.running_var
        )
        assert_close(
            f"{name}: running_mean", our_module.running_mean, torch_module.running_mean, atol_mean
        )
        assert_close(
            f"{name}: running_var", our_module.running_var, torch_module.running_var, atol_var
        )
        assert our_module.num_batches_tracked.item() == torch_module.num_batches_tracked.item()
    else:
        assert getattr(our_module, "running_mean", None) is None

    if closed_form is not None:
        grads = closed_form(grad_output, x)
        assert_close(f"{name}: closed-form grad input", grads[0], x_torch.grad, atol_input)
        if weight is not None:
            assert_close(f"{name}: closed-form grad weight", grads[1], weight.grad, atol_weight)
        if bias is not None:
            assert_close(f"{name}: closed-form grad bias", grads[2], bias.grad, atol_bias)
    torch_module.zero_grad()
    our_module.zero_grad()
    return y_ours


def randomize_(module, rng, dtype) -> None:
    """Give parameters and running buffers random, valid values (same for both twins)."""
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if not tensor.is_floating_point():
                continue
            values = rng.standard_normal(tuple(tensor.shape))
            if name.endswith("running_var"):
                values = np.abs(values) + 0.1
            tensor.copy_(torch.as_tensor(values, dtype=dtype))


def sample_input(rng, shape, dtype, offset, scale):
    return torch.as_tensor(offset + scale * rng.standard_normal(shape), dtype=dtype)


def sample_step(rng, shape, dtype, case):
    """One step's input (with the case's offset and scale) and a random upstream gradient."""
    x = sample_input(rng, shape, dtype, case["offset"], case["scale"])
    return x, torch.as_tensor(rng.standard_normal(shape), dtype=dtype)


def assert_numpy_matches_torch(rng, shape, case, ours_fn, theirs_fn, *args, **kwargs):
    """Ours on a float64 NumPy array returns NumPy and matches torch's function on a tensor.

    The two functions share one signature, so the same ``args``/``kwargs`` go to both.
    """
    x = case["offset"] + case["scale"] * rng.standard_normal(shape)
    ours = ours_fn(x, *args, **kwargs)
    theirs = theirs_fn(torch.tensor(x), *args, **kwargs)
    assert isinstance(ours, np.ndarray)
    assert_close("numpy", ours, theirs, 1e-12 * (np.abs(theirs.numpy()).max() + 1))

