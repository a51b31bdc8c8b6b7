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
    run = hl.load_run("runs/exp")                       # read-only: run.json + analysis.sqlite
    rec = run.records()[-1]                             # rec.epoch, rec.arrays["H"], ...
    G = hl.pseudo_hessian(model, loss_fn, data, curvature="ggn").H   # Gauss-Newton U^T G U
    bn = hl.block_norms(model, loss_fn, data, probes=64)  # .trace, .trace_se, .frobenius(_se)
    sp = hl.block_spectra(model, loss_fn, data, steps=30)  # per-group Lanczos / SLQ, .lmax
    js0 = hl.js_divergence(sp).js0                         # Zhang et al.'s JS⁰
    opts = hl.Options(batch_dim=(1, 0), dtype=torch.float64)  # one options value, everywhere

Names are imported on first use, so ``import hessian_lens.runs`` (the dashboard's run
browser) does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from hessian_lens.version import __version__

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
    "MemoryGuardError": "hessian_lens.engine",
    "Options": "hessian_lens.engine",
    "MemoryPlan": "hessian_lens.engine",
    "memory_plan": "hessian_lens.engine",
    "PseudoHessian": "hessian_lens.engine",
    "pseudo_gradient": "hessian_lens.engine",
    "pseudo_hessian": "hessian_lens.engine",
    "summary_tensor": "hessian_lens.engine",
    "taylor_terms": "hessian_lens.engine",
    "losses_along": "hessian_lens.engine",
    "ArchitectureError": "hessian_lens.registry",
    "build_model": "hessian_lens.registry",
    "register_model": "hessian_lens.registry",
    "load_model_files": "hessian_lens.registry",
    "Recorder": "hessian_lens.recorder",
    "TaylorView": "hessian_lens.taylor",
    "taylor_view": "hessian_lens.taylor",
    "get_loss": "hessian_lens.losses",
    "load_run": "hessian_lens.runs",
    "find_runs": "hessian_lens.runs",
    "Run": "hessian_lens.runs",
    "BlockNorms": "hessian_lens.measures",
    "block_norms": "hessian_lens.measures",
    "BlockSpectra": "hessian_lens.spectra",
    "Spectrum": "hessian_lens.spectra",
    "block_spectra": "hessian_lens.spectra",
    "js_divergence": "hessian_lens.spectra",
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
    "measures",
    "spectra",
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
