"""``HessianLensCallback``: a Lightning ``Callback`` that records H̄ across training.

::

    from hessian_lens.integrations.lightning import HessianLensCallback

    cb = HessianLensCallback("runs/exp", analysis_batches, F.cross_entropy)
    lightning.Trainer(max_epochs=10, callbacks=[cb]).fit(module, train_loader)

The run folder is the one :class:`hessian_lens.Recorder` writes (it is one underneath):
the initialisation and the end of every epoch as safe checkpoints with the trainer's
logged metrics (``trainer.callback_metrics``) in ``run.json``, and ``g_bar``, ``H_bar`` and
the rest of the analysis every ``every_n_epochs`` epochs (or every ``every_n_steps``
optimizer steps) on the fixed ``analysis_data``. The dashboard opens it as it is written.

``loss_fn`` is applied to ``module(inputs)``; None when the module returns its own loss.
With ``step_gradient=True`` the direction u is the gradient of the training step just
taken (read in ``on_before_optimizer_step``, before the optimizer changes the weights; H̄
is then measured at the weights after that step), instead of the gradient on the
analysis data. The trainer's TensorBoard / W&B loggers also get the ``hessian/...``
scalars and heatmaps (``log_to_trainer``). The callback never stops training: an analysis
error is written to the run (``"state": "analysis failed"``) and logged once
(:class:`~hessian_lens.integrations.common.Guard`). Requires ``lightning`` (``pip install
lightning``); only this module imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch import Tensor

from hessian_lens.integrations.common import (
    Guard,
    Schedule,
    current_gradient,
    make_recorder,
    scalar_metrics,
)
from hessian_lens.recorder import Recorder


class HessianLensCallback(pl.Callback):
    """Record checkpoints, metrics and H̄ of a Lightning training run into a run folder.

    Args:
        run_dir: the run folder (a Recorder run folder: continued when it exists).
        analysis_data: the fixed batches H̄ is measured on (a list, or a loader that does
            not shuffle), as for :func:`hessian_lens.pseudo_hessian`.
        loss_fn: ``loss_fn(module(inputs), targets)``, a loss name, or None (the module's
            output is its loss).
        every_n_epochs: analyse at every N-th epoch end (checkpoints at each).
        every_n_steps: instead, record and analyse every N optimizer steps.
        step_gradient: u = the gradient of the training step just taken (see above).
        log_to_trainer: also send the ``hessian/...`` scalars and heatmaps to the
            trainer's loggers that take them (TensorBoard, W&B).
        rename: metric names to change on the way into ``run.json``, e.g.
            ``{"val_acc": "test_acc"}`` (the dashboard draws train/test loss/acc curves).
        **recorder_kwargs: passed to :class:`~hessian_lens.recorder.Recorder` (``name``,
            ``architecture``, ``partition``, ``loggers``, ``dtype``, ``order3``, ...).
    """

    def __init__(
        self,
        run_dir: str | Path,
        analysis_data,
        loss_fn=None,
        *,
        every_n_epochs: int = 1,
        every_n_steps: int | None = None,
        step_gradient: bool = False,
        log_to_trainer: bool = True,
        rename: Mapping[str, str] | None = None,
        **recorder_kwargs: Any,
    ) -> None:
        super().__init__()
        self.run_dir, self.data, self.loss_fn = Path(run_dir), analysis_data, loss_fn
        self.schedule = Schedule(every_n_epochs, every_n_steps)
        self.step_gradient, self.log_to_trainer = step_gradient, log_to_trainer
        self.rename = dict(rename or {})
        self.kwargs = recorder_kwargs
        self.recorder: Recorder | None = None
        self._u: list[Tensor] | None = None
        self._logged = -1  # the optimizer step last recorded
        self.guard = Guard()

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Open the run folder; record the initialisation when training starts from it."""
        self.guard(None, "opening the run", lambda: self._open(trainer, pl_module))
        if self.recorder is not None and trainer.global_step == 0:
            analyse = False if self.step_gradient else None  # no step yet, so no u
            work = lambda: self.recorder.log(0, step=0, analyse=analyse)  # noqa: E731
            self.guard(self.recorder, "recording", work)

    def _open(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        kwargs = dict(self.kwargs)
        loggers = list(kwargs.pop("loggers", None) or [])
        if self.log_to_trainer:
            loggers += _trainer_writers(trainer)
        self.recorder = make_recorder(
            self.run_dir, pl_module, self.loss_fn, self.data, self.schedule,
            loggers=loggers, **kwargs,
        )  # fmt: skip

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        """Keep the step's gradient when the state after this step will be analysed."""
        if self.recorder is not None and self.step_gradient and self._next_is_analysed(trainer):
            self._u = self.guard(self.recorder, "reading the gradient", self._gradient)

    def _gradient(self) -> list[Tensor]:
        return current_gradient(self.recorder)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """With ``every_n_steps``: record the state after this optimizer step when due."""
        step = trainer.global_step
        if self.recorder is None or not self.schedule.step_due(step) or step == self._logged:
            return  # (with gradient accumulation, several batches end at one step)
        self._logged = step
        epoch = trainer.current_epoch + (batch_idx + 1) / max(trainer.num_training_batches, 1)
        self._log(trainer, round(epoch, 3))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Without ``every_n_steps``: record the end of the epoch (validation included)."""
        if self.recorder is not None and not self.schedule.by_steps:
            self._log(trainer, trainer.current_epoch + 1)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Close the Recorder."""
        if self.recorder is not None:
            self.guard(self.recorder, "closing the run", self.recorder.close)

    # ------------------------------------------------------------------ internals
    def _next_is_analysed(self, trainer) -> bool:
        step = trainer.global_step + 1  # the step about to be taken
        if self.schedule.by_steps:
            return self.schedule.step_due(step)
        last = trainer.num_training_batches
        at_end = trainer.fit_loop.epoch_loop.batch_progress.current.ready >= last
        return at_end and self.schedule.epoch_analysed(trainer.current_epoch + 1)

    def _log(self, trainer: pl.Trainer, epoch: float) -> None:
        metrics = scalar_metrics(trainer.callback_metrics, self.rename)
        u, self._u = self._u, None
        step = trainer.global_step
        work = lambda: self.recorder.log(epoch, step=step, direction=u, **metrics)  # noqa: E731
        self.guard(self.recorder, "recording", work)


def _trainer_writers(trainer: pl.Trainer) -> list:
    """The experiments of the trainer's loggers that take scalars and images."""
    out = []
    for logger in trainer.loggers:
        kind = type(logger).__name__
        if kind in ("TensorBoardLogger", "WandbLogger"):
            out.append(logger.experiment)
    return out
