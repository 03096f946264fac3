"""Batch renormalization (Ioffe 2017): batch norm corrected towards its running statistics.

In training, batch norm normalizes with the batch's mean and standard deviation
:math:`\\mu_B, \\sigma_B`; in eval mode with the running ones :math:`\\mu, \\sigma`. Batch
renorm keeps the batch normalization but corrects it, per channel, by

    r = clip(sigma_B / sigma, 1 / r_max, r_max),   d = clip((mu_B - mu) / sigma, -d_max, d_max)
    x_hat = (x - mu_B) / sigma_B * r + d,          y = weight * x_hat + bias

with ``sigma_B = sqrt(var_B + eps)`` (biased batch variance, as batch norm) and ``sigma =
sqrt(running_var + eps)``. When neither clip bites, ``x_hat = (x - mu) / sigma``: the
training output *is* the eval output. ``r`` and ``d`` are constants for the gradient
(stop-gradient), so the gradient still flows through the batch statistics: it is batch
norm's gradient with ``g * weight`` scaled by ``r`` (:func:`batch_renorm_backward`).
``r_max = 1, d_max = 0`` is batch norm, in training and in eval.

The running statistics are torch's batch norm buffers (``running_mean``, and the
*unbiased* variance in ``running_var``), updated exactly as batch norm updates them,
after ``r`` and ``d`` are computed from their old values. The paper keeps a moving
average of ``sigma_B`` instead; keeping the variance makes eval mode identical to batch
norm's, and a trained batch norm's state loads as is. torch has no batch renorm; the
modules are :class:`refimpl.nn.batchrenorm.BatchRenorm1d` and ``BatchRenorm2d``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from array_api_compat import array_namespace, is_torch_array

from refimpl import backward, core
from refimpl.functional import (
    _check_batch_norm_args,
    _float32_for_half,
    _unbiased,
    _update_running_,
)

__all__ = [
    "check_limits",
    "renorm_corrections",
    "batch_renorm",
    "batch_renorm_backward",
    "RenormSchedule",
]


def check_limits(r_max, d_max) -> None:
    """Raise as torch would for a bad limit: ``r_max >= 1`` and ``d_max >= 0`` (the clip
    ranges [1 / r_max, r_max] and [-d_max, d_max] must contain r = 1 and d = 0).

    Example:

    >>> check_limits(3.0, 5.0)
    >>> check_limits(0.5, 5.0)
    Traceback (most recent call last):
    ...
    ValueError: batch_renorm r_max must be at least 1, but got 0.5
    """
    if not r_max >= 1.0:
        raise ValueError(f"batch_renorm r_max must be at least 1, but got {r_max}")
    if not d_max >= 0.0:
        raise ValueError(f"batch_renorm d_max must be non-negative, but got {d_max}")


def _stop_gradient(array):
    return array.detach() if is_torch_array(array) else array


def renorm_corrections(batch_mean, batch_var, running_mean, running_var, eps, r_max, d_max):
    """The corrections ``(r, d)``, shaped like ``batch_mean``, outside any autograd graph.

    ``batch_var`` is the biased batch variance; ``running_mean`` and ``running_var`` are
    broadcastable to ``batch_mean`` (reshape them per channel).

    Example:

    >>> import numpy as np
    >>> r, d = renorm_corrections(np.array([1.0, 0.0]), np.array([4.0, 100.0]),
    ...                           np.zeros(2), np.ones(2), eps=0.0, r_max=3.0, d_max=0.5)
    >>> r.tolist(), d.tolist()  # channel 1: r = 10 clipped to 3; channel 0: d = 1 clipped
    ([2.0, 3.0], [0.5, 0.0])
    """
    xp = array_namespace(batch_mean)
    batch_mean, batch_var = _stop_gradient(batch_mean), _stop_gradient(batch_var)
    running_mean, running_var = _stop_gradient(running_mean), _stop_gradient(running_var)
    sigma = xp.sqrt(running_var + eps)
    r = xp.clip(xp.sqrt(batch_var + eps) / sigma, 1.0 / r_max, float(r_max))
    d = xp.clip((batch_mean - running_mean) / sigma, -float(d_max), float(d_max))
    return r, d


def _check(
    input, running_mean, running_var, weight, bias, training, momentum, eps, r_max, d_max
) -> None:
    """batch_norm's checks, with its messages; then the limits."""
    _check_batch_norm_args(
        "batch_renorm", input, running_mean, running_var, weight, bias, training, momentum,
        eps, training_needs_running="running_mean must be defined in training mode too: "
        "r and d use it",
    )
    check_limits(r_max, d_max)


@_float32_for_half
def batch_renorm(
    input,
    running_mean,
    running_var,
    weight=None,
    bias=None,
    training=False,
    momentum=0.1,
    eps=1e-5,
    r_max=3.0,
    d_max=5.0,
):
    """Batch renormalization of each channel (dim 1); ``functional.batch_norm``'s
    signature plus the limits ``r_max`` (>= 1) and ``d_max`` (>= 0).

    training=True: batch statistics corrected by ``r`` and ``d`` (computed from the
    running statistics *before* this batch updates them, in place, as batch norm does).
    training=False: batch norm's eval mode. The running statistics are needed in both.

    Example:

    >>> import numpy as np
    >>> from refimpl import functional
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 20.0]])  # (N, C) = (3, 2)
    >>> mean, var = np.array([3.0, 20.0]), np.array([4.0, 100.0])
    >>> y = batch_renorm(x, mean.copy(), var.copy(), training=True, r_max=3.0, d_max=5.0)
    >>> bool(np.allclose(y, batch_renorm(x, mean, var)))  # no clip bites: y = eval output
    True
    >>> y = batch_renorm(x, mean.copy(), var.copy(), training=True, r_max=1.0, d_max=0.0)
    >>> bool(np.allclose(y, functional.batch_norm(x, None, None, training=True)))  # = BN
    True
    """
    _check(input, running_mean, running_var, weight, bias, training, momentum, eps, r_max, d_max)
    shape = tuple(input.shape)
    xp = array_namespace(input)
    axes = core.batch_axes(shape)
    stat_shape = core.param_shape(len(shape), shape, axes.params)
    count = math.prod(shape[a] for a in axes.reduce)
    if count == 0 or math.prod(shape) == 0:  # an empty batch: empty output, nothing updated
        zeros = xp.zeros(stat_shape, dtype=input.dtype)
        return core.normalize(input, zeros, zeros, eps, weight, bias, axes.params)
    old_mean = xp.reshape(running_mean, stat_shape)
    old_var = xp.reshape(running_var, stat_shape)
    if not training:
        return core.normalize(input, old_mean, old_var, eps, weight, bias, axes.params)
    mean, var = core.moments(input, axes.reduce)
    r, d = renorm_corrections(mean, var, old_mean, old_var, eps, r_max, d_max)
    x_hat = core.standardize(input, mean, var, eps) * r + d
    _update_running_(running_mean, xp.reshape(mean, (-1,)), momentum)
    _update_running_(running_var, xp.reshape(_unbiased(var, count), (-1,)), momentum)
    return core.affine(x_hat, weight, bias, axes.params)


def batch_renorm_backward(
    grad_output,
    input,
    running_mean,
    running_var,
    weight=None,
    eps=1e-5,
    training=True,
    r_max=3.0,
    d_max=5.0,
):
    """Gradients of :func:`batch_renorm`, with ``r`` and ``d`` constants:
    ``(grad_input, grad_weight, grad_bias)``.

    Pass the running statistics the forward *saw* (before its in-place update). With
    ``x_hat_B = (x - mu_B) / sigma_B`` and ``g_hat = g * weight * r``::

        dL/dx = (g_hat - mean(g_hat) - x_hat_B * mean(g_hat * x_hat_B)) / sigma_B

    batch norm's line (:mod:`refimpl.backward`) with ``g * weight`` scaled by ``r``;
    ``dL/dweight = sum(g * x_hat)``, ``dL/dbias = sum(g)``. training=False: batch norm's
    eval-mode gradient.

    Example:

    >>> import numpy as np
    >>> import torch
    >>> rng = np.random.default_rng(0)
    >>> x, g = rng.standard_normal((2, 4, 3))  # input and dL/dy, (N, C) = (4, 3)
    >>> mean, var = np.zeros(3), np.full(3, 4.0)
    >>> dx, dw, db = batch_renorm_backward(g, x, mean, var)
    >>> xt = torch.tensor(x, requires_grad=True)  # autograd through the forward
    >>> batch_renorm(xt, torch.tensor(mean), torch.tensor(var), training=True).backward(
    ...     torch.tensor(g))
    >>> bool(np.allclose(dx, xt.grad.numpy())), bool(np.allclose(dx.sum(axis=0), 0))
    (True, True)
    """
    if not training:
        return backward.batch_norm_backward(
            grad_output, input, weight, eps, False, running_mean, running_var
        )
    xp = array_namespace(input)
    shape = tuple(input.shape)
    axes = core.batch_axes(shape)
    stat_shape = core.param_shape(input.ndim, shape, axes.params)
    mean, var = core.moments(input, axes.reduce)
    rstd = 1 / xp.sqrt(var + eps)
    x_hat_batch = (input - mean) * rstd
    r, d = renorm_corrections(
        mean,
        var,
        xp.reshape(running_mean, stat_shape),
        xp.reshape(running_var, stat_shape),
        eps,
        r_max,
        d_max,
    )
    g_hat = core.affine(grad_output, weight, None, axes.params) * r
    grad_input = backward._through_standardize(xp, g_hat, x_hat_batch, rstd, axes.reduce)
    grad_weight, grad_bias = backward._param_grads(
        xp, grad_output, x_hat_batch * r + d, axes.params, (shape[1],)
    )
    return grad_input, grad_weight, grad_bias


@dataclass(frozen=True)
class RenormSchedule:
    """The paper's warm-up of the limits, as a function of the training step.

    Batch norm (``r_max = 1``, ``d_max = 0``) for the first ``warmup_steps``, then each
    limit relaxed linearly to its final value, reached at ``r_max_steps`` and
    ``d_max_steps``. The defaults are the paper's ImageNet run (5,000 steps of batch norm,
    ``r_max = 3`` at 40,000 steps, ``d_max = 5`` at 25,000); the paper says "gradually",
    the linear ramp is this implementation's reading. Scale the steps to a shorter run.

    Example:

    >>> schedule = RenormSchedule(warmup_steps=10, r_max_steps=50, d_max_steps=30)
    >>> schedule(0), schedule(10), schedule(20), schedule(30), schedule(1000)
    ((1.0, 0.0), (1.0, 0.0), (1.5, 2.5), (2.0, 5.0), (3.0, 5.0))
    """

    warmup_steps: int = 5000
    r_max_steps: int = 40000
    d_max_steps: int = 25000
    r_max: float = 3.0
    d_max: float = 5.0

    def __post_init__(self) -> None:
        check_limits(self.r_max, self.d_max)
        if not 0 <= self.warmup_steps <= min(self.r_max_steps, self.d_max_steps):
            raise ValueError(
                "RenormSchedule needs 0 <= warmup_steps <= r_max_steps and d_max_steps, got "
                f"{self.warmup_steps}, {self.r_max_steps}, {self.d_max_steps}"
            )

    def _ramp(self, step: int, until: int) -> float:
        if step <= self.warmup_steps:
            return 0.0
        if step >= until:
            return 1.0
        return (step - self.warmup_steps) / (until - self.warmup_steps)

    def __call__(self, step: int) -> tuple[float, float]:
        """``(r_max, d_max)`` for the step (the number of training batches seen before)."""
        r_max = 1.0 + (self.r_max - 1.0) * self._ramp(step, self.r_max_steps)
        d_max = self.d_max * self._ramp(step, self.d_max_steps)
        return r_max, d_max
