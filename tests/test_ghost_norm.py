"""GhostBatchNorm: BN statistics per ghost batch, checked against torch's BatchNorm."""

from __future__ import annotations

import pytest
import torch

from refimpl.ghost_norm import GhostBatchNorm


def _x(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * 2 + 1


@pytest.mark.parametrize("shape", [(8, 3, 4, 4), (8, 5), (8, 3, 6)])
def test_full_ghost_is_batch_norm(shape):
    x = _x(shape)
    ours = GhostBatchNorm(shape[1], ghost_size=shape[0], dtype=torch.float64)
    ref = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(
        shape[1], dtype=torch.float64)
    for _ in range(3):
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.running_mean, ref.running_mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ours.running_var, ref.running_var, rtol=1e-12, atol=1e-14)
    ours.eval()
    ref.eval()
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-12, atol=1e-12)


def test_each_ghost_batch_is_normalized_on_its_own():
    x = _x((12, 3, 2, 2), seed=1)
    ours = GhostBatchNorm(3, ghost_size=4, dtype=torch.float64)
    out = ours(x)
    chunk_means, chunk_vars = [], []
    for i, chunk in enumerate(x.split(4)):
        ref = torch.nn.BatchNorm2d(3, momentum=1.0, dtype=torch.float64)
        torch.testing.assert_close(out[4 * i : 4 * i + 4], ref(chunk), rtol=1e-12, atol=1e-12)
        chunk_means.append(ref.running_mean)
        chunk_vars.append(ref.running_var)  # momentum 1: this chunk's unbiased variance
    # one running update per training batch, towards the average over its ghost batches
    torch.testing.assert_close(ours.running_mean, 0.1 * torch.stack(chunk_means).mean(0))
    torch.testing.assert_close(ours.running_var, 0.9 + 0.1 * torch.stack(chunk_vars).mean(0))
    assert int(ours.num_batches_tracked) == 1


def test_momentum_none_and_errors():
    layer = GhostBatchNorm(2, ghost_size=2, momentum=None, dtype=torch.float64)
    a, b = _x((4, 2), 2), _x((4, 2), 3)
    layer(a)
    layer(b)
    expected = (a.reshape(2, 2, 2).mean(1).mean(0) + b.reshape(2, 2, 2).mean(1).mean(0)) / 2
    torch.testing.assert_close(layer.running_mean, expected)
    with pytest.raises(ValueError, match="must divide"):
        layer(_x((5, 2)))
    with pytest.raises(ValueError, match="more than 1 value"):
        GhostBatchNorm(2, ghost_size=1)(_x((4, 2)))
    with pytest.raises(ValueError, match="expected"):
        layer(torch.zeros(4))
