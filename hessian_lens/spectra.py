"""Spectra of the curvature's diagonal blocks and of the whole model, by Lanczos and SLQ.

For each group s, Lanczos runs on ``C_ss`` (the curvature ``C = H`` or ``G`` restricted to
group s: a product ``C v|_s`` taken w.r.t. group s only); for the whole model on ``C``.
``steps`` Lanczos steps from a random unit vector give a tridiagonal ``T`` whose
eigenvalues (Ritz values) approximate the extreme eigenvalues, and whose eigenvectors'
first components squared ``tau_i`` give stochastic Lanczos quadrature (SLQ): the spectral
density (the eigenvalue distribution, mass 1) is approximated by
``phi(t) = mean over probes of sum_i tau_i delta(t - theta_i)`` (Ubaru, Chen & Saad 2017;
what PyHessian and Zhang et al. use). Vectors are fully re-orthogonalised in float64, so
with ``steps`` at least the block size the Ritz values are the block's eigenvalues
(an exhausted Krylov space restarts from a fresh orthogonal vector).

:func:`js_divergence` compares the blocks' densities as Zhang et al. (arXiv 2402.16788)
do with JS⁰: each density is smoothed by a Gaussian of width ``sigma`` on a common grid,
and JS⁰ is the mean over pairs of blocks of the Jensen-Shannon divergence (natural log,
between 0 and ln 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Unpack

import numpy as np
import torch
from torch import Tensor, nn

from hessian_lens.engine.options import EngineKeywords, LossFn, Options
from hessian_lens.engine.products import DataCurvature, Job
from hessian_lens.partition import Partition

__all__ = [
    "BlockSpectra",
    "JSDivergence",
    "Spectrum",
    "block_spectra",
    "js_divergence",
    "lanczos",
    "smooth",
]

BREAKDOWN = 1e-10  # relative size of a Lanczos residual that ends its Krylov space
WHOLE_BASIS_SHARE = 0.25  # of the memory budget for the whole model's Lanczos basis
JS_SIGMA = 1e-5**0.5  # Zhang et al.'s smoothing width (their code's default)
JS_GRID = 20_000  # grid points for the smoothed densities


@dataclass
class Spectrum:
    """Lanczos / SLQ of one symmetric operator (a block ``C_ss`` or the whole ``C``).

    Attributes:
        label: the group's label, or ``"model"``.
        size: the operator's dimension.
        nodes: Ritz values per probe (probes x steps), ascending.
        weights: SLQ weights per probe (probes x steps), each row summing to 1.
    """

    label: str
    size: int
    nodes: Tensor
    weights: Tensor

    @property
    def lmax(self) -> float:
        """The largest Ritz value over the probes (lambda_max from below)."""
        return float(self.nodes.max())

    @property
    def lmin(self) -> float:
        """The smallest Ritz value over the probes (lambda_min from above)."""
        return float(self.nodes.min())

    @property
    def ritz(self) -> Tensor:
        """The first probe's Ritz values, largest first."""
        return self.nodes[0].flip(0)

    def trace(self) -> float:
        """SLQ's trace estimate ``size * mean_k sum_i tau_ki theta_ki``."""
        return self.size * float((self.nodes * self.weights).sum(1).mean())

    def density(self, grid: Tensor, sigma: float) -> Tensor:
        """The Gaussian-smoothed density on ``grid`` (integrates to about 1 on a wide grid)."""
        out = smooth(
            grid.cpu().numpy(), self.nodes.cpu().numpy(), self.weights.cpu().numpy(), sigma
        )
        return torch.as_tensor(out, dtype=torch.float64)


@dataclass
class BlockSpectra:
    """Result of :func:`block_spectra`: one :class:`Spectrum` per group, and the model's."""

    labels: list[str]
    blocks: list[Spectrum]
    whole: Spectrum | None
    steps: int
    probes: int
    curvature: str
    n_samples: int
    seed: int
    notes: list[str] = field(default_factory=list)

    @property
    def lmax(self) -> float:
        """The whole model's largest Ritz value (``whole=True``)."""
        return self._whole().lmax

    @property
    def lmin(self) -> float:
        """The whole model's smallest Ritz value (``whole=True``)."""
        return self._whole().lmin

    def _whole(self) -> Spectrum:
        if self.whole is None:
            raise ValueError("the whole model's spectrum was not computed (whole=False)")
        return self.whole


def block_spectra(
    model: nn.Module,
    loss_fn: LossFn | None,
    data,
    partition: Partition | None = None,
    *,
    steps: int = 30,
    probes: int = 4,
    seed: int = 0,
    whole: bool = True,
    blocks: bool = True,
    options: Options | None = None,
    **keywords: Unpack[EngineKeywords],
) -> BlockSpectra:
    """Per-group Lanczos spectra and SLQ densities of ``C_ss``, and the whole model's.

    Each step costs one product per group and probe (pruned to the group) and one for the
    whole model; the steps run in lockstep, so the data are passed ``steps`` times (or once,
    kept in memory, when they are one micro-batch).

    Args:
        model: any ``nn.Module`` (left as it was).
        loss_fn: as in :func:`~hessian_lens.pseudo_hessian`.
        data: one batch or a re-iterable of batches.
        partition: the groups; ``None`` means :meth:`Partition.canonical`.
        steps: Lanczos steps (capped at each operator's dimension).
        probes: random starting vectors (SLQ averages over them).
        seed: the starting vectors' seed.
        whole: also the whole model's spectrum (``lmax``, ``lmin``, density).
        blocks: the groups' spectra (``False``: the whole model's only, ``lmax`` alone).
        options: the engine options (``curvature="ggn"`` for the Gauss-Newton matrix).
        **keywords: any field of :class:`hessian_lens.Options`.
    """
    opts = Options.of(options, **keywords)
    if not (isinstance(steps, int) and steps >= 1 and isinstance(probes, int) and probes >= 1):
        raise ValueError(f"steps and probes must be integers >= 1, got {steps!r}, {probes!r}")
    if not (whole or blocks):
        raise ValueError(
            "nothing to compute: ask for the blocks' spectra, the whole model's or both"
        )
    part = partition if partition is not None else Partition.canonical(model)
    with DataCurvature(model, loss_fn, data, part, opts) as op:
        ops = [_BlockOperator(op, part, s) for s in range(len(part))] if blocks else []
        if whole:
            ops.append(_WholeOperator(op))
        full = [_basis_fits(op, o.size, steps) for o in ops]
        runs = [_lockstep(op, ops, steps, seed * 7919 + k, full) for k in range(probes)]
        samples = op.samples()
    notes = [
        f"{o.label}: {steps + 1} float64 basis vectors of {o.size:,} entries exceed "
        f"{WHOLE_BASIS_SHARE:.0%} of the memory budget, so Lanczos kept the three-term "
        "recurrence only (no re-orthogonalisation: spurious copies of extreme Ritz values "
        "may appear; lambda_max and lambda_min are unaffected)"
        for o, f in zip(ops, full, strict=True)
        if not f
    ]
    spectra = [
        Spectrum(
            o.label,
            o.size,
            torch.stack([r[j][0] for r in runs]),
            torch.stack([r[j][1] for r in runs]),
        )
        for j, o in enumerate(ops)
    ]
    return BlockSpectra(
        labels=part.labels,
        blocks=spectra[: len(ops) - whole],
        whole=spectra[-1] if whole else None,
        steps=steps,
        probes=probes,
        curvature=opts.curvature,
        n_samples=samples,
        seed=seed,
        notes=notes,
    )


def _basis_fits(op: DataCurvature, size: int, steps: int) -> bool:
    return (min(steps, size) + 1) * size * 8 <= WHOLE_BASIS_SHARE * op.planner.budget


def smooth(grid: np.ndarray, nodes: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """``mean_k sum_i tau_ki N(t; theta_ki, sigma)`` on ``grid`` (nodes, weights: probes x steps).

    Example:
        >>> d = smooth(np.linspace(-5, 5, 1001), np.array([[0.0]]), np.array([[1.0]]), 1.0)
        >>> round(float(d.sum() * 0.01), 4)  # a unit mass
        1.0
    """
    d = np.asarray(grid)[:, None, None] - np.asarray(nodes)[None]
    kernel = np.exp(-0.5 * (d / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    return (kernel * np.asarray(weights)[None]).sum(2).mean(1)


# ---------------------------------------------------------------------------- operators
class _BlockOperator:
    """``C_ss`` on flat vectors of group s's scalars."""

    def __init__(self, op: DataCurvature, part: Partition, s: int) -> None:
        self.part, self.s, self.label = part, s, part.labels[s]
        self.ids = part.params_of(s)
        self.entries = [part.entries(s, i) for i in self.ids]
        self.shapes = [op.params[i].shape for i in self.ids]
        self.like = op.params[self.ids[0]]
        self.size = part.size(s)

    def job(self, q: Tensor) -> Job:
        return Job(self._scatter(q), self.ids, self.ids)

    def gather(self, tensors: Sequence[Tensor]) -> Tensor:
        flat = [
            t.reshape(-1) if e is None else t.reshape(-1)[e]
            for t, e in zip(tensors, self.entries, strict=True)
        ]
        return torch.cat(flat).double()

    def _scatter(self, q: Tensor) -> list[Tensor]:
        out, start = [], 0
        for shape, e in zip(self.shapes, self.entries, strict=True):
            n = shape.numel() if e is None else e.numel()
            t = torch.zeros(shape.numel(), dtype=self.like.dtype, device=self.like.device)
            piece = q[start : start + n].to(t.dtype).to(t.device)
            if e is None:
                t = piece.clone()
            else:
                t[e.to(t.device)] = piece
            out.append(t.reshape(shape))
            start += n
        return out


class _WholeOperator:
    """``C`` on flat vectors of all the partition's parameters."""

    def __init__(self, op: DataCurvature) -> None:
        self.label, self.every = "model", list(range(len(op.params)))
        self.shapes = [p.shape for p in op.params]
        self.like = op.params[0]
        self.size = sum(s.numel() for s in self.shapes)

    def job(self, q: Tensor) -> Job:
        pieces = q.to(self.like.dtype).to(self.like.device).split([s.numel() for s in self.shapes])
        return Job(
            [p.reshape(s) for p, s in zip(pieces, self.shapes, strict=True)], self.every, self.every
        )

    def gather(self, tensors: Sequence[Tensor]) -> Tensor:
        return torch.cat([t.reshape(-1) for t in tensors]).double()


# ---------------------------------------------------------------------------- Lanczos
class _Lanczos:
    """The state of one Lanczos run with full re-orthogonalisation (float64)."""

    def __init__(self, size: int, steps: int, gen: torch.Generator, full: bool = True) -> None:
        self.size, self.steps, self.gen, self.full = size, min(steps, size), gen, full
        self.basis: list[Tensor] = [_unit(torch.randn(size, generator=gen, dtype=torch.float64))]
        self.alpha: list[float] = []
        self.beta: list[float] = []

    @property
    def done(self) -> bool:
        return len(self.alpha) >= self.steps

    def advance(self, w: Tensor) -> None:
        """Take ``w = C q_j`` for the newest basis vector ``q_j``; prepare ``q_{j+1}``."""
        q = self.basis[-1]
        a = float(w @ q)
        self.alpha.append(a)
        if self.done:
            return
        for _ in range(2):  # "twice is enough" (Parlett)
            for v in self.basis:
                w = w - (w @ v) * v
        b = float(w.norm())
        scale = max(abs(a), max((abs(x) for x in self.alpha), default=0.0), 1e-300)
        if b <= BREAKDOWN * scale:  # an invariant subspace: restart orthogonally
            self.beta.append(0.0)
            self.basis.append(self._fresh())
        else:
            self.beta.append(b)
            self.basis.append(w / b)
        if not self.full:  # the three-term recurrence only: keep the last two vectors
            self.basis = self.basis[-2:]

    def _fresh(self) -> Tensor:
        v = torch.randn(self.size, generator=self.gen, dtype=torch.float64)
        for _ in range(2):
            for u in self.basis:
                v = v - (v @ u) * u
        return _unit(v)

    def quadrature(self) -> tuple[Tensor, Tensor]:
        """Ritz values (ascending) and SLQ weights, padded to ``steps`` with zero weight."""
        T = torch.diag(torch.tensor(self.alpha, dtype=torch.float64))
        if self.beta:
            off = torch.tensor(self.beta[: len(self.alpha) - 1], dtype=torch.float64)
            T = T + torch.diag(off, 1) + torch.diag(off, -1)
        theta, Y = torch.linalg.eigh(T)
        return theta, Y[0] ** 2


def lanczos(matvec, size: int, steps: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Ritz values and SLQ weights of a symmetric operator given by ``matvec`` (float64).

    Example:
        >>> A = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        >>> theta, tau = lanczos(lambda v: A @ v, 3, steps=3)
        >>> [round(float(t), 6) for t in theta], round(float(tau.sum()), 6)
        ([1.0, 2.0, 3.0], 1.0)
    """
    run = _Lanczos(size, steps, torch.Generator().manual_seed(seed))
    while not run.done:
        run.advance(matvec(run.basis[-1]).double())
    return run.quadrature()


def _lockstep(
    op: DataCurvature, ops: list, steps: int, seed: int, full: Sequence[bool]
) -> list[tuple[Tensor, Tensor]]:
    """Lanczos on every operator at once: one pass over the data per step."""
    gen = torch.Generator().manual_seed(seed)
    runs = [_Lanczos(o.size, steps, gen, f) for o, f in zip(ops, full, strict=True)]
    while not all(r.done for r in runs):
        active = [(o, r) for o, r in zip(ops, runs, strict=True) if not r.done]
        results = op.products([o.job(r.basis[-1]) for o, r in active])
        for (o, r), cv in zip(active, results, strict=True):
            r.advance(o.gather(cv))
    return [_padded(r.quadrature(), steps) for r in runs]


def _padded(quad: tuple[Tensor, Tensor], steps: int) -> tuple[Tensor, Tensor]:
    """Ritz values and weights padded to ``steps`` (repeating the largest, weight 0)."""
    theta, tau = quad
    extra = steps - theta.numel()
    if extra <= 0:
        return theta, tau
    return torch.cat([theta, theta[-1:].expand(extra)]), torch.cat([tau, tau.new_zeros(extra)])


def _unit(v: Tensor) -> Tensor:
    return v / v.norm()


# ---------------------------------------------------------------------------- JS⁰
@dataclass
class JSDivergence:
    """Zhang et al.'s JS⁰ and the pairwise matrix it averages.

    Attributes:
        js0: the mean Jensen-Shannon divergence over pairs of blocks (nats, 0 .. ln 2).
        matrix: the pairwise divergences (S x S, zero diagonal).
        labels: the blocks compared.
        sigma: the smoothing width used.
        scale: ``"none"`` (raw eigenvalues, as Zhang et al.) or ``"lmax"`` (each block's
            eigenvalues divided by its largest absolute Ritz value: shape only).
    """

    js0: float
    matrix: Tensor
    labels: list[str]
    sigma: float
    scale: str

    @property
    def distance(self) -> Tensor:
        """``sqrt`` of the divergences (the Jensen-Shannon distance, a metric)."""
        return self.matrix.clamp(min=0).sqrt()


def js_divergence(
    spectra: BlockSpectra | Sequence[Spectrum],
    *,
    sigma: float = JS_SIGMA,
    scale: str = "none",
    grid_points: int = JS_GRID,
) -> JSDivergence:
    """JS⁰: the mean pairwise Jensen-Shannon divergence of the blocks' smoothed densities.

    ``JS(p, q) = KL(p || m) / 2 + KL(q || m) / 2`` with ``m = (p + q) / 2`` on a common grid
    spanning every block's Ritz values (plus 4 sigma on each side); when that grid is too
    coarse for ``sigma`` (fewer than 4 points per sigma), sigma is widened to 4 grid steps
    and the result says so (``.sigma``).

    Example:
        >>> a = Spectrum("a", 2, torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.5]]))
        >>> b = Spectrum("b", 2, torch.tensor([[5.0, 6.0]]), torch.tensor([[0.5, 0.5]]))
        >>> round(js_divergence([a, a]).js0, 6), round(js_divergence([a, b]).js0, 4)
        (0.0, 0.6931)
    """
    blocks = list(spectra.blocks if isinstance(spectra, BlockSpectra) else spectra)
    if len(blocks) < 2:
        raise ValueError("JS⁰ compares blocks: give at least two spectra")
    if scale not in ("none", "lmax"):
        raise ValueError(f"scale must be 'none' or 'lmax', got {scale!r}")
    nodes = [_scaled(b, scale) for b in blocks]
    lo = min(float(n.min()) for n in nodes) - 4 * sigma
    hi = max(float(n.max()) for n in nodes) + 4 * sigma
    step = (hi - lo) / (grid_points - 1)
    sigma = max(sigma, 4 * step)
    grid = torch.linspace(lo - 4 * sigma, hi + 4 * sigma, grid_points, dtype=torch.float64)
    dens = []
    for b, n in zip(blocks, nodes, strict=True):
        p = Spectrum(b.label, b.size, n, b.weights).density(grid, sigma)
        dens.append(p / p.sum())
    S = len(blocks)
    matrix = torch.zeros(S, S, dtype=torch.float64)
    for i in range(S):
        for j in range(i + 1, S):
            matrix[i, j] = matrix[j, i] = _js(dens[i], dens[j])
    js0 = float(matrix.sum() / (S * (S - 1)))
    return JSDivergence(js0, matrix, [b.label for b in blocks], sigma, scale)


def _scaled(b: Spectrum, scale: str) -> Tensor:
    if scale == "none":
        return b.nodes
    top = float(b.nodes.abs().max())
    return b.nodes / top if top > 0 else b.nodes


def _js(p: Tensor, q: Tensor) -> float:
    m = 0.5 * (p + q)
    return float(0.5 * _kl(p, m) + 0.5 * _kl(q, m))


def _kl(p: Tensor, m: Tensor) -> Tensor:
    keep = (p > 0) & (m > 0)  # m = 0 < p only for denormals (their half underflows)
    return (p[keep] * (p[keep] / m[keep]).log()).sum()
