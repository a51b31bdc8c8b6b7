"""Running sums of the engine's pass 2, and what they become: the summaries D^(k).

:class:`Spec` says which orders a call computes; an :class:`Accumulator` holds
``sum_b W_b D^(k)_b(u)`` for those orders while the back ends add micro-batches into it;
:meth:`Accumulator.means` divides by ``Z`` and fills every full order by symmetry
(:func:`symmetrize`) into :class:`Summaries`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from hessian_lens.engine.feed import Totals
from hessian_lens.engine.state import State
from hessian_lens.memory import MemoryPlan
from hessian_lens.partition import Partition

__all__ = ["Accumulator", "Spec", "Summaries", "symmetrize"]


@dataclass(frozen=True)
class Spec:
    """Which orders to compute: full D^(k) for k <= full, diagonals for full < k <= diag."""

    full: int
    diag: int = 0

    @property
    def top(self) -> int:
        """The highest order computed (full or diagonal)."""
        return max(self.full, self.diag)

    @classmethod
    def of(cls, order: int, *, diagonal: bool = False, d3_diagonal: bool = False) -> Spec:
        """The orders to compute: full orders up to ``order``, or only its diagonal.

        Only the diagonal of ``order`` with ``diagonal=True``; plus the order-3 diagonal
        with ``d3_diagonal=True``.
        """
        if not isinstance(order, int) or order < 1:
            raise ValueError(f"order must be an integer >= 1, got {order!r}")
        if diagonal and order > 1:
            return cls(full=1, diag=order)
        return cls(full=order, diag=3 if d3_diagonal and order < 3 else 0)


@dataclass
class Summaries:
    """The means of one run (what the public functions unpack)."""

    full: dict[int, Tensor]
    diag: dict[int, Tensor]
    loss: float
    n_samples: int
    direction: list[Tensor]
    partition: Partition
    method: str
    memory: MemoryPlan | None
    reduction: str = "mean"
    notes: list[str] = field(default_factory=list)
    data_digest: str = ""


@dataclass
class Accumulator:
    """Running weighted sums of pass 2 with the fixed direction ``u``.

    With ``W_b`` the weight of micro-batch ``b`` (its samples for a mean, 1 for a sum)::

        full[k] = sum_b W_b D^(k)_b(u)           (k <= spec.full; entries at s1 <= .. <= sk
                                                  for the loop, all entries for vmap)
        diag[k] = sum_b W_b D^(k)_b(u)[s, .., s]  (spec.full < k <= spec.diag)
        loss_sum = sum_b W_b L_b,   totals = (sum_b n_b, sum_b W_b)

    :meth:`means` divides by ``Z`` (``sum_b W_b`` for a mean, 1 for a sum).

    ``direction`` is ``None`` until known (a single batch's own gradient: the back end sets it).
    """

    state: State
    partition: Partition
    spec: Spec
    direction: list[Tensor] | None
    full: dict[int, Tensor]
    diag: dict[int, Tensor]
    loss_sum: float = 0.0
    totals: Totals = field(default_factory=lambda: Totals())
    reduction: str | None = None

    @classmethod
    def zeros(
        cls, *, state: State, partition: Partition, spec: Spec, direction=None
    ) -> Accumulator:
        """Zero running sums for ``spec`` over ``partition`` (direction unknown: ``None``)."""
        S = len(partition)

        def zeros(shape: tuple[int, ...]) -> Tensor:
            return torch.zeros(shape, dtype=state.dtype, device=state.device)

        return cls(
            state=state,
            partition=partition,
            spec=spec,
            direction=direction,
            full={k: zeros((S,) * k) for k in range(1, spec.full + 1)},
            diag={k: zeros((S,)) for k in range(spec.full + 1, spec.diag + 1)},
        )

    def add_loss(self, loss: Tensor, samples: int, weight: float) -> None:
        """``loss_sum += W_b L_b``; count the micro-batch's samples and weight."""
        self.loss_sum += weight * float(loss)
        self.totals.add(samples, weight)

    def sums(self) -> list[Tensor]:
        """Every running sum as a tensor, in a fixed order (what ranks all-reduce)."""
        scalars = [torch.tensor(self.loss_sum, dtype=torch.float64), *self.totals.tensors()]
        return [*self.full.values(), *self.diag.values(), *scalars]

    def numel(self) -> int:
        """Elements of :meth:`sums` (known before computing anything)."""
        return sum(t.numel() for t in (*self.full.values(), *self.diag.values())) + 3

    def load(self, sums: Sequence[Tensor]) -> None:
        """Replace the running sums by ``sums`` (laid out as :meth:`sums`)."""
        tensors = iter(sums)
        self.full = {k: next(tensors) for k in self.full}
        self.diag = {k: next(tensors) for k in self.diag}
        self.loss_sum = float(next(tensors))
        self.totals = Totals.of([next(tensors), next(tensors)])

    def means(self, *, method: str, memory: MemoryPlan | None) -> Summaries:
        """Divide by ``Z``; fill every full order from its non-decreasing indices."""
        z = self.totals.normaliser(self.reduction)
        return Summaries(
            full={k: symmetrize(t / z) if k > 1 else t / z for k, t in self.full.items()},
            diag={k: t / z for k, t in self.diag.items()},
            loss=self.loss_sum / z,
            n_samples=self.totals.samples,
            direction=self.direction or [],
            partition=self.partition,
            method=method,
            memory=memory,
        )


def symmetrize(t: Tensor) -> Tensor:
    """Fill a symmetric tensor from its entries at non-decreasing indices."""
    if t.dim() < 2:
        return t
    grid = np.indices(t.shape).reshape(t.dim(), -1)
    src = np.ravel_multi_index(np.sort(grid, axis=0), t.shape)
    return t.reshape(-1)[torch.as_tensor(src, device=t.device)].reshape(t.shape)
