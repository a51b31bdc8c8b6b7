"""Block traces and Frobenius norms: exact against dense float64, honest standard errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import hessian_lens as hl
from hessian_lens.losses import next_token
from hessian_lens.measures import block_norms
from hessian_lens.reference import full_derivative, full_ggn
from tests.compare import EXACT, assert_close
from tests.test_curvature import gpt_data, tiny_gpt
from tests.tiny import cnn, data_for, mlp

F64 = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread (two spin against each other on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def dense_blocks(C: torch.Tensor, part: hl.Partition) -> tuple[torch.Tensor, torch.Tensor]:
    """``tr(C_ss)`` and ``||C_st||_F`` of a dense matrix, by the partition's index sets."""
    masks = part.matrix([torch.ones(s, dtype=F64) for s in part.shapes]).bool()
    trace = torch.stack([C[m][:, m].trace() for m in masks])
    fro = torch.stack([torch.stack([C[a][:, b].norm() for b in masks]) for a in masks])
    return trace, fro


def dense(model, loss_fn, data, curvature):
    with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no 2nd derivative
        if curvature == "ggn":
            return full_ggn(model, loss_fn, data)
        return full_derivative(model, loss_fn, data, 2)


CASES = {
    "mlp": (mlp, F.cross_entropy, lambda: data_for("mlp"), hl.Partition.canonical),
    "cnn-by-layer": (cnn, F.cross_entropy, lambda: data_for("cnn"), hl.Partition.by_layer),
    "gpt-heads": (tiny_gpt, next_token, gpt_data, hl.Partition.by_head),
}


@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
@pytest.mark.parametrize("name", list(CASES))
def test_exact_probes_equal_the_dense_float64_blocks(name, curvature):
    build, loss_fn, make, scheme = CASES[name]
    model, data = build().double(), make()
    part = scheme(model)
    bn = block_norms(model, loss_fn, data, part, probes="exact", curvature=curvature)
    trace, fro = dense_blocks(dense(model, loss_fn, data, curvature), part)
    assert_close(bn.trace, trace, rtol=1e-9, atol=1e-14)
    assert_close(bn.frobenius, fro, rtol=1e-9, atol=1e-14)
    assert bn.trace_se.abs().max() == 0 and bn.probes == "exact"
    assert bn.sizes == [int(m.sum()) for m in part.matrix([torch.ones(s) for s in part.shapes])]
    share = float((fro.diagonal() ** 2).sum() / (fro**2).sum())
    assert bn.diagonal_share() == pytest.approx(share, rel=1e-9)


def test_estimates_do_not_depend_on_how_the_data_are_cut(monkeypatch):
    model, (x, y) = cnn().double(), data_for("cnn", n=20)
    whole = block_norms(model, F.cross_entropy, (x, y), probes=3, seed=5)
    pieces = block_norms(model, F.cross_entropy, [(x[:9], y[:9]), (x[9:], y[9:])], probes=3, seed=5)
    assert_close(pieces.trace, whole.trace, **EXACT)
    assert_close(pieces.frobenius_sq, whole.frobenius_sq, **EXACT)
    monkeypatch.setenv("HESSIAN_LENS_MAX_MEMORY_GB", "0.00002")  # 21 kB: micro-batches
    split = block_norms(model, F.cross_entropy, (x, y), probes=3, seed=5)
    assert_close(split.frobenius_sq, whole.frobenius_sq, **EXACT)


@pytest.fixture(scope="module")
def truth():
    torch.manual_seed(0)
    model, data = mlp().double(), data_for("mlp")
    part = hl.Partition.canonical(model)
    trace, fro = dense_blocks(full_derivative(model, F.cross_entropy, data, 2), part)
    return model, data, trace, fro


def test_standard_errors_are_honest_over_200_seeds(truth):
    """|estimate - truth| <= 3 standard errors in >= 95% of 200 seeds, every block.

    Both trace estimators (from the row passes, and from one product per probe) and the
    squared Frobenius map, 16 probes each.
    """
    model, data, trace, fro = truth
    hits = {"trace": [], "trace_only": [], "frobenius_sq": []}
    for seed in range(200):
        bn = block_norms(model, F.cross_entropy, data, probes=16, seed=seed)
        only = block_norms(model, F.cross_entropy, data, probes=16, seed=seed, frobenius=False)
        hits["trace"].append((bn.trace - trace).abs() <= 3 * bn.trace_se)
        hits["trace_only"].append((only.trace - trace).abs() <= 3 * only.trace_se)
        upper = torch.triu(torch.ones_like(fro, dtype=torch.bool))
        sq = ((bn.frobenius_sq - fro**2).abs() <= 3 * bn.frobenius_sq_se)[upper]
        hits["frobenius_sq"].append(sq)
    for name, rows in hits.items():
        coverage = torch.stack(rows).double().mean(0)
        assert coverage.min() >= 0.95, (name, coverage)


def test_the_error_shrinks_as_one_over_the_square_root_of_the_probes(truth):
    """RMS error over 40 seeds: 64 probes against 4 probes is about 4 times smaller."""
    model, data, _, fro = truth

    def rms(k: int) -> float:
        errors = [
            (block_norms(model, F.cross_entropy, data, probes=k, seed=s).frobenius_sq - fro**2)
            for s in range(40)
        ]
        return float(torch.stack(errors).pow(2).mean().sqrt())

    ratio = rms(4) / rms(64)
    assert 2.5 < ratio < 6.5, ratio  # sqrt(64 / 4) = 4


def test_rademacher_probes_are_reproducible_and_seeded():
    model, data = mlp().double(), data_for("mlp")
    a = block_norms(model, F.cross_entropy, data, probes=4, seed=1)
    b = block_norms(model, F.cross_entropy, data, probes=4, seed=1)
    c = block_norms(model, F.cross_entropy, data, probes=4, seed=2)
    assert torch.equal(a.trace, b.trace) and not torch.equal(a.trace, c.trace)


@pytest.mark.parametrize(("probes", "match"), [(1, ">= 2"), ("all", "'exact'"), (True, ">= 2")])
def test_bad_probes_are_refused(probes, match):
    with pytest.raises(ValueError, match=match):
        block_norms(mlp(), F.cross_entropy, data_for("mlp"), probes=probes)


def test_exact_probes_are_bounded():
    big = torch.nn.Linear(1000, 300)
    with pytest.raises(ValueError, match="give probes=K"):
        block_norms(
            big, F.cross_entropy, (torch.randn(2, 1000), torch.zeros(2).long()), probes="exact"
        )


def test_frobenius_standard_error_is_the_delta_method():
    model, data = mlp().double(), data_for("mlp")
    bn = block_norms(model, F.cross_entropy, data, probes=8, seed=0)
    nonzero = bn.frobenius > 0
    assert_close(
        bn.frobenius_se[nonzero], (bn.frobenius_sq_se / (2 * bn.frobenius))[nonzero], **EXACT
    )
    assert math.isfinite(float(bn.frobenius_se.max()))


def test_the_functional_part_is_the_hessian_minus_the_gauss_newton():
    """Ormaniec et al.'s split: ||(H - G)_st||_F exactly, and zero for a linear model."""
    model, data = tiny_gpt().double(), gpt_data()
    part = hl.Partition.by_head(model)
    bn = block_norms(model, next_token, data, part, probes="exact", curvature="functional")
    with sdpa_kernel(SDPBackend.MATH):
        C = full_derivative(model, next_token, data, 2) - full_ggn(model, next_token, data)
    trace, fro = dense_blocks(C, part)
    assert_close(bn.frobenius, fro, rtol=1e-9, atol=1e-14)
    assert_close(bn.trace, trace, rtol=1e-9, atol=1e-13)
    linear = torch.nn.Linear(3, 2).double()
    x, t = torch.randn(6, 3, dtype=F64), torch.randn(6, 2, dtype=F64)
    zero = block_norms(linear, F.mse_loss, (x, t), probes="exact", curvature="functional")
    assert float(zero.frobenius.abs().max()) < 1e-14
    with pytest.raises(ValueError, match="is a measure of block norms"):
        hl.pseudo_hessian(linear, F.mse_loss, (x, t), curvature="functional")
