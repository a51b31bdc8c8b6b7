"""H̄ differentiated along the groups: per-group scalars instead of weight-shaped gradients.

The loop back end differentiates w.r.t. the parameters: every row of H̄ forms weight-shaped
gradients (``C^T x`` for a linear layer, one matrix product of the weight's size) only to
dot them with ``u`` group by group. Here the parameters are moved along the groups::

    theta(eta) = theta + sum_s eta_s U^s,   g_bar = dL/d eta (0),   H_bar = d^2 L / d eta^2 (0)

and a linear layer whose weight is only ever used by ``F.linear`` is evaluated as
``F.linear(x, W, b) + sum_s eta_s F.linear(x, U^s_W)``, which is exact (the layer is linear
in W) and whose derivative w.r.t. ``eta_s`` is ``<C, x (U^s_W)^T>``: a matrix of the output's
size. When the groups of W are its rows (attention heads of a fused ``qkv``, neurons) the
sum is ``F.linear(x, u_W) * eta[rows]``; when they are its columns (the heads read by an
output projection) it is ``F.linear(x * eta[columns], u_W)``; a whole-tensor group is
``eta_s F.linear(x, u_W)``. Other parameters (biases, norms, embeddings, a weight shared
with another operation) move as ``theta_p + expand(eta) * u_p``.

Row s of H̄ is one backward pass of ``g_bar[s]`` w.r.t. the scalars of the parameters that
hold groups ``s..S`` (the same pruning as the loop: layers before s are skipped); the rows
of one fused tensor, whose passes reach the same parameters, are vectorised
(``is_grads_batched``) when the memory plan allows. Only order 2 (``pseudo_hessian``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from hessian_lens.memory import ModelMemo

__all__ = ["Directional", "add_directional", "directional_rows", "linear_only", "row_batches"]

SCREENS = ModelMemo()  # the parameters used only as F.linear weights, per structure


@dataclass(frozen=True)
class _Linear:
    """How ``eta`` enters one linear weight: ``kind`` "whole", "rows" or "columns"."""

    index: int
    kind: str
    ids: Tensor | int  # the group of every row / column, or the one group


class _Uses(TorchFunctionMode):
    """Which parameter tensors are used only as the weight of ``F.linear``."""

    def __init__(self, ids: dict[int, int]) -> None:
        super().__init__()
        self.ids, self.linear, self.other = ids, set(), set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        weight = args[1] if func is F.linear and len(args) > 1 else kwargs.get("weight")
        for t in _tensors(args, kwargs):
            i = self.ids.get(id(t))
            if i is not None:
                (self.linear if func is F.linear and t is weight else self.other).add(i)
        return func(*args, **kwargs)


def _tensors(args, kwargs) -> list[Tensor]:
    out = []
    for a in (*args, *kwargs.values()):
        if isinstance(a, Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(t for t in a if isinstance(t, Tensor))
    return out


def linear_only(state, x) -> list[int]:
    """Indices of the parameters used only as ``F.linear`` weights (one forward, no grad)."""

    def screen() -> list[int]:
        params = [p.detach() for p in state.params]
        with torch.no_grad(), _Uses({id(p): i for i, p in enumerate(params)}) as uses:
            state.forward(x, params)
        return sorted(uses.linear - uses.other)

    shapes = tuple((tuple(t.shape), t.dtype) for t in _leaves(x))
    return SCREENS.get(state.model, ("linear uses", state.device, shapes), screen)


def _leaves(x) -> list[Tensor]:
    from hessian_lens import batches as B

    return B.tree_leaves(x)


def _layout(partition, i: int, shape: torch.Size) -> _Linear | None:
    """How the groups split linear weight i: whole, by rows, by columns, or otherwise."""
    a = partition.assignment[i]
    if isinstance(a, int):
        return _Linear(i, "whole", a)
    if len(shape) != 2:
        return None
    if bool((a == a[:, :1]).all()):
        return _Linear(i, "rows", a[:, 0].clone())
    if bool((a == a[:1, :]).all()):
        return _Linear(i, "columns", a[0, :].clone())
    return None


class _Moved(TorchFunctionMode):
    """``F.linear(x, W, b)`` plus ``sum_s eta_s F.linear(x, U^s_W)`` for the screened weights."""

    def __init__(self, table: dict[int, tuple[_Linear, Tensor, Tensor]]) -> None:
        super().__init__()
        self.table = table

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is not F.linear:
            return out
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        hit = self.table.get(id(weight))
        if hit is None:
            return out
        layout, eta, u = hit
        x = args[0] if args else kwargs["input"]
        if layout.kind == "columns":
            return out + F.linear(x * eta[layout.ids], u)
        return out + _TimesZero.apply(F.linear(x, u), eta[layout.ids])


class _TimesZero(torch.autograd.Function):
    """``p * e`` for an ``e`` that is zero (``eta`` at 0), broadcast along p's last dim.

    Exact, and cheaper than autograd's own formula: in a backward pass that builds no graph
    (the last one: the rows of H̄) the gradient of ``p``, ``z * e``, is zero, so it is not
    formed and the matrix product behind ``p`` is skipped. A pass that builds a graph (the
    gradient) forms it, for its derivative w.r.t. ``e``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(p: Tensor, e: Tensor) -> Tensor:
        return p * e

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, z: Tensor):
        p, e = ctx.saved_tensors
        zp = z * p
        grad_e = zp.reshape(-1, zp.shape[-1]).sum(0) if e.dim() else zp.sum()
        grad_p = z * e if torch.is_grad_enabled() and ctx.needs_input_grad[0] else None
        return grad_p, grad_e


class Directional:
    """One micro-batch's ``g_bar`` with its graph, for the rows of ``H_bar``.

    Args:
        state: the engine's working copies (:class:`~hessian_lens.engine.state.State`).
        partition: the groups.
        u: the direction, one tensor per parameter.
        linear: indices of the parameters used only as ``F.linear`` weights
            (:func:`linear_only`).
    """

    def __init__(self, state, partition, u: Sequence[Tensor], linear: Sequence[int]) -> None:
        self.state, self.partition, self.u = state, partition, list(u)
        S = len(partition)
        self.etas = [
            torch.zeros(S, dtype=state.dtype, device=state.device, requires_grad=True)
            for _ in state.params
        ]
        self.table: dict[int, tuple[_Linear, Tensor, Tensor]] = {}
        values = []
        for i, p in enumerate(state.params):
            layout = _layout(partition, i, p.shape) if i in set(linear) else None
            if layout is None:
                values.append(p.detach() + partition.expand(self.etas[i], i) * self.u[i])
                continue
            ids = layout.ids if isinstance(layout.ids, int) else partition._on(layout.ids, p.device)
            layout = _Linear(i, layout.kind, ids)
            w = p.detach()
            self.table[id(w)] = (layout, self.etas[i], self.u[i])
            values.append(w)
        self.values = values

    def loss(self, loss_fn, x, y) -> Tensor:
        """The micro-batch's loss at ``theta(eta)``, with its graph to ``eta``."""
        with _Moved(self.table):
            return loss_fn(self.state.forward(x, self.values), y)

    def gradient(self, loss: Tensor) -> list[Tensor]:
        """``dL/d eta`` per parameter (S entries each), with its graph."""
        return list(
            torch.autograd.grad(
                loss, self.etas, create_graph=True, allow_unused=True, materialize_grads=True
            )
        )


def directional_rows(d: Directional, grads: Sequence[Tensor], rows: list[int]) -> Tensor:
    """``H_bar[s, :]`` for the rows ``s`` in ``rows`` (entries ``t >= s`` exact).

    ``g_bar[s] = sum_{p holding s} dL/d eta_p [s]``; its derivative is taken w.r.t. the
    scalars of the parameters holding groups ``>= rows[0]`` only (all rows share them), in
    one backward pass per row or one vectorised pass for all.
    """
    part = d.partition
    phis = []
    for s in rows:
        terms = [grads[i][s] for i in part.params_of(s) if grads[i].requires_grad]
        phis.append(sum(terms) if terms else None)
    S = len(part)
    out = torch.zeros(len(rows), S, dtype=d.state.dtype, device=d.state.device)
    live = [r for r, phi in enumerate(phis) if phi is not None]
    if not live:
        return out
    wrt = [d.etas[i] for i in part.params_from(rows[0])]
    if len(live) == 1:
        got = torch.autograd.grad(phis[live[0]], wrt, retain_graph=True, allow_unused=True)
        out[live[0]] = sum(g for g in got if g is not None)
        return out
    stacked = torch.stack([phis[r] for r in live])
    got = torch.autograd.grad(
        stacked,
        wrt,
        grad_outputs=torch.eye(len(live), dtype=stacked.dtype, device=stacked.device),
        retain_graph=True,
        allow_unused=True,
        is_grads_batched=True,
    )
    out[live] = sum(g for g in got if g is not None)
    return out


def row_batches(partition, rows: Sequence[int], size: int) -> list[list[int]]:
    """``rows`` cut into runs of consecutive rows whose passes reach the same parameters.

    Rows ``s`` with equal ``params_from(s)`` (the heads of one fused tensor) can share one
    vectorised backward pass; a run holds at most ``size`` rows.

    Example:
        >>> from torch import nn
        >>> from hessian_lens.partition import Partition
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        >>> row_batches(Partition.by_neuron(net), range(6), 3)
        [[0, 1, 2], [3], [4, 5]]
    """
    out: list[list[int]] = []
    reach = None
    for s in rows:
        here = tuple(partition.params_from(s))
        if out and here == reach and len(out[-1]) < size:
            out[-1].append(s)
        else:
            out.append([s])
        reach = here
    return out


def add_directional(acc, loss_fn, batch, *, rows: int = 1, first: int = 0, tick=None) -> Tensor:
    """Add ``W *`` the ``g_bar`` and ``H_bar`` of ``batch = (x, y, W)`` into ``acc``; its loss.

    Args:
        acc: the running sums (its direction, or ``None``: this batch's own gradient).
        loss_fn: ``loss_fn(outputs, targets)``.
        batch: inputs, targets and the micro-batch's weight ``W``.
        rows: most rows per vectorised backward pass.
        first: the rows before it (and ``g_bar``) are in ``acc`` already (a resumed call).
        tick: ``tick(r)`` once the rows before ``r`` are in ``acc``.
    """
    x, y, weight = batch
    st, part = acc.state, acc.partition
    if acc.direction is None:  # a single batch taken whole: its own gradient
        loss = loss_fn(st.forward(x), y)
        grads = torch.autograd.grad(loss, st.params, allow_unused=True, materialize_grads=True)
        acc.direction = [g.detach() for g in grads]
    d = Directional(st, part, acc.direction, linear_only(st, x))
    loss = d.loss(loss_fn, x, y)
    grads = d.gradient(loss)
    if first == 0:
        acc.full[1] += weight * sum(g.detach() for g in grads)
    for run in row_batches(part, range(first, len(part)), max(rows, 1)):
        block = directional_rows(d, grads, run)
        for r, s in enumerate(run):
            acc.full[2][s, s:] += weight * block[r, s:]
        if tick is not None:
            tick(run[-1] + 1)
    return loss.detach()
