"""Hessian Lens: exact layer-interaction summaries of the loss curvature.

The public API::

    import hessian_lens as hl
    part = hl.Partition.canonical(model)
    res = hl.pseudo_hessian(model, loss_fn, data)      # res.H (S x S), res.g (S)
    res = hl.pseudo_hessian(model, None, hl.fixed_batches(loader, 10))  # model's own .loss
    D3 = hl.summary_tensor(model, loss_fn, data, order=3)
    plan = hl.memory_plan(model, loss_fn, batch)        # predicted peak, micro-batch that fits
    eta, info = hl.partition_newton_step(model, loss_fn, data)
    opt = hl.optim.PartitionNewton(model.parameters(), lr=0.3)
    model = hl.build_model("torchvision:resnet18", num_classes=10)
    model, meta = hl.load_checkpoint(path)              # .pt / .pth / .safetensors / .pt2
    with hl.Recorder("runs/exp", model, loss_fn, batches) as rec: rec.log(0)

Names are imported on first use, so ``import hessian_lens.runs`` (the dashboard's run
browser) does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_EXPORTS = {
    "DataChangedError": "hessian_lens.batches",
    "fixed_batches": "hessian_lens.batches",
    "CheckpointError": "hessian_lens.checkpoint",
    "load_checkpoint": "hessian_lens.checkpoint",
    "save_checkpoint": "hessian_lens.checkpoint",
    "PartitionNewton": "hessian_lens.optim",
    "partition_newton_step": "hessian_lens.optim",
    "Group": "hessian_lens.partition",
    "AttentionLayout": "hessian_lens.heads",
    "Partition": "hessian_lens.partition",
    "PartitionError": "hessian_lens.partition",
    "MemoryGuardError": "hessian_lens.summary",
    "MemoryPlan": "hessian_lens.summary",
    "memory_plan": "hessian_lens.summary",
    "PseudoHessian": "hessian_lens.summary",
    "pseudo_gradient": "hessian_lens.summary",
    "pseudo_hessian": "hessian_lens.summary",
    "summary_tensor": "hessian_lens.summary",
    "taylor_terms": "hessian_lens.summary",
    "losses_along": "hessian_lens.summary",
    "ArchitectureError": "hessian_lens.registry",
    "build_model": "hessian_lens.registry",
    "register_model": "hessian_lens.registry",
    "load_model_files": "hessian_lens.registry",
    "Recorder": "hessian_lens.recorder",
    "TaylorView": "hessian_lens.taylor",
    "taylor_view": "hessian_lens.taylor",
    "get_loss": "hessian_lens.losses",
}
_MODULES = (
    "optim",
    "linalg",
    "plots",
    "data",
    "taylor",
    "paper",
    "distributed",
    "heads",
    "text",
    "tokenized",
    "hf",
    "hierarchy",
    "heterogeneity",
)

__all__ = [*sorted(_EXPORTS), "__version__", "optim"]


def __getattr__(name: str) -> Any:
    """Import a public name (or submodule) on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(f"hessian_lens.{name}")
    else:
        raise AttributeError(f"module 'hessian_lens' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_MODULES))
