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
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode

from hessian_lens import batches as B
from hessian_lens import distributed as dist
from hessian_lens.memory import PROBE_SAMPLES, MemoryGuardError, MemoryPlan, PeakMeter, Planner
from hessian_lens.partition import Partition

__all__ = [
    "METHODS",
    "MemoryGuardError",
    "MemoryPlan",
    "PseudoHessian",
    "differentiate",
    "losses_along",
    "memory_plan",
    "pseudo_gradient",
    "pseudo_hessian",
    "summaries_from_gradient",
    "summary_tensor",
    "taylor_terms",
]

LossFn = Callable[[Tensor, Tensor], Tensor]
Forward = Callable[[nn.Module, Any], Any]
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
        reduction: the loss's reduction over samples (``"mean"`` or ``"sum"``).
        notes: what the engine did that the caller should know (the math attention
            kernel, a fallback from the vmap back end).
        data_digest: a digest of the batches seen (their fingerprints), or ``""`` for a
            single batch taken whole.
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
    reduction: str = "mean"
    notes: list[str] = field(default_factory=list)
    data_digest: str = ""


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
    batch_dim: int | tuple[int, int] = 0,
    reduction: str | None = None,
    forward: Forward | None = None,
) -> PseudoHessian:
    """Pseudo-gradient ``g_bar`` and pseudo-Hessian ``H_bar`` (about S+1 backward passes).

    ``H_bar[s, s'] = (U^s)^T H U^s'`` and ``g_bar[s] = <U^s, grad L>`` of the loss of the
    whole data (all batches, of all ranks when distributed) in the loss's own reduction:
    ``L = sum_b W_b L_b / sum_b W_b`` for a mean (``W_b``: the samples of batch b), ``L =
    sum_b L_b`` for a sum (:mod:`hessian_lens.batches`). However the data are cut into
    batches, micro-batches or shards, the result is that of one batch holding them all.

    Args:
        model: any ``nn.Module``; it is left exactly as it was (the same ``Parameter``
            objects, buffers, grads, train/eval modes, hooks, attention settings).
        loss_fn: ``loss_fn(outputs, targets)`` returning the batch's loss (a mean or a sum
            over samples), or ``None`` when the model returns its own (``outputs.loss``).
        data: one batch or a re-iterable of batches (a list, a DataLoader without
            shuffling, ``hl.fixed_batches(loader, n)``); a batch is ``(inputs, targets)``
            (tensors, tuples, dicts or dataclasses) or a Mapping of model keyword
            arguments. When distributed, this rank's shard (possibly empty).
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
        batch_dim: the dimension holding the samples in every input and target tensor,
            or ``(inputs_dim, targets_dim)`` (e.g. ``(1, 0)`` for ``(T, N, F)`` inputs).
        reduction: ``"mean"`` or ``"sum"`` over samples; ``None`` reads it from a torch
            loss module or verifies it on the first batch (its loss against its halves').
            Per-sample losses (``reduction="none"`` modules) are reduced as declared.
        forward: ``forward(model, inputs) -> outputs`` for models with another calling
            convention; ``None``: ``model(x)``, ``model(*x)`` for a tuple, ``model(**x)``
            for a Mapping.

    Returns:
        A :class:`PseudoHessian` with ``H`` (S x S, symmetric) and ``g`` (S).

    Raises:
        MemoryGuardError: not even one sample fits the memory budget (says what would).
        DataChangedError: the two passes over ``data`` saw other samples (a shuffling
            loader): pass ``hl.fixed_batches(loader, n)``.
        ValueError: input the engine cannot vouch for (one line naming the fix).

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
        contract=_Contract.of(loss_fn, batch_dim, reduction, forward),
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
        reduction=out.reduction,
        notes=out.notes,
        data_digest=out.data_digest,
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
    batch_dim: int | tuple[int, int] = 0,
    reduction: str | None = None,
    forward: Forward | None = None,
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
        contract=_Contract.of(loss_fn, batch_dim, reduction, forward),
    )
    return out.full[order] if spec.full == order else out.diag[order]


def taylor_terms(
    model: nn.Module,
    loss_fn: LossFn | None,
    data,
    direction,
    max_order: int,
    device=None,
    dtype=None,
    train_mode: bool = False,
    *,
    distributed: bool | None = None,
    batch_dim: int | tuple[int, int] = 0,
    reduction: str | None = None,
    forward: Forward | None = None,
) -> Tensor:
    """``d^d L[u, .., u]`` for d = 1..max_order: derivatives of ``t -> L(theta + t u)`` at 0.

    Computed by nested forward-mode derivatives, independently of the summary back ends;
    ``summary_tensor(..., order=d).sum()`` equals entry ``d - 1``. Batches are not split
    (no memory plan). The other arguments as in :func:`pseudo_hessian`.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> net = torch.nn.Linear(3, 2)
        >>> x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
        >>> u = [torch.ones_like(p) for p in net.parameters()]
        >>> taylor_terms(net, F.cross_entropy, (x, y), u, max_order=2).shape
        torch.Size([2])
    """
    part = Partition.canonical(model)
    contract = _Contract.of(loss_fn, batch_dim, reduction, forward)
    batches = B.as_batches(data, two_passes=False)
    on = dist.resolve(distributed)
    with _functional_state(model, part, device, dtype, train_mode, contract) as st:
        u = _check_direction(direction, part, st.params)

        def local() -> list[Tensor]:
            total = torch.zeros(max_order, dtype=st.dtype, device=st.device)
            z = _Totals()
            for x, y, samples, weight in _micro_batches(batches, st, contract):
                total += weight * _taylor_batch(st, contract.loss, x, y, u, max_order)
                z.add(samples, weight)
            return [total, *z.tensors()]

        total, *z = _over_ranks(local, distributed=on, numel=max_order + 2, device=st.device)
    return total / _Totals.of(z).normaliser(contract.loss.reduction)


@torch.no_grad()
def losses_along(
    model: nn.Module,
    loss_fn: LossFn | None,
    data,
    direction: Sequence[Tensor],
    ts: Sequence[float],
    partition: Partition | None = None,
    *,
    batch_dim: int | tuple[int, int] = 0,
    reduction: str | None = None,
    forward: Forward | None = None,
) -> list[float]:
    """``L(theta + t v)`` for each ``t``: the whole data's loss (eval mode, one pass).

    ``v`` is ``direction`` (one tensor per parameter of ``partition``, canonical by default);
    the data contract as in :func:`pseudo_hessian`.
    """
    part = partition or Partition.canonical(model)
    contract = _Contract.of(loss_fn, batch_dim, reduction, forward)
    with _functional_state(model, part, None, None, False, contract) as st:
        v = _check_direction(direction, part, st.params)
        totals, z = [0.0] * len(ts), _Totals()
        for x, y, samples, weight in _micro_batches(B.as_batches(data, False), st, contract):
            for i, t in enumerate(ts):
                moved = [p + t * d for p, d in zip(st.params, v, strict=True)]
                totals[i] += weight * float(contract.loss(st.forward(x, moved), y))
            z.add(samples, weight)
    return [total / z.normaliser(contract.loss.reduction) for total in totals]


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
    loss_fn: LossFn | None,
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
    batch_dim: int | tuple[int, int] = 0,
    forward: Forward | None = None,
) -> MemoryPlan:
    """The memory plan the engine would follow for one batch.

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
    contract = _Contract.of(loss_fn, batch_dim, "mean", forward)
    with _functional_state(model, part, device, dtype, train_mode, contract) as st:
        back_end = _back_end(_pick_method(method), contract.loss, chunk_size)
        planner = _planner(st, part, spec, back_end, contract, train_mode)
        x, y, samples = _prepare(batch, st, contract)
        if samples <= PROBE_SAMPLES[-1]:
            raise ValueError(f"memory_plan needs more than {PROBE_SAMPLES[-1]} samples")
        return planner.probe(x, y, samples)


def _planner(st, part, spec, back_end, contract: _Contract, train_mode: bool) -> Planner:
    """The memory planner of a run; it cuts probe batches along the contract's dims."""
    dims = contract.dims

    def head(x, y, n: int) -> tuple:
        return B.narrow(x, dims.inputs, 0, n), _narrow_targets(y, dims, 0, n)

    return Planner(
        state=st,
        partition=part,
        spec=spec,
        back_end=back_end,
        splittable=not _batch_statistics(st.model, train_mode),
        head=head,
    )


# ---------------------------------------------------------------------------- driver
@dataclass(frozen=True)
class _Contract:
    """The data contract of one call (:mod:`hessian_lens.batches`)."""

    loss: B.LossContract
    dims: B.BatchDims
    forward: Forward | None

    @classmethod
    def of(cls, loss_fn, batch_dim, reduction, forward) -> _Contract:
        """Checked arguments of the public functions."""
        if forward is not None and not callable(forward):
            raise TypeError(f"forward must be callable, got {type(forward).__name__}")
        return cls(B.LossContract.of(loss_fn, reduction), B.BatchDims.of(batch_dim), forward)


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
    reduction: str = "mean"
    notes: list[str] = field(default_factory=list)
    data_digest: str = ""


def _run(
    model: nn.Module,
    loss_fn: LossFn | None,
    data,
    *,
    spec: _Spec,
    contract: _Contract,
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
    batches = B.as_batches(data, two_passes=direction is None)
    with _functional_state(model, part, device, dtype, train_mode, contract) as st:
        _check_back_end(method, model, train_mode)
        back_end = _back_end(method, contract.loss, chunk_size)
        planner = _planner(st, part, spec, back_end, contract, train_mode)
        if not on:
            planner.check_outputs()  # fail before pass 1 (when distributed: inside it)
        acc = _Accumulator.zeros(state=st, partition=part, spec=spec)
        prints = _passes(
            acc,
            batches,
            direction=direction,
            back_end=back_end,
            planner=planner,
            progress=progress,
            on=on,
            contract=contract,
        )
        out = acc.means(method=back_end.ran, memory=planner.report())
        out.reduction, out.notes = contract.loss.reduction, st.notes
        out.data_digest = prints.digest() if prints.seen else ""
        return out


def _passes(
    acc: _Accumulator, batches, *, direction, back_end: BackEnd, planner, progress, on, contract
) -> B.Fingerprints:
    """Set ``acc.direction``, then accumulate pass 2 into ``acc``; return the fingerprints.

    The direction is the given one, pass 1's gradient, or the single batch's own gradient.
    Pass 2 must see the batches pass 1 saw (:class:`~hessian_lens.batches.Fingerprints`).
    """
    shortcut = False
    if direction is None and not on:  # ranks need the union's gradient: never a shortcut
        shortcut, batches = _whole_single_batch(batches, acc.state, planner, contract)
    tick = _progress(progress, batches, passes=1 if direction is not None or shortcut else 2)
    prints = B.Fingerprints()
    passes = {"planner": planner, "tick": tick, "on": on, "contract": contract, "prints": prints}
    if direction is not None:
        acc.direction = _check_direction(direction, acc.partition, acc.state.params)
    elif not shortcut:  # a single batch taken whole gets its own gradient inside pass 2
        acc.direction = _mean_gradient(acc.state, batches, **passes)
        prints.start_checking()
    _summary_pass(acc, batches, back_end=back_end, **passes)
    prints.finish()
    tick.close()
    return prints


def _whole_single_batch(batches, state: _State, planner, contract) -> tuple[bool, Iterable]:
    """Whether ``batches`` is one batch processed without splitting, and the batches.

    Such a batch's own gradient is then the direction; it is moved to the device once.
    """
    if not (isinstance(batches, list) and len(batches) == 1):
        return False, batches
    x, y, samples = _prepare(batches[0], state, contract)
    return planner.micro_batch(x, y, samples) >= samples, [(x, y)]


def _mean_gradient(state: _State, batches, *, planner, tick, on, contract, prints) -> list[Tensor]:
    """Pass 1: ``u = sum_b W_b grad L_b / Z`` over all batches (and ranks).

    ``Z = sum_b W_b`` for a mean, 1 for a sum (:class:`_Totals`).
    """

    def local() -> list[Tensor]:
        planner.check_outputs()
        sums, z = [torch.zeros_like(p) for p in state.params], _Totals()
        for x, y, samples, weight in _micro_batches(
            batches, state, contract, planner=planner, tick=tick, prints=prints
        ):
            loss = contract.loss(state.forward(x), y)
            grads = differentiate(loss, state.params, retain_graph=False)
            for total, g in zip(sums, grads, strict=True):
                total.add_(g, alpha=weight)
            z.add(samples, weight)
        return [*sums, *z.tensors()]

    numel = sum(p.numel() for p in state.params) + 2
    *sums, n, w = _over_ranks(local, distributed=on, numel=numel, device=state.device)
    z = _Totals.of([n, w]).normaliser(contract.loss.reduction)
    return [total / z for total in sums]


def _summary_pass(
    acc: _Accumulator, batches, *, back_end, planner, tick, on, contract, prints
) -> None:
    """Pass 2: ``sum_b W_b D^(k)_b(u)``, ``sum_b W_b L_b``, the samples and ``sum_b W_b``."""

    def local() -> list[Tensor]:
        planner.check_outputs()
        for x, y, samples, weight in _micro_batches(
            batches, acc.state, contract, planner=planner, tick=tick, prints=prints
        ):
            acc.add_loss(back_end.product(acc, x, y, weight), samples, weight)
        return acc.sums()

    acc.load(_over_ranks(local, distributed=on, numel=acc.numel(), device=acc.state.device))
    acc.reduction = contract.loss.reduction


def _over_ranks(local, *, distributed: bool, numel: int, device) -> list[Tensor]:
    """``local()``, summed over the ranks when distributed."""
    if not distributed:
        return local()
    return dist.sum_over_ranks(local, numel=numel, device=device)


@dataclass
class _Totals:
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
    def of(cls, tensors: Sequence[Tensor]) -> _Totals:
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


# ---------------------------------------------------------------------------- accumulator
@dataclass
class _Accumulator:
    """Running weighted sums of pass 2 with the fixed direction ``u``.

    With ``W_b`` the weight of micro-batch ``b`` (its samples for a mean, 1 for a sum)::

        full[k] = sum_b W_b D^(k)_b(u)           (k <= spec.full; entries at s1 <= .. <= sk
                                                  for the loop, all entries for vmap)
        diag[k] = sum_b W_b D^(k)_b(u)[s, .., s]  (spec.full < k <= spec.diag)
        loss_sum = sum_b W_b L_b,   totals = (sum_b n_b, sum_b W_b)

    :meth:`means` divides by ``Z`` (``sum_b W_b`` for a mean, 1 for a sum).

    ``direction`` is ``None`` until known (a single batch's own gradient: the back end sets it).
    """

    state: _State
    partition: Partition
    spec: _Spec
    direction: list[Tensor] | None
    full: dict[int, Tensor]
    diag: dict[int, Tensor]
    loss_sum: float = 0.0
    totals: _Totals = field(default_factory=lambda: _Totals())
    reduction: str | None = None

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
        self.totals = _Totals.of([next(tensors), next(tensors)])

    def means(self, *, method: str, memory: MemoryPlan | None) -> _Summaries:
        """Divide by ``Z``; fill every full order from its non-decreasing indices."""
        z = self.totals.normaliser(self.reduction)
        return _Summaries(
            full={k: _symmetrize(t / z) if k > 1 else t / z for k, t in self.full.items()},
            diag={k: t / z for k, t in self.diag.items()},
            loss=self.loss_sum / z,
            n_samples=self.totals.samples,
            direction=self.direction or [],
            partition=self.partition,
            method=method,
            memory=memory,
        )


# ---------------------------------------------------------------------------- loop back end
class _LoopBackEnd:
    """Reverse over reverse autograd, pruned by symmetry (module docstring)."""

    name = ran = "loop"

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

    def screen(self, state: _State, x) -> None:
        """Nothing to decide before planning (the vmap back end may fall back here)."""

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
        self.fallback: _LoopBackEnd | None = None
        self.screened = False

    @property
    def ran(self) -> str:
        """The back end that computed: ``"vmap"``, or ``"loop"`` after a fallback."""
        return "vmap" if self.fallback is None else "loop"

    def product(self, acc: _Accumulator, x, y, weight: float) -> Tensor:
        """Same contributions as the loop's, as ``(-1)^k d^k f / d eta^k`` at 0.

        The rest of the run switches to the loop back end, with a note in the result (both
        fill the same entries), when the model runs an operation whose torch.func
        derivatives are wrong (:data:`VMAP_WRONG_OPS`, screened on the first micro-batch)
        or that torch.func cannot vectorise or differentiate forward (the fused attention
        of ``nn.MultiheadAttention``).
        """
        self.screen(acc.state, x)
        if self.fallback is None:
            try:
                return self._product(acc, x, y, weight)
            except (NotImplementedError, RuntimeError) as err:
                if not _unsupported_by_func(err):
                    raise
                self._fall_back(acc.state, f"torch.func cannot run this model ({_first_line(err)})")
        return self.fallback.product(acc, x, y, weight)

    def screen(self, state: _State, x) -> None:
        """Fall back to the loop when the model runs one of :data:`VMAP_WRONG_OPS` (once).

        Called by the planner before it plans (and by the first micro-batch when nothing
        was planned): a run that falls back is planned as the loop it runs.
        """
        if self.fallback is None and not self.screened:
            self.screened = True
            wrong = ops_run(lambda: state.forward(x), VMAP_WRONG_OPS)
            if wrong:
                self._fall_back(state, f"torch.func's derivatives of {', '.join(wrong)} are wrong")

    def _fall_back(self, state: _State, why: str) -> None:
        self.fallback = _LoopBackEnd(self.loss_fn)
        state.notes.append(f"method='vmap' fell back to the loop back end: {why}")

    def _product(self, acc: _Accumulator, x, y, weight: float) -> Tensor:
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
        if self.fallback is not None:
            return [None]
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
        if self.fallback is not None:  # the loop will run (screen): its peaks
            return self.fallback.probe(**batch, chunk=None, meter=meter)
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


FUNC_UNSUPPORTED_HINTS = ("forward AD", "vmap", "Batching rule", "functorch")
# aten operations whose torch.func (reverse over forward) derivatives are wrong: layer_norm's
# H̄ was off by 3% relative on torch 2.14 (tests/test_batches.py keeps the check)
VMAP_WRONG_OPS = ("native_layer_norm",)


class _OpsSeen(TorchDispatchMode):
    """The names of the aten operations run while active."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False  # never compiled: no torch._dynamo import (2 s)

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def ops_run(fn: Callable[[], object], names: Sequence[str]) -> list[str]:
    """Which of the aten operations ``names`` one call of ``fn`` runs (no gradient kept)."""
    with torch.no_grad(), _OpsSeen() as seen:
        fn()
    return [n for n in names if n in seen.names]


def _unsupported_by_func(err: Exception) -> bool:
    """Whether torch.func (vmap, forward mode) does not support an operation of the model."""
    return isinstance(err, NotImplementedError) or any(
        hint in str(err) for hint in FUNC_UNSUPPORTED_HINTS
    )


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__


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
    call: Forward | None = None
    coupled: bool = False
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of_model(cls, model: nn.Module, part: Partition, device, dtype) -> _State:
        """Detached copies of the model's tensors, cast to ``device`` and ``dtype``.

        Raises:
            ValueError: a complex parameter, or a dtype that is not a real floating type.
        """
        params = part.parameters(model)
        _check_real(part.names, params)
        device = torch.device(device) if device is not None else params[0].device
        dtype = dtype if dtype is not None else params[0].dtype
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a real floating point type, got {dtype}")
        covered = set(part.names)
        return cls(
            device=device,
            dtype=dtype,
            params=[p.detach().to(device, dtype).clone().requires_grad_(True) for p in params],
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

    def forward(self, x, params: Sequence[Tensor] | None = None):
        """The model's output on inputs ``x`` with ``params`` (default: the working copies).

        ``x`` is passed as ``model(x)``, ``model(*x)`` (tuple / list) or ``model(**x)``
        (Mapping), or through the caller's ``forward(model, x)``.
        """
        values = dict(zip(self.names, params if params is not None else self.params, strict=True))
        values.update(self.fixed)
        if self.call is not None:
            caller = _Caller(self.model, self.call)
            return functional_call(caller, {f"model.{k}": v for k, v in values.items()}, (x,))
        if isinstance(x, Mapping):
            return functional_call(self.model, values, (), dict(x))
        args = tuple(x) if isinstance(x, (tuple, list)) else (x,)
        return functional_call(self.model, values, args)


class _Caller(nn.Module):
    """The model called through the user's ``forward(model, inputs)``."""

    def __init__(self, model: nn.Module, call: Forward) -> None:
        super().__init__()
        self.model, self.call = model, call

    def forward(self, inputs):
        """``call(model, inputs)``."""
        return self.call(self.model, inputs)


def _check_real(names: Sequence[str], params: Sequence[Tensor]) -> None:
    complex_ = [n for n, p in zip(names, params, strict=True) if p.is_complex()]
    if complex_:
        raise ValueError(
            f"parameters {complex_[:3]} are complex: Hessian Lens analyses real parameters "
            "only. Store a complex weight as two real tensors (real and imaginary parts), or "
            "leave it out of the partition (requires_grad_(False))"
        )


@contextmanager
def _functional_state(
    model: nn.Module, part: Partition, device, dtype, train_mode: bool, contract=None
):
    """Working copies in the requested mode, under the math attention kernel.

    The model comes back as it came in: its modes, and the very ``Parameter`` and buffer
    objects of every module (:func:`_kept_as_is`).
    """
    modes = [(m, m.training) for m in model.modules()]
    with _kept_as_is(model), _math_attention() as attention:
        for m in model.modules():  # not model.train(): torch.export modules refuse it
            m.training = train_mode
        try:
            st = _State.of_model(model, part, device, dtype)
            st.call = contract.forward if contract is not None else None
            st.coupled = _samples_coupled(model, train_mode)
            if attention and _has_attention(model):
                st.notes.append(attention)
            yield st
        finally:
            for m, was_training in modes:
                m.training = was_training


@contextmanager
def _kept_as_is(model: nn.Module):
    """Put back every module's own ``Parameter`` and buffer objects after the block.

    ``functional_call`` swaps tensors into modules and back; for a module registered under
    two names (``self.layers = nn.ModuleList([self.fc1, ...])``) it put back plain tensors,
    so an optimizer built before the call updated tensors the model no longer used.
    """
    saved = [(m, dict(m._parameters), dict(m._buffers)) for m in model.modules()]
    try:
        yield
    finally:
        for m, params, buffers in saved:
            _restore(m, "_parameters", params)
            _restore(m, "_buffers", buffers)


def _restore(module: nn.Module, slot: str, saved: dict) -> None:
    current = getattr(module, slot)
    for name in saved:
        module.__dict__.pop(name, None)  # a plain attribute shadowing the registered one
    if current.keys() != saved.keys() or any(current[k] is not v for k, v in saved.items()):
        current.clear()
        current.update(saved)


@contextmanager
def _math_attention():
    """Scaled dot-product attention on its math kernel: the fused ones have no 2nd derivative.

    Yields the note recorded in results (``""`` where torch has no kernel choice); the
    caller's kernel setting is restored after.
    """
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - torch < 2.3
        yield ""
        return
    with sdpa_kernel(SDPBackend.MATH):
        yield (
            "attention ran on the math scaled-dot-product kernel (the fused kernels have no "
            "second derivative)"
        )


def _has_attention(model: nn.Module) -> bool:
    return any("attention" in type(m).__name__.lower() for m in model.modules())


def _samples_coupled(model: nn.Module, train_mode: bool) -> bool:
    """Whether a batch's loss is not a function of its samples alone (train-mode noise)."""
    noisy = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    return train_mode and any(isinstance(m, noisy) for m in model.modules())


def _cast(t: Tensor, device, dtype) -> Tensor:
    t = t.detach().to(device)
    return t.to(dtype).clone() if t.is_floating_point() else t.clone()


def _to(t: Tensor, st: _State) -> Tensor:
    return t.to(st.device, st.dtype) if t.is_floating_point() else t.to(st.device)


def _micro_batches(
    batches: Iterable, state: _State, contract: _Contract, *, planner=None, tick=None, prints=None
) -> Iterator[tuple[object, object, int, float]]:
    """The one data loop: ``(inputs, targets, n, W)`` on the device, per micro-batch.

    Each batch is fingerprinted (``prints``), its loss's reduction verified (once), and it
    is cut into micro-batches that fit (``planner``) along its batch dimension; empty
    micro-batches and those with nothing to average are skipped; ``tick()`` per batch.
    """
    dims = contract.dims
    for batch in batches:
        x, y, samples = _prepare(batch, state, contract)
        if prints is not None:
            prints.observe(x, y, samples)
        size = planner.micro_batch(x, y, samples) if planner is not None else samples
        _verify(contract, state, x, y, samples, limit=max(size, 2))
        for start in range(0, samples, max(size, 1)):
            stop = min(start + size, samples)
            mx, my = B.narrow(x, dims.inputs, start, stop), _narrow_targets(y, dims, start, stop)
            weight = contract.loss.weight(my, stop - start)
            if weight:
                yield mx, my, stop - start, weight
        if tick is not None:
            tick()


def _verify(contract: _Contract, st: _State, x, y, samples: int, limit: int) -> None:
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
    loss.verify(
        lambda a, b: loss(st.forward(a), b),
        B.narrow(x, dims.inputs, 0, n),
        _narrow_targets(y, dims, 0, n),
        dims,
        n,
    )


def _narrow_targets(y, dims: B.BatchDims, start: int, stop: int):
    return None if y is None else B.narrow(y, dims.targets, start, stop)


def _prepare(batch, st: _State, contract: _Contract) -> tuple:
    """``(inputs, targets, samples)`` of a batch, moved and cast for the working state."""
    x, y = B.split_batch(batch)
    samples = B.count_samples(x, y, contract.dims)
    return B.tree_map(lambda t: _to(t, st), x), B.tree_map(lambda t: _to(t, st), y), samples


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
