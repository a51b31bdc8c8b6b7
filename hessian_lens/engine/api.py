"""The engine's public functions: H̄, ḡ, D^(d), Taylor terms, losses along a direction.

For a direction ``u`` and a partition ``I_1 .. I_S`` (``U^s``: ``u`` on group s, zero
elsewhere)::

    D^(d)(u)[s1, .., sd] = d^d L / dtheta^d [U^s1, .., U^sd]
    g_bar = D^(1)(u),  g_bar[s] = <U^s, grad L>            (= sum_{p in I_s} g_p^2 for u = g)
    H_bar = D^(2)(u),  H_bar[s, s'] = (U^s)^T H U^s'

Every function takes ``options=`` (:class:`~hessian_lens.engine.options.Options`) and its
fields as keywords.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Unpack

import torch
from torch import Tensor, nn

from hessian_lens import batches as B
from hessian_lens import distributed as dist
from hessian_lens.engine.accumulate import Accumulator, Spec, symmetrize
from hessian_lens.engine.driver import make_back_end, make_planner, over_ranks, resolve_method, run
from hessian_lens.engine.feed import Totals, check_direction, micro_batches, prepare
from hessian_lens.engine.loop import add_from_gradient
from hessian_lens.engine.options import EngineKeywords, LossFn, Options
from hessian_lens.engine.state import State, functional_state
from hessian_lens.engine.vmapped import taylor_batch
from hessian_lens.memory import PROBE_SAMPLES, MemoryPlan
from hessian_lens.partition import Partition

__all__ = [
    "PseudoHessian",
    "losses_along",
    "memory_plan",
    "pseudo_gradient",
    "pseudo_hessian",
    "summaries_from_gradient",
    "summary_tensor",
    "taylor_terms",
]


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


def pseudo_hessian(
    model: nn.Module,
    loss_fn: LossFn | None,
    data,
    partition: Partition | None = None,
    direction=None,
    *,
    d3_diagonal: bool = False,
    options: Options | None = None,
    **keywords: Unpack[EngineKeywords],
) -> PseudoHessian:
    """Pseudo-gradient ``g_bar`` and pseudo-Hessian ``H_bar`` (about S+1 backward passes).

    ``H_bar[s, s'] = (U^s)^T H U^s'`` and ``g_bar[s] = <U^s, grad L>`` of the loss of the
    whole data (all batches, of all ranks when distributed) in the loss's own reduction:
    ``L = sum_b W_b L_b / sum_b W_b`` for a mean (``W_b``: what batch b's loss divides by,
    its samples or valid targets), ``L = sum_b L_b`` for a sum (:mod:`hessian_lens.batches`).
    However the data are cut into batches, micro-batches or shards, the result is that of
    one batch holding them all.

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
        d3_diagonal: also return ``D^(3)(u)[s, s, s]`` (S more passes).
        options: the data contract and run options (:class:`hessian_lens.Options`:
            ``batch_dim``, ``reduction``, ``forward``, ``device``, ``dtype``, ``method``,
            ``train_mode``, ``chunk_size``, ``distributed``, ``progress``).
        **keywords: any field of :class:`hessian_lens.Options`, overriding ``options``.

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
    out = run(
        model,
        loss_fn,
        data,
        spec=Spec.of(2, d3_diagonal=d3_diagonal),
        options=Options.of(options, **keywords),
        partition=partition,
        direction=direction,
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
    loss_fn: LossFn | None,
    data,
    partition: Partition | None = None,
    direction=None,
    *,
    options: Options | None = None,
    **keywords: Unpack[EngineKeywords],
) -> Tensor:
    """``g_bar[s] = <U^s, grad L>``; for ``u = g`` this is ``sum_{p in I_s} g_p^2``.

    Arguments as in :func:`pseudo_hessian`.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> net = torch.nn.Linear(3, 2)
        >>> x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
        >>> g = pseudo_gradient(net, F.cross_entropy, (x, y))
        >>> grads = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
        >>> bool(torch.allclose(g, torch.stack([(t ** 2).sum() for t in grads])))
        True
    """
    return summary_tensor(
        model, loss_fn, data, 1, partition, direction, options=options, **keywords
    )


def summary_tensor(
    model: nn.Module,
    loss_fn: LossFn | None,
    data,
    order: int,
    partition: Partition | None = None,
    direction=None,
    *,
    diagonal: bool = False,
    options: Options | None = None,
    **keywords: Unpack[EngineKeywords],
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
    spec = Spec.of(order, diagonal=diagonal)
    out = run(
        model,
        loss_fn,
        data,
        spec=spec,
        options=Options.of(options, **keywords),
        partition=partition,
        direction=direction,
    )
    return out.full[order] if spec.full == order else out.diag[order]


def taylor_terms(
    model: nn.Module,
    loss_fn: LossFn | None,
    data,
    direction,
    max_order: int,
    *,
    options: Options | None = None,
    **keywords: Unpack[EngineKeywords],
) -> Tensor:
    """``d^d L[u, .., u]`` for d = 1..max_order: derivatives of ``t -> L(theta + t u)`` at 0.

    Computed by nested forward-mode derivatives, independently of the summary back ends;
    ``summary_tensor(..., order=d).sum()`` equals entry ``d - 1``. Batches are not split
    (no memory plan; ``method``, ``chunk_size`` and ``progress`` do not apply). The other
    arguments as in :func:`pseudo_hessian`.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> net = torch.nn.Linear(3, 2)
        >>> x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
        >>> u = [torch.ones_like(p) for p in net.parameters()]
        >>> taylor_terms(net, F.cross_entropy, (x, y), u, max_order=2).shape
        torch.Size([2])
    """
    opts = Options.of(options, **keywords)
    part = Partition.canonical(model)
    contract = opts.contract(loss_fn)
    batches = B.as_batches(data, two_passes=False)
    on = dist.resolve(opts.distributed)
    with functional_state(model, part, opts) as st:
        u = check_direction(direction, part, st.params)

        def local() -> list[Tensor]:
            total = torch.zeros(max_order, dtype=st.dtype, device=st.device)
            z = Totals()
            for x, y, samples, weight in micro_batches(batches, st, contract):
                total += weight * taylor_batch(st, contract.loss, x, y, u, max_order)
                z.add(samples, weight)
            return [total, *z.tensors()]

        total, *z = over_ranks(local, distributed=on, numel=max_order + 2, device=st.device)
    return total / Totals.of(z).normaliser(contract.loss.reduction)


@torch.no_grad()
def losses_along(
    model: nn.Module,
    loss_fn: LossFn | None,
    data,
    direction: Sequence[Tensor],
    ts: Sequence[float],
    partition: Partition | None = None,
    *,
    options: Options | None = None,
    **keywords: Unpack[EngineKeywords],
) -> list[float]:
    """``L(theta + t v)`` for each ``t``: the whole data's loss (one pass, this process).

    ``v`` is ``direction`` (one tensor per parameter of ``partition``, canonical by default);
    the data contract as in :func:`pseudo_hessian` (eval mode unless ``train_mode=True``).
    """
    opts = Options.of(options, **keywords)
    part = partition or Partition.canonical(model)
    contract = opts.contract(loss_fn)
    with functional_state(model, part, opts) as st:
        v = check_direction(direction, part, st.params)
        totals, z = [0.0] * len(ts), Totals()
        for x, y, samples, weight in micro_batches(B.as_batches(data, False), st, contract):
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
    acc = Accumulator.zeros(
        state=State.of_tensors(params),
        partition=part,
        spec=Spec.of(2, d3_diagonal=d3_diagonal),
        direction=list(u),
    )
    with torch.enable_grad():
        add_from_gradient(acc, grads, weight=1.0)
    d3 = acc.diag.get(3)
    return acc.full[1].detach(), symmetrize(acc.full[2]).detach(), d3


def memory_plan(
    model: nn.Module,
    loss_fn: LossFn | None,
    batch,
    *,
    order: int = 2,
    diagonal: bool = False,
    d3_diagonal: bool = False,
    partition: Partition | None = None,
    options: Options | None = None,
    **keywords: Unpack[EngineKeywords],
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
    opts = Options.of(options, **keywords)
    part = partition if partition is not None else Partition.canonical(model)
    part.check(model)
    spec = Spec.of(order, diagonal=diagonal, d3_diagonal=d3_diagonal)
    contract = opts.replace(reduction="mean").contract(loss_fn)
    with functional_state(model, part, opts) as st:
        method = resolve_method(opts.method)
        back_end = make_back_end(method, contract.loss, opts.chunk_size, opts.curvature)
        planner = make_planner(st, part, spec, back_end, contract, opts.train_mode)
        x, y, samples = prepare(batch, st, contract)
        if samples <= PROBE_SAMPLES[-1]:
            raise ValueError(f"memory_plan needs more than {PROBE_SAMPLES[-1]} samples")
        return planner.probe(x, y, samples)
