"""The engine's one data loop: batches to weighted micro-batches on the device.

With ``W_b`` the weight of micro-batch ``b`` (what its loss divides by: its samples, its
valid targets for a cross-entropy with ignored targets, a declared normalizer; 1 for a
sum, :mod:`hessian_lens.batches`) the whole data's loss is ``L = sum_b W_b L_b / Z`` with
``Z = sum_b W_b`` for a mean and ``Z = 1`` for a sum; :class:`Totals` keeps ``sum_b n_b``
and ``Z``. Every forward pass of batch ``b`` runs with the random generators seeded
``seed + b`` (:meth:`State.forward`), so pass 1 and pass 2 see the same dropout masks.

A number never depends on how the data are cut: BatchNorm with batch statistics over
several batches is refused (each batch would be normalised by its own statistics), and so
is a random forward cut into micro-batches (its masks would change with the memory budget).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hessian_lens import batches as B
from hessian_lens import normalizers as N
from hessian_lens.engine.options import Contract
from hessian_lens.engine.state import State, batch_statistics, random_forward, to_state
from hessian_lens.memory import MemoryGuardError, ModelMemo, identity
from hessian_lens.partition import Partition

__all__ = ["Totals", "check_direction", "micro_batches", "narrow_targets", "prepare"]

VERIFIED = ModelMemo()  # (model, loss, shapes) whose known weight and reduction were checked
Cuts = list[tuple[int, int]]


def micro_batches(
    batches: Iterable, state: State, contract: Contract, *, planner=None, tick=None, prints=None
) -> Iterator[tuple[object, object, int, float]]:
    """The one data loop: ``(inputs, targets, n, W)`` on the device, per micro-batch.

    Each batch is fingerprinted (``prints``), cut into micro-batches that fit (``planner``)
    along its batch dimension and weighted by what its loss divides by (:func:`_weights`);
    micro-batches with nothing to average are skipped; ``tick()`` per batch. A second pass
    that saw fewer batches raises :class:`~hessian_lens.batches.DataChangedError`.
    """
    dims = contract.dims
    contract.loss.bind(state.model)
    for index, batch in enumerate(batches):
        x, y, samples = prepare(batch, state, contract)
        _one_cut_only(state, index)
        if prints is not None:
            prints.observe(x, y, samples)
        if samples == 0:  # an empty batch: nothing to weigh
            if tick is not None:
                tick()
            continue
        state.batch = index
        head = B.narrow(x, dims.inputs, 0, min(2, samples))
        if index == 0:
            _note_seeds(state, head)
        size = planner.micro_batch(x, y, samples) if planner is not None else samples
        if size < samples:
            _splittable(state, head, planner.plan, samples, size)
        cuts = [(a, min(a + size, samples)) for a in range(0, samples, max(size, 1))]
        weights = _weights(contract, state, index, x, y, cuts)
        for (start, stop), weight in zip(cuts, weights, strict=True):
            if weight:
                mx = B.narrow(x, dims.inputs, start, stop)
                yield mx, narrow_targets(y, dims, start, stop), stop - start, weight
        if tick is not None:
            tick()
    if prints is not None:
        prints.finish()
    _note_precision(state, contract.loss)


def _one_cut_only(st: State, index: int) -> None:
    """Refuse a second batch when BatchNorm normalises with each batch's own statistics."""
    if index >= 1 and batch_statistics(st.model, st.train_mode):
        raise ValueError(
            "BatchNorm with batch statistics (train mode, or no running statistics) "
            "normalises each batch by its own mean and variance, so the result would depend "
            "on how the data are cut into batches: pass one batch holding all the samples, "
            "or analyse in eval mode (train_mode=False, running statistics)"
        )


def _splittable(st: State, head, plan, samples: int, size: int) -> None:
    """Refuse to cut a batch whose forward is random: the masks would change with the cut.

    ``head``: the batch's first two samples' inputs, screened for random operations;
    ``plan``: the memory plan that cut the batch into micro-batches of ``size``.

    Raises:
        MemoryGuardError: the batch does not fit and its forward draws random numbers.
    """
    if not (st.coupled or random_forward(st, head)):
        return
    need = f" ({plan.describe(samples)})" if plan is not None else ""
    raise MemoryGuardError(
        f"a batch of {samples} samples does not fit the memory budget{need}, and the "
        "model's forward is random (dropout in train mode, or a random operation): its "
        "masks are drawn per batch with a recorded seed, so the engine cannot cut the batch "
        f"into micro-batches without changing them. Would fit: batches of {size} samples, "
        "or eval mode (train_mode=False)"
    )


def _note_seeds(st: State, head) -> None:
    """Note the recorded seeds of a random forward in train mode (dropout)."""
    if not st.train_mode or not random_forward(st, head):
        return
    note = (
        f"train mode: random operations (dropout) drew from generators seeded {st.seed} + b "
        f"for batch b (seed={st.seed}), the same in every pass; the caller's generators were "
        "left as they were"
    )
    if note not in st.notes:
        st.notes.append(note)


def _note_precision(st: State, loss: B.LossContract) -> None:
    """Note a loss computed in a lower precision than the analysis (a model's own cast)."""
    dtype = loss.dtype
    if dtype is None or not dtype.is_floating_point or dtype.itemsize >= st.dtype.itemsize:
        return
    note = (
        f"the loss was computed in {str(dtype)[6:]} (the model or the loss casts to it), not "
        f"in {str(st.dtype)[6:]}: the results carry {str(dtype)[6:]} rounding"
    )
    if note not in st.notes:
        st.notes.append(note)


# ---------------------------------------------------------------------------- weights
def _weights(contract: Contract, st: State, index: int, x, y, cuts: Cuts) -> list[float]:
    """``W`` of every micro-batch of a batch (:mod:`hessian_lens.batches`, the rule).

    A known weight comes from the batch alone; a Hugging Face model's label rule is first
    confirmed against the call its model makes (once per structure and shapes); any other
    loss is observed on every micro-batch.
    """
    loss = contract.loss
    if loss.kind == "labels":
        if _labels_confirmed(contract, st, x, y, cuts):
            loss.reduction = loss.reduction or "mean"  # a mean cross-entropy, or over samples
        else:
            loss.kind = "observe"
    if loss.kind == "observe":
        return _seen_weights(contract, st, index, x, y, cuts)
    _check_once(contract, st, x, y, cuts, lambda seen, a, b, n: loss.weight(a, b, n))
    return [loss.weight(*_cut(contract, x, y, a, b), b - a) for a, b in cuts]


def _seen_weights(contract: Contract, st: State, index: int, x, y, cuts: Cuts) -> list[float]:
    """Weights of a loss seen on each micro-batch; checked on this batch unless exact.

    Pass 2 reuses pass 1's (the fingerprints vouch that the batch is the same).
    """
    loss = contract.loss
    if index in loss.seen and loss.seen[index][0] == cuts:
        return loss.seen[index][1]
    weights, exact = [], True
    for a, b in cuts:
        mx, my = _cut(contract, x, y, a, b)
        with torch.no_grad():
            seen = N.observe(lambda mx=mx, my=my: loss(st.forward(mx), my))
        weight, known = loss.weigh(seen, b - a)
        if weight and not torch.isfinite(seen.value).all():
            raise ValueError(
                f"the loss is not finite ({float(seen.value)}) on samples {a}..{b - 1} of batch "
                f"{index + 1}, which hold {weight:g} valid targets or samples: check the inputs "
                "for NaN or infinite values, and the model's weights"
            )
        weights.append(weight)
        exact = exact and known
    weigh = lambda seen, a, b, n: loss.weigh(seen, n)[0]  # noqa: E731
    if exact:
        _check_once(contract, st, x, y, cuts, weigh)
    else:
        _check_batch(contract, st, x, y, cuts, weigh)
    weights = [1.0 if loss.reduction == "sum" else w for w in weights]
    loss.seen[index] = (cuts, weights)
    return weights


def _labels_confirmed(contract: Contract, st: State, x, y, cuts: Cuts) -> bool:
    """Whether a Hugging Face model's own loss divides by what its labels say.

    Its first micro-batch is run once per model structure and shapes: the loss must be
    the output of a mean cross-entropy over the labels' weight, or, with no such call,
    a mean over samples (regression, multi-label).
    """
    loss = contract.loss
    a, b = cuts[0]
    hx, hy = _cut(contract, x, y, a, b)

    def confirm() -> bool:
        with torch.no_grad():
            seen = N.observe(lambda: loss(st.forward(hx), hy))
        rule, call = loss.weight(hx, hy, b - a), seen.explained
        if call is None:
            return not seen.calls and rule == b - a
        return call.reduction == (loss.reduction or "mean") and call.weight == rule

    return VERIFIED.get(st.model, ("labels", *_key(contract, st, (hx, hy))), confirm)


def _cut(contract: Contract, x, y, start: int, stop: int) -> tuple:
    return B.narrow(x, contract.dims.inputs, start, stop), narrow_targets(
        y, contract.dims, start, stop
    )


# ---------------------------------------------------------------------------- checks
def _head(contract: Contract, x, y, cuts: Cuts) -> tuple[object, object, int]:
    """The first micro-batch of a batch (at least 2 samples when it has them)."""
    samples = cuts[-1][1]
    n = min(samples, max(cuts[0][1], 2))
    return (*_cut(contract, x, y, 0, n), n)


def _check_once(contract: Contract, st: State, x, y, cuts: Cuts, weigh) -> None:
    """Check a known weight and reduction on halves, once per model, loss and shapes.

    The weight is known, so the check depends only on the model's structure: it finds
    models that couple samples (attention across the batch dimension, a wrong
    ``batch_dim``). In train mode with dropout or batch statistics halves cannot be
    compared: a reduction still unknown is refused.
    """
    loss = contract.loss
    hx, hy, n = _head(contract, x, y, cuts)
    if n < 2:
        return
    if st.coupled:
        _coupled(loss)
        return

    def check() -> bool:
        return _check(contract, st, hx, hy, n, weigh)

    VERIFIED.get(st.model, ("verified", *_key(contract, st, (hx, hy))), check)


def _check_batch(contract: Contract, st: State, x, y, cuts: Cuts, weigh) -> None:
    """Check the reduction on this batch's halves (a loss whose weight is not exact)."""
    hx, hy, n = _head(contract, x, y, cuts)
    if n < 2:
        return
    if st.coupled:
        _coupled(contract.loss)
        return
    _check(contract, st, hx, hy, n, weigh)


def _check(contract: Contract, st: State, hx, hy, n: int, weigh) -> bool:
    """Check on halves; a random forward cannot be checked: a known reduction stands.

    Returns whether the check ran (``False``: random, and the reduction was declared).

    Raises:
        ValueError: the check failed on a deterministic forward, or the forward is random
            and the reduction unknown.
    """
    loss = contract.loss
    try:
        loss.check(lambda a, b: loss(st.forward(a), b), hx, hy, contract.dims, n, weigh)
    except ValueError as err:
        if not random_forward(st, hx):
            raise
        if loss.reduction is None or loss.source == "verified":
            raise ValueError(
                "the model's forward is random (a random operation ran: dropout, randn, ...), "
                "so a batch's loss cannot be compared with its halves' to check what the loss "
                "divides by: declare reduction='mean' or 'sum' (and normalizer= for a mean "
                "over valid targets), or make the forward deterministic"
            ) from err
        return False
    return True


def _coupled(loss: B.LossContract) -> None:
    if loss.reduction is None:
        raise ValueError(
            "in train mode (batch statistics, dropout) a batch's loss cannot be compared with "
            "its halves' to check its reduction: declare reduction='mean' or 'sum'"
        )


def _key(contract: Contract, st: State, head: tuple) -> tuple:
    """What a known weight's check depends on: loss, weight, dims, dtype, mode and shapes.

    A loss read from a torch loss or declared is a mean or a sum whatever the values; its
    check finds models that couple samples (attention across the batch dimension, a wrong
    ``batch_dim``), a property of the model's structure and the batch's shapes.
    """
    loss = contract.loss
    shapes = tuple((tuple(t.shape), t.dtype) for t in B.tree_leaves(head))
    fn = identity(loss.fn)
    rule = (loss.kind, identity(loss.normalizer), loss.shift)
    reduction = (loss.reduction, loss.reduce_output)
    return (fn, rule, reduction, contract.dims, st.device, st.dtype, shapes)


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
