"""Normalisation, regularised inverse and block-diagonal comparisons."""

from __future__ import annotations

import pytest
import torch

from hessian_lens import linalg

F64 = torch.float64


def random_spd(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=gen, dtype=F64)
    return A @ A.T + 0.5 * torch.eye(n, dtype=F64)


def rescale(n: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.diag(torch.exp(3 * torch.randn(n, generator=gen, dtype=F64)))


def test_normalize_is_rescaling_invariant_with_unit_diagonal():
    H = random_spd(6)
    D = rescale(6)
    assert torch.allclose(linalg.normalize(D @ H @ D), linalg.normalize(H))
    assert torch.allclose(linalg.normalize(H).diagonal().abs(), torch.ones(6, dtype=F64))
    Z = H.clone()
    Z[2, :] = Z[:, 2] = 0
    assert torch.isfinite(linalg.normalize(Z)).all()


def test_exact_inverse_for_positive_definite():
    H = random_spd(5)
    res = linalg.inverse(H)
    assert res.status == "exact" and res.n_negative == res.n_floored == 0
    assert torch.allclose(res.inv, torch.linalg.inv(H))
    lam = torch.linalg.eigvalsh(H)
    assert res.condition == pytest.approx(float(lam.max() / lam.min()))


@pytest.mark.parametrize("kind", ["spd", "singular", "indefinite"])
def test_inverse_is_rescaling_covariant(kind):
    H = random_spd(5)
    if kind == "singular":  # rank 3
        A = torch.randn(5, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
        H = A @ A.T
    if kind == "indefinite":
        H = H - 3.0 * torch.eye(5, dtype=F64)
    D = rescale(5)
    a, b = linalg.inverse(H), linalg.inverse(D @ H @ D)
    assert a.status == b.status
    Dinv = torch.linalg.inv(D)
    assert torch.allclose(
        b.inv, Dinv @ a.inv @ Dinv, rtol=1e-6, atol=1e-9 * float(b.inv.abs().max())
    )


def test_singular_and_indefinite_are_reported_and_finite():
    v = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    rank_one = torch.outer(v, v)
    res = linalg.inverse(rank_one)
    assert res.status == "singular" and res.n_floored == 2
    assert res.condition > 1e12
    assert torch.isfinite(res.inv).all()
    ind = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=F64)  # eigenvalues 3, -1
    res = linalg.inverse(ind)
    assert res.status == "indefinite" and res.n_negative == 1
    assert (torch.linalg.eigvalsh(res.inv) > 0).all()  # saddle-free |H|^-1


def test_block_inverse_and_exact_block_diagonal_matrix():
    A, B = random_spd(2, 1), random_spd(3, 2)
    H = torch.block_diag(A, B)
    blocks = [[0, 1], [2, 3, 4]]
    assert torch.allclose(linalg.block_inverse(H, blocks), torch.linalg.inv(H))
    m = linalg.compare_block_diagonal(H, torch.ones(5, dtype=F64), blocks)
    assert m["rel_error"] == pytest.approx(0.0, abs=1e-12)
    assert m["off_share_H"] == 0.0 and m["cos_eta"] == pytest.approx(1.0)
    assert m["decrease_full"] == pytest.approx(m["decrease_bd"])


def test_full_newton_decrease_is_the_best_of_the_quadratic_model():
    for seed in range(5):
        H = random_spd(6, seed)
        g = torch.randn(6, generator=torch.Generator().manual_seed(seed), dtype=F64)
        m = linalg.compare_block_diagonal(H, g, [[0, 1], [2, 3], [4, 5]])
        assert m["decrease_full"] == pytest.approx(0.5 * float(g @ torch.linalg.solve(H, g)))
        assert m["decrease_full"] >= m["decrease_bd"] - 1e-12
        assert 0 < m["off_share_H"] < 1 and m["rel_error"] > 0
        assert -1 <= m["cos_eta"] <= 1


def test_off_block_share_by_hand():
    M = torch.tensor([[1.0, 2.0], [2.0, 5.0]], dtype=F64)
    assert linalg.off_block_share(M, [[0], [1]]) == pytest.approx(4 / 10)
    assert linalg.off_block_share(M, [[0, 1]]) == 0.0
    with pytest.raises(ValueError, match="cover"):
        linalg.block_mask(3, [[0, 1]])
