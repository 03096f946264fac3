"""Closed-form backward passes, written with the same array-API core as the forward.

Every centered norm is ``y = x_hat * w + b`` with ``x_hat = (x - mean) * rstd`` over
some reduction axes. With ``g = dL/dy`` and ``g_hat = g * w``, the chain rule through
the mean and the variance collapses to one line (the book derives it)::

    dL/dx = rstd * (g_hat - mean(g_hat) - x_hat * mean(g_hat * x_hat))

with both means over the reduction axes. RMS norm has no mean to subtract, so its line
drops the middle term. The parameter gradients are sums over everything except the
parameter axes: ``dL/dw = sum(g * x_hat)``, ``dL/db = sum(g)``.

Each function takes the forward's inputs (statistics are recomputed, not saved) and
returns ``(grad_input, grad_weight, grad_bias)``; the parameter gradients are returned
even when ``weight`` is None (they are then the gradients a weight of ones would get).
"""

from __future__ import annotations

import math

from array_api_compat import array_namespace

from refimpl import core

__all__ = [
    "batch_norm_backward",
    "layer_norm_backward",
    "group_norm_backward",
    "instance_norm_backward",
    "rms_norm_backward",
    "layer_norm_2d_backward",
]


def _param_grads(xp, grad_output, x_hat, param_axes, param_shape):
    """dL/dw and dL/db: sum over every axis that is not a parameter axis."""
    others = tuple(a for a in range(grad_output.ndim) if a not in param_axes)
    grad_weight = xp.reshape(xp.sum(grad_output * x_hat, axis=others), param_shape)
    grad_bias = xp.reshape(xp.sum(grad_output, axis=others), param_shape)
    return grad_weight, grad_bias


def _scaled(xp, grad_output, weight, param_axes):
    """g_hat = dL/dx_hat = g * w (w broadcast along the parameter axes)."""
    return core.affine(grad_output, weight, None, param_axes)


def _through_standardize(xp, g_hat, x_hat, rstd, reduce_axes):
    """dL/dx for x_hat = (x - mean(x)) * rstd(x): the one line every centered norm shares."""
    mean_g = xp.mean(g_hat, axis=reduce_axes, keepdims=True)
    mean_gx = xp.mean(g_hat * x_hat, axis=reduce_axes, keepdims=True)
    return rstd * (g_hat - mean_g - x_hat * mean_gx)


def _centered_backward(grad_output, input, axes, weight, eps):
    """Backward of core.normalize with statistics over ``axes.reduce`` of ``axes.view``."""
    xp = array_namespace(input)
    shape = tuple(input.shape)
    grouped = xp.reshape(input, axes.view)
    mean, var = core.moments(grouped, axes.reduce)
    rstd = 1 / xp.sqrt(var + eps)
    x_hat = (grouped - mean) * rstd
    g_hat = xp.reshape(_scaled(xp, grad_output, weight, axes.params), axes.view)
    grad_input = xp.reshape(_through_standardize(xp, g_hat, x_hat, rstd, axes.reduce), shape)
    param_shape = tuple(shape[a] for a in axes.params)
    return (
        grad_input,
        *_param_grads(xp, grad_output, xp.reshape(x_hat, shape), axes.params, param_shape),
    )


def batch_norm_backward(
    grad_output, input, weight=None, eps=1e-5, training=True, running_mean=None, running_var=None
):
    """Gradients of functional.batch_norm.

    training=True: through the batch statistics. training=False: the running statistics
    are constants, so dL/dx is just g * w * rstd.

    Example:

    >>> import numpy as np
    >>> import torch
    >>> from refimpl import functional
    >>> rng = np.random.default_rng(0)
    >>> x, g = rng.standard_normal((2, 8, 3))  # input and dL/dy, (N, C) = (8, 3)
    >>> dx, dw, db = batch_norm_backward(g, x)
    >>> xt = torch.tensor(x, requires_grad=True)  # autograd through refimpl's forward
    >>> functional.batch_norm(xt, None, None, training=True).backward(torch.tensor(g))
    >>> bool(np.allclose(dx, xt.grad.numpy())), bool(np.allclose(dx.sum(axis=0), 0))
    (True, True)
    """
    xp = array_namespace(input)
    shape = tuple(input.shape)
    axes = core.batch_axes(shape)
    stat_shape = core.param_shape(input.ndim, shape, axes.params)
    if not training:  # constants: dL/dx = g * w * rstd
        mean = xp.reshape(running_mean, stat_shape)
        rstd = 1 / xp.sqrt(xp.reshape(running_var, stat_shape) + eps)
        x_hat = (input - mean) * rstd
        grad_input = _scaled(xp, grad_output, weight, axes.params) * rstd
        return (grad_input, *_param_grads(xp, grad_output, x_hat, axes.params, (shape[1],)))
    # Batch norm's parameter axes are exactly the axes its statistics keep, so the two
    # means of the shared line are the parameter gradients divided by n:
    #     dL/dx = w * rstd / n * (n * g - dL/db - x_hat * dL/dw)
    # (the same line, with three fewer passes over the data).
    mean, var = core.moments(input, axes.reduce)
    rstd = 1 / xp.sqrt(var + eps)
    x_hat = (input - mean) * rstd
    grad_weight, grad_bias = _param_grads(xp, grad_output, x_hat, axes.params, (shape[1],))
    count = math.prod(shape[a] for a in axes.reduce)
    scale = rstd / count if weight is None else xp.reshape(weight, stat_shape) * rstd / count
    grad_input = scale * (
        count * grad_output
        - xp.reshape(grad_bias, stat_shape)
        - x_hat * xp.reshape(grad_weight, stat_shape)
    )
    return grad_input, grad_weight, grad_bias


def layer_norm_backward(grad_output, input, normalized_shape, weight=None, eps=1e-5):
    """Gradients of functional.layer_norm.

    Example:

    >>> import numpy as np
    >>> import torch
    >>> from refimpl import functional
    >>> rng = np.random.default_rng(0)
    >>> x, g = rng.standard_normal((2, 4, 6))
    >>> dx, dw, db = layer_norm_backward(g, x, normalized_shape=(6,))
    >>> xt = torch.tensor(x, requires_grad=True)
    >>> functional.layer_norm(xt, (6,)).backward(torch.tensor(g))
    >>> bool(np.allclose(dx, xt.grad.numpy())), dw.shape
    (True, (6,))
    """
    axes = core.layer_axes(tuple(input.shape), len(tuple(normalized_shape)))
    return _centered_backward(grad_output, input, axes, weight, eps)


def layer_norm_2d_backward(grad_output, input, weight=None, eps=1e-6):
    """Gradients of functional.layer_norm_2d: layer norm over dim 1 at every position.

    Example:

    >>> import numpy as np
    >>> import torch
    >>> from refimpl import functional
    >>> rng = np.random.default_rng(0)
    >>> x, g = rng.standard_normal((2, 2, 3, 4, 5))  # (N, C, H, W) = (2, 3, 4, 5)
    >>> dx, dw, db = layer_norm_2d_backward(g, x)
    >>> xt = torch.tensor(x, requires_grad=True)
    >>> functional.layer_norm_2d(xt).backward(torch.tensor(g))
    >>> bool(np.allclose(dx, xt.grad.numpy())), dw.shape
    (True, (3,))
    """
    axes = core.channel_axes(tuple(input.shape))
    return _centered_backward(grad_output, input, axes, weight, eps)


def group_norm_backward(grad_output, input, num_groups, weight=None, eps=1e-5):
    """Gradients of functional.group_norm.

    Example:

    >>> import numpy as np
    >>> import torch
    >>> from refimpl import functional
    >>> rng = np.random.default_rng(0)
    >>> x, g = rng.standard_normal((2, 2, 4, 3))  # (N, C, L) = (2, 4, 3)
    >>> dx, dw, db = group_norm_backward(g, x, num_groups=2)
    >>> xt = torch.tensor(x, requires_grad=True)
    >>> functional.group_norm(xt, 2).backward(torch.tensor(g))
    >>> bool(np.allclose(dx, xt.grad.numpy()))
    True
    """
    axes = core.group_axes(tuple(input.shape), num_groups)
    return _centered_backward(grad_output, input, axes, weight, eps)


def instance_norm_backward(grad_output, input, weight=None, eps=1e-5):
    """Gradients of functional.instance_norm with input statistics: group norm, G = C.

    Example:

    >>> import numpy as np
    >>> import torch
    >>> from refimpl import functional
    >>> rng = np.random.default_rng(0)
    >>> x, g = rng.standard_normal((2, 2, 3, 5))  # (N, C, L) = (2, 3, 5)
    >>> dx, dw, db = instance_norm_backward(g, x)
    >>> xt = torch.tensor(x, requires_grad=True)
    >>> functional.instance_norm(xt).backward(torch.tensor(g))
    >>> bool(np.allclose(dx, xt.grad.numpy()))
    True
    """
    return group_norm_backward(grad_output, input, input.shape[1], weight, eps)


def rms_norm_backward(grad_output, input, normalized_shape, weight=None, eps=None):
    """Gradients of functional.rms_norm: (grad_input, grad_weight).

    With ``x_hat = x * r`` and ``r = 1 / sqrt(mean(x^2) + eps)``::

        dL/dx = r * (g_hat - x_hat * mean(g_hat * x_hat))

    Example:

    >>> import numpy as np
    >>> import torch
    >>> from refimpl import functional
    >>> rng = np.random.default_rng(0)
    >>> x, g = rng.standard_normal((2, 4, 6))
    >>> dx, dw = rms_norm_backward(g, x, normalized_shape=(6,))
    >>> xt = torch.tensor(x, requires_grad=True)
    >>> functional.rms_norm(xt, (6,)).backward(torch.tensor(g))
    >>> bool(np.allclose(dx, xt.grad.numpy()))
    True
    """
    xp = array_namespace(input)
    if eps is None:
        eps = float(xp.finfo(input.dtype).eps)
    shape = tuple(input.shape)
    axes = core.layer_axes(shape, len(tuple(normalized_shape)))
    rstd = 1 / xp.sqrt(core.mean_square(input, axes.reduce) + eps)
    x_hat = input * rstd
    g_hat = _scaled(xp, grad_output, weight, axes.params)
    mean_gx = xp.mean(g_hat * x_hat, axis=axes.reduce, keepdims=True)
    grad_input = rstd * (g_hat - x_hat * mean_gx)
    others = tuple(a for a in range(input.ndim) if a not in axes.params)
    grad_weight = xp.reshape(xp.sum(grad_output * x_hat, axis=others), tuple(normalized_shape))
    return grad_input, grad_weight
