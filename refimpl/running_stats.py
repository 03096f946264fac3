"""Running statistics: the two momentum conventions, and a Keras-convention batch norm.

torch and Keras keep the same exponential moving average but name its weight from
opposite ends. torch's ``momentum`` is the weight of the *new batch*
(``running = (1 - m) * running + m * batch``, default 0.1); Keras's is the weight of the
*old value* (``moving = m * moving + (1 - m) * batch``, default 0.99). Porting a layer
means converting one into the other, and carrying over eps too (Keras: 1e-3, torch: 1e-5).
"""

from __future__ import annotations

import torch
from torch.nn import Module, Parameter

from refimpl import core

__all__ = [
    "keras_momentum_to_torch",
    "torch_momentum_to_keras",
    "batch_weights",
    "KerasBatchNorm",
]


def _check_momentum(momentum) -> float:
    if momentum is None:
        raise ValueError(
            "momentum=None is torch's cumulative average; it has no Keras equivalent"
        )
    momentum = float(momentum)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    return momentum


def keras_momentum_to_torch(momentum: float) -> float:
    """torch's momentum (weight of the new batch) for Keras's (weight of the old value).

    >>> keras_momentum_to_torch(0.99)
    0.01
    """
    return round(1.0 - _check_momentum(momentum), 15)


def torch_momentum_to_keras(momentum: float) -> float:
    """Keras's momentum (weight of the old value) for torch's (weight of the new batch).

    >>> torch_momentum_to_keras(0.1)
    0.9
    """
    return round(1.0 - _check_momentum(momentum), 15)


def batch_weights(momentum: float | None, num_batches: int) -> tuple[list[float], float]:
    """How much each of ``num_batches`` batches counts in a running statistic, in torch's
    convention, and how much the initial value still counts.

    Batch k (1-based) of n has weight ``m * (1 - m) ** (n - k)``, the initial value
    ``(1 - m) ** n``; ``momentum=None`` (cumulative average) weighs every batch 1 / n.

    >>> weights, initial = batch_weights(0.5, 2)
    >>> weights, initial
    ([0.25, 0.5], 0.25)
    >>> batch_weights(None, 4)
    ([0.25, 0.25, 0.25, 0.25], 0.0)
    """
    if num_batches < 1:
        raise ValueError(f"num_batches must be positive, got {num_batches}")
    if momentum is None:
        return [1.0 / num_batches] * num_batches, 0.0
    m = _check_momentum(momentum)
    weights = [m * (1.0 - m) ** (num_batches - k) for k in range(1, num_batches + 1)]
    return weights, (1.0 - m) ** num_batches


class KerasBatchNorm(Module):
    """Batch norm with Keras's conventions, on channels-first input (dim 1 = channels).

    Keras names: ``gamma``, ``beta``, ``moving_mean``, ``moving_variance``; ``momentum``
    is the weight of the old value (default 0.99) and ``epsilon`` defaults to 1e-3.
    Keras updates ``moving_variance`` with the *biased* batch variance
    (``unbiased_variance=False``); torch uses the unbiased one. :meth:`torch_state_dict`
    gives the state a ``torch.nn.BatchNorm*d(eps=layer.epsilon,
    momentum=keras_momentum_to_torch(layer.momentum))`` loads.

    >>> layer = KerasBatchNorm(3)
    >>> y = layer(torch.randn(8, 3, 4, 4))
    >>> tuple(y.shape), layer.epsilon, layer.momentum
    ((8, 3, 4, 4), 0.001, 0.99)
    """

    def __init__(
        self,
        num_features: int,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        unbiased_variance: bool = False,
        dtype=None,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.momentum = _check_momentum(momentum)
        self.epsilon = epsilon
        self.unbiased_variance = unbiased_variance
        self.gamma = Parameter(torch.ones(num_features, dtype=dtype))
        self.beta = Parameter(torch.zeros(num_features, dtype=dtype))
        self.register_buffer("moving_mean", torch.zeros(num_features, dtype=dtype))
        self.register_buffer("moving_variance", torch.ones(num_features, dtype=dtype))
        self.register_buffer("steps", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axes = core.batch_axes(tuple(x.shape))
        if self.training:
            mean, var = core.moments(x, axes.reduce)
            count = x.numel() // x.shape[1]
            batch_var = var * (count / (count - 1)) if self.unbiased_variance else var
            m = self.momentum  # Keras's order: old value first, weighted by momentum
            core.assign_(self.moving_mean, self.moving_mean * m + mean.reshape(-1) * (1 - m))
            core.assign_(
                self.moving_variance, self.moving_variance * m + batch_var.reshape(-1) * (1 - m)
            )
            self.steps += 1
        else:
            shape = core.param_shape(x.ndim, x.shape, axes.params)
            mean = self.moving_mean.reshape(shape)
            var = self.moving_variance.reshape(shape)
        return core.normalize(x, mean, var, self.epsilon, self.gamma, self.beta, axes.params)

    def torch_state_dict(self) -> dict:
        """This layer's state under torch's ``BatchNorm*d`` names."""
        return {
            "weight": self.gamma.detach().clone(),
            "bias": self.beta.detach().clone(),
            "running_mean": self.moving_mean.clone(),
            "running_var": self.moving_variance.clone(),
            "num_batches_tracked": self.steps.clone(),
        }

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, momentum={self.momentum}, epsilon={self.epsilon}, "
            f"unbiased_variance={self.unbiased_variance}"
        )
