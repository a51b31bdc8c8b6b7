"""The paper's figures 1–2 turned into numbers: each claim, a measure and a verdict.

Figures 1 (LeNet-5, epochs 1 and 21) and 2 (VGG-11', epochs 1 and 6) of arXiv 2312.03885
show H̄ and H̄⁻¹ cut into WW / BB / WB blocks. The text claims, in our words:

1. the block-diagonal approximation of H̄ (one block per layer) is rough;
2. that of H̄⁻¹ is more reasonable, for LeNet-5;
3. it fails for VGG-11';
4. whose last five layers interact strongly,
5. mostly through their weights,
6. with long-distance interactions inside that block.

Each claim is measured on an analysed record (a dict with ``summary`` and ``arrays``, as
the store gives) on two scales: raw values and the rescaling-invariant normalised matrix
``diag(|M|)^-1/2 M diag(|M|)^-1/2``. The verdict is "holds" / "does not hold" when both
scales agree, else "depends on the scale". Pure functions of stored arrays: the Paper page
and ``docs/reproduction.md`` compute the same table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ROUGH = 0.25  # an approximation leaving this share of sum |M| outside its blocks is rough
STRONG = 2.0  # "interact strongly": mean coupling this many times that of the other pairs
SCALES = ("raw", "normalized")


@dataclass
class Claim:
    """One claim of the paper beside its measures."""

    figure: str
    claim: str
    measure: str
    raw: float
    normalized: float
    threshold: str
    verdict: str


def normalized(M: np.ndarray) -> np.ndarray:
    """``diag(|M|)^-1/2 M diag(|M|)^-1/2`` (1 where the diagonal is 0)."""
    d = np.abs(np.diag(M))
    s = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 1.0)
    return s[:, None] * M * s[None, :]


def abs_inverse(H: np.ndarray, rtol: float = 1e-12) -> np.ndarray:
    """``|H|^-1 = V diag(1 / |lambda|) V^T`` from the eigenvalues of ``H`` itself.

    The saddle-free inverse of ``H`` (negative eigenvalues replaced by their absolute
    values; floored at ``rtol * max|lambda|``). It is not what
    :func:`hessian_lens.linalg.inverse` stores as ``Hinv`` when ``H`` is indefinite: that
    takes the absolute eigenvalues of the normalised matrix ``C = S H S``
    (``S = diag(|H|)^-1/2``) and returns ``S |C|^-1 S``, which follows a rescaling of the
    groups where ``|H|^-1`` does not. Both are ``H^-1`` when ``H`` is positive definite.

    Example:
        >>> abs_inverse(np.array([[2.0, 0.0], [0.0, -4.0]])).diagonal().tolist()
        [0.5, 0.25]
    """
    lam, V = np.linalg.eigh(0.5 * (H + H.T))
    top = float(np.abs(lam).max()) if lam.size else 0.0
    floor = rtol * top if top > 0 else 1.0
    return (V / np.maximum(np.abs(lam), floor)) @ V.T


def on_scale(M: np.ndarray, scale: str) -> np.ndarray:
    """``M`` raw or normalised."""
    return normalized(M) if scale == "normalized" else np.asarray(M, dtype=float)


def layer_blocks(summary: dict) -> list[list[int]]:
    """Group indices per layer (weight and bias of a layer together), in order."""
    layers = summary["layers"]
    order = list(dict.fromkeys(layers))
    return [[i for i, lay in enumerate(layers) if lay == name] for name in order]


def off_block_share(M: np.ndarray, blocks: Sequence[Sequence[int]]) -> float:
    """``sum |M| outside the diagonal blocks / sum |M|``."""
    inside = np.zeros(M.shape, dtype=bool)
    for b in blocks:
        inside[np.ix_(b, b)] = True
    total = np.abs(M).sum()
    return float(np.abs(M)[~inside].sum() / total) if total > 0 else 0.0


def kind_matrix(rec: dict, name: str, scale: str, kinds: tuple[str, str]) -> np.ndarray:
    """The layer x layer block of ``name`` between two kinds (``("weight", "weight")``: WW)."""
    summary = rec["summary"]
    M = on_scale(rec["arrays"][name], scale)
    rows = [i for i, k in enumerate(summary["kinds"]) if k == kinds[0]]
    cols = [i for i, k in enumerate(summary["kinds"]) if k == kinds[1]]
    return M[np.ix_(rows, cols)]


def mean_off_diagonal(M: np.ndarray, idx: Sequence[int]) -> float:
    """Mean ``|M_ij|`` over pairs ``i != j`` of ``idx`` (0 with fewer than two)."""
    idx = list(idx)
    vals = [abs(M[i, j]) for i in idx for j in idx if i != j]
    return float(np.mean(vals)) if vals else 0.0


def last_block_strength(rec: dict, name: str, scale: str, last: int = 5) -> float:
    """How much stronger the WW coupling is within the last ``last`` layers than elsewhere.

    The mean WW coupling between distinct layers among the last ``last`` layers, divided by
    the mean WW coupling of every other pair of distinct layers.
    """
    W = kind_matrix(rec, name, scale, ("weight", "weight"))
    n = W.shape[0]
    tail = list(range(max(0, n - last), n))
    inside = mean_off_diagonal(W, tail)
    others = [
        abs(W[i, j]) for i in range(n) for j in range(n) if i != j and not (i in tail and j in tail)
    ]
    if not others:
        return float("nan")  # no layer outside the block to compare with
    rest = float(np.mean(others))
    return inside / rest if rest > 0 else float("inf")


def kind_means(rec: dict, name: str, scale: str, last: int = 5) -> dict[str, float]:
    """Mean |coupling| between distinct layers among the last ``last``, by kind pair.

    ``{"WW": ..., "BB": ..., "WB": ...}``: weights against weights, biases against biases,
    and the weights of one layer against the bias of another.
    """
    W = kind_matrix(rec, name, scale, ("weight", "weight"))
    B = kind_matrix(rec, name, scale, ("bias", "bias"))
    WB = kind_matrix(rec, name, scale, ("weight", "bias"))
    n, nb = W.shape[0], B.shape[0]
    tail = list(range(max(0, n - last), n))
    wb = [abs(WB[i, j]) for i in tail for j in tail if i != j and j < WB.shape[1]]
    return {
        "WW": mean_off_diagonal(W, tail),
        "BB": mean_off_diagonal(B, [i for i in range(nb) if i >= nb - last]),
        "WB": float(np.mean(wb or [0.0])),
    }


def weights_dominate(rec: dict, name: str, scale: str, last: int = 5) -> float:
    """How much the weight-weight couplings dominate within the last ``last`` layers.

    Mean |WW| off-diagonal over the larger of mean |BB| off-diagonal and mean |WB|
    (weights of one layer vs biases of another), as :func:`kind_means` gives them.
    """
    means = kind_means(rec, name, scale, last)
    other = max(means["BB"], means["WB"])
    return means["WW"] / other if other > 0 else float("inf")


def long_distance(rec: dict, name: str, scale: str, last: int = 5) -> float:
    """How strong the long-distance coupling is within the last ``last`` layers.

    |WW coupling between the first and the last of the last ``last`` layers| over the
    median |WW coupling| of adjacent layers in that block.
    """
    W = kind_matrix(rec, name, scale, ("weight", "weight"))
    n = W.shape[0]
    first = max(0, n - last)
    adjacent = [abs(W[i, i + 1]) for i in range(first, n - 1)]
    ref = float(np.median(adjacent)) if adjacent else 0.0
    return abs(W[first, n - 1]) / ref if ref > 0 else float("inf")


def long_range(rec: dict, name: str, scale: str, last: int = 5, min_distance: int = 2) -> float:
    """How strong the long-distance WW couplings are within the last ``last`` layers.

    Mean |WW coupling| over every pair of those layers at least ``min_distance`` apart, over
    the mean |WW coupling| of adjacent layers among them: 1 when far pairs couple, on
    average, as strongly as neighbours. Unlike :func:`long_distance` (one pair), every far
    pair counts.
    """
    W = kind_matrix(rec, name, scale, ("weight", "weight"))
    n = W.shape[0]
    first = max(0, n - last)
    adjacent = [abs(W[i, i + 1]) for i in range(first, n - 1)]
    far = [abs(W[i, j]) for i in range(first, n) for j in range(i + min_distance, n)]
    if not far:
        return float("nan")  # too few layers for a pair that far apart
    ref = float(np.mean(adjacent))
    return float(np.mean(far)) / ref if ref > 0 else float("inf")


def strongest_long_range(
    rec: dict, name: str = "Hinv", scale: str = "normalized", min_distance: int = 2, top: int = 3
) -> list[tuple[str, str, float]]:
    """The ``top`` strongest WW couplings between layers at least ``min_distance`` apart."""
    summary = rec["summary"]
    W = kind_matrix(rec, name, scale, ("weight", "weight"))
    layers = [
        lay for lay, k in zip(summary["layers"], summary["kinds"], strict=True) if k == "weight"
    ]
    pairs = [
        (layers[i], layers[j], float(W[i, j]))
        for i in range(len(layers))
        for j in range(i + min_distance, len(layers))
    ]
    return sorted(pairs, key=lambda p: -abs(p[2]))[:top]


def _verdict(raw_ok: bool, norm_ok: bool) -> str:
    if raw_ok is None or norm_ok is None:
        return "not measurable here"
    if raw_ok and norm_ok:
        return "holds"
    if not raw_ok and not norm_ok:
        return "does not hold"
    return "depends on the scale"


def _claim(figure, text, measure, threshold, values: dict[str, float], test) -> Claim:
    def check(v: float) -> bool | None:
        return None if np.isnan(v) else bool(test(v))

    return Claim(
        figure,
        text,
        measure,
        values["raw"],
        values["normalized"],
        threshold,
        _verdict(check(values["raw"]), check(values["normalized"])),
    )


def figure_claims(lenet: dict[str, dict], vgg: dict[str, dict]) -> list[Claim]:
    """The table of claims for figure 1 (LeNet-5) and figure 2 (VGG-11').

    ``lenet`` is ``{"1": rec, "21": rec}`` and ``vgg`` is ``{"1": rec, "6": rec}``; either
    may be empty (its rows are then left out).
    """
    out = []
    for epoch, rec in lenet.items():
        fig = f"Fig. 1, LeNet-5, epoch {epoch}"
        blocks = layer_blocks(rec["summary"])
        share = {s: off_block_share(on_scale(rec["arrays"]["H"], s), blocks) for s in SCALES}
        share_inv = {s: off_block_share(on_scale(rec["arrays"]["Hinv"], s), blocks) for s in SCALES}
        out.append(
            _claim(
                fig,
                "block-diagonal approximation of H̄ is rough",
                "share of Σ|H̄| outside the layer blocks",
                f"≥ {ROUGH:.0%}",
                share,
                lambda v: v >= ROUGH,
            )
        )
        out.append(_relative(fig, share, share_inv))
    for epoch, rec in vgg.items():
        out += _vgg_claims(f"Fig. 2, VGG-11', epoch {epoch}", rec)
    return out


def _relative(fig: str, share: dict, share_inv: dict) -> Claim:
    return Claim(
        fig,
        "that of H̄⁻¹ is more reasonable",
        "share of Σ|H̄⁻¹| outside the layer blocks (vs H̄'s)",
        share_inv["raw"],
        share_inv["normalized"],
        f"below H̄'s ({share['raw']:.0%} raw, {share['normalized']:.0%} normalised)",
        _verdict(share_inv["raw"] < share["raw"], share_inv["normalized"] < share["normalized"]),
    )


def _vgg_claims(fig: str, rec: dict) -> list[Claim]:
    blocks = layer_blocks(rec["summary"])
    share_inv = {s: off_block_share(on_scale(rec["arrays"]["Hinv"], s), blocks) for s in SCALES}
    rows = [
        _claim(
            fig,
            "block-diagonal approximation of H̄⁻¹ fails",
            "share of Σ|H̄⁻¹| outside the layer blocks",
            f"≥ {ROUGH:.0%}",
            share_inv,
            lambda v: v >= ROUGH,
        ),
    ]
    measures = (
        (
            "the last five layers interact strongly (H̄⁻¹)",
            "mean WW coupling inside the last 5 layers / elsewhere",
            last_block_strength,
        ),
        (
            "mostly through their weights (H̄⁻¹)",
            "mean |WW| / max(mean |BB|, mean |WB|) inside the last 5 layers",
            weights_dominate,
        ),
        (
            "long-distance interactions inside that block (H̄⁻¹)",
            "mean |WW| of layers ≥ 2 apart / mean |WW| of adjacent layers, in the last 5",
            long_range,
        ),
    )
    for text, measure, fn in measures:
        values = {s: fn(rec, "Hinv", s) for s in SCALES}
        threshold = STRONG if fn is not long_range else 1.0
        rows.append(
            _claim(fig, text, measure, f"≥ {threshold:g}", values, lambda v, t=threshold: v >= t)
        )
    return rows
