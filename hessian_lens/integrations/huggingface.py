"""``HessianLensCallback``: a ``transformers.TrainerCallback`` that records H̄ across training.

::

    from hessian_lens.integrations.huggingface import HessianLensCallback

    analysis = [tokenizer(texts[:16], return_tensors="pt", padding=True) | {"labels": ...}]
    cb = HessianLensCallback("runs/gpt2-tiny", analysis)  # the model's own loss
    Trainer(model, args, train_dataset=ds, callbacks=[cb]).train()

The run folder is the one :class:`hessian_lens.Recorder` writes (it is one underneath):
the initialisation and the end of every epoch (or every ``every_n_steps`` optimizer
steps) as safe checkpoints, the trainer's logged numbers (``state.log_history``: ``loss``
as ``train_loss``, ``eval_loss`` as ``test_loss``, ...) in ``run.json``, and the analysis
on the fixed ``analysis_data``: batches as the model takes them (Mappings of keyword
arguments with ``labels``, :mod:`hessian_lens.batches`). ``loss_fn`` None (the default):
the model's own loss (``outputs.loss``). The numbers in ``run.json`` are those the trainer
had logged when the record was taken (it logs a step's loss just after the callback).

With ``step_gradient=True`` the direction u is the gradient of the training step just
taken, as the optimizer sees it (after clipping), read in ``on_pre_optimizer_step``
(the Trainer zeroes it before ``on_step_end``): a copy is kept, the size of the model.
The callback never stops training: an analysis error is written to the run (``"state":
"analysis failed"``) and logged once (:class:`~hessian_lens.integrations.common.Guard`).
Requires ``transformers``; only this module imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor
from transformers import TrainerCallback

from hessian_lens.integrations.common import (
    Guard,
    Schedule,
    current_gradient,
    make_recorder,
    scalar_metrics,
)
from hessian_lens.recorder import Recorder

RENAME = {"loss": "train_loss", "eval_loss": "test_loss", "eval_accuracy": "test_acc"}
SKIP = ("epoch", "step", "total_flos")


class HessianLensCallback(TrainerCallback):
    """Record checkpoints, metrics and H̄ of a Hugging Face ``Trainer`` run into a run folder.

    Args:
        run_dir: the run folder (a Recorder run folder: continued when it exists).
        analysis_data: the fixed batches H̄ is measured on (a list of Mappings of model
            keyword arguments, or ``(inputs, targets)`` pairs with ``loss_fn``).
        loss_fn: None (the model's own loss), or ``loss_fn(outputs, targets)``.
        every_n_epochs: analyse at every N-th epoch end (checkpoints at each).
        every_n_steps: instead, record and analyse every N optimizer steps.
        step_gradient: u = the gradient of the training step just taken (see above).
        rename: more metric names to change (on top of :data:`RENAME`).
        **recorder_kwargs: passed to :class:`~hessian_lens.recorder.Recorder` (``name``,
            ``architecture``, ``partition``, ``loggers``, ``dtype``, ...).
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
        rename: Mapping[str, str] | None = None,
        **recorder_kwargs: Any,
    ) -> None:
        self.run_dir, self.data, self.loss_fn = Path(run_dir), analysis_data, loss_fn
        self.schedule = Schedule(every_n_epochs, every_n_steps)
        self.step_gradient = step_gradient
        self.rename = {**RENAME, **(rename or {})}
        self.kwargs = recorder_kwargs
        self.recorder: Recorder | None = None
        self._u: list[Tensor] | None = None
        self.guard = Guard()

    def on_train_begin(self, args, state, control, model=None, **kwargs) -> None:
        """Open the run folder; record the initialisation when training starts from it."""
        self.guard(None, "opening the run", lambda: self._open(model))
        if self.recorder is not None and state.global_step == 0:
            analyse = False if self.step_gradient else None  # no step yet, so no u
            work = lambda: self.recorder.log(0, step=0, analyse=analyse)  # noqa: E731
            self.guard(self.recorder, "recording", work)

    def _open(self, model) -> None:
        if model is None:
            raise ValueError("the Trainer passed no model to the callback; cannot record")
        self.recorder = make_recorder(
            self.run_dir, model, self.loss_fn, self.data, self.schedule, **self.kwargs
        )

    def on_pre_optimizer_step(self, args, state, control, **kwargs) -> None:
        """Keep a copy of the step's gradient (``step_gradient``)."""
        if self.step_gradient and self.recorder is not None:
            work = lambda: current_gradient(self.recorder)  # noqa: E731
            self._u = self.guard(self.recorder, "reading the gradient", work)

    def on_step_end(self, args, state, control, **kwargs) -> None:
        """With ``every_n_steps``: record the state after this optimizer step when due."""
        if self.recorder is not None and self.schedule.step_due(state.global_step):
            self._log(state, round(state.epoch, 3))

    def on_epoch_end(self, args, state, control, **kwargs) -> None:
        """Without ``every_n_steps``: record the end of the epoch."""
        if self.recorder is not None and not self.schedule.by_steps:
            self._log(state, round(state.epoch))

    def on_train_end(self, args, state, control, **kwargs) -> None:
        """Close the Recorder."""
        if self.recorder is not None:
            self.guard(self.recorder, "closing the run", self.recorder.close)

    def _log(self, state, epoch: float) -> None:
        latest: dict[str, Any] = {}
        for entry in state.log_history:
            latest.update({k: v for k, v in entry.items() if k not in SKIP})
        u, self._u = self._u, None
        metrics, step = scalar_metrics(latest, self.rename), state.global_step
        work = lambda: self.recorder.log(epoch, step=step, direction=u, **metrics)  # noqa: E731
        self.guard(self.recorder, "recording", work)
