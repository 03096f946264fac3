"""The core's axis definitions and the cube picture drawn from them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refimpl import core, functional

SHAPE = (2, 4, 3, 2)  # N, C, H, W


def _index_grids(shape):
    return np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")


@pytest.mark.parametrize(
    "norm, groups, expected",
    [
        # written from the definitions in the papers, not from the code
        ("batch", None, lambda n, c, h, w: c),
        ("layer", None, lambda n, c, h, w: n),
        ("rms", None, lambda n, c, h, w: n),
        ("instance", None, lambda n, c, h, w: n * 4 + c),
        ("group", 2, lambda n, c, h, w: n * 2 + c // 2),
        ("group", 1, lambda n, c, h, w: n),
        ("group", 4, lambda n, c, h, w: n * 4 + c),
    ],
)
def test_statistic_groups_match_the_textbook_definitions(norm, groups, expected):
    labels = core.statistic_groups(norm, SHAPE, num_groups=groups)
    assert labels.shape == SHAPE
    assert labels.dtype.kind == "i"
    np.testing.assert_array_equal(labels, expected(*_index_grids(SHAPE)))


@pytest.mark.parametrize(
    "norm, groups", [("batch", None), ("layer", None), ("instance", None), ("group", 2)]
)
def test_statistic_groups_are_what_the_functional_normalizes(norm, groups):
    """Each labelled set of the cube comes out of the functional with mean 0, var 1."""
    x = np.random.default_rng(3).standard_normal(SHAPE) * 3 + 5
    y = {
        "batch": lambda: functional.batch_norm(x, None, None, training=True, eps=1e-12),
        "layer": lambda: functional.layer_norm(x, SHAPE[1:], eps=1e-12),
        "instance": lambda: functional.instance_norm(x, eps=1e-12),
        "group": lambda: functional.group_norm(x, groups, eps=1e-12),
    }[norm]()
    labels = core.statistic_groups(norm, SHAPE, num_groups=groups)
    for label in np.unique(labels):
        values = y[labels == label]
        assert abs(values.mean()) < 1e-10
        assert abs(values.var() - 1) < 1e-9


def test_rms_groups_have_unit_mean_square():
    x = np.random.default_rng(4).standard_normal(SHAPE) + 2
    y = functional.rms_norm(x, SHAPE[1:], eps=1e-12)
    labels = core.statistic_groups("rms", SHAPE)
    for label in np.unique(labels):
        assert abs(np.mean(y[labels == label] ** 2) - 1) < 1e-10


def test_statistic_groups_rejects_unknown_norms_and_missing_groups():
    with pytest.raises(ValueError):
        core.statistic_groups("weight", SHAPE)
    with pytest.raises(ValueError):
        core.statistic_groups("group", SHAPE)


def test_axes_definitions():
    assert core.batch_axes((8, 3, 5, 5)) == core.Axes((8, 3, 5, 5), (0, 2, 3), (1,))
    assert core.layer_axes((8, 3, 5), 2).reduce == (1, 2)
    assert core.instance_axes((8, 3, 5)).reduce == (2,)
    assert core.group_axes((8, 6, 5), 3) == core.Axes((8, 3, 2, 5), (2, 3), (1,))


def test_normalize_broadcasts_parameters_over_their_axes():
    x = np.arange(24.0).reshape(2, 3, 4)
    mean, var = np.zeros((1, 3, 1)), np.ones((1, 3, 1))
    y = core.normalize(x, mean, var, 0.0, np.array([1.0, 2.0, 3.0]), np.array([0, 10, 20]), (1,))
    np.testing.assert_array_equal(y[:, 1], 2 * x[:, 1] + 10)


def test_assign_updates_in_place_for_numpy_and_torch():
    a = np.zeros(3)
    core.assign_(a, np.ones(3))
    assert (a == 1).all()
    t = torch.zeros(3)
    ref = t
    core.assign_(t, torch.ones(3, requires_grad=True) * 2)
    assert ref is t and (t == 2).all() and not t.requires_grad


def test_functional_updates_running_buffers_in_place():
    x = np.random.default_rng(5).standard_normal((6, 2, 3))
    mean, var = np.zeros(2), np.ones(2)
    mean_id, var_id = id(mean), id(var)
    functional.batch_norm(x, mean, var, training=True, momentum=0.5)
    assert id(mean) == mean_id and id(var) == var_id
    np.testing.assert_allclose(mean, 0.5 * x.mean(axis=(0, 2)), rtol=1e-13)
    np.testing.assert_allclose(var, 0.5 + 0.5 * x.var(axis=(0, 2), ddof=1), rtol=1e-13)
