"""Small (S x S) linear algebra on pseudo-Hessians, everything in float64.

Invariant normalisation, spectrum, regularised inverse, block-diagonal comparisons, and
the block heterogeneity of the curvature (:func:`heterogeneity`).

Under a per-group rescaling ``T_s -> alpha_s T_s`` the pseudo-Hessian becomes
``D H D`` with ``D`` diagonal; the normalised matrix

    C = diag(|H|)^(-1/2) H diag(|H|)^(-1/2)

does not change, so it is the colour-comparable view across layers and epochs. The
regularised inverse is built in those coordinates, so it is rescaling-covariant too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

DEFAULT_RTOL = 1e-6


@dataclass
class Inverse:
    """A (regularised) inverse of a symmetric matrix and what was done to get it.

    Attributes:
        inv: the inverse used (float64).
        status: ``"exact"`` (positive definite, well conditioned), ``"singular"``
            (eigenvalues below ``rtol * max|lambda|`` raised to that floor) or
            ``"indefinite"`` (negative eigenvalues of the normalised C replaced by their
            absolute values, and floored: ``S |C|^-1 S``, not the saddle-free ``|H|^-1``
            of H's own eigenvalues, which would depend on each group's units).
        eigenvalues: eigenvalues of the matrix, ascending.
        normalized_eigenvalues: eigenvalues of its normalised form C, ascending.
        condition: ``max|lambda| / min|lambda|`` of the matrix (inf when singular).
        n_negative: number of negative eigenvalues of C.
        n_floored: number of eigenvalues of C raised to the floor.
    """

    inv: Tensor
    status: str
    eigenvalues: Tensor
    normalized_eigenvalues: Tensor
    condition: float
    n_negative: int
    n_floored: int


def scales(M: Tensor) -> Tensor:
    """``diag(|M|)^(-1/2)`` as a vector; 1 where the diagonal is 0 (a group with u_s = 0)."""
    d = M.diagonal().abs().double()
    return torch.where(d > 0, d.rsqrt(), torch.ones_like(d))


def normalize(M: Tensor) -> Tensor:
    """The rescaling-invariant form ``diag(|M|)^(-1/2) M diag(|M|)^(-1/2)``.

    Example:
        >>> H = torch.tensor([[4.0, 2.0], [2.0, 9.0]])
        >>> normalize(H)
        tensor([[1.0000, 0.3333],
                [0.3333, 1.0000]], dtype=torch.float64)
    """
    s = scales(M)
    return s[:, None] * M.double() * s[None, :]


def spectrum(M: Tensor) -> tuple[Tensor, float]:
    """Eigenvalues (ascending) of a symmetric matrix and its condition number."""
    lam = torch.linalg.eigvalsh(_sym(M))
    smallest = float(lam.abs().min())
    return lam, float(lam.abs().max()) / smallest if smallest > 0 else float("inf")


def inverse(H: Tensor, rtol: float = DEFAULT_RTOL) -> Inverse:
    """Inverse of a symmetric ``H``, regularised when singular or indefinite.

    In normalised coordinates ``C = S H S`` (``S = diag(|H|)^(-1/2)``), with
    ``C = V diag(lambda) V^T``: ``H^(-1) = S V diag(1 / max(|lambda|, floor)) V^T S`` with
    ``floor = rtol * max|lambda|``: exact when H is positive definite and well conditioned.

    Example:
        >>> res = inverse(torch.tensor([[2.0, 0.0], [0.0, -1.0]]))
        >>> res.status, [round(v, 6) for v in res.inv.diagonal().tolist()]
        ('indefinite', [0.5, 1.0])
    """
    H = _sym(H)
    s = scales(H)
    lam_c, vecs = torch.linalg.eigh(_sym(s[:, None] * H * s[None, :]))
    top = float(lam_c.abs().max()) if lam_c.numel() else 0.0
    floor = rtol * top if top > 0 else 1.0
    n_negative = int((lam_c < -floor).sum())
    n_floored = int((lam_c.abs() < floor).sum())
    inv_c = vecs @ torch.diag(1.0 / lam_c.abs().clamp_min(floor)) @ vecs.T
    lam, cond = spectrum(H)
    status = "indefinite" if n_negative else "singular" if n_floored else "exact"
    return Inverse(
        inv=_sym(s[:, None] * inv_c * s[None, :]),
        status=status,
        eigenvalues=lam,
        normalized_eigenvalues=lam_c,
        condition=cond,
        n_negative=n_negative,
        n_floored=n_floored,
    )


def block_mask(size: int, blocks: Sequence[Sequence[int]]) -> Tensor:
    """Boolean (S x S) mask of the entries inside the diagonal blocks."""
    mask = torch.zeros(size, size, dtype=torch.bool)
    for block in blocks:
        idx = torch.as_tensor(list(block), dtype=torch.long)
        mask[idx[:, None], idx[None, :]] = True
    covered = sorted(i for b in blocks for i in b)
    if covered != list(range(size)):
        raise ValueError(f"blocks must cover 0..{size - 1} exactly once, got {list(blocks)}")
    return mask


def block_inverse(H: Tensor, blocks: Sequence[Sequence[int]], rtol: float = DEFAULT_RTOL) -> Tensor:
    """``blockdiag(H)^(-1)``: each diagonal block inverted (regularised as :func:`inverse`)."""
    H = _sym(H)
    block_mask(H.shape[0], blocks)
    out = torch.zeros_like(H)
    for block in blocks:
        idx = torch.as_tensor(list(block), dtype=torch.long)
        out[idx[:, None], idx[None, :]] = inverse(H[idx[:, None], idx[None, :]], rtol).inv
    return out


def off_block_share(M: Tensor, blocks: Sequence[Sequence[int]]) -> float:
    """``sum |M| outside the blocks / sum |M|`` (0 for a block-diagonal matrix)."""
    mask = block_mask(M.shape[0], blocks)
    total = float(M.abs().sum())
    return float(M.abs()[~mask].sum()) / total if total > 0 else 0.0


def damped(H: Tensor, damping: float, norms_sq: Tensor | None = None) -> Tensor:
    """``H_bar + damping * diag(||U^s||^2)``: the pseudo-Hessian of ``H + damping * I``.

    ``U^T (H + lambda I) U = U^T H U + lambda U^T U`` and ``U^T U = diag(||U^s||^2)`` (the
    groups are disjoint), so damping the full matrix by ``lambda`` damps ``H_bar`` by
    ``lambda ||U^s||^2`` on its diagonal; ``norms_sq=None`` damps by ``lambda`` (as if
    every ``||U^s|| = 1``).

    Example:
        >>> damped(torch.zeros(2, 2), 0.5, torch.tensor([1.0, 4.0])).diagonal().tolist()
        [0.5, 2.0]
    """
    if not damping:
        return H
    if not (damping > 0 and math.isfinite(damping)):
        raise ValueError(f"damping must be a finite number >= 0, got {damping!r}")
    diag = torch.ones(H.shape[0], dtype=H.dtype) if norms_sq is None else norms_sq.to(H.dtype)
    return H + damping * torch.diag(diag.to(H.device))


def model_decrease(g: Tensor, H: Tensor, eta: Tensor) -> float:
    """Decrease of the order-2 model for per-group rates eta: ``g.eta - eta.H.eta / 2``."""
    g, H, eta = g.double(), H.double(), eta.double()
    return float(g @ eta - 0.5 * eta @ H @ eta)


def compare_block_diagonal(
    H: Tensor,
    g: Tensor,
    blocks: Sequence[Sequence[int]],
    rtol: float = DEFAULT_RTOL,
    damping: float = 0.0,
    norms_sq: Tensor | None = None,
) -> dict[str, float | Tensor]:
    """Full inverse vs block-diagonal inverse, and the steps each gives.

    With ``damping`` both use ``damped(H, damping, norms_sq)`` (Abreu et al.'s damped
    curvature); the model decreases are those of the undamped ``H``.

    Returns:
        ``inv_full``, ``inv_bd`` (tensors), ``eta_full = H^-1 g``, ``eta_bd``, and the
        metrics ``rel_error`` (``||inv_full - inv_bd||_F / ||inv_full||_F``),
        ``off_share_H`` / ``off_share_Hinv`` (share of |.| outside the blocks),
        ``off_share_H_norm`` / ``off_share_Hinv_norm`` (same on the rescaling-invariant
        normalised matrices), ``cos_eta``, ``decrease_full``, ``decrease_bd``.

    Example:
        >>> H = torch.tensor([[2.0, 1.0], [1.0, 2.0]]); g = torch.tensor([1.0, 1.0])
        >>> m = compare_block_diagonal(H, g, [[0], [1]])
        >>> round(m["decrease_full"], 4), round(m["decrease_bd"], 4), m["cos_eta"]
        (0.3333, 0.25, 1.0)
    """
    H, g = _sym(H), g.double()
    D = damped(H, damping, norms_sq)
    inv_full = inverse(D, rtol).inv
    inv_bd = block_inverse(D, blocks, rtol)
    eta_full, eta_bd = inv_full @ g, inv_bd @ g
    norm = float(inv_full.norm())
    denom = float(eta_full.norm() * eta_bd.norm())
    return {
        "inv_full": inv_full,
        "inv_bd": inv_bd,
        "eta_full": eta_full,
        "eta_bd": eta_bd,
        "rel_error": float((inv_full - inv_bd).norm()) / norm if norm > 0 else 0.0,
        "off_share_H": off_block_share(H, blocks),
        "off_share_Hinv": off_block_share(inv_full, blocks),
        "off_share_H_norm": off_block_share(normalize(H), blocks),
        "off_share_Hinv_norm": off_block_share(normalize(inv_full), blocks),
        "cos_eta": float(eta_full @ eta_bd) / denom if denom > 0 else 0.0,
        "decrease_full": model_decrease(g, H, eta_full),
        "decrease_bd": model_decrease(g, H, eta_bd),
    }


def group_curvature(H: Tensor, norms_sq: Tensor) -> Tensor:
    """Each group's curvature along the direction: ``H[s, s] / ||U^s||^2``.

    ``H[s, s] = (U^s)^T H U^s``, so this is the Rayleigh quotient of the Hessian along
    the direction restricted to group s. With the gradient as direction
    ``||U^s||^2 = g_bar[s]``: pass ``g``. NaN where ``||U^s|| = 0`` (no direction).

    Raises:
        ValueError: shapes that do not match, or a negative squared norm (``g`` of a
            direction that is not the gradient).

    Example:
        >>> group_curvature(torch.tensor([[2.0, 1.0], [1.0, 8.0]]), torch.tensor([1.0, 2.0]))
        tensor([2., 4.], dtype=torch.float64)
    """
    d, n = H.detach().double().cpu().diagonal(), norms_sq.detach().double().cpu()
    if H.dim() != 2 or H.shape[0] != H.shape[1] or n.shape != d.shape:
        raise ValueError(f"H must be S x S and the norms S, got {tuple(H.shape)}, {tuple(n.shape)}")
    if bool((n < 0).any()) or not bool(torch.isfinite(n).all()):
        raise ValueError(
            "squared norms ||U^s||^2 must be finite and >= 0; g_bar equals them only when "
            "the direction is the gradient"
        )
    return torch.where(n > 0, d / torch.where(n > 0, n, 1.0), torch.full_like(d, float("nan")))


def heterogeneity(
    H: Tensor,
    norms_sq: Tensor,
    blocks: Sequence[str],
    heads: Sequence[int | None] | None = None,
) -> dict[str, Any]:
    """Block heterogeneity of the curvature: :func:`group_curvature` and its spread.

    Zhang et al. (arXiv 2402.16788) find the Hessian's diagonal blocks alike in CNNs and
    very different across blocks in transformers. This summarises one number per group,
    its curvature along the direction, by block type (q / k / v / o / mlp / embedding /
    norm ..., e.g. :func:`hessian_lens.heads.block_of` of the labels) and by head.

    Args:
        H: the pseudo-Hessian (S x S).
        norms_sq: ``||U^s||^2`` per group (``g_bar`` when the direction is the gradient).
        blocks: the block type of every group.
        heads: the attention head of every group (None where it has none).

    Returns:
        ``{"curvature": [S floats, NaN where undefined], "by_block": {type: spread},
        "by_head": {head: spread}, "overall": spread}`` (see :func:`spread`);
        ``overall`` adds ``between_blocks_log10_std``, the dispersion in decades of the
        block types' median magnitudes (0 when all types alike).
    """
    c = group_curvature(H, norms_sq)
    if len(blocks) != c.numel() or (heads is not None and len(heads) != c.numel()):
        raise ValueError(f"blocks and heads need one entry per group (S = {c.numel()})")
    by_block = {
        b: spread(c[[i for i, x in enumerate(blocks) if x == b]]) for b in dict.fromkeys(blocks)
    }
    by_head = {}
    if heads is not None:
        for h in sorted({x for x in heads if x is not None}):
            by_head[h] = spread(c[[i for i, x in enumerate(heads) if x == h]])
    medians = torch.tensor([v["abs_median"] for v in by_block.values() if v["abs_median"] > 0])
    overall = spread(c)
    overall["between_blocks_log10_std"] = _log_std(medians)
    return {"curvature": c.tolist(), "by_block": by_block, "by_head": by_head, "overall": overall}


def spread(values: Tensor) -> dict[str, float | int]:
    """Count, sign and spread of curvatures (NaN entries are undefined, not counted).

    ``min`` / ``median`` / ``max`` are signed; the spread is over the magnitudes ``|c| > 0``
    (curvature can be negative away from a minimum): ``abs_median``, ``log10_std`` (their
    dispersion in decades) and ``max_over_min``.

    Example:
        >>> s = spread(torch.tensor([1.0, 10.0, -100.0, float("nan"), 0.0]))
        >>> s["defined"], s["negative"], s["abs_median"], s["log10_std"], s["max_over_min"]
        (4, 1, 10.0, 0.816496580927726, 100.0)
    """
    v = values.double()
    ok = v[torch.isfinite(v)]
    mag = ok.abs()[ok != 0]
    nan = float("nan")
    return {
        "count": int(v.numel()),
        "defined": int(ok.numel()),
        "negative": int((ok < 0).sum()),
        "min": float(ok.min()) if ok.numel() else nan,
        "median": float(ok.median()) if ok.numel() else nan,
        "max": float(ok.max()) if ok.numel() else nan,
        "abs_median": float(mag.median()) if mag.numel() else nan,
        "log10_std": _log_std(mag),
        "max_over_min": float(mag.max() / mag.min()) if mag.numel() else nan,
    }


def _log_std(positive: Tensor) -> float:
    """Population std of log10 of positive values (0 for one value, NaN for none)."""
    if positive.numel() == 0:
        return float("nan")
    return float(positive.double().log10().std(unbiased=False))


def _sym(M: Tensor) -> Tensor:
    M = M.detach().double().cpu()
    return 0.5 * (M + M.T)


def lower_median(values) -> float:
    """The median as :func:`hessian_lens.linalg.spread` takes it (``torch.median``).

    The lower of the two middle values for an even count.

    Example:
        >>> lower_median([3.0, 1.0, 2.0, 4.0]), lower_median([5.0])
        (2.0, 5.0)
    """
    v = np.sort(np.asarray(values, dtype=np.float64))
    if v.size == 0:
        raise ValueError("the median of no values")
    return float(v[(v.size - 1) // 2])


def left_out(values: Sequence[float]) -> tuple[int, int]:
    """``(undefined, zero)``: groups without a curvature (``||U^s|| = 0``) and with ``c_s = 0``.

    Neither has a log10 |c|; plots leave them out and say how many.
    """
    v = np.asarray(values, dtype=np.float64)
    return int((~np.isfinite(v)).sum()), int((v == 0).sum())
