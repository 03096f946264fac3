"""``torch.nn``-compatible normalization modules built on :mod:`refimpl.functional`.

Same constructor arguments, parameters, buffers, ``state_dict`` keys and ``extra_repr``
as torch, so ``load_state_dict`` works in both directions and
:func:`~refimpl.nn.swap.swap_norms` can replace the norms of a trained torch model by
these. The module only keeps the books (running buffers, how much a new batch counts);
the math is in the functional core.

One file per family, as in ``torch.nn.modules``:

- :mod:`refimpl.nn.base`: ``_NormBase``, the parameters and running buffers that batch,
  instance and masked norm share, and the helpers that register them;
- :mod:`refimpl.nn.batchnorm`: ``BatchNorm1d/2d/3d`` (and their base ``_BatchNorm``);
- :mod:`refimpl.nn.instancenorm`: ``InstanceNorm1d/2d/3d``;
- :mod:`refimpl.nn.layernorm`: ``LayerNorm``, ``RMSNorm``, ``LayerNorm2d`` (not in torch.nn);
- :mod:`refimpl.nn.groupnorm`: ``GroupNorm``;
- :mod:`refimpl.nn.dyt`: ``DynamicTanh`` (DyT; not in torch);
- :mod:`refimpl.nn.batchrenorm`: ``BatchRenorm1d/2d`` (batch renorm, which torch lacks)
  and ``convert_batch_renorm``;
- :mod:`refimpl.nn.swap`: ``swap_norms``;
- :mod:`refimpl.nn.conv`: ``weight_standardize``, ``WSConv2d`` (weight standardization;
  not in torch);
- :mod:`refimpl.nn.frn`: ``filter_response_norm``, ``tlu``, ``FilterResponseNorm2d``,
  ``TLU`` (filter response normalization; not in torch).

``SyncBatchNorm`` (:mod:`refimpl.distributed`) and ``MaskedBatchNorm1d``,
``PerStepBatchNorm1d`` (:mod:`refimpl.recurrent`) are built on these bases and are also
reachable here, as ``refimpl.nn.SyncBatchNorm`` etc. They are loaded on first use, so
that those modules can import the bases from this package without an import circle.

>>> from refimpl import nn
>>> nn.BatchNorm2d is nn.batchnorm.BatchNorm2d, nn.SyncBatchNorm.__module__
(True, 'refimpl.distributed')
"""

from __future__ import annotations

import importlib

# The private names are re-exported too: other refimpl modules and older code import
# them from refimpl.nn (from refimpl.nn import _BatchNorm, ...).
from refimpl.nn.base import (  # noqa: F401
    _NormBase,
    _register_affine,
    _register_running_stats,
    _reset_affine,
)
from refimpl.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, _BatchNorm  # noqa: F401
from refimpl.nn.batchrenorm import BatchRenorm1d, BatchRenorm2d, convert_batch_renorm
from refimpl.nn.conv import WSConv2d, weight_standardize
from refimpl.nn.dyt import DynamicTanh
from refimpl.nn.frn import TLU, FilterResponseNorm2d, filter_response_norm, tlu
from refimpl.nn.groupnorm import GroupNorm
from refimpl.nn.instancenorm import (  # noqa: F401
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    _InstanceNorm,
)
from refimpl.nn.layernorm import LayerNorm, LayerNorm2d, RMSNorm, _as_shape  # noqa: F401
from refimpl.nn.swap import _twin_of, _twins, swap_norms  # noqa: F401

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "DynamicTanh",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "GroupNorm",
    "RMSNorm",
    "LayerNorm2d",
    "swap_norms",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "convert_batch_renorm",
    "WSConv2d",
    "weight_standardize",
    "FilterResponseNorm2d",
    "TLU",
    "filter_response_norm",
    "tlu",
]

# Modules beyond torch.nn's norms, defined elsewhere on top of the bases above: the
# name -> the module that defines it, imported when the name is first looked up.
_ELSEWHERE = {
    "SyncBatchNorm": "refimpl.distributed",
    "MaskedBatchNorm1d": "refimpl.recurrent",
    "PerStepBatchNorm1d": "refimpl.recurrent",
}


def __getattr__(name: str):
    if name in _ELSEWHERE:
        value = getattr(importlib.import_module(_ELSEWHERE[name]), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ELSEWHERE))
