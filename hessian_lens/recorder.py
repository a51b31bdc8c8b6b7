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
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Unpack

import torch
from torch import Tensor, nn

from hessian_lens import runfolder
from hessian_lens.analyze import ENGINE_VERSION, check_storable, checkpoint_epoch, stored_parts
from hessian_lens.batches import as_batches, split_batch, tree_leaves
from hessian_lens.checkpoint import save_checkpoint
from hessian_lens.engine import Options, pseudo_hessian
from hessian_lens.engine.options import EngineKeywords
from hessian_lens.io.files import file_sha256
from hessian_lens.losses import OWN_LOSS, get_loss
from hessian_lens.measures import check_measures, stored_measures
from hessian_lens.partition import Partition
from hessian_lens.registry import USER_PREFIX
from hessian_lens.store import Record, ResultStore
from hessian_lens.writerlock import WriterLock

LOG = logging.getLogger("hessian_lens")
FAILED = "analysis failed"  # run.json's state after an analysis error (keep_going)


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
        measures: also at each analysis, among ``"trace"``, ``"frobenius"``, ``"spectra"``
            and ``"lmax"`` (:mod:`hessian_lens.measures`): the loggers get
            ``hessian/lambda_max`` and ``hessian/tr_H`` (with its standard error).
        probes: Rademacher probes of the traces and norms (>= 2).
        steps: Lanczos steps of the spectra and lambda_max.
        loggers: where each analysis's scalars and heatmaps also go, under
            ``hessian/...``: a ``SummaryWriter``, a wandb run, an ``aim.Run`` or an object
            with ``log_record(record, step)`` (:mod:`hessian_lens.integrations.loggers`).
        data_spec, data_source: the data set ``analysis_data`` comes from, as ``analyze``
            loads it (``"cifar10"`` and its npz or folder, ``"npz:PATH"``,
            ``"text:stdlib@64"``, ...): recorded in run.json, so that ``hessian-lens
            analyze RUN`` can measure more samples of it. Without it, ``analyze`` asks for
            ``--data``.
        options: the data contract and run options of every analysis
            (:class:`hessian_lens.Options`: ``batch_dim``, ``reduction``, ``normalizer``,
            ``forward``, ``dtype`` (``torch.float64`` for references), ``progress`` (a tqdm
            bar per analysis), ``device``, ``method``, ``seed``, ...).
        keep_going: an analysis that raises does not raise from :meth:`log`: the error is
            written to the run (``run.json``: ``"state": "analysis failed"`` and
            ``"error"``), logged once, and later calls record checkpoints and metrics only
            (what the Lightning and Hugging Face callbacks use: training goes on).
        **keywords: any field of :class:`hessian_lens.Options`, overriding ``options``.

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
        *,
        measures: tuple[str, ...] | list[str] = (),
        probes: int = 16,
        steps: int = 20,
        loggers=None,
        data_spec: str | None = None,
        data_source: str | None = None,
        options: Options | None = None,
        keep_going: bool = False,
        **keywords: Unpack[EngineKeywords],
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
        self.order3 = order3
        self.options = Options.of(options, **keywords)
        self.measures = check_measures(measures)
        self.measure_counts = {"probes": probes, "steps": steps}
        if self.measures and (not isinstance(probes, int) or probes < 2 or steps < 1):
            raise ValueError(f"probes must be >= 2 and steps >= 1, got {probes!r}, {steps!r}")
        self.calls, self.closed = 0, False
        self.keep_going, self.failed = keep_going, None
        from hessian_lens.integrations.loggers import as_loggers

        self.loggers = as_loggers(loggers)
        self.rank = _rank()
        self.model_entry = {
            "name": architecture or f"{USER_PREFIX}{type(model).__name__}",
            "kwargs": dict(architecture_kwargs or {}),
        }
        self._fingerprint: str | None = None
        self.data_entry = _data_entry(data_spec, data_source)
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
        record = None
        if analyse and self.failed is None:
            try:
                record = self._analyse(epoch, checkpoint, direction)
            except Exception as err:  # any analysis error: the run says so (keep_going)
                if not self.keep_going:
                    raise
                self.fail(err, epoch)
        if record is not None:
            for logger in self.loggers:
                logger.log_record(record, int(epoch) if step is None else int(step))
        if self.rank == 0:
            if checkpoint is not None:
                entry["checkpoint"] = checkpoint.name
            self._append(entry)
        return record

    def fail(self, err: BaseException, epoch: float | None = None, *, log: bool = True) -> None:
        """Write an analysis error to the run and log it (once); analyses stop.

        ``run.json`` gets ``"state": "analysis failed"`` and ``"error"`` (the error's type
        and message, and the epoch it happened at); the run is no longer shown as live.
        """
        if self.failed is not None:
            return
        at = f" at epoch {epoch}" if epoch is not None else ""
        self.failed = f"{type(err).__name__}{at}: {str(err).strip() or type(err).__name__}"
        if log:
            LOG.error(
                "Hessian Lens: the analysis of %s failed (%s); training goes on, with "
                "checkpoints and metrics only",
                self.path,
                self.failed,
            )
        if self.rank == 0:
            self.manifest.update(state=FAILED, error=self.failed)
            runfolder.write_manifest(self.path, self.manifest)

    def close(self) -> None:
        """Finish the run: marked ``"state": "finished"`` (no longer shown as live).

        A run whose analysis failed keeps ``"state": "analysis failed"``. Lets another
        writer in (:class:`~hessian_lens.writerlock.WriterLock`).
        """
        try:
            if not self.closed and self.rank == 0:
                self.manifest["state"] = FAILED if self.failed is not None else "finished"
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
            "data": self.data_entry,
            "recorder": True,
            "history": [],
        }
        manifest["state"] = "recording"
        manifest["writer"] = runfolder.writer_entry()  # never live once this process ends
        manifest.pop("error", None)
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

    def _measure(self, part: Partition) -> tuple[dict, dict]:
        """The asked-for measures of the analysis data (:func:`measures.stored_measures`)."""
        return stored_measures(
            self.model,
            self.loss_fn,
            self.data,
            part,
            self.measures,
            slq_probes=1,
            seed=0,
            options=self.options.replace(progress=False),
            **self.measure_counts,
        )

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
            direction=direction,
            d3_diagonal=self.order3,
            options=self.options,
        )
        measured = self._measure(part) if self.measures else None  # every rank takes part
        if self.rank != 0:
            return None
        summary, arrays = stored_parts(res, part, self.loss_name)
        if measured is not None:
            summary["measures"] = measured[0]
            arrays.update({k: v.double().cpu().numpy() for k, v in measured[1].items()})
        summary["curvature"] = self.options.curvature
        summary["model"] = self.model_entry
        arrays["u_sq"] = _group_squares(res, part)
        settings = self._settings(part, res.n_samples)
        if direction is not None:
            settings["direction"] = "given"
        if self.options.curvature != "hessian":
            settings["curvature"] = self.options.curvature
        if self.measures:
            settings.update(measures=list(self.measures), **self.measure_counts, slq_probes=1)
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
        dtype = self.options.dtype or next(self.model.parameters()).dtype
        settings = {
            "samples": n,
            "partition": part.scheme,
            "order3": self.order3,
            "seed": self.options.seed,
            "dtype": str(dtype).removeprefix("torch."),
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


def _data_entry(spec: str | None, source: str | None) -> dict[str, Any]:
    """run.json's ``data``: the data set spec given, else :data:`runfolder.RECORDER_DATA`.

    Raises:
        ValueError: a spec or source that is not a non-empty string.
    """
    for what, value in (("data_spec", spec), ("data_source", source)):
        if value is not None and not (isinstance(value, str) and value.strip()):
            raise ValueError(f"{what} must be a data set spec string such as 'cifar10'")
    if spec is None:
        if source is not None:
            raise ValueError("data_source needs data_spec (the data set it is a source of)")
        return {"name": runfolder.RECORDER_DATA}
    return {"name": spec.strip(), **({"source": source} if source else {})}


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
