"""Normalization functions with ``torch.nn.functional``'s signatures and semantics.

Each function is: check the input the way torch does (same exception type and message),
pick its axes from :mod:`refimpl.core`, compute or look up the statistics, normalize.
Inputs may be NumPy arrays or torch tensors. Running statistics are updated in place,
exactly when and how torch updates them.
"""

from __future__ import annotations

import functools
import math
import numbers

from array_api_compat import array_namespace

from refimpl import core

__all__ = ["batch_norm", "instance_norm", "layer_norm", "group_norm", "rms_norm", "layer_norm_2d"]


# --------------------------------------------------------------------------- checks
# Messages follow torch 2.x so that a reader sees the same error from either library.


def _verify_batch_size(shape) -> None:
    """Training needs two or more values per channel, else the variance is meaningless."""
    if shape[0] * math.prod(shape[2:]) == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {shape}"
        )


def _verify_spatial_size(shape) -> None:
    if math.prod(shape[2:]) == 1:
        raise ValueError(
            f"Expected more than 1 spatial element when training, got input size {shape}"
        )


def _numel(array) -> int:
    return math.prod(array.shape)


def _check_per_channel(arrays: dict, channels: int, shown_per_channel: int = 1) -> None:
    """Each given per-channel array must hold one value per channel, with torch's message.

    Instance norm's message counts ``shown_per_channel`` (= N) times the values, as torch's
    does: it runs as batch norm over N * C channels.
    """
    for name, array in arrays.items():
        if array is not None and _numel(array) != channels:
            expected, got = shown_per_channel * channels, shown_per_channel * _numel(array)
            raise RuntimeError(f"{name} should contain {expected} elements not {got}")


def _check_normalized_shape(input, normalized_shape, weight, bias, star: str) -> tuple:
    if isinstance(normalized_shape, numbers.Integral):
        # torch.nn.functional takes a sequence here (the modules accept an int).
        raise TypeError("argument 'normalized_shape' must be tuple of ints, not int")
    normalized_shape = tuple(int(d) for d in normalized_shape)
    if not normalized_shape:
        raise RuntimeError(
            "Expected normalized_shape to be at least 1-dimensional, i.e., containing at "
            f"least one element, but got normalized_shape = {list(normalized_shape)}"
        )
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None and tuple(param.shape) != normalized_shape:
            raise RuntimeError(
                f"Expected {name} to be of same shape as normalized_shape, but got {name} "
                f"of shape {list(param.shape)} and normalized_shape = {list(normalized_shape)}"
            )
    k = len(normalized_shape)
    if input.ndim < k or tuple(input.shape[input.ndim - k :]) != normalized_shape:
        raise RuntimeError(
            f"Given normalized_shape={list(normalized_shape)}, expected input with shape "
            f"[*{star}{', '.join(map(str, normalized_shape))}], "
            f"but got input of size{list(input.shape)}"
        )
    return normalized_shape


# --------------------------------------------------------------------------- helpers


class _TorchSize(tuple):
    """A shape that prints as torch prints ``input.size()`` in its messages."""

    def __repr__(self) -> str:
        return f"torch.Size({list(self)})"

    __str__ = __repr__


def _size_obj(input) -> _TorchSize:
    return _TorchSize(tuple(input.shape))


def _flat(xp, stat):
    return xp.reshape(stat, (-1,))


def _update_running_(running, batch_stat, momentum) -> None:
    """running <- momentum * batch + (1 - momentum) * running (torch's order of terms)."""
    core.assign_(running, momentum * batch_stat + (1 - momentum) * running)


def _unbiased(var, count: int):
    # Running variance estimates the population: Bessel's n / (n - 1).
    return var * (count / (count - 1)) if count > 1 else var * float("nan")


def _float32_for_half(norm):
    """float16 / bfloat16 inputs are normalized in float32 and rounded back once, as torch
    does (its "opmath" type). So RMS norm's default eps is float32's there, as in torch."""

    @functools.wraps(norm)
    def wrapper(input, *args, **kwargs):
        xp = array_namespace(input)
        if not xp.isdtype(input.dtype, "real floating") or xp.finfo(input.dtype).bits >= 32:
            return norm(input, *args, **kwargs)
        return xp.astype(norm(xp.astype(input, xp.float32), *args, **kwargs), input.dtype)

    return wrapper


# --------------------------------------------------------------------------- batch norm


def _check_batch_norm_args(
    name, input, running_mean, running_var, weight, bias, training, momentum, eps,
    training_needs_running=None,
) -> None:
    """batch_norm's argument checks with torch's messages (``name`` in them), shared by
    batch_renorm; ``training_needs_running`` is the error text when training mode also
    needs running statistics (batch_renorm's r and d use them)."""
    shape = tuple(input.shape)
    if training:
        _verify_batch_size(_size_obj(input))
    if training and eps <= 0.0:
        raise ValueError(f"{name} eps must be positive during training, but got {eps}")
    if eps < 0.0:
        raise ValueError(f"{name} eps must be non-negative, but got {eps}")
    if momentum is None:
        raise TypeError(f"{name}(): argument 'momentum' must be float, not NoneType")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be None")
    if running_mean is None:
        if not training:  # torch's message
            raise RuntimeError("running_mean must be defined in evaluation mode")
        if training_needs_running:
            raise RuntimeError(training_needs_running)
    channels = shape[1] if len(shape) > 1 else 0
    _check_per_channel(
        {"running_mean": running_mean, "running_var": running_var, "weight": weight, "bias": bias},
        channels,
    )


@_float32_for_half
def batch_norm(
    input,
    running_mean,
    running_var,
    weight=None,
    bias=None,
    training=False,
    momentum=0.1,
    eps=1e-5,
):
    """Normalize each channel (dim 1) over the batch and spatial dims.

    training=True: batch statistics (biased variance); if running buffers are given they
    are updated in place with the unbiased variance. training=False: running statistics.

    Example:

    >>> import numpy as np
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0]])  # (N, C) = (2, 2)
    >>> running_mean, running_var = np.zeros(2), np.ones(2)
    >>> y = batch_norm(x, running_mean, running_var, training=True, momentum=0.1, eps=1e-5)
    >>> y.round(3).tolist()
    [[-1.0, -1.0], [1.0, 1.0]]
    >>> running_mean.round(6).tolist(), running_var.round(6).tolist()  # unbiased variance
    ([0.2, 2.0], [1.1, 20.9])
    """
    shape = tuple(input.shape)
    _check_batch_norm_args(
        "batch_norm", input, running_mean, running_var, weight, bias, training, momentum, eps
    )

    xp = array_namespace(input)
    axes = core.batch_axes(shape)
    stat_shape = core.param_shape(len(shape), shape, axes.params)
    if training:
        count = math.prod(shape[a] for a in axes.reduce)
        if count > 0:
            mean, var = core.moments(input, axes.reduce)
        else:  # an empty batch has no statistics, and its empty output needs none
            mean = var = xp.zeros(stat_shape, dtype=input.dtype)
        if running_mean is not None and count > 0:  # torch leaves them alone for N = 0
            _update_running_(running_mean, _flat(xp, mean), momentum)
            _update_running_(running_var, _flat(xp, _unbiased(var, count)), momentum)
    elif _numel(input) == 0:
        # An empty batch needs no statistics; torch returns an empty output even when the
        # running stats cannot be shaped per channel (a 1-D input has 0 channels).
        mean = var = xp.zeros(stat_shape, dtype=input.dtype)
    else:
        mean = xp.reshape(running_mean, stat_shape)
        var = xp.reshape(running_var, stat_shape)
    return core.normalize(input, mean, var, eps, weight, bias, axes.params)


# --------------------------------------------------------------------------- instance norm


@_float32_for_half
def instance_norm(
    input,
    running_mean=None,
    running_var=None,
    weight=None,
    bias=None,
    use_input_stats=True,
    momentum=0.1,
    eps=1e-5,
):
    """Normalize each (sample, channel) over its spatial positions.

    With running buffers and use_input_stats, they move towards the batch *average* of the
    per-instance statistics (unbiased variance), as torch does; use_input_stats=False
    normalizes with the running statistics instead.

    Example:

    >>> import numpy as np
    >>> x = np.array([[[1.0, 3.0], [10.0, 30.0]]])  # (N, C, L) = (1, 2, 2)
    >>> instance_norm(x).round(3).tolist()
    [[[-1.0, 1.0], [-1.0, 1.0]]]
    """
    shape = tuple(input.shape)
    if use_input_stats:
        _verify_spatial_size(_size_obj(input))
    n, c = shape[0], shape[1]
    # torch runs instance norm as batch norm on a (1, N*C, ...) view, so it counts N*C.
    _check_per_channel(
        {"weight": weight, "bias": bias, "running_mean": running_mean, "running_var": running_var},
        c,
        shown_per_channel=n,
    )
    if not use_input_stats and (running_mean is None or running_var is None):
        raise RuntimeError(
            "Expected running_mean and running_var to be defined when use_input_stats is false"
        )

    xp = array_namespace(input)
    axes = core.instance_axes(shape)
    if use_input_stats:
        mean, var = core.moments(input, axes.reduce)
        if running_mean is not None:
            count = math.prod(shape[2:])
            _update_running_from_instances_(xp, running_mean, mean, momentum)
            _update_running_from_instances_(xp, running_var, _unbiased(var, count), momentum)
    else:
        stat_shape = core.param_shape(len(shape), shape, axes.params)
        mean = xp.reshape(running_mean, stat_shape)
        var = xp.reshape(running_var, stat_shape)
    return core.normalize(input, mean, var, eps, weight, bias, axes.params)


def _update_running_from_instances_(xp, running, per_instance, momentum) -> None:
    """Each instance blends into its own copy of the buffer; the buffer keeps their mean."""
    per_instance = xp.reshape(per_instance, per_instance.shape[:2])  # (N, C)
    if per_instance.shape[0] == 0:  # the mean of no instances: torch stores NaN
        core.assign_(running, running * float("nan"))
        return
    blended = momentum * per_instance + (1 - momentum) * running
    core.assign_(running, xp.mean(blended, axis=0))


# --------------------------------------------------------------------------- layer norm


@_float32_for_half
def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Normalize each sample over its trailing ``normalized_shape`` dims.

    Example:

    >>> import numpy as np
    >>> x = np.array([[1.0, 3.0], [2.0, 6.0]])
    >>> layer_norm(x, normalized_shape=(2,)).round(3).tolist()
    [[-1.0, 1.0], [-1.0, 1.0]]
    """
    normalized_shape = _check_normalized_shape(input, normalized_shape, weight, bias, ", ")
    axes = core.layer_axes(tuple(input.shape), len(normalized_shape))
    mean, var = core.moments(input, axes.reduce)
    return core.normalize(input, mean, var, eps, weight, bias, axes.params)


@_float32_for_half
def rms_norm(input, normalized_shape, weight=None, eps=None):
    """Scale each sample by 1 / RMS over its trailing dims; no centering, no bias.

    eps=None means the machine epsilon of the dtype computed in: the input's, or float32
    for float16 / bfloat16 inputs (torch.finfo(torch.float32).eps), as in torch.

    Example:

    >>> import numpy as np
    >>> rms_norm(np.array([[3.0, 4.0]]), normalized_shape=(2,)).round(4).tolist()
    [[0.8485, 1.1314]]
    """
    normalized_shape = _check_normalized_shape(input, normalized_shape, weight, None, "")
    xp = array_namespace(input)
    if eps is None:
        eps = float(xp.finfo(input.dtype).eps)
    axes = core.layer_axes(tuple(input.shape), len(normalized_shape))
    square = core.mean_square(input, axes.reduce)
    return core.normalize(input, None, square, eps, weight, None, axes.params)


@_float32_for_half
def layer_norm_2d(input, weight=None, bias=None, eps=1e-6):
    """Layer norm over the channels (dim 1) of every position of an ``(N, C, *)`` input.

    torch.nn.functional has no such function. It is what ConvNeXt's ``LayerNorm`` with
    ``data_format="channels_first"`` and timm's ``LayerNorm2d`` compute: ``F.layer_norm``
    on the channels-last view, ``F.layer_norm(x.movedim(1, -1), (C,), weight, bias,
    eps).movedim(-1, 1)``, without the two copies. It is *not* ``group_norm(x, 1)``,
    which normalizes each sample over (C, H, W) together. eps defaults to ConvNeXt's 1e-6
    (``layer_norm``'s is 1e-5). Errors are those of that channels-last call.

    Example:

    >>> import numpy as np
    >>> x = np.array([[[[1.0, 5.0]], [[3.0, 9.0]]]])  # (N, C, H, W) = (1, 2, 1, 2)
    >>> layer_norm_2d(x, eps=0.0)[0, :, 0].tolist()  # each pixel's two channels: -1, +1
    [[-1.0, -1.0], [1.0, 1.0]]
    """
    shape = tuple(input.shape)
    if len(shape) < 2:  # what x.movedim(1, -1) raises: there is no dim 1
        top = max(len(shape), 1)
        raise IndexError(
            f"Dimension out of range (expected to be in range of [{-top}, {top - 1}], "
            "but got 1)"
        )
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None and tuple(param.shape) != (shape[1],):
            raise RuntimeError(
                f"Expected {name} to be of same shape as normalized_shape, but got {name} "
                f"of shape {list(param.shape)} and normalized_shape = [{shape[1]}]"
            )
    axes = core.channel_axes(shape)
    mean, var = core.moments(input, axes.reduce)
    return core.normalize(input, mean, var, eps, weight, bias, axes.params)


# --------------------------------------------------------------------------- group norm


@_float32_for_half
def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    """Normalize each sample over groups of ``C // num_groups`` channels and all positions.

    Example:

    >>> import numpy as np
    >>> x = np.array([[1.0, 3.0, 10.0, 30.0]])  # (N, C) = (1, 4): groups {0, 1} and {2, 3}
    >>> group_norm(x, num_groups=2).round(3).tolist()
    [[-1.0, 1.0, -1.0, 1.0]]
    """
    shape = tuple(input.shape)
    if len(shape) < 2:
        raise RuntimeError(
            f"Expected at least 2 dimensions for input tensor but received {len(shape)}"
        )
    n, c = shape[0], shape[1]
    # torch's own check, on a (N*C/G, G, *spatial) view: it equals values per group only
    # when C == G, but mirroring it keeps the errors identical.
    _verify_batch_size([n * c // num_groups, num_groups, *shape[2:]])
    if c % num_groups != 0:
        raise RuntimeError(
            "Expected number of channels in input to be divisible by num_groups, but got "
            f"input of shape {list(shape)} and num_groups={num_groups}"
        )
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None and (param.ndim != 1 or _numel(param) != c):
            raise RuntimeError(
                f"Expected {name} to be a vector of size equal to the number of channels in "
                f"input, but got {name} of shape {list(param.shape)} and input of shape "
                f"{list(shape)}"
            )

    xp = array_namespace(input)
    axes = core.group_axes(shape, num_groups)
    grouped = xp.reshape(input, axes.view)
    mean, var = core.moments(grouped, axes.reduce)
    y = xp.reshape(core.standardize(grouped, mean, var, eps), shape)
    return core.affine(y, weight, bias, axes.params)
