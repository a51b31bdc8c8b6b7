"""Block heterogeneity of stored analyses: each group's curvature along the gradient.

With u = the gradient every group s gets one number, its curvature along u::

    c_s = H̄_ss / ||U^s||^2 = H̄_ss / ḡ_s

(:func:`hessian_lens.linalg.group_curvature`). Zhang et al. ("Why Transformers Need Adam",
arXiv 2402.16788) find the Hessian's diagonal blocks alike in CNNs and very different
across block types in transformers; this module groups ``c_s`` by block type (q / k / v /
o / mlp / embedding / norm / output / conv / linear ..., :func:`hessian_lens.heads.block_of`)
and head, for one checkpoint (:func:`measure`) and across a run (:func:`across`), from
nothing but the stored ``H̄`` and ``ḡ`` (``u_sq`` where a Recorder stored ``||U^s||^2``
for another direction). ``benchmarks/transformer_claims.py`` and the dashboard's Block
heterogeneity page both read their numbers here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hessian_lens import linalg
from hessian_lens.heads import block_of, head_of
from hessian_lens.linalg import left_out as left_out
from hessian_lens.linalg import lower_median as lower_median

ATTENTION = frozenset({"q", "k", "v", "o", "qkv"})
FAMILIES = ("transformer", "cnn", "other")
#: The order block types are shown in: roughly from the input to the output.
TYPE_ORDER = (
    "embedding",
    "q",
    "k",
    "v",
    "qkv",
    "o",
    "mlp",
    "norm",
    "conv",
    "linear",
    "output",
    "bias",
    "other",
)


@dataclass
class Measured:
    """The curvatures of one analysed checkpoint and their spread.

    Attributes:
        epoch: the checkpoint's epoch (None when unknown).
        name: a short name for axes (the epoch, or the checkpoint's file name).
        labels: the group labels.
        blocks: the block type of every group.
        heads: the attention head of every group (None where it has none).
        values: ``c_s`` (signed; NaN where ``||U^s|| = 0``).
        stats: :func:`hessian_lens.linalg.heterogeneity`'s ``by_block`` / ``by_head`` /
            ``overall`` spreads.
    """

    epoch: float | None
    name: str
    labels: list[str]
    blocks: list[str]
    heads: list[int | None]
    values: np.ndarray
    stats: dict[str, Any]


def block_types(labels: Sequence[str], kinds: Sequence[str] | None = None) -> list[str]:
    """The block type of every group; with ``kinds``, plain biases are a type of their own.

    Example:
        >>> block_types(["conv1.weight", "conv1.bias", "fc.bias"], ["weight", "bias", "bias"])
        ['conv', 'bias', 'bias']
    """
    types = [block_of(x) for x in labels]
    if kinds is None:
        return types
    if len(kinds) != len(labels):
        raise ValueError(f"kinds needs one entry per group ({len(labels)}), got {len(kinds)}")
    return ["bias" if k == "bias" else t for t, k in zip(types, kinds, strict=True)]


def family(labels: Sequence[str]) -> str:
    """``transformer`` (an attention block), ``cnn`` (a convolution) or ``other``.

    Example:
        >>> family(["blocks.0.attn.q.head0"]), family(["conv1.weight"]), family(["fc.weight"])
        ('transformer', 'cnn', 'other')
    """
    types = {block_of(x) for x in labels}
    if types & ATTENTION:
        return "transformer"
    return "cnn" if "conv" in types else "other"


def norms_sq(arrays: Mapping[str, Any], settings: Mapping[str, Any] | None = None) -> np.ndarray:
    """``||U^s||^2`` of an analysis: the stored ``u_sq``, else ``ḡ`` when u is the gradient.

    Raises:
        ValueError: an analysis along another direction that did not store ``u_sq``
            (``ḡ_s`` is then not ``||U^s||^2``, and the curvature cannot be read back).
    """
    if arrays.get("u_sq") is not None:
        return np.asarray(arrays["u_sq"], dtype=np.float64)
    direction = (settings or {}).get("direction", "gradient")
    if direction != "gradient":
        raise ValueError(
            f"this analysis used direction '{direction}' and did not store ||U^s||^2 (u_sq), "
            "so the curvature along it cannot be read back; pick an analysis along the "
            "gradient (python -m hessian_lens analyze RUN computes one)."
        )
    return np.asarray(arrays["g"], dtype=np.float64)


def measure(
    labels: Sequence[str],
    H: Any,
    n_sq: Any,
    blocks: Sequence[str] | None = None,
) -> dict[str, Any]:
    """:func:`hessian_lens.linalg.heterogeneity` of one analysis, heads read from the labels.

    The block types too, unless ``blocks`` gives them (e.g. :func:`block_types` with kinds).
    """
    H = torch.as_tensor(np.asarray(H, dtype=np.float64))
    n = torch.as_tensor(np.asarray(n_sq, dtype=np.float64))
    blocks = list(blocks) if blocks is not None else [block_of(x) for x in labels]
    return linalg.heterogeneity(H, n, blocks, [head_of(x) for x in labels])


def of_record(rec: Mapping[str, Any], settings=None, biases_apart: bool = False) -> Measured:
    """:class:`Measured` of a view record (``{"epoch", "checkpoint", "summary", "arrays"}``).

    Raises:
        ValueError: the record's direction is not the gradient and it has no ``u_sq``.
    """
    summary, arrays = rec["summary"], rec["arrays"]
    labels = list(summary["labels"])
    blocks = block_types(labels, summary.get("kinds") if biases_apart else None)
    het = measure(labels, arrays["H"], norms_sq(arrays, settings), blocks)
    values = np.asarray(het.pop("curvature"), dtype=np.float64)
    epoch = rec.get("epoch")
    name = _epoch_name(epoch) if epoch is not None else str(rec.get("checkpoint", "?"))
    heads = [head_of(x) for x in labels]
    return Measured(epoch, name, labels, blocks, heads, values, het)


def across(recs: Sequence[Mapping[str, Any]], settings=None, biases_apart=False) -> list[Measured]:
    """:func:`of_record` of every record, names made unique (two checkpoints at epoch 8)."""
    out = [of_record(r, settings, biases_apart) for r in recs]
    names = [m.name for m in out]
    for m, r in zip(out, recs, strict=True):
        if names.count(m.name) > 1:
            m.name = f"{m.name} ({r.get('checkpoint', '?')})"
    return out


def progress(epochs: Sequence[float | None]) -> list[float]:
    """Training progress of each checkpoint: epoch / the last epoch (NaN when unknown).

    Example:
        >>> progress([0, 0.5, 2, None])
        [0.0, 0.25, 1.0, nan]
    """
    known = [e for e in epochs if e is not None]
    last = max(known, default=0.0)
    if last <= 0:
        return [0.0 if e is not None else math.nan for e in epochs]
    return [e / last if e is not None else math.nan for e in epochs]


def type_order(blocks: Sequence[str]) -> list[str]:
    """The block types present, in :data:`TYPE_ORDER` (unknown types last).

    Example:
        >>> type_order(["mlp", "q", "bias", "q", "norm", "embedding"])
        ['embedding', 'q', 'mlp', 'norm', 'bias']
    """
    rank = {t: i for i, t in enumerate(TYPE_ORDER)}
    return sorted(dict.fromkeys(blocks), key=lambda t: (rank.get(t, len(rank)), t))


def block_table(stats: Mapping[str, Any], order: Sequence[str] | None = None) -> list[dict]:
    """One row per block type: groups, defined, negative, median |c|, log10 std, max / min."""
    by_block = stats["by_block"]
    rows = []
    for b in order or list(by_block):
        s = by_block[b]
        rows.append(
            {
                "block type": b,
                "groups": s["count"],
                "defined": s["defined"],
                "negative": s["negative"],
                "median |c|": s["abs_median"],
                "log10 std": s["log10_std"],
                "max/min |c|": s["max_over_min"],
            }
        )
    return rows


def _epoch_name(epoch: float) -> str:
    return str(int(epoch)) if float(epoch).is_integer() else f"{epoch:g}"


def matrix(measured: Sequence[Measured]) -> np.ndarray:
    """``c_s`` of a run as groups x checkpoints.

    Raises:
        ValueError: no checkpoint, or checkpoints whose groups differ (one analysis
            settings has one partition; pick one).
    """
    if not measured:
        raise ValueError("no analysed checkpoint to draw")
    labels = measured[0].labels
    for m in measured[1:]:
        if m.labels != labels:
            raise ValueError(
                f"the groups of checkpoint {m.name} differ from those of {measured[0].name}; "
                "pick one analysis (one partition) in the sidebar"
            )
    return np.stack([m.values for m in measured], axis=1)


def spreads(measured: Sequence[Measured]) -> tuple[list[float], list[float], list[float]]:
    """``(progress, between block types, overall)`` of each checkpoint, in decades.

    The log10 standard deviations of :func:`hessian_lens.linalg.heterogeneity`:
    ``between_blocks_log10_std`` (of the block types' median |c_s|) and ``log10_std``
    (over every group), against :func:`progress`.
    """
    overall = [m.stats["overall"] for m in measured]
    return (
        progress([m.epoch for m in measured]),
        [o["between_blocks_log10_std"] for o in overall],
        [o["log10_std"] for o in overall],
    )


def partner(own: str, size: int, candidates: Sequence[tuple[str, int] | None]) -> int | None:
    """The candidate to compare a run with: a CNN for a transformer and vice versa.

    Among the candidates ``(family, S)`` of the other family (a transformer for a run of
    family ``other``), the one whose number of groups is closest to ``size`` on a log scale
    (first one on ties); None when there is none. ``None`` candidates (unreadable runs)
    are skipped.

    Example:
        >>> partner("transformer", 54, [("cnn", 10), ("transformer", 54), ("cnn", 62)])
        2
    """
    wanted = "cnn" if own == "transformer" else "transformer"
    best, gap = None, math.inf
    for i, c in enumerate(candidates):
        if c is None or c[0] != wanted:
            continue
        d = abs(math.log(max(c[1], 1)) - math.log(max(size, 1)))
        if d < gap:
            best, gap = i, d
    return best


#: The roles :func:`roles` gives, shared by CNNs and transformers (input to output).
ROLES = ("input", "q", "k", "v", "o", "hidden", "norm", "bias", "output", "other")
#: The attention roles, folded into ``hidden`` by :func:`shared_roles`.
ATTENTION_ROLES = frozenset({"q", "k", "v", "o"})


def roles(labels: Sequence[str], kinds: Sequence[str]) -> list[str]:
    """A block type per group that means the same in CNNs and transformers.

    * ``input``: the layer that reads the data: embeddings (tokens, positions, patches, the
      class token) or, without one, the first weight tensor (a CNN's first convolution);
    * ``q`` / ``k`` / ``v`` / ``o``: attention heads (their fused bias entries included);
    * ``hidden``: every other weight of a hidden layer: MLP, convolution (a ResNet's
      downsample convolution too), hidden linear layer;
    * ``norm``: LayerNorm and BatchNorm scales and shifts (a downsample's BatchNorm too);
    * ``bias``: the bias of any other layer;
    * ``output``: the classifier: the last weight tensor of the model when it is a linear
      or output layer (a tied embedding is ``input``), and its bias;
    * ``other``: anything else.

    Example:
        >>> roles(["conv1.weight", "bn1.weight", "layer2.0.downsample.0.weight",
        ...        "layer2.0.downsample.1.bias", "fc.weight", "fc.bias"],
        ...       ["weight", "norm_weight", "weight", "norm_bias", "weight", "bias"])
        ['input', 'norm', 'hidden', 'norm', 'output', 'output']
    """
    if len(kinds) != len(labels):
        raise ValueError(f"kinds needs one entry per group ({len(labels)}), got {len(kinds)}")
    blocks = [block_of(x) for x in labels]
    weights = [i for i, k in enumerate(kinds) if k == "weight"]
    has_embedding = "embedding" in blocks
    first = None if has_embedding or not weights else weights[0]
    last = weights[-1] if weights and blocks[weights[-1]] in ("output", "linear") else None
    last_layer = labels[last].rsplit(".", 1)[0] if last is not None else None
    out = []
    for i, (label, kind, block) in enumerate(zip(labels, kinds, blocks, strict=True)):
        out.append(_role(i, label, kind, block, first, last, last_layer))
    return out


def _role(i, label, kind, block, first, last, last_layer) -> str:
    if kind.startswith("norm") or block == "norm":
        return "norm"
    if block == "embedding" or i == first:
        return "input"
    if i == last or (kind == "bias" and label.rsplit(".", 1)[0] == last_layer):
        return "output"
    if block in ATTENTION_ROLES or block == "qkv":
        return "bias" if kind == "bias" else ("hidden" if block == "qkv" else block)
    if kind == "bias":
        return "bias"
    if block in ("mlp", "conv", "linear") or "downsample" in label:
        return "hidden"
    return "output" if block == "output" else "other"


def shared_roles(labels: Sequence[str], kinds: Sequence[str]) -> list[str]:
    """:func:`roles` with the attention roles folded into ``hidden`` (every family has it).

    Example:
        >>> shared_roles(["emb.weight", "attn.q.head0", "mlp.fc1.weight", "head.weight"],
        ...              ["weight", "mixed", "weight", "weight"])
        ['input', 'hidden', 'hidden', 'output']
    """
    return ["hidden" if r in ATTENTION_ROLES else r for r in roles(labels, kinds)]


def median(values) -> float:
    """The ordinary median (the mean of the two middle values for an even count).

    Example:
        >>> median([3.0, 1.0, 2.0, 4.0]), lower_median([3.0, 1.0, 2.0, 4.0])
        (2.5, 2.0)
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("the median of no values")
    return float(np.median(v))
