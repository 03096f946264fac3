"""Closed-form backward passes: against torch autograd and against finite differences.

Finite differences use the NumPy float64 path of refimpl.functional (no torch at all):
for L = sum(y * g), central differences of L in every input, weight and bias element.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refimpl import backward, functional

RNG_SEED = 1234


def _case(name):
    """(forward(x, w, b), closed_form(g, x, w, b), torch forward, x shape, param shape)."""
    tf = torch.nn.functional
    cases = {
        "batch train": (
            lambda x, w, b: functional.batch_norm(x, None, None, w, b, True, 0.1, 1e-3),
            lambda g, x, w, b: backward.batch_norm_backward(g, x, w, 1e-3),
            lambda x, w, b: tf.batch_norm(x, None, None, w, b, True, 0.1, 1e-3),
            (4, 3, 5),
            (3,),
        ),
        "batch eval": (
            lambda x, w, b: functional.batch_norm(x, _rm(x), _rv(x), w, b, False, 0.1, 1e-3),
            lambda g, x, w, b: backward.batch_norm_backward(g, x, w, 1e-3, False, _rm(x), _rv(x)),
            lambda x, w, b: tf.batch_norm(x, _rm(x), _rv(x), w, b, False, 0.1, 1e-3),
            (4, 3, 2, 2),
            (3,),
        ),
        "layer": (
            lambda x, w, b: functional.layer_norm(x, (3, 4), w, b, 1e-3),
            lambda g, x, w, b: backward.layer_norm_backward(g, x, (3, 4), w, 1e-3),
            lambda x, w, b: tf.layer_norm(x, (3, 4), w, b, 1e-3),
            (2, 3, 4),
            (3, 4),
        ),
        "group": (
            lambda x, w, b: functional.group_norm(x, 2, w, b, 1e-3),
            lambda g, x, w, b: backward.group_norm_backward(g, x, 2, w, 1e-3),
            lambda x, w, b: tf.group_norm(x, 2, w, b, 1e-3),
            (3, 4, 5),
            (4,),
        ),
        "instance": (
            lambda x, w, b: functional.instance_norm(x, weight=w, bias=b, eps=1e-3),
            lambda g, x, w, b: backward.instance_norm_backward(g, x, w, 1e-3),
            lambda x, w, b: tf.instance_norm(x, weight=w, bias=b, eps=1e-3),
            (2, 3, 2, 3),
            (3,),
        ),
        "rms": (
            lambda x, w, b: functional.rms_norm(x, (5,), w, 1e-3),
            lambda g, x, w, b: (*backward.rms_norm_backward(g, x, (5,), w, 1e-3), None),
            lambda x, w, b: tf.rms_norm(x, (5,), w, 1e-3),
            (3, 2, 5),
            (5,),
        ),
    }
    return cases[name]


def _rm(x):  # fixed running statistics for the eval case, in x's library
    values = np.array([0.3, -0.2, 0.5])
    return torch.tensor(values) if isinstance(x, torch.Tensor) else values


def _rv(x):
    values = np.array([1.5, 0.7, 2.0])
    return torch.tensor(values) if isinstance(x, torch.Tensor) else values


NAMES = ["batch train", "batch eval", "layer", "group", "instance", "rms"]


def _data(name):
    rng = np.random.default_rng(RNG_SEED)
    *_, x_shape, p_shape = _case(name)
    x = 2.0 + rng.standard_normal(x_shape)
    w = 1.0 + 0.5 * rng.standard_normal(p_shape)
    b = rng.standard_normal(p_shape)
    g = rng.standard_normal(x_shape)
    return x, w, (None if name == "rms" else b), g


def _central_difference(loss, array, h=1e-5):
    grad = np.zeros_like(array)
    for i in np.ndindex(array.shape):
        keep = array[i]
        array[i] = keep + h
        up = loss()
        array[i] = keep - h
        down = loss()
        array[i] = keep
        grad[i] = (up - down) / (2 * h)
    return grad


@pytest.mark.parametrize("name", NAMES)
def test_closed_form_matches_finite_differences(name):
    forward, closed_form, *_ = _case(name)
    x, w, b, g = _data(name)
    grads = closed_form(g, x, w, b)

    def loss():
        return float(np.sum(forward(x, w, b) * g))

    for label, array, grad in (
        ("input", x, grads[0]),
        ("weight", w, grads[1]),
        ("bias", b, grads[2]),
    ):
        if array is None:
            continue
        numeric = _central_difference(loss, array)
        # central differences: O(h^2) truncation + O(eps64 / h) rounding, ~1e-9 here
        scale = np.max(np.abs(numeric)) + 1
        assert np.max(np.abs(grad - numeric)) <= 1e-7 * scale, label


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_closed_form_matches_torch_autograd(name, library):
    _, closed_form, torch_forward, *_ = _case(name)
    x, w, b, g = _data(name)
    tensors = [None if a is None else torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    torch_forward(*tensors).backward(torch.tensor(g))
    if library == "torch":
        x, w, b, g = (None if a is None else torch.tensor(a) for a in (x, w, b, g))
    grads = closed_form(g, x, w, b)
    assert isinstance(grads[0], np.ndarray if library == "numpy" else torch.Tensor)
    for ours, tensor in zip(grads, tensors, strict=True):
        if tensor is None:
            continue
        ours = ours if isinstance(ours, np.ndarray) else ours.numpy()
        theirs = tensor.grad.numpy()
        assert np.max(np.abs(ours - theirs)) <= 1e-12 * (np.max(np.abs(theirs)) + 1)


@pytest.mark.parametrize("name", NAMES)
def test_autograd_through_refimpl_matches_closed_form(name):
    """Backprop through refimpl's step-by-step torch graph gives the closed form too."""
    forward, closed_form, *_ = _case(name)
    x, w, b, g = _data(name)
    tensors = [None if a is None else torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    forward(*tensors).backward(torch.tensor(g))
    grads = closed_form(g, x, w, b)
    for ours, tensor in zip(grads, tensors, strict=True):
        if tensor is not None:
            theirs = tensor.grad.numpy()
            assert np.max(np.abs(ours - theirs)) <= 1e-12 * (np.max(np.abs(theirs)) + 1)


def test_batch_norm_input_gradient_sums_to_zero_per_channel():
    """A property the closed form makes visible: shifting a channel changes nothing."""
    x, w, b, g = _data("batch train")
    grad_input = backward.batch_norm_backward(g, x, w, 1e-3)[0]
    assert np.max(np.abs(grad_input.sum(axis=(0, 2)))) < 1e-12
    assert np.max(np.abs(grad_input)) > 0.1  # ...while not being zero itself
