"""``torch.nn``-compatible normalization modules built on :mod:`refimpl.functional`.

Same constructor arguments, parameters, buffers, ``state_dict`` keys and ``extra_repr``
as torch, so ``load_state_dict`` works in both directions and :func:`swap_norms` can
replace the norms of a trained torch model by these. The module only keeps the books
(running buffers, how much a new batch counts); the math is in the functional core.
"""

from __future__ import annotations

import numbers
import warnings

import torch
from torch import Tensor
from torch.nn import Module, Parameter, init

from refimpl import functional

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "GroupNorm",
    "RMSNorm",
    "swap_norms",
]


def _register_affine(module: Module, shape, affine: bool, bias: bool, factory: dict) -> None:
    """``weight`` and ``bias`` over ``shape`` as torch registers them (None when absent)."""
    weight_param = Parameter(torch.empty(shape, **factory)) if affine else None
    bias_param = Parameter(torch.empty(shape, **factory)) if affine and bias else None
    module.register_parameter("weight", weight_param)
    module.register_parameter("bias", bias_param)


def _reset_affine(module: Module) -> None:
    """torch's initial affine: scale 1, shift 0."""
    if module.weight is not None:
        init.ones_(module.weight)
    if module.bias is not None:
        init.zeros_(module.bias)


def _register_running_stats(module: Module, shape, count_shape, track: bool, factory) -> None:
    """running_mean (zeros), running_var (ones) of ``shape`` and an integer
    num_batches_tracked of ``count_shape``; all three None when not tracking (torch's layout)."""
    if track:
        module.register_buffer("running_mean", torch.zeros(shape, **factory))
        module.register_buffer("running_var", torch.ones(shape, **factory))
        count = torch.zeros(count_shape, dtype=torch.long, device=factory["device"])
        module.register_buffer("num_batches_tracked", count)
    else:
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            module.register_buffer(name, None)


class _NormBase(Module):
    """Parameters and running buffers shared by batch and instance norm (torch's layout)."""

    _version = 2  # torch's state_dict version for these modules (adds num_batches_tracked)

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        _register_affine(self, num_features, affine, bias, factory)
        _register_running_stats(self, (num_features,), (), track_running_stats, factory)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        _reset_affine(self)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats}"
        )

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        # Checkpoints older than version 2 have no num_batches_tracked: start it at 0.
        key = prefix + "num_batches_tracked"
        version = local_metadata.get("version", None)
        if (version is None or version < 2) and self.track_running_stats:
            state_dict.setdefault(key, torch.tensor(0, dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)


# --------------------------------------------------------------------------- batch norm


class _BatchNorm(_NormBase):
    expected_dims: tuple[int, ...] = ()

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in self.expected_dims:
            wanted = " or ".join(f"{d}D" for d in self.expected_dims)
            raise ValueError(f"expected {wanted} input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        # How much this batch counts in the running averages (torch's _BatchNorm.forward):
        # momentum, or 1 / batches-seen (a cumulative average) when momentum is None.
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        # Batch statistics in training, and in eval when there are no running ones.
        use_batch_stats = self.training or self.running_mean is None
        # Buffers are passed when they are to be updated or used.
        pass_buffers = not self.training or self.track_running_stats
        return functional.batch_norm(
            input,
            self.running_mean if pass_buffers else None,
            self.running_var if pass_buffers else None,
            self.weight,
            self.bias,
            use_batch_stats,
            factor,
            self.eps,
        )


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) or (N, C, L): one mean and variance per channel.

    Example:

    >>> import torch
    >>> bn = BatchNorm1d(3)
    >>> y = bn(torch.arange(24.0).reshape(8, 3))
    >>> bool(y.mean(dim=0).abs().max() < 1e-6), bn.num_batches_tracked.item()
    (True, 1)
    >>> sorted(bn.state_dict())
    ['bias', 'num_batches_tracked', 'running_mean', 'running_var', 'weight']
    >>> bn.load_state_dict(torch.nn.BatchNorm1d(3).state_dict())  # torch's state loads as is
    <All keys matched successfully>
    """

    expected_dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W): one mean and variance per channel.

    Example:

    >>> import torch
    >>> bn = BatchNorm2d(3)
    >>> bn
    BatchNorm2d(3, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)
    >>> y = bn(torch.arange(96.0).reshape(2, 3, 4, 4))
    >>> bool(y.mean(dim=(0, 2, 3)).abs().max() < 1e-6)  # each channel: mean 0
    True
    """

    expected_dims = (4,)


class BatchNorm3d(_BatchNorm):
    """Batch norm over (N, C, D, H, W): one mean and variance per channel.

    Example:

    >>> import torch
    >>> bn = BatchNorm3d(3).eval()  # evaluation: the running statistics (0 and 1 at first)
    >>> x = torch.arange(48.0).reshape(2, 3, 2, 2, 2)
    >>> bool(torch.allclose(bn(x), x / (1 + 1e-5) ** 0.5))
    True
    """

    expected_dims = (5,)


# --------------------------------------------------------------------------- instance norm


class _InstanceNorm(_NormBase):
    spatial_dims = 0

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )

    def _check_input_dim(self, input: Tensor) -> None:
        unbatched = self.spatial_dims + 1
        if input.dim() not in (unbatched, unbatched + 1):
            raise ValueError(
                f"expected {unbatched}D or {unbatched + 1}D input (got {input.dim()}D input)"
            )

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        unbatched = input.dim() == self.spatial_dims + 1
        feature_dim = 0 if unbatched else 1
        if input.size(feature_dim) != self.num_features:
            if self.affine:
                raise ValueError(
                    f"expected input's size at dim={feature_dim} to match num_features"
                    f" ({self.num_features}), but got: {input.size(feature_dim)}."
                )
            warnings.warn(
                f"input's size at dim={feature_dim} does not match num_features. "
                "You can silence this warning by not passing in num_features, "
                "which is not used because affine=False",
                stacklevel=2,
            )
        batched = input.unsqueeze(0) if unbatched else input
        # Unlike batch norm: no num_batches_tracked update, and momentum None means 0.
        output = functional.instance_norm(
            batched,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training or not self.track_running_stats,
            self.momentum if self.momentum is not None else 0.0,
            self.eps,
        )
        return output.squeeze(0) if unbatched else output


class InstanceNorm1d(_InstanceNorm):
    """Instance norm over (N, C, L) or (C, L): one statistic per sample and channel.

    Example:

    >>> import torch
    >>> norm = InstanceNorm1d(3)
    >>> norm
    InstanceNorm1d(3, eps=1e-05, momentum=0.1, affine=False, bias=False, track_running_stats=False)
    >>> y = norm(torch.arange(30.0).reshape(2, 3, 5))
    >>> bool(y.mean(dim=2).abs().max() < 1e-6)  # each (sample, channel): mean 0
    True
    """

    spatial_dims = 1


class InstanceNorm2d(_InstanceNorm):
    """Instance norm over (N, C, H, W) or (C, H, W): one statistic per sample and channel.

    Example:

    >>> import torch
    >>> x = torch.arange(48.0).reshape(3, 4, 4)  # unbatched (C, H, W) works too
    >>> tuple(InstanceNorm2d(3)(x).shape)
    (3, 4, 4)
    """

    spatial_dims = 2


class InstanceNorm3d(_InstanceNorm):
    """Instance norm over (N, C, D, H, W) or (C, D, H, W).

    Example:

    >>> import torch
    >>> y = InstanceNorm3d(2, affine=True)(torch.arange(32.0).reshape(1, 2, 2, 2, 4))
    >>> bool(y.mean(dim=(2, 3, 4)).abs().max() < 1e-6)
    True
    """

    spatial_dims = 3


# --------------------------------------------------------------------------- layer-wise


def _as_shape(normalized_shape) -> tuple[int, ...]:
    if isinstance(normalized_shape, numbers.Integral):
        return (int(normalized_shape),)
    return tuple(normalized_shape)


class LayerNorm(Module):
    """Layer norm over the trailing ``normalized_shape`` dims of each sample.

    Example:

    >>> import torch
    >>> ln = LayerNorm(8)  # (N, T, D): one statistic per token
    >>> y = ln(torch.arange(80.0).reshape(2, 5, 8))
    >>> bool(y.mean(dim=-1).abs().max() < 1e-6), tuple(ln.weight.shape)
    (True, (8,))
    """

    def __init__(
        self,
        normalized_shape,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.normalized_shape = _as_shape(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        _register_affine(self, self.normalized_shape, elementwise_affine, bias, factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset_affine(self)

    def forward(self, input: Tensor) -> Tensor:
        return functional.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, "
            f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None}"
        )


class RMSNorm(Module):
    """RMS norm: divide by the root mean square over the trailing dims, then scale.

    Example:

    >>> import torch
    >>> y = RMSNorm(2)(torch.tensor([[3.0, 4.0]]))  # 3 and 4 over sqrt(12.5)
    >>> [round(v, 4) for v in y[0].tolist()]
    [0.8485, 1.1314]
    """

    def __init__(
        self,
        normalized_shape,
        eps: float | None = None,
        elementwise_affine: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.normalized_shape = _as_shape(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = Parameter(torch.empty(self.normalized_shape, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.elementwise_affine:
            init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return functional.rms_norm(x, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        )


class GroupNorm(Module):
    """Group norm: each sample's channels split into groups, one statistic per group.

    Example:

    >>> import torch
    >>> gn = GroupNorm(2, 4)
    >>> y = gn(torch.tensor([[1.0, 3.0, 10.0, 30.0]]))  # groups {0, 1} and {2, 3}
    >>> [round(v, 3) for v in y[0].tolist()]
    [-1.0, 1.0, -1.0, 1.0]
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if num_channels % num_groups != 0:
            raise ValueError(
                f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})"
            )
        factory = {"device": device, "dtype": dtype}
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        _register_affine(self, num_channels, affine, bias, factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset_affine(self)

    def forward(self, input: Tensor) -> Tensor:
        return functional.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
            f"bias={self.bias is not None}"
        )


# --------------------------------------------------------------------------- swapping


def _twins() -> dict[type, type]:
    """torch.nn norm class -> its refimpl twin (types only: nothing of torch's is run)."""
    tnn = torch.nn
    return {
        tnn.BatchNorm1d: BatchNorm1d,
        tnn.BatchNorm2d: BatchNorm2d,
        tnn.BatchNorm3d: BatchNorm3d,
        tnn.InstanceNorm1d: InstanceNorm1d,
        tnn.InstanceNorm2d: InstanceNorm2d,
        tnn.InstanceNorm3d: InstanceNorm3d,
        tnn.LayerNorm: LayerNorm,
        tnn.GroupNorm: GroupNorm,
        tnn.RMSNorm: RMSNorm,
    }


def _twin_of(module: Module) -> Module:
    cls = _twins()[type(module)]
    floating = [t for t in module.state_dict().values() if t.is_floating_point()]
    factory = {"device": floating[0].device} if floating else {}
    dtype = floating[0].dtype if floating else None
    if isinstance(module, torch.nn.modules.batchnorm._NormBase):
        twin = cls(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            dtype=dtype,
            bias=module.bias is not None,
            **factory,
        )
    elif isinstance(module, torch.nn.LayerNorm):
        twin = cls(
            module.normalized_shape,
            module.eps,
            module.elementwise_affine,
            module.bias is not None,
            dtype=dtype,
            **factory,
        )
    elif isinstance(module, torch.nn.RMSNorm):
        twin = cls(
            module.normalized_shape, module.eps, module.elementwise_affine, dtype=dtype, **factory
        )
    else:  # GroupNorm
        twin = cls(
            module.num_groups,
            module.num_channels,
            module.eps,
            module.affine,
            dtype=dtype,
            bias=module.bias is not None,
            **factory,
        )
    twin.load_state_dict(module.state_dict())
    return twin.train(module.training)


def swap_norms(model: Module) -> Module:
    """Replace, in place, every torch.nn norm layer of ``model`` by its refimpl twin.

    Parameters and buffers are copied through ``state_dict``; training mode is kept.
    Returns the model (or the twin, if ``model`` itself is a norm layer).

    Example:

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    >>> model = swap_norms(model)
    >>> type(model[1]).__module__, type(model[1]).__name__
    ('refimpl.nn', 'BatchNorm1d')
    """
    twins = _twins()
    if type(model) in twins:
        return _twin_of(model)
    for name, child in model.named_children():
        setattr(model, name, swap_norms(child))
    return model

# Modules beyond torch.nn's norms, defined on top of the classes above.
from refimpl.distributed import SyncBatchNorm  # noqa: E402, F401
from refimpl.recurrent import MaskedBatchNorm1d, PerStepBatchNorm1d  # noqa: E402, F401
