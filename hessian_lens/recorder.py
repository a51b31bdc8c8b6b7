"""``Recorder``: a run folder written from the user's own PyTorch training loop.

The ``SummaryWriter`` habit, for curvature::

    with hl.Recorder("runs/exp", model, F.cross_entropy, analysis_batches,
                     architecture="torchvision:resnet18") as rec:
        rec.log(0, test_acc=evaluate(model))            # epoch 0 = before training
        for epoch in range(1, epochs + 1):
            train_one_epoch(model, optimizer)
            rec.log(epoch, train_loss=loss, test_acc=evaluate(model))

Each ``log`` writes a safe checkpoint (``epoch_NNNN.pt``: weights and metadata only), the
metrics into ``run.json``, and — every ``every``-th call — ``g_bar``, ``H_bar`` and the rest
of the analysis (inverse, normalised views, block-diagonal comparisons) into the run's
``analysis.sqlite``, exactly what ``hessian-lens analyze`` stores. The dashboard shows the
run from those two files alone, without importing or building the model.

``analysis_data`` must give the same samples every time (a list of batches, or a
DataLoader without shuffling): it is the fixed data set H̄ is measured on. Under
``torch.distributed``, pass each rank its own shard: every rank calls ``log`` (the
summaries are all-reduced) and rank 0 writes the files.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hessian_lens import runfolder
from hessian_lens.analyze import ENGINE_VERSION, check_storable, checkpoint_epoch, stored_parts
from hessian_lens.batches import as_batches, split_batch, tree_leaves
from hessian_lens.checkpoint import save_checkpoint
from hessian_lens.files import file_sha256
from hessian_lens.losses import OWN_LOSS, get_loss
from hessian_lens.partition import Partition
from hessian_lens.store import Record, ResultStore
from hessian_lens.summary import pseudo_hessian
from hessian_lens.writerlock import WriterLock


class Recorder:
    """Record checkpoints, metrics and curvature analyses of a training loop.

    Args:
        run_dir: the run folder (created; an existing Recorder run is continued).
        model: the model being trained.
        loss_fn: ``loss_fn(outputs, targets)`` (a mean or a sum over samples), a name
            (``"cross_entropy"``, ``"mse"``, ``"nll"``), or ``None`` for a model that
            returns its own loss (``outputs.loss``).
        analysis_data: one batch or a re-iterable of batches (``(inputs, targets)`` of
            tensors, tuples, dicts or dataclasses, or a Mapping of model keyword arguments),
            the same samples at every call (``hl.fixed_batches(loader, n)``).
        name: the run's display name (default: the folder name).
        architecture: how to rebuild the model (``"torchvision:resnet18"``, a built-in or
            registered name) with ``architecture_kwargs``; None: the run is browsable but
            its checkpoints only load where the model's code is.
        partition: a :class:`Partition`, a scheme name (``"canonical"``, ``"by_module:2"``),
            or None (canonical).
        every: analyse at every ``every``-th ``log`` call (the first one always).
        save_checkpoints: write ``epoch_NNNN.pt`` at each call.
        order3: also store the diagonal of ``D^(3)``.
        dtype: the analysis dtype (``torch.float64`` for references).
        progress: a tqdm bar per analysis.
        loggers: where each analysis's scalars and heatmaps also go, under
            ``hessian/...``: a ``SummaryWriter``, a wandb run, an ``aim.Run`` or an object
            with ``log_record(record, step)`` (:mod:`hessian_lens.integrations.loggers`).
        batch_dim, reduction, forward: the data contract, as in
            :func:`~hessian_lens.pseudo_hessian`.

    Raises:
        ValueError: the partition has more groups than a store holds (5,000), before
            anything is written.
        hessian_lens.writerlock.FolderBusyError: another process (named) is writing the
            folder; one writer per folder until it closes (a lock file, ``.writer.lock``).
    """

    def __init__(
        self,
        run_dir: str | Path,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | str | None,
        analysis_data,
        name: str | None = None,
        architecture: str | None = None,
        partition: Partition | str | None = None,
        every: int = 1,
        save_checkpoints: bool = True,
        architecture_kwargs: dict[str, Any] | None = None,
        order3: bool = False,
        dtype: torch.dtype | None = None,
        progress: bool = False,
        *,
        loggers=None,
        batch_dim: int | tuple[int, int] = 0,
        reduction: str | None = None,
        forward: Callable | None = None,
    ) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self.path = Path(run_dir)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"{self.path} is a file; give a folder for the run.")
        self.model, self.every, self.save = model, every, save_checkpoints
        self.loss_name, self.loss_fn = _loss(loss_fn)
        self.data = as_batches(analysis_data)
        self.partition = partition
        self.order3, self.dtype, self.progress = order3, dtype, progress
        self.contract = {"batch_dim": batch_dim, "reduction": reduction, "forward": forward}
        self.calls, self.closed = 0, False
        from hessian_lens.integrations.loggers import as_loggers

        self.loggers = as_loggers(loggers)
        self.rank = _rank()
        self.model_entry = {
            "name": architecture or f"user:{type(model).__name__}",
            "kwargs": dict(architecture_kwargs or {}),
        }
        self._fingerprint: str | None = None
        self._part = self._partition()
        check_storable(self._part, self._part.scheme)  # before anything is written
        self._lock = WriterLock.take(self.path) if self.rank == 0 else None
        try:
            self.manifest = self._start_manifest(name)
        except BaseException:
            self._release()
            raise

    # ------------------------------------------------------------------ public
    def log(
        self,
        epoch: float,
        *,
        step: int | None = None,
        direction: list[Tensor] | None = None,
        analyse: bool | None = None,
        **metrics: float,
    ) -> Record | None:
        """Write the checkpoint, the metrics and (every ``every``-th call) the analysis.

        Args:
            epoch: the run's position: whole epochs, or a fraction inside one.
            step: the training step the loggers file the analysis under (default: the
                epoch, rounded down).
            direction: ``u`` for this analysis, one tensor per trainable parameter (e.g.
                the gradient of the current training step); default: the gradient of the
                loss on the analysis data. Analyses with a given direction are stored under
                their own settings (``"direction": "given"``).
            analyse: None: analyse on every ``every``-th call; True / False: this call
                analyses or not, whatever the count.
            **metrics: numbers for the run's history (``train_loss``, ``test_acc``, ...).

        Returns:
            The analysis record stored (None on calls without an analysis, and on ranks
            other than 0).
        """
        if self.closed:
            raise RuntimeError("this Recorder is closed")
        epoch = _epoch(epoch)
        entry = {"epoch": epoch, **{k: _metric(k, v) for k, v in metrics.items()}}
        if analyse is None:
            analyse = self.calls % self.every == 0
        self.calls += 1
        checkpoint = self._checkpoint(epoch, entry) if self.save else None
        record = self._analyse(epoch, checkpoint, direction) if analyse else None
        if record is not None:
            for logger in self.loggers:
                logger.log_record(record, int(epoch) if step is None else int(step))
        if self.rank == 0:
            if checkpoint is not None:
                entry["checkpoint"] = checkpoint.name
            self._append(entry)
        return record

    def close(self) -> None:
        """Finish the run: marked ``"state": "finished"`` (no longer shown as live).

        Lets another writer in (:class:`~hessian_lens.writerlock.WriterLock`).
        """
        try:
            if not self.closed and self.rank == 0:
                self.manifest["state"] = "finished"
                runfolder.write_manifest(self.path, self.manifest)
        finally:
            self.closed = True
            self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _start_manifest(self, name: str | None) -> dict[str, Any]:
        existing = runfolder.read_manifest(self.path).raw
        if existing and existing.get("recorder") is not True:
            raise ValueError(
                f"{self.path} holds a run not written by a Recorder; choose another folder."
            )
        manifest = existing or {
            "format": runfolder.RUN_FORMAT,
            "name": name or self.path.name,
            "model": self.model_entry,
            "loss": self.loss_name,
            "data": {"name": "analysis data given to the Recorder"},
            "recorder": True,
            "history": [],
        }
        manifest["state"] = "recording"
        if self.rank == 0:
            runfolder.write_manifest(self.path, manifest)
        return manifest

    def _checkpoint(self, epoch: float, entry: dict[str, Any]) -> Path | None:
        path = self.path / runfolder.checkpoint_name(epoch)
        if self.rank == 0:
            meta = {
                "model": self.model_entry,
                "epoch": epoch,
                "run": self.manifest["name"],
                "metrics": entry,
            }
            save_checkpoint(path, self.model, meta)
        return path

    def _analyse(
        self, epoch: float, checkpoint: Path | None, direction: list[Tensor] | None = None
    ) -> Record | None:
        part = self._part
        t0 = time.perf_counter()
        res = pseudo_hessian(
            self.model,
            self.loss_fn,
            self.data,
            partition=part,
            dtype=self.dtype,
            d3_diagonal=self.order3,
            progress=self.progress,
            direction=direction,
            **self.contract,
        )
        if self.rank != 0:
            return None
        summary, arrays = stored_parts(res, part, self.loss_name)
        summary["model"] = self.model_entry
        arrays["u_sq"] = _group_squares(res, part)
        settings = self._settings(part, res.n_samples)
        if direction is not None:
            settings["direction"] = "given"
        sha = file_sha256(checkpoint) if checkpoint is not None else _state_sha(self.model)
        name = checkpoint.name if checkpoint is not None else runfolder.checkpoint_name(epoch)
        record = Record(
            sha,
            settings,
            name,
            checkpoint_epoch(name, {"epoch": epoch}),
            summary,
            arrays,
            time.perf_counter() - t0,
        )
        ResultStore(self.path / runfolder.STORE_FILE).put(record)
        return record

    def _partition(self) -> Partition:
        if isinstance(self.partition, Partition):
            return self.partition
        return Partition.from_name(self.model, self.partition or "canonical")

    def _settings(self, part: Partition, n: int) -> dict[str, Any]:
        settings = {
            "samples": n,
            "partition": part.scheme,
            "order3": self.order3,
            "seed": 0,
            "dtype": str(self.dtype or next(self.model.parameters()).dtype).replace("torch.", ""),
            "data": self._data_fingerprint(),
            "engine": ENGINE_VERSION,
        }
        if self.loss_name != "cross_entropy":
            settings["loss"] = self.loss_name
        return settings

    def _data_fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha256()
            for batch in self.data:
                for t in tree_leaves(split_batch(batch)):
                    h.update(
                        t.detach()
                        .cpu()
                        .reshape(-1)
                        .contiguous()
                        .view(torch.uint8)
                        .numpy()
                        .tobytes()
                    )
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def _append(self, entry: dict[str, Any]) -> None:
        history = [h for h in self.manifest.get("history", []) if h.get("epoch") != entry["epoch"]]
        self.manifest["history"] = sorted([*history, entry], key=lambda h: h["epoch"])
        runfolder.write_manifest(self.path, self.manifest)


def _group_squares(res, part: Partition):
    """``‖U^s‖²`` per group: the direction's squared norm on each group (float64 numpy)."""
    u = [t.detach().double() for t in res.direction]
    return part.reduce([t * t for t in u], list(range(len(u)))).cpu().numpy()


def _loss(loss_fn) -> tuple[str, Callable | None]:
    if loss_fn is None:
        return OWN_LOSS, None
    if isinstance(loss_fn, str):
        return loss_fn, get_loss(loss_fn)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a callable or a loss name, got {type(loss_fn).__name__}")
    return getattr(loss_fn, "__name__", type(loss_fn).__name__), loss_fn


def _epoch(epoch: Any) -> float:
    ok = isinstance(epoch, (int, float)) and not isinstance(epoch, bool)
    if not ok or not 0 <= epoch < 1e9:
        raise ValueError(f"epoch must be a number in [0, 1e9), got {epoch!r}")
    return int(epoch) if float(epoch).is_integer() else float(epoch)


def _metric(name: str, value: Any) -> float | str:
    if isinstance(value, Tensor):
        value = value.detach().cpu().item()
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return value
    raise TypeError(
        f"metric {name!r} must be a number (or a 0-d tensor), got {type(value).__name__}"
    )


def _state_sha(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
