"""The one core every normalization layer is built from.

A normalization is two steps (Flax's ``_compute_stats`` and ``_normalize``):

1. statistics (mean and variance) over a set of *reduction axes*;
2. ``(x - mean) / sqrt(var + eps)``, then a learned scale and shift over the
   *parameter axes*.

So each layer is just a choice of axes (:class:`Axes`), and the N, C, H, W cube the book
draws is made by :func:`statistic_groups` from the very same choices.

Everything here is written against the array API (``array_api_compat``), so the same
code runs on NumPy arrays (the float64 reference, no torch needed) and on torch tensors
(with autograd).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from array_api_compat import array_namespace, is_torch_array

__all__ = [
    "Axes",
    "batch_axes",
    "layer_axes",
    "instance_axes",
    "group_axes",
    "channel_axes",
    "NORM_AXES",
    "moments",
    "naive_moments",
    "mean_square",
    "combine_moments",
    "standardize",
    "affine",
    "normalize",
    "param_shape",
    "assign_",
    "statistic_groups",
]


# --------------------------------------------------------------------------- the axes


@dataclass(frozen=True)
class Axes:
    """Where a normalization computes its statistics and where its parameters live.

    - ``view``: the shape the statistics are computed in. It is the input's shape,
      except for group norm, which splits the channels C into (groups, C // groups).
    - ``reduce``: axes of ``view`` that are averaged over: elements equal on every other
      axis share one mean and one variance.
    - ``params``: axes of the *input* that ``weight`` and ``bias`` span.

    Example:

    >>> axes = Axes(view=(8, 3), reduce=(0,), params=(1,))  # batch norm on (N, C) = (8, 3)
    >>> axes.reduce, axes.params
    ((0,), (1,))
    """

    view: tuple[int, ...]
    reduce: tuple[int, ...]
    params: tuple[int, ...]


def batch_axes(shape) -> Axes:
    """Batch norm: one statistic per channel, over the batch and all spatial positions.

    Example:

    >>> batch_axes((8, 3, 4, 4))
    Axes(view=(8, 3, 4, 4), reduce=(0, 2, 3), params=(1,))
    """
    ndim = len(shape)
    return Axes(tuple(shape), (0, *range(2, ndim)), (1,))


def layer_axes(shape, normalized_ndim: int) -> Axes:
    """Layer norm (and RMS norm): one statistic per sample, over the trailing dims.

    Example:

    >>> layer_axes((2, 5, 16), normalized_ndim=1)  # (N, T, D): one statistic per token
    Axes(view=(2, 5, 16), reduce=(2,), params=(2,))
    """
    ndim = len(shape)
    trailing = tuple(range(ndim - normalized_ndim, ndim))
    return Axes(tuple(shape), trailing, trailing)


def instance_axes(shape) -> Axes:
    """Instance norm: one statistic per sample and channel, over the spatial positions.

    Example:

    >>> instance_axes((8, 3, 4, 4))
    Axes(view=(8, 3, 4, 4), reduce=(2, 3), params=(1,))
    """
    return Axes(tuple(shape), tuple(range(2, len(shape))), (1,))


def group_axes(shape, num_groups: int) -> Axes:
    """Group norm: one statistic per sample and group of C // num_groups channels.

    Example:

    >>> group_axes((8, 6, 4, 4), num_groups=2)  # C = 6 split into 2 groups of 3
    Axes(view=(8, 2, 3, 4, 4), reduce=(2, 3, 4), params=(1,))
    """
    n, c, *spatial = shape
    view = (n, num_groups, c // num_groups, *spatial)
    return Axes(view, tuple(range(2, len(view))), (1,))


def channel_axes(shape) -> Axes:
    """Channels-last layer norm on a channels-first input (ConvNeXt's LayerNorm on NCHW):
    one statistic per sample and position, over the C channels (dim 1).

    It is ``layer_axes`` of the channels-last (N, H, W, C) layout, read in place on
    (N, C, H, W): the reduction axis is dim 1 instead of the last one.

    Example:

    >>> channel_axes((8, 3, 4, 4))  # 8 * 4 * 4 statistics, each over 3 values
    Axes(view=(8, 3, 4, 4), reduce=(1,), params=(1,))
    """
    return Axes(tuple(shape), (1,), (1,))


# The cube picture: for each norm, its axes for an (N, C, *spatial) input.
# Layer and RMS norm normalize over every non-batch dim here; "layer2d" is layer norm over
# the channels of each position (refimpl.nn.LayerNorm2d), not over (C, H, W).
NORM_AXES = {
    "batch": lambda shape, groups: batch_axes(shape),
    "layer": lambda shape, groups: layer_axes(shape, len(shape) - 1),
    "instance": lambda shape, groups: instance_axes(shape),
    "group": lambda shape, groups: group_axes(shape, groups),
    "rms": lambda shape, groups: layer_axes(shape, len(shape) - 1),
    "layer2d": lambda shape, groups: channel_axes(shape),
}


# --------------------------------------------------------------------------- statistics


def _count(x, axes) -> int:
    return math.prod(x.shape[a] for a in axes)


def moments(x, axes, mask=None, correction=0):
    """Mean and variance of ``x`` over ``axes`` (kept as size-1 dims).

    Two passes: the mean first, then the mean of squared deviations from it. Unlike
    ``E[x^2] - E[x]^2`` this does not cancel catastrophically when ``|mean| >> std``.

    - ``mask``: optional array broadcastable to ``x``; 1 where an element counts, 0 where
      it is padding. Each statistic then averages only the elements that count.
    - ``correction``: subtracted from the count in the variance's denominator
      (1 = unbiased).

    Example:

    >>> import numpy as np
    >>> x = np.array([[1.0, 2.0], [3.0, 6.0]])
    >>> mean, var = moments(x, axes=(0,))
    >>> mean.tolist(), var.tolist()
    ([[2.0, 4.0]], [[1.0, 4.0]])
    >>> moments(x, (0,), correction=1)[1].tolist()  # unbiased
    [[2.0, 8.0]]
    >>> mask = np.array([[1.0], [0.0]])  # the second row is padding
    >>> moments(x, (0,), mask=mask)[0].tolist()
    [[1.0, 2.0]]
    """
    xp = array_namespace(x)
    axes = tuple(axes)
    if mask is None:
        mean = xp.mean(x, axis=axes, keepdims=True)
        deviation = x - mean
        squares = xp.sum(deviation * deviation, axis=axes, keepdims=True)
        return mean, squares / (_count(x, axes) - correction)
    weight = xp.astype(mask, x.dtype) * xp.ones_like(x)  # broadcast the mask to x
    count = xp.sum(weight, axis=axes, keepdims=True)
    mean = xp.sum(x * weight, axis=axes, keepdims=True) / count
    deviation = x - mean
    squares = xp.sum(weight * deviation * deviation, axis=axes, keepdims=True)
    return mean, squares / (count - correction)


def naive_moments(x, axes):
    """The one-pass textbook formula ``var = E[x^2] - E[x]^2``, kept only to show why not.

    It loses all precision (even turns negative) when ``|mean| >> std`` in float32.

    Example:

    >>> import numpy as np
    >>> x = np.array([10000.0 - 1, 10000.0 + 1], dtype=np.float32)  # variance 1
    >>> float(moments(x, (0,))[1][0])
    1.0
    >>> float(naive_moments(x, (0,))[1][0]) == 1.0  # E[x^2] - E[x]^2 cancels
    False
    """
    xp = array_namespace(x)
    mean = xp.mean(x, axis=tuple(axes), keepdims=True)
    mean_of_squares = xp.mean(x * x, axis=tuple(axes), keepdims=True)
    return mean, mean_of_squares - mean * mean


def mean_square(x, axes):
    """Mean of x^2 over ``axes``: RMS norm's only statistic (no centering).

    Example:

    >>> import numpy as np
    >>> mean_square(np.array([[3.0, 4.0]]), axes=(1,)).tolist()
    [[12.5]]
    """
    xp = array_namespace(x)
    return xp.mean(x * x, axis=tuple(axes), keepdims=True)


def combine_moments(count_a, mean_a, m2_a, count_b, mean_b, m2_b):
    """Merge the statistics of two disjoint chunks (Chan et al.'s parallel update).

    m2 is the sum of squared deviations from the chunk's mean (variance * count). Returns
    (count, mean, m2) of the union, as if computed in one two-pass sweep; this is how
    streamed or distributed (sync BN) data gets exact statistics.

    Example:

    >>> import numpy as np
    >>> a, b = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    >>> count, mean, m2 = combine_moments(2, a.mean(), a.var() * 2, 2, b.mean(), b.var() * 2)
    >>> count, float(mean), float(m2 / count), float(np.array([1.0, 2, 3, 4]).var())
    (4, 2.5, 1.25, 1.25)
    """
    count = count_a + count_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (count_b / count)
    m2 = m2_a + m2_b + delta * delta * (count_a * count_b / count)
    return count, mean, m2


# --------------------------------------------------------------------------- normalize


def param_shape(ndim: int, shape, param_axes) -> tuple[int, ...]:
    """Shape that makes a parameter over ``param_axes`` broadcast against the input.

    Example:

    >>> param_shape(4, (8, 3, 4, 4), param_axes=(1,))
    (1, 3, 1, 1)
    """
    return tuple(shape[a] if a in param_axes else 1 for a in range(ndim))


def standardize(x, mean, var, eps):
    """(x - mean) / sqrt(var + eps); ``mean=None`` skips centering (RMS norm).

    Example:

    >>> import numpy as np
    >>> standardize(np.array([1.0, 3.0]), mean=2.0, var=1.0, eps=0.0).tolist()
    [-1.0, 1.0]
    >>> standardize(np.array([3.0, 4.0]), None, 12.5, 0.0).round(4).tolist()  # RMS norm
    [0.8485, 1.1314]
    """
    xp = array_namespace(x)
    centered = x if mean is None else x - mean
    return centered / xp.sqrt(var + eps)


def affine(y, weight=None, bias=None, param_axes=(1,)):
    """y * weight + bias, with weight and bias laid along ``param_axes`` of y.

    Example:

    >>> import numpy as np
    >>> y = np.ones((2, 3))
    >>> affine(y, weight=np.array([1.0, 2.0, 3.0]), bias=np.array([0.0, 0.0, 1.0])).tolist()
    [[1.0, 2.0, 4.0], [1.0, 2.0, 4.0]]
    """
    xp = array_namespace(y)
    shape = param_shape(y.ndim, y.shape, param_axes)
    if weight is not None:
        y = y * xp.reshape(weight, shape)
    if bias is not None:
        y = y + xp.reshape(bias, shape)
    return y


def normalize(x, mean, var, eps, weight=None, bias=None, param_axes=(1,)):
    """Standardize with the given statistics, then apply the affine over ``param_axes``.

    Example:

    >>> import numpy as np
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0]])
    >>> mean, var = moments(x, (0,))
    >>> y = normalize(x, mean, var, 1e-5, weight=np.array([1.0, 2.0]), bias=np.array([0.0, 5.0]))
    >>> y.round(3).tolist()
    [[-1.0, 3.0], [1.0, 7.0]]
    """
    return affine(standardize(x, mean, var, eps), weight, bias, param_axes)


# --------------------------------------------------------------------------- in place


def assign_(target, value) -> None:
    """Overwrite ``target``'s contents with ``value`` in place (running statistics).

    torch buffers are updated under no_grad (they are not part of the graph), NumPy
    arrays by slice assignment. Both keep the caller's object, as torch does.

    Example:

    >>> import numpy as np
    >>> running = np.zeros(3)
    >>> same_object = running
    >>> assign_(running, np.array([1.0, 2.0, 3.0]))
    >>> same_object.tolist()
    [1.0, 2.0, 3.0]
    """
    if is_torch_array(target):
        import torch

        with torch.no_grad():
            target.copy_(value.detach() if is_torch_array(value) else torch.as_tensor(value))
    else:
        target[...] = value


# --------------------------------------------------------------------------- the cube


def statistic_groups(norm: str, shape, num_groups: int | None = None) -> np.ndarray:
    """Label each element of an ``(N, C, *spatial)`` array by the statistic it shares.

    Returns an int array of ``shape``: two elements carry the same integer exactly when
    the normalization ``norm`` ("batch", "layer", "instance", "group", "rms", "layer2d")
    gives them one mean and one variance. Labels are 0, 1, ... in order of first
    appearance. It is computed from the same :class:`Axes` the layers use, so the picture
    is the code.

    Example:

    >>> statistic_groups("batch", (2, 3)).tolist()  # one statistic per channel
    [[0, 1, 2], [0, 1, 2]]
    >>> statistic_groups("layer", (2, 3)).tolist()  # one per sample
    [[0, 0, 0], [1, 1, 1]]
    >>> statistic_groups("group", (1, 4, 2), num_groups=2).tolist()
    [[[0, 0], [0, 0], [1, 1], [1, 1]]]
    >>> statistic_groups("layer2d", (1, 2, 3)).tolist()  # one per position, over C
    [[[0, 1, 2], [0, 1, 2]]]
    """
    if norm not in NORM_AXES:
        raise ValueError(f"norm must be one of {sorted(NORM_AXES)}, got {norm!r}")
    if norm == "group" and not num_groups:
        raise ValueError("group norm needs num_groups")
    shape = tuple(shape)
    axes = NORM_AXES[norm](shape, num_groups)
    # Each element's flat index; the smallest index in its reduction group names it.
    index = np.arange(math.prod(shape)).reshape(axes.view)
    first = np.min(index, axis=axes.reduce, keepdims=True) if index.size else index
    names = np.broadcast_to(first, axes.view).reshape(shape)
    _, labels = np.unique(names, return_inverse=True)
    return labels.reshape(shape).astype(np.int64)
