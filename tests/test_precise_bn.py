"""recalibrate_bn: the cumulative average is the paper's population estimate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refimpl import nn as rnn
from refimpl.precise_bn import batchnorm_layers, recalibrate_bn


def _model(bn_cls):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, dtype=torch.float64),
        bn_cls(4, dtype=torch.float64),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.5),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 4 * 4, 5, dtype=torch.float64),
        rnn.BatchNorm1d(5, momentum=0.3, dtype=torch.float64),
    )


@pytest.mark.parametrize("bn_cls", [torch.nn.BatchNorm2d, rnn.BatchNorm2d])
def test_recalibrated_stats_are_the_paper_estimate(bn_cls):
    model = _model(bn_cls).eval()
    rng = np.random.default_rng(1)
    batches = [torch.tensor(rng.normal(1.0, 2.0, size=(8, 1, 6, 6))) for _ in range(6)]
    weights_before = [p.clone() for p in model.parameters()]
    assert recalibrate_bn(model, batches) == 6
    # paper (Alg. 2): E[mu_B] and m/(m-1) E[sigma_B^2], from the conv outputs by hand
    conv = model[0]
    with torch.no_grad():
        outs = [conv(x).numpy() for x in batches]
    m = 8 * 4 * 4
    mean = np.mean([o.mean(axis=(0, 2, 3)) for o in outs], axis=0)
    var = np.mean([o.var(axis=(0, 2, 3)) for o in outs], axis=0) * m / (m - 1)
    np.testing.assert_allclose(model[1].running_mean.numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(model[1].running_var.numpy(), var, rtol=1e-12)
    assert int(model[1].num_batches_tracked) == 6
    # weights untouched, modes and momenta restored
    for before, after in zip(weights_before, model.parameters(), strict=True):
        assert torch.equal(before, after)
    assert not any(mod.training for mod in model.modules())
    assert model[1].momentum == 0.1 and model[6].momentum == 0.3


def test_second_layer_sees_dropout_off_and_modes_restored_in_train():
    model = _model(torch.nn.BatchNorm2d).train()
    batches = [torch.randn(8, 1, 6, 6, dtype=torch.float64) for _ in range(3)]
    recalibrate_bn(model, batches)
    assert all(mod.training for mod in model.modules())
    # dropout was off: recomputing the last BN's stats by hand without dropout matches
    head = torch.nn.Sequential(*list(model)[:6]).eval()
    for layer in batchnorm_layers(head):
        layer.train()  # batch statistics, as during recalibration
        layer.momentum = 0.0  # ...without touching the buffers
    with torch.no_grad():
        feats = [head(x).numpy() for x in batches]
    for layer in batchnorm_layers(head):
        layer.momentum = 0.1
    mean = np.mean([f.mean(axis=0) for f in feats], axis=0)
    np.testing.assert_allclose(model[6].running_mean.numpy(), mean, rtol=1e-12)


def test_num_batches_limits_and_tuples_accepted():
    model = _model(torch.nn.BatchNorm2d)
    batches = [(torch.randn(4, 1, 6, 6, dtype=torch.float64), torch.zeros(4)) for _ in range(5)]
    assert recalibrate_bn(model, batches, num_batches=2) == 2
    assert int(model[1].num_batches_tracked) == 2


def test_one_full_batch_gives_population_statistics():
    x = torch.randn(50, 3, dtype=torch.float64) * 2 + 5
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(3, dtype=torch.float64))
    recalibrate_bn(model, [x])
    torch.testing.assert_close(model[0].running_mean, x.mean(0))
    torch.testing.assert_close(model[0].running_var, x.var(0, unbiased=True))


def test_layers_without_running_stats_are_skipped():
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(3, track_running_stats=False))
    assert batchnorm_layers(model) == []
    assert recalibrate_bn(model, [torch.randn(4, 3)]) == 1
