"""Curvature-vector products over the whole data: ``C v = sum_b W_b C_b v / Z``, many at once.

``C`` is the Hessian or the Gauss-Newton matrix of the whole data's loss
(:mod:`~hessian_lens.engine.curvature`); ``W_b`` and ``Z`` weigh the micro-batches as for
every other summary (:mod:`~hessian_lens.engine.feed`), so a product does not depend on how
the data are cut. A :class:`Job` asks for ``C v`` with ``v`` on some parameters and the
result on others (both pruned); :meth:`DataCurvature.products` runs a list of jobs in one
pass over the data, in chunks whose running sums fit the memory budget. When the data are a
single micro-batch its graph is kept between calls (Lanczos asks for one product per step).
Inside a process group the sums run over all ranks' shards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hessian_lens import batches as B
from hessian_lens import distributed as dist
from hessian_lens.engine.accumulate import Spec
from hessian_lens.engine.curvature import products_for
from hessian_lens.engine.driver import make_back_end, make_planner, over_ranks
from hessian_lens.engine.feed import Totals, micro_batches
from hessian_lens.engine.options import Options
from hessian_lens.engine.state import functional_state
from hessian_lens.partition import Partition

__all__ = ["DataCurvature", "Job"]

ACCUMULATOR_SHARE = 0.25  # of the memory budget, for the running sums of one chunk of jobs
MAX_BATCH = 32  # products vectorised in one backward pass (same inputs and outputs)


@dataclass
class Job:
    """One product ``C v``: ``v`` on the parameters ``inputs``, wanted on ``outputs``.

    Indices are into the partition's parameters (``partition.names``).
    """

    vector: list[Tensor]
    inputs: list[int]
    outputs: list[int]


class DataCurvature:
    """The whole data's curvature as an operator; use as a context manager.

    Args:
        model: the model (left as it was, as by every entry point).
        loss_fn: ``loss_fn(outputs, targets)`` or ``None`` (Hessian only).
        data: one batch or a re-iterable of batches (the data contract of ``options``).
        partition: the groups (their parameters are the ones differentiated).
        options: the engine options (``curvature`` picks ``H`` or ``G``).
    """

    def __init__(self, model: nn.Module, loss_fn, data, partition: Partition, options: Options):
        self.model, self.loss_fn, self.partition, self.options = model, loss_fn, partition, options
        self.curvature = options.curvature
        products_for(self.curvature)  # a known curvature
        if self.curvature != "hessian" and loss_fn is None:
            raise ValueError(
                "curvature='ggn' needs the loss apart from the model: give loss_fn(outputs, "
                "targets) instead of loss_fn=None"
            )
        partition.check(model)
        self.batches = B.as_batches(data, two_passes=True)
        self.contract = options.contract(loss_fn)
        self.distributed = dist.resolve(options.distributed)
        self.prints = B.Fingerprints()
        self.passes = 0
        self._kept: tuple | None = None  # (micro-batch products, weight, z) of a single batch
        self.batch = MAX_BATCH
        self._context = None

    def __enter__(self) -> DataCurvature:
        self._context = functional_state(self.model, self.partition, self.options)
        self.state = self._context.__enter__()
        curvature = "ggn" if self.curvature == "ggn" else "hessian"  # what the planner probes
        back_end = make_back_end("loop", self.contract.loss, None, curvature)
        spec = Spec.of(2)
        self.planner = make_planner(
            self.state, self.partition, spec, back_end, self.contract, self.options.train_mode
        )
        return self

    def __exit__(self, *exc) -> None:
        self._kept = None
        self._context.__exit__(*exc)

    # ------------------------------------------------------------------ public
    @property
    def params(self) -> list[Tensor]:
        """The working copies of the differentiated parameters (shapes, dtype, device)."""
        return self.state.params

    def products(self, jobs: Sequence[Job], tick: Callable[[], None] | None = None):
        """``C v`` of every job, on its ``outputs`` (a list of tensors per job)."""
        out: list[list[Tensor]] = []
        for chunk in self._chunks(jobs):
            out.extend(self._run(chunk, tick))
        return out

    def samples(self) -> int:
        """Samples seen in one pass (after the first call)."""
        return self._samples

    # ------------------------------------------------------------------ internals
    def _chunks(self, jobs: Sequence[Job]) -> list[list[Job]]:
        item = self.state.params[0].element_size()
        room = ACCUMULATOR_SHARE * self.planner.budget / item
        chunks, current, used = [], [], 0
        for job in jobs:
            need = sum(self.state.params[i].numel() for i in job.outputs)
            if current and used + need > room:
                chunks.append(current)
                current, used = [], 0
            current.append(job)
            used += need
        return [*chunks, current] if current else chunks

    def _run(self, jobs: list[Job], tick) -> list[list[Tensor]]:
        sizes = [[self.state.params[i].numel() for i in job.outputs] for job in jobs]
        numel = sum(map(sum, sizes)) + 2

        def local() -> list[Tensor]:
            sums = [
                torch.zeros(sum(s), dtype=self.state.dtype, device=self.state.device) for s in sizes
            ]
            z = Totals()
            for prods, samples, weight in self._micro_batch_products():
                for members in _batches(jobs, self.batch):
                    results = _apply(prods, [jobs[j] for j in members])
                    for j, result in zip(members, results, strict=True):
                        sums[j].add_(torch.cat([r.reshape(-1) for r in result]), alpha=weight)
                z.add(samples, weight)
                if tick is not None:
                    tick()
            return [*sums, *z.tensors()]

        flat = over_ranks(
            local, distributed=self.distributed, numel=numel, device=self.state.device
        )
        *sums, n, w = flat
        totals = Totals.of([n, w])
        self._samples = totals.samples
        scale = totals.normaliser(self.contract.loss.reduction)
        return [self._unflatten(total / scale, job) for total, job in zip(sums, jobs, strict=True)]

    def _unflatten(self, flat: Tensor, job: Job) -> list[Tensor]:
        shapes = [self.state.params[i].shape for i in job.outputs]
        pieces = flat.split([s.numel() for s in shapes])
        return [p.reshape(s) for p, s in zip(pieces, shapes, strict=True)]

    def _micro_batch_products(self):
        """``(products, samples, weight)`` per micro-batch of one pass over the data.

        The first pass records the batches' fingerprints, later ones check them; a single
        micro-batch keeps its graph for the next pass.
        """
        if self._kept is not None:
            yield self._kept
            return
        if self.passes >= 1:  # every later pass checks it sees the first pass's batches
            self.prints.start_checking()
        self.passes += 1
        every = list(range(len(self.state.params)))
        cls = products_for(self.curvature)
        first, count = None, 0
        for x, y, samples, weight in micro_batches(
            self.batches, self.state, self.contract, planner=self.planner, prints=self.prints
        ):
            item = (cls(self.state, self.contract.loss, x, y, every), samples, weight)
            first, count = (item if count == 0 else None), count + 1
            yield item
            item = None  # free this micro-batch's graph before the next one
        self.prints.finish()
        if count == 1 and not self.distributed:
            self._kept = first


def _batches(jobs: Sequence[Job], size: int) -> list[list[int]]:
    """Job indices grouped by (inputs, outputs), at most ``size`` per group, in job order."""
    groups: dict[tuple, list[int]] = {}
    for j, job in enumerate(jobs):
        groups.setdefault((tuple(job.inputs), tuple(job.outputs)), []).append(j)
    return [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]


def _apply(prods, jobs: Sequence[Job]) -> list[list[Tensor]]:
    """The products of jobs sharing inputs and outputs: one vectorised pass for several."""
    first = jobs[0]
    if len(jobs) == 1:
        return [prods.apply(first.vector, first.inputs, first.outputs)]
    stacked = [torch.stack(vs) for vs in zip(*(job.vector for job in jobs), strict=True)]
    out = prods.apply_batched(stacked, first.inputs, first.outputs)
    return [[t[k] for t in out] for k in range(len(jobs))]
