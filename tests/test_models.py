"""The chapter's networks: shapes, where the norms sit, and torch/refimpl interchangeability."""

from __future__ import annotations

import pytest
import torch

from refimpl import models
from refimpl import nn as rnn
from refimpl.ghost_norm import GhostBatchNorm


@pytest.mark.parametrize("norm", ["batch", "group", "layer", None])
@pytest.mark.parametrize("head_norm", [False, True])
def test_small_cnn_shapes(norm, head_norm):
    model = models.small_cnn(norm, head_norm=head_norm)
    assert model(torch.zeros(4, 1, 8, 8)).shape == (4, 10)


def test_norm_choices():
    assert isinstance(models.conv_norm("batch", 4), rnn.BatchNorm2d)
    assert isinstance(models.conv_norm("batch", 4, layers=torch.nn), torch.nn.BatchNorm2d)
    assert isinstance(models.conv_norm("batch", 4, ghost_size=2), GhostBatchNorm)
    layer_norm = models.conv_norm("layer", 4)
    assert isinstance(layer_norm, rnn.GroupNorm) and layer_norm.num_groups == 1
    assert isinstance(models.feature_norm("layer", 4), rnn.LayerNorm)
    assert isinstance(models.conv_norm(None, 4), torch.nn.Identity)
    with pytest.raises(ValueError):
        models.conv_norm("weird", 4)


def test_lenet_is_d2ls():
    model = models.lenet()
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Conv2d", "BatchNorm2d", "Sigmoid", "MaxPool2d",
                     "Conv2d", "BatchNorm2d", "Sigmoid", "MaxPool2d", "Flatten",
                     "Linear", "BatchNorm1d", "Sigmoid", "Linear", "BatchNorm1d", "Sigmoid",
                     "Linear"]
    plain = models.lenet(batch_norm=False)
    assert not any("BatchNorm" in type(m).__name__ for m in plain.modules())
    assert plain(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_lenet_torch_and_refimpl_agree():
    torch.manual_seed(0)
    theirs = models.lenet(layers=torch.nn).double()
    ours = models.lenet(layers=rnn).double()
    ours.load_state_dict(theirs.state_dict())
    x = torch.rand(16, 1, 28, 28, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-10, atol=1e-12)
    ours.eval()
    theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-10, atol=1e-12)
