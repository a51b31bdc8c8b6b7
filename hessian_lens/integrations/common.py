"""What the Lightning and Hugging Face callbacks share: when to record, u, metrics.

Both callbacks drive one :class:`~hessian_lens.recorder.Recorder`, so their run folders are
the Recorder's, to the byte: ``run.json``, safe ``epoch_NNNN.pt`` checkpoints and the
analyses in ``analysis.sqlite``.

A callback never kills training (:class:`Guard`): an analysis error is written to the run
(``"state": "analysis failed"``, ``"error"``) and logged once, and the run goes on with
checkpoints and metrics; any other error of the callback (a run folder it cannot write) is
logged once and the callback stops recording.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hessian_lens.recorder import Recorder


@dataclass(frozen=True)
class Schedule:
    """When to record: every ``every_n_epochs`` epochs, or every ``every_n_steps`` steps.

    With steps, a checkpoint and an analysis every ``every_n_steps`` optimizer steps (the
    epoch then is a fraction); with epochs, a checkpoint at every epoch's end and an
    analysis every ``every_n_epochs``-th. The initialisation (epoch 0) is always recorded.
    """

    every_n_epochs: int = 1
    every_n_steps: int | None = None

    def __post_init__(self) -> None:
        for name in ("every_n_epochs", "every_n_steps"):
            value = getattr(self, name)
            if value is None and name == "every_n_steps":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    @property
    def by_steps(self) -> bool:
        """Whether recording follows optimizer steps rather than epochs."""
        return self.every_n_steps is not None

    def step_due(self, global_step: int) -> bool:
        """Whether the state after optimizer step ``global_step`` (1-based) is recorded."""
        return self.by_steps and global_step > 0 and global_step % self.every_n_steps == 0

    def recorder_every(self) -> int:
        """The Recorder's ``every``: analyse every call with steps, every N-th with epochs."""
        return 1 if self.by_steps else self.every_n_epochs

    def epoch_analysed(self, epoch: int) -> bool:
        """Whether the record at the end of whole epoch ``epoch`` has an analysis."""
        return epoch % self.recorder_every() == 0


LOG = logging.getLogger("hessian_lens")


def make_recorder(run_dir, model: nn.Module, loss_fn, data, schedule: Schedule, **kw) -> Recorder:
    """The Recorder a callback writes through (``every`` from the schedule; keep going)."""
    return Recorder(
        run_dir, model, loss_fn, data, every=schedule.recorder_every(), keep_going=True, **kw
    )


class Guard:
    """Runs a callback's work so that no error of it reaches the trainer.

    An error in the Recorder's analysis is handled by the Recorder itself (``keep_going``);
    anything else (the run folder cannot be written, a bad argument) is written to the run
    when there is one, logged once, and the callback stops (:attr:`stopped`).
    """

    def __init__(self) -> None:
        self.stopped: str | None = None

    def __call__(self, recorder: Recorder | None, what: str, work: Callable[[], Any]) -> Any:
        """``work()``, or ``None`` when it raised (or the callback has stopped)."""
        if self.stopped is not None:
            return None
        try:
            return work()
        except Exception as err:  # never into the trainer
            self.stopped = f"{type(err).__name__}: {str(err).strip() or type(err).__name__}"
            LOG.error(
                "Hessian Lens: the callback stopped recording (%s failed: %s); training goes on",
                what,
                self.stopped,
            )
            if recorder is not None:
                with contextlib.suppress(Exception):  # the run folder itself may have failed
                    recorder.fail(err, log=False)
            return None


def current_gradient(recorder: Recorder) -> list[Tensor]:
    """A copy of the gradients now in ``.grad``, one per group parameter, in partition order.

    A parameter without a gradient (unused in this step) contributes zeros.
    """
    params = dict(recorder.model.named_parameters())
    part = recorder._partition()
    out = []
    for name in part.names:
        p = params[name]
        out.append(p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
    return out


def scalar_metrics(values: Mapping[str, Any], rename: Mapping[str, str] | None = None) -> dict:
    """The finite numbers among ``values`` (0-d tensors read), with names renamed."""
    out = {}
    for key, value in values.items():
        if isinstance(value, Tensor):
            if value.numel() != 1:
                continue
            value = value.detach().cpu().item()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[(rename or {}).get(key, key)] = value
    return out
