"""The shared base of the batch-, instance- and masked-norm modules (torch's ``_NormBase``
layout: ``weight``/``bias``, ``running_mean``/``running_var``/``num_batches_tracked``),
and the helpers that register those tensors the way torch does.

Nothing here computes a normalization; the families are in the sibling modules.

>>> from refimpl.nn.batchnorm import BatchNorm2d
>>> issubclass(BatchNorm2d, _NormBase)
True
"""

from __future__ import annotations

import torch
from torch.nn import Module, Parameter, init

__all__: list[str] = []


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
