"""One options value for every entry point of the engine: the data contract and the run.

Every function that computes from a model and data (``pseudo_hessian``, ``summary_tensor``,
``taylor_terms``, ``memory_plan``, ``losses_along``, ``partition_newton_step``, ``Recorder``,
the Lightning and Hugging Face callbacks) takes ``options=hl.Options(...)`` and, for
convenience, the same fields as keywords (``batch_dim=1``), which override ``options``::

    opts = hl.Options(batch_dim=(1, 0), reduction="sum", dtype=torch.float64)
    res = hl.pseudo_hessian(model, loss_fn, data, options=opts)
    res = hl.pseudo_hessian(model, loss_fn, data, options=opts, method="vmap")

The contract fields say how to read the data (:mod:`hessian_lens.batches`); the run fields
say where and how to compute. The value is frozen: :meth:`Options.replace` makes a copy.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

import torch
from torch import Tensor, nn

from hessian_lens import batches as B

__all__ = ["CURVATURES", "METHODS", "Contract", "EngineKeywords", "Normalizer", "Options"]

LossFn = Callable[[Tensor, Tensor], Tensor]
Forward = Callable[[nn.Module, Any], Any]
Progress = bool | Callable[[int, int | None], None]
Normalizer = Callable[[Any], Any]
METHODS = ("auto", "loop", "vmap")
CURVATURES = ("hessian", "ggn", "functional")  # H, the Gauss-Newton J^T H_l J, or H - G


class EngineKeywords(TypedDict, total=False):
    """The fields of :class:`Options`, as keywords (for ``**keywords`` type hints)."""

    batch_dim: int | tuple[int, int]
    reduction: str | None
    normalizer: Normalizer | None
    forward: Forward | None
    device: torch.device | str | None
    dtype: torch.dtype | None
    method: str
    train_mode: bool
    chunk_size: int | None
    distributed: bool | None
    progress: Progress
    curvature: str
    seed: int
    resume: str | os.PathLike | None


@dataclass(frozen=True)
class Options:
    """How the engine reads the data (the contract) and how it runs.

    Attributes:
        batch_dim: the dimension holding the samples in every input and target tensor,
            or ``(inputs_dim, targets_dim)`` (e.g. ``(1, 0)`` for ``(T, N, F)`` inputs).
        reduction: ``"mean"`` or ``"sum"`` over samples; ``None`` reads it from a torch
            loss module, sees it in the cross-entropy the loss returns, or verifies it on
            a batch (its loss against its halves').
            Per-sample losses (``reduction="none"`` modules) are reduced as declared.
        normalizer: ``normalizer(batch) -> W_b``, what a batch's mean loss divides by
            (e.g. ``lambda b: (b[1] != -100).sum()``, its valid targets), for a loss whose
            weight Hessian Lens cannot see (:mod:`hessian_lens.batches`); ``None``: read
            from a torch cross-entropy, a Hugging Face model's labels or the loss's calls.
        forward: ``forward(model, inputs) -> outputs`` for models with another calling
            convention; ``None``: ``model(x)``, ``model(*x)`` for a tuple, ``model(**x)``
            for a Mapping.
        device: where to compute; ``None`` means the model's device.
        dtype: ``torch.float64`` for exact references; ``None`` means the model's dtype.
        method: ``"loop"``, ``"vmap"`` or ``"auto"`` (the loop: measured fastest on CPU).
        train_mode: run the model in train mode (BatchNorm batch statistics, dropout).
        chunk_size: vmap back end only: directions per vectorised call (``None``: chosen
            to fit memory, all S when they fit).
        distributed: ``None``: sum over the ranks of an initialised process group of more
            than one rank; ``False``: this process's data only; ``True``: require a group.
        progress: ``True`` for a tqdm bar, or a callable ``(done, total)`` per batch.
        curvature: ``"hessian"`` (``H_bar = U^T H U``) or ``"ggn"`` (the generalised
            Gauss-Newton ``G_bar = U^T J^T H_l J U``: positive semi-definite for a convex
            loss; order 2 only; needs a ``loss_fn`` of the model's outputs), or for the
            measures (:func:`hessian_lens.block_norms`, :func:`hessian_lens.block_spectra`)
            ``"functional"``: ``H - G``, the rest of the Hessian.
        seed: every forward pass of batch b runs with the random generators seeded
            ``seed + b`` (dropout masks in train mode, any random operation), the same in
            every pass; the caller's generators are left as they were.
        resume: a file where pass 2 keeps its running sums row by row (H̄ alone) or
            micro-batch by micro-batch; a call with the same file, model, data and options
            continues after the last row stored (:mod:`hessian_lens.engine.resume`); once
            complete it holds the whole result (the caller removes it).

    Example:
        >>> opts = Options(batch_dim=(1, 0), reduction="sum")
        >>> opts.replace(method="vmap").method, opts.method
        ('vmap', 'auto')
        >>> Options.of(opts, reduction="mean").reduction
        'mean'
    """

    batch_dim: int | tuple[int, int] = 0
    reduction: str | None = None
    normalizer: Normalizer | None = None
    forward: Forward | None = None
    device: torch.device | str | None = None
    dtype: torch.dtype | None = None
    method: str = "auto"
    train_mode: bool = False
    chunk_size: int | None = None
    distributed: bool | None = None
    progress: Progress = False
    curvature: str = "hessian"
    seed: int = 0
    resume: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        B.BatchDims.of(self.batch_dim)
        if self.reduction is not None and self.reduction not in B.REDUCTIONS:
            raise ValueError(f"reduction must be 'mean', 'sum' or None, got {self.reduction!r}")
        if self.normalizer is not None and not callable(self.normalizer):
            raise TypeError(f"normalizer must be callable, got {type(self.normalizer).__name__}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.forward is not None and not callable(self.forward):
            raise TypeError(f"forward must be callable, got {type(self.forward).__name__}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.dtype is not None and not isinstance(self.dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype, got {self.dtype!r}")
        if self.chunk_size is not None and not _positive_int(self.chunk_size):
            raise ValueError(f"chunk_size must be an integer >= 1 or None, got {self.chunk_size!r}")
        if self.curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got {self.curvature!r}")
        if self.resume is not None and not isinstance(self.resume, (str, os.PathLike)):
            raise TypeError(f"resume must be a file path or None, got {self.resume!r}")
        if not isinstance(self.train_mode, bool):
            raise TypeError(f"train_mode must be True or False, got {self.train_mode!r}")

    @classmethod
    def of(cls, options: Options | None = None, **keywords: Any) -> Options:
        """``options`` (default: all defaults) with ``keywords`` replacing its fields.

        Raises:
            TypeError: ``options`` is not an :class:`Options`, or a keyword is not one of
                its fields (the message lists them).
        """
        if options is None:
            options = cls()
        elif isinstance(options, Mapping):
            options = cls(**_known(dict(options)))
        elif not isinstance(options, cls):
            raise TypeError(f"options must be a hessian_lens.Options, got {type(options).__name__}")
        return options.replace(**keywords) if keywords else options

    def replace(self, **keywords: Any) -> Options:
        """A copy with ``keywords`` replacing fields (unknown names raise a TypeError)."""
        return dataclasses.replace(self, **_known(keywords))

    def contract(self, loss_fn: LossFn | None) -> Contract:
        """A fresh data contract for one call (the loss's reduction is verified per call)."""
        return Contract(
            loss=B.LossContract.of(loss_fn, self.reduction, self.normalizer),
            dims=B.BatchDims.of(self.batch_dim),
            forward=self.forward,
        )


def _known(keywords: dict[str, Any]) -> dict[str, Any]:
    fields = [f.name for f in dataclasses.fields(Options)]
    unknown = sorted(set(keywords) - set(fields))
    if unknown:
        raise TypeError(f"unknown engine option(s) {unknown}: the options are {', '.join(fields)}")
    return keywords


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class Contract:
    """The data contract of one call (:mod:`hessian_lens.batches`): loss, dims, forward."""

    loss: B.LossContract
    dims: B.BatchDims
    forward: Forward | None
