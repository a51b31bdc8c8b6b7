"""Curvature-vector products on one micro-batch: the Hessian ``H v`` or the Gauss-Newton ``G v``.

For a network ``f(x; theta)`` with outputs ``o`` and a loss ``l(o, y)`` of those outputs::

    H = J^T H_l J + sum_k (dl/do_k) d^2 o_k / dtheta^2        (the Hessian of l(f(x; theta)))
    G = J^T H_l J                                             (the generalised Gauss-Newton)

with ``J = do/dtheta`` and ``H_l = d^2 l / do^2``. Both are applied by autograd without
forming a matrix:

* ``H v``: ``grad(<g, v>)`` through the gradient ``g`` taken with ``create_graph=True``;
* ``G v``: ``J v`` by the double-backward trick (``a -> J^T a`` is linear in ``a``, so
  ``J v = grad(<J^T a, v>, a)``), then ``H_l (J v)`` in output space, then ``J^T (.)`` by one
  backward pass. For a cross-entropy on logits (torch's ``cross_entropy`` and
  ``CrossEntropyLoss`` without class weights or label smoothing, the project's
  ``next_token``), ``H_l z = (p * z - p (p . z)) / W`` per valid token, computed in closed
  form: a 50,000-token vocabulary never builds a V x V matrix. Any other loss goes through
  autograd on the outputs.

Every product is pruned: ``v`` lives on the parameters ``inputs`` and the result is taken
w.r.t. the parameters ``outputs`` only, so autograd skips the layers nobody asked for.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hessian_lens import batches as B
from hessian_lens.engine.autodiff import differentiate
from hessian_lens.engine.options import CURVATURES
from hessian_lens.engine.state import State

__all__ = [
    "CURVATURES",
    "FunctionalProducts",
    "GGNBackEnd",
    "GGNProducts",
    "HessianProducts",
    "products_for",
    "restricted",
]


class HessianProducts:
    """``H_b v`` for one micro-batch: the gradient's graph is built once, reused per product."""

    def __init__(self, state: State, loss_fn, x, y, inputs: Sequence[int]) -> None:
        self.state = state
        self.loss = loss_fn(state.forward(x), y)
        self.inputs = list(inputs)
        params = [state.params[i] for i in self.inputs]
        self.grads = dict(
            zip(self.inputs, differentiate(self.loss, params, create_graph=True), strict=True)
        )

    def gradient(self, which: Sequence[int]) -> list[Tensor]:
        """The micro-batch's gradient on the parameters ``which`` (among ``inputs``)."""
        return [self.grads[i].detach() for i in which]

    def apply(self, v: Sequence[Tensor], inputs: Sequence[int], outputs: Sequence[int]):
        """``(H v)`` on the parameters ``outputs``, ``v`` given on ``inputs``."""
        phi = sum((self.grads[i] * t).sum() for i, t in zip(inputs, v, strict=True))
        params = [self.state.params[i] for i in outputs]
        return differentiate(phi, params, retain_graph=True)

    def apply_batched(self, V: Sequence[Tensor], inputs: Sequence[int], outputs: Sequence[int]):
        """``H v_k`` for a stack of vectors (leading dimension k), one vectorised backward.

        ``grad(g, theta, grad_outputs=V)`` is ``(dg/dtheta)^T V = H V`` (H is symmetric).
        """
        pairs = [(self.grads[i], t) for i, t in zip(inputs, V, strict=True)]
        return _batched_vjp(pairs, [self.state.params[i] for i in outputs], V[0].shape[0])


class GGNProducts:
    """``G_b v = J^T H_l J v`` for one micro-batch (module docstring)."""

    def __init__(self, state: State, loss_fn, x, y, inputs: Sequence[int]) -> None:
        self.state, self.y = state, y
        self.outputs = state.forward(x)
        self.leaves = [t for t in B.tree_leaves(self.outputs) if t.requires_grad]
        if not self.leaves:
            raise ValueError("curvature='ggn': the model's outputs do not depend on its parameters")
        self.inputs = list(inputs)
        self.a = [torch.zeros_like(t, requires_grad=True) for t in self.leaves]
        params = [state.params[i] for i in self.inputs]
        jt_a = torch.autograd.grad(
            self.leaves, params, grad_outputs=self.a, create_graph=True, allow_unused=True
        )
        self.jt_a = dict(zip(self.inputs, jt_a, strict=True))
        self.output_hessian = _output_hessian(loss_fn, self.outputs, self.leaves, y)
        with torch.no_grad():
            self.loss = loss_fn(self.outputs, y)

    def gradient(self, which: Sequence[int]) -> list[Tensor]:
        """The micro-batch's gradient ``J^T dl/do`` on the parameters ``which``."""
        params = [self.state.params[i] for i in which]
        return _vjp(self.leaves, params, self.output_hessian.grads)

    def apply(self, v: Sequence[Tensor], inputs: Sequence[int], outputs: Sequence[int]):
        """``(G v)`` on the parameters ``outputs``, ``v`` given on ``inputs``."""
        terms = [(self.jt_a[i] * t).sum() for i, t in zip(inputs, v, strict=True)]
        terms = [t for t in terms if t.requires_grad]
        params = [self.state.params[i] for i in outputs]
        if not terms:
            return [torch.zeros_like(p) for p in params]
        jv = torch.autograd.grad(sum(terms), self.a, retain_graph=True, allow_unused=True)
        jv = [torch.zeros_like(a) if z is None else z for a, z in zip(self.a, jv, strict=True)]
        return _vjp(self.leaves, params, self.output_hessian(jv))

    def apply_batched(self, V: Sequence[Tensor], inputs: Sequence[int], outputs: Sequence[int]):
        """``G v_k`` for a stack of vectors (leading dimension k), vectorised backwards.

        ``J V = grad(J^T a, a, grad_outputs=V)`` (``a -> J^T a`` is linear), then ``H_l``
        in output space, then ``J^T`` by one batched backward pass.
        """
        k = V[0].shape[0]
        pairs = [(self.jt_a[i], t) for i, t in zip(inputs, V, strict=True)]
        jv = _batched_vjp(pairs, self.a, k, detach=False)
        w = self.output_hessian.batched(jv)
        return _batched_vjp(
            list(zip(self.leaves, w, strict=True)), [self.state.params[i] for i in outputs], k
        )


class FunctionalProducts:
    """``(H_b - G_b) v``: the functional part of the Hessian (Ormaniec et al.'s split).

    ``H - G = sum_k (dl/do_k) d^2 o_k / dtheta^2``, the curvature of the network itself
    weighted by the loss's gradient: zero for a model linear in its parameters.
    """

    def __init__(self, state: State, loss_fn, x, y, inputs: Sequence[int]) -> None:
        self.hessian = HessianProducts(state, loss_fn, x, y, inputs)
        self.ggn = GGNProducts(state, loss_fn, x, y, inputs)
        self.loss = self.hessian.loss

    def gradient(self, which: Sequence[int]) -> list[Tensor]:
        """The micro-batch's gradient on the parameters ``which``."""
        return self.hessian.gradient(which)

    def apply(self, v: Sequence[Tensor], inputs: Sequence[int], outputs: Sequence[int]):
        """``(H v - G v)`` on the parameters ``outputs``."""
        h, g = self.hessian.apply(v, inputs, outputs), self.ggn.apply(v, inputs, outputs)
        return [a - b for a, b in zip(h, g, strict=True)]

    def apply_batched(self, V: Sequence[Tensor], inputs: Sequence[int], outputs: Sequence[int]):
        """``H v_k - G v_k`` for a stack of vectors."""
        h = self.hessian.apply_batched(V, inputs, outputs)
        g = self.ggn.apply_batched(V, inputs, outputs)
        return [a - b for a, b in zip(h, g, strict=True)]


PRODUCTS = {"hessian": HessianProducts, "ggn": GGNProducts, "functional": FunctionalProducts}


def products_for(curvature: str):
    """The per-micro-batch product class of a curvature: ``H``, ``G`` or ``H - G``.

    ``"functional"`` (``H - G``) is offered by the measures (block norms and spectra), not
    by the summaries (``pseudo_hessian(...).H - pseudo_hessian(..., curvature="ggn").H``).
    """
    if curvature not in PRODUCTS:
        raise ValueError(f"curvature must be one of {tuple(PRODUCTS)}, got {curvature!r}")
    return PRODUCTS[curvature]


def _batched_vjp(pairs, wrt: Sequence[Tensor], k: int, detach: bool = True) -> list[Tensor]:
    """``sum_i (d out_i / d wrt)^T V_i`` for ``(out_i, V_i)`` pairs, batched over k vectors.

    Outputs without a graph contribute nothing; an input they never reach gets zeros.
    """
    live = [(o, v) for o, v in pairs if o is not None and o.requires_grad]
    zeros = [torch.zeros((k, *w.shape), dtype=w.dtype, device=w.device) for w in wrt]
    if not live:
        return zeros
    out = torch.autograd.grad(
        [o for o, _ in live],
        list(wrt),
        grad_outputs=[v for _, v in live],
        retain_graph=True,
        allow_unused=True,
        is_grads_batched=True,
    )
    out = [z if g is None else g for z, g in zip(zeros, out, strict=True)]
    return [g.detach() for g in out] if detach else out


def _vjp(leaves: Sequence[Tensor], params: Sequence[Tensor], cotangents) -> list[Tensor]:
    out = torch.autograd.grad(
        leaves, params, grad_outputs=list(cotangents), retain_graph=True, allow_unused=True
    )
    return [
        torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, out, strict=True)
    ]


# ---------------------------------------------------------------------------- H_l in output space
class _AutogradOutputHessian:
    """``H_l z`` by autograd on detached copies of the outputs (any loss of the outputs)."""

    def __init__(self, loss_fn, outputs, leaves: Sequence[Tensor], y) -> None:
        copies = {id(t): t.detach().requires_grad_(True) for t in leaves}
        self.copies = [copies[id(t)] for t in leaves]
        moved = B.tree_map(lambda t: copies.get(id(t), t.detach()), outputs)
        self.loss = loss_fn(moved, y)
        grads = torch.autograd.grad(self.loss, self.copies, create_graph=True, allow_unused=True)
        self.first = [
            torch.zeros_like(c) if g is None else g for c, g in zip(self.copies, grads, strict=True)
        ]
        self.grads = [g.detach() for g in self.first]

    def batched(self, Z: Sequence[Tensor]) -> list[Tensor]:
        """``H_l z_k`` for stacks of output-space vectors (leading dimension k)."""
        return _batched_vjp(
            list(zip(self.first, Z, strict=True)), self.copies, Z[0].shape[0], detach=False
        )

    def __call__(self, z: Sequence[Tensor]) -> list[Tensor]:
        terms = [(g * t).sum() for g, t in zip(self.first, z, strict=True) if g.requires_grad]
        if not terms:
            return [torch.zeros_like(c) for c in self.copies]
        out = torch.autograd.grad(sum(terms), self.copies, retain_graph=True, allow_unused=True)
        return [
            torch.zeros_like(c) if g is None else g for c, g in zip(self.copies, out, strict=True)
        ]


class _CrossEntropyOutputHessian:
    """``H_l z = (p * z - p (p . z)) * mask / W`` for a mean cross-entropy on logits.

    ``p`` is the softmax over the class dimension, ``mask`` keeps the targets that are not
    ``ignore_index`` and ``W`` counts them (sum reduction: ``W = 1``).
    """

    def __init__(self, logits: Tensor, y: Tensor, ignore_index: int, reduction: str) -> None:
        flat, targets = _flatten_classes(logits.detach(), y)
        self.shape = logits.shape
        self.mask = (targets != ignore_index).to(flat.dtype).unsqueeze(1)
        self.p = torch.softmax(flat, dim=1)
        count = float(self.mask.sum())
        self.scale = 1.0 if reduction == "sum" else 1.0 / max(count, 1.0)
        onehot = torch.zeros_like(self.p)
        keep = targets != ignore_index
        onehot[keep] = F.one_hot(targets[keep], flat.shape[1]).to(flat.dtype)
        self.grads = [_unflatten((self.p - onehot) * self.mask * self.scale, logits.shape)]

    def __call__(self, z: Sequence[Tensor]) -> list[Tensor]:
        (zt,) = z
        return [self._apply(zt.reshape(1, *self.shape))[0]]

    def batched(self, Z: Sequence[Tensor]) -> list[Tensor]:
        """``H_l z_k`` for a stack of vectors (leading dimension k)."""
        (zt,) = Z
        return [self._apply(zt)]

    def _apply(self, zt: Tensor) -> Tensor:
        flat = zt.reshape(zt.shape[0], *self.p.shape)
        pz = (self.p * flat).sum(dim=-1, keepdim=True)
        out = (self.p * flat - self.p * pz) * self.mask * self.scale
        return out.reshape(zt.shape[0], *self.shape)


def _output_hessian(loss_fn, outputs, leaves: Sequence[Tensor], y):
    """The closed form for a cross-entropy on logits, else autograd (module docstring)."""
    closed = _cross_entropy_options(loss_fn)
    if closed is not None and isinstance(outputs, Tensor) and _class_targets(outputs, y, closed):
        ignore_index, reduction, _ = closed
        return _CrossEntropyOutputHessian(outputs, y, ignore_index, reduction)
    return _AutogradOutputHessian(loss_fn, outputs, leaves, y)


def _cross_entropy_options(loss_fn) -> tuple[int, str, int] | None:
    """``(ignore_index, reduction, logit dims)`` of a plain cross-entropy, else ``None``.

    Logit dims: 2 for ``(N, C)`` logits (torch's cross-entropy), 3 for ``(B, T, V)`` ones
    (``next_token``).

    ``loss_fn`` is the engine's loss contract: its ``fn`` is the user's function.
    """
    from hessian_lens.losses import next_token

    fn = getattr(loss_fn, "fn", loss_fn)
    reduction = getattr(loss_fn, "reduction", None) or "mean"
    if getattr(loss_fn, "reduce_output", False) or reduction not in ("mean", "sum"):
        return None
    if fn is next_token:
        return -100, reduction, 3
    if fn is F.cross_entropy:
        return -100, reduction, 2
    if isinstance(fn, functools.partial) and fn.func is F.cross_entropy:
        kw = fn.keywords
        if (
            kw.get("weight") is None
            and not kw.get("label_smoothing")
            and kw.get("reduction", "mean") == reduction
        ):
            return kw.get("ignore_index", -100), reduction, 2
        return None
    if isinstance(fn, nn.CrossEntropyLoss) and fn.weight is None and not fn.label_smoothing:
        return fn.ignore_index, reduction, 2
    return None


def _class_targets(logits: Tensor, y, closed: tuple[int, str, int]) -> bool:
    """Class-index targets for logits of the closed form's shape (class dimension last)."""
    return (
        isinstance(y, Tensor)
        and not y.is_floating_point()
        and logits.dim() == closed[2]
        and y.shape == logits.shape[:-1]
    )


def _flatten_classes(t: Tensor, y):
    """``(N * T, C)`` logits (class dimension last) and ``(N * T,)`` targets."""
    flat = t.reshape(-1, t.shape[-1])
    return flat, (None if y is None else y.reshape(-1))


def _unflatten(t: Tensor, shape: torch.Size) -> Tensor:
    return t.reshape(shape)


# ---------------------------------------------------------------------------- the back end
class GGNBackEnd:
    """``G_bar = U^T G U`` and ``g_bar``: one Gauss-Newton product per group and micro-batch.

    Row s is ``<U^t, G U^s>`` for ``t >= s`` (symmetry gives the rest): ``v = U^s`` lives on
    the parameters of group s and the product is taken w.r.t. the groups ``s..S`` only.
    Order 2 only (the Gauss-Newton matrix has no higher-order companions).
    """

    name = ran = "loop"

    def __init__(self, loss_fn) -> None:
        self.loss_fn = loss_fn
        self.chunk_size = None

    def product(self, acc, x, y, weight: float) -> Tensor:
        """Add ``weight *`` this micro-batch's ``g_bar`` and ``G_bar`` into ``acc``."""
        st, part = acc.state, acc.partition
        every = list(range(len(st.params)))
        prods = GGNProducts(st, self.loss_fn, x, y, every)
        if acc.direction is None:
            acc.direction = prods.gradient(every)
        u = acc.direction
        g = prods.gradient(every)
        acc.full[1] += weight * part.reduce([a * b for a, b in zip(g, u, strict=True)], every)
        for s in range(len(part)):
            acc.full[2][s, s:] += weight * _row(prods, part, u, s)[s:]
        return prods.loss.detach()

    def chunks(self, S: int) -> list[int | None]:
        """One chunk: one group at a time."""
        return [None]

    def screen(self, state: State, x) -> None:
        """Nothing to decide before planning."""

    def probe(self, *, state, partition, spec, x, y, chunk, meter) -> list[int]:
        """Peak bytes after the gradient and after row 0 (the widest product)."""
        every = list(range(len(state.params)))
        prods = GGNProducts(state, self.loss_fn, x, y, every)
        u = prods.gradient(every)
        peaks = [meter.peak()]
        _row(prods, partition, u, 0)
        return [*peaks, meter.peak()]


def restricted(partition, u: Sequence[Tensor], s: int) -> tuple[list[int], list[Tensor]]:
    """``U^s``: ``u`` on the parameters holding group s, zero outside the group.

    Returns the parameter indices and the restricted tensors.
    """
    ids = partition.params_of(s)
    onehot = torch.zeros(len(partition), dtype=u[ids[0]].dtype, device=u[ids[0]].device)
    onehot[s] = 1.0
    return ids, [u[i] * partition.expand(onehot, i) for i in ids]


def _row(prods, partition, u: Sequence[Tensor], s: int) -> Tensor:
    """``<U^t, C U^s>`` for every group t (entries ``t >= s`` computed, the rest zero)."""
    ids, v = restricted(partition, u, s)
    outs = partition.params_from(s)
    cv = prods.apply(v, ids, outs)
    return partition.reduce([c * u[i] for c, i in zip(cv, outs, strict=True)], outs)
