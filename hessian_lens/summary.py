"""The engine: exact summaries D^(d) of the loss derivatives for a partition.

For a direction ``u`` and a partition ``I_1 .. I_S`` (``U^s``: ``u`` on group s, zero
elsewhere)::

    D^(d)(u)[s1, .., sd] = d^d L / dtheta^d [U^s1, .., U^sd]
    g_bar = D^(1)(u),  g_bar[s] = <U^s, grad L>            (= sum_{p in I_s} g_p^2 for u = g)
    H_bar = D^(2)(u),  H_bar[s, s'] = (U^s)^T H U^s'

The data's loss is the sample-weighted mean over its batches. Pass 1 computes the direction
(the gradient over all batches, unless given); pass 2 accumulates every order with that fixed
direction, so the result equals the one for a single batch holding all samples.

Two back ends compute the same numbers:

* ``"loop"``: reverse over reverse autograd. ``D^(k+1)[prefix, s']`` for all ``s' >= s`` is
  one backward pass of ``D^(k)[prefix, s]`` taken only w.r.t. the groups ``s..S`` (symmetry
  gives the rest), so autograd skips every layer before ``s``.
* ``"vmap"``: ``torch.func``, through ``f(eta) = L(theta - sum_s eta_s U^s)`` whose
  derivatives at 0 are ``(-1)^d D^(d)``: forward over reverse, vmapped over the S basis
  directions in chunks.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from hessian_lens.partition import Partition

LossFn = Callable[[Tensor, Tensor], Tensor]
Progress = bool | Callable[[int, int | None], None]
METHODS = ("auto", "loop", "vmap")


class MemoryGuardError(MemoryError):
    """The requested summary would not fit in the memory of the device."""


@dataclass
class PseudoHessian:
    """Result of :func:`pseudo_hessian`.

    Attributes:
        H: the S x S pseudo-Hessian ``H_bar = D^(2)(u)``.
        g: the S pseudo-gradient ``g_bar = D^(1)(u)``.
        labels: the group labels.
        partition: the partition used.
        loss: the mean loss over the data.
        n_samples: number of samples the loss averages.
        d3: the diagonal ``D^(3)(u)[s, s, s]`` when asked for (``d3_diagonal=True``).
        method: the back end that ran.
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


@dataclass(frozen=True)
class _Spec:
    """Which orders to compute: full D^(k) for k <= full, diagonals for full < k <= diag."""

    full: int
    diag: int = 0

    @property
    def top(self) -> int:
        return max(self.full, self.diag)


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
) -> PseudoHessian:
    """Pseudo-gradient ``g_bar`` and pseudo-Hessian ``H_bar`` (about S+1 backward passes).

    Args:
        model: any ``nn.Module``; it is left exactly as it was (parameters, buffers,
            grads, train/eval mode).
        loss_fn: ``loss_fn(outputs, targets)`` returning the batch *mean* loss.
        data: one ``(inputs, targets)`` batch or a re-iterable of batches (a DataLoader).
        partition: the groups; ``None`` means :meth:`Partition.canonical`.
        direction: ``u``, one tensor per covered parameter (sequence in partition order
            or ``{name: tensor}``); ``None`` means the gradient over all of ``data``.
        device: where to compute; ``None`` means the model's device.
        dtype: ``torch.float64`` for exact references; ``None`` means the model's dtype.
        method: ``"loop"``, ``"vmap"`` or ``"auto"`` (the loop, measured fastest).
        progress: ``True`` for a tqdm bar, or a callable ``(done, total)`` per batch.
        train_mode: run the model in train mode (BatchNorm batch statistics, dropout).
        d3_diagonal: also return ``D^(3)(u)[s, s, s]`` (S more passes).
        chunk_size: vmap back end only: directions per vectorised call.

    Returns:
        A :class:`PseudoHessian` with ``H`` (S x S, symmetric) and ``g`` (S).

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
    spec = _Spec(full=2, diag=3 if d3_diagonal else 0)
    out = _run(
        model,
        loss_fn,
        data,
        partition,
        direction,
        device,
        dtype,
        method,
        progress,
        train_mode,
        spec,
        chunk_size,
    )
    return PseudoHessian(
        H=out["full"][2],
        g=out["full"][1],
        labels=out["partition"].labels,
        partition=out["partition"],
        loss=out["loss"],
        n_samples=out["n"],
        d3=out["diag"].get(3),
        method=out["method"],
        direction=out["u"],
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
) -> Tensor:
    """The order-d summary ``D^(d)(u)``, shape ``(S,) * order`` (S^(d-1) passes).

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
    if not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be an integer >= 1, got {order!r}")
    spec = _Spec(full=order) if not diagonal or order == 1 else _Spec(full=1, diag=order)
    out = _run(
        model,
        loss_fn,
        data,
        partition,
        direction,
        device,
        dtype,
        method,
        progress,
        train_mode,
        spec,
        chunk_size,
    )
    return out["full"][order] if spec.full == order else out["diag"][order]


def taylor_terms(
    model: nn.Module,
    loss_fn: LossFn,
    data,
    direction,
    max_order: int,
    device=None,
    dtype=None,
    train_mode: bool = False,
) -> Tensor:
    """``d^d L[u, .., u]`` for d = 1..max_order: derivatives of ``t -> L(theta + t u)`` at 0.

    Computed by nested forward-mode derivatives, independently of the summary back ends;
    ``summary_tensor(..., order=d).sum()`` equals entry ``d - 1``.

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
    with _functional_state(model, part, device, dtype, train_mode) as st:
        u = _check_direction(direction, part, st.params)
        total, n = torch.zeros(max_order, dtype=st.dtype, device=st.device), 0
        for x, y in batches:
            x, y, nb = _prepare(x, y, st)
            total += nb * _taylor_batch(st, loss_fn, x, y, u, max_order)
            n += nb
    return total / n


# ---------------------------------------------------------------------------- driver
def _run(
    model,
    loss_fn,
    data,
    partition,
    direction,
    device,
    dtype,
    method,
    progress,
    train_mode,
    spec: _Spec,
    chunk_size,
) -> dict:
    method = _pick_method(method)
    part = partition if partition is not None else Partition.canonical(model)
    part.check(model)
    batches = _as_batches(data, two_passes=direction is None)
    with _functional_state(model, part, device, dtype, train_mode) as st:
        _guard_memory(len(part), spec, st)
        if method == "vmap" and _batch_statistics(model, train_mode):
            raise ValueError(
                "method='vmap' cannot differentiate BatchNorm with batch "
                "statistics (train mode, or no running statistics): torch.func's "
                "forward mode gives a wrong Hessian there. Use method='loop'."
            )
        single = isinstance(batches, list) and len(batches) == 1
        tick = _progress(progress, batches, passes=1 if direction is not None or single else 2)
        if direction is not None:
            u = _check_direction(direction, part, st.params)
        elif single:
            u = None  # one batch: its own gradient, taken inside pass 2 (saves a pass)
        else:
            u = _mean_gradient(st, loss_fn, batches, tick)
        out = _accumulate(st, loss_fn, batches, u, part, spec, method, chunk_size, tick)
        tick.close()
    out.update(partition=part, method=method)
    return out


def _accumulate(st, loss_fn, batches, u, part, spec, method, chunk_size, tick) -> dict:
    """Pass 2: sample-weighted sum of every batch's summaries with the fixed direction u."""
    S = len(part)
    full = {
        k: torch.zeros((S,) * k, dtype=st.dtype, device=st.device) for k in range(1, spec.full + 1)
    }
    diag = {
        k: torch.zeros(S, dtype=st.dtype, device=st.device)
        for k in range(spec.full + 1, spec.diag + 1)
    }
    loss_sum, n = 0.0, 0
    for x, y in batches:
        x, y, nb = _prepare(x, y, st)
        if method == "loop":
            loss, u = _loop_batch(st, loss_fn, x, y, u, part, spec, full, diag, nb)
        else:
            loss, u = _vmap_batch(st, loss_fn, x, y, u, part, spec, full, diag, nb, chunk_size)
        loss_sum += nb * float(loss)
        n += nb
        tick()
    if n == 0:
        raise ValueError("data holds no sample: give a batch or a non-empty loader")
    for k in full:
        full[k] = _symmetrize(full[k] / n) if k > 1 else full[k] / n
    return {
        "full": full,
        "diag": {k: v / n for k, v in diag.items()},
        "loss": loss_sum / n,
        "n": n,
        "u": u,
    }


def _mean_gradient(st, loss_fn, batches, tick) -> list[Tensor]:
    """Pass 1: the gradient of the mean loss over all batches (the default direction)."""
    total, n = None, 0
    for x, y in batches:
        x, y, nb = _prepare(x, y, st)
        loss = loss_fn(st.forward(x), y)
        grads = _grad(loss, st.params, create_graph=False)
        total = (
            [nb * g for g in grads]
            if total is None
            else [t + nb * g for t, g in zip(total, grads, strict=True)]
        )
        n += nb
        tick()
    if total is None or n == 0:
        raise ValueError("data holds no sample: give a batch or a non-empty loader")
    return [t / n for t in total]


# ---------------------------------------------------------------------------- loop back end
def _loop_batch(st, loss_fn, x, y, u, part, spec, full, diag, weight) -> tuple:
    """Add ``weight *`` this batch's summaries into ``full`` / ``diag``.

    Returns:
        The batch loss and the direction used (the batch gradient when ``u`` is None).
    """
    loss = loss_fn(st.forward(x), y)
    grads = _grad(loss, st.params, create_graph=spec.top > 1)
    u = [g.detach() for g in grads] if u is None else u
    accumulate_from_gradient(grads, st.params, u, part, spec, full, diag, weight)
    return loss.detach(), u


def summaries_from_gradient(
    grads, params, u, part: Partition, d3_diagonal: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``g_bar``, ``H_bar`` (and the ``D^(3)`` diagonal) of one loss, from its gradient
    ``grads`` w.r.t. ``params`` taken with ``create_graph=True`` (what an optimizer has).
    """
    spec = _Spec(full=2, diag=3 if d3_diagonal else 0)
    S, ref = len(part), params[0]
    full = {k: torch.zeros((S,) * k, dtype=ref.dtype, device=ref.device) for k in (1, 2)}
    diag = {3: torch.zeros(S, dtype=ref.dtype, device=ref.device)} if d3_diagonal else {}
    with torch.enable_grad():
        accumulate_from_gradient(grads, params, u, part, spec, full, diag, 1.0)
    return full[1].detach(), _symmetrize(full[2]).detach(), diag.get(3)


def accumulate_from_gradient(grads, params, u, part, spec: _Spec, full, diag, weight) -> None:
    """Add ``weight *`` the summaries of a loss into ``full`` / ``diag``, given its gradient
    ``grads`` w.r.t. ``params`` taken with ``create_graph=True`` (loop back end).
    """
    gu = [g * v for g, v in zip(grads, u, strict=True)]
    _descend((), gu, list(range(len(params))), 1, params, u, part, spec, full, diag, weight)


def _descend(prefix, gu, which, k, params, u, part, spec, full, diag, weight) -> None:
    """Record ``D^(k)[prefix, s]`` from ``gu = grad(D^(k-1)[prefix]) * u`` (on the
    parameters ``which``), then recurse into order k + 1.

    Full orders record every ``s >= prefix[-1]`` (the rest follows by symmetry); beyond
    ``spec.full`` only the diagonal ``s = prefix[-1]`` is followed, w.r.t. group s alone.
    """
    last = prefix[-1] if prefix else 0
    if k <= spec.full:
        vals = part.reduce(gu, which).detach()
        full[k][prefix][last:] += weight * vals[last:]
        children = range(last, len(part))
    else:
        diag[k][last] += weight * part.group_sum(last, gu, which).detach()
        children = [last]
    if k == spec.top:
        return
    for s in children:
        child_full = k + 1 <= spec.full
        if not child_full and any(p != s for p in prefix):
            continue
        phi = part.group_sum(s, gu, which)
        nxt = part.params_from(s) if child_full else part.params_of(s)
        grads = _grad(phi, [params[i] for i in nxt], create_graph=k + 1 < spec.top)
        child = [g * u[i] for g, i in zip(grads, nxt, strict=True)]
        _descend((*prefix, s), child, nxt, k + 1, params, u, part, spec, full, diag, weight)


def _grad(out: Tensor, inputs: Sequence[Tensor], create_graph: bool) -> list[Tensor]:
    """``d out / d inputs``, zeros where ``out`` does not depend on an input."""
    if not out.requires_grad:
        return [torch.zeros_like(t) for t in inputs]
    try:
        return list(
            torch.autograd.grad(
                out,
                inputs,
                retain_graph=True,
                create_graph=create_graph,
                allow_unused=True,
                materialize_grads=True,
            )
        )
    except RuntimeError as err:
        if "does not support" not in str(err):
            raise
        raise ValueError(
            f"PyTorch cannot differentiate this model that many times ({err}). "
            "BatchNorm in train mode has no 3rd-order derivative: analyse in "
            "eval mode (train_mode=False, the default) or ask for order <= 2."
        ) from err


def _symmetrize(t: Tensor) -> Tensor:
    """Fill a symmetric tensor from its entries at non-decreasing indices."""
    if t.dim() < 2:
        return t
    grid = np.indices(t.shape).reshape(t.dim(), -1)
    src = np.ravel_multi_index(np.sort(grid, axis=0), t.shape)
    return t.reshape(-1)[torch.as_tensor(src, device=t.device)].reshape(t.shape)


# ---------------------------------------------------------------------------- vmap back end
def _vmap_batch(st, loss_fn, x, y, u, part, spec, full, diag, weight, chunk_size) -> tuple:
    """Same contributions as :func:`_loop_batch`, through ``f(eta)`` and torch.func."""
    S = len(part)
    theta = [p.detach() for p in st.params]
    if u is None:
        u = [g.detach() for g in _grad(loss_fn(st.forward(x), y), st.params, False)]

    def f(eta: Tensor) -> Tensor:
        moved = [t - part.expand(eta, i) * v for i, (t, v) in enumerate(zip(theta, u, strict=True))]
        return loss_fn(st.forward(x, moved), y)

    zero = torch.zeros(S, dtype=st.dtype, device=st.device)
    basis = torch.eye(S, dtype=st.dtype, device=st.device)
    grad_f, loss = torch.func.grad_and_value(f)(zero)
    full[1] += weight * -grad_f
    for k in range(2, spec.full + 1):
        full[k] += weight * (-1) ** k * _derivative_tensor(f, zero, basis, k, chunk_size)
    for k in range(spec.full + 1, spec.diag + 1):
        diag[k] += (
            weight
            * (-1) ** k
            * torch.func.vmap(lambda e, k=k: _directional(f, [e] * k)(zero), chunk_size=chunk_size)(
                basis
            )
        )
    return loss.detach(), u


def _derivative_tensor(
    f: Callable[[Tensor], Tensor], at: Tensor, basis: Tensor, k: int, chunk_size: int | None
) -> Tensor:
    """All k-th derivatives of ``f`` at ``at``: reverse mode over k - 1 nested forward-mode
    directional derivatives, vmapped over the basis directions (one axis each).

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
    theta = [p.detach() for p in st.params]

    def f(t: Tensor) -> Tensor:
        return loss_fn(st.forward(x, [p + t * v for p, v in zip(theta, u, strict=True)]), y)

    one = torch.ones((), dtype=st.dtype, device=st.device)
    zero = torch.zeros((), dtype=st.dtype, device=st.device)
    return torch.stack([_directional(f, [one] * k)(zero) for k in range(1, max_order + 1)])


# ---------------------------------------------------------------------------- state & data
class _State:
    """Detached working copies of a model's parameters and buffers (device, dtype)."""

    def __init__(self, model: nn.Module, part: Partition, device, dtype) -> None:
        ref = part.parameters(model)[0]
        self.device = torch.device(device) if device is not None else ref.device
        self.dtype = dtype if dtype is not None else ref.dtype
        if not self.dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating point type, got {self.dtype}")
        self.model = model
        self.names = part.names
        self.params = [
            p.detach().to(self.device, self.dtype).clone().requires_grad_(True)
            for p in part.parameters(model)
        ]
        covered = set(part.names)
        self.fixed = {
            n: _cast(t, self.device, self.dtype)
            for n, t in itertools.chain(model.named_parameters(), model.named_buffers())
            if n not in covered
        }

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
        yield _State(model, part, device, dtype)
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
    """``auto`` -> the loop: measured fastest on CPU (design.md); no GPU measure differs yet."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return "loop" if method == "auto" else method


def _batch_statistics(model: nn.Module, train_mode: bool) -> bool:
    """Whether some BatchNorm layer normalises with the batch's own statistics."""
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and (train_mode or m.running_mean is None)
        for m in model.modules()
    )


def _guard_memory(S: int, spec: _Spec, st: _State) -> None:
    """Refuse summaries whose S^k entries cannot fit, saying how much they would need."""
    item = torch.empty((), dtype=st.dtype).element_size()
    need = sum(3 * item * S**k for k in range(1, spec.full + 1)) + 3 * item * S * spec.diag
    free = _free_memory(st.device)
    if need > free:
        raise MemoryGuardError(
            f"D^({spec.full}) over S = {S} groups needs about {need / 2**30:,.1f} GiB "
            f"({S}^{spec.full} entries in {st.dtype}, plus work space) but {st.device} has "
            f"{free / 2**30:,.1f} GiB free: use diagonal=True, a coarser partition or a "
            "lower order."
        )


def _free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**40


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
