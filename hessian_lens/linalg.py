"""Small (S x S) linear algebra on pseudo-Hessians, everything in float64.

Invariant normalisation, spectrum, regularised inverse, block-diagonal comparisons.

Under a per-group rescaling ``T_s -> alpha_s T_s`` the pseudo-Hessian becomes
``D H D`` with ``D`` diagonal; the normalised matrix

    C = diag(|H|)^(-1/2) H diag(|H|)^(-1/2)

does not change, so it is the colour-comparable view across layers and epochs. The
regularised inverse is built in those coordinates, so it is rescaling-covariant too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


def model_decrease(g: Tensor, H: Tensor, eta: Tensor) -> float:
    """Decrease of the order-2 model for per-group rates eta: ``g.eta - eta.H.eta / 2``."""
    g, H, eta = g.double(), H.double(), eta.double()
    return float(g @ eta - 0.5 * eta @ H @ eta)


def compare_block_diagonal(
    H: Tensor, g: Tensor, blocks: Sequence[Sequence[int]], rtol: float = DEFAULT_RTOL
) -> dict[str, float | Tensor]:
    """Full inverse vs block-diagonal inverse, and the steps each gives.

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
    inv_full = inverse(H, rtol).inv
    inv_bd = block_inverse(H, blocks, rtol)
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


def _sym(M: Tensor) -> Tensor:
    M = M.detach().double().cpu()
    return 0.5 * (M + M.T)
