"""The Taylor view of a step: the true loss along it against its Taylor polynomials.

For a step ``v`` (e.g. PartitionNewton's ``v = -lr * sum_s eta_s U^s``), the loss along the
line is ``phi(t) = L(theta + t v)`` and its Taylor polynomial of order k at 0 is

    P_k(t) = L(theta) + sum_{d=1..k} t^d / d! * d^d L[v, .., v]

with the exact directional derivatives of :func:`hessian_lens.summary.taylor_terms` (each
also the sum of the entries of ``D^(d)(v)``). Where ``P_2`` predicts a decrease and the
true loss rises, the higher terms say why: a large positive order-4 term is a wall the
order-2 model (and the order-3 diagonal of the cubic regularisation) cannot see.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hessian_lens.engine import losses_along, taylor_terms
from hessian_lens.partition import Partition


@dataclass
class TaylorView:
    """The loss along a step and its Taylor polynomials.

    Attributes:
        t: the step fractions (t = 1 is the step itself).
        loss: the true loss ``L(theta + t v)`` at each t.
        polynomials: ``polynomials[k - 1][i] = P_k(t_i)`` for k = 1..max_order.
        terms: ``d^d L[v, .., v]`` for d = 1..max_order.
        loss0: ``L(theta)``.
    """

    t: list[float]
    loss: list[float]
    polynomials: list[list[float]]
    terms: list[float]
    loss0: float

    def contributions(self, t: float = 1.0) -> list[float]:
        """``t^d / d! * d^d L[v, .., v]``: what each order adds at ``t``."""
        return [t**d / math.factorial(d) * term for d, term in enumerate(self.terms, start=1)]


def step_direction(
    model: nn.Module, partition: Partition, u: Sequence[Tensor], eta: Tensor, lr: float = 1.0
) -> list[Tensor]:
    """``v = -lr * sum_s eta_s U^s``, one tensor per covered parameter (partition order)."""
    params = partition.parameters(model)
    eta = torch.as_tensor(eta).detach()
    out = []
    for i, (_p, d) in enumerate(zip(params, u, strict=True)):
        scale = partition.expand(eta.to(d.device, d.dtype), i)
        out.append(-lr * scale * d.detach())
    return out


def group_direction(
    model: nn.Module, partition: Partition, u: Sequence[Tensor], group: int, rate: float
) -> list[Tensor]:
    """The step of one group alone: ``v = -rate * U^group`` (zero on the other groups)."""
    eta = torch.zeros(len(partition), dtype=torch.float64)
    eta[group] = rate
    return step_direction(model, partition, u, eta)


def loss_along(
    model: nn.Module,
    loss_fn,
    data,
    direction: Sequence[Tensor],
    ts: Sequence[float],
    partition: Partition | None = None,
) -> list[float]:
    """``L(theta + t v)`` for each t (the whole data's loss, eval mode)."""
    return losses_along(model, loss_fn, data, direction, ts, partition)


def taylor_view(
    model: nn.Module,
    loss_fn,
    data,
    direction: Sequence[Tensor],
    ts: Sequence[float] | None = None,
    max_order: int = 4,
    dtype: torch.dtype | None = torch.float64,
) -> TaylorView:
    """The true loss along ``direction`` and its Taylor polynomials of orders 1..max_order.

    Example:
        >>> import torch.nn.functional as F
        >>> net = torch.nn.Linear(2, 1).double()
        >>> x, y = torch.randn(8, 2, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)
        >>> v = [torch.ones_like(p) for p in net.parameters()]
        >>> view = taylor_view(net, F.mse_loss, (x, y), v, ts=[0.0, 0.5, 1.0], max_order=2)
        >>> [round(a - b, 9) for a, b in zip(view.loss, view.polynomials[1])]  # quadratic
        [0.0, 0.0, 0.0]
    """
    ts = list(ts) if ts is not None else [i / 20 for i in range(0, 41)]
    terms = taylor_terms(model, loss_fn, data, direction, max_order, dtype=dtype)
    terms = [float(v) for v in terms]
    loss = loss_along(model, loss_fn, data, direction, ts)
    loss0 = loss_along(model, loss_fn, data, direction, [0.0])[0]
    polys = [
        [loss0 + sum(t**d / math.factorial(d) * terms[d - 1] for d in range(1, k + 1)) for t in ts]
        for k in range(1, max_order + 1)
    ]
    return TaylorView(ts, loss, polys, terms, loss0)


@dataclass
class FirstUpdate:
    """A run's first update(s) replayed, and the Taylor view along the step taken.

    Attributes:
        view: the loss along the step against its Taylor polynomials.
        step: the training step of the (first) update.
        eta: PartitionNewton's rates of that update (None for other optimizers).
        lr: the optimizer's learning rate then.
        labels: the group labels (canonical partition), in ``eta``'s order.
    """

    view: TaylorView
    step: int
    eta: list[float] | None
    lr: float
    labels: list[str]


def first_update_view(
    run, updates: int = 1, ts: Sequence[float] | None = None, data_source: str | None = None
) -> FirstUpdate:
    """Replay a run to its first update(s) and draw the loss along the step it took.

    The step is ``v = theta_after - theta_before`` (over ``updates`` updates) on the
    training minibatch of the first update; see :func:`hessian_lens.train.replay_first_update`.
    """
    from hessian_lens.losses import get_loss
    from hessian_lens.runfolder import read_manifest
    from hessian_lens.train import replay_first_update

    r = replay_first_update(run, data_source=data_source, updates=updates)
    part = Partition.canonical(r["model"])
    direction = [r["direction"][n] for n in part.names]
    loss_fn = get_loss(read_manifest(run).raw.get("loss", "cross_entropy"))
    view = taylor_view(r["model"], loss_fn, r["batch"], direction, ts=ts, max_order=4)
    eta = None if r["eta"] is None else [float(e) for e in r["eta"]]
    return FirstUpdate(view, int(r["step"]), eta, float(r["lr"]), list(part.labels))
