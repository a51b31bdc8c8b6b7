"""The vmap back end: ``torch.func`` through ``f(eta) = L(theta - sum_s eta_s U^s)``.

The derivatives of ``f`` at 0 are ``(-1)^d D^(d)``: reverse mode over nested forward-mode
directional derivatives, vmapped over the S basis directions in chunks. Layer norms run
decomposed (:class:`DecomposedNorms`: mean, variance, ``rsqrt``), whose derivatives
torch.func takes exactly, where its own reverse-over-forward derivative of
``native_layer_norm`` is wrong. Models that still run an operation whose torch.func
derivatives are wrong (:data:`VMAP_WRONG_OPS`) or that torch.func cannot vectorise fall back
to the loop back end, with a note in the result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from hessian_lens import batches as B
from hessian_lens.engine.accumulate import Accumulator, Spec
from hessian_lens.engine.autodiff import differentiate
from hessian_lens.engine.loop import LoopBackEnd
from hessian_lens.engine.options import LossFn
from hessian_lens.engine.state import State
from hessian_lens.memory import ModelMemo, PeakMeter

__all__ = [
    "VMAP_BASE",
    "VMAP_WRONG_OPS",
    "DecomposedNorms",
    "VmapBackEnd",
    "layer_norm",
    "ops_run",
    "taylor_batch",
]

VMAP_BASE = 1.0  # vmap peak on the CPU ~ (VMAP_BASE + directions at once) x the loop's peak
SCREENS = ModelMemo()  # the VMAP_WRONG_OPS a model runs, per structure and input shapes


class VmapBackEnd:
    """``torch.func`` through ``f(eta) = L(theta - sum_s eta_s U^s)`` (module docstring)."""

    name = "vmap"

    def __init__(self, loss_fn: LossFn, chunk_size: int | None) -> None:
        self.loss_fn = loss_fn
        self.chunk_size = chunk_size
        self.fixed_chunk = chunk_size is not None
        self.fallback: LoopBackEnd | None = None
        self.screened = False

    @property
    def ran(self) -> str:
        """The back end that computed: ``"vmap"``, or ``"loop"`` after a fallback."""
        return "vmap" if self.fallback is None else "loop"

    def product(self, acc: Accumulator, x, y, weight: float) -> Tensor:
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

    def screen(self, state: State, x) -> None:
        """Fall back to the loop when the model runs one of :data:`VMAP_WRONG_OPS` (once).

        Called by the planner before it plans (and by the first micro-batch when nothing
        was planned): a run that falls back is planned as the loop it runs.
        """
        if self.fallback is None and not self.screened:
            self.screened = True
            shapes = tuple((tuple(t.shape), t.dtype) for t in B.tree_leaves(x))
            key = ("vmap screen", state.device, state.dtype, shapes)
            wrong = SCREENS.get(
                state.model, key, lambda: ops_run(_forward(state, x), VMAP_WRONG_OPS)
            )
            if wrong:
                self._fall_back(state, f"torch.func's derivatives of {', '.join(wrong)} are wrong")

    def _fall_back(self, state: State, why: str) -> None:
        self.fallback = LoopBackEnd(self.loss_fn)
        state.notes.append(f"method='vmap' fell back to the loop back end: {why}")

    def _product(self, acc: Accumulator, x, y, weight: float) -> Tensor:
        st, S = acc.state, len(acc.partition)
        if acc.direction is None:
            loss = self.loss_fn(st.forward(x), y)
            acc.direction = [g.detach() for g in differentiate(loss, st.params)]
        f = _moved_loss(st, acc.partition, self.loss_fn, x, y, acc.direction)
        basis = torch.eye(S, dtype=st.dtype, device=st.device)
        with DecomposedNorms():
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
        loop = LoopBackEnd(self.loss_fn).probe(**batch, chunk=None, meter=meter)
        return [int((VMAP_BASE + _vmap_width(spec, chunk)) * loop[-1])]

    def measure(self, *, state, partition, spec, x, y, chunk: int, meter: PeakMeter) -> list[int]:
        """Peak of the vmapped derivatives along the first ``chunk`` basis directions."""
        loss = self.loss_fn(state.forward(x), y)
        u = [g.detach() for g in differentiate(loss, state.params)]
        f = _moved_loss(state, partition, self.loss_fn, x, y, u)
        basis = torch.eye(len(partition), dtype=state.dtype, device=state.device)[:chunk]
        with DecomposedNorms():
            _vmap_summaries(f, spec, basis, chunk)
        return [meter.peak()]


def layer_norm(x: Tensor, shape, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """``F.layer_norm`` from elementary operations: ``(x - mean) rsqrt(var + eps) w + b``.

    The mean and the (biased) variance are taken over the last ``len(shape)`` dimensions.
    torch.func differentiates every operation here exactly, in any nesting of modes.
    """
    dims = tuple(range(-len(tuple(shape)), 0)) if not isinstance(shape, int) else (-1,)
    centred = x - x.mean(dim=dims, keepdim=True)
    out = centred * torch.rsqrt((centred * centred).mean(dim=dims, keepdim=True) + eps)
    if weight is not None:
        out = out * weight
    return out + bias if bias is not None else out


class DecomposedNorms(TorchFunctionMode):
    """While active, ``F.layer_norm`` (``nn.LayerNorm``) runs as :func:`layer_norm`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.layer_norm or func is torch.layer_norm:
            return layer_norm(*args, **{k: v for k, v in kwargs.items() if k != "cudnn_enable"})
        return func(*args, **kwargs)


def _forward(state: State, x) -> Callable[[], object]:
    def run() -> object:
        with DecomposedNorms():
            return state.forward(x)

    return run


# torch.func's own words for what it cannot run ("saved tensor hooks": activation
# checkpointing, torch.utils.checkpoint with use_reentrant=False)
FUNC_UNSUPPORTED_HINTS = ("forward AD", "vmap", "Batching rule", "functorch", "saved tensor hooks")
# aten operations whose torch.func (reverse over forward) derivatives are wrong: layer_norm's
# H̄ was off by 3% relative on torch 2.14 (tests/test_heads.py keeps the check); F.layer_norm
# runs decomposed (DecomposedNorms), so only a direct call of the aten operation is caught
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
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _vmap_width(spec: Spec, chunk: int) -> int:
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
    f: Callable[[Tensor], Tensor], spec: Spec, basis: Tensor, chunk_size: int | None
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
        along = torch.func.vmap(lambda e, k=k: directional(f, [e] * k)(zero), chunk_size=chunk_size)
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
        return torch.func.grad(directional(f, directions))(at)

    fn = last_axis
    for axis in reversed(range(k - 1)):
        dims = tuple(0 if j == axis else None for j in range(k - 1))
        fn = torch.func.vmap(fn, in_dims=dims, chunk_size=chunk_size)
    return fn(*([basis] * (k - 1)))


def directional(
    f: Callable[[Tensor], Tensor], directions: Sequence[Tensor]
) -> Callable[[Tensor], Tensor]:
    """``eta -> d^k f(eta)[e_1, .., e_k]``, by nested forward mode."""

    def along(g: Callable[[Tensor], Tensor], e: Tensor) -> Callable[[Tensor], Tensor]:
        return lambda eta: torch.func.jvp(g, (eta,), (e,))[1]

    fn = f
    for e in directions:
        fn = along(fn, e)
    return fn


def taylor_batch(st, loss_fn, x, y, u, max_order) -> Tensor:
    """``d^k/dt^k L_b(theta + t u)`` at 0 for k = 1..max_order (nested forward mode)."""
    theta = [p.detach() for p in st.params]

    def f(t: Tensor) -> Tensor:
        return loss_fn(st.forward(x, [p + t * v for p, v in zip(theta, u, strict=True)]), y)

    one = torch.ones((), dtype=st.dtype, device=st.device)
    zero = torch.zeros((), dtype=st.dtype, device=st.device)
    return torch.stack([directional(f, [one] * k)(zero) for k in range(1, max_order + 1)])
