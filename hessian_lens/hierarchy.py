"""Hundreds of groups as a tree: layer -> head -> block type (Q / K / V / O / MLP ...).

A per-head partition of a transformer has hundreds of groups. This module places each
group label in a tree (:func:`place`), orders the groups layer by layer and, inside a
layer, head by head (:func:`order`), and collapses chosen branches into one group
(:func:`units`, :func:`coarsen`).

Collapsing is exact, not an average: a union of groups ``A`` has the direction
``U^A = sum_{s in A} U^s``, so the pseudo-Hessian of the coarser partition is

    H_c[A, B] = (U^A)^T H U^B = sum_{s in A, s' in B} H[s, s']  =  M^T H M,

with ``M`` the S x U membership matrix, and ``g_c = M^T g``. Its inverse is the inverse of
``H_c`` (recomputed), never a sum of entries of ``H^-1``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hessian_lens import linalg
from hessian_lens.heads import BLOCK_TYPES, block_of, head_of
from hessian_lens.labels import layer_of

LEVELS = ("group", "head", "block", "layer")
LEVEL_NAMES = {
    "group": "every group",
    "head": "one per head (Q, K, V, O of a head summed)",
    "block": "one per block type (Q, K, V, O, MLP, norm ... of a layer)",
    "layer": "one per layer",
}
ORDERS = ("head", "block")
LAYER_LEVEL_ABOVE = 200  # more groups than this: views open one group per layer


def default_level(labels: Sequence[str]) -> str:
    """The tree level a view opens at: every group, or one per layer above a few hundred.

    Above :data:`LAYER_LEVEL_ABOVE` groups (a 100M-class GPT head by head has S = 688, an
    every-group heatmap of 473,344 cells) one group per layer; the user opens layers or
    finer levels from there.

    Example:
        >>> default_level(["fc.weight", "fc.bias"])
        'group'
        >>> default_level([f"b.{i}.w" for i in range(201)])
        'layer'
    """
    return "layer" if len(labels) > LAYER_LEVEL_ABOVE else "group"


@dataclass(frozen=True)
class Place:
    """Where a group sits: its layer, attention head (None: none) and block type."""

    layer: str
    head: int | None
    block: str


def place(label: str) -> Place:
    """The :class:`Place` of one group label."""
    return Place(layer_of(label), head_of(label), block_of(label))


def has_heads(labels: Sequence[str]) -> bool:
    """Whether any label names an attention head (a per-head partition)."""
    return any(head_of(x) is not None for x in labels)


def order(labels: Sequence[str], within: str = "head") -> list[int]:
    """A stable order of the groups: layer by layer, then inside a layer by head or type.

    Layers keep their first appearance's order. Inside a layer the groups before its first
    head group stay first and those after it last (norms before, MLP after attention);
    the head groups between are sorted head -> Q / K / V / O (``within="head"``) or
    Q / K / V / O -> head (``within="block"``).

    Example:
        >>> order(["a.0.q.head0", "a.0.q.head1", "a.0.k.head0", "a.0.k.head1"])
        [0, 2, 1, 3]
    """
    if within not in ORDERS:
        raise ValueError(f"within must be one of {ORDERS}, got {within!r}")
    places = [place(x) for x in labels]
    layers = {layer: n for n, layer in enumerate(dict.fromkeys(p.layer for p in places))}
    first_head = {}
    for i, p in enumerate(places):
        if p.head is not None:
            first_head.setdefault(p.layer, i)

    def key(i: int) -> tuple:
        p = places[i]
        if p.head is None:
            segment = 0 if i < first_head.get(p.layer, len(labels)) else 2
            return (layers[p.layer], segment, 0, 0, i)
        rank = BLOCK_TYPES.index(p.block)
        inner = (p.head, rank) if within == "head" else (rank, p.head)
        return (layers[p.layer], 1, *inner, i)

    return sorted(range(len(labels)), key=key)


def units(
    labels: Sequence[str],
    level: str = "group",
    expanded: Collection[str] = (),
    within: str = "head",
) -> list[tuple[str, list[int]]]:
    """The groups after collapsing: ``[(label, member group indices)]`` in display order.

    Every layer not in ``expanded`` is collapsed to ``level``: ``group`` keeps every group,
    ``head`` merges a head's Q / K / V / O groups into ``<layer>.head<h>`` (other groups
    into ``<layer>.<block type>``), ``block`` merges by block type (``<layer>.q``: all
    heads' query groups), ``layer`` makes the layer one group. Layers in ``expanded``
    keep every group; a unit of one group keeps that group's label.

    Example:
        >>> units(["l.0.q.head0", "l.0.k.head0", "l.0.q.head1", "l.0.mlp.weight"], "head")
        [('l.0.head0', [0, 1]), ('l.0.q.head1', [2]), ('l.0.mlp.weight', [3])]
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    out: dict[str, list[int]] = {}
    for i in order(labels, within):
        p = place(labels[i])
        out.setdefault(_unit_label(labels[i], p, level, p.layer in expanded), []).append(i)
    return [(labels[m[0]] if len(m) == 1 else u, m) for u, m in out.items()]


def _unit_label(label: str, p: Place, level: str, expanded: bool) -> str:
    if expanded or level == "group":
        return label
    if level == "layer":
        return p.layer
    if level == "head" and p.head is not None:
        return f"{p.layer}.head{p.head}"
    return f"{p.layer}.{p.block}"


def membership(size: int, groups: Sequence[tuple[str, Sequence[int]]]) -> np.ndarray:
    """The S x U 0/1 matrix ``M`` with ``M[s, u] = 1`` when group s is in unit u.

    Raises:
        ValueError: a group in no unit or in two (the units must partition the groups).
    """
    M = np.zeros((size, len(groups)))
    for u, (_, members) in enumerate(groups):
        M[list(members), u] = 1.0
    if not np.array_equal(M.sum(axis=1), np.ones(size)):
        raise ValueError("the units must hold every group exactly once")
    return M


def coarsen(rec: dict, groups: Sequence[tuple[str, Sequence[int]]]) -> dict:
    """A record of the coarser partition: ``H_c = M^T H M``, ``g_c = M^T g``, its inverse.

    ``rec`` is a view record (``{"summary", "arrays", ...}``); the result has the same
    shape with one group per unit: labels, kinds (``mixed`` when the members differ),
    layers, sizes (summed), the inverse of ``H_c`` and its status.
    """
    summary, arrays = rec["summary"], rec["arrays"]
    size = len(summary["labels"])
    if len(groups) == size:  # one group a unit: the stored matrices, reordered (no M)
        at = [m[0] for _, m in groups]
        if sorted(at) != list(range(size)):
            raise ValueError("the units must hold every group exactly once")
        return rec if at == list(range(size)) else _permuted(rec, at)
    M = membership(size, groups)
    H = M.T @ np.asarray(arrays["H"], dtype=np.float64) @ M
    g = M.T @ np.asarray(arrays["g"], dtype=np.float64)
    inv = linalg.inverse(torch.from_numpy(H))
    kinds = [_merged([summary["kinds"][i] for i in m]) for _, m in groups]
    layers = [_common_module([summary["layers"][i] for i in m]) for _, m in groups]
    new_summary = {
        **{k: v for k, v in summary.items() if k != "compare"},  # about the fine groups
        "labels": [label for label, _ in groups],
        "kinds": kinds,
        "layers": layers,
        "sizes": [int(sum(summary["sizes"][i] for i in m)) for _, m in groups],
        "inverse": {
            "status": inv.status,
            "condition": inv.condition,
            "n_negative": inv.n_negative,
            "n_floored": inv.n_floored,
        },
    }
    new_arrays = {"H": H, "g": g, "Hinv": inv.inv.numpy()}
    return {**rec, "summary": new_summary, "arrays": new_arrays}


def _permuted(rec: dict, at: Sequence[int]) -> dict:
    """The record with its groups in order ``at``: the stored matrices, rows and columns moved."""
    summary = dict(rec["summary"])
    for name in ("labels", "kinds", "layers", "sizes"):
        summary[name] = [rec["summary"][name][i] for i in at]
    arrays = {}
    for name, a in rec["arrays"].items():
        a = np.asarray(a)
        if a.ndim == 2 and a.shape[0] == a.shape[1] == len(at):
            arrays[name] = a[np.ix_(at, at)]
        elif name == "g" or name.startswith("eta_"):  # per group (not the eigenvalues)
            arrays[name] = a[list(at)]
    return {**rec, "summary": summary, "arrays": arrays}


def _merged(values: Sequence[str]) -> str:
    return values[0] if len(set(values)) == 1 else "mixed"


def _common_module(names: Sequence[str]) -> str:
    """The deepest module holding every one of ``names`` (dotted prefixes)."""
    parts = [str(n).split(".") for n in names]
    common = []
    for tokens in zip(*parts, strict=False):
        if len(set(tokens)) > 1:
            break
        common.append(tokens[0])
    return ".".join(common) or "model"
