"""Brute-force twin of the engine: full derivatives of tiny models, in float64.

Forms the full gradient (P), Hessian (P x P) and third derivative (P x P x P) of the mean
loss over all samples, then contracts them with the group directions ``U^s``::

    D^(2)[s, t]    = sum_{a,b}   H[a, b]    U^s_a U^t_b
    D^(3)[s, t, r] = sum_{a,b,c} T[a, b, c] U^s_a U^t_b U^r_c

Only for tests and checks on models with at most a few hundred parameters: it shares no
code with :mod:`hessian_lens.summary` beyond :class:`~hessian_lens.partition.Partition`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from hessian_lens.partition import Partition

MAX_PARAMETERS = {1: 10**7, 2: 20_000, 3: 400}


def _flat_state(model: nn.Module) -> tuple[list[str], list, Tensor, dict[str, Tensor]]:
    """The trainable parameters' names, shapes and flat float64 vector; everything else fixed.

    ``fixed`` holds the frozen parameters and the buffers (floating ones in float64).
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for n, p in model.named_parameters() if p.requires_grad]
    theta = torch.cat(
        [p.detach().double().reshape(-1) for n, p in model.named_parameters() if p.requires_grad]
    )
    fixed = {
        n: t.detach().double() if t.is_floating_point() else t.detach()
        for n, t in list(model.named_parameters()) + list(model.named_buffers())
        if n not in names
    }
    return names, shapes, theta, fixed


def flat_loss(
    model: nn.Module, loss_fn, data, train_mode: bool = False
) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """``theta -> mean loss over data`` on the flattened trainable parameters (float64).

    Returns:
        The function and the current flat parameter vector.
    """
    names, shapes, theta, fixed = _flat_state(model)
    batches = [data] if isinstance(data, tuple) else list(data)

    def loss(flat: Tensor) -> Tensor:
        values = dict(fixed)
        for name, piece, shape in zip(
            names, flat.split([s.numel() for s in shapes]), shapes, strict=True
        ):
            values[name] = piece.reshape(shape)
        total, n = 0.0, 0
        for x, y in batches:
            x = x.double() if x.is_floating_point() else x  # token ids stay integers
            y = y.double() if y.is_floating_point() else y
            total = total + x.shape[0] * loss_fn(functional_call(model, values, (x,)), y)
            n += x.shape[0]
        return total / n

    def wrapped(flat: Tensor) -> Tensor:
        modes = [(m, m.training) for m in model.modules()]
        model.train(train_mode)
        try:
            return loss(flat)
        finally:
            for m, was in modes:
                m.training = was

    return wrapped, theta


def full_derivative(
    model: nn.Module, loss_fn, data, order: int, train_mode: bool = False
) -> Tensor:
    """The full order-``order`` derivative of the mean loss (1: gradient, 2: Hessian, ...).

    The Hessian comes from P plain reverse-over-reverse passes
    (``torch.autograd.functional.hessian``, no vmap): torch.func's transforms (``jacfwd`` and
    even ``jacrev(jacrev)``) give a wrong, asymmetric Hessian through BatchNorm with batch
    statistics on torch 2.14, which this twin must not inherit. Higher orders nest
    ``torch.func.jacrev`` (BatchNorm with batch statistics has no 3rd derivative anyway).

    Raises:
        ValueError: the model is too large for a dense tensor of that order.
    """
    f, theta = flat_loss(model, loss_fn, data, train_mode)
    if theta.numel() > MAX_PARAMETERS.get(order, 0):
        raise ValueError(f"reference order {order} refuses P = {theta.numel()} parameters")
    if order == 2:
        return torch.autograd.functional.hessian(f, theta)
    fn = f
    for _ in range(order):
        fn = jacrev(fn)
    return fn(theta).detach()


def reference_summary(
    model: nn.Module,
    loss_fn,
    data,
    order: int,
    partition: Partition | None = None,
    direction: Tensor | None = None,
    train_mode: bool = False,
) -> Tensor:
    """D^(order)(u) by contracting the full derivative with the rows of ``U`` (S x P).

    Args:
        model: a tiny ``nn.Module`` (see :data:`MAX_PARAMETERS`).
        loss_fn: ``loss_fn(outputs, targets)`` returning the batch *mean* loss.
        data: one ``(inputs, targets)`` batch or an iterable of batches.
        order: the derivative order ``d`` (1: gradient, 2: pseudo-Hessian, ...).
        partition: the groups; ``None`` means :meth:`Partition.canonical`.
        direction: flat ``u`` (P,); ``None`` means the full gradient.
        train_mode: run the model in train mode (BatchNorm batch statistics, dropout).
    """
    part = partition if partition is not None else Partition.canonical(model)
    u = (
        direction.double()
        if direction is not None
        else full_derivative(model, loss_fn, data, 1, train_mode)
    )
    split = u.split([s.numel() for s in part.shapes])
    U = part.matrix([t.reshape(s) for t, s in zip(split, part.shapes, strict=True)])
    T = full_derivative(model, loss_fn, data, order, train_mode)
    for _ in range(order):
        T = torch.tensordot(T, U, dims=([0], [1]))
    return T


def full_ggn(model: nn.Module, loss_fn, data) -> Tensor:
    """The dense generalised Gauss-Newton matrix ``G = sum_b n_b J_b^T H_l,b J_b / n`` (float64).

    ``J_b`` is the Jacobian of the flattened outputs of batch b w.r.t. the flat trainable
    parameters and ``H_l,b`` the Hessian of ``loss_fn(outputs, y_b)`` w.r.t. the flattened
    outputs, both by ``torch.autograd.functional`` (dense; no code shared with the engine).
    Batches are weighted by their sample counts, as :func:`flat_loss` does.
    """
    names, shapes, theta, fixed = _flat_state(model)
    total, n = torch.zeros(theta.numel(), theta.numel(), dtype=torch.float64), 0
    was = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        for x, y in [data] if isinstance(data, tuple) else list(data):
            x = x.double() if x.is_floating_point() else x
            y = y.double() if y.is_floating_point() else y

            def outputs(flat: Tensor, x=x) -> Tensor:
                values = dict(fixed)
                for name, piece, shape in zip(
                    names, flat.split([s.numel() for s in shapes]), shapes, strict=True
                ):
                    values[name] = piece.reshape(shape)
                return functional_call(model, values, (x,))

            out = outputs(theta).detach()
            J = torch.autograd.functional.jacobian(lambda f: outputs(f).reshape(-1), theta)
            H_l = torch.autograd.functional.hessian(
                lambda o, y=y, shape=out.shape: loss_fn(o.reshape(shape), y), out.reshape(-1)
            )
            total += x.shape[0] * (J.T @ H_l @ J)
            n += x.shape[0]
    finally:
        for m, training in was:
            m.training = training
    return total / n
