"""The seeded training loop, accuracy helpers and the paired comparison."""

from __future__ import annotations

import math

import pytest
import torch

from refimpl.training import (
    accuracy,
    evaluate,
    minibatches,
    paired_comparison,
    train,
)


def _data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 4, generator=g)
    y = (X[:, 0] > 0).long()
    return X, y


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8),
                               torch.nn.ReLU(), torch.nn.Linear(8, 2))


def test_minibatches_cover_every_index_once():
    idx = torch.cat(list(minibatches(10, 3, torch.Generator().manual_seed(1))))
    assert sorted(idx.tolist()) == list(range(10))


def test_train_is_reproducible_and_learns():
    X, y = _data()
    runs = []
    for _ in range(2):
        model = _model()
        losses = train(model, X, y, epochs=5, batch_size=16, lr=0.5, seed=3)
        runs.append((losses, [p.clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))
    assert runs[0][0][-1] < runs[0][0][0]
    assert evaluate(model, X, y) > 0.9


def test_params_restricts_what_moves_and_on_epoch_is_called():
    X, y = _data()
    model = _model()
    frozen = model[0].weight.clone()
    seen = []
    train(model, X, y, epochs=2, batch_size=16, lr=0.5, params=model[3].parameters(),
          on_epoch=lambda epoch, m: seen.append(epoch))
    assert torch.equal(model[0].weight, frozen)
    assert seen == [0, 1]


def test_accuracy_uses_current_mode_and_evaluate_restores_it():
    X, y = _data()
    model = _model().train()
    before = model[1].running_mean.clone()
    accuracy(model, X, y, batch_size=16)  # train mode: running stats move
    assert not torch.equal(before, model[1].running_mean)
    moved = model[1].running_mean.clone()
    evaluate(model, X, y)
    assert torch.equal(moved, model[1].running_mean)
    assert model.training


def test_paired_comparison_by_hand():
    a, b = [0.9, 0.8, 0.95], [0.85, 0.8, 0.9]
    r = paired_comparison(a, b, ("A", "B"))
    d = [0.05, 0.0, 0.05]
    mean = sum(d) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / 2)
    assert r.mean == pytest.approx(mean)
    assert r.stderr == pytest.approx(sd / math.sqrt(3))
    assert r.cutoff == 4.303
    assert r.verdict == "difference not shown"  # t = 2.0 < 4.303
    assert paired_comparison([1, 2, 3], [0, 1, 2.1], ("A", "B")).verdict == "A better"
    assert paired_comparison([0, 1, 2.1], [1, 2, 3], ("A", "B")).verdict == "B better"
    with pytest.raises(ValueError):
        paired_comparison([1.0], [0.0])


def test_bn_eval_keeps_running_stats_and_trains_the_rest():
    X, y = _data()
    model = _model()
    stats = model[1].running_mean.clone()
    weight = model[1].weight.clone()
    first = model[0].weight.clone()
    train(model, X, y, epochs=2, batch_size=16, lr=0.5, bn_eval=True)
    assert torch.equal(stats, model[1].running_mean)
    assert int(model[1].num_batches_tracked) == 0
    assert not torch.equal(weight, model[1].weight)  # gamma still learns
    assert not torch.equal(first, model[0].weight)
    assert model.training and not model[1].training
