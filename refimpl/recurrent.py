"""Normalization for sequences: masked batch norm, per-time-step batch norm, BN/LN LSTM cells.

A batch of variable-length sequences is an (N, C, L) array plus an (N, L) mask that is
True at real positions and False at padding. Batch norm over such a batch means one of:

- **shared statistics** (:class:`MaskedBatchNorm1d`): one mean and variance per channel
  over every real (sample, time) position; exactly ``torch.nn.BatchNorm1d`` applied to the
  (M, C) matrix of the M real positions, so padding cannot leak into the statistics;
- **per-step statistics** (:class:`PerStepBatchNorm1d`, Cooijmans et al. 2016): one mean
  and variance per channel *and time step*, over the sequences that reach that step, with
  an explicit policy for steps past the longest training sequence.

The recurrent cells (:class:`BNLSTMCell`, :class:`LNLSTMCell`) normalize the two gate
projections and the cell state, as in Cooijmans et al. 2016 and Ba et al. 2016.
Everything is built on :func:`refimpl.core.moments` (masked) and :func:`refimpl.core.normalize`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Module, Parameter, init

from refimpl import core
from refimpl.functional import _TorchSize
from refimpl.nn.base import _NormBase, _register_affine, _register_running_stats

__all__ = [
    "SequenceShapeError",
    "MaskDtypeError",
    "MaskedBatchNorm1d",
    "PerStepBatchNorm1d",
    "BNLSTMCell",
    "LNLSTMCell",
    "lstm_sequence",
]


class SequenceShapeError(ValueError, RuntimeError):
    """Input and mask do not fit together (a ValueError; also a RuntimeError, which is
    what torch raises for a channel mismatch in batch norm).

    Example:
        >>> bn = MaskedBatchNorm1d(3)
        >>> try:
        ...     bn(torch.zeros(2, 3, 5), torch.ones(2, 4, dtype=torch.bool))
        ... except SequenceShapeError as error:
        ...     print(isinstance(error, ValueError), isinstance(error, RuntimeError))
        True True
    """


class MaskDtypeError(TypeError, ValueError):
    """The mask is not a bool tensor (a TypeError; also a ValueError).

    Example:
        >>> try:
        ...     MaskedBatchNorm1d(3)(torch.zeros(2, 3, 5), torch.ones(2, 5))
        ... except MaskDtypeError as error:
        ...     print(isinstance(error, TypeError))
        True
    """


def _check_sequence(input: Tensor, mask: Tensor | None, num_features: int) -> None:
    """(N, C, L) input with C == num_features; mask None or (N, L) bool."""
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if input.dim() != 3:
        raise ValueError(f"expected 3D input (N, C, L) (got {input.dim()}D input)")
    if input.size(1) != num_features:
        raise SequenceShapeError(
            f"expected input with {num_features} channels at dim 1 (num_features), "
            f"got input of size {list(input.shape)}"
        )
    if mask is None:
        return
    if not isinstance(mask, Tensor):
        raise MaskDtypeError(f"mask must be a torch.Tensor of bool, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise MaskDtypeError(f"mask must have dtype torch.bool, got {mask.dtype}")
    expected = (input.size(0), input.size(2))
    if tuple(mask.shape) != expected:
        raise SequenceShapeError(
            f"mask must have shape (N, L) = {list(expected)} for input of size "
            f"{list(input.shape)}, got mask of size {list(mask.shape)}"
        )


def _verify_real_count(count: int, channels: int) -> None:
    """torch's check, on the (M, C) matrix of real positions that the statistics see."""
    if count == 1:
        raise ValueError(
            "Expected more than 1 value per channel when training, got input size "
            f"{_TorchSize((1, channels))}"
        )


def _update_running_(running: Tensor, batch_stat: Tensor, factor: float) -> None:
    # torch's order of terms: momentum * batch + (1 - momentum) * running.
    core.assign_(running, factor * batch_stat + (1 - factor) * running)


def _running_factor(module: _NormBase) -> float:
    """How much this batch counts in the running averages; counts the batch (torch's
    _BatchNorm.forward: num_batches_tracked grows before any check of the input)."""
    factor = 0.0 if module.momentum is None else module.momentum
    if module.training and module.track_running_stats:
        module.num_batches_tracked.add_(1)
        if module.momentum is None:
            factor = 1.0 / float(module.num_batches_tracked)
    return factor


# --------------------------------------------------------------------------- shared


class MaskedBatchNorm1d(_NormBase):
    """Batch norm over the real positions of a padded (N, C, L) batch.

    ``forward(input, mask)``: ``mask`` is (N, L) bool, True at real positions. Training
    statistics (and the running statistics) come from the M real positions only, so the
    output there equals ``torch.nn.BatchNorm1d`` on the (M, C) matrix of real positions,
    buffers included (``momentum=None`` is a cumulative average, the running variance is
    unbiased with M). Eval uses the running statistics. Padded outputs are 0 and pass no
    gradient back. ``mask=None`` means every position is real.

    >>> import torch
    >>> bn = MaskedBatchNorm1d(2)
    >>> x = torch.randn(3, 2, 5)
    >>> mask = torch.arange(5) < torch.tensor([[5], [3], [1]])   # lengths 5, 3, 1
    >>> y = bn(x, mask)
    >>> y.shape, bool((y[2, :, 1:] == 0).all())
    (torch.Size([3, 2, 5]), True)
    >>> real = x.permute(0, 2, 1)[mask]                         # the (M, C) matrix, M = 9
    >>> ref = torch.nn.BatchNorm1d(2)(real)
    >>> torch.allclose(y.permute(0, 2, 1)[mask], ref, atol=1e-6)
    True
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)

    def forward(self, input: Tensor, mask: Tensor | None = None) -> Tensor:
        _check_sequence(input, mask, self.num_features)
        if mask is None:
            mask = torch.ones(input.size(0), input.size(2), dtype=torch.bool, device=input.device)
        factor = _running_factor(self)
        real = mask.unsqueeze(1)  # (N, 1, L), broadcasts over channels
        # Padding may hold anything (even nan): zero it so it cannot reach the statistics
        # or, through 0 * nan, the gradients.
        x = torch.where(real, input, torch.zeros((), dtype=input.dtype, device=input.device))
        use_batch_stats = self.training or self.running_mean is None
        stat_shape = (1, self.num_features, 1)
        if use_batch_stats:
            count = int(mask.sum())
            _verify_real_count(count, self.num_features)
            if self.eps <= 0.0:
                raise ValueError(
                    f"batch_norm eps must be positive during training, but got {self.eps}"
                )
            if count == 0:  # nothing real: nothing to normalize, nothing to learn from
                return x * 0
            mean, var = core.moments(x, (0, 2), mask=real)
            if self.training and self.track_running_stats:
                unbiased = var * (count / (count - 1))
                _update_running_(self.running_mean, mean.reshape(-1), factor)
                _update_running_(self.running_var, unbiased.reshape(-1), factor)
        else:
            mean = self.running_mean.reshape(stat_shape)
            var = self.running_var.reshape(stat_shape)
        y = core.normalize(x, mean, var, self.eps, self.weight, self.bias, (1,))
        return torch.where(real, y, torch.zeros((), dtype=y.dtype, device=y.device))


# --------------------------------------------------------------------------- per step

BEYOND_MAX_POLICIES = ("reuse_last", "error")


class PerStepBatchNorm1d(Module):
    """Batch norm with separate statistics for each time step (Cooijmans et al. 2016).

    Step t of an (N, C, T) batch is normalized with the mean and variance of channel c
    over the sequences that reach step t (``mask[:, t]``); running statistics are kept per
    step in ``running_mean`` / ``running_var`` of shape (max_steps, C). ``weight`` and
    ``bias`` (C,) are shared by all steps. Steps ``t >= max_steps`` follow ``beyond_max``:

    - ``"reuse_last"``: they use slot ``max_steps - 1`` (in training their batch statistics
      update it; in eval its running statistics are used), the paper's "use T_max's
      statistics" fix. ``max_steps=1`` is one batch norm reused at every step.
    - ``"error"``: raise ``IndexError`` (no statistics exist for that step).

    A step with exactly one real value per channel raises torch's ``ValueError`` in
    training; a step with none gives zeros and leaves its running statistics alone.

    >>> import torch
    >>> bn = PerStepBatchNorm1d(2, max_steps=4)
    >>> x = torch.randn(8, 2, 4)
    >>> y = bn(x)
    >>> ref = torch.nn.BatchNorm1d(2)(x[:, :, 3])       # step 3 alone
    >>> torch.allclose(y[:, :, 3], ref, atol=1e-6)
    True
    >>> _ = bn.eval()
    >>> bn(torch.randn(8, 2, 6)).shape                  # steps 4, 5 reuse step 3's statistics
    torch.Size([8, 2, 6])
    """

    def __init__(
        self,
        num_features: int,
        max_steps: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        beyond_max: str = "reuse_last",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if beyond_max not in BEYOND_MAX_POLICIES:
            raise ValueError(f"beyond_max must be one of {BEYOND_MAX_POLICIES}, got {beyond_max!r}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}")
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.max_steps = max_steps
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.beyond_max = beyond_max
        _register_affine(self, num_features, affine, True, factory)
        # Per step: a step is "tracked" only in batches that reach it, so one count each.
        stats_shape = (max_steps, num_features)
        _register_running_stats(self, stats_shape, (max_steps,), track_running_stats, factory)
        self.reset_parameters()

    # Batch norm's resets work unchanged on per-step buffers.
    reset_running_stats = _NormBase.reset_running_stats
    reset_parameters = _NormBase.reset_parameters

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, max_steps={self.max_steps}, eps={self.eps}, "
            f"momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}, beyond_max={self.beyond_max!r}"
        )

    def slot(self, t: int) -> int:
        """Which statistics slot step ``t`` uses, by the ``beyond_max`` policy."""
        if t < 0:
            raise IndexError(f"time step must be non-negative, got {t}")
        if t < self.max_steps:
            return t
        if self.beyond_max == "error":
            raise IndexError(
                f"time step {t} has no statistics: this PerStepBatchNorm1d keeps {self.max_steps} "
                "steps (max_steps); use beyond_max='reuse_last' to reuse the last step's"
            )
        return self.max_steps - 1

    def step(self, x: Tensor, t: int, mask: Tensor | None = None) -> Tensor:
        """Normalize one time step: ``x`` (N, C), ``mask`` (N,) bool or None (all real)."""
        if x.dim() != 2 or x.size(1) != self.num_features:
            raise SequenceShapeError(
                f"expected a step of size (N, {self.num_features}), got {list(x.shape)}"
            )
        if mask is not None:
            if mask.dtype != torch.bool:
                raise MaskDtypeError(f"mask must have dtype torch.bool, got {mask.dtype}")
            if tuple(mask.shape) != (x.size(0),):
                raise SequenceShapeError(
                    f"a step's mask must have shape ({x.size(0)},), got {list(mask.shape)}"
                )
        s = self.slot(t)
        real = None if mask is None else mask.unsqueeze(1)
        if real is not None:  # padding may hold anything: keep it out of the statistics
            x = torch.where(real, x, torch.zeros((), dtype=x.dtype, device=x.device))
        use_batch_stats = self.training or self.running_mean is None
        if use_batch_stats:
            count = x.size(0) if mask is None else int(mask.sum())
            if count == 0:
                return x * 0
            _verify_real_count(count, self.num_features)
            mean, var = core.moments(x, (0,), mask=real)
            if self.training and self.track_running_stats:
                self._track_(s, mean, var, count)
        else:
            mean = self.running_mean[s].reshape(1, -1)
            var = self.running_var[s].reshape(1, -1)
        y = core.normalize(x, mean, var, self.eps, self.weight, self.bias, (1,))
        if real is None:
            return y
        return torch.where(real, y, torch.zeros((), dtype=y.dtype, device=y.device))

    @torch.no_grad()
    def _track_(self, s: int, mean: Tensor, var: Tensor, count: int) -> None:
        """Fold one step's batch statistics into slot ``s``'s running averages."""
        self.num_batches_tracked[s] += 1
        factor = self.momentum
        if factor is None:  # cumulative average over the batches that reached this slot
            factor = 1.0 / float(self.num_batches_tracked[s])
        unbiased = var * (count / (count - 1))
        _update_running_(self.running_mean[s], mean.reshape(-1), factor)
        _update_running_(self.running_var[s], unbiased.reshape(-1), factor)

    def forward(self, input: Tensor, mask: Tensor | None = None) -> Tensor:
        """Normalize an (N, C, T) batch step by step; ``mask`` (N, T) bool or None."""
        _check_sequence(input, mask, self.num_features)
        steps = [
            self.step(input[:, :, t], t, None if mask is None else mask[:, t])
            for t in range(input.size(2))
        ]
        if not steps:
            return input * 0
        return torch.stack(steps, dim=2)


# --------------------------------------------------------------------------- cells


def _layer_norm_last(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """Layer norm over the last dim (one statistic per sample), on the shared core."""
    mean, var = core.moments(x, (x.dim() - 1,))
    return core.normalize(x, mean, var, eps, weight, bias, (x.dim() - 1,))


def _add_lstm_weights(cell: Module, input_size: int, hidden_size: int) -> None:
    """The plain LSTM parameters both normalized cells have: W_x, W_h and the gate bias."""
    cell.input_size = input_size
    cell.hidden_size = hidden_size
    cell.weight_ih = Parameter(torch.empty(4 * hidden_size, input_size))
    cell.weight_hh = Parameter(torch.empty(4 * hidden_size, hidden_size))
    cell.bias = Parameter(torch.empty(4 * hidden_size))


def _reset_lstm_weights(cell: Module) -> None:
    """The LSTM weights both normalized cells start from: uniform input weights, an
    orthogonal recurrent matrix (per gate block is the paper's; the whole is fine here),
    zero gate bias except the forget gate's 1."""
    bound = cell.hidden_size**-0.5
    init.uniform_(cell.weight_ih, -bound, bound)
    init.orthogonal_(cell.weight_hh)
    with torch.no_grad():
        cell.bias.zero_()
        cell.bias[cell.hidden_size : 2 * cell.hidden_size] = 1.0


def _lstm_update(gates: Tensor, c: Tensor, normalize_cell) -> tuple[Tensor, Tensor]:
    """(h', c') from the summed gate pre-activations (i, f, g, o): the LSTM update, with
    the cell state normalized by ``normalize_cell`` before the output tanh."""
    i, f, g, o = gates.chunk(4, dim=1)
    c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(normalize_cell(c_next)), c_next


class BNLSTMCell(Module):
    """LSTM cell with recurrent batch normalization (Cooijmans et al. 2016).

    Gates (i, f, g, o) = BN_h(W_h h) + BN_x(W_x x) + b, each BN with its own per-step
    statistics and a scale ``gamma_init`` (0.1 in the paper) and no shift; then
    c' = sigmoid(f) c + sigmoid(i) tanh(g) and h' = sigmoid(o) tanh(BN_c(c')), where BN_c
    has a scale and a shift. ``forward(x, state, t, mask=None)`` is one step ``t`` (the
    step index picks the statistics). ``max_steps=1`` with ``beyond_max="reuse_last"``
    gives one set of statistics reused at every step.

    >>> import torch
    >>> cell = BNLSTMCell(3, 4, max_steps=5)
    >>> h = c = torch.zeros(6, 4)
    >>> for t in range(5):
    ...     h, c = cell(torch.randn(6, 3), (h, c), t)
    >>> h.shape
    torch.Size([6, 4])
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        max_steps: int,
        gamma_init: float = 0.1,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        beyond_max: str = "reuse_last",
    ) -> None:
        super().__init__()
        _add_lstm_weights(self, input_size, hidden_size)
        self.gamma_init = gamma_init
        options = {"eps": eps, "momentum": momentum, "beyond_max": beyond_max}
        self.bn_ih = PerStepBatchNorm1d(4 * hidden_size, max_steps, **options)
        self.bn_hh = PerStepBatchNorm1d(4 * hidden_size, max_steps, **options)
        self.bn_c = PerStepBatchNorm1d(hidden_size, max_steps, **options)
        for bn in (self.bn_ih, self.bn_hh):
            bn.bias.requires_grad_(False)  # the gate bias b already shifts: no beta here
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset_lstm_weights(self)
        for bn in (self.bn_ih, self.bn_hh, self.bn_c):
            bn.reset_parameters()
            init.constant_(bn.weight, self.gamma_init)  # the paper uses 0.1 for every BN

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor], t: int, mask: Tensor | None = None):
        h, c = state
        gates = (
            self.bn_hh.step(h @ self.weight_hh.T, t, mask)
            + self.bn_ih.step(x @ self.weight_ih.T, t, mask)
            + self.bias
        )
        return _lstm_update(gates, c, lambda c_next: self.bn_c.step(c_next, t, mask))


class LNLSTMCell(Module):
    """LSTM cell with layer normalization (Ba et al. 2016).

    Gates (i, f, g, o) = LN(W_h h) + LN(W_x x) + b, each LN over the 4H gate values of one
    sample at one step, then h' = sigmoid(o) tanh(LN(c')). Gains and biases are shared by
    all steps; the statistics are computed afresh for every sample and step, identically
    in training and eval.

    >>> import torch
    >>> cell = LNLSTMCell(3, 4)
    >>> h = c = torch.zeros(6, 4)
    >>> h, c = cell(torch.randn(6, 3), (h, c))
    >>> h.shape
    torch.Size([6, 4])
    """

    def __init__(self, input_size: int, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        _add_lstm_weights(self, input_size, hidden_size)
        self.eps = eps
        self.ln_ih_weight = Parameter(torch.empty(4 * hidden_size))
        self.ln_ih_bias = Parameter(torch.empty(4 * hidden_size))
        self.ln_hh_weight = Parameter(torch.empty(4 * hidden_size))
        self.ln_hh_bias = Parameter(torch.empty(4 * hidden_size))
        self.ln_c_weight = Parameter(torch.empty(hidden_size))
        self.ln_c_bias = Parameter(torch.empty(hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset_lstm_weights(self)
        for name in ("ih", "hh", "c"):
            init.ones_(getattr(self, f"ln_{name}_weight"))
            init.zeros_(getattr(self, f"ln_{name}_bias"))

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor], t: int = 0, mask=None):
        # t and mask are accepted so that every cell runs in the same loop; LN needs neither.
        h, c = state
        gates = (
            _layer_norm_last(h @ self.weight_hh.T, self.ln_hh_weight, self.ln_hh_bias, self.eps)
            + _layer_norm_last(x @ self.weight_ih.T, self.ln_ih_weight, self.ln_ih_bias, self.eps)
            + self.bias
        )
        def normalize_cell(c_next):
            return _layer_norm_last(c_next, self.ln_c_weight, self.ln_c_bias, self.eps)

        return _lstm_update(gates, c, normalize_cell)


def lstm_sequence(cell: Module, x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Run ``cell`` over an (N, T, input_size) batch; return each sequence's last real h.

    Padded steps leave a sequence's state unchanged (so its final state is the state at
    its own last real step), and the mask is passed on so that BN statistics at step t
    come from the sequences still running. Any cell with ``cell(x, (h, c), t, mask)``
    works, including a plain LSTM adapter.

    >>> import torch
    >>> cell = LNLSTMCell(2, 3)
    >>> x = torch.randn(4, 5, 2)
    >>> mask = torch.arange(5) < torch.tensor([[5], [4], [2], [3]])
    >>> lstm_sequence(cell, x, mask).shape
    torch.Size([4, 3])
    """
    n, steps, _ = x.shape
    h = x.new_zeros(n, cell.hidden_size)
    c = x.new_zeros(n, cell.hidden_size)
    for t in range(steps):
        alive = None if mask is None else mask[:, t]
        h_new, c_new = cell(x[:, t], (h, c), t, alive)
        if alive is None:
            h, c = h_new, c_new
        else:
            keep = alive.unsqueeze(1)
            h, c = torch.where(keep, h_new, h), torch.where(keep, c_new, c)
    return h
