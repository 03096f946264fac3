"""The small networks of the book's experiments, with the normalization as a parameter.

``layers`` is the module namespace the norms come from: ``refimpl.nn`` (the default) or
``torch.nn`` (same constructors), so one experiment can run on either implementation.
"""

from __future__ import annotations

from torch import nn

from refimpl import nn as refimpl_nn
from refimpl.ghost_norm import GhostBatchNorm

__all__ = ["conv_norm", "feature_norm", "small_cnn", "lenet"]


def conv_norm(kind: str | None, channels: int, layers=refimpl_nn, num_groups: int = 4, **kwargs):
    """A norm for (N, C, H, W) activations: "batch", "group" (``num_groups`` groups),
    "layer" (GroupNorm with one group: statistics over C, H, W, as in Wu & He 2018) or
    None (identity). ``kwargs`` go to the norm's constructor; "batch" with a
    ``ghost_size`` gives :class:`~refimpl.ghost_norm.GhostBatchNorm`.

    >>> conv_norm("group", 8)
    GroupNorm(4, 8, eps=1e-05, affine=True, bias=True)
    """
    if kind is None:
        return nn.Identity()
    if kind == "batch" and kwargs.get("ghost_size") is not None:
        return GhostBatchNorm(channels, **kwargs)
    if kind == "batch":
        kwargs.pop("ghost_size", None)
        return layers.BatchNorm2d(channels, **kwargs)
    if kind == "group":
        return layers.GroupNorm(num_groups, channels, **kwargs)
    if kind == "layer":
        return layers.GroupNorm(1, channels, **kwargs)
    raise ValueError(f"unknown norm {kind!r}: use 'batch', 'group', 'layer' or None")


def feature_norm(kind: str | None, features: int, layers=refimpl_nn, num_groups: int = 4,
                 **kwargs):
    """The same choice of norm for (N, C) features: BatchNorm1d, GroupNorm, LayerNorm.

    >>> feature_norm("layer", 8)
    LayerNorm((8,), eps=1e-05, elementwise_affine=True, bias=True)
    """
    if kind == "batch" and kwargs.get("ghost_size") is not None:
        return GhostBatchNorm(features, **kwargs)
    kwargs.pop("ghost_size", None)
    if kind == "batch":
        return layers.BatchNorm1d(features, **kwargs)
    if kind == "layer":
        return layers.LayerNorm(features, **kwargs)
    return conv_norm(kind, features, layers, num_groups, **kwargs)


def small_cnn(norm: str | None = "batch", widths=(16, 32), layers=refimpl_nn, head_norm=False,
              **norm_kwargs) -> nn.Sequential:
    """A two-conv network for 8 x 8 digits: [conv3x3 - norm - ReLU - maxpool] x 2, then
    a linear classifier (with ``head_norm``: linear - the same norm on features - ReLU -
    linear).

    >>> import torch
    >>> model = small_cnn("batch")
    >>> tuple(model(torch.zeros(2, 1, 8, 8)).shape)
    (2, 10)
    """
    c1, c2 = widths
    body = [
        nn.Conv2d(1, c1, 3, padding=1), conv_norm(norm, c1, layers, **norm_kwargs), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), conv_norm(norm, c2, layers, **norm_kwargs), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    ]
    if head_norm:
        head = [nn.Linear(c2 * 4, 32), feature_norm(norm, 32, layers, **norm_kwargs), nn.ReLU(),
                nn.Linear(32, 10)]
    else:
        head = [nn.Linear(c2 * 4, 10)]
    return nn.Sequential(*body, *head)


def lenet(batch_norm: bool = True, layers=refimpl_nn) -> nn.Sequential:
    """d2l's LeNet for 28 x 28 images (Zhang et al., Dive into Deep Learning, 8.5): BN after
    each conv and linear layer and before the sigmoid; Xavier-uniform weights, as d2l's
    ``train_ch6`` initialises them.

    >>> import torch
    >>> tuple(lenet()(torch.zeros(2, 1, 28, 28)).shape)
    (2, 10)
    """

    def bn(channels, dims):
        if not batch_norm:
            return nn.Identity()
        return layers.BatchNorm2d(channels) if dims == 4 else layers.BatchNorm1d(channels)

    model = nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5), bn(6, 4), nn.Sigmoid(), nn.MaxPool2d(2, 2),
        nn.Conv2d(6, 16, kernel_size=5), bn(16, 4), nn.Sigmoid(), nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 120), bn(120, 2), nn.Sigmoid(),
        nn.Linear(120, 84), bn(84, 2), nn.Sigmoid(),
        nn.Linear(84, 10),
    )
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(module.weight)
    return model
