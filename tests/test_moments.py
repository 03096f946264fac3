"""moments(): two-pass statistics stay accurate where E[x^2] - E[x]^2 collapses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refimpl import core


def _large_mean_data(dtype_cast):
    rng = np.random.default_rng(7)
    # 8 channels with means around 1e4 and standard deviation 1: mean^2 / var ~ 1e8,
    # beyond float32's 2^24 ~ 1.7e7 significand, so E[x^2] and E[x]^2 agree to the last bit.
    means = 1e4 + 100 * rng.standard_normal(8)
    x64 = means[None, :, None] + rng.standard_normal((64, 8, 32))
    truth = x64.astype(np.float32).astype(np.float64).var(axis=(0, 2))  # of the f32 values
    return dtype_cast(x64), truth


@pytest.mark.parametrize(
    "cast",
    [lambda a: a.astype(np.float32), lambda a: torch.tensor(a, dtype=torch.float32)],
    ids=["numpy", "torch"],
)
def test_two_pass_variance_is_accurate_where_one_pass_collapses(cast):
    x, truth = _large_mean_data(cast)
    _, var = core.moments(x, (0, 2))
    _, naive_var = core.naive_moments(x, (0, 2))
    var = np.asarray(var, dtype=np.float64).reshape(-1)
    naive_var = np.asarray(naive_var, dtype=np.float64).reshape(-1)

    stable_error = np.abs(var - truth) / truth
    naive_error = np.abs(naive_var - truth) / truth
    assert stable_error.max() < 1e-3, stable_error
    # the contrast: the one-pass formula is off by more than 10% (or negative) somewhere
    assert naive_error.max() > 0.1 or (naive_var < 0).any(), naive_error


def test_masked_moments_ignore_padding():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 6))
    lengths = np.array([6, 2, 5, 3])
    mask = (np.arange(6)[None, :] < lengths[:, None])[:, None, :]  # (N, 1, L)
    x_padded = np.where(mask, x, 1e6)  # garbage in the padding must not matter
    mean, var = core.moments(x_padded, (0, 2), mask=mask)
    for c in range(3):
        values = np.concatenate([x[n, c, : lengths[n]] for n in range(4)])
        assert abs(mean[0, c, 0] - values.mean()) < 1e-12
        assert abs(var[0, c, 0] - values.var()) < 1e-12
    _, unbiased = core.moments(x_padded, (0, 2), mask=mask, correction=1)
    values = np.concatenate([x[n, 0, : lengths[n]] for n in range(4)])
    assert abs(unbiased[0, 0, 0] - values.var(ddof=1)) < 1e-12


def test_moments_unbiased_correction():
    x = np.random.default_rng(1).standard_normal((5, 7))
    _, var = core.moments(x, (0,), correction=1)
    np.testing.assert_allclose(var[0], x.var(axis=0, ddof=1), rtol=1e-13)


def test_combine_moments_equals_one_pass_over_the_union():
    rng = np.random.default_rng(2)
    a, b = 1e3 + rng.standard_normal(37), 1e3 + 3 * rng.standard_normal(91)
    count, mean, m2 = core.combine_moments(
        a.size, a.mean(), a.var() * a.size, b.size, b.mean(), b.var() * b.size
    )
    both = np.concatenate([a, b])
    assert count == both.size
    assert abs(mean - both.mean()) < 1e-12 * 1e3
    assert abs(m2 / count - both.var()) < 1e-10


def test_moments_on_torch_keep_the_graph():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    mean, var = core.moments(x, (0,))
    var.sum().backward()
    # d var / d x_i = 2 (x_i - mean) / n
    expected = 2 * (x.detach() - x.detach().mean(0)) / 4
    assert torch.allclose(x.grad, expected, atol=1e-14)
