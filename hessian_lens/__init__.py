"""Hessian Lens: exact layer-interaction summaries of the loss curvature.

The public API::

    import hessian_lens as hl
    part = hl.Partition.canonical(model)
    res = hl.pseudo_hessian(model, loss_fn, data)      # res.H (S x S), res.g (S)
    D3 = hl.summary_tensor(model, loss_fn, data, order=3)
"""

from hessian_lens.partition import Group, Partition, PartitionError
from hessian_lens.summary import (
    MemoryGuardError,
    PseudoHessian,
    pseudo_gradient,
    pseudo_hessian,
    summary_tensor,
    taylor_terms,
)

__version__ = "0.1.0"

__all__ = [
    "Group",
    "MemoryGuardError",
    "Partition",
    "PartitionError",
    "PseudoHessian",
    "__version__",
    "pseudo_gradient",
    "pseudo_hessian",
    "summary_tensor",
    "taylor_terms",
]
