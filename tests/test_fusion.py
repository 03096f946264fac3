"""refimpl.fusion: folding an eval-mode batch norm into the layer before it.

Expected values are independent of the code under test: the unfused pair ``bn(conv(x))``
run by torch, and torch's own fuser where it supports the case.

Tolerances
----------
float64: fused and unfused outputs agree to 1e-12 relative (max|diff| / max|unfused|).

float32: both sides round. Unfused: the conv sums K = (in / groups) * prod(kernel)
products, off by at most gamma_K * c <= K u * c elementwise (Higham's bound for any
summation order), c = conv(|x|, |W|) (+ |b|); torch's BN kernel then forms
alpha = gamma * rsqrt(var + eps) and beta - mean * alpha and computes z * alpha + beta'
(a few more roundings, each u relative to |s| |z|, |s| |mean| or |beta|). Fused: the
weight W * s is rounded once (u |s| |W|), and the conv sums K products again. So

    |fused - unfused| <= u * ((2K + 10) * |s| * c + 10 * (|s| * (|b| + |mean|) + |beta|))

elementwise, u = 2^-24, s = gamma / sqrt(var + eps). It is a worst-case bound (observed
errors are near sqrt(K) u); any real mistake (a wrong axis, a missing eps) is orders of
magnitude above it.
"""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import fusion as torch_fusion

from refimpl import nn as rnn
from refimpl.check import max_relative_error
from refimpl.fusion import (
    FusionError,
    FusionReport,
    fuse_conv_bn_eval,
    fuse_conv_bn_weights,
    fuse_linear_bn_eval,
    fuse_linear_bn_weights,
    fuse_model,
)

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
SIZE = {1: 9, 2: 7, 3: 5}
U32 = 2.0**-24


def randomize_bn(bn: nn.Module, gen: torch.Generator) -> nn.Module:
    """Running statistics and affine parameters far from their defaults."""
    c, dtype = bn.num_features, bn.running_mean.dtype
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=gen, dtype=dtype) * 2)
        bn.running_var.copy_(torch.rand(c, generator=gen, dtype=dtype) * 3 + 0.05)
        if bn.affine:
            bn.weight.copy_(torch.randn(c, generator=gen, dtype=dtype))
            bn.bias.copy_(torch.randn(c, generator=gen, dtype=dtype))
    return bn.eval()


def make_pair(dims, transpose, groups, dilation, stride, padding_mode, bias, affine, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    c_in = 4 if groups != "depthwise" else 6
    c_out = 6
    g = c_in if groups == "depthwise" else groups
    kwargs = dict(groups=g, dilation=dilation, stride=stride, bias=bias, dtype=dtype)
    if transpose:
        conv = CONV_T[dims](c_in, c_out, 3, padding=1, **kwargs)
    else:
        conv = CONV[dims](c_in, c_out, 3, padding=1, padding_mode=padding_mode, **kwargs)
    bn = randomize_bn(BN[dims](c_out, affine=affine, dtype=dtype), gen)
    x = torch.randn(2, c_in, *[SIZE[dims]] * dims, generator=gen, dtype=dtype)
    return conv.eval(), bn, x


CASES = [
    # dims, transpose, groups, dilation, stride, padding_mode, bias, affine
    *[
        (d, t, g, 1, 1, "zeros", b, a)
        for d, t, g, b, a in itertools.product(
            (1, 2, 3), (False, True), (1, 2, "depthwise"), (True, False), (True, False)
        )
    ],
    *[
        (d, False, g, dil, st, mode, True, True)
        for d, mode in itertools.product((1, 2, 3), ("zeros", "reflect", "replicate", "circular"))
        for g, dil, st in ((2, 2, 1), (1, 1, 2))
    ],
    *[(d, True, g, 2, 2, "zeros", b, True) for d in (1, 2, 3) for g, b in ((2, True), (1, False))],
]


def case_id(case):
    d, t, g, dil, st, mode, b, a = case
    return (
        f"{'T' if t else ''}{d}d-g{g}-dil{dil}-s{st}-{mode}-{'bias' if b else 'nobias'}"
        f"-{'affine' if a else 'noaffine'}"
    )


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fused_conv_equals_conv_then_bn_float64(case):
    conv, bn, x = make_pair(*case, dtype=torch.float64)
    fused = fuse_conv_bn_eval(conv, bn, transpose=case[1])
    with torch.no_grad():
        assert max_relative_error(fused(x), bn(conv(x))) <= 1e-12


def float32_bound(conv, bn, x, transpose):
    """The elementwise bound derived in the module docstring, computed in float64."""
    w64 = conv.weight.detach().double().abs()
    conv64 = copy.deepcopy(conv).double()
    with torch.no_grad():
        conv64.weight.copy_(w64)
        if conv64.bias is not None:
            conv64.bias.zero_()
        c = conv64(x.double().abs())
    k = (
        conv.weight[0].numel()
        if not transpose
        else conv.weight.shape[0] // conv.groups * math.prod(conv.weight.shape[2:])
    )
    shape = (1, -1) + (1,) * (x.dim() - 2)
    gamma = bn.weight.double() if bn.weight is not None else torch.ones(bn.num_features).double()
    beta = bn.bias.double() if bn.bias is not None else torch.zeros(bn.num_features).double()
    s = (gamma / torch.sqrt(bn.running_var.double() + bn.eps)).abs().reshape(shape)
    b = conv.bias.double().abs().reshape(shape) if conv.bias is not None else 0.0
    mean = bn.running_mean.double().abs().reshape(shape)
    return U32 * ((2 * k + 10) * s * (c + b) + 10 * (s * (b + mean) + beta.abs().reshape(shape)))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fused_conv_float32_within_derived_bound(case):
    conv, bn, x = make_pair(*case, dtype=torch.float32)
    fused = fuse_conv_bn_eval(conv, bn, transpose=case[1])
    with torch.no_grad():
        diff = (fused(x).double() - bn(conv(x)).double()).abs()
        bound = float32_bound(conv, bn, x, case[1]).detach()
    assert fused.weight.dtype == torch.float32
    assert bool((diff <= bound).all()), float((diff / bound).max())


def torch_supports(case):
    _, transpose, groups, *_ = case
    return not (transpose and groups != 1)


@pytest.mark.parametrize("case", [c for c in CASES if torch_supports(c)], ids=case_id)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_same_weights_as_torchs_fuser(case, dtype):
    conv, bn, _ = make_pair(*case, dtype=dtype)
    ours = fuse_conv_bn_eval(conv, bn, transpose=case[1])
    theirs = torch_fusion.fuse_conv_bn_eval(conv, bn, transpose=case[1])
    # torch rounds rsqrt, gamma * rsqrt and W * scale in the layer's dtype (3 roundings),
    # ours once from float64: within a few units of the last place
    tol = 1e-12 if dtype == torch.float64 else 8 * U32
    assert max_relative_error(ours.weight, theirs.weight) <= tol
    assert max_relative_error(ours.bias, theirs.bias) <= tol
    assert type(ours) is type(theirs) and ours.weight.shape == theirs.weight.shape


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_grouped_transposed_conv_folds_where_torchs_fuser_fails(dims):
    conv, bn, x = make_pair(dims, True, 2, 1, 1, "zeros", True, True, torch.float64)
    assert conv.weight.shape[:2] == (4, 3)  # (in, out / groups): 2 groups of 3 outputs
    with pytest.raises(RuntimeError, match="must match the size"):
        torch_fusion.fuse_conv_bn_eval(conv, bn, transpose=True)
    fused = fuse_conv_bn_eval(conv, bn, transpose=True)
    with torch.no_grad():
        assert max_relative_error(fused(x), bn(conv(x))) <= 1e-12


def test_grouped_transposed_scale_goes_to_the_right_channel():
    # 2 groups, 2 inputs per group, 2 outputs per group; each output channel's scale is
    # distinct, so a wrong axis or group layout changes some fused weight
    w = torch.arange(1.0, 9.0).reshape(4, 2, 1)  # (in=4, out/groups=2, k=1)
    scale = torch.tensor([1.0, 10.0, 100.0, 1000.0])  # per output channel 0..3
    fw, fb = fuse_conv_bn_weights(w, None, torch.zeros(4), 1 / scale**2, 0.0, None, None, True)
    # output channel o = 2 * group + j reads rows of its group, column j
    expected = torch.tensor(
        [[1 * 1, 2 * 10], [3 * 1, 4 * 10], [5 * 100, 6 * 1000], [7 * 100, 8 * 1000]]
    ).reshape(4, 2, 1)
    assert torch.allclose(fw, expected.double().float(), rtol=1e-6)
    assert fb.tolist() == [0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("flag", [False, True])
def test_the_module_type_decides_the_output_axis(flag):
    # torch's fuser trusts the flag: ConvTranspose2d(6, 6) with transpose=False scales
    # axis 0 (the input channels) and silently gives a wrong layer
    _, bn, _ = make_pair(2, True, 1, 1, 1, "zeros", True, True, torch.float64)  # 6 features
    conv = nn.ConvTranspose2d(6, 6, 3, padding=1, dtype=torch.float64).eval()
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        assert (
            max_relative_error(fuse_conv_bn_eval(conv, bn, transpose=flag)(x), bn(conv(x))) <= 1e-12
        )
        wrong = torch_fusion.fuse_conv_bn_eval(conv, bn, transpose=False)(x)
        assert max_relative_error(wrong, bn(conv(x))) > 1e-3


def test_weights_return_parameters_like_torch():
    conv, bn, _ = make_pair(2, False, 1, 1, 1, "zeros", False, True, torch.float32)
    ours = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    theirs = torch_fusion.fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    for a, b in zip(ours, theirs, strict=True):
        assert isinstance(a, nn.Parameter)
        assert a.dtype == b.dtype and a.shape == b.shape and a.requires_grad == b.requires_grad


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_weights_keep_their_dtype_and_round_once(dtype):
    conv, bn, _ = make_pair(2, False, 1, 1, 1, "zeros", True, True, torch.float32)
    conv = conv.to(dtype)
    fused = fuse_conv_bn_eval(conv, bn)
    assert fused.weight.dtype == dtype and fused.bias.dtype == dtype
    s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    exact = conv.weight.double() * s.reshape(-1, 1, 1, 1)
    assert torch.equal(fused.weight, exact.to(dtype))  # correctly rounded


# --------------------------------------------------------------------------- linear


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("features", [6, 1])
def test_linear_then_bn(bias, affine, features):
    gen = torch.Generator().manual_seed(1)
    linear = nn.Linear(5, 6, bias=bias, dtype=torch.float64).eval()
    bn = randomize_bn(nn.BatchNorm1d(features, affine=affine, dtype=torch.float64), gen)
    x = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    fused = fuse_linear_bn_eval(linear, bn)
    with torch.no_grad():
        unfused = bn(linear(x)) if features == 6 else bn(linear(x).reshape(-1, 1)).reshape(7, 6)
        assert max_relative_error(fused(x), unfused) <= 1e-12
    assert fused.bias.shape == (6,)
    if affine:
        theirs = torch_fusion.fuse_linear_bn_eval(linear, bn)
        assert max_relative_error(fused.weight, theirs.weight) <= 1e-12
        # torch's bias has shape (1,) for a bias-less linear and a 1-feature BN
        assert max_relative_error(fused.bias, theirs.bias.expand(6)) <= 1e-12


def test_linear_weights_function_and_mismatch():
    w = torch.randn(4, 3, dtype=torch.float64)
    fw, fb = fuse_linear_bn_weights(
        w,
        None,
        torch.ones(4, dtype=torch.float64),
        torch.full((4,), 4.0, dtype=torch.float64),
        0.0,
        None,
        None,
    )
    assert torch.allclose(fw, w / 2) and torch.allclose(fb, torch.full((4,), -0.5).double())
    with pytest.raises(FusionError, match="out_features"):
        fuse_linear_bn_eval(nn.Linear(3, 4).eval(), nn.BatchNorm1d(5).eval())


def test_affine_false_linear_is_what_torchs_fuser_cannot_do():
    linear, bn = nn.Linear(3, 4).eval(), nn.BatchNorm1d(4, affine=False).eval()
    with pytest.raises(TypeError):
        torch_fusion.fuse_linear_bn_eval(linear, bn)
    fuse_linear_bn_eval(linear, bn)


# --------------------------------------------------------------------------- errors


def test_bn_in_training_mode_is_refused_with_a_reason():
    conv, bn = nn.Conv2d(3, 4, 3).eval(), nn.BatchNorm2d(4).train()
    with pytest.raises(ValueError, match="training mode.*batch's own statistics"):
        fuse_conv_bn_eval(conv, bn)
    with pytest.raises(AssertionError):  # also the type torch's fuser raises
        fuse_conv_bn_eval(conv, bn)
    with pytest.raises(ValueError, match="training mode"):
        fuse_linear_bn_eval(nn.Linear(3, 4).eval(), nn.BatchNorm1d(4).train())


def test_conv_in_training_mode_is_refused():
    with pytest.raises(ValueError, match="conv layer is in training mode"):
        fuse_conv_bn_eval(nn.Conv2d(3, 4, 3).train(), nn.BatchNorm2d(4).eval())


def test_bn_without_running_stats_is_refused_with_a_reason():
    conv = nn.Conv2d(3, 4, 3).eval()
    bn = nn.BatchNorm2d(4, track_running_stats=False).eval()
    assert bn.running_mean is None
    with pytest.raises(ValueError, match="no running statistics.*track_running_stats=False"):
        fuse_conv_bn_eval(conv, bn)
    with pytest.raises(FusionError, match="no running statistics"):
        fuse_conv_bn_weights(conv.weight, conv.bias, None, None, 1e-5, None, None)


def test_inputs_are_untouched_and_nothing_is_shared():
    conv, bn, _ = make_pair(2, False, 2, 1, 1, "zeros", True, True, torch.float64)
    before = [copy.deepcopy(m.state_dict()) for m in (conv, bn)]
    fused = fuse_conv_bn_eval(conv, bn)
    with torch.no_grad():
        fused.weight.mul_(0)
        fused.bias.mul_(0)
    for m, state in zip((conv, bn), before, strict=True):
        for key, value in m.state_dict().items():
            assert torch.equal(value, state[key]), key
    assert not conv.training and not bn.training and fused is not conv


def test_refimpl_batch_norm_folds_too():
    gen = torch.Generator().manual_seed(3)
    conv = nn.Conv2d(3, 4, 3, dtype=torch.float64).eval()
    bn = randomize_bn(rnn.BatchNorm2d(4, dtype=torch.float64), gen)
    x = torch.randn(2, 3, 6, 6, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        assert max_relative_error(fuse_conv_bn_eval(conv, bn)(x), bn(conv(x))) <= 1e-12


# --------------------------------------------------------------------------- fuse_model


class Block(nn.Module):
    """A residual block with an optional conv-BN downsample on the shortcut."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


class TwoUsers(nn.Module):
    """conv -> bn, but the conv's output is also added back: it must not be folded."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        z = self.conv(x)
        return self.bn(z) + z


class SmallResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = nn.Sequential(Block(8, 8, 1), Block(8, 16, 2))
        self.two_users = TwoUsers(16)
        self.pre_act = nn.BatchNorm2d(16)  # BN after an add: nothing to fold into
        self.frozen = nn.Sequential(nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16))
        self.no_stats = nn.Sequential(
            nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16, track_running_stats=False)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 10), nn.BatchNorm1d(10))

    def forward(self, x):
        x = self.layer1(self.stem(x))
        x = self.pre_act(self.two_users(x))
        x = self.no_stats(self.frozen(x))
        return self.head(x)


def small_resnet():
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    model = SmallResNet().double()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) and m.track_running_stats:
            randomize_bn(m, gen)
    model.eval()
    model.frozen[1].train()  # a BN left in training mode inside an eval model
    return model, torch.randn(3, 3, 8, 8, generator=gen, dtype=torch.float64)


def test_fuse_model_folds_what_it_can_and_says_why_not_for_the_rest():
    model, x = small_resnet()
    fused, report = fuse_model(model)
    assert isinstance(report, FusionReport)
    folded = {(e.layer, e.bn) for e in report.folded}
    assert folded == {
        ("stem.0", "stem.1"),
        ("layer1.0.conv1", "layer1.0.bn1"),
        ("layer1.0.conv2", "layer1.0.bn2"),
        ("layer1.1.conv1", "layer1.1.bn1"),
        ("layer1.1.conv2", "layer1.1.bn2"),
        ("layer1.1.downsample.0", "layer1.1.downsample.1"),
        ("head.1", "head.2"),
    }
    reasons = {e.bn: e.reason for e in report.not_folded}
    assert set(reasons) == {"two_users.bn", "pre_act", "frozen.1", "no_stats.1"}
    assert "other users" in reasons["two_users.bn"]
    assert "not preceded by a conv or linear" in reasons["pre_act"]
    assert "training mode" in reasons["frozen.1"]
    assert "no running statistics" in reasons["no_stats.1"]
    text = str(report)
    assert text.startswith("7 folded, 4 not folded")
    assert all(name in text for name in reasons)
    remaining = {
        n for n, m in fused.named_modules() if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d)
    }
    assert remaining == {"two_users.bn", "pre_act", "frozen.1", "no_stats.1"}
    # the train-mode BN updates its running stats on every call: compare on fresh copies
    reference = copy.deepcopy(model)
    with torch.no_grad():
        assert max_relative_error(fused(x), reference(x)) <= 1e-12


def test_fuse_model_leaves_the_input_model_untouched():
    model, x = small_resnet()
    state = copy.deepcopy(model.state_dict())
    modes = [m.training for m in model.modules()]
    fuse_model(model)
    assert [m.training for m in model.modules()] == modes
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert isinstance(model.stem[1], nn.BatchNorm2d)


def test_fuse_model_refuses_a_model_in_training_mode():
    with pytest.raises(ValueError, match="training mode.*model.eval"):
        fuse_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train())


def test_fuse_model_leaves_shared_layers_alone():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(self.conv(x)))

    fused, report = fuse_model(Shared().eval())
    assert not report.folded and "called 2 times" in report.entries[0].reason


def test_fuse_model_checks_the_pair_matches():
    net = nn.Sequential(nn.Conv1d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    _, report = fuse_model(net)
    assert "BatchNorm2d after a Conv1d" in report.entries[0].reason


def test_fuse_model_folds_transposed_and_1d_3d_pairs():
    gen = torch.Generator().manual_seed(7)
    net = nn.Sequential(
        nn.Conv3d(2, 4, 3, padding=1),
        nn.BatchNorm3d(4),
        nn.ReLU(),
        nn.ConvTranspose3d(4, 6, 2, stride=2, groups=2),
        nn.BatchNorm3d(6),
    ).double()
    for m in net:
        if isinstance(m, nn.BatchNorm3d):
            randomize_bn(m, gen)
    net.eval()
    fused, report = fuse_model(net)
    assert len(report.folded) == 2 and not report.not_folded
    x = torch.randn(1, 2, 4, 4, 4, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        assert max_relative_error(fused(x), net(x)) <= 1e-12


# --------------------------------------------------------------------------- which axis
# A fold scales the layer's output channel o by BN's scale for channel o. BN's channel is
# axis 1; a Linear's output features are its last axis, an unbatched conv's channels axis
# 0. fuse_model must fold only where the two axes provably coincide.


def trained_bn_after(layer, bn, x, steps=20):
    """Train-mode passes over shifted, scaled batches (stats far from 0 and 1), then eval."""
    model = nn.Sequential(layer, bn).double().train()
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(x.shape, generator=gen, dtype=torch.float64) * 3 + 1)
            if bn.affine:
                bn.weight.add_(0.1 * torch.randn(bn.num_features, generator=gen).double())
                bn.bias.add_(0.1 * torch.randn(bn.num_features, generator=gen).double())
    return model.eval()


def agrees(fused, model, x, tol=1e-12) -> bool:
    with torch.no_grad():
        return max_relative_error(fused(x), model(x)) <= tol


def test_linear_then_bn1d_on_sequences_is_refused_the_trap_is_real():
    # BatchNorm1d(L) after Linear(F, F) on (N, L, F) with L == F: the feature counts
    # match, but BN normalizes axis 1 (L) while the Linear's features are the last axis
    x = torch.randn(4, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = trained_bn_after(nn.Linear(6, 6), nn.BatchNorm1d(6), x)
    with torch.no_grad():  # the fold torch's and refimpl's pair functions would make
        wrong = fuse_linear_bn_eval(model[0], model[1])(x)
        assert max_relative_error(wrong, model(x)) > 1e-2
    fused, report = fuse_model(model)
    assert not report.folded and "cannot prove" in report.entries[0].reason
    assert "pass example_input" in report.entries[0].reason
    fused_x, report_x = fuse_model(model, example_input=x)
    assert not report_x.folded
    assert "shape (4, 6, 6)" in report_x.entries[0].reason
    assert "wrong axis" in report_x.entries[0].reason
    assert agrees(fused, model, x) and agrees(fused_x, model, x)


def test_linear_then_bn1d_on_matrices_folds_when_shapes_prove_it():
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = trained_bn_after(nn.Linear(5, 6), nn.BatchNorm1d(6), x)
    fused, report = fuse_model(model, example_input=x)
    assert [(e.layer, e.bn) for e in report.folded] == [("0", "1")]
    assert agrees(fused, model, x)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in fused.modules())


class FlattenHead(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how, self.flatten = how, nn.Flatten()
        self.linear, self.bn = nn.Linear(12, 6), nn.BatchNorm1d(6)

    def forward(self, x):
        if self.how == "module":
            x = self.flatten(x)
        elif self.how == "function":
            x = torch.flatten(torch.relu(x), 1)
        elif self.how == "view":
            x = x.view(x.size(0), -1)
        else:  # "unknown": a reshape whose rank the types do not show
            x = x.reshape(x.shape[:-3] + (12,))
        return self.bn(self.linear(x))


@pytest.mark.parametrize("how", ["module", "function", "view", "unknown"])
def test_a_flatten_before_the_linear_proves_the_fold_without_an_example(how):
    gen = torch.Generator().manual_seed(2)
    model = FlattenHead(how).double()
    randomize_bn(model.bn, gen)
    model.eval()
    x = torch.randn(5, 3, 2, 2, generator=gen, dtype=torch.float64)
    fused, report = fuse_model(model)
    assert agrees(fused, model, x)
    if how == "unknown":
        assert not report.folded and "cannot prove" in report.entries[0].reason
        fused, report = fuse_model(model, example_input=x)  # the shapes prove it
        assert agrees(fused, model, x)
    assert [(e.layer, e.bn) for e in report.folded] == [("linear", "bn")]


def test_one_feature_bn_after_a_linear_folds_on_any_rank():
    # one scale and shift for every element: which axis it sits on does not matter
    x = torch.randn(7, 1, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    model = trained_bn_after(nn.Linear(5, 6), nn.BatchNorm1d(1), x)
    fused, report = fuse_model(model)
    assert len(report.folded) == 1 and agrees(fused, model, x)


def test_unbatched_conv1d_then_bn1d_is_refused():
    # Conv1d on unbatched (C, L) input gives (C_out, L): channels on axis 0; BatchNorm1d
    # accepts that 2-D tensor as (N, C) and normalizes axis 1 (L)
    gen = torch.Generator().manual_seed(4)
    unbatched = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    batched = torch.randn(3, 4, 4, generator=gen, dtype=torch.float64)
    model = trained_bn_after(nn.Conv1d(4, 4, 1), nn.BatchNorm1d(4), batched)
    with torch.no_grad():
        wrong = fuse_conv_bn_eval(model[0], model[1])(unbatched)
        assert max_relative_error(wrong, model(unbatched)) > 1e-2
    fused, report = fuse_model(model)
    assert not report.folded and "cannot prove that 0 sees batched input" in str(report)
    assert agrees(fused, model, unbatched) and agrees(fused, model, batched)
    fused, report = fuse_model(model, example_input=unbatched)
    assert not report.folded and "(shape (4, 4)) is unbatched" in str(report)
    fused, report = fuse_model(model, example_input=batched)
    assert len(report.folded) == 1 and agrees(fused, model, batched)


@pytest.mark.parametrize("dims", [2, 3])
def test_conv_then_bn2d_or_3d_folds_without_an_example(dims):
    # BatchNorm2d/3d accept only (N, C, *spatial): the conv's input was batched
    gen = torch.Generator().manual_seed(5)
    model = nn.Sequential(CONV[dims](3, 4, 3), BN[dims](4)).double()
    randomize_bn(model[1], gen)
    model.eval()
    fused, report = fuse_model(model)
    x = torch.randn(2, 3, *[SIZE[dims]] * dims, generator=gen, dtype=torch.float64)
    assert len(report.folded) == 1 and agrees(fused, model, x)


# every (model, input) pair, with and without the example: the fused model agrees
ZOO = [
    (lambda: nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6)), (4, 6, 6)),
    (lambda: nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6)), (4, 6)),
    (
        lambda: nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3), nn.BatchNorm1d(3)),
        (2, 3, 3),
    ),
    (lambda: nn.Sequential(nn.Conv1d(4, 4, 3, padding=1), nn.BatchNorm1d(4)), (4, 4)),
    (lambda: nn.Sequential(nn.Conv1d(4, 4, 3, padding=1), nn.BatchNorm1d(4)), (2, 4, 4)),
    (lambda: nn.Sequential(nn.Conv2d(2, 3, 1), rnn.BatchNorm2d(3)), (2, 2, 3, 3)),
    (lambda: nn.Sequential(nn.Linear(5, 5), rnn.BatchNorm1d(5)), (3, 5, 5)),
    (lambda: nn.Sequential(nn.Linear(5, 4), rnn.BatchNorm1d(4)), (3, 5)),
]


@pytest.mark.parametrize("k", range(len(ZOO)))
@pytest.mark.parametrize("with_example", [False, True])
def test_whatever_it_folds_agrees(k, with_example):
    build, shape = ZOO[k]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
    model = build().double()
    for m in model:
        if hasattr(m, "running_mean"):
            randomize_bn(m, torch.Generator().manual_seed(100 + k))
    model.eval()
    fused, report = fuse_model(model, example_input=x if with_example else None)
    assert len(report) == 1
    assert agrees(fused, model, x)
    assert all(e.reason for e in report.not_folded)


# --------------------------------------------------------------------------- what is reported


class Functional(nn.Module):
    """conv, then four functional batch norms (torch's two, refimpl's in two spellings)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("mean", torch.randn(4, generator=torch.Generator().manual_seed(0)))
        self.register_buffer("var", torch.rand(4, generator=torch.Generator().manual_seed(1)) + 0.5)

    def forward(self, x):
        import refimpl.functional as rF
        from refimpl.functional import batch_norm

        y = torch.nn.functional.batch_norm(self.conv(x), self.mean, self.var)
        y = torch.batch_norm(y, None, None, self.mean, self.var, False, 0.1, 1e-5, False)
        y = rF.batch_norm(y, self.mean, self.var)
        return batch_norm(y, self.mean, self.var)


def test_functional_batch_norms_are_listed_with_a_reason():
    model = Functional().double().eval()
    fused, report = fuse_model(model)
    assert len(report) == 4 and not report.folded
    names = [e.reason.split(" on ")[0] for e in report]
    assert names == [
        "a functional call of torch.nn.functional.batch_norm",
        "a functional call of torch.batch_norm",
        "a functional call of refimpl.functional.batch_norm",
        "a functional call of refimpl.functional.batch_norm",
    ]
    assert report.entries[0].layer == "conv"
    assert all("folds batch norm modules only" in e.reason for e in report)
    assert str(report).startswith("0 folded, 4 not folded")
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert agrees(fused, model, x)


def test_refimpl_batch_norm_modules_are_traced_as_one_call_and_fold():
    # refimpl's modules are not torch.nn's, so torch.fx would trace into them (and fail)
    gen = torch.Generator().manual_seed(6)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), rnn.BatchNorm2d(4), nn.ReLU(), rnn.SyncBatchNorm(4))
    model = model.double()
    for m in (model[1], model[3]):
        randomize_bn(m, gen)
    model.eval()
    fused, report = fuse_model(model)
    assert [(e.layer, e.bn) for e in report.folded] == [("0", "1")]
    assert "not preceded by a conv" in report.not_folded[0].reason
    x = torch.randn(2, 3, 6, 6, generator=gen, dtype=torch.float64)
    assert agrees(fused, model, x)


def test_sync_batch_norm_after_a_conv_needs_shapes():
    # SyncBatchNorm accepts any rank >= 2, so the conv could have seen unbatched input
    gen = torch.Generator().manual_seed(7)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), rnn.SyncBatchNorm(4)).double()
    randomize_bn(model[1], gen)
    model.eval()
    x = torch.randn(2, 3, 6, 6, generator=gen, dtype=torch.float64)
    assert "cannot prove that 0 sees batched input" in str(fuse_model(model)[1])
    fused, report = fuse_model(model, example_input=x)
    assert len(report.folded) == 1 and agrees(fused, model, x)


class OtherNorms(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 1)
        self.masked = rnn.MaskedBatchNorm1d(4)
        self.unused = nn.BatchNorm1d(4)

    def forward(self, x):
        return self.masked(self.conv(x))


def test_other_batch_norms_and_unused_ones_are_reported():
    fused, report = fuse_model(OtherNorms().eval())
    reasons = {e.bn: e.reason for e in report}
    assert not report.folded and set(reasons) == {"masked", "unused"}
    assert "a MaskedBatchNorm1d, not a batch norm fuse_model can fold" in reasons["masked"]
    assert reasons["unused"] == "never called by the traced forward"


def test_example_input_the_model_cannot_run_is_an_error():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    with pytest.raises(FusionError, match="does not run on example_input"):
        fuse_model(model, example_input=torch.randn(2, 5, 6, 6))


def test_the_example_run_leaves_the_fused_model_alone():
    # the shape pass runs the model once: a BN left in training mode must not count it
    model, x = small_resnet()
    fused, report = fuse_model(model, example_input=x)
    assert len(report.folded) == 7 and len(report.not_folded) == 4
    buffers = dict(fused.named_buffers())
    for name, value in model.named_buffers():
        if name in buffers:
            assert torch.equal(buffers[name], value), name
    reference = copy.deepcopy(model)
    with torch.no_grad():
        assert max_relative_error(fused(x), reference(x)) <= 1e-12


def test_tuple_example_input_is_the_forwards_arguments():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear, self.bn = nn.Linear(3, 4), nn.BatchNorm1d(4)

        def forward(self, a, b):
            return self.bn(self.linear(a + b))

    model = Two().eval()
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    _, report = fuse_model(model, example_input=(a, b))
    assert len(report.folded) == 1


def test_refimpl_norm_layers_are_traced_as_one_call():
    gen = torch.Generator().manual_seed(8)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), rnn.GroupNorm(2, 4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
    ).double()
    randomize_bn(model[3], gen)
    model.eval()
    fused, report = fuse_model(model)
    assert [(e.layer, e.bn) for e in report] == [("2", "3")] and report.folded
    assert isinstance(fused.get_submodule("1"), rnn.GroupNorm)
    x = torch.randn(2, 3, 6, 6, generator=gen, dtype=torch.float64)
    assert agrees(fused, model, x)


def test_a_batch_norm_subclass_with_its_own_forward_is_refused():
    class Shifted(nn.BatchNorm2d):
        def forward(self, x):
            return super().forward(x) + 1

    class Renamed(nn.BatchNorm2d):  # same forward: folds
        pass

    for bn_class, folds in ((Shifted, False), (Renamed, True)):
        model = nn.Sequential(nn.Conv2d(3, 4, 3), bn_class(4)).double().eval()
        fused, report = fuse_model(model)
        assert bool(report.folded) == folds
        if not folds:
            assert "Shifted overrides forward" in report.entries[0].reason
        x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(9)).double()
        assert agrees(fused, model, x)


def test_ghost_batch_norm_folds_in_eval():
    from refimpl.ghost_norm import GhostBatchNorm

    gen = torch.Generator().manual_seed(10)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), GhostBatchNorm(4, ghost_size=2)).double()
    randomize_bn(model[1], gen)
    model.eval()
    fused, report = fuse_model(model, example_input=torch.randn(2, 3, 5, 5).double())
    assert len(report.folded) == 1
    x = torch.randn(2, 3, 5, 5, generator=gen, dtype=torch.float64)
    assert agrees(fused, model, x)
