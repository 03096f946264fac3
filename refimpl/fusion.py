"""Fold an eval-mode batch norm into the convolution or linear layer before it.

In eval mode BN is a fixed affine map per channel, ``y = (z - mean) * s + beta`` with
``s = gamma / sqrt(var + eps)``. When ``z = W * x + b`` is a convolution (or a linear
layer), scaling output channel ``o`` of ``W`` by ``s[o]`` and replacing the bias by
``beta + (b - mean) * s`` gives the same output with one layer instead of two:

    W'[o] = W[o] * s[o],        b'[o] = beta[o] + (b[o] - mean[o]) * s[o].

The four functions below have the signatures of ``torch.nn.utils.fusion``; unlike
torch's they also fold grouped transposed convolutions (whose weight is laid out
``(in, out / groups, *kernel)``, so output channel ``o`` is column ``o % (out/groups)`` of
group ``o // (out/groups)``), BN without affine parameters into a linear layer, and they
say in words why a BN cannot be folded. The scale is formed in float64 and each fused
value is rounded once to the layer's dtype. `fuse_model` applies them to a whole network
traced with ``torch.fx`` and reports what it folded and what it left alone, and why.

The formula is exact only when BN's channel axis (axis 1 of its input) is the layer's
output-channel axis. The pair functions cannot check that (they see weights, not
activations; torch's check only that the feature counts match), and it fails in two
cases that run without an error: ``BatchNorm1d(L)`` after a Linear on ``(N, L, F)``
input with ``L == F`` (BN normalizes axis 1, the Linear's features are the last axis),
and ``BatchNorm1d`` after a ``Conv1d`` on unbatched ``(C, L)`` input (the channels are
axis 0). `fuse_model` folds a pair only when the ranks prove the axes coincide: from an
``example_input`` it runs, or from what the module types alone show.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field

import torch
from torch import Tensor, fx
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata
from torch.nn import Linear, Module, Parameter
from torch.nn.modules.batchnorm import _BatchNorm as _TorchBatchNorm
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from refimpl import functional as _refimpl_functional
from refimpl import nn as _refimpl_nn
from refimpl.distributed import SyncBatchNorm as _RefimplSyncBatchNorm
from refimpl.ghost_norm import GhostBatchNorm as _GhostBatchNorm

__all__ = [
    "FusionError",
    "FusionEntry",
    "FusionReport",
    "fuse_conv_bn_eval",
    "fuse_conv_bn_weights",
    "fuse_linear_bn_eval",
    "fuse_linear_bn_weights",
    "fuse_model",
]


class FusionError(ValueError, AssertionError):
    """A batch norm that cannot be folded. A ValueError; also an AssertionError, the type
    torch's fuser raises, so code written against torch catches it too.

    Example:
        >>> bn = torch.nn.BatchNorm2d(2)  # still in training mode
        >>> try:
        ...     fuse_conv_bn_eval(torch.nn.Conv2d(1, 2, 3).eval(), bn)
        ... except AssertionError as error:
        ...     print(isinstance(error, FusionError), isinstance(error, ValueError))
        True True
    """


# --------------------------------------------------------------------------- the math


def _bn_scale_shift(bn_rm, bn_rv, bn_eps, bn_w, bn_b) -> tuple[Tensor, Tensor]:
    """BN in eval as ``y = z * scale + shift``, per channel, in float64 (rounded later, once)."""
    if bn_rm is None or bn_rv is None:
        raise FusionError(_NO_RUNNING_STATS)
    dtype = torch.promote_types(bn_rm.dtype, torch.float64)
    mean, var = bn_rm.detach().to(dtype), bn_rv.detach().to(dtype)
    scale = torch.rsqrt(var + bn_eps)
    if bn_w is not None:
        scale = scale * bn_w.detach().to(dtype)
    shift = -mean * scale
    if bn_b is not None:
        shift = shift + bn_b.detach().to(dtype)
    return scale, shift


def _fused_bias(bias, scale, shift, out_channels, like) -> tuple[Tensor, bool]:
    """``b' = b * s + shift``; a layer without bias gets one (of the weight's dtype)."""
    if bias is None:
        fused = shift.expand(out_channels)
        return fused.to(like.dtype).clone(), False  # torch's fuser: no grad for a new bias
    return (bias.detach().to(scale.dtype) * scale + shift).to(bias.dtype), bias.requires_grad


def fuse_conv_bn_weights(
    conv_w: Tensor,
    conv_b: Tensor | None,
    bn_rm: Tensor,
    bn_rv: Tensor,
    bn_eps: float,
    bn_w: Tensor | None,
    bn_b: Tensor | None,
    transpose: bool = False,
) -> tuple[Parameter, Parameter]:
    """The weight and bias of a convolution followed by an eval-mode batch norm.

    ``transpose=True`` for a transposed convolution, whose weight is
    ``(in, out / groups, *kernel)``; the number of groups is ``len(bn_rm) // conv_w.shape[1]``,
    so grouped transposed convolutions fold too. Returns ``(weight, bias)`` as
    Parameters of the conv's dtype, like ``torch.nn.utils.fusion.fuse_conv_bn_weights``.

    >>> w, b = torch.ones(2, 1, 3), None
    >>> mean, var = torch.tensor([1.0, -1.0]), torch.tensor([4.0, 0.25])
    >>> fw, fb = fuse_conv_bn_weights(w, b, mean, var, 0.0, None, None)
    >>> fw[:, 0, 0].tolist(), fb.tolist()
    ([0.5, 2.0], [-0.5, 2.0])
    """
    scale, shift = _bn_scale_shift(bn_rm, bn_rv, bn_eps, bn_w, bn_b)
    out_channels = scale.numel()
    weight = conv_w.detach().to(scale.dtype)
    if not transpose:
        # (out, in / groups, *kernel): output channel o is row o, whatever the groups
        if weight.shape[0] != out_channels:
            raise FusionError(
                f"conv weight has {weight.shape[0]} output channels but the batch norm has "
                f"{out_channels} features"
            )
        fused = weight * scale.reshape(-1, *[1] * (weight.dim() - 1))
    else:
        # (in, out / groups, *kernel): output channel o = g * (out / groups) + j is
        # column j of the rows of group g, so the scale is reshaped to (groups, 1, out/groups)
        in_channels, out_per_group, kernel = weight.shape[0], weight.shape[1], weight.shape[2:]
        groups = out_channels // out_per_group
        if groups * out_per_group != out_channels or in_channels % groups:
            raise FusionError(
                f"transposed conv weight of shape {tuple(weight.shape)} cannot produce the "
                f"{out_channels} channels the batch norm has"
            )
        per_group = weight.reshape(groups, in_channels // groups, out_per_group, *kernel)
        fused = per_group * scale.reshape(groups, 1, out_per_group, *[1] * len(kernel))
        fused = fused.reshape(weight.shape)
    fused_b, bias_grad = _fused_bias(conv_b, scale, shift, out_channels, conv_w)
    return (
        Parameter(fused.to(conv_w.dtype), conv_w.requires_grad),
        Parameter(fused_b, bias_grad),
    )


def fuse_linear_bn_weights(
    linear_w: Tensor,
    linear_b: Tensor | None,
    bn_rm: Tensor,
    bn_rv: Tensor,
    bn_eps: float,
    bn_w: Tensor | None,
    bn_b: Tensor | None,
) -> tuple[Parameter, Parameter]:
    """The weight and bias of a linear layer followed by an eval-mode ``BatchNorm1d``.

    The weight is ``(out, in)``, so output feature ``o`` is row ``o``. A BN with one
    feature scales every row alike (torch allows this case too). ``bn_w``/``bn_b`` may be
    None (``affine=False``). Returns ``(weight, bias)`` as Parameters.

    >>> w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    >>> fw, fb = fuse_linear_bn_weights(w, torch.zeros(2), torch.zeros(2),
    ...                                 torch.tensor([1.0, 4.0]), 0.0, None, torch.ones(2))
    >>> fw.tolist(), fb.tolist()
    ([[1.0, 2.0], [1.5, 2.0]], [1.0, 1.0])
    """
    scale, shift = _bn_scale_shift(bn_rm, bn_rv, bn_eps, bn_w, bn_b)
    out_features = linear_w.shape[0]
    if scale.numel() not in (out_features, 1):
        raise FusionError(
            f"to fuse, linear.out_features == bn.num_features or bn.num_features == 1, got "
            f"linear.out_features={out_features} and bn.num_features={scale.numel()}"
        )
    scale, shift = scale.expand(out_features), shift.expand(out_features)
    fused = linear_w.detach().to(scale.dtype) * scale.unsqueeze(-1)
    fused_b, bias_grad = _fused_bias(linear_b, scale, shift, out_features, linear_w)
    return (
        Parameter(fused.to(linear_w.dtype), linear_w.requires_grad),
        Parameter(fused_b, bias_grad),
    )


# --------------------------------------------------------------------------- modules

_TRAINING = (
    "the batch norm is in training mode: it normalizes with each batch's own statistics "
    "(and updates its running ones), which no fixed weight can reproduce; call .eval() first"
)
_NO_RUNNING_STATS = (
    "the batch norm has no running statistics (track_running_stats=False, running_mean is "
    "None): even in eval mode it normalizes with each batch's own statistics, which no "
    "fixed weight can reproduce"
)
_LAYER_TRAINING = (
    "the {kind} layer is in training mode; fusion is for inference: call .eval() first"
)


def _why_not_foldable(bn) -> str | None:
    """Why a batch norm module cannot be folded, or None if it can."""
    if bn.training:
        return _TRAINING
    if bn.running_mean is None or bn.running_var is None:
        return _NO_RUNNING_STATS
    return None


def _foldable_copy(layer: Module, bn: Module, kind: str) -> Module:
    """A copy of ``layer`` to receive the folded weights, after checking that both the
    layer and ``bn`` are in a state that can be folded (raises `FusionError` otherwise)."""
    if layer.training:
        raise FusionError(_LAYER_TRAINING.format(kind=kind))
    reason = _why_not_foldable(bn)
    if reason:
        raise FusionError(reason)
    return copy.deepcopy(layer)


def fuse_conv_bn_eval(conv: _ConvNd, bn: Module, transpose: bool = False) -> _ConvNd:
    """A new convolution equal to ``bn(conv(x))`` for eval-mode ``conv`` and ``bn``.

    Works for every ``Conv1d/2d/3d`` and ``ConvTranspose1d/2d/3d`` (grouped, depthwise,
    dilated, strided, any padding mode, with or without bias) and BN with or without
    affine parameters. ``conv`` and ``bn`` are left untouched. Raises `FusionError`
    (a ValueError) saying why when ``bn`` is in training mode or has no running statistics.
    ``transpose`` is accepted for torch's signature, but the module's own type decides
    which weight axis is the output channel, so a forgotten flag cannot give a wrong
    layer.

    >>> conv = torch.nn.Conv2d(3, 4, 3, groups=1).eval()
    >>> bn = torch.nn.BatchNorm2d(4).eval()
    >>> x = torch.randn(2, 3, 8, 8)
    >>> bool(torch.allclose(fuse_conv_bn_eval(conv, bn)(x), bn(conv(x)), atol=1e-5))
    True
    """
    fused = _foldable_copy(conv, bn, "conv")
    fused.weight, fused.bias = fuse_conv_bn_weights(
        conv.weight,
        conv.bias,
        bn.running_mean,
        bn.running_var,
        bn.eps,
        bn.weight,
        bn.bias,
        isinstance(conv, _ConvTransposeNd),
    )
    return fused


def fuse_linear_bn_eval(linear: Linear, bn: Module) -> Linear:
    """A new linear layer equal to ``bn(linear(x))`` for eval-mode layers on (N, features).

    Only on (N, features): on (N, L, features) ``BatchNorm1d`` normalizes axis 1, not the
    features, and this function cannot see the input (`fuse_model` checks the shapes).

    Raises `FusionError` (a ValueError) saying why when ``bn`` is in training mode, has
    no running statistics, or its feature count matches neither ``out_features`` nor 1.

    >>> linear, bn = torch.nn.Linear(3, 4).eval(), torch.nn.BatchNorm1d(4).eval()
    >>> x = torch.randn(5, 3)
    >>> bool(torch.allclose(fuse_linear_bn_eval(linear, bn)(x), bn(linear(x)), atol=1e-6))
    True
    """
    fused = _foldable_copy(linear, bn, "linear")
    fused.weight, fused.bias = fuse_linear_bn_weights(
        linear.weight, linear.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    return fused


# --------------------------------------------------------------------------- whole models


@dataclass(frozen=True)
class FusionEntry:
    """One batch norm call site: folded into ``layer``, or left alone for ``reason``.

    Example:
        >>> print(FusionEntry(bn="bn1", layer="conv1", folded=True))
        folded      conv1 <- bn1
    """

    bn: str
    layer: str | None
    folded: bool
    reason: str = ""

    def __str__(self) -> str:
        if self.folded:
            return f"folded      {self.layer} <- {self.bn}"
        return f"not folded  {self.bn}: {self.reason}"


@dataclass
class FusionReport:
    """What `fuse_model` did: one entry per batch norm call site, in graph order.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2),
        ...                             torch.nn.ReLU(), torch.nn.BatchNorm2d(2)).eval()
        >>> fused, report = fuse_model(model)
        >>> len(report.folded), len(report.not_folded)
        (1, 1)
    """

    entries: list[FusionEntry] = field(default_factory=list)

    @property
    def folded(self) -> list[FusionEntry]:
        return [e for e in self.entries if e.folded]

    @property
    def not_folded(self) -> list[FusionEntry]:
        return [e for e in self.entries if not e.folded]

    def __iter__(self):
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __str__(self) -> str:
        head = f"{len(self.folded)} folded, {len(self.not_folded)} not folded"
        return "\n".join([head, *(f"  {e}" for e in self.entries)])


# --------------------------------------------------------------------------- which axis
# Folding scales output channel o of the layer by BN's scale for channel o. BN's channel
# is axis 1 of its input; the layer's output channel is axis 1 of a batched conv output
# (N, C, *spatial), axis 0 of an unbatched one (C, *spatial), and the *last* axis of a
# Linear's output (..., features). So a fold is exact only when the layer's output has the
# rank that puts its channels on axis 1 (or the BN has one feature: one scale for all).
# The ranks come from running the model on an example input (torch.fx ShapeProp), or,
# without one, from what the module types alone prove; anything else is refused.

_BN_RANKS = (
    ((torch.nn.BatchNorm1d, torch.nn.LazyBatchNorm1d), (2, 3)),
    ((torch.nn.BatchNorm2d, torch.nn.LazyBatchNorm2d), (4,)),
    ((torch.nn.BatchNorm3d, torch.nn.LazyBatchNorm3d), (5,)),
)


def _bn_ranks(bn) -> tuple[int, ...] | None:
    """The input ranks a batch norm module accepts; None for any rank >= 2 (SyncBatchNorm)."""
    for classes, ranks in _BN_RANKS:
        if isinstance(bn, classes):
            return ranks
    return tuple(getattr(bn, "expected_dims", ())) or None  # refimpl's modules say


def _bn_dims(bn) -> int | None:
    """1/2/3 for a BatchNorm{1,2,3}d; None for a batch norm that accepts other ranks."""
    return {(2, 3): 1, (4,): 2, (5,): 3}.get(_bn_ranks(bn))


def _is_batch_norm(module) -> bool:
    """A batch norm `fuse_model` can fold: torch's or refimpl's ``_BatchNorm``."""
    return isinstance(module, (_TorchBatchNorm, _refimpl_nn._BatchNorm))


# The forwards that are, in eval mode with running statistics, the per-channel affine map
# the fold reproduces (SyncBatchNorm and ghost BN synchronize or split only in training).
_EVAL_AFFINE_FORWARDS = {
    _TorchBatchNorm.forward,
    torch.nn.SyncBatchNorm.forward,
    _refimpl_nn._BatchNorm.forward,
    _RefimplSyncBatchNorm.forward,
    _GhostBatchNorm.forward,
}


def _is_bn_like(module) -> bool:
    """Any batch norm module, foldable or not (masked, per-step, Keras-style, frozen)."""
    return _is_batch_norm(module) or "batchnorm" in type(module).__name__.lower()


def _pair_problem(layer, bn) -> str | None:
    """Why ``bn(layer(x))`` cannot be folded (types and feature counts), or None."""
    if isinstance(layer, Linear):
        if _bn_dims(bn) not in (1, None):
            return f"{type(bn).__name__} after a Linear layer"
        if bn.num_features not in (layer.out_features, 1):
            return f"{bn.num_features} features after a Linear with {layer.out_features}"
        return None
    bn_dims = _bn_dims(bn)
    if bn_dims is not None and bn_dims != layer.weight.dim() - 2:
        return f"{type(bn).__name__} after a {type(layer).__name__}"
    if bn.num_features != layer.out_channels:
        return f"{bn.num_features} features after a conv with {layer.out_channels} channels"
    return None


def _axis_problem(layer, layer_name, bn, rank, shape) -> str | None:
    """Why BN's channel axis (1) may not be ``layer``'s output-channel axis, or None.

    ``rank`` is the rank of the layer's output (None: unknown), ``shape`` its shape when
    an example input was run.
    """
    bn_type = type(bn).__name__
    seen = f"shape {tuple(shape)}" if shape is not None else f"rank {rank}"
    if isinstance(layer, Linear):
        if bn.num_features == 1 or rank == 2:  # one scale for all; or (N, features)
            return None
        if rank is None:
            return (
                f"cannot prove that {bn_type} normalizes the output features of "
                f"{layer_name}: on (N, features) it does, on (N, L, features) it normalizes "
                "axis 1 (L); pass example_input to fuse_model so that the shapes are known"
            )
        return (
            f"{bn_type} normalizes axis 1 of the output of {layer_name} ({seen}), but a "
            "Linear's output features are its last axis: folding would scale the wrong axis"
        )
    batched = layer.weight.dim()  # (N, C, *spatial): channels on axis 1
    if rank == batched:
        return None
    if rank is None:
        accepted = _bn_ranks(bn)
        if accepted is not None and batched - 1 not in accepted:
            return None  # unbatched, the BN would raise: batched whenever the model runs
        return (
            f"cannot prove that {layer_name} sees batched input: unbatched, its output "
            f"channels are axis 0, while {bn_type} normalizes axis 1; pass example_input "
            "to fuse_model so that the shapes are known"
        )
    return (
        f"the output of {layer_name} ({seen}) is unbatched: its channels are axis 0, "
        f"while {bn_type} normalizes axis 1"
    )


_KEEP_RANK_MODULES = (
    torch.nn.Identity,
    torch.nn.modules.dropout._DropoutNd,
    torch.nn.ReLU,
    torch.nn.ReLU6,
    torch.nn.LeakyReLU,
    torch.nn.PReLU,
    torch.nn.ELU,
    torch.nn.SELU,
    torch.nn.GELU,
    torch.nn.SiLU,
    torch.nn.Mish,
    torch.nn.Sigmoid,
    torch.nn.Tanh,
    torch.nn.Hardtanh,
    torch.nn.Hardswish,
    torch.nn.Hardsigmoid,
    torch.nn.Softplus,
    _ConvNd,
    Linear,
    torch.nn.modules.pooling._MaxPoolNd,
    torch.nn.modules.pooling._AvgPoolNd,
    torch.nn.modules.pooling._AdaptiveAvgPoolNd,
)
_KEEP_RANK_FUNCTIONS = {
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.nn.functional.relu,
    torch.nn.functional.relu6,
    torch.nn.functional.gelu,
    torch.nn.functional.silu,
    torch.nn.functional.leaky_relu,
    torch.nn.functional.hardswish,
    torch.nn.functional.dropout,
}
_KEEP_RANK_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "float", "double"}
_BROADCAST_FUNCTIONS = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    torch.add,
    torch.sub,
    torch.mul,
}


def _flatten_rank(rank_in, start, end) -> int | None:
    """The rank of ``flatten(x, start, end)``; without the input's rank, only when the
    output's rank does not depend on it (``end=-1``: ``start + 1``, or torch raises)."""
    if not (isinstance(start, int) and isinstance(end, int)):
        return None
    if rank_in is not None:
        r = max(rank_in, 1)
        return r - (end % r - start % r)
    return start + 1 if end == -1 and start >= 0 else None


def _static_rank(node, modules, ranks) -> int | None:
    """The rank of ``node``'s output when the module types alone prove it, else None."""
    args, kwargs = node.args, node.kwargs
    first = ranks.get(args[0]) if args and isinstance(args[0], fx.Node) else None
    if node.op == "call_module":
        module = modules[node.target]
        if isinstance(module, torch.nn.Flatten):
            return _flatten_rank(first, module.start_dim, module.end_dim)
        if _is_batch_norm(module):  # a BN accepting one rank proves it
            accepted = _bn_ranks(module)
            return accepted[0] if accepted and len(accepted) == 1 else first
        if isinstance(module, _KEEP_RANK_MODULES) and not getattr(module, "return_indices", 0):
            return first
        return None
    flatten = (node.op == "call_function" and node.target is torch.flatten) or (
        node.op == "call_method" and node.target == "flatten"
    )
    if flatten:
        start = kwargs.get("start_dim", args[1] if len(args) > 1 else 0)
        end = kwargs.get("end_dim", args[2] if len(args) > 2 else -1)
        return _flatten_rank(first, start, end)
    if node.op == "call_method" and node.target in ("view", "reshape"):
        shape = args[1:]
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = shape[0]
        elif len(shape) == 1 and isinstance(shape[0], fx.Node):
            return None  # a torch.Size or one int: not known
        return len(shape) or None
    if node.op == "call_method" and node.target in _KEEP_RANK_METHODS:
        return first
    if node.op == "call_function" and node.target in _KEEP_RANK_FUNCTIONS:
        return first
    if node.op == "call_function" and node.target in _BROADCAST_FUNCTIONS:
        known = [ranks.get(a) for a in args if isinstance(a, fx.Node)]
        return max(known) if known and None not in known else None
    return None


def _static_ranks(graph: fx.Graph, modules) -> dict[fx.Node, int]:
    ranks: dict[fx.Node, int] = {}
    for node in graph.nodes:
        rank = _static_rank(node, modules, ranks)
        if rank is not None:
            ranks[node] = rank
    return ranks


def _example_shapes(traced: fx.GraphModule, example_input) -> dict[str, torch.Size]:
    """Each node's output shape, from running (a copy of) the graph on ``example_input``."""
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    probe = copy.deepcopy(traced)  # a BN left in training mode updates its buffers
    try:
        with torch.no_grad():
            ShapeProp(probe).propagate(*args)
    except Exception as error:
        raise FusionError(
            f"the model does not run on example_input: {type(error).__name__}: {error}"
        ) from error
    return {
        node.name: node.meta["tensor_meta"].shape
        for node in probe.graph.nodes
        if isinstance(node.meta.get("tensor_meta"), TensorMetadata)
    }


# --------------------------------------------------------------------------- tracing


# refimpl's other norm layers: not torch.nn's, so torch.fx would trace into them (and fail
# on their shape checks); one call each, like torch.nn's own modules
_REFIMPL_NORMS = (
    _refimpl_nn._NormBase,
    _refimpl_nn.LayerNorm,
    _refimpl_nn.RMSNorm,
    _refimpl_nn.GroupNorm,
)


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with every batch norm module a leaf (refimpl's are traced into
    by default, and fail) and ``refimpl.functional.batch_norm`` recorded as one call."""

    def __init__(self) -> None:
        super().__init__(autowrap_functions=(_refimpl_functional.batch_norm,))
        # also ``refimpl.functional.batch_norm(...)`` called as a module attribute
        search = getattr(self, "_autowrap_search", None)
        if isinstance(search, list):
            search.append(_refimpl_functional)

    def is_leaf_module(self, m: Module, module_qualified_name: str) -> bool:
        return (
            _is_bn_like(m)
            or isinstance(m, _REFIMPL_NORMS)
            or super().is_leaf_module(m, module_qualified_name)
        )


def _functional_batch_norm(node) -> str | None:
    """The qualified name of a functional batch norm call (torch's or refimpl's), or None."""
    if node.op != "call_function":
        return None
    name = getattr(node.target, "__name__", str(node.target))
    if "batch_norm" not in name:
        return None
    module = getattr(node.target, "__module__", None)
    return f"{module}.{name}" if module else name


# --------------------------------------------------------------------------- whole models


def _set_submodule(root: Module, target: str, module: Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def fuse_model(model: Module, example_input=None) -> tuple[fx.GraphModule, FusionReport]:
    """Fold every conv/linear -> batch norm pair of an eval-mode model; report the rest.

    The model is traced with ``torch.fx`` (a deep copy: the input model is untouched),
    every batch norm module (torch's, refimpl's, and any other class named ``*BatchNorm*``)
    as one call. A pair ``bn(layer(x))`` is folded when ``layer`` is a ``Conv*``,
    ``ConvTranspose*`` or ``Linear`` module whose output has no other user, both modules
    are called once in the graph, the BN is a torch or refimpl ``_BatchNorm`` (with its
    class's own ``forward``, not an override) in eval mode with running statistics, their
    feature counts match, and BN's channel axis (axis 1) is provably the layer's
    output-channel axis:

    - a batched conv output ``(N, C, *spatial)`` has its channels on axis 1, an unbatched
      one ``(C, *spatial)`` on axis 0; ``BatchNorm2d``/``3d`` accept only the batched
      rank, so conv -> ``BatchNorm2d``/``3d`` always folds, while ``Conv1d`` ->
      ``BatchNorm1d`` (which also accepts the unbatched 2-D output) needs shapes;
    - a Linear's output features are its last axis, axis 1 only on ``(N, features)``:
      Linear -> ``BatchNorm1d`` on ``(N, L, features)`` would scale the wrong axis, so it
      folds only when the Linear's output is provably 2-D (or the BN has one feature).

    ``example_input`` (a tensor, or a tuple of the forward's positional arguments) is run
    through a copy of the traced graph (``torch.fx.passes.shape_prop.ShapeProp``) to learn
    every rank. Without it, ranks are what the module types alone prove (a ``Flatten``
    before the Linear, a BN that accepts one rank), and a pair whose axis cannot be proven
    is refused with a reason that says to pass one. A fold proven from an example holds for
    inputs of the example's rank: a Linear -> ``BatchNorm1d`` folded for (N, F) input is
    not the original model on (N, L, F) input. Every BN call site that is not folded
    is in the report with its reason: functional calls (``F.batch_norm``,
    ``torch.batch_norm``, ``refimpl.functional.batch_norm``) and BN modules that the
    traced forward never calls included. Raises `FusionError` for a model in training
    mode, or one that fails on ``example_input``.

    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
    ...                           torch.nn.ReLU(), torch.nn.BatchNorm2d(4)).eval()
    >>> fused, report = fuse_model(net)
    >>> print(report)
    1 folded, 1 not folded
      folded      0 <- 1
      not folded  3: not preceded by a conv or linear layer (its input comes from 2)

    A Linear followed by ``BatchNorm1d(L)`` on ``(N, L, F)`` input, ``L == F``:

    >>> mlp = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.BatchNorm1d(6)).eval()
    >>> print(fuse_model(mlp, example_input=torch.randn(4, 6, 6))[1])  # doctest: +ELLIPSIS
    0 folded, 1 not folded
      not folded  1: BatchNorm1d normalizes axis 1 of the output of 0 (shape (4, 6, 6)), ...
    >>> print(fuse_model(mlp, example_input=torch.randn(4, 6))[1])
    1 folded, 0 not folded
      folded      0 <- 1
    """
    if model.training:
        raise FusionError(
            "the model is in training mode: its batch norms normalize with batch statistics, "
            "which cannot be folded into weights; call model.eval() first"
        )
    root = copy.deepcopy(model)
    graph = _Tracer().trace(root)
    traced = fx.GraphModule(root, graph, type(root).__name__)
    modules = dict(traced.named_modules())
    calls: dict[str, int] = {}
    for node in traced.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    shapes = _example_shapes(traced, example_input) if example_input is not None else None
    static = _static_ranks(traced.graph, modules)

    def layout(node) -> tuple[int | None, torch.Size | None]:
        """The rank of ``node``'s output (None: unknown), and its shape if it was run."""
        if shapes is None:
            return static.get(node), None
        shape = shapes.get(node.name)
        return (len(shape) if shape is not None else None), shape

    report = FusionReport()
    for node in list(traced.graph.nodes):
        if node.op == "call_module" and _is_bn_like(modules[node.target]):
            bn = modules[node.target]
            report.entries.append(_try_fold(traced, modules, calls, node, bn, layout))
        elif (name := _functional_batch_norm(node)) is not None:
            report.entries.append(_functional_entry(node, name))
    for name, module in root.named_modules():
        if _is_bn_like(module) and name not in calls:
            inside = [t for t in calls if name.startswith(t + ".")]
            reason = (
                f"called inside {inside[0]}, a module torch.fx does not trace into"
                if inside
                else "never called by the traced forward"
            )
            report.entries.append(FusionEntry(bn=name, layer=None, folded=False, reason=reason))

    traced.graph.eliminate_dead_code()
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced, report


def _describe(node) -> str:
    """A readable name for the node a batch norm reads: a module path, op or input."""
    if not isinstance(node, fx.Node):
        return "a constant"
    if node.op == "call_module":
        return node.target
    if node.op == "placeholder":
        return f"the model input {node.target}"
    if node.op == "call_function":
        return f"the function {getattr(node.target, '__name__', node.target)} ({node.name})"
    return f"{node.op} {node.name}"


def _functional_entry(node, name: str) -> FusionEntry:
    """A functional batch norm call: listed, never folded."""
    source = node.args[0] if node.args else node.kwargs.get("input")
    layer = source.target if isinstance(source, fx.Node) and source.op == "call_module" else None
    reason = (
        f"a functional call of {name} on {_describe(source)}: fuse_model folds batch norm "
        "modules only (a call's statistics and training flag are arguments, not module "
        "state it can check)"
    )
    return FusionEntry(bn=node.name, layer=layer, folded=False, reason=reason)


def _try_fold(traced, modules, calls, node, bn, layout) -> FusionEntry:
    """Fold one BN call site into its producer if it can be; say why not otherwise."""
    if not _is_batch_norm(bn):
        reason = (
            f"a {type(bn).__name__}, not a batch norm fuse_model can fold (torch's and "
            "refimpl's _BatchNorm modules)"
        )
    elif type(bn).forward not in _EVAL_AFFINE_FORWARDS:
        reason = (
            f"{type(bn).__name__} overrides forward: fuse_model cannot prove that it is "
            "batch norm's eval-mode affine map"
        )
    else:
        reason = _why_not_foldable(bn)
    source = node.args[0] if node.args else None
    producer = (
        modules.get(source.target)
        if isinstance(source, fx.Node) and (source.op == "call_module")
        else None
    )
    layer_name = source.target if producer is not None else None
    if reason is None and not isinstance(producer, (_ConvNd, Linear)):
        where = _describe(source)
        reason = f"not preceded by a conv or linear layer (its input comes from {where})"
    if reason is None and len(node.args) + len(node.kwargs) != 1:
        reason = "called with extra arguments"
    if reason is None and len(source.users) > 1:
        others = sorted(u.name for u in source.users if u is not node)
        reason = f"the output of {layer_name} has other users ({', '.join(others)})"
    if reason is None and calls[layer_name] > 1:
        reason = f"{layer_name} is called {calls[layer_name]} times (shared weights)"
    if reason is None and calls[node.target] > 1:
        reason = f"the batch norm is called {calls[node.target]} times (shared module)"
    if reason is None and producer.training:
        reason = f"{layer_name} is in training mode"
    if reason is None:
        reason = _pair_problem(producer, bn)
    if reason is None:
        reason = _axis_problem(producer, layer_name, bn, *layout(source))
    if reason:
        return FusionEntry(bn=node.target, layer=layer_name, folded=False, reason=reason)

    if isinstance(producer, Linear):
        fused = fuse_linear_bn_eval(producer, bn)
    else:
        fused = fuse_conv_bn_eval(producer, bn, transpose=isinstance(producer, _ConvTransposeNd))
    _set_submodule(traced, layer_name, fused)
    modules[layer_name] = fused
    node.replace_all_uses_with(source)
    traced.graph.erase_node(node)
    return FusionEntry(bn=node.target, layer=layer_name, folded=True)
