"""Precise BN: recompute a trained model's running statistics with its weights frozen.

During training the running averages mix statistics from many versions of the weights
(the oldest ones stale) and are noisy at small batches. After training, run the
training data through the frozen model once with ``momentum=None`` (torch's cumulative
average): every batch then counts the same, which is the paper's population estimate
``E[mu_B]`` and ``m / (m - 1) * E[sigma_B^2]`` (Ioffe & Szegedy 2015, Alg. 2; Wu &
Johnson 2021 call it precise BN).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.nn import Module
from torch.nn.modules.batchnorm import _BatchNorm as _TorchBatchNorm

from refimpl.nn import _BatchNorm as _RefBatchNorm

__all__ = ["batchnorm_layers", "recalibrate_bn"]


def batchnorm_layers(model: Module) -> list[Module]:
    """Every batch norm layer of ``model`` (torch's and refimpl's) that keeps running stats.

    >>> from refimpl import nn
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), nn.BatchNorm1d(3))
    >>> len(batchnorm_layers(model))
    1
    """
    kinds = (_TorchBatchNorm, _RefBatchNorm)
    return [m for m in model.modules() if isinstance(m, kinds) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(model: Module, batches: Iterable, num_batches: int | None = None) -> int:
    """Replace the running statistics of every BN layer by their cumulative average over
    ``batches`` (tensors, or tuples whose first item is the input), weights untouched.

    The rest of the model runs in eval mode (dropout off); BN layers run in train mode
    with ``momentum=None``. Afterwards every module's mode and every BN momentum is
    restored. Use batches of equal size: the cumulative average weighs each batch
    equally. Returns the number of batches used.

    >>> from refimpl import nn
    >>> model = torch.nn.Sequential(nn.BatchNorm1d(2)).eval()
    >>> x = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]])
    >>> recalibrate_bn(model, [x[:2], x[2:]])
    2
    >>> model[0].running_mean, model[0].momentum, model.training
    (tensor([3., 4.]), 0.1, False)
    """
    layers = batchnorm_layers(model)
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in layers}
    used = 0
    try:
        model.eval()
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None
            layer.train()
        for batch in batches:
            if num_batches is not None and used >= num_batches:
                break
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
            used += 1
    finally:
        for module, training in modes.items():
            module.training = training
        for layer, momentum in momenta.items():
            layer.momentum = momentum
    return used
