"""Curvature measures on some of a partition's groups only: every other tensor frozen.

A block of the curvature, ``C[I_s, I_t]`` (``C`` = the Hessian or the Gauss-Newton
matrix), does not depend on which other parameters are trainable: freezing a tensor only
removes its rows and columns. So the diagonal blocks of a few groups (the query and value
heads of Ormaniec et al., a handful of blocks for Zhang et al.'s spectra) can be measured
with every tensor that holds none of them frozen, and the engine then differentiates and
multiplies only what is left. :func:`subset` builds that partition (the kept groups with
their labels; the scalars left over in a tensor some kept group touches form one group
``<name>.rest``), and :func:`trainable_only` freezes the rest for the duration of a
``with`` block (``requires_grad`` restored on exit)::

    part = hl.Partition.by_head(model)
    keep = [s for s, b in enumerate(heterogeneity.block_types(part.labels)) if b in "qv"]
    with trainable_only(model, part, keep):
        sub = subset(model, part, keep)
        bn = hl.block_norms(model, loss_fn, data, sub, probes=8)

``pseudo_hessian`` on ``sub`` gives the rows and columns of the kept groups of the full
``H̄`` (and ``ḡ_s``); ``block_norms`` their blocks' traces and Frobenius norms; their
``block_spectra`` the spectra of their diagonal blocks (tests/test_subsets.py checks each
against the full partition in float64).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from hessian_lens.partition import Partition, PartitionError

__all__ = ["kept_groups", "subset", "tensors_of", "trainable_only"]


def tensors_of(part: Partition, keep: Sequence[int]) -> list[str]:
    """The names of the parameter tensors that hold part of a kept group."""
    _check(part, keep)
    ids = sorted({i for s in keep for i in part.params_of(s)})
    return [part.names[i] for i in ids]


@contextmanager
def trainable_only(model: nn.Module, part: Partition, keep: Sequence[int]) -> Iterator[None]:
    """Within the block, only the tensors holding a kept group are trainable."""
    names = set(tensors_of(part, keep))
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        for n, p in model.named_parameters():
            p.requires_grad_(n in names and saved[n])
        yield
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n])


def subset(model: nn.Module, part: Partition, keep: Sequence[int]) -> Partition:
    """The partition of the kept groups (of ``part``) over the model's trainable tensors.

    Call it inside :func:`trainable_only`. The kept groups keep their labels and order;
    the scalars of a trainable tensor that no kept group holds become ``<name>.rest``.

    Raises:
        PartitionError: a trainable tensor holds no kept group (freeze it first), or an
            index out of range.
    """
    _check(part, keep)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    wanted = set(tensors_of(part, keep))
    extra = [n for n in trainable if n not in wanted]
    if extra:
        raise PartitionError(
            f"tensors {extra[:4]} hold no kept group but are trainable: build the subset "
            "inside trainable_only(model, part, keep)"
        )
    groups = []
    for s in sorted(keep):
        sets = {}
        for i in part.params_of(s):
            entries = part.entries(s, i)
            if entries is None:
                sets[part.names[i]] = None
                continue
            mask = torch.zeros(part.shapes[i].numel(), dtype=torch.bool)
            mask[entries.cpu()] = True
            sets[part.names[i]] = mask.reshape(part.shapes[i])
        groups.append((part.labels[s], sets))
    return Partition.from_index_sets(model, groups, rest="tensor", scheme=f"{part.scheme}[subset]")


def kept_groups(sub: Partition) -> list[int]:
    """The indices of ``sub``'s kept groups (not the ``.rest`` leftovers)."""
    return [s for s, label in enumerate(sub.labels) if not label.endswith(".rest")]


def _check(part: Partition, keep: Sequence[int]) -> None:
    if not keep:
        raise PartitionError("keep no group? give at least one group index")
    bad = [s for s in keep if not (isinstance(s, int) and 0 <= s < len(part))]
    if bad:
        raise PartitionError(f"group indices {bad} are not in 0..{len(part) - 1}")
