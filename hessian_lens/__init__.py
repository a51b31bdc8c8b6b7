"""Hessian Lens: exact layer-interaction summaries of the loss curvature.

The public API::

    import hessian_lens as hl
    part = hl.Partition.canonical(model)
    res = hl.pseudo_hessian(model, loss_fn, data)      # res.H (S x S), res.g (S)
    D3 = hl.summary_tensor(model, loss_fn, data, order=3)
    plan = hl.memory_plan(model, loss_fn, batch)        # predicted peak, micro-batch that fits
    eta, info = hl.partition_newton_step(model, loss_fn, data)
    opt = hl.optim.PartitionNewton(model.parameters(), lr=0.3)
    model, meta = hl.load_checkpoint(path)
"""

from hessian_lens import optim
from hessian_lens.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from hessian_lens.optim import PartitionNewton, partition_newton_step
from hessian_lens.partition import Group, Partition, PartitionError
from hessian_lens.summary import (
    MemoryGuardError,
    MemoryPlan,
    PseudoHessian,
    memory_plan,
    pseudo_gradient,
    pseudo_hessian,
    summary_tensor,
    taylor_terms,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "Group",
    "MemoryGuardError",
    "MemoryPlan",
    "Partition",
    "PartitionError",
    "PartitionNewton",
    "PseudoHessian",
    "__version__",
    "load_checkpoint",
    "memory_plan",
    "optim",
    "partition_newton_step",
    "pseudo_gradient",
    "pseudo_hessian",
    "save_checkpoint",
    "summary_tensor",
    "taylor_terms",
]
