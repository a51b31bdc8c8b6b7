"""The engine: exact summaries D^(d) of the loss derivatives for a partition.

For a direction ``u`` and a partition ``I_1 .. I_S`` (``U^s``: ``u`` on group s, zero
elsewhere)::

    D^(d)(u)[s1, .., sd] = d^d L / dtheta^d [U^s1, .., U^sd]
    g_bar = D^(1)(u),  g_bar[s] = <U^s, grad L>            (= sum_{p in I_s} g_p^2 for u = g)
    H_bar = D^(2)(u),  H_bar[s, s'] = (U^s)^T H U^s'

The data's loss is the sample-weighted mean over its batches,
``L = sum_b n_b L_b / sum_b n_b``. Pass 1 computes the direction ``u = sum_b n_b grad L_b / n``
(unless given); pass 2 accumulates ``sum_b n_b D^(k)_b(u)`` for every order with that fixed
direction, so the result equals the one for a single batch holding all samples. One data
loop (:func:`_micro_batches`) serves both passes; a back end only adds one micro-batch's
product into an :class:`_Accumulator`:

* ``"loop"``: reverse over reverse autograd. ``D^(k+1)[prefix, s']`` for all ``s' >= s`` is
  one backward pass of ``D^(k)[prefix, s]`` taken only w.r.t. the groups ``s..S`` (symmetry
  gives the rest), so autograd skips every layer before ``s``.
* ``"vmap"``: ``torch.func``, through ``f(eta) = L(theta - sum_s eta_s U^s)`` whose
  derivatives at 0 are ``(-1)^d D^(d)``: forward over reverse, vmapped over the S basis
  directions in chunks.

``method="auto"`` is the loop: measured fastest on CPU (design.md); the back ends have not
been measured on a GPU yet (``benchmarks/gpu_check.sh`` does that).

Memory (:mod:`hessian_lens.memory`): before computing, a probe measures the peak of the
back end's widest pass on 2 and 4 samples; batches larger than what fits the budget are cut
into micro-batches (exact: everything is sample-weighted). Inside a ``torch.distributed``
process group every rank passes its shard and gets the union's result
(:mod:`hessian_lens.distributed`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from hessian_lens import distributed as dist
from hessian_lens.memory import PROBE_SAMPLES, MemoryGuardError, MemoryPlan, PeakMeter, Planner
from hessian_lens.partition import Partition

__all__ = [
    "METHODS",
    "MemoryGuardError",
    "MemoryPlan",
    "PseudoHessian",
    "differentiate",
    "memory_plan",
    "pseudo_gradient",
    "pseudo_hessian",
    "summaries_from_gradient",
    "summary_tensor",
    "taylor_terms",
]

LossFn = Callable[[Tensor, Tensor], Tensor]
Progress = bool | Callable[[int, int | None], None]
METHODS = ("auto", "loop", "vmap")
VMAP_BASE = 1.0  # vmap peak on the CPU ~ (VMAP_BASE + directions at once) x the loop's peak
NO_GRAPH_HINTS = ("second time", "does not require grad")  # autograd: the graph is gone
NO_HIGHER_ORDER_HINT = "does not support"  # autograd: no derivative of that order


@dataclass
class PseudoHessian:
    """Result of :func:`pseudo_hessian`.

    Attributes:
        H: the S x S pseudo-Hessian ``H_bar = D^(2)(u)``.
        g: the S pseudo-gradient ``g_bar = D^(1)(u)``.
        labels: the group labels.
        partition: the partition used.
        loss: the mean loss over the data (over all ranks' shards when distributed).
        n_samples: number of samples the loss averages.
        d3: the diagonal ``D^(3)(u)[s, s, s]`` when asked for (``d3_diagonal=True``).
        method: the back end that ran.
        direction: ``u``, one tensor per covered parameter.
        memory: the memory plan used (micro-batch, chunk, predicted peak).
    """

    H: Tensor
    g: Tensor
    labels: list[str]
    partition: Partition
    loss: float
    n_samples: int
    d3: Tensor | None = None
    method: str = "loop"
    direction: list[Tensor] = field(default_factory=list, repr=False)
    memory: MemoryPlan | None = field(default=None, repr=False)


@dataclass(frozen=True)
class _Spec:
    """Which orders to compute: full D^(k) for k <= full, diagonals for full < k <= diag."""

    full: int
    diag: int = 0

    @property
    def top(self) -> int:
        return max(self.full, self.diag)

    @classmethod
    def of(cls, order: int, *, diagonal: bool = False, d3_diagonal: bool = False) -> _Spec:
        """The orders to compute: full orders up to ``order``, or only its diagonal.

        Only the diagonal of ``order`` with ``diagonal=True``; plus the order-3 diagonal
        with ``d3_diagonal=True``.
        """
        if not isinstance(order, int) or order < 1:
            raise ValueError(f"order must be an integer >= 1, got {order!r}")
        if diagonal and order > 1:
            return cls(full=1, diag=order)
        return cls(full=order, diag=3 if d3_diagonal and order < 3 else 0)


# ---------------------------------------------------------------------------- public API
def pseudo_hessian(
    model: nn.Module,
    loss_fn: LossFn,
    data,
    partition: Partition | None = None,
    direction=None,
    device=None,
    dtype=None,
    method: str = "auto",
    progress: Progress = False,
    train_mode: bool = False,
    d3_diagonal: bool = False,
    chunk_size: int | None = None,
    *,
    distributed: bool | None = None,
) -> PseudoHessian:
    """Pseudo-gradient ``g_bar`` and pseudo-Hessian ``H_bar`` (about S+1 backward passes).

    ``H_bar[s, s'] = (U^s)^T H U^s'`` and ``g_bar[s] = <U^s, grad L>`` of the mean loss
    ``L = sum_b n_b L_b / sum_b n_b`` over all batches (of all ranks when distributed).

    Args:
        model: any ``nn.Module``; it is left exactly as it was (parameters, buffers,
            grads, train/eval mode).
        loss_fn: ``loss_fn(outputs, targets)`` returning the batch *mean* loss.
        data: one ``(inputs, targets)`` batch or a re-iterable of batches (a DataLoader);
            when distributed, this rank's shard (possibly empty).
        partition: the groups; ``None`` means :meth:`Partition.canonical`.
        direction: ``u``, one tensor per covered parameter (sequence in partition order
            or ``{name: tensor}``), the same on every rank; ``None`` means the gradient
            over all of ``data``.
        device: where to compute; ``None`` means the model's device.
        dtype: ``torch.float64`` for exact references; ``None`` means the model's dtype.
        method: ``"loop"``, ``"vmap"`` or ``"auto"`` (the loop: measured fastest on CPU,
            not yet measured on a GPU).
        progress: ``True`` for a tqdm bar, or a callable ``(done, total)`` per batch.
        train_mode: run the model in train mode (BatchNorm batch statistics, dropout).
        d3_diagonal: also return ``D^(3)(u)[s, s, s]`` (S more passes).
        chunk_size: vmap back end only: directions per vectorised call (``None``: chosen
            to fit memory, all S when they fit).
        distributed: ``None``: sum over the ranks of an initialised process group of more
            than one rank; ``False``: this process's data only; ``True``: require a group.

    Returns:
        A :class:`PseudoHessian` with ``H`` (S x S, symmetric) and ``g`` (S).

    Raises:
        MemoryGuardError: not even one sample fits the memory budget (says what would).

    Example:
        >>> import torch, torch.nn.functional as F
        >>> torch.manual_seed(0) and None
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(),
        ...                           torch.nn.Linear(4, 2))
        >>> x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
        >>> res = pseudo_hessian(net, F.cross_entropy, (x, y))
        >>> res.H.shape, res.labels[:2]
        (torch.Size([4, 4]), ['0.weight', '0.bias'])
        >>> bool(torch.allclose(res.H, res.H.T))
        True
    """
    out = _run(
        model,
        loss_fn,
        data,
        spec=_Spec.of(2, d3_diagonal=d3_diagonal),
        partition=partition,
        direction=direction,
        device=device,
        dtype=dtype,
        method=method,
        progress=progress,
        train_mode=train_mode,
        chunk_size=chunk_size,
        distributed=distributed,
    )
    return PseudoHessian(
        H=out.full[2],
        g=out.full[1],
        labels=out.partition.labels,
        partition=out.partition,
        loss=out.loss,
        n_samples=out.n_samples,
        d3=out.diag.get(3),
        method=out.method,
        direction=out.direction,
        memory=out.memory,
    )


def pseudo_gradient(
    model: nn.Module,
    loss_fn: LossFn,
    data,
    partition: Partition | None = None,
    direction=None,
    **kwargs,
) -> Tensor:
    """``g_bar[s] = <U^s, grad L>``; for ``u = g`` this is ``sum_{p in I_s} g_p^2``.

    Keyword arguments as in :func:`summary_tensor`.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> net = torch.nn.Linear(3, 2)
        >>> x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
        >>> g = pseudo_gradient(net, F.cross_entropy, (x, y))
        >>> grads = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
        >>> bool(torch.allclose(g, torch.stack([(t ** 2).sum() for t in grads])))
        True
    """
    return summary_tensor(model, loss_fn, data, 1, partition, direction, **kwargs)


def summary_tensor(
    model: nn.Module,
    loss_fn: LossFn,
    data,
    order: int,
    partition: Partition | None = None,
    direction=None,
    device=None,
    dtype=None,
    method: str = "auto",
    diagonal: bool = False,
    progress: Progress = False,
    train_mode: bool = False,
    chunk_size: int | None = None,
    *,
    distributed: bool | None = None,
) -> Tensor:
    """The order-d summary ``D^(d)(u)[s1, .., sd] = d^d L[U^s1, .., U^sd]``.

    Its shape is ``(S,) * order`` (S^(d-1) passes).
    Entries are symmetric in their indices and sum to the Taylor term ``d^d L[u, .., u]``.
    With ``diagonal=True`` only ``D^(d)[s, .., s]`` is computed (shape ``(S,)``, S chains
    of d - 1 passes): what the optimizer needs at order 3.

    Arguments as in :func:`pseudo_hessian`.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(),
        ...                           torch.nn.Linear(4, 2))
        >>> x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
        >>> summary_tensor(net, F.cross_entropy, (x, y), order=3).shape
        torch.Size([4, 4, 4])
        >>> summary_tensor(net, F.cross_entropy, (x, y), order=3, diagonal=True).shape
        torch.Size([4])
    """
    spec = _Spec.of(order, diagonal=diagonal)
    out = _run(
        model,
        loss_fn,
        data,
        spec=spec,
        partition=partition,
        direction=direction,
        device=device,
        dtype=dtype,
        method=method,
        progress=progress,
        train_mode=train_mode,
        chunk_size=chunk_size,
        distributed=distributed,
    )
    return out.full[order] if spec.full == order else out.diag[order]


def taylor_terms(
    model: nn.Module,
    loss_fn: LossFn,
    data,
    direction,
    max_order: int,
    device=None,
    dtype=None,
    train_mode: bool = False,
    *,
    distributed: bool | None = None,
) -> Tensor:
    """``d^d L[u, .., u]`` for d = 1..max_order: derivatives of ``t -> L(theta + t u)`` at 0.

    Computed by nested forward-mode derivatives, independently of the summary back ends;
    ``summary_tensor(..., order=d).sum()`` equals entry ``d - 1``. Batches are not split
    (no memory plan). ``distributed`` as in :func:`pseudo_hessian`.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> net = torch.nn.Linear(3, 2)
        >>> x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
        >>> u = [torch.ones_like(p) for p in net.parameters()]
        >>> taylor_terms(net, F.cross_entropy, (x, y), u, max_order=2).shape
        torch.Size([2])
    """
    part = Partition.canonical(model)
    batches = _as_batches(data)
    on = dist.resolve(distributed)
    with _functional_state(model, part, device, dtype, train_mode) as st:
        u = _check_direction(direction, part, st.params)

        def local() -> list[Tensor]:
            total, n = torch.zeros(max_order, dtype=st.dtype, device=st.device), 0
            for x, y, samples in _micro_batches(batches, st):
                total += samples * _taylor_batch(st, loss_fn, x, y, u, max_order)
                n += samples
            return [total, _count(n)]

        total, n = _over_ranks(local, distributed=on, numel=max_order + 1, device=st.device)
    return total / _samples(n)


def summaries_from_gradient(
    grads, params, u, part: Partition, d3_diagonal: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``g_bar``, ``H_bar`` (and the ``D^(3)`` diagonal) of one loss, from its gradient.

    ``grads`` is the gradient w.r.t. ``params`` taken with ``create_graph=True`` (what an
    optimizer has).
    """
    acc = _Accumulator.zeros(
        state=_State.of_tensors(params),
        partition=part,
        spec=_Spec.of(2, d3_diagonal=d3_diagonal),
        direction=list(u),
    )
    with torch.enable_grad():
        _add_from_gradient(acc, grads, weight=1.0)
    d3 = acc.diag.get(3)
    return acc.full[1].detach(), _symmetrize(acc.full[2]).detach(), d3


def differentiate(
    output: Tensor,
    inputs: Sequence[Tensor],
    *,
    create_graph: bool = False,
    retain_graph: bool = True,
    allow_constant: bool = True,
) -> list[Tensor]:
    """``d output / d inputs`` by autograd, zeros where ``output`` does not depend on an input.

    The one gradient call of the engine and of :mod:`hessian_lens.optim`.

    Args:
        output: the tensor to differentiate (a loss, or a sum of gradient entries).
        inputs: the tensors to differentiate with respect to.
        create_graph: keep the graph of the result (for a further derivative).
        retain_graph: keep the graph of ``output`` (for another pass through it).
        allow_constant: an ``output`` without graph has zero derivatives; ``False`` raises.

    Raises:
        ValueError: PyTorch has no derivative of that order (BatchNorm in train mode).
        RuntimeError: the graph of ``output`` is gone (backward() already called on it).
    """
    if allow_constant and not output.requires_grad:
        return [torch.zeros_like(t) for t in inputs]
    try:
        return list(
            torch.autograd.grad(
                output,
                inputs,
                retain_graph=retain_graph,
                create_graph=create_graph,
                allow_unused=True,
                materialize_grads=True,
            )
        )
    except RuntimeError as err:
        explained = _explained(err)
        if explained is None:
            raise
        raise explained from err


def _explained(err: RuntimeError) -> Exception | None:
    """A clearer error for the autograd failures users can fix, else ``None``."""
    text = str(err)
    if NO_HIGHER_ORDER_HINT in text:
        return ValueError(
            f"PyTorch cannot differentiate this model that many times ({err}). "
            "BatchNorm in train mode has no 3rd-order derivative: analyse in "
            "eval mode (train_mode=False, the default) or ask for order <= 2."
        )
    if any(hint in text for hint in NO_GRAPH_HINTS):
        return RuntimeError(
            "the loss has no autograd graph left: PartitionNewton differentiates the "
            "closure's loss itself: return the loss without calling backward() in the "
            f"closure ({err})"
        )
    return None


def memory_plan(
    model: nn.Module,
    loss_fn: LossFn,
    batch,
    *,
    order: int = 2,
    diagonal: bool = False,
    d3_diagonal: bool = False,
    partition: Partition | None = None,
    method: str = "auto",
    device=None,
    dtype=None,
    train_mode: bool = False,
    chunk_size: int | None = None,
) -> MemoryPlan:
    """The memory plan the engine would follow for one ``(inputs, targets)`` batch.

    The batch must have more than ``PROBE_SAMPLES[-1]`` samples; it is probed, nothing
    else is computed.

    ``plan.peak(n)`` predicts the peak extra bytes of a micro-batch of ``n`` samples;
    ``plan.micro_batch`` is the largest that fits the budget. Arguments as in
    :func:`summary_tensor` (``d3_diagonal`` as in :func:`pseudo_hessian`).

    Raises:
        MemoryGuardError: not even one sample fits (the message says what would).
    """
    part = partition if partition is not None else Partition.canonical(model)
    part.check(model)
    spec = _Spec.of(order, diagonal=diagonal, d3_diagonal=d3_diagonal)
    with _functional_state(model, part, device, dtype, train_mode) as st:
        planner = Planner(
            state=st,
            partition=part,
            spec=spec,
            back_end=_back_end(_pick_method(method), loss_fn, chunk_size),
            splittable=not _batch_statistics(model, train_mode),
        )
        x, y, samples = _prepare(*batch, st)
        if samples <= PROBE_SAMPLES[-1]:
            raise ValueError(f"memory_plan needs more than {PROBE_SAMPLES[-1]} samples")
        return planner.probe(x, y, samples)


# ---------------------------------------------------------------------------- driver
@dataclass
class _Summaries:
    """The means of one run (what the public functions unpack)."""

    full: dict[int, Tensor]
    diag: dict[int, Tensor]
    loss: float
    n_samples: int
    direction: list[Tensor]
    partition: Partition
    method: str
    memory: MemoryPlan | None


def _run(
    model: nn.Module,
    loss_fn: LossFn,
    data,
    *,
    spec: _Spec,
    partition: Partition | None = None,
    direction=None,
    device=None,
    dtype=None,
    method: str = "auto",
    progress: Progress = False,
    train_mode: bool = False,
    chunk_size: int | None = None,
    distributed: bool | None = None,
) -> _Summaries:
    """Pass 1 (the direction, unless given) then pass 2 (the summaries) over ``data``."""
    method = _pick_method(method)
    on = dist.resolve(distributed)
    part = partition if partition is not None else Partition.canonical(model)
    part.check(model)
    batches = _as_batches(data, two_passes=direction is None)
    with _functional_state(model, part, device, dtype, train_mode) as st:
        _check_back_end(method, model, train_mode)
        back_end = _back_end(method, loss_fn, chunk_size)
        planner = Planner(
            state=st,
            partition=part,
            spec=spec,
            back_end=back_end,
            splittable=not _batch_statistics(model, train_mode),
        )
        if not on:
            planner.check_outputs()  # fail before pass 1 (when distributed: inside it)
        acc = _Accumulator.zeros(state=st, partition=part, spec=spec)
        _passes(
            acc,
            batches,
            direction=direction,
            back_end=back_end,
            planner=planner,
            progress=progress,
            on=on,
        )
        return acc.means(method=method, memory=planner.report())


def _passes(
    acc: _Accumulator, batches, *, direction, back_end: BackEnd, planner: Planner, progress, on
) -> None:
    """Set ``acc.direction``, then accumulate pass 2 into ``acc``.

    The direction is the given one, pass 1's gradient, or the single batch's own gradient.
    """
    shortcut = False
    if direction is None and not on:  # ranks need the union's gradient: never a shortcut
        shortcut, batches = _whole_single_batch(batches, acc.state, planner)
    tick = _progress(progress, batches, passes=1 if direction is not None or shortcut else 2)
    passes = {"planner": planner, "tick": tick, "on": on}
    if direction is not None:
        acc.direction = _check_direction(direction, acc.partition, acc.state.params)
    elif not shortcut:  # a single batch taken whole gets its own gradient inside pass 2
        acc.direction = _mean_gradient(acc.state, batches, loss_fn=back_end.loss_fn, **passes)
    _summary_pass(acc, batches, back_end=back_end, **passes)
    tick.close()


def _whole_single_batch(batches, state: _State, planner: Planner) -> tuple[bool, Iterable]:
    """Whether ``batches`` is one batch processed without splitting, and the batches.

    Such a batch's own gradient is then the direction; it is moved to the device once.
    """
    if not (isinstance(batches, list) and len(batches) == 1):
        return False, batches
    x, y, samples = _prepare(*batches[0], state)
    return planner.micro_batch(x, y, samples) >= samples, [(x, y)]


def _mean_gradient(state: _State, batches, *, loss_fn, planner, tick, on: bool) -> list[Tensor]:
    """Pass 1: ``u = sum_b n_b grad L_b / sum_b n_b`` over all batches (and ranks)."""

    def local() -> list[Tensor]:
        planner.check_outputs()
        sums, n = [torch.zeros_like(p) for p in state.params], 0
        for x, y, samples in _micro_batches(batches, state, planner=planner, tick=tick):
            grads = differentiate(loss_fn(state.forward(x), y), state.params, retain_graph=False)
            for total, g in zip(sums, grads, strict=True):
                total.add_(g, alpha=samples)
            n += samples
        return [*sums, _count(n)]

    numel = sum(p.numel() for p in state.params) + 1
    *sums, n = _over_ranks(local, distributed=on, numel=numel, device=state.device)
    n = _samples(n)
    return [total / n for total in sums]


def _summary_pass(acc: _Accumulator, batches, *, back_end, planner, tick, on: bool) -> None:
    """Pass 2: ``sum_b n_b D^(k)_b(u)``, ``sum_b n_b L_b`` and ``sum_b n_b`` (all ranks)."""

    def local() -> list[Tensor]:
        planner.check_outputs()
        for x, y, samples in _micro_batches(batches, acc.state, planner=planner, tick=tick):
            acc.add_loss(back_end.product(acc, x, y, samples), samples)
        return acc.sums()

    acc.load(_over_ranks(local, distributed=on, numel=acc.numel(), device=acc.state.device))


def _over_ranks(local, *, distributed: bool, numel: int, device) -> list[Tensor]:
    """``local()``, summed over the ranks when distributed."""
    if not distributed:
        return local()
    return dist.sum_over_ranks(local, numel=numel, device=device)


def _count(n: int) -> Tensor:
    return torch.tensor(float(n), dtype=torch.float64)


def _samples(n: Tensor) -> int:
    """The reduced sample count; a ValueError when no rank had a sample."""
    samples = round(float(n))
    if samples == 0:
        raise ValueError("data holds no sample: give a batch or a non-empty loader")
    return samples


# ---------------------------------------------------------------------------- accumulator
@dataclass
class _Accumulator:
    """Running sample-weighted sums of pass 2 with the fixed direction ``u``.

    With ``n_b`` the samples of batch ``b``::

        full[k] = sum_b n_b D^(k)_b(u)           (k <= spec.full; entries at s1 <= .. <= sk
                                                  for the loop, all entries for vmap)
        diag[k] = sum_b n_b D^(k)_b(u)[s, .., s]  (spec.full < k <= spec.diag)
        loss_sum = sum_b n_b L_b,   n_samples = sum_b n_b

    ``direction`` is ``None`` until known (a single batch's own gradient: the back end sets it).
    """

    state: _State
    partition: Partition
    spec: _Spec
    direction: list[Tensor] | None
    full: dict[int, Tensor]
    diag: dict[int, Tensor]
    loss_sum: float = 0.0
    n_samples: int = 0

    @classmethod
    def zeros(
        cls, *, state: _State, partition: Partition, spec: _Spec, direction=None
    ) -> _Accumulator:
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

    def add_loss(self, loss: Tensor, samples: int) -> None:
        """``loss_sum += n_b L_b``, ``n_samples += n_b``."""
        self.loss_sum += samples * float(loss)
        self.n_samples += samples

    def sums(self) -> list[Tensor]:
        """Every running sum as a tensor, in a fixed order (what ranks all-reduce)."""
        scalars = [torch.tensor(self.loss_sum, dtype=torch.float64), _count(self.n_samples)]
        return [*self.full.values(), *self.diag.values(), *scalars]

    def numel(self) -> int:
        """Elements of :meth:`sums` (known before computing anything)."""
        return sum(t.numel() for t in (*self.full.values(), *self.diag.values())) + 2

    def load(self, sums: Sequence[Tensor]) -> None:
        """Replace the running sums by ``sums`` (laid out as :meth:`sums`)."""
        tensors = iter(sums)
        self.full = {k: next(tensors) for k in self.full}
        self.diag = {k: next(tensors) for k in self.diag}
        self.loss_sum = float(next(tensors))
        self.n_samples = _samples(next(tensors))

    def means(self, *, method: str, memory: MemoryPlan | None) -> _Summaries:
        """Divide by ``n``; fill every full order from its non-decreasing indices."""
        n = self.n_samples
        return _Summaries(
            full={k: _symmetrize(t / n) if k > 1 else t / n for k, t in self.full.items()},
            diag={k: t / n for k, t in self.diag.items()},
            loss=self.loss_sum / n,
            n_samples=n,
            direction=self.direction or [],
            partition=self.partition,
            method=method,
            memory=memory,
        )


# ---------------------------------------------------------------------------- loop back end
class _LoopBackEnd:
    """Reverse over reverse autograd, pruned by symmetry (module docstring)."""

    name = "loop"

    def __init__(self, loss_fn: LossFn) -> None:
        self.loss_fn = loss_fn
        self.chunk_size = None

    def product(self, acc: _Accumulator, x, y, weight: float) -> Tensor:
        """Add ``weight *`` this micro-batch's summaries into ``acc``; return its loss."""
        loss = self.loss_fn(acc.state.forward(x), y)
        grads = differentiate(loss, acc.state.params, create_graph=acc.spec.top > 1)
        if acc.direction is None:
            acc.direction = [g.detach() for g in grads]
        _add_from_gradient(acc, grads, weight=weight)
        return loss.detach()

    def chunks(self, S: int) -> list[int | None]:
        return [None]

    def probe(self, *, state, partition, spec, x, y, chunk, meter: PeakMeter) -> list[int]:
        """Peak bytes after each order of the widest chain of passes.

        The chain is the gradient, then ``D^(k)[0, .., 0, s]`` for k = 2..top, every pass
        w.r.t. all parameters (row 0 of every order).
        """
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


def _add_from_gradient(acc: _Accumulator, grads: Sequence[Tensor], *, weight: float) -> None:
    """Add ``weight *`` the summaries of a loss into ``acc`` (loop back end).

    ``grads`` is the loss's gradient w.r.t. ``acc.state.params`` taken with
    ``create_graph=True``.
    """
    gu = [g * v for g, v in zip(grads, acc.direction, strict=True)]
    _descend(acc, prefix=(), gu=gu, which=list(range(len(grads))), weight=weight)


def _descend(
    acc: _Accumulator, *, prefix: tuple[int, ...], gu: list[Tensor], which: list[int], weight
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
    acc: _Accumulator, *, s: int, gu: list[Tensor], which: list[int], order: int
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


def _symmetrize(t: Tensor) -> Tensor:
    """Fill a symmetric tensor from its entries at non-decreasing indices."""
    if t.dim() < 2:
        return t
    grid = np.indices(t.shape).reshape(t.dim(), -1)
    src = np.ravel_multi_index(np.sort(grid, axis=0), t.shape)
    return t.reshape(-1)[torch.as_tensor(src, device=t.device)].reshape(t.shape)


# ---------------------------------------------------------------------------- vmap back end
class _VmapBackEnd:
    """``torch.func`` through ``f(eta) = L(theta - sum_s eta_s U^s)`` (module docstring)."""

    name = "vmap"

    def __init__(self, loss_fn: LossFn, chunk_size: int | None) -> None:
        self.loss_fn = loss_fn
        self.chunk_size = chunk_size
        self.fixed_chunk = chunk_size is not None

    def product(self, acc: _Accumulator, x, y, weight: float) -> Tensor:
        """Same contributions as the loop's, as ``(-1)^k d^k f / d eta^k`` at 0."""
        st, S = acc.state, len(acc.partition)
        if acc.direction is None:
            loss = self.loss_fn(st.forward(x), y)
            acc.direction = [g.detach() for g in differentiate(loss, st.params)]
        f = _moved_loss(st, acc.partition, self.loss_fn, x, y, acc.direction)
        basis = torch.eye(S, dtype=st.dtype, device=st.device)
        full, diag, loss = _vmap_summaries(f, acc.spec, basis, self.chunk_size)
        for k, t in full.items():
            acc.full[k] += weight * t
        for k, t in diag.items():
            acc.diag[k] += weight * t
        return loss.detach()

    def chunks(self, S: int) -> list[int | None]:
        """Chunk sizes to try, largest first (the given one only, when given)."""
        if self.fixed_chunk:
            return [self.chunk_size]
        return sorted({max(S >> i, 1) for i in range(S.bit_length() + 1)}, reverse=True)

    def probe(self, *, state, partition, spec, x, y, chunk, meter: PeakMeter) -> list[int]:
        """Peak of one chunk of ``chunk`` basis directions at every order.

        On CUDA it is measured. On the CPU it is the loop's chain peak times
        ``VMAP_BASE + w`` with ``w`` the directions vectorised at once (``chunk^(d-1)``
        for a full order d): the CPU meter is a dispatch mode, and some torch.func
        backward formulas (``mse_loss``'s ZeroTensors) crash under one on torch 2.14.
        ``VMAP_BASE`` was measured on LeNet-5, VGG-11' and the test models (0.9-1.4 w).
        """
        chunk = chunk or len(partition)
        batch = {"state": state, "partition": partition, "spec": spec, "x": x, "y": y}
        if state.device.type == "cuda":
            return self.measure(**batch, chunk=chunk, meter=meter)
        loop = _LoopBackEnd(self.loss_fn).probe(**batch, chunk=None, meter=meter)
        return [int((VMAP_BASE + _vmap_width(spec, chunk)) * loop[-1])]

    def measure(self, *, state, partition, spec, x, y, chunk: int, meter: PeakMeter) -> list[int]:
        """Peak of the vmapped derivatives along the first ``chunk`` basis directions."""
        loss = self.loss_fn(state.forward(x), y)
        u = [g.detach() for g in differentiate(loss, state.params)]
        f = _moved_loss(state, partition, self.loss_fn, x, y, u)
        basis = torch.eye(len(partition), dtype=state.dtype, device=state.device)[:chunk]
        _vmap_summaries(f, spec, basis, chunk)
        return [meter.peak()]


def _vmap_width(spec: _Spec, chunk: int) -> int:
    """Directions the vmap back end differentiates at once.

    ``chunk^(full-1)`` for the full orders (nested vmaps), ``chunk`` for the diagonals.
    """
    full = chunk ** (spec.full - 1) if spec.full > 1 else 1
    return max(full, chunk if spec.diag > spec.full else 1)


def _moved_loss(state, partition, loss_fn, x, y, u) -> Callable[[Tensor], Tensor]:
    """``f(eta) = L(theta - sum_s eta_s U^s)`` on this batch."""
    theta = [p.detach() for p in state.params]

    def f(eta: Tensor) -> Tensor:
        moved = [
            t - partition.expand(eta, i) * v for i, (t, v) in enumerate(zip(theta, u, strict=True))
        ]
        return loss_fn(state.forward(x, moved), y)

    return f


def _vmap_summaries(
    f: Callable[[Tensor], Tensor], spec: _Spec, basis: Tensor, chunk_size: int | None
) -> tuple[dict[int, Tensor], dict[int, Tensor], Tensor]:
    """``D^(k) = (-1)^k d^k f`` at 0 along the ``basis`` rows.

    Returns the full orders, the diagonals and the loss ``f(0)``.
    """
    zero = torch.zeros(basis.shape[1], dtype=basis.dtype, device=basis.device)
    grad_f, loss = torch.func.grad_and_value(f)(zero)
    full = {1: -grad_f}
    for k in range(2, spec.full + 1):
        full[k] = (-1) ** k * _derivative_tensor(f, zero, basis, k, chunk_size)
    diag = {}
    for k in range(spec.full + 1, spec.diag + 1):
        along = torch.func.vmap(
            lambda e, k=k: _directional(f, [e] * k)(zero), chunk_size=chunk_size
        )
        diag[k] = (-1) ** k * along(basis)
    return full, diag, loss


def _derivative_tensor(
    f: Callable[[Tensor], Tensor], at: Tensor, basis: Tensor, k: int, chunk_size: int | None
) -> Tensor:
    """All k-th derivatives of ``f`` at ``at`` along the ``basis`` directions.

    Reverse mode over k - 1 nested forward-mode directional derivatives, vmapped over the
    basis directions (one axis each).

    (Forward over reverse, ``jvp(grad f)``, trips on ZeroTensors in some backward formulas,
    e.g. ``mse_loss``'s, on torch 2.14; this order does not.)
    """

    def last_axis(*directions: Tensor) -> Tensor:
        return torch.func.grad(_directional(f, directions))(at)

    fn = last_axis
    for axis in reversed(range(k - 1)):
        dims = tuple(0 if j == axis else None for j in range(k - 1))
        fn = torch.func.vmap(fn, in_dims=dims, chunk_size=chunk_size)
    return fn(*([basis] * (k - 1)))


def _directional(
    f: Callable[[Tensor], Tensor], directions: Sequence[Tensor]
) -> Callable[[Tensor], Tensor]:
    """``eta -> d^k f(eta)[e_1, .., e_k]``, by nested forward mode."""

    def along(g: Callable[[Tensor], Tensor], e: Tensor) -> Callable[[Tensor], Tensor]:
        return lambda eta: torch.func.jvp(g, (eta,), (e,))[1]

    fn = f
    for e in directions:
        fn = along(fn, e)
    return fn


def _taylor_batch(st, loss_fn, x, y, u, max_order) -> Tensor:
    """``d^k/dt^k L_b(theta + t u)`` at 0 for k = 1..max_order (nested forward mode)."""
    theta = [p.detach() for p in st.params]

    def f(t: Tensor) -> Tensor:
        return loss_fn(st.forward(x, [p + t * v for p, v in zip(theta, u, strict=True)]), y)

    one = torch.ones((), dtype=st.dtype, device=st.device)
    zero = torch.zeros((), dtype=st.dtype, device=st.device)
    return torch.stack([_directional(f, [one] * k)(zero) for k in range(1, max_order + 1)])


BackEnd = _LoopBackEnd | _VmapBackEnd


def _back_end(method: str, loss_fn: LossFn, chunk_size: int | None) -> BackEnd:
    return _LoopBackEnd(loss_fn) if method == "loop" else _VmapBackEnd(loss_fn, chunk_size)


# ---------------------------------------------------------------------------- state & data
@dataclass
class _State:
    """Working copies of the differentiated tensors (device, dtype) and of the rest.

    The rest is the model's other parameters and buffers, for :meth:`forward`.
    """

    device: torch.device
    dtype: torch.dtype
    params: list[Tensor]
    model: nn.Module | None = None
    names: list[str] = field(default_factory=list)
    fixed: dict[str, Tensor] = field(default_factory=dict)

    @classmethod
    def of_model(cls, model: nn.Module, part: Partition, device, dtype) -> _State:
        """Detached copies of the model's tensors, cast to ``device`` and ``dtype``."""
        ref = part.parameters(model)[0]
        device = torch.device(device) if device is not None else ref.device
        dtype = dtype if dtype is not None else ref.dtype
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating point type, got {dtype}")
        covered = set(part.names)
        return cls(
            device=device,
            dtype=dtype,
            params=[
                p.detach().to(device, dtype).clone().requires_grad_(True)
                for p in part.parameters(model)
            ],
            model=model,
            names=part.names,
            fixed={
                n: _cast(t, device, dtype)
                for n, t in itertools.chain(model.named_parameters(), model.named_buffers())
                if n not in covered
            },
        )

    @classmethod
    def of_tensors(cls, params: Sequence[Tensor]) -> _State:
        """The caller's own tensors (an optimizer's parameters): no model, no forward."""
        return cls(device=params[0].device, dtype=params[0].dtype, params=list(params))

    def forward(self, x, params: Sequence[Tensor] | None = None) -> Tensor:
        """The model's output with ``params`` (default: the working copies)."""
        values = dict(zip(self.names, params if params is not None else self.params, strict=True))
        values.update(self.fixed)
        args = tuple(x) if isinstance(x, (tuple, list)) else (x,)
        return functional_call(self.model, values, args)


@contextmanager
def _functional_state(model: nn.Module, part: Partition, device, dtype, train_mode: bool):
    """Working copies in the requested mode; the model's own modes are restored after."""
    modes = [(m, m.training) for m in model.modules()]
    for m in model.modules():  # not model.train(): torch.export modules refuse it
        m.training = train_mode
    try:
        yield _State.of_model(model, part, device, dtype)
    finally:
        for m, was_training in modes:
            m.training = was_training


def _cast(t: Tensor, device, dtype) -> Tensor:
    t = t.detach().to(device)
    return t.to(dtype).clone() if t.is_floating_point() else t.clone()


def _to(t: Tensor, st: _State) -> Tensor:
    return t.to(st.device, st.dtype) if t.is_floating_point() else t.to(st.device)


def _as_batches(data, two_passes: bool = True) -> Iterable:
    """One ``(inputs, targets)`` batch -> ``[batch]``; check iterables can be re-read."""
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and isinstance(data[1], Tensor)
        and isinstance(data[0], (Tensor, tuple, list))
    ):
        return [tuple(data)]
    if isinstance(data, Tensor) or not isinstance(data, Iterable):
        raise TypeError(
            "data must be an (inputs, targets) batch or an iterable of such "
            f"batches (e.g. a DataLoader), got {type(data).__name__}"
        )
    if two_passes and iter(data) is data:
        raise TypeError(
            "data is a one-shot iterator, but the direction needs a first pass "
            "over it: pass a list of batches or a DataLoader, or give direction="
        )
    return data


def _micro_batches(
    batches: Iterable, state: _State, *, planner: Planner | None = None, tick=None
) -> Iterator[tuple[object, Tensor, int]]:
    """The one data loop: ``(inputs, targets, n)`` on the device.

    Each batch is cut into micro-batches that fit (``planner``), empty batches are skipped;
    ``tick()`` is called per batch.
    """
    for x, y in batches:
        x, y, samples = _prepare(x, y, state)
        size = planner.micro_batch(x, y, samples) if planner is not None else samples
        if size >= samples:
            if samples:
                yield x, y, samples
        else:
            for start in range(0, samples, size):
                stop = min(start + size, samples)
                yield _rows(x, start, stop), y[start:stop], stop - start
        if tick is not None:
            tick()


def _rows(x, start: int, stop: int):
    """Samples ``start:stop`` of a model input (a tensor or a tuple of tensors)."""
    return tuple(t[start:stop] for t in x) if isinstance(x, tuple) else x[start:stop]


def _prepare(x, y, st) -> tuple:
    x = tuple(_to(t, st) for t in x) if isinstance(x, (tuple, list)) else _to(x, st)
    y = _to(y, st)
    first = x[0] if isinstance(x, tuple) else x
    return x, y, int(first.shape[0]) if first.dim() else 1


def _check_direction(direction, part: Partition, params: Sequence[Tensor]) -> list[Tensor]:
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


def _pick_method(method: str) -> str:
    """``auto`` -> the loop: measured fastest on CPU (design.md).

    GPU numbers are not yet measured (``benchmarks/gpu_check.sh``).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return "loop" if method == "auto" else method


def _check_back_end(method: str, model: nn.Module, train_mode: bool) -> None:
    if method == "vmap" and _batch_statistics(model, train_mode):
        raise ValueError(
            "method='vmap' cannot differentiate BatchNorm with batch "
            "statistics (train mode, or no running statistics): torch.func's "
            "forward mode gives a wrong Hessian there. Use method='loop'."
        )


def _batch_statistics(model: nn.Module, train_mode: bool) -> bool:
    """Whether some BatchNorm layer normalises with the batch's own statistics."""
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and (train_mode or m.running_mean is None)
        for m in model.modules()
    )


class _Ticker:
    def __init__(self, bar, callback, total) -> None:
        self.bar, self.callback, self.total, self.done = bar, callback, total, 0

    def __call__(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        if self.callback is not None:
            self.callback(self.done, self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress(progress: Progress, batches, passes: int) -> _Ticker:
    """A per-batch ticker: a tqdm bar (``True``), a callback, or nothing."""
    try:
        total = passes * len(batches)
    except TypeError:
        total = None
    if progress is True:
        from tqdm.auto import tqdm

        return _Ticker(tqdm(total=total, desc="H̄ batches", unit="batch"), None, total)
    return _Ticker(None, progress if callable(progress) else None, total)
