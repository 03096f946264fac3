"""refimpl.nn.SyncBatchNorm across real processes (gloo on 127.0.0.1) equals one process's
batch norm on the concatenated batch: outputs, gradients, running statistics.

Each world size (1, 2, 4) is one launch running every case (spawning processes costs
seconds); the reference is torch.nn.BatchNorm*d on the whole batch in this process.
Tolerances are conftest's: 1e-12 relative in float64, the derived float32 bound
(C32 * eps32 * condition number) in float32, here at a channel mean of 1e4.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from refimpl.distributed import SyncBatchNorm, launch, local_moments, merge_moments
from refimpl.nn import BatchNorm1d
from tests import syncbn_workers
from tests.conftest import REL64, Stats, assert_close, running_atols, to_numpy

ROOT = Path(__file__).resolve().parent.parent

SIZES = {  # rank slice sizes of each world size: equal; unequal with an empty slice; tiny
    "equal": {1: [8], 2: [4, 4], 4: [2, 2, 2, 2]},
    "unequal": {1: [7], 2: [2, 5], 4: [1, 0, 2, 4]},
    "tiny": {1: [4], 2: [2, 2], 4: [1, 1, 1, 1]},
}


def _cases(world_size):
    gen = torch.Generator().manual_seed(world_size)

    def steps(shape, dtype, offset=0.0, scale=1.0, count=2):
        return [
            (
                (offset + scale * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype),
                torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype),
            )
            for _ in range(count)
        ]

    def params(channels, dtype):
        w = (1 + 0.5 * torch.randn(channels, generator=gen, dtype=torch.float64)).to(dtype)
        return w, torch.randn(channels, generator=gen, dtype=torch.float64).to(dtype)

    f64, f32 = torch.float64, torch.float32
    cases = []

    def add(name, sizes, shape_tail, dtype, **kw):
        n = sum(SIZES[sizes][world_size])
        weight, bias = params(shape_tail[0], dtype)
        cases.append(
            dict(
                name=name,
                sizes=SIZES[sizes][world_size],
                steps=steps((n, *shape_tail), dtype, kw.pop("offset", 2.0), kw.pop("scale", 3.0)),
                weight=weight,
                bias=bias,
                **kw,
            )
        )

    add("f64 2d equal", "equal", (3, 4, 4), f64)
    add("f64 1d unequal+empty, momentum None", "unequal", (3, 5), f64, momentum=None)
    add("f64 1d unequal+empty, all_reduce protocol", "unequal", (3, 5), f64, protocol="all_reduce")
    add("f32 mean 1e4 unequal+empty", "unequal", (4, 6), f32, offset=1e4, scale=1.0)
    add("f64 vectors, 1 per rank, no affine", "tiny", (5,), f64, affine=False)
    add("f64 no running stats", "unequal", (3, 3), f64, track=False)
    return cases


def _reference(case):
    """torch.nn.BatchNorm on the whole batch, in this process."""
    x0 = case["steps"][0][0]
    cls = torch.nn.BatchNorm2d if x0.dim() == 4 else torch.nn.BatchNorm1d
    ref = cls(
        x0.shape[1],
        momentum=case.get("momentum", 0.1),
        affine=case.get("affine", True),
        track_running_stats=case.get("track", True),
        dtype=x0.dtype,
    )
    if ref.weight is not None:
        with torch.no_grad():
            ref.weight.copy_(case["weight"])
            ref.bias.copy_(case["bias"])
    outs = []
    for x_full, g_full in case["steps"]:
        x = x_full.clone().requires_grad_()
        y = ref(x)
        y.backward(g_full)
        stats = Stats(x_full, x_full.shape, (0, *range(2, x_full.dim())), (1,))
        outs.append(
            {
                "output": y.detach(),
                "input": x.grad,
                "weight": None if ref.weight is None else ref.weight.grad.clone(),
                "bias": None if ref.bias is None else ref.bias.grad.clone(),
                "stats": stats,
            }
        )
        ref.zero_grad()
    return ref, outs


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_sync_batch_norm_across_processes(world_size):
    """One launch per world size (starting processes dominates the cost), three checks.
    One test function, so that pytest-xdist cannot launch the same world twice."""
    cases = _cases(world_size)
    world = world_size, cases, launch(syncbn_workers.parity_worker, world_size, cases)
    check_matches_batch_norm_on_the_whole_batch(world)
    check_collectives_per_step(world)
    check_channel_count_mismatch_is_a_clear_error_on_every_rank(world)


def check_matches_batch_norm_on_the_whole_batch(world):
    world_size, cases, results = world
    for case in cases:
        name = f"world {world_size}, {case['name']}"
        ranks = [r[case["name"]] for r in results]
        ref, ref_steps = _reference(case)
        dtype = case["steps"][0][0].dtype
        for step, ((x_full, g_full), want) in enumerate(zip(case["steps"], ref_steps, strict=True)):
            got = [r["steps"][step] for r in ranks]
            stats, weight = want["stats"], case["weight"] if ref.weight is not None else None
            y = torch.cat([g["output"] for g in got])
            assert_close(
                f"{name}: output",
                y,
                want["output"],
                stats.forward_atol(want["output"], dtype, weight, ref.bias),
            )
            atol_input, atol_weight, atol_bias = stats.backward_atols(g_full, dtype, weight)
            grad_input = torch.cat([g["input"] for g in got])
            assert_close(f"{name}: grad input", grad_input, want["input"], atol_input)
            if ref.weight is None:
                continue
            # Local shares add up to the global gradient (what DDP's all-reduce forms) ...
            share_w = sum(to_numpy(g["weight"]) for g in got)
            share_b = sum(to_numpy(g["bias"]) for g in got)
            assert_close(f"{name}: sum of weight grads", share_w, want["weight"], atol_weight)
            assert_close(f"{name}: sum of bias grads", share_b, want["bias"], atol_bias)
            # ... and each is the sum over the rank's own slice, with global statistics.
            start = 0
            for rank, g in enumerate(got):
                part = slice(start, start + case["sizes"][rank])
                start = part.stop
                axes = (0, *range(2, x_full.dim()))
                g_np = to_numpy(g_full)[part]
                own_w = (g_np * stats.x_hat[part]).sum(axis=axes)
                assert_close(f"{name}: rank {rank} weight share", g["weight"], own_w, atol_weight)
                assert_close(
                    f"{name}: rank {rank} bias share", g["bias"], g_np.sum(axis=axes), atol_bias
                )
        if ref.running_mean is None:
            assert "running_mean" not in ranks[0]
            continue
        x_last = case["steps"][-1][0]
        atol_mean, atol_var = running_atols(x_last, dtype, ref.running_mean, ref.running_var)
        for rank, r in enumerate(ranks):
            assert_close(
                f"{name}: rank {rank} running_mean", r["running_mean"], ref.running_mean, atol_mean
            )
            assert_close(
                f"{name}: rank {rank} running_var", r["running_var"], ref.running_var, atol_var
            )
            assert r["num_batches_tracked"] == int(ref.num_batches_tracked)
            if dtype == torch.float32:  # far tighter than the bound: torch's own error scale
                assert_close(
                    f"{name}: rank {rank} running_var, 1e-5 relative",
                    r["running_var"],
                    ref.running_var,
                    1e-5 * to_numpy(ref.running_var),
                )
            # Every rank holds the very same statistics: bit for bit.
            assert torch.equal(r["running_mean"], ranks[0]["running_mean"])
            assert torch.equal(r["running_var"], ranks[0]["running_var"])
            assert r["eval_log"] == [], "eval mode must not communicate"
        # Eval on its own (the running statistics were checked above): torch with ours.
        with torch.no_grad():
            ref.running_mean.copy_(ranks[0]["running_mean"])
            ref.running_var.copy_(ranks[0]["running_var"])
        ref.eval()
        want_eval = ref(x_last).detach()
        stats = Stats.running(x_last, ref.running_mean, ref.running_var, ref.eps)
        weight = case["weight"] if ref.weight is not None else None
        assert_close(
            f"{name}: eval output",
            torch.cat([r["eval_output"] for r in ranks]),
            want_eval,
            stats.forward_atol(want_eval, dtype, weight, ref.bias),
        )


def check_collectives_per_step(world):
    """Counted from the tensors sent: forward one all_gather of 2C + 1 values, backward one
    all_reduce of 2C, plus a 3-value channel handshake on the first step only."""
    world_size, cases, results = world
    for case in cases:
        channels = case["steps"][0][0].shape[1]
        item = 8  # float64 statistics: float32 inputs on the CPU accumulate in float64
        grad_item = case["steps"][0][0].element_size()  # the backward sums: input dtype
        for r in results:
            first, second = r[case["name"]]["log"]
            if world_size == 1:
                assert first == second == [], "a group of one must not communicate"
                continue
            handshake = {"op": "all_gather", "sent_bytes": 3 * 8, "received_bytes": world_size * 24}
            if case.get("protocol") == "all_reduce":
                stats_ops = [
                    {
                        "op": "all_reduce",
                        "sent_bytes": (channels + 1) * item,
                        "received_bytes": (channels + 1) * item,
                    },
                    {
                        "op": "all_reduce",
                        "sent_bytes": channels * item,
                        "received_bytes": channels * item,
                    },
                ]
            else:
                stats_ops = [
                    {
                        "op": "all_gather",
                        "sent_bytes": (2 * channels + 1) * item,
                        "received_bytes": world_size * (2 * channels + 1) * item,
                    }
                ]
            backward = {
                "op": "all_reduce",
                "sent_bytes": 2 * channels * grad_item,
                "received_bytes": 2 * channels * grad_item,
            }
            assert first == [handshake, *stats_ops, backward]
            assert second == [*stats_ops, backward]


def test_naive_average_of_rank_statistics_is_wrong_for_unequal_slices():
    """Equal-weight averaging of per-rank means/variances is off by sum_r (1/W - n_r/N) m_r
    in the mean (and misses the between-rank spread in the variance); Chan is exact."""
    rng = np.random.default_rng(0)
    slices = [np.array([6.0]), rng.standard_normal(7)]  # one rank holds 1 sample, one 7
    whole = np.concatenate(slices)
    means = np.array([s.mean() for s in slices])
    variances = np.array([s.var() for s in slices])
    counts = np.array([s.size for s in slices])
    naive_mean, naive_var = means.mean(), variances.mean()
    predicted = np.sum((1 / len(slices) - counts / counts.sum()) * means)
    assert naive_mean - whole.mean() == pytest.approx(predicted, rel=1e-12)
    assert abs(naive_mean - whole.mean()) > 2.0  # off by more than two standard deviations
    assert abs(naive_var - whole.var()) / whole.var() > 0.5
    rows = [local_moments(torch.as_tensor(s.reshape(-1, 1))) for s in slices]
    total, mean, m2 = merge_moments(rows)
    assert total == whole.size
    assert abs(mean.item() - whole.mean()) <= REL64 * np.abs(whole).max()
    assert abs(m2.item() / total - whole.var()) <= REL64 * whole.var() * 10


@pytest.mark.parametrize(
    "sizes", [[5], [1, 4], [0, 3, 0, 2], [2, 0], [3, 3, 3], [1, 1, 1, 1, 1, 1, 1]]
)
def test_merged_moments_equal_two_pass_over_the_whole(sizes):
    rng = np.random.default_rng(len(sizes))
    whole = 1e3 + rng.standard_normal((sum(sizes), 2, 3))
    rows, start = [], 0
    for n in sizes:
        rows.append(local_moments(torch.as_tensor(whole[start : start + n])))
        start += n
    total, mean, m2 = merge_moments(rows)
    want_mean = whole.mean(axis=(0, 2))
    want_m2 = ((whole - want_mean[None, :, None]) ** 2).sum(axis=(0, 2))
    assert total == whole.shape[0] * 3
    assert_close("mean", mean, want_mean, REL64 * 1e3)
    assert_close("m2", m2, want_m2, REL64 * want_m2.max() * 10)


def check_channel_count_mismatch_is_a_clear_error_on_every_rank(world):
    """Rank 0 feeds 3 channels, the others 4 (with and without per-channel state): every
    rank raises the same ValueError, nobody hangs or aborts."""
    world_size, _, results = world
    if world_size == 1:
        return  # needs two ranks or more
    expected = f"ranks disagree on the input: channels {[3] + [4] * (world_size - 1)}"
    for r in results:
        assert len(r["mismatch errors"]) == 2
        for message in r["mismatch errors"]:
            assert expected in message, message


def test_without_a_process_group_it_is_plain_batch_norm():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    ours, plain = SyncBatchNorm(3, dtype=torch.float64), BatchNorm1d(3, dtype=torch.float64)
    assert_close("output", ours(x), plain(x), 0.0)
    assert torch.equal(ours.running_var, plain.running_var)
    with pytest.raises(ValueError, match=r"expected at least 2D input \(got 1D input\)"):
        ours(torch.randn(3))
    with pytest.raises(ValueError, match="number of input channels should be non-zero"):
        SyncBatchNorm(0)(torch.randn(2, 0))
    with pytest.raises(RuntimeError, match="running_mean should contain 4 elements not 3"):
        ours(torch.randn(6, 4, dtype=torch.float64))


def test_constructor_matches_torch():
    ours = SyncBatchNorm(4, 1e-3, None, False, False, None, dtype=torch.float64)
    theirs = torch.nn.SyncBatchNorm(4, 1e-3, None, False, False, None, dtype=torch.float64)
    assert repr(ours) == repr(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    full = SyncBatchNorm(4)
    assert full.state_dict().keys() == torch.nn.SyncBatchNorm(4).state_dict().keys()
    assert full.process_group is None


def test_convert_sync_batchnorm_keeps_state():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3),
        torch.nn.BatchNorm2d(4, momentum=None),
        torch.nn.Sequential(torch.nn.Flatten(), BatchNorm1d(64, affine=False)),
        torch.nn.BatchNorm1d(64, track_running_stats=False),
    )
    for _ in range(3):  # non-trivial running statistics and counters
        model(torch.randn(5, 2, 6, 6))
    model[1].weight.requires_grad_(False)
    model[2].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    originals = [model[1].weight, model[1].running_mean, model[3].bias]
    model.eval()
    x = torch.randn(3, 2, 6, 6)
    want = model(x)
    model.train()
    model[2].eval()

    converted = SyncBatchNorm.convert_sync_batchnorm(model, process_group=None)
    assert converted is model
    kinds = [type(m).__name__ for m in converted.modules()]
    assert kinds.count("SyncBatchNorm") == 3 and "BatchNorm2d" not in kinds
    modes = [m.training for m in converted.modules()]
    assert modes == [True, True, True, False, False, False, True]
    after = converted.state_dict()
    assert after.keys() == before.keys()
    for key in before:
        assert torch.equal(after[key], before[key]), key
    assert converted[1].weight is originals[0] and not converted[1].weight.requires_grad
    assert converted[1].running_mean is originals[1] and converted[3].bias is originals[2]
    assert converted[1].momentum is None and converted[2][1].affine is False
    assert converted[3].running_mean is None
    converted.eval()
    assert_close("eval output after conversion", converted(x), want, 1e-5)  # float32
    single = SyncBatchNorm.convert_sync_batchnorm(torch.nn.BatchNorm3d(2).eval())
    assert isinstance(single, SyncBatchNorm) and not single.training


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="torch.nn.SyncBatchNorm needs a GPU (its kernels are CUDA-only); no CUDA device here",
)
def test_matches_torch_sync_batch_norm_on_gpu():
    # One GPU, one process: torch's module falls back to its batch norm, ours to refimpl's;
    # the multi-rank comparison runs the same way through scripts/ on a multi-GPU machine.
    torch.manual_seed(0)
    x = torch.randn(8, 3, 5, 5, device="cuda", dtype=torch.float64, requires_grad=True)
    theirs = torch.nn.SyncBatchNorm(3).to("cuda", torch.float64)
    ours = SyncBatchNorm(3).to("cuda", torch.float64)
    y_theirs, y_ours = theirs(x), ours(x)
    assert_close("output", y_ours.cpu(), y_theirs.cpu(), 1e-12 * 10)
    assert_close("running_var", ours.running_var.cpu(), theirs.running_var.cpu(), 1e-12)


def test_training_script_runs_under_torchrun(tmp_path):
    """scripts/train_ddp_syncbn.py: 2 CPU processes, gloo, a few steps, via torchrun."""
    from refimpl.distributed import free_port

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "1", "--nproc-per-node", "2",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
        str(ROOT / "scripts" / "train_ddp_syncbn.py"),
        "--steps", "6", "--batch-size", "8",
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "world size 2, backend gloo" in done.stdout
    assert "running statistics identical on every rank: True" in done.stdout
