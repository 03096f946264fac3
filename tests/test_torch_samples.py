"""PyTorch's own test samples, run through refimpl: a peer suite we did not write.

PyTorch's test suite describes each operator by sample inputs (`op_db`) and each module
by constructor/forward inputs (`module_db`), including error inputs. Those samples were
chosen by PyTorch's developers to hit edge cases (empty batches, 1-element groups,
``normalized_shape`` of every rank, weight without bias, ...), so running them through
refimpl checks our semantics against cases we would not have thought of.

For each float64 sample: the forward result, every gradient (input, weight, bias) and the
running statistics after the call must agree with torch to 1e-12 relative (the book's
float64 tolerance); each error input must raise the same exception type with a message
matching PyTorch's own regex.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("expecttest", reason="torch's test databases import expecttest")

from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402
from torch.testing._internal.common_modules import module_db  # noqa: E402

import refimpl.functional as RF  # noqa: E402
import refimpl.nn as RN  # noqa: E402

TOL = 1e-12
DTYPE = torch.float64

# torch.nn.functional names (op_db entries) -> refimpl's twin.
FUNCTIONALS = {
    "nn.functional.batch_norm": RF.batch_norm,
    "nn.functional.instance_norm": RF.instance_norm,
    "nn.functional.layer_norm": RF.layer_norm,
    "nn.functional.group_norm": RF.group_norm,
    "nn.functional.rms_norm": RF.rms_norm,
}
MODULES = {
    cls: getattr(RN, cls.__name__)
    for cls in (
        torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d,
        torch.nn.InstanceNorm1d, torch.nn.InstanceNorm2d, torch.nn.InstanceNorm3d,
        torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.RMSNorm,
    )
}
OPS = [op for op in op_db if op.name in FUNCTIONALS]
MODULE_INFOS = [m for m in module_db if m.module_cls in MODULES]


def _op_id(op) -> str:
    return op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")


def test_the_database_still_has_every_norm():
    """If a torch upgrade renames an entry, this fails instead of silently testing less."""
    assert {op.name for op in OPS} == set(FUNCTIONALS)
    assert {m.module_cls for m in MODULE_INFOS} == set(MODULES)


# --- comparison helpers ---------------------------------------------------------------


def _assert_close(what: str, ours, ref) -> None:
    if ref is None or ours is None:
        assert ours is None and ref is None, f"{what}: one side is None"
        return
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
    assert ours.dtype == ref.dtype, f"{what}: dtype {ours.dtype} vs {ref.dtype}"
    if ref.numel() == 0:
        return
    ours, ref = ours.detach(), ref.detach()
    both_nan = torch.isnan(ours) & torch.isnan(ref)
    assert torch.equal(torch.isnan(ours), torch.isnan(ref)), f"{what}: NaNs differ"
    finite = ~both_nan
    diff = (ours[finite] - ref[finite]).abs().max() if finite.any() else 0.0
    scale = ref[finite].abs().max() if finite.any() else 0.0
    assert diff <= TOL * max(float(scale), 1.0), f"{what}: |diff| {float(diff):.3e} > {TOL}"


def _detached_clone(value):
    """A leaf copy of every tensor in a sample (running stats get their own storage)."""
    if isinstance(value, torch.Tensor):
        clone = value.detach().clone()
        return clone.requires_grad_(value.requires_grad)
    if isinstance(value, (list, tuple)):
        return type(value)(_detached_clone(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached_clone(v) for k, v in value.items()}
    return value


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _backward(out: torch.Tensor, upstream: torch.Tensor) -> None:
    if out.requires_grad and out.numel() > 0:
        out.backward(upstream)


# --- functionals (op_db) --------------------------------------------------------------


def _run_functional(fn, sample):
    inputs = _detached_clone((sample.input, sample.args, sample.kwargs))
    x, args, kwargs = inputs
    out = fn(x, *args, **kwargs)
    return out, _tensors(inputs)


@pytest.mark.parametrize("op", OPS, ids=_op_id)
def test_op_db_samples_forward_backward_running_stats(op):
    samples = list(op.sample_inputs("cpu", DTYPE, requires_grad=True))
    assert samples, f"{_op_id(op)}: torch offers no float64 samples"
    ours_fn = FUNCTIONALS[op.name]
    for i, sample in enumerate(samples):
        what = f"{_op_id(op)} sample {i} ({sample.summary() if hasattr(sample, 'summary') else ''})"
        ref_out, ref_tensors = _run_functional(op.op, sample)
        ours_out, our_tensors = _run_functional(ours_fn, sample)
        _assert_close(f"{what} output", ours_out, ref_out)
        upstream = torch.randn_like(ref_out)
        _backward(ref_out, upstream)
        _backward(ours_out, upstream)
        # Every tensor the call saw: inputs' gradients and in-place running statistics.
        for j, (ours_t, ref_t) in enumerate(zip(our_tensors, ref_tensors, strict=True)):
            _assert_close(f"{what} tensor argument {j} after the call", ours_t, ref_t)
            _assert_close(f"{what} gradient of argument {j}", ours_t.grad, ref_t.grad)


def _error_inputs(op):
    if op.error_inputs_func is None:
        return []
    return list(op.error_inputs("cpu"))


@pytest.mark.parametrize("op", [op for op in OPS if _error_inputs(op)], ids=_op_id)
def test_op_db_error_inputs_raise_torchs_error(op):
    ours_fn = FUNCTIONALS[op.name]
    for error in _error_inputs(op):
        sample = error.sample_input
        with pytest.raises(error.error_type, match=error.error_regex):
            op.op(sample.input, *sample.args, **sample.kwargs)  # torch itself raises
        with pytest.raises(error.error_type, match=error.error_regex):
            ours_fn(sample.input, *sample.args, **sample.kwargs)


# --- modules (module_db) --------------------------------------------------------------


def _module_pairs(info, training: bool):
    inputs = info.module_inputs_func(
        info, device="cpu", dtype=DTYPE, requires_grad=True, training=training
    )
    for module_input in inputs:
        if module_input.forward_input is None:
            continue
        args = module_input.constructor_input.args
        kwargs = dict(module_input.constructor_input.kwargs)
        kwargs.setdefault("dtype", DTYPE)
        yield module_input, args, kwargs


def _module_ids(info) -> str:
    return info.module_cls.__name__


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("info", MODULE_INFOS, ids=_module_ids)
def test_module_db_samples(info, training):
    pairs = list(_module_pairs(info, training))
    assert pairs, f"{info.module_cls.__name__}: torch offers no samples"
    for i, (module_input, args, kwargs) in enumerate(pairs):
        what = f"{info.module_cls.__name__}({args}, {kwargs}) sample {i}, training={training}"
        torch.manual_seed(i)
        theirs = info.module_cls(*args, **kwargs)
        # Non-default parameters and buffers, so a swapped weight or stat would show.
        with torch.no_grad():
            for p in theirs.parameters():
                p.uniform_(0.5, 1.5)
            for name, b in theirs.named_buffers():
                if name.endswith("running_var"):
                    b.uniform_(0.5, 2.0)
                elif name.endswith("running_mean"):
                    b.uniform_(-1.0, 1.0)
        ours = MODULES[info.module_cls](*args, **kwargs)
        ours.load_state_dict(theirs.state_dict())
        theirs.train(training)
        ours.train(training)
        forward = module_input.forward_input
        ref_args = _detached_clone((forward.args, forward.kwargs))
        our_args = _detached_clone((forward.args, forward.kwargs))
        ref_out = theirs(*ref_args[0], **ref_args[1])
        ours_out = ours(*our_args[0], **our_args[1])
        _assert_close(f"{what} output", ours_out, ref_out)
        upstream = torch.randn_like(ref_out)
        _backward(ref_out, upstream)
        _backward(ours_out, upstream)
        for j, (o, r) in enumerate(zip(_tensors(our_args), _tensors(ref_args), strict=True)):
            _assert_close(f"{what} input gradient {j}", o.grad, r.grad)
        for (name, o), (_, r) in zip(
            ours.named_parameters(), theirs.named_parameters(), strict=True
        ):
            _assert_close(f"{what} gradient of {name}", o.grad, r.grad)
        ours_state, their_state = ours.state_dict(), theirs.state_dict()
        assert ours_state.keys() == their_state.keys(), f"{what}: state_dict keys differ"
        for name in their_state:
            _assert_close(f"{what} {name} after the call", ours_state[name], their_state[name])


def _module_error_inputs(info):
    if info.module_error_inputs_func is None:
        return []
    return list(info.module_error_inputs_func(info, device="cpu", dtype=DTYPE,
                                              requires_grad=False, training=True))


@pytest.mark.parametrize(
    "info", [m for m in MODULE_INFOS if _module_error_inputs(m)], ids=_module_ids
)
def test_module_db_error_inputs_raise_torchs_error(info):
    for error in _module_error_inputs(info):
        module_input = error.module_error_input
        ctor, forward = module_input.constructor_input, module_input.forward_input
        for cls in (info.module_cls, MODULES[info.module_cls]):
            with pytest.raises(error.error_type, match=error.error_regex):
                module = cls(*ctor.args, **ctor.kwargs)
                module(*forward.args, **forward.kwargs)


def test_detached_clone_keeps_running_stats_separate():
    """The two calls must not share running-stat storage, or parity would be vacuous."""
    stats = torch.zeros(3)
    a, b = _detached_clone((stats,)), _detached_clone((stats,))
    a[0].add_(1.0)
    assert b[0].sum() == 0 and stats.sum() == 0
