"""Momentum conventions and the Keras-convention batch norm, against torch and by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refimpl.running_stats import (
    KerasBatchNorm,
    batch_weights,
    keras_momentum_to_torch,
    torch_momentum_to_keras,
)


@pytest.mark.parametrize("keras, torch_m", [(0.99, 0.01), (0.9, 0.1), (0.0, 1.0), (1.0, 0.0)])
def test_conversion_both_ways(keras, torch_m):
    assert keras_momentum_to_torch(keras) == pytest.approx(torch_m, abs=1e-15)
    assert torch_momentum_to_keras(torch_m) == pytest.approx(keras, abs=1e-15)
    assert torch_momentum_to_keras(keras_momentum_to_torch(keras)) == pytest.approx(keras)


@pytest.mark.parametrize("bad", [None, -0.1, 1.5])
def test_conversion_rejects_bad_momentum(bad):
    with pytest.raises(ValueError):
        keras_momentum_to_torch(bad)


def test_batch_weights_sum_to_one_and_match_torch():
    m, n = 0.1, 7
    weights, initial = batch_weights(m, n)
    assert sum(weights) + initial == pytest.approx(1.0, abs=1e-15)
    # torch's running mean after n batches of constant value k (batch k) is sum_k w_k * k
    bn = torch.nn.BatchNorm1d(1, momentum=m, dtype=torch.float64)
    for k in range(1, n + 1):
        bn(torch.full((4, 1), float(k), dtype=torch.float64))
    expected = sum(w * k for w, k in zip(weights, range(1, n + 1), strict=True))
    assert bn.running_mean.item() == pytest.approx(expected, rel=1e-12)
    # the cumulative average weighs batches equally
    assert batch_weights(None, 5) == ([0.2] * 5, 0.0)


def _keras_by_hand(batches, momentum, unbiased):
    """Keras's update rule written out in NumPy (channel axis 1)."""
    mean_run, var_run = np.zeros(3), np.ones(3)
    for x in batches:
        axes = (0, 2, 3)
        mean = x.mean(axis=axes)
        var = x.var(axis=axes, ddof=1 if unbiased else 0)
        mean_run = mean_run * momentum + mean * (1 - momentum)
        var_run = var_run * momentum + var * (1 - momentum)
    return mean_run, var_run


@pytest.mark.parametrize("unbiased", [False, True])
def test_keras_layer_running_stats_by_hand(unbiased):
    rng = np.random.default_rng(0)
    batches = [rng.normal(2.0, 3.0, size=(4, 3, 2, 2)) for _ in range(5)]
    layer = KerasBatchNorm(3, momentum=0.9, unbiased_variance=unbiased, dtype=torch.float64)
    for x in batches:
        layer(torch.tensor(x))
    mean, var = _keras_by_hand(batches, 0.9, unbiased)
    np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(layer.moving_variance.numpy(), var, rtol=1e-12)
    assert int(layer.steps) == 5


def test_keras_layer_matches_torch_with_converted_momentum_and_eps():
    """A Keras-convention layer (momentum 0.99, epsilon 1e-3) equals torch's BatchNorm2d
    with momentum 0.01 and eps 1e-3: outputs in both modes and, with the unbiased variance,
    the running statistics; the state carries over through torch_state_dict."""
    torch.manual_seed(0)
    keras = KerasBatchNorm(3, momentum=0.99, epsilon=1e-3, unbiased_variance=True,
                           dtype=torch.float64)
    ref = torch.nn.BatchNorm2d(3, eps=keras.epsilon, momentum=keras_momentum_to_torch(0.99),
                               dtype=torch.float64)
    with torch.no_grad():
        keras.gamma.copy_(torch.tensor([0.5, 1.0, 2.0]))
        keras.beta.copy_(torch.tensor([-1.0, 0.0, 1.0]))
    ref.load_state_dict(keras.torch_state_dict())
    for _ in range(10):
        x = 3 * torch.randn(8, 3, 4, 4, dtype=torch.float64) + 1
        torch.testing.assert_close(keras(x), ref(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(keras.moving_mean, ref.running_mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(keras.moving_variance, ref.running_var, rtol=1e-12, atol=1e-14)
    keras.eval()
    ref.eval()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(keras(x), ref(x), rtol=1e-12, atol=1e-12)
    # Loading the state into a torch layer with torch's default eps gives other outputs.
    wrong_eps = torch.nn.BatchNorm2d(3, dtype=torch.float64).eval()
    wrong_eps.load_state_dict(keras.torch_state_dict())
    assert (wrong_eps(x) - ref(x)).abs().max() > 1e-6


def test_keras_default_biased_variance_differs_from_torch_by_bessel():
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    keras = KerasBatchNorm(3, momentum=0.0, dtype=torch.float64)  # moving = this batch
    keras(x)
    ref = torch.nn.BatchNorm2d(3, momentum=1.0, dtype=torch.float64)
    ref(x)
    n = 4 * 2 * 2
    torch.testing.assert_close(keras.moving_variance * n / (n - 1), ref.running_var)
