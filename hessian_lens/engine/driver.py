"""The engine's driver: pass 1 (the direction), then pass 2 (the summaries) over the data.

The data's loss is ``L = sum_b W_b L_b / Z`` (:mod:`hessian_lens.engine.feed`). Pass 1
computes the direction ``u = sum_b W_b grad L_b / Z`` (unless given); pass 2 accumulates
``sum_b W_b D^(k)_b(u)`` for every order with that fixed direction, so the result equals
the one for a single batch holding all samples. Both passes read the data through
:func:`~hessian_lens.engine.feed.micro_batches`; a back end only adds one micro-batch's
product into an :class:`~hessian_lens.engine.accumulate.Accumulator`. Inside a
``torch.distributed`` process group every rank passes its shard and gets the union's result.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from hessian_lens import batches as B
from hessian_lens import distributed as dist
from hessian_lens.engine.accumulate import Accumulator, Spec, Summaries
from hessian_lens.engine.autodiff import differentiate
from hessian_lens.engine.curvature import GGNBackEnd
from hessian_lens.engine.feed import (
    Totals,
    check_direction,
    micro_batches,
    narrow_targets,
    prepare,
)
from hessian_lens.engine.loop import LoopBackEnd
from hessian_lens.engine.options import Contract, LossFn, Options, Progress
from hessian_lens.engine.resume import Partial
from hessian_lens.engine.state import State, batch_statistics, functional_state
from hessian_lens.engine.vmapped import VmapBackEnd
from hessian_lens.memory import Planner
from hessian_lens.partition import Partition

__all__ = ["BackEnd", "make_back_end", "make_planner", "over_ranks", "run"]

BackEnd = LoopBackEnd | VmapBackEnd | GGNBackEnd


def run(
    model: nn.Module,
    loss_fn: LossFn | None,
    data,
    *,
    spec: Spec,
    options: Options,
    partition: Partition | None = None,
    direction=None,
) -> Summaries:
    """Pass 1 (the direction, unless given) then pass 2 (the summaries) over ``data``."""
    contract = options.contract(loss_fn)
    on = dist.resolve(options.distributed)
    part = partition if partition is not None else Partition.canonical(model)
    part.check(model)
    batches = B.as_batches(data, two_passes=direction is None)
    with functional_state(model, part, options) as st:
        method = _checked_method(options, model)
        check_ggn(options, spec, loss_fn)
        back_end = make_back_end(method, contract.loss, options.chunk_size, options.curvature)
        planner = make_planner(st, part, spec, back_end, contract, options.train_mode)
        if not on:
            planner.check_outputs()  # fail before pass 1 (when distributed: inside it)
        acc = Accumulator.zeros(state=st, partition=part, spec=spec)
        partial = Partial.for_rank(options.resume, *(dist.rank_and_world() if on else (0, 1)))
        prints = run_passes(
            acc,
            batches,
            direction=direction,
            back_end=back_end,
            planner=planner,
            progress=options.progress,
            on=on,
            contract=contract,
            partial=partial,
        )
        out = acc.means(method=back_end.ran, memory=planner.report())
        out.reduction, out.notes = contract.loss.reduction, st.notes
        out.data_digest = prints.digest() if prints.seen else ""
        return out


def make_back_end(
    method: str, loss_fn: LossFn, chunk_size: int | None, curvature: str = "hessian"
) -> BackEnd:
    """The back end of a resolved method (``"loop"`` or ``"vmap"``) and curvature."""
    if curvature == "ggn":
        return GGNBackEnd(loss_fn)
    if method == "loop":
        return LoopBackEnd(loss_fn, chunk_size)
    return VmapBackEnd(loss_fn, chunk_size)


def check_ggn(options: Options, spec: Spec, loss_fn: LossFn | None) -> None:
    """The Gauss-Newton runs at order 2, on the loop, with the loss apart from the model.

    Raises:
        ValueError: one line naming what to change.
    """
    if options.curvature == "functional":
        raise ValueError(
            "curvature='functional' (H - G) is a measure of block norms and spectra: for the "
            "summary take pseudo_hessian(...).H - pseudo_hessian(..., curvature='ggn').H"
        )
    if options.curvature != "ggn":
        return
    if spec.full != 2 or spec.diag:
        raise ValueError(
            "curvature='ggn' defines the order-2 summary only (G_bar = U^T G U): ask for "
            "pseudo_hessian / summary_tensor(order=2) without d3_diagonal, or curvature='hessian'"
        )
    if resolve_method(options.method) != "loop":
        raise ValueError("curvature='ggn' runs on the loop back end: use method='loop' or 'auto'")
    if loss_fn is None:
        raise ValueError(
            "curvature='ggn' needs the loss apart from the model (G = J^T H_l J is taken at "
            "the model's outputs): give loss_fn(outputs, targets) instead of loss_fn=None"
        )


def make_planner(st, part, spec, back_end, contract: Contract, train_mode: bool) -> Planner:
    """The memory planner of a run; it cuts probe batches along the contract's dims."""
    dims = contract.dims

    def head(x, y, n: int) -> tuple:
        return B.narrow(x, dims.inputs, 0, n), narrow_targets(y, dims, 0, n)

    return Planner(
        state=st,
        partition=part,
        spec=spec,
        back_end=back_end,
        splittable=not batch_statistics(st.model, train_mode),
        head=head,
    )


def resolve_method(method: str) -> str:
    """``auto`` -> the loop: measured fastest on CPU (design.md).

    GPU numbers are not yet measured (``benchmarks/gpu_check.sh``).
    """
    return "loop" if method == "auto" else method


def _checked_method(options: Options, model: nn.Module) -> str:
    method = resolve_method(options.method)
    if method == "vmap" and batch_statistics(model, options.train_mode):
        raise ValueError(
            "method='vmap' cannot differentiate BatchNorm with batch "
            "statistics (train mode, or no running statistics): torch.func's "
            "forward mode gives a wrong Hessian there. Use method='loop'."
        )
    return method


def run_passes(
    acc: Accumulator,
    batches,
    *,
    direction,
    back_end: BackEnd,
    planner,
    progress,
    on,
    contract,
    partial: Partial | None = None,
) -> B.Fingerprints:
    """Set ``acc.direction``, then accumulate pass 2 into ``acc``; return the fingerprints.

    The direction is the given one, pass 1's gradient, or the single batch's own gradient.
    Pass 2 must see the batches pass 1 saw (:class:`~hessian_lens.batches.Fingerprints`).
    With ``partial`` on, pass 2 starts where its file stopped (the direction comes first:
    no single-batch shortcut).
    """
    partial = partial if partial is not None else Partial(None)
    shortcut = False
    if direction is None and not on and not partial.on:  # ranks need the union's gradient
        shortcut, batches = _whole_single_batch(batches, acc.state, planner, contract)
    tick = _progress(progress, batches, passes=1 if direction is not None or shortcut else 2)
    prints = B.Fingerprints()
    passes = {"planner": planner, "tick": tick, "on": on, "contract": contract, "prints": prints}
    if direction is not None:
        acc.direction = check_direction(direction, acc.partition, acc.state.params)
    elif not shortcut:  # a single batch taken whole gets its own gradient inside pass 2
        acc.direction = _mean_gradient(acc.state, batches, **passes)
        prints.start_checking()
    if partial.on:
        partial.start(acc)
    _summary_pass(acc, batches, back_end=back_end, partial=partial, **passes)
    prints.finish()
    tick.close()
    return prints


def _whole_single_batch(batches, state: State, planner, contract) -> tuple[bool, Iterable]:
    """Whether ``batches`` is one batch processed without splitting, and the batches.

    Such a batch's own gradient is then the direction; it is moved to the device once.
    """
    if not (isinstance(batches, list) and len(batches) == 1):
        return False, batches
    x, y, samples = prepare(batches[0], state, contract)
    return planner.micro_batch(x, y, samples) >= samples, [(x, y)]


def _mean_gradient(state: State, batches, *, planner, tick, on, contract, prints) -> list[Tensor]:
    """Pass 1: ``u = sum_b W_b grad L_b / Z`` over all batches (and ranks).

    ``Z = sum_b W_b`` for a mean, 1 for a sum (:class:`Totals`).
    """

    def local() -> list[Tensor]:
        planner.check_outputs()
        sums, z = [torch.zeros_like(p) for p in state.params], Totals()
        for x, y, samples, weight in micro_batches(
            batches, state, contract, planner=planner, tick=tick, prints=prints
        ):
            loss = contract.loss(state.forward(x), y)
            grads = differentiate(loss, state.params, retain_graph=False)
            for total, g in zip(sums, grads, strict=True):
                total.add_(g, alpha=weight)
            z.add(samples, weight)
        return [*sums, *z.tensors()]

    numel = sum(p.numel() for p in state.params) + 2
    *sums, n, w = over_ranks(local, distributed=on, numel=numel, device=state.device)
    z = Totals.of([n, w]).normaliser(contract.loss.reduction)
    return [total / z for total in sums]


def _summary_pass(
    acc: Accumulator, batches, *, back_end, planner, tick, on, contract, prints, partial
) -> None:
    """Pass 2: ``sum_b W_b D^(k)_b(u)``, ``sum_b W_b L_b``, the samples and ``sum_b W_b``.

    Micro-batches (and rows) already in ``partial``'s sums are skipped; the sums are kept
    there after every batch of rows and micro-batch.
    """
    S = len(acc.partition)

    def local() -> list[Tensor]:
        planner.check_outputs()
        stream = micro_batches(
            batches, acc.state, contract, planner=planner, tick=tick, prints=prints
        )
        for b, (x, y, samples, weight) in enumerate(stream):
            if partial.skip(b):
                continue
            back_end.first_row = partial.first_row(b)

            def rows_done(row: int, b: int = b) -> None:
                partial.save(acc, b, row)
                tick.part(row / S)

            back_end.tick = rows_done
            acc.add_loss(back_end.product(acc, x, y, weight), samples, weight)
            partial.save(acc, b + 1, 0, force=True)
        return acc.sums()

    acc.load(over_ranks(local, distributed=on, numel=acc.numel(), device=acc.state.device))
    acc.reduction = contract.loss.reduction


def over_ranks(local, *, distributed: bool, numel: int, device) -> list[Tensor]:
    """``local()``, summed over the ranks when distributed."""
    if not distributed:
        return local()
    return dist.sum_over_ranks(local, numel=numel, device=device)


class Ticker:
    """Progress per batch, and within a batch as the rows of H̄ finish (:meth:`part`)."""

    def __init__(self, bar, callback, total) -> None:
        self.bar, self.callback, self.total, self.done = bar, callback, total, 0
        self.within = 0.0

    def __call__(self) -> None:
        self.done += 1
        self.within = 0.0
        if self.bar is not None:
            self.bar.n = self.done
            self.bar.refresh()
        if self.callback is not None:
            self.callback(self.done, self.total)

    def part(self, fraction: float) -> None:
        """``fraction`` of the current batch is done (the rows of H̄ so far)."""
        if fraction <= self.within:
            return
        self.within = min(fraction, 1.0)
        if self.bar is not None:
            self.bar.n = round(self.done + self.within, 3)
            self.bar.refresh()
        if self.callback is not None:
            self.callback(self.done + self.within, self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress(progress: Progress, batches, passes: int) -> Ticker:
    """A per-batch ticker: a tqdm bar (``True``), a callback, or nothing."""
    try:
        total = passes * len(batches)
    except TypeError:
        total = None
    if progress is True:
        from tqdm.auto import tqdm

        return Ticker(tqdm(total=total, desc="H̄ batches", unit="batch"), None, total)
    return Ticker(None, progress if callable(progress) else None, total)
