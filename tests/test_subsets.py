"""Measures on a subset of groups (other tensors frozen) equal the full partition's entries.

Float64 twins: the subset's H̄ / Ḡ are the kept rows and columns of the full ones, its
exact block traces and Frobenius norms the kept entries of the full maps, and its block
spectra the eigenvalues of the full Hessian's diagonal blocks (dense, by autograd).
"""

from __future__ import annotations

import pytest
import torch

import hessian_lens as hl
from hessian_lens.heterogeneity import block_types
from hessian_lens.losses import next_token
from hessian_lens.partition import PartitionError
from hessian_lens.subsets import kept_groups, subset, tensors_of, trainable_only
from tests.test_heads import brute_force, data, tiny_gpt


def _qv(part) -> list[int]:
    return [s for s, b in enumerate(block_types(part.labels)) if b in ("q", "v")]


@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_subset_pseudo_hessian_is_the_kept_rows_and_columns(curvature):
    model, batch = tiny_gpt(), data("gpt")
    part = hl.Partition.by_head(model)
    full = hl.pseudo_hessian(model, next_token, batch, partition=part, curvature=curvature)
    keep = _qv(part)
    with trainable_only(model, part, keep):
        sub = subset(model, part, keep)
        res = hl.pseudo_hessian(model, next_token, batch, partition=sub, curvature=curvature)
    assert all(p.requires_grad for p in model.parameters())  # restored
    mine = kept_groups(sub)
    assert [sub.labels[s] for s in mine] == [part.labels[s] for s in keep]
    rest = [x for x in sub.labels if x.endswith(".rest")]
    assert len(rest) == 2  # the key rows of the fused weight and bias
    idx = torch.tensor(keep)
    torch.testing.assert_close(res.H[mine][:, mine], full.H[idx][:, idx], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(res.g[mine], full.g[idx], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("curvature", ["hessian", "ggn", "functional"])
def test_subset_block_norms_are_the_kept_entries(curvature):
    model, batch = tiny_gpt(), data("gpt")
    part = hl.Partition.by_head(model)
    full = hl.block_norms(model, next_token, batch, part, probes="exact", curvature=curvature)
    keep = [s for s, b in enumerate(block_types(part.labels)) if b in ("q", "v", "mlp")]
    with trainable_only(model, part, keep):
        sub = subset(model, part, keep)
        bn = hl.block_norms(model, next_token, batch, sub, probes="exact", curvature=curvature)
    mine, idx = kept_groups(sub), torch.tensor(keep)
    torch.testing.assert_close(bn.trace[mine], full.trace[idx], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(
        bn.frobenius_sq[mine][:, mine], full.frobenius_sq[idx][:, idx], rtol=1e-10, atol=1e-16
    )


def test_subset_spectra_are_the_full_hessians_diagonal_blocks():
    model, batch = tiny_gpt(), data("gpt")
    part = hl.Partition.by_head(model)
    keep = _qv(part)[:2]
    dense = brute_force("gpt")[1]  # the dense P x P Hessian of this model and batch
    flat = part.matrix([torch.ones_like(p) for p in model.parameters()])  # group of each entry
    with trainable_only(model, part, keep):
        sub = subset(model, part, keep)
        sp = hl.block_spectra(model, next_token, batch, sub, steps=64, probes=1, whole=False)
    for j, s in zip(kept_groups(sub), keep, strict=True):
        cols = flat[s].nonzero().squeeze(1)
        want = torch.linalg.eigvalsh(dense[cols][:, cols])
        got = sp.blocks[j].nodes[0][: cols.numel()]
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_refusals_name_the_fix():
    model = tiny_gpt()
    part = hl.Partition.by_head(model)
    with pytest.raises(PartitionError, match="at least one group"):
        subset(model, part, [])
    with pytest.raises(PartitionError, match="not in 0.."):
        tensors_of(part, [len(part)])
    with pytest.raises(PartitionError, match="inside trainable_only"):
        subset(model, part, _qv(part))  # nothing frozen
