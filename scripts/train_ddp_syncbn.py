"""Train a small CNN with DistributedDataParallel and synchronized batch norm.

    torchrun --nproc-per-node 2 scripts/train_ddp_syncbn.py --steps 200

One process per device. With GPUs it uses nccl and one GPU per process; without, gloo on
CPU. The same command runs on both. Data: scikit-learn's 8x8 digits (shipped with the
package, no download). Every rank gets its own slice of each global batch
(DistributedSampler); SyncBatchNorm makes each BN layer normalize with the statistics of
the global batch, so the per-rank batch can be tiny (try --batch-size 2).

--sync-bn refimpl (default) uses refimpl.nn.SyncBatchNorm; --sync-bn torch uses
torch.nn.SyncBatchNorm (GPU only); --sync-bn none keeps per-device batch norm.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

try:
    import refimpl
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import refimpl


def digits(seed: int):
    """(train, test) TensorDatasets of the 1,797 8x8 digits, split 1,500 / 297."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    return TensorDataset(x[:1500], y[:1500]), TensorDataset(x[1500:], y[1500:])


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 2 * 2, 10),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8, help="per process")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sync-bn", choices=["refimpl", "torch", "none"], default="refimpl")
    args = parser.parse_args()

    use_cuda = torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend)  # rank, world size and address come from torchrun
    rank, world_size = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        torch.set_num_threads(1)
        device = torch.device("cpu")
    log = print if rank == 0 else (lambda *a, **k: None)
    log(f"world size {world_size}, backend {backend}, sync BN: {args.sync_bn}")

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = small_cnn()
    if args.sync_bn == "refimpl":
        model = refimpl.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif args.sync_bn == "torch":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    ddp = DistributedDataParallel(model, device_ids=[local_rank] if use_cuda else None)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=0.9)

    train, test = digits(args.seed)
    sampler = DistributedSampler(train, num_replicas=world_size, rank=rank, seed=args.seed)
    loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler, drop_last=True)

    step, epoch = 0, 0
    while step < args.steps:
        sampler.set_epoch(epoch)
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = nn.functional.cross_entropy(ddp(x), y)
            optimizer.zero_grad()
            loss.backward()  # DDP all-reduces the gradients (weight/bias shares included)
            optimizer.step()
            step += 1
            if step % 50 == 0 or step == args.steps:
                mean_loss = loss.detach().clone()
                dist.all_reduce(mean_loss)
                log(f"step {step:4d}  loss {mean_loss.item() / world_size:.3f}")
            if step == args.steps:
                break
        epoch += 1

    # Running statistics: every rank must hold the same (they are global-batch statistics).
    buffers = torch.cat([b.flatten().double() for n, b in model.named_buffers() if "running" in n])
    gathered = [torch.empty_like(buffers) for _ in range(world_size)]
    dist.all_gather(gathered, buffers)
    same = all(torch.equal(g, gathered[0]) for g in gathered)
    log(f"running statistics identical on every rank: {same}")

    model.eval()  # eval mode: running statistics, no communication
    with torch.no_grad():
        x, y = test.tensors
        accuracy = (model(x.to(device)).argmax(1).cpu() == y).float().mean().item()
    log(f"test accuracy {accuracy:.3f} after {args.steps} steps")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
