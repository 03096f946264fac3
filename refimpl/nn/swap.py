"""``swap_norms``: put refimpl's twin in place of every torch.nn norm layer of a model."""

from __future__ import annotations

import torch
from torch.nn import Module

from refimpl.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from refimpl.nn.groupnorm import GroupNorm
from refimpl.nn.instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from refimpl.nn.layernorm import LayerNorm, RMSNorm

__all__ = ["swap_norms"]


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
    ('refimpl.nn.batchnorm', 'BatchNorm1d')
    """
    twins = _twins()
    if type(model) in twins:
        return _twin_of(model)
    for name, child in model.named_children():
        setattr(model, name, swap_norms(child))
    return model
