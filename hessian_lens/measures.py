"""Block traces and block Frobenius norms of the curvature, exact or with standard errors.

For a partition into groups ``I_1 .. I_S`` and ``C`` the Hessian ``H`` or the Gauss-Newton
matrix ``G`` of the whole data's loss (``C_st = C[I_s, I_t]``)::

    trace[s]        = tr(C_ss)
    frobenius[s, t] = ||C_st||_F = sqrt(sum_{a in I_s, b in I_t} C_ab^2)

The estimators (Hutchinson's, with Rademacher probes ``v``, entries +-1):

* **with the Frobenius map** (default), per probe and per group s one product
  ``C v|_s`` (``v`` restricted to group s, pruned to the groups ``t >= s``; symmetry gives
  the rest), which is one H̄'s worth of products per probe::

      ||(C v|_s)_t||^2      is unbiased for ||C_ts||_F^2       (E[v v^T] = I)
      <v_s, (C v|_s)_s>     is unbiased for tr(C_ss)

* **traces only** (``frobenius=False``), one product ``C v`` per probe for all S traces:
  ``<v_s, (C v)_s>`` is unbiased for ``tr(C_ss)`` (the cross terms ``v_s^T C_st v_t`` have
  mean zero, and add variance).

Each estimate is the mean over ``k`` probes; its standard error is the sample standard
deviation over the probes divided by ``sqrt(k)``. ``||C_st||_F`` is the square root of the
mean of the squared norms, with the delta-method error ``se(F^2) / (2 F)``.
``probes="exact"`` uses the unit vectors instead (P products; small models, and the
in-library twin of the dense float64 reference): the standard errors are then zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Unpack

import torch
from torch import Tensor, nn

from hessian_lens.engine.options import EngineKeywords, LossFn, Options
from hessian_lens.engine.products import DataCurvature, Job
from hessian_lens.partition import Partition

__all__ = ["BlockNorms", "block_norms", "group_vector", "rademacher"]

MAX_EXACT_PARAMETERS = 200_000  # probes="exact" runs one product per parameter


@dataclass
class BlockNorms:
    """Result of :func:`block_norms` (module docstring for the estimators).

    Attributes:
        labels: the group labels.
        sizes: the number of scalars in each group.
        trace: ``tr(C_ss)`` (S,).
        trace_se: its standard error (S,); zeros for ``probes="exact"``.
        frobenius: ``||C_st||_F`` (S, S), or ``None`` with ``frobenius=False``.
        frobenius_se: its standard error (S, S).
        frobenius_sq: ``||C_st||_F^2`` (S, S), the unbiased estimate.
        frobenius_sq_se: its standard error (S, S).
        probes: the number of probes, or ``"exact"``.
        curvature: ``"hessian"`` or ``"ggn"``.
        n_samples: the samples of the data.
        seed: the probes' seed.
    """

    labels: list[str]
    sizes: list[int]
    trace: Tensor
    trace_se: Tensor
    frobenius: Tensor | None = None
    frobenius_se: Tensor | None = None
    frobenius_sq: Tensor | None = None
    frobenius_sq_se: Tensor | None = None
    probes: int | str = 0
    curvature: str = "hessian"
    n_samples: int = 0
    seed: int = 0
    notes: list[str] = field(default_factory=list)

    def diagonal_share(self) -> float:
        """The share of ``||C||_F^2`` on the diagonal blocks: ``sum_s ||C_ss||^2 / sum ||C_st||^2``.

        Adam-mini's and Dong et al.'s measure of how block-diagonal the curvature is.
        """
        if self.frobenius_sq is None:
            raise ValueError("the Frobenius map was not computed (frobenius=False)")
        total = float(self.frobenius_sq.sum())
        return float(self.frobenius_sq.diagonal().sum()) / total if total > 0 else math.nan


def block_norms(
    model: nn.Module,
    loss_fn: LossFn | None,
    data,
    partition: Partition | None = None,
    *,
    probes: int | str = 64,
    seed: int = 0,
    frobenius: bool = True,
    options: Options | None = None,
    **keywords: Unpack[EngineKeywords],
) -> BlockNorms:
    """Block traces and the block Frobenius map of the Hessian (or Gauss-Newton) matrix.

    Args:
        model: any ``nn.Module`` (left as it was).
        loss_fn: as in :func:`~hessian_lens.pseudo_hessian`.
        data: one batch or a re-iterable of batches (the whole data's loss, as everywhere).
        partition: the groups; ``None`` means :meth:`Partition.canonical`.
        probes: the number of Rademacher probes (>= 2), or ``"exact"`` (unit vectors).
        seed: the probes' seed (the same seed gives the same probes on any device).
        frobenius: also estimate the S x S Frobenius map (one H̄'s products per probe);
            ``False``: the traces only (one product per probe).
        options: the engine options (``curvature="ggn"`` for the Gauss-Newton matrix).
        **keywords: any field of :class:`hessian_lens.Options`.

    Returns:
        A :class:`BlockNorms`.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> net = torch.nn.Linear(3, 2).double()
        >>> x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
        >>> bn = block_norms(net, F.cross_entropy, (x, y), probes="exact")
        >>> H = torch.autograd.functional.hessian(
        ...     lambda w: F.cross_entropy(x @ w.reshape(2, 3).T + net.bias, y),
        ...     net.weight.detach().reshape(-1))
        >>> bool(torch.isclose(bn.trace[0], H.trace()))
        True
    """
    opts = Options.of(options, **keywords)
    part = partition if partition is not None else Partition.canonical(model)
    exact = _check_probes(probes, part)
    with DataCurvature(model, loss_fn, data, part, opts) as op:
        if exact:
            per_probe = [_unit_columns(op, part)]
        else:
            vectors = [rademacher(op.params, seed * 1_000_003 + k) for k in range(probes)]
            per_probe = _probes(op, part, vectors, frobenius)
        samples = op.samples()
    return _summarise(per_probe, part, exact, probes, frobenius, opts.curvature, samples, seed)


def _check_probes(probes: int | str, part: Partition) -> bool:
    if probes == "exact":
        if part.numel > MAX_EXACT_PARAMETERS:
            raise ValueError(
                f"probes='exact' runs one product per parameter and this partition covers "
                f"{part.numel:,} (at most {MAX_EXACT_PARAMETERS:,}): give probes=K (e.g. 64)"
            )
        return True
    if not isinstance(probes, int) or isinstance(probes, bool) or probes < 2:
        raise ValueError(f"probes must be an integer >= 2 or 'exact', got {probes!r}")
    return False


def rademacher(params: list[Tensor], seed: int) -> list[Tensor]:
    """One Rademacher vector (entries +-1) shaped like ``params``, from ``seed`` (on the CPU)."""
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p.device, p.dtype) for p in params
    ]


def _probes(op: DataCurvature, part: Partition, vectors, frobenius: bool) -> list[tuple]:
    """``(trace (S,), squared Frobenius map (S, S) or None)`` per probe vector (one pass)."""
    if not frobenius:
        every = list(range(len(op.params)))
        results = op.products([Job(v, every, every) for v in vectors])
        return [
            (part.reduce([c * t for c, t in zip(cv, v, strict=True)], every).double().cpu(), None)
            for v, cv in zip(vectors, results, strict=True)
        ]
    S = len(part)
    jobs = [_group_job(part, v, s) for v in vectors for s in range(S)]
    results = iter(op.products(jobs))
    out = []
    for v in vectors:
        trace, sq = torch.zeros(S, dtype=torch.float64), torch.zeros(S, S, dtype=torch.float64)
        for s in range(S):
            outs, cv = part.params_from(s), next(results)
            sq[s, s:] = part.reduce([c * c for c in cv], outs)[s:].double().cpu()
            trace[s] = float(
                part.reduce([c * v[i] for c, i in zip(cv, outs, strict=True)], outs)[s]
            )
        out.append((trace, _mirror(sq)))
    return out


def _unit_columns(op: DataCurvature, part: Partition) -> tuple[Tensor, Tensor]:
    """Every column of C (one unit vector per parameter entry): exact traces and norms.

    Column ``e_j`` of group s adds ``C_jj`` to ``tr(C_ss)`` and ``||(C e_j)_t||^2`` to
    ``||C_ts||_F^2`` for ``t >= s`` (the upper triangle; mirrored at the end).
    """
    S = len(part)
    trace, sq = torch.zeros(S, dtype=torch.float64), torch.zeros(S, S, dtype=torch.float64)
    columns = []
    for i, p in enumerate(op.params):
        owner = part.assignment[i]  # the group of each entry: one int, or an index tensor
        for j in range(p.numel()):
            e = torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
            e[j] = 1.0
            s = owner if isinstance(owner, int) else int(owner.reshape(-1)[j])
            columns.append((i, j, s, Job([e.reshape(p.shape)], [i], part.params_from(s))))
    results = op.products([job for *_, job in columns])
    for (i, j, s, job), cv in zip(columns, results, strict=True):
        trace[s] += float(cv[job.outputs.index(i)].reshape(-1)[j])
        sq[s, s:] += part.reduce([c * c for c in cv], job.outputs)[s:].double().cpu()
    return trace, sq


def _group_job(part: Partition, v, s: int) -> Job:
    """``C v|_s`` wanted on the groups ``s..S``."""
    ids, vs = group_vector(part, v, s)
    return Job(vs, ids, part.params_from(s))


def group_vector(part: Partition, v, s: int) -> tuple[list[int], list[Tensor]]:
    """``v|_s``: ``v`` on the parameters holding group s, zero outside the group."""
    ids = part.params_of(s)
    onehot = torch.zeros(len(part), dtype=v[ids[0]].dtype, device=v[ids[0]].device)
    onehot[s] = 1.0
    return ids, [v[i] * part.expand(onehot, i) for i in ids]


def _mirror(upper: Tensor) -> Tensor:
    """A symmetric matrix from its upper triangle (diagonal included)."""
    return torch.triu(upper) + torch.triu(upper, 1).T


def _summarise(per_probe, part, exact, probes, frobenius, curvature, samples, seed) -> BlockNorms:
    traces = torch.stack([t.double().cpu() for t, _ in per_probe])
    sizes = [part.size(s) for s in range(len(part))]
    common = {"labels": part.labels, "sizes": sizes, "curvature": curvature}
    common.update(n_samples=samples, seed=seed, probes="exact" if exact else probes)
    if exact:
        trace, sq = traces[0], _mirror(per_probe[0][1])
        zeros = torch.zeros_like(sq)
        return BlockNorms(
            trace=trace,
            trace_se=torch.zeros_like(trace),
            frobenius=sq.clamp(min=0).sqrt(),
            frobenius_se=zeros,
            frobenius_sq=sq,
            frobenius_sq_se=zeros,
            **common,
        )
    k = len(per_probe)
    out = BlockNorms(trace=traces.mean(0), trace_se=traces.std(0) / math.sqrt(k), **common)
    if frobenius:
        sqs = torch.stack([q for _, q in per_probe])
        out.frobenius_sq, out.frobenius_sq_se = sqs.mean(0), sqs.std(0) / math.sqrt(k)
        out.frobenius = out.frobenius_sq.clamp(min=0).sqrt()
        spread = out.frobenius_sq_se > 0
        out.frobenius_se = torch.where(
            spread, out.frobenius_sq_se / (2 * out.frobenius).clamp(min=1e-300), 0.0
        )
    return out


# ---------------------------------------------------------------------------- stored form
MEASURES = ("trace", "frobenius", "spectra", "lmax")


def check_measures(names) -> tuple[str, ...]:
    """The measure names as a sorted tuple; a ValueError for an unknown one."""
    names = tuple(sorted({n.strip() for n in names if n.strip()}))
    unknown = [n for n in names if n not in MEASURES]
    if unknown:
        raise ValueError(f"unknown measure(s) {unknown}: choose among {', '.join(MEASURES)}")
    return names


def stored_measures(
    model: nn.Module,
    loss_fn: LossFn | None,
    data,
    partition: Partition,
    names,
    *,
    probes: int,
    steps: int,
    slq_probes: int,
    seed: int,
    options: Options,
) -> tuple[dict, dict[str, Tensor]]:
    """The measures ``names`` as a record stores them: ``(summary, arrays)``.

    Arrays: ``trace``, ``trace_se`` (S); ``frobenius``, ``frobenius_se`` (S x S);
    ``spectrum_nodes``, ``spectrum_weights`` (S x slq_probes x steps) and ``model_nodes``,
    ``model_weights`` (slq_probes x steps). ``probes`` Rademacher probes estimate the
    traces and norms; ``slq_probes`` random starts of ``steps`` Lanczos steps the spectra.
    The summary holds the conventions (curvature, probes, steps, seed) and the scalars
    (``lmax``, ``lmin``, ``trace_total``, ``diagonal_share``, ``js0``).
    """
    from hessian_lens.spectra import block_spectra, js_divergence

    names = check_measures(names)
    summary: dict = {"names": list(names), "curvature": options.curvature, "seed": seed}
    arrays: dict[str, Tensor] = {}
    if "trace" in names or "frobenius" in names:
        bn = block_norms(
            model,
            loss_fn,
            data,
            partition,
            probes=probes,
            seed=seed,
            frobenius="frobenius" in names,
            options=options,
        )
        arrays.update(trace=bn.trace, trace_se=bn.trace_se)
        summary.update(
            probes=probes,
            trace_total=float(bn.trace.sum()),
            trace_total_se=float(bn.trace_se.pow(2).sum().sqrt()),
        )
        if bn.frobenius is not None:
            arrays.update(frobenius=bn.frobenius, frobenius_se=bn.frobenius_se)
            summary["diagonal_share"] = bn.diagonal_share()
    if "spectra" in names or "lmax" in names:
        sp = block_spectra(
            model,
            loss_fn,
            data,
            partition,
            steps=steps,
            probes=slq_probes,
            seed=seed,
            blocks="spectra" in names,
            options=options,
        )
        arrays.update(model_nodes=sp.whole.nodes, model_weights=sp.whole.weights)
        summary.update(lmax=sp.lmax, lmin=sp.lmin, steps=steps, spectrum_probes=sp.probes)
        if sp.blocks:
            arrays["spectrum_nodes"] = torch.stack([b.nodes for b in sp.blocks])
            arrays["spectrum_weights"] = torch.stack([b.weights for b in sp.blocks])
            if len(sp.blocks) > 1:
                summary["js0"] = js_divergence(sp).js0
        summary["notes"] = sp.notes
    return summary, arrays
