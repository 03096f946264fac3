"""A small seeded training loop, evaluation helpers, and the book's paired comparison.

One seed fixes the minibatch order (a private generator, so the global RNG that
initialises models is untouched); initialise the model under ``torch.manual_seed``
before calling :func:`train`. The comparison is the one standard every experiment in the
book uses: paired per-seed differences, their mean against a t cutoff with n - 1
degrees of freedom.
"""

from __future__ import annotations

import torch
from torch.nn import Module
from torch.nn.modules.batchnorm import _BatchNorm as _TorchBatchNorm

# The paired comparison lives in refimpl.evidence (with the seed convention and the
# ledger binding); it is re-exported here, where earlier chapters import it from.
from refimpl.evidence import T_CUTOFF_95, PairedComparison, paired_comparison
from refimpl.nn import _BatchNorm as _RefBatchNorm

__all__ = [
    "minibatches",
    "train",
    "accuracy",
    "evaluate",
    "T_CUTOFF_95",
    "PairedComparison",
    "paired_comparison",
]

_BATCH_NORMS = (_TorchBatchNorm, _RefBatchNorm)



def minibatches(n: int, batch_size: int, generator: torch.Generator, drop_last: bool = False):
    """Index tensors of one shuffled pass over ``n`` examples.

    >>> [len(i) for i in minibatches(10, 4, torch.Generator().manual_seed(0))]
    [4, 4, 2]
    >>> [len(i) for i in minibatches(10, 4, torch.Generator().manual_seed(0), drop_last=True)]
    [4, 4]
    """
    order = torch.randperm(n, generator=generator)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def train(
    model: Module,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    drop_last: bool = False,
    params=None,
    bn_eval: bool = False,
    on_epoch=None,
) -> list[float]:
    """Train ``model`` with minibatch SGD and cross-entropy; return the mean loss per epoch.

    ``seed`` fixes the minibatch order; ``params`` (default: all) are the ones the
    optimizer updates; ``bn_eval=True`` keeps every batch norm layer in eval mode
    (running statistics used and left unchanged; the usual way to fine-tune with frozen
    BN statistics); ``on_epoch(epoch, model)`` is called after each epoch. The model is
    left in train mode (with ``bn_eval``, its BN layers in eval mode).

    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Linear(2, 2)
    >>> X, y = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    >>> losses = train(model, X, y, epochs=20, batch_size=2, lr=1.0)
    >>> losses[-1] < losses[0]
    True
    """
    generator = torch.Generator().manual_seed(seed)
    trainable = list(model.parameters()) if params is None else list(params)
    optimizer = torch.optim.SGD(trainable, lr=lr, momentum=momentum, weight_decay=weight_decay)
    losses = []
    for epoch in range(epochs):
        model.train()  # every epoch: on_epoch may have switched modes
        if bn_eval:
            for module in model.modules():
                if isinstance(module, _BATCH_NORMS):
                    module.eval()
        total, count = 0.0, 0
        for idx in minibatches(len(X), batch_size, generator, drop_last):
            loss = torch.nn.functional.cross_entropy(model(X[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            count += len(idx)
        losses.append(total / max(count, 1))
        if on_epoch is not None:
            on_epoch(epoch, model)
    return losses


@torch.no_grad()
def accuracy(model: Module, X: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of correct predictions, in batches of ``batch_size``, in the model's
    *current* mode (in train mode BN uses, and updates, batch statistics).

    >>> model = torch.nn.Linear(2, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.eye(2))
    >>> accuracy(model, torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    0.5
    """
    correct = 0
    for start in range(0, len(X), batch_size):
        logits = model(X[start : start + batch_size])
        correct += int((logits.argmax(dim=1) == y[start : start + batch_size]).sum())
    return correct / len(X)


def evaluate(model: Module, X: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Accuracy in eval mode (running statistics); the model's mode is restored after.

    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2)).train()
    >>> _ = evaluate(model, torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))
    >>> model.training
    True
    """
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        return accuracy(model, X, y, batch_size)
    finally:
        for module, training in modes.items():
            module.training = training
