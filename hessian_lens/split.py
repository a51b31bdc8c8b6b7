"""Block Frobenius norms of ``H``, its Gauss-Newton part ``G`` and ``H - G`` from the same probes.

Ormaniec, Dangel and Singh (ICLR 2025) split each block of the Hessian into its
Gauss-Newton (outer-product) part ``G = J^T H_l J`` and its functional part
``H - G = sum_k (dl/do_k) d^2 o_k / dtheta^2``. :func:`split_norms` estimates
``||C_st||_F^2`` for the three of them as :func:`hessian_lens.block_norms` does (Hutchinson
with Rademacher probes ``v|_s``, the same probes for the same ``seed``), but takes
``H v|_s`` and ``G v|_s`` once each and forms ``(H - G) v|_s`` as their difference: two
products per probe and group instead of the four that three separate calls need
(``curvature="functional"`` runs both). The three results equal those three calls
(tests/test_split.py).
"""

from __future__ import annotations

import torch
from torch import nn

from hessian_lens.engine.options import LossFn, Options
from hessian_lens.engine.products import DataCurvature, Job
from hessian_lens.measures import BlockNorms, _summarise, group_vector, rademacher
from hessian_lens.partition import Partition

__all__ = ["SPLIT", "split_norms"]

SPLIT = ("hessian", "ggn", "functional")


def split_norms(
    model: nn.Module,
    loss_fn: LossFn,
    data,
    partition: Partition,
    *,
    probes: int = 16,
    seed: int = 0,
    options: Options | None = None,
) -> dict[str, BlockNorms]:
    """``{"hessian", "ggn", "functional"}`` -> :class:`BlockNorms` (traces and Frobenius maps).

    Args:
        model: any ``nn.Module`` (left as it was).
        loss_fn: ``loss_fn(outputs, targets)`` (the Gauss-Newton needs the loss apart).
        data: one batch or a re-iterable of batches.
        partition: the groups.
        probes: Rademacher probes (>= 2).
        seed: the probes' seed (``block_norms``' probes for the same seed).
        options: engine options (their ``curvature`` is ignored).
    """
    if not isinstance(probes, int) or isinstance(probes, bool) or probes < 2:
        raise ValueError(f"probes must be an integer >= 2, got {probes!r}")
    opts = options or Options()
    products, samples = {}, 0
    for curvature in ("hessian", "ggn"):
        with DataCurvature(
            model, loss_fn, data, partition, opts.replace(curvature=curvature)
        ) as op:
            vectors = [rademacher(op.params, seed * 1_000_003 + k) for k in range(probes)]
            jobs = [_job(partition, v, s) for v in vectors for s in range(len(partition))]
            products[curvature] = op.products(jobs)
            samples = op.samples()
    per_probe = {name: [] for name in SPLIT}
    S = len(partition)
    for k, v in enumerate(vectors):
        for name in SPLIT:
            per_probe[name].append(
                (torch.zeros(S, dtype=torch.float64), torch.zeros(S, S, dtype=torch.float64))
            )
        for s in range(S):
            h, g = products["hessian"][k * S + s], products["ggn"][k * S + s]
            f = [a - b for a, b in zip(h, g, strict=True)]
            outs = partition.params_from(s)
            for name, cv in zip(SPLIT, (h, g, f), strict=True):
                trace, sq = per_probe[name][k]
                sq[s, s:] = partition.reduce([c * c for c in cv], outs)[s:].double().cpu()
                trace[s] = float(
                    partition.reduce([c * v[i] for c, i in zip(cv, outs, strict=True)], outs)[s]
                )
    return {
        name: _summarise(
            [(t, _mirror(q)) for t, q in per_probe[name]],
            partition,
            False,
            probes,
            True,
            name,
            samples,
            seed,
        )
        for name in SPLIT
    }


def _job(part: Partition, v, s: int) -> Job:
    ids, vs = group_vector(part, v, s)
    return Job(vs, ids, part.params_from(s))


def _mirror(upper: torch.Tensor) -> torch.Tensor:
    return torch.triu(upper) + torch.triu(upper, 1).T
