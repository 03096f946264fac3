"""A small transformer for the book's chapter on normalization in transformers.

Everything a reader needs to replay the chapter's experiments in a few seconds on a CPU:

- :func:`make_norm`: the norm factory (refimpl's ``LayerNorm``, ``RMSNorm``, ``DynamicTanh``,
  or none);
- :class:`SelfAttention`: multi-head self-attention written out (torch only for the
  matmuls), with optional QK-norm on each head's queries and keys, and the largest attention
  logit reported on request;
- :class:`TransformerBlock`: one block, post-LN (the original transformer's
  ``x = norm(x + f(x))``) or pre-LN (``x = x + f(norm(x))``), laid out and named like
  ``torch.nn.TransformerEncoderLayer`` (``self_attn``, ``linear1``, ``linear2``,
  ``norm1``, ``norm2``; torch's ``norm_first=True`` is ``norm_position="pre"``);
- :class:`TinyTransformer`: embeddings, blocks, a final norm for pre-LN, a linear head;
- :func:`layer_gradient_norms`: the gradient-norm probe (per block, at the current weights);
- :func:`sort_batch`: a synthetic task with nothing to download (sort a sequence of tokens);
- :func:`train` (one model, ``torch.optim.AdamW``, optional linear warm-up) and
  :func:`train_many` (many models with the same architecture trained as one batch with
  ``torch.func.vmap``, each with its own seed, learning rate and warm-up; same updates).

torch has ``nn.TransformerEncoderLayer`` but no QK-norm, no DyT and no probe: the block here
mirrors its names and its computation (a test checks both placements against it), the rest
is the book's own.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Embedding, Identity, Linear, Module, ModuleList, init

from refimpl.nn.dyt import DynamicTanh
from refimpl.nn.layernorm import LayerNorm, RMSNorm

__all__ = [
    "make_norm",
    "SelfAttention",
    "TransformerBlock",
    "TinyTransformer",
    "layer_gradient_norms",
    "sort_batch",
    "sequence_loss",
    "train",
    "train_many",
    "ManyRuns",
]

NORM_NAMES = ("layernorm", "rmsnorm", "dyt")
NORM_POSITIONS = ("pre", "post")


def make_norm(norm, features: int) -> Module:
    """A norm over the last dim of size ``features``: ``"layernorm"`` (refimpl's
    ``LayerNorm``, eps 1e-5), ``"rmsnorm"`` (``RMSNorm``, torch's default eps), ``"dyt"``
    (``DynamicTanh``, alpha 0.5), ``None`` (identity), or a callable ``features -> Module``
    (e.g. ``lambda d: DynamicTanh(d, alpha_init=2.0)``).

    >>> make_norm("rmsnorm", 8), make_norm(None, 8)
    (RMSNorm((8,), eps=None, elementwise_affine=True), Identity())
    >>> make_norm("batchnorm", 8)
    Traceback (most recent call last):
    ...
    ValueError: unknown norm 'batchnorm': use 'layernorm', 'rmsnorm', 'dyt', None or a factory
    """
    if norm is None:
        return Identity()
    if isinstance(norm, str):
        if norm == "layernorm":
            return LayerNorm(features)
        if norm == "rmsnorm":
            return RMSNorm(features)
        if norm == "dyt":
            return DynamicTanh(features)
    elif callable(norm):
        module = norm(features)
        if not isinstance(module, Module):
            raise TypeError(f"the norm factory must return a torch Module, got {type(module)}")
        return module
    choices = ", ".join(repr(n) for n in NORM_NAMES[:-1]) + f", {NORM_NAMES[-1]!r}"
    raise ValueError(f"unknown norm {norm!r}: use {choices}, None or a factory")


def _xavier(linear: Linear) -> Linear:
    # Xavier-uniform weights, zero biases: the initialisation Xiong et al.'s analysis assumes
    init.xavier_uniform_(linear.weight)
    if linear.bias is not None:
        init.zeros_(linear.bias)
    return linear


class SelfAttention(Module):
    """Multi-head self-attention over ``(N, T, D)``, written out, with optional QK-norm.

    ``in_proj`` maps each token to its query, key and value (``3 * d_model`` outputs, in
    that order, as torch's ``in_proj_weight``); each of ``n_heads`` heads has
    ``head_dim = d_model // n_heads`` features. With ``qk_norm`` (``"layernorm"``,
    ``"rmsnorm"`` or a factory, see :func:`make_norm`), ``q_norm`` and ``k_norm`` normalize
    every head's query and key over ``head_dim`` before the logits
    ``q . k / sqrt(head_dim)`` (Dehghani et al. 2023; Wortsman et al. 2023). torch's
    ``nn.MultiheadAttention`` has no QK-norm; without it this computes what it computes
    (no dropout). ``forward(x, return_max_logit=True)`` also returns the largest
    ``|logit|`` (detached), over heads and positions (masked ones excluded).

    >>> import torch
    >>> attn = SelfAttention(8, n_heads=2, qk_norm="layernorm")
    >>> y, top = attn(torch.randn(3, 5, 8), return_max_logit=True)
    >>> tuple(y.shape), bool(top <= 2.0)  # LN'd q, k of 4 features: |logit| <= sqrt(4)
    ((3, 5, 8), True)
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        qk_norm=None,
        causal: bool = False,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if d_model < 1 or n_heads < 1:
            raise ValueError(f"d_model and n_heads must be positive, got {d_model}, {n_heads}")
        if d_model % n_heads:
            raise ValueError("embed_dim must be divisible by num_heads")  # torch's message
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.causal = causal
        self.in_proj = _xavier(Linear(d_model, 3 * d_model, bias=bias))
        self.out_proj = _xavier(Linear(d_model, d_model, bias=bias))
        self.qk_norm = qk_norm
        if qk_norm is None:
            self.q_norm = self.k_norm = None
        else:
            self.q_norm = make_norm(qk_norm, self.head_dim)
            self.k_norm = make_norm(qk_norm, self.head_dim)

    def logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The attention logits ``(N, heads, T, T)`` (causal positions masked to -inf) and
        the values ``(N, heads, T, head_dim)``.

        >>> import torch
        >>> logits, v = SelfAttention(8, 2, causal=True).logits(torch.zeros(1, 3, 8))
        >>> tuple(logits.shape), tuple(v.shape), logits[0, 0, 0].tolist()
        ((1, 2, 3, 3), (1, 2, 3, 4), [0.0, -inf, -inf])
        """
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise RuntimeError(
                f"expected input of shape (N, T, {self.d_model}), got {list(x.shape)}"
            )
        n, t, _ = x.shape
        q, k, v = self.in_proj(x).split(self.d_model, dim=-1)
        q, k, v = (a.reshape(n, t, self.n_heads, self.head_dim).transpose(1, 2) for a in (q, k, v))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        logits = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        if self.causal:
            future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
            logits = logits.masked_fill(future, float("-inf"))
        return logits, v

    def forward(self, x: Tensor, return_max_logit: bool = False):
        logits, v = self.logits(x)
        out = torch.softmax(logits, dim=-1) @ v
        out = self.out_proj(out.transpose(1, 2).reshape(x.shape))
        if not return_max_logit:
            return out
        finite = torch.where(torch.isinf(logits), torch.zeros_like(logits), logits)
        return out, finite.detach().abs().amax()

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, causal={self.causal}"


class TransformerBlock(Module):
    """One transformer block: self-attention and a ReLU feed-forward net, each residual.

    ``norm_position="post"`` (the original transformer): ``x = norm1(x + attn(x))``, then
    ``x = norm2(x + ffn(x))``. ``"pre"``: ``x = x + attn(norm1(x))``, then
    ``x = x + ffn(norm2(x))``. Names and computation follow
    ``torch.nn.TransformerEncoderLayer`` with ``dropout=0``, ``batch_first=True`` and
    ``norm_first = (norm_position == "pre")``; ``norm`` is any :func:`make_norm` choice
    (torch's layer always uses LayerNorm), ``qk_norm`` goes to :class:`SelfAttention`.

    >>> import torch
    >>> block = TransformerBlock(16, n_heads=2, norm="rmsnorm", norm_position="pre")
    >>> block(torch.randn(4, 6, 16)).shape
    torch.Size([4, 6, 16])
    >>> TransformerBlock(16, 2, norm_position="middle")
    Traceback (most recent call last):
    ...
    ValueError: norm_position must be 'pre' or 'post', got 'middle'
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int | None = None,
        norm="layernorm",
        norm_position: str = "pre",
        qk_norm=None,
        causal: bool = False,
    ) -> None:
        super().__init__()
        if norm_position not in NORM_POSITIONS:
            raise ValueError(f"norm_position must be 'pre' or 'post', got {norm_position!r}")
        d_ff = 4 * d_model if d_ff is None else d_ff
        self.norm_position = norm_position
        self.self_attn = SelfAttention(d_model, n_heads, qk_norm=qk_norm, causal=causal)
        self.linear1 = _xavier(Linear(d_model, d_ff))
        self.linear2 = _xavier(Linear(d_ff, d_model))
        self.norm1 = make_norm(norm, d_model)
        self.norm2 = make_norm(norm, d_model)

    def ffn(self, x: Tensor) -> Tensor:
        """The feed-forward sub-layer ``linear2(relu(linear1(x)))``.

        >>> import torch
        >>> TransformerBlock(8, 2).ffn(torch.zeros(1, 8)).abs().max().item()  # zero biases
        0.0
        """
        return self.linear2(F.relu(self.linear1(x)))

    def forward(self, x: Tensor, return_max_logit: bool = False):
        if self.norm_position == "pre":
            a, top = self.self_attn(self.norm1(x), return_max_logit=True)
            x = x + a
            x = x + self.ffn(self.norm2(x))
        else:
            a, top = self.self_attn(x, return_max_logit=True)
            x = self.norm1(x + a)
            x = self.norm2(x + self.ffn(x))
        return (x, top) if return_max_logit else x


class TinyTransformer(Module):
    """Token and position embeddings, ``n_layers`` :class:`TransformerBlock` s, a final
    norm (pre-LN only, by default), and a linear head to ``vocab_size`` logits per token.

    ``forward(tokens)`` maps ``(N, T)`` integer tokens (``T <= max_len``) to
    ``(N, T, vocab_size)`` logits; with ``return_max_logit=True`` it also returns the
    largest attention logit over all blocks. ``final_norm=None`` means: a final norm for
    pre-LN (the last block's output is otherwise un-normalized), none for post-LN (its
    last block ends with a norm). Not in torch (``nn.Transformer`` is an encoder-decoder
    with LayerNorm only).

    >>> import torch
    >>> model = TinyTransformer(10, d_model=16, n_heads=2, n_layers=2, max_len=8)
    >>> logits, top = model(torch.zeros(3, 8, dtype=torch.long), return_max_logit=True)
    >>> tuple(logits.shape), type(model.final_norm).__name__
    ((3, 8, 10), 'LayerNorm')
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 32,
        n_heads: int = 2,
        n_layers: int = 2,
        d_ff: int | None = None,
        max_len: int = 16,
        norm="layernorm",
        norm_position: str = "pre",
        qk_norm=None,
        causal: bool = False,
        final_norm: bool | None = None,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.max_len = max_len
        self.token_embedding = Embedding(vocab_size, d_model)
        self.position_embedding = Embedding(max_len, d_model)
        self.blocks = ModuleList(
            TransformerBlock(d_model, n_heads, d_ff, norm, norm_position, qk_norm, causal)
            for _ in range(n_layers)
        )
        if final_norm is None:
            final_norm = norm_position == "pre" and norm is not None
        self.final_norm = make_norm(norm, d_model) if final_norm else Identity()
        self.head = _xavier(Linear(d_model, vocab_size))

    def forward(self, tokens: Tensor, return_max_logit: bool = False):
        if tokens.ndim != 2:
            raise RuntimeError(f"expected tokens of shape (N, T), got {list(tokens.shape)}")
        if tokens.shape[1] > self.max_len:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_len {self.max_len}")
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        tops = []
        for block in self.blocks:
            x, top = block(x, return_max_logit=True)
            tops.append(top)
        logits = self.head(self.final_norm(x))
        return (logits, torch.stack(tops).amax()) if return_max_logit else logits


def sequence_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over every position: logits ``(N, T, V)``, targets ``(N, T)``.

    >>> import torch, math
    >>> round(sequence_loss(torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long)).item()
    ...       - math.log(5), 6)  # uniform logits: log V
    0.0
    """
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def layer_gradient_norms(
    model: Module, tokens: Tensor, targets: Tensor, parameter: str | None = None
) -> Tensor:
    """The gradient-norm probe: for each block of ``model.blocks``, the Frobenius norm of
    the gradient of :func:`sequence_loss` with respect to that block's parameters (all of
    them together, or the one named ``parameter``, e.g. ``"linear2.weight"``, the second
    feed-forward weight that Xiong et al. 2020 follow). One backward pass at the current
    weights (at initialisation, before any step); ``.grad`` is left untouched.

    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> model = TinyTransformer(6, d_model=16, n_layers=3, max_len=4)
    >>> x = torch.randint(6, (8, 4))
    >>> layer_gradient_norms(model, x, x, "linear2.weight").shape
    torch.Size([3])
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise TypeError("the model has no .blocks (a TinyTransformer or the like)")
    groups = []
    for i, block in enumerate(blocks):
        named = dict(block.named_parameters())
        if parameter is None:
            groups.append(list(named.values()))
        elif parameter in named:
            groups.append([named[parameter]])
        else:
            raise ValueError(f"block {i} has no parameter {parameter!r}; it has {sorted(named)}")
    flat = [p for group in groups for p in group]
    grads = torch.autograd.grad(sequence_loss(model(tokens), targets), flat)
    norms, k = [], 0
    for group in groups:
        squares = sum((g.double() ** 2).sum() for g in grads[k : k + len(group)])
        norms.append(torch.sqrt(squares))
        k += len(group)
    return torch.stack(norms).to(flat[0].dtype)


def sort_batch(n: int, length: int, vocab_size: int, generator: torch.Generator):
    """The sorting task: ``n`` sequences of ``length`` random tokens in
    ``0 .. vocab_size - 1`` and, as targets, each sequence sorted (ascending). A model sees
    the whole input at once (no causal mask) and predicts every output position.

    >>> x, y = sort_batch(2, 5, 10, torch.Generator().manual_seed(0))
    >>> x[0].tolist(), y[0].tolist()
    ([4, 9, 3, 0, 3], [0, 3, 3, 4, 9])
    """
    if n < 1 or length < 1 or vocab_size < 2:
        raise ValueError(
            f"need n, length >= 1 and vocab_size >= 2, got {n}, {length}, {vocab_size}"
        )
    tokens = torch.randint(vocab_size, (n, length), generator=generator)
    return tokens, tokens.sort(dim=-1).values


def _warmup_factor(step: int, warmup_steps: int) -> float:
    """The linear warm-up: ``step / warmup_steps`` for the first steps (1-based), then 1."""
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)


def train(
    model: Module,
    make_batch: Callable[[torch.Generator], tuple[Tensor, Tensor]],
    *,
    steps: int,
    lr: float,
    seed: int,
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> list[float]:
    """Train ``model`` with ``torch.optim.AdamW`` on :func:`sequence_loss`; return the loss
    of every step (``nan`` from the step a loss is no longer finite: training stops there).

    ``make_batch(generator)`` draws one batch ``(tokens, targets)``; ``seed`` seeds that
    generator (the batch order), not the model (seed it before building). The rate rises
    linearly over ``warmup_steps`` (step ``k`` uses ``lr * min(1, k / warmup_steps)``),
    then stays at ``lr``. ``weight_decay=0`` is Adam.

    >>> _ = torch.manual_seed(0)
    >>> model = TinyTransformer(8, d_model=16, n_layers=1, max_len=4)
    >>> batch = lambda g: sort_batch(32, 4, 8, g)
    >>> losses = train(model, batch, steps=60, lr=3e-3, seed=0, warmup_steps=10)
    >>> losses[-1] < 0.7 * losses[0]
    True
    """
    if steps < 1 or lr <= 0:
        raise ValueError(f"need steps >= 1 and lr > 0, got {steps}, {lr}")
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay
    )
    # LambdaLR counts from 0 at the first step: step k (1-based) gets factor(k)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda done: _warmup_factor(done + 1, warmup_steps)
    )
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        tokens, targets = make_batch(generator)
        loss = sequence_loss(model(tokens), targets)
        if not torch.isfinite(loss):
            losses.extend([math.nan] * (steps - len(losses)))
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return losses


@dataclass
class ManyRuns:
    """What :func:`train_many` returns, one column per model.

    ``train_loss`` and ``max_logit``: ``(steps, models)``, the training loss and the
    largest attention logit of every step (``nan`` once a model's loss is not finite);
    ``eval_loss``, ``eval_accuracy``: ``(models,)`` on the evaluation batch after
    training (``nan`` loss for a diverged model); ``models``: the trained models.

    >>> r = ManyRuns(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(2), torch.ones(2), [])
    >>> r.final_train_loss(last=2).tolist()
    [0.0, 0.0]
    """

    train_loss: Tensor
    max_logit: Tensor
    eval_loss: Tensor
    eval_accuracy: Tensor
    models: list

    def final_train_loss(self, last: int = 20) -> Tensor:
        """The mean training loss of the last ``last`` steps, per model."""
        return self.train_loss[-last:].mean(dim=0)


def train_many(
    build: Callable[[], Module],
    seeds: Sequence[int],
    lrs: Sequence[float],
    make_batch: Callable[[torch.Generator], tuple[Tensor, Tensor]],
    *,
    steps: int,
    data_seed: int,
    warmup_steps: int | Sequence[int] = 0,
    eval_batch: tuple[Tensor, Tensor] | None = None,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> ManyRuns:
    """Train one model per ``(seeds[i], lrs[i], warmup_steps[i])`` as a single batch of
    models; each update is the one :func:`train` makes for that model alone.

    ``build()`` makes one model, called under ``torch.manual_seed(seeds[i])``; all models
    must share one architecture. Every model sees the same batches (``make_batch`` with a
    generator seeded by ``data_seed``), so runs that differ only in rate or warm-up are
    paired. The forward pass runs all models at once (``torch.func.vmap`` over
    ``functional_call``; the loss is the sum of the models' losses, so no model's gradient
    depends on another's), and AdamW is written out per model, with each model's own rate
    (the same arithmetic as ``torch.optim.AdamW``). A model whose loss stops being finite
    is frozen (its losses are ``nan`` from then on); the others go on.

    >>> build = lambda: TinyTransformer(8, d_model=16, n_layers=1, max_len=4)
    >>> runs = train_many(build, [0, 0], [3e-3, 1e-3], lambda g: sort_batch(32, 4, 8, g),
    ...                   steps=30, data_seed=0, warmup_steps=[10, 0])
    >>> tuple(runs.train_loss.shape), len(runs.models)
    ((30, 2), 2)
    """
    from torch.func import functional_call, stack_module_state, vmap

    m = len(seeds)
    if m < 1 or len(lrs) != m:
        raise ValueError(f"need as many rates as seeds (>= 1), got {len(lrs)} and {m}")
    warmups = [warmup_steps] * m if isinstance(warmup_steps, int) else list(warmup_steps)
    if len(warmups) != m:
        raise ValueError(f"need one warm-up per model ({m}), got {len(warmups)}")
    if steps < 1 or min(lrs) <= 0:
        raise ValueError(f"need steps >= 1 and every lr > 0, got {steps}, {list(lrs)}")
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(build())
    params, buffers = stack_module_state(models)
    names = list(params)
    base = copy.deepcopy(models[0]).to("meta")

    def one(p, b, tokens, targets):
        logits, top = functional_call(base, (p, b), (tokens,), {"return_max_logit": True})
        return sequence_loss(logits, targets), top

    run_all = vmap(one, in_dims=(0, 0, None, None))
    lr = torch.tensor([float(r) for r in lrs], dtype=torch.float64)
    state = {n: (torch.zeros_like(params[n]), torch.zeros_like(params[n])) for n in names}
    alive = torch.ones(m, dtype=torch.bool)
    losses = torch.full((steps, m), math.nan)
    tops = torch.full((steps, m), math.nan)
    generator = torch.Generator().manual_seed(data_seed)
    b1, b2 = betas
    for k in range(1, steps + 1):
        tokens, targets = make_batch(generator)
        loss, top = run_all(params, buffers, tokens, targets)
        alive &= torch.isfinite(loss.detach())
        losses[k - 1] = torch.where(alive, loss.detach(), math.nan).float()
        tops[k - 1] = torch.where(alive, top.detach(), math.nan).float()
        if not alive.any():
            break
        total = torch.where(alive, loss, torch.zeros_like(loss)).sum()
        grads = torch.autograd.grad(total, [params[n] for n in names])
        factor = torch.tensor([_warmup_factor(k, w) for w in warmups], dtype=torch.float64)
        rate = torch.where(alive, lr * factor, torch.zeros_like(lr))
        with torch.no_grad():
            for n, g in zip(names, grads, strict=True):
                p, (avg, avg_sq) = params[n], state[n]
                g = torch.where(_per_model(alive, g), g, torch.zeros_like(g))
                step_rate = _per_model(rate, p).to(p.dtype)
                if weight_decay:
                    p.mul_(1 - step_rate * weight_decay)
                avg.mul_(b1).add_(g, alpha=1 - b1)
                avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (avg_sq.sqrt() / math.sqrt(1 - b2**k)).add_(eps)
                p.sub_(step_rate / (1 - b1**k) * avg / denom)
    trained = []
    for i, model in enumerate(models):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(params[n][i])
        trained.append(model)
    eval_loss = torch.full((m,), math.nan)
    eval_accuracy = torch.full((m,), math.nan)
    if eval_batch is not None:
        tokens, targets = eval_batch

        def scores(p, b):
            logits = functional_call(base, (p, b), (tokens,))
            accuracy = (logits.argmax(-1) == targets).float().mean()
            return sequence_loss(logits, targets), accuracy

        with torch.no_grad():
            e_loss, e_acc = vmap(scores)(params, buffers)
        eval_loss = torch.where(alive & torch.isfinite(e_loss), e_loss, math.nan).float()
        eval_accuracy = torch.where(alive, e_acc, math.nan).float()
    return ManyRuns(losses, tops, eval_loss, eval_accuracy, trained)


def _per_model(values: Tensor, like: Tensor) -> Tensor:
    """``values`` (one per model) shaped to broadcast over a stacked ``like``."""
    return values.reshape(-1, *([1] * (like.ndim - 1)))
