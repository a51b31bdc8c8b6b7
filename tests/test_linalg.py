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


def test_group_curvature_is_the_rayleigh_quotient_along_each_groups_gradient():
    """H_ss / g_s from the engine = v_s^T H v_s / |v_s|^2 with v_s the gradient on group s."""
    import hessian_lens as hl
    from hessian_lens.heads import block_of, head_of
    from hessian_lens.losses import next_token
    from tests.test_heads import attention_for_derivatives, brute_force, data, tiny_gpt

    model = tiny_gpt()
    part = hl.Partition.by_head(model)
    with attention_for_derivatives():
        res = hl.pseudo_hessian(model, next_token, data("gpt"), partition=part, method="loop")
    grad, hess = brute_force("gpt")
    masks = part.matrix([torch.ones_like(p) for p in part.parameters(model)])
    v = masks * grad  # row s: the gradient restricted to group s
    rayleigh = ((v @ hess) * v).sum(1) / (v * v).sum(1)
    c = linalg.group_curvature(res.H, res.g)
    assert torch.allclose(c, rayleigh, rtol=1e-9, atol=0)
    summary = linalg.heterogeneity(
        res.H, res.g, [block_of(x) for x in part.labels], [head_of(x) for x in part.labels]
    )
    assert {b: s["count"] for b, s in summary["by_block"].items()} == {
        "embedding": 2,
        "norm": 6,
        "q": 2,
        "k": 2,
        "v": 2,
        "o": 3,  # two heads' columns and the output projection's bias
        "mlp": 4,
    }
    q = [c[s] for s, x in enumerate(part.labels) if block_of(x) == "q"]
    assert summary["by_block"]["q"]["max"] == pytest.approx(float(max(q)), rel=1e-12)
    assert sorted(summary["by_head"]) == [0, 1] and summary["by_head"][0]["count"] == 4
    assert summary["overall"]["between_blocks_log10_std"] > 0


def test_heterogeneity_refuses_what_it_cannot_vouch_for():
    H = torch.eye(3, dtype=F64)
    with pytest.raises(ValueError, match="only when the direction is the gradient"):
        linalg.group_curvature(H, torch.tensor([1.0, -1.0, 1.0], dtype=F64))
    with pytest.raises(ValueError, match="one entry per group"):
        linalg.heterogeneity(H, torch.ones(3, dtype=F64), ["q", "k"])
    c = linalg.group_curvature(H, torch.tensor([1.0, 0.0, 4.0], dtype=F64))
    assert c[0] == 1 and torch.isnan(c[1]) and c[2] == 0.25
    same = linalg.heterogeneity(4 * H, torch.full((3,), 2.0, dtype=F64), ["a", "b", "c"])
    assert same["overall"]["log10_std"] == 0 and same["overall"]["between_blocks_log10_std"] == 0


def test_damping_h_bar_is_the_pseudo_hessian_of_the_damped_hessian():
    """U^T (H + lambda I) U = H_bar + lambda diag(||U^s||^2), against the dense twin."""
    import torch.nn.functional as F

    import hessian_lens as hl
    from hessian_lens.reference import full_derivative
    from tests.tiny import data_for, mlp

    model, data = mlp().double(), data_for("mlp")
    res = hl.pseudo_hessian(model, F.cross_entropy, data)
    U = res.partition.matrix(res.direction)
    H = full_derivative(model, F.cross_entropy, data, 2)
    lam = 0.37
    want = U @ (H + lam * torch.eye(H.shape[0], dtype=H.dtype)) @ U.T
    norms_sq = res.partition.reduce([u * u for u in res.direction], range(len(res.direction)))
    got = linalg.damped(res.H, lam, norms_sq)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-14)
    assert linalg.damped(res.H, 0.0) is res.H
    with pytest.raises(ValueError, match="damping must be"):
        linalg.damped(res.H, -1.0)
    m = linalg.compare_block_diagonal(
        res.H, res.g, res.partition.blocks("layer"), damping=lam, norms_sq=norms_sq
    )
    assert torch.allclose(m["eta_full"], linalg.inverse(want).inv @ res.g.double(), rtol=1e-8)
