"""The loop back end: reverse over reverse autograd, pruned by symmetry.

``D^(k+1)[prefix, s']`` for all ``s' >= s`` is one backward pass of ``D^(k)[prefix, s]``
taken only w.r.t. the groups ``s..S`` (symmetry gives the rest), so autograd skips every
layer before ``s``: row s of H̄ costs a backward pass through the layers from s on.

H̄ alone (order 2, no diagonal of order 3) on a partition that splits a tensor into
groups (heads, neurons) is differentiated along the groups
(:mod:`~hessian_lens.engine.directional`: per-group scalars, no weight-shaped gradients,
the rows of one fused tensor vectorised); the other orders, and partitions of whole
tensors, w.r.t. the parameters (there the per-group scalars only add work: LeNet-5 at
batch 32 took 1.51x the pruned floor along the groups against 1.2x without).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from hessian_lens.engine.accumulate import Accumulator, Spec
from hessian_lens.engine.autodiff import differentiate
from hessian_lens.engine.directional import (
    Directional,
    add_directional,
    directional_rows,
    linear_only,
    row_batches,
)
from hessian_lens.engine.options import LossFn
from hessian_lens.engine.state import State
from hessian_lens.memory import ROWS_MAX, PeakMeter

__all__ = ["LoopBackEnd", "add_from_gradient", "directional"]


def directional(spec: Spec, partition) -> bool:
    """Whether H̄ is computed along the groups: H̄ alone, some tensor split into groups."""
    if not (spec.full == 2 and spec.diag == 0):
        return False
    return any(not isinstance(a, int) for a in partition.assignment)


class LoopBackEnd:
    """Reverse over reverse autograd, pruned by symmetry (module docstring)."""

    name = ran = "loop"

    def __init__(self, loss_fn: LossFn, chunk_size: int | None = None) -> None:
        self.loss_fn = loss_fn
        self.chunk_size = chunk_size  # rows per vectorised pass (None: planned, else 1)
        self.tick = None  # tick(r) once the rows before r of a micro-batch are in (H̄ alone)
        self.first_row = 0  # H̄ alone: the rows before it are in the sums already (resumed)

    def product(self, acc: Accumulator, x, y, weight: float) -> Tensor:
        """Add ``weight *`` this micro-batch's summaries into ``acc``; return its loss."""
        if directional(acc.spec, acc.partition):
            return add_directional(
                acc,
                self.loss_fn,
                (x, y, weight),
                rows=self.chunk_size or 1,
                first=self.first_row,
                tick=self.tick,
            )
        loss = self.loss_fn(acc.state.forward(x), y)
        grads = differentiate(loss, acc.state.params, create_graph=acc.spec.top > 1)
        if acc.direction is None:
            acc.direction = [g.detach() for g in grads]
        add_from_gradient(acc, grads, weight=weight)
        return loss.detach()

    def chunks(self, S: int) -> list[int | None]:
        """The given rows per pass, else ``None`` (planned after the micro-batch: :meth:`rows`)."""
        return [self.chunk_size]

    def rows(self, spec: Spec, partition) -> int:
        """The most rows of H̄ that may share a vectorised pass (the planner picks how many).

        The longest run of rows reaching the same parameters (the heads of one fused
        tensor), at most :data:`~hessian_lens.memory.ROWS_MAX`; 1 unless H̄ alone.
        """
        if not directional(spec, partition):
            return 1
        return max(len(r) for r in row_batches(partition, range(len(partition)), ROWS_MAX))

    def screen(self, state: State, x) -> None:
        """Nothing to decide before planning (the vmap back end may fall back here)."""

    def probe(self, *, state, partition, spec, x, y, chunk, meter: PeakMeter) -> list[int]:
        """Peak bytes after each order of the widest chain of passes.

        The chain is the gradient, then ``D^(k)[0, .., 0, s]`` for k = 2..top, every pass
        w.r.t. all parameters (row 0 of every order). For H̄ alone: the gradient along the
        groups, then row 0, then (``chunk`` rows) rows 0 and 1 in one vectorised pass.
        """
        if directional(spec, partition):
            return self._probe_directional(state, partition, x, y, chunk or 1, meter)
        loss = self.loss_fn(state.forward(x), y)
        grads = differentiate(loss, state.params, create_graph=spec.top > 1)
        u = [g.detach() for g in grads]
        which = list(range(len(state.params)))
        gu, peaks = [g * v for g, v in zip(grads, u, strict=True)], [meter.peak()]
        for k in range(2, spec.top + 1):
            phi = partition.group_sum(0, gu, which)
            grads = differentiate(phi, state.params, create_graph=k < spec.top)
            gu = [g * v for g, v in zip(grads, u, strict=True)]
            partition.reduce(gu, which)
            peaks.append(meter.peak())
        return peaks

    def _probe_directional(self, state, partition, x, y, rows: int, meter) -> list[int]:
        loss = self.loss_fn(state.forward(x), y)
        u = [g.detach() for g in differentiate(loss, state.params)]
        del loss
        d = Directional(state, partition, u, linear_only(state, x))
        grads = d.gradient(d.loss(self.loss_fn, x, y))
        peaks = [meter.peak()]
        directional_rows(d, grads, [0])
        peaks.append(meter.peak())
        if rows > 1:
            directional_rows(d, grads, [0] * rows)
            peaks.append(meter.peak())
        return peaks


def add_from_gradient(acc: Accumulator, grads: Sequence[Tensor], *, weight: float) -> None:
    """Add ``weight *`` the summaries of a loss into ``acc`` (loop back end).

    ``grads`` is the loss's gradient w.r.t. ``acc.state.params`` taken with
    ``create_graph=True``.
    """
    gu = [g * v for g, v in zip(grads, acc.direction, strict=True)]
    _descend(acc, prefix=(), gu=gu, which=list(range(len(grads))), weight=weight)


def _descend(
    acc: Accumulator, *, prefix: tuple[int, ...], gu: list[Tensor], which: list[int], weight
) -> None:
    """Record ``D^(k)[prefix, s]`` from ``gu``, then recurse into order k + 1.

    ``gu = grad(D^(k-1)[prefix]) * u`` on the parameters ``which``.

    Full orders record every ``s >= prefix[-1]`` (the rest follows by symmetry); beyond
    ``spec.full`` only the diagonal ``s = prefix[-1]`` is followed, w.r.t. group s alone.
    """
    spec, part, k = acc.spec, acc.partition, len(prefix) + 1
    last = prefix[-1] if prefix else 0
    if k <= spec.full:
        acc.full[k][prefix][last:] += weight * part.reduce(gu, which).detach()[last:]
        children = range(last, len(part))
    else:
        acc.diag[k][last] += weight * part.group_sum(last, gu, which).detach()
        children = [last]
    if k == spec.top:
        return
    for s in children:
        if k + 1 > spec.full and any(p != s for p in prefix):
            continue
        nxt, child = _next_pass(acc, s=s, gu=gu, which=which, order=k + 1)
        _descend(acc, prefix=(*prefix, s), gu=child, which=nxt, weight=weight)


def _next_pass(
    acc: Accumulator, *, s: int, gu: list[Tensor], which: list[int], order: int
) -> tuple[list[int], list[Tensor]]:
    """One backward pass: ``grad(sum_{p in I_s} gu_p) * u``.

    It is taken w.r.t. the groups ``s..S`` for a full order (symmetry), w.r.t. group s
    alone for a diagonal one.
    """
    part, spec, params = acc.partition, acc.spec, acc.state.params
    nxt = part.params_from(s) if order <= spec.full else part.params_of(s)
    grads = differentiate(
        part.group_sum(s, gu, which), [params[i] for i in nxt], create_graph=order < spec.top
    )
    return nxt, [g * acc.direction[i] for g, i in zip(grads, nxt, strict=True)]
