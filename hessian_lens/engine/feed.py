"""The engine's one data loop: batches to weighted micro-batches on the device.

With ``W_b`` the weight of micro-batch ``b`` (its samples for a mean, its valid targets for
a cross-entropy with ignored targets, 1 for a sum) the whole data's loss is
``L = sum_b W_b L_b / Z`` with ``Z = sum_b W_b`` for a mean and ``Z = 1`` for a sum
(:mod:`hessian_lens.batches`); :class:`Totals` keeps ``sum_b n_b`` and ``Z``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hessian_lens import batches as B
from hessian_lens.engine.options import Contract
from hessian_lens.engine.state import State, to_state
from hessian_lens.memory import ModelMemo, identity
from hessian_lens.partition import Partition

__all__ = ["Totals", "check_direction", "micro_batches", "narrow_targets", "prepare"]

VERIFIED = ModelMemo()  # (model, loss, shapes) whose known reduction was checked


def micro_batches(
    batches: Iterable, state: State, contract: Contract, *, planner=None, tick=None, prints=None
) -> Iterator[tuple[object, object, int, float]]:
    """The one data loop: ``(inputs, targets, n, W)`` on the device, per micro-batch.

    Each batch is fingerprinted (``prints``), its loss's reduction verified (once), and it
    is cut into micro-batches that fit (``planner``) along its batch dimension; empty
    micro-batches and those with nothing to average are skipped; ``tick()`` per batch.
    """
    dims = contract.dims
    for batch in batches:
        x, y, samples = prepare(batch, state, contract)
        if prints is not None:
            prints.observe(x, y, samples)
        size = planner.micro_batch(x, y, samples) if planner is not None else samples
        _verify(contract, state, x, y, samples, limit=max(size, 2))
        for start in range(0, samples, max(size, 1)):
            stop = min(start + size, samples)
            mx, my = B.narrow(x, dims.inputs, start, stop), narrow_targets(y, dims, start, stop)
            weight = contract.loss.weight(my, stop - start)
            if weight:
                yield mx, my, stop - start, weight
        if tick is not None:
            tick()


def _verify(contract: Contract, st: State, x, y, samples: int, limit: int) -> None:
    """Check the loss's reduction once, on the first ``limit`` samples of a batch.

    Raises:
        ValueError: the reduction is unknown and cannot be checked in train mode.
    """
    loss = contract.loss
    if loss.verified or samples < 2:
        return
    if st.coupled:
        if loss.reduction is None:
            raise ValueError(
                "in train mode (batch statistics, dropout) the loss's reduction cannot be "
                "checked on halves of a batch: declare reduction='mean' or 'sum'"
            )
        loss.verified = True
        return
    n, dims = min(samples, limit), contract.dims
    head = B.narrow(x, dims.inputs, 0, n), narrow_targets(y, dims, 0, n)
    if loss.reduction is None:  # to be found: on this batch's values
        loss.verify(lambda a, b: loss(st.forward(a), b), *head, dims, n)
        return

    def check() -> bool:
        loss.verify(lambda a, b: loss(st.forward(a), b), *head, dims, n)
        return True

    loss.verified = VERIFIED.get(st.model, _verify_key(loss, dims, st, head), check)


def _verify_key(loss: B.LossContract, dims: B.BatchDims, st: State, head: tuple) -> tuple:
    """What a known reduction's check depends on: loss, dims, dtype, mode and shapes.

    A loss read from a torch loss or declared is a mean or a sum whatever the values; its
    check finds models that couple samples (attention across the batch dimension, a wrong
    ``batch_dim``), a property of the model's structure and the batch's shapes.
    """
    shapes = tuple((tuple(t.shape), t.dtype) for t in B.tree_leaves(head))
    fn = identity(loss.fn)
    return ("verified", fn, loss.reduction, loss.reduce_output, dims, st.device, st.dtype, shapes)


def narrow_targets(y, dims: B.BatchDims, start: int, stop: int):
    """Samples ``start:stop`` of the targets (``None``: the model computes its own loss)."""
    return None if y is None else B.narrow(y, dims.targets, start, stop)


def prepare(batch, st: State, contract: Contract) -> tuple:
    """``(inputs, targets, samples)`` of a batch, moved and cast for the working state."""
    x, y = B.split_batch(batch)
    samples = B.count_samples(x, y, contract.dims)
    return (
        B.tree_map(lambda t: to_state(t, st), x),
        B.tree_map(lambda t: to_state(t, st), y),
        samples,
    )


def check_direction(direction, part: Partition, params: Sequence[Tensor]) -> list[Tensor]:
    """The direction as one tensor per covered parameter, cast like the parameters."""
    if isinstance(direction, Mapping):
        missing = [n for n in part.names if n not in direction]
        if missing:
            raise ValueError(f"direction has no tensor for parameters {missing}")
        direction = [direction[n] for n in part.names]
    direction = list(direction)
    if len(direction) != len(params):
        raise ValueError(
            f"direction has {len(direction)} tensors, the partition covers "
            f"{len(params)} parameters ({part.names})"
        )
    out = []
    for name, d, p in zip(part.names, direction, params, strict=True):
        if tuple(d.shape) != tuple(p.shape):
            raise ValueError(
                f"direction for '{name}' has shape {tuple(d.shape)}, the "
                f"parameter has {tuple(p.shape)}"
            )
        out.append(d.detach().to(p.device, p.dtype))
    return out


@dataclass
class Totals:
    """Running sample count and ``sum_b W_b`` (what a mean divides by)."""

    samples: int = 0
    weight: float = 0.0

    def add(self, samples: int, weight: float) -> None:
        """Count one micro-batch."""
        self.samples += samples
        self.weight += weight

    def tensors(self) -> list[Tensor]:
        """``[samples, weight]`` as float64 tensors (what ranks all-reduce)."""
        return [_count(self.samples), torch.tensor(self.weight, dtype=torch.float64)]

    @classmethod
    def of(cls, tensors: Sequence[Tensor]) -> Totals:
        """From reduced :meth:`tensors`; a ValueError when no rank had a sample."""
        return cls(_samples(tensors[0]), float(tensors[1]))

    def normaliser(self, reduction: str | None) -> float:
        """``Z``: ``sum_b W_b`` for a mean, 1 for a sum.

        Raises:
            ValueError: a mean over no counted sample (every target ignored), or an
                unknown reduction.
        """
        if reduction == "sum":
            return 1.0
        if reduction is None:
            raise ValueError(
                "every batch holds a single sample, so whether the loss is a mean or a sum "
                "over samples cannot be checked: declare reduction='mean' or 'sum'"
            )
        if not self.weight > 0:
            raise ValueError(
                "the loss is a mean over no sample: every target is ignored (ignore_index) "
                "or has zero class weight"
            )
        return self.weight


def _count(n: int) -> Tensor:
    return torch.tensor(float(n), dtype=torch.float64)


def _samples(n: Tensor) -> int:
    """The reduced sample count; a ValueError when no rank had a sample."""
    samples = round(float(n))
    if samples == 0:
        raise ValueError("data holds no sample: give a batch or a non-empty loader")
    return samples
