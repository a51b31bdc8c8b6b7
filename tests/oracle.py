"""The whole-data oracle: all samples in one call, the loss's own reduction, the full Hessian.

Whatever the engine does with batches, micro-batches, reductions, batch dimensions and
pytrees, its result must equal the pseudo-Hessian of *this* loss: one forward pass on all
the samples at once, reduced by the loss itself. Shares no data code with the engine.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

import hessian_lens as hl


def flat_whole_loss(
    model: nn.Module, loss: Callable, part: hl.Partition
) -> tuple[Callable[[Tensor], Tensor], Tensor, list[torch.Size]]:
    """``theta -> loss(run)`` on the partition's parameters flattened in its order (float64).

    ``loss`` receives ``run(*args, **kwargs)``, the model called with the parameters ``theta``.
    """
    named = list(zip(part.names, part.parameters(model), strict=True))
    names, shapes = [n for n, _ in named], [p.shape for _, p in named]
    theta = torch.cat([p.detach().double().reshape(-1) for _, p in named])

    def f(flat: Tensor) -> Tensor:
        pieces = flat.split([s.numel() for s in shapes])
        values = {n: t.reshape(s) for n, t, s in zip(names, pieces, shapes, strict=True)}
        return loss(lambda *a, **k: functional_call(model, values, a, k))

    return f, theta, shapes


def oracle(
    model: nn.Module, loss: Callable, partition: hl.Partition | None = None
) -> tuple[Tensor, Tensor, float]:
    """``(H_bar, g_bar, L)`` of ``loss(run)`` for the gradient direction, from the full Hessian.

    ``loss(run)`` computes the whole data's loss with ``run`` standing for the model.
    """
    part = partition or hl.Partition.canonical(model)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    f, theta, shapes = flat_whole_loss(model, loss, part)
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):  # fused kernels: no 2nd derivative
        g = torch.func.grad(f)(theta)
        H = torch.autograd.functional.hessian(f, theta)
        L = float(f(theta))
    pieces = g.split([s.numel() for s in shapes])
    U = part.matrix([t.reshape(s) for t, s in zip(pieces, shapes, strict=True)])
    return U @ H @ U.T, U @ g, L


def oracle_hvp(
    model: nn.Module, loss: Callable, partition: hl.Partition | None = None
) -> tuple[Tensor, Tensor, float]:
    """The same ``(H_bar, g_bar, L)`` as :func:`oracle`, by S Hessian-vector products.

    ``H U^s`` by reverse over reverse on the whole data's loss, one product per group:
    for models whose full Hessian (P x P) would take too long (a tiny GPT-2, BERT).
    """
    part = partition or hl.Partition.canonical(model)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    f, theta, shapes = flat_whole_loss(model, loss, part)
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
        flat = theta.clone().requires_grad_(True)
        value = f(flat)
        (g,) = torch.autograd.grad(value, flat, create_graph=True)
        pieces = g.detach().split([s.numel() for s in shapes])
        U = part.matrix([t.reshape(s) for t, s in zip(pieces, shapes, strict=True)])
        rows = [torch.autograd.grad(g @ U[s], flat, retain_graph=True)[0] for s in range(len(U))]
    HU = torch.stack(rows)  # row s: H U^s
    return U @ HU.T, U @ g.detach(), float(value.detach())
