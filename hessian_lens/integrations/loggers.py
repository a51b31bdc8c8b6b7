"""Curvature next to the loss curves: scalars and heatmaps to TensorBoard, W&B, MLflow or Aim.

Give loggers to a :class:`~hessian_lens.recorder.Recorder` (or a callback)::

    from torch.utils.tensorboard import SummaryWriter
    rec = hl.Recorder("runs/exp", model, F.cross_entropy, batches,
                      loggers=[SummaryWriter("tb/exp")])

A ``SummaryWriter``, a ``wandb`` run, an MLflow run (``mlflow.start_run()``) and an
``aim.Run`` are recognised as they are; any object with a ``log_record(record, step)``
method is used as one. At each analysis they receive, under ``hessian/...``:

* ``off_block_H``, ``off_block_Hinv``: share of Σ|H̄| and of Σ|H̄⁻¹| outside the
  per-layer diagonal blocks (0: the layers do not interact);
* ``condition``: the condition number of H̄ (of its normalised form, as the analysis
  reports it);
* ``trace``: Σ_s H̄_ss;
* ``grad_norm``: ‖ḡ‖ (Euclidean norm of the pseudo-gradient ḡ_s = ∇L·U^s);
* ``spread``: the block-heterogeneity spread, defined in :func:`curvature_scalars`;
* ``loss``: the loss on the analysis data;

and the heatmaps ``hessian/H`` and ``hessian/Hinv`` (normalised: diag(|M|)^-½ M
diag(|M|)^-½, white 0, red > 0, blue < 0) as labelled pictures: title, group names,
lines between layers, colour bar (:mod:`hessian_lens.images`). wandb, mlflow and aim are
imported only when such a logger is made.

Steps: TensorBoard, MLflow and Aim file each value under its step. W&B has one step
counter per run, which a training loop advances once a batch: the curvature goes under its
own step metric ``hessian/step`` (``define_metric``), so epoch 3 is not refused as a step
in the past. Aim is tested write-only (it does not install here): its values are read in
Aim's own UI or ``aim.Repo``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from hessian_lens import heterogeneity, linalg, plots
from hessian_lens.images import heatmap_image
from hessian_lens.store import Record

PREFIX = "hessian"


class Logger(Protocol):
    """What the Recorder calls after each analysis."""

    def log_record(self, record: Record, step: int) -> None:
        """Send a stored analysis (scalars and heatmaps) at a training step."""


def curvature_scalars(summary: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, float]:
    """The scalars sent to loggers, keyed ``hessian/<name>``.

    The block-heterogeneity spread measures how different the curvature along u is from
    one group to the next (:func:`hessian_lens.linalg.heterogeneity`'s overall
    ``log10_std``)::

        c_s    = H̄_ss / ‖U^s‖²       (the curvature of the loss along U^s, per unit step)
        spread = std_s( log10 |c_s| )  over the groups with c_s defined and != 0

    (population std) in decades: 0 when every group has the same curvature along its
    direction, 1 when they differ by a factor 10 (one standard deviation). It does not
    change when the loss is multiplied by a constant. ``‖U^s‖²`` is stored by the
    Recorder as ``u_sq``; for analyses without it (u = the gradient) ``ḡ_s = ∇L·U^s =
    ‖U^s‖²`` is used. ``hessian/negative_curvature_groups`` counts the groups with
    ``c_s < 0`` (their magnitude is in the spread).

    Example:
        >>> H = np.diag([1.0, 100.0]); g = np.array([1.0, 1.0])
        >>> s = curvature_scalars({"inverse": {"condition": 100.0}, "compare": {}},
        ...                       {"H": H, "g": g, "Hinv": np.linalg.inv(H)})
        >>> s["hessian/spread"], s["hessian/trace"], s["hessian/condition"]
        (1.0, 101.0, 100.0)
    """
    H, g, Hinv = arrays["H"], arrays["g"], arrays["Hinv"]
    u_sq = np.clip(heterogeneity.norms_sq(arrays), 0, None)  # rounding can give -1e-20
    curv = linalg.group_curvature(torch.as_tensor(H), torch.as_tensor(u_sq))
    spread = linalg.spread(curv)
    layer = summary.get("compare", {}).get("layer", {})
    out = {
        "off_block_H": layer.get("off_share_H", _off_share(H, summary)),
        "off_block_Hinv": layer.get("off_share_Hinv", _off_share(Hinv, summary)),
        "condition": summary.get("inverse", {}).get("condition", math.nan),
        "trace": float(np.trace(H)),
        "grad_norm": float(np.linalg.norm(g)),
        "spread": spread["log10_std"],
        "negative_curvature_groups": spread["negative"],
        "loss": summary.get("loss", math.nan),
        **_measure_scalars(summary.get("measures") or {}),
    }
    return {f"{PREFIX}/{k}": float(v) for k, v in out.items() if v is not None}


def _measure_scalars(measures: dict[str, Any]) -> dict[str, float]:
    """The stored measures' scalars (analyses with ``measures=``): lambda_max, tr(C), ..."""
    names = {
        "lmax": "lambda_max",
        "lmin": "lambda_min",
        "trace_total": "tr_H",
        "trace_total_se": "tr_H_se",
        "js0": "js0",
        "diagonal_share": "diagonal_share",
    }
    return {
        out: float(measures[key])
        for key, out in names.items()
        if isinstance(measures.get(key), (int, float))
    }


def _off_share(M: np.ndarray, summary: dict[str, Any]) -> float:
    """Share of Σ|M| outside the per-layer diagonal blocks (from the summary's layers)."""
    layers = summary.get("layers")
    if not layers:
        return math.nan
    same = np.equal.outer(np.array(layers, dtype=object), np.array(layers, dtype=object))
    total = np.abs(M).sum()
    return float(np.abs(M)[~same].sum() / total) if total > 0 else 0.0


IMAGE_TITLES = {
    "H": "pseudo-Hessian H-bar, normalised",
    "Hinv": "inverse of H-bar, normalised",
}


def heatmap_images(
    arrays: dict[str, np.ndarray], labels: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """``hessian/H`` and ``hessian/Hinv``, normalised, as labelled pictures (RGB arrays).

    Each is a figure drawn by :func:`hessian_lens.images.heatmap_image`: a title, the
    group names (``labels``; default their numbers) on both axes, lines between layers and
    a colour bar from -1 to 1.
    """
    out = {}
    for name in ("H", "Hinv"):
        shown = plots.transform(arrays[name], "normalized")
        names = list(labels) if labels is not None else [str(i) for i in range(len(shown))]
        picture = heatmap_image(shown, names, IMAGE_TITLES[name], zmax=1.0)
        out[f"{PREFIX}/{name}"] = picture.pixels
    return out


class TensorBoardLogger:
    """Scalars and images to a ``torch.utils.tensorboard.SummaryWriter``."""

    def __init__(self, writer) -> None:
        if isinstance(writer, str):
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(writer)
        self.writer = writer

    def log_record(self, record: Record, step: int) -> None:
        """Write the scalars and heatmaps of ``record`` at ``step`` and flush."""
        for tag, value in curvature_scalars(record.summary, record.arrays).items():
            if math.isfinite(value):
                self.writer.add_scalar(tag, value, step)
        for tag, img in heatmap_images(record.arrays, record.summary.get("labels")).items():
            self.writer.add_image(tag, img, step, dataformats="HWC")
        self.writer.flush()


#: W&B's x-axis for the curvature (:class:`WandbLogger`).
WANDB_STEP = f"{PREFIX}/step"


class WandbLogger:
    """Scalars and images to a Weights & Biases run (default: the active ``wandb.run``).

    ``hessian/*`` is plotted against its own step metric ``hessian/step`` (the step given
    to :meth:`log_record`), defined with ``run.define_metric``: the run's own step, which
    the training loop's per-batch ``wandb.log`` calls advance, is left to them (W&B drops
    a value logged at a step below its current one: only epoch 0 survived).
    """

    def __init__(self, run=None) -> None:
        import wandb

        self.wandb = wandb
        self.run = run if run is not None else wandb.run
        if self.run is None:
            raise ValueError("no active W&B run: call wandb.init() first, or pass run=")
        self.run.define_metric(WANDB_STEP, hidden=True)
        self.run.define_metric(f"{PREFIX}/*", step_metric=WANDB_STEP)

    def log_record(self, record: Record, step: int) -> None:
        """Log the scalars and heatmaps of ``record`` with ``hessian/step = step``."""
        data: dict[str, Any] = dict(curvature_scalars(record.summary, record.arrays))
        for tag, img in heatmap_images(record.arrays, record.summary.get("labels")).items():
            data[tag] = self.wandb.Image(img)
        self.run.log({**data, WANDB_STEP: step})


class MlflowLogger:
    """Scalars and images to an MLflow run (default: the active one, ``mlflow.start_run()``).

    Scalars are metrics ``hessian/<name>`` at the step; heatmaps go through
    ``log_image(key=..., step=...)`` (MLflow's images with steps, under ``images/``).
    """

    def __init__(self, run=None) -> None:
        import mlflow

        run = run if run is not None else mlflow.active_run()
        if run is None:
            raise ValueError("no active MLflow run: call mlflow.start_run() first, or pass run=")
        self.run_id = run.info.run_id
        self.client = mlflow.tracking.MlflowClient()
        self.metric = mlflow.entities.Metric

    def log_record(self, record: Record, step: int) -> None:
        """Log the scalars (one batch) and heatmaps of ``record`` at ``step``."""
        now = int(time.time() * 1000)
        scalars = curvature_scalars(record.summary, record.arrays).items()
        metrics = [self.metric(k, v, now, step) for k, v in scalars if math.isfinite(v)]
        self.client.log_batch(self.run_id, metrics=metrics)
        for tag, img in heatmap_images(record.arrays, record.summary.get("labels")).items():
            self.client.log_image(self.run_id, img, key=tag, step=step)


class AimLogger:
    """Scalars and images to an ``aim.Run``."""

    def __init__(self, run) -> None:
        import aim

        self.aim, self.run = aim, run

    def log_record(self, record: Record, step: int) -> None:
        """Track the scalars and heatmaps of ``record`` at ``step``."""
        for tag, value in curvature_scalars(record.summary, record.arrays).items():
            if math.isfinite(value):
                self.run.track(value, name=tag, step=step)
        for tag, img in heatmap_images(record.arrays, record.summary.get("labels")).items():
            self.run.track(self.aim.Image(img), name=tag, step=step)


def as_logger(obj) -> Logger:
    """A logger for ``obj``: one with ``log_record`` as is, else a known experiment tracker.

    Raises:
        TypeError: an object that is none of them, naming what is accepted.
    """
    if hasattr(obj, "log_record"):
        return obj
    kind = f"{type(obj).__module__}.{type(obj).__name__}"
    if hasattr(obj, "add_scalar") and hasattr(obj, "add_image"):
        return TensorBoardLogger(obj)
    if kind.startswith("wandb"):
        return WandbLogger(obj)
    if kind.startswith("mlflow"):
        return MlflowLogger(obj)
    if kind.startswith("aim"):
        return AimLogger(obj)
    raise TypeError(
        f"cannot log curvature to a {kind}: give a torch.utils.tensorboard.SummaryWriter, a "
        "wandb run, an MLflow run, an aim.Run, or an object with log_record(record, step)"
    )


def as_loggers(objs: Iterable | None) -> list[Logger]:
    """:func:`as_logger` of each (None: no logger)."""
    return [as_logger(o) for o in (objs or [])]
