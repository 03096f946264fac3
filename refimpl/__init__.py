"""refimpl: a small, readable reference implementation of normalization layers.

One array-API core (statistics over reduction axes, then normalize and apply the affine
over parameter axes) runs on NumPy float64 arrays and on torch tensors. `refimpl.functional`
and `refimpl.nn` mirror `torch.nn.functional` and `torch.nn`, and never call torch's
normalization kernels, so comparing the two is a real test.
"""

from refimpl import (  # nn also loads recurrent and distributed
    backward,
    core,
    data,
    functional,
    fusion,
    nn,
    precise_bn,
    running_stats,
    training,
)
from refimpl.check import check, check_table
from refimpl.notebook import setup

__all__ = [
    "backward",
    "check",
    "check_table",
    "core",
    "data",
    "distributed",
    "functional",
    "fusion",
    "nn",
    "precise_bn",
    "recurrent",
    "running_stats",
    "setup",
    "training",
]
__version__ = "0.1.0"
