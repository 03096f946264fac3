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
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, fx
from torch.nn import Linear, Module, Parameter
from torch.nn.modules.batchnorm import _BatchNorm as _TorchBatchNorm
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from refimpl import nn as _refimpl_nn

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


def _is_batch_norm(module) -> bool:
    return isinstance(module, (_TorchBatchNorm, _refimpl_nn._BatchNorm))


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


def _spatial_dims(module) -> int | None:
    """1/2/3 for a conv or a BatchNorm{1,2,3}d; None for a BN that accepts any rank."""
    if isinstance(module, _ConvNd):
        return module.weight.dim() - 2
    for dims, names in ((1, "BatchNorm1d"), (2, "BatchNorm2d"), (3, "BatchNorm3d")):
        if type(module).__name__ in (names, "Lazy" + names):
            return dims
    return None


def _pair_problem(layer, bn) -> str | None:
    """Why ``bn(layer(x))`` cannot be folded (shapes), or None."""
    if isinstance(layer, Linear):
        if _spatial_dims(bn) not in (1, None):
            return f"{type(bn).__name__} after a Linear layer"
        if bn.num_features not in (layer.out_features, 1):
            return f"{bn.num_features} features after a Linear with {layer.out_features}"
        return None
    bn_dims = _spatial_dims(bn)
    if bn_dims is not None and bn_dims != _spatial_dims(layer):
        return f"{type(bn).__name__} after a {type(layer).__name__}"
    if bn.num_features != layer.out_channels:
        return f"{bn.num_features} features after a conv with {layer.out_channels} channels"
    return None


def _set_submodule(root: Module, target: str, module: Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def fuse_model(model: Module) -> tuple[fx.GraphModule, FusionReport]:
    """Fold every conv/linear -> batch norm pair of an eval-mode model; report the rest.

    The model is traced with ``torch.fx`` (a deep copy: the input model is untouched).
    A pair ``bn(layer(x))`` is folded when ``layer`` is a ``Conv*``, ``ConvTranspose*`` or
    ``Linear`` module whose output has no other user, both modules are called once in the
    graph, the BN is in eval mode with running statistics, and their shapes match. Every
    other BN call site stays as it is, with the reason in the report. A Linear is assumed
    to see (N, features) input, the case in which ``BatchNorm1d`` normalizes its outputs.
    Raises `FusionError` for a model in training mode.

    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
    ...                           torch.nn.ReLU(), torch.nn.BatchNorm2d(4)).eval()
    >>> fused, report = fuse_model(net)
    >>> print(report)
    1 folded, 1 not folded
      folded      0 <- 1
      not folded  3: not preceded by a conv or linear layer (its input comes from 2)
    """
    if model.training:
        raise FusionError(
            "the model is in training mode: its batch norms normalize with batch statistics, "
            "which cannot be folded into weights; call model.eval() first"
        )
    traced = fx.symbolic_trace(copy.deepcopy(model))
    modules = dict(traced.named_modules())
    calls: dict[str, int] = {}
    for node in traced.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1

    report = FusionReport()
    for node in list(traced.graph.nodes):
        if node.op != "call_module" or not _is_batch_norm(modules[node.target]):
            continue
        bn = modules[node.target]
        entry = _try_fold(traced, modules, calls, node, bn)
        report.entries.append(entry)

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


def _try_fold(traced, modules, calls, node, bn) -> FusionEntry:
    """Fold one BN call site into its producer if it can be; say why not otherwise."""
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
