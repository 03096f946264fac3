"""refimpl: a small, readable reference implementation of normalization layers.

One array-API core (statistics over reduction axes, then normalize and apply the affine
over parameter axes) runs on NumPy float64 arrays and on torch tensors. `refimpl.functional`
and `refimpl.nn` mirror `torch.nn.functional` and `torch.nn`, and never call torch's
normalization kernels, so comparing the two is a real test.
"""

from refimpl import (  # distributed and recurrent build on refimpl.nn's bases
    backward,
    batch_renorm,
    core,
    data,
    distributed,
    evidence,
    functional,
    fusion,
    nn,
    precise_bn,
    recurrent,
    running_stats,
    training,
)
from refimpl.check import check, check_table
from refimpl.evidence import claim, paired_verdict, seeds
from refimpl.notebook import setup

__all__ = [
    "backward",
    "batch_renorm",
    "check",
    "check_table",
    "claim",
    "core",
    "data",
    "distributed",
    "evidence",
    "functional",
    "fusion",
    "nn",
    "paired_verdict",
    "precise_bn",
    "recurrent",
    "running_stats",
    "seeds",
    "setup",
    "training",
]
__version__ = "0.1.0"
