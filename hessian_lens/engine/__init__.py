"""The engine: exact summaries D^(d) of the loss derivatives for a partition.

For a direction ``u`` and a partition ``I_1 .. I_S`` (``U^s``: ``u`` on group s, zero
elsewhere)::

    D^(d)(u)[s1, .., sd] = d^d L / dtheta^d [U^s1, .., U^sd]
    g_bar = D^(1)(u),  g_bar[s] = <U^s, grad L>            (= sum_{p in I_s} g_p^2 for u = g)
    H_bar = D^(2)(u),  H_bar[s, s'] = (U^s)^T H U^s'

The package, one module per section, in the order data flows through it:

* :mod:`~hessian_lens.engine.options`: :class:`Options`, the one value every entry point
  takes (the data contract and the run options);
* :mod:`~hessian_lens.engine.state`: the working copies of the parameters and the forward;
* :mod:`~hessian_lens.engine.feed`: the one data loop, batches to weighted micro-batches;
* :mod:`~hessian_lens.engine.driver`: pass 1 (the direction ``u = sum_b W_b grad L_b / Z``,
  unless given) and pass 2 (``sum_b W_b D^(k)_b(u)`` with that fixed direction), so the
  result equals the one for a single batch holding all samples;
* the back ends, which only add one micro-batch's product into an
  :class:`~hessian_lens.engine.accumulate.Accumulator`:
  :mod:`~hessian_lens.engine.loop` (reverse over reverse autograd, pruned by symmetry: row s
  is one backward pass w.r.t. the groups ``s..S``) and :mod:`~hessian_lens.engine.vmapped`
  (``torch.func`` through ``f(eta) = L(theta - sum_s eta_s U^s)``, whose derivatives at 0
  are ``(-1)^d D^(d)``, vmapped over the S basis directions in chunks);
* :mod:`~hessian_lens.engine.api`: the public functions.

``method="auto"`` is the loop: measured fastest on CPU (design.md). Memory
(:mod:`hessian_lens.memory`): a probe measures the back end's widest pass on 2 and 4 samples
(once per model structure, shapes and options); batches larger than what fits the budget
are cut into micro-batches (exact: everything is weighted). Inside a ``torch.distributed``
process group every rank passes its shard and gets the union's result
(:mod:`hessian_lens.distributed`).
"""

from hessian_lens.engine.api import (
    PseudoHessian,
    losses_along,
    memory_plan,
    pseudo_gradient,
    pseudo_hessian,
    summaries_from_gradient,
    summary_tensor,
    taylor_terms,
)
from hessian_lens.engine.autodiff import differentiate
from hessian_lens.engine.options import METHODS, Options
from hessian_lens.memory import MemoryGuardError, MemoryPlan

__all__ = [
    "METHODS",
    "MemoryGuardError",
    "MemoryPlan",
    "Options",
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
