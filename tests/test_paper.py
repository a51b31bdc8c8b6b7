"""The paper's claims as numbers: measures on constructed matrices with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from hessian_lens import paper


def record(H, n_layers):
    """A record of a canonical partition (weight, bias per layer) with ``Hinv = inv(H)``."""
    return {
        "summary": {
            "labels": [f"l{i}.{k}" for i in range(n_layers) for k in ("weight", "bias")],
            "kinds": ["weight", "bias"] * n_layers,
            "layers": [f"l{i}" for i in range(n_layers) for _ in range(2)],
        },
        "arrays": {"H": H, "Hinv": np.linalg.inv(H)},
    }


def test_a_block_diagonal_matrix_is_not_rough():
    rng = np.random.default_rng(0)
    H = np.zeros((6, 6))
    for i in range(3):
        A = rng.normal(size=(2, 2))
        H[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = A @ A.T + np.eye(2)
    rows = paper.figure_claims({"1": record(H, 3)}, {})
    assert rows[0].raw == 0.0 and rows[0].verdict == "does not hold"
    assert rows[1].verdict == "does not hold"  # H⁻¹ is as block-diagonal as H: not better


def test_rough_h_measured_exactly():
    H = np.eye(6)
    H[0, 4] = H[4, 0] = 1.5  # weights of layers 0 and 2 coupled
    rows = paper.figure_claims({"21": record(H, 3)}, {})
    assert rows[0].raw == pytest.approx(3.0 / 9.0) and rows[0].verdict == "holds"
    # inverse of [[1, 1.5], [1.5, 1]] is [[-0.8, 1.2], [1.2, -0.8]]: 2.4 of 8 outside
    assert rows[1].raw == pytest.approx(2.4 / 8.0)
    assert rows[1].normalized == pytest.approx(3.0 / 9.0)  # 1.2 / 0.8 = 1.5 once normalised
    assert rows[1].verdict == "depends on the scale"


def test_last_five_layers_weights_and_long_distance():
    n = 7
    S = 2 * n
    H = np.eye(S)
    w = [2 * i for i in range(n)]
    tail = w[-5:]
    for a in tail:
        for b in tail:
            if a != b:
                H[a, b] = 0.3  # weights of the last five layers coupled, first-to-last too
    rec = {"summary": record(H, n)["summary"], "arrays": {"H": H, "Hinv": H}}
    assert paper.last_block_strength(rec, "Hinv", "raw") == float("inf")  # zero elsewhere
    five = {"summary": record(np.eye(10), 5)["summary"], "arrays": {"Hinv": np.eye(10)}}
    assert np.isnan(paper.last_block_strength(five, "Hinv", "raw"))  # no layer elsewhere
    H2 = H.copy()
    H2[w[0], w[1]] = H2[w[1], w[0]] = 0.05
    rec2 = {"summary": rec["summary"], "arrays": {"H": H2, "Hinv": H2}}
    # 20 ordered pairs inside the last five, 22 others (two of them 0.05)
    assert paper.last_block_strength(rec2, "Hinv", "raw") == pytest.approx(0.3 / (0.1 / 22))
    assert paper.weights_dominate(rec2, "Hinv", "raw") == float("inf")  # no bias coupling
    assert paper.long_distance(rec2, "Hinv", "raw") == pytest.approx(1.0)
    rows = paper.figure_claims({}, {"6": rec2})
    assert [r.verdict for r in rows] == ["holds", "holds", "holds", "holds"]
    top = paper.strongest_long_range(rec2, "Hinv", "raw", min_distance=2, top=2)
    assert {abs(v) for _, _, v in top} == {0.3}


def test_scale_dependent_verdicts():
    H = np.diag([1e4, 1.0, 1e4, 1.0])
    H[1, 3] = H[3, 1] = 0.9  # small raw values, a strong coupling once normalised
    rec = record(H, 2)
    raw = paper.off_block_share(paper.on_scale(H, "raw"), paper.layer_blocks(rec["summary"]))
    norm = paper.off_block_share(
        paper.on_scale(H, "normalized"), paper.layer_blocks(rec["summary"])
    )
    assert raw == pytest.approx(1.8 / 20003.8) and norm == pytest.approx(1.8 / 5.8)
    assert paper.figure_claims({"1": rec}, {})[0].verdict == "depends on the scale"


def test_abs_inverse_is_saddle_free_in_h_own_eigenbasis_not_the_stored_inverse():
    import torch

    from hessian_lens import linalg

    A = np.array([[2.0, 1.5, 0.0], [1.5, 1.0, 0.3], [0.0, 0.3, -0.5]])  # indefinite
    H = np.diag([1.0, 2.0, 0.5]) @ A @ np.diag([1.0, 2.0, 0.5])
    lam, V = np.linalg.eigh(H)
    assert (lam < 0).any()
    np.testing.assert_allclose(paper.abs_inverse(H), V @ np.diag(1 / np.abs(lam)) @ V.T)
    stored = linalg.inverse(torch.tensor(H)).inv.numpy()  # S |C|⁻¹ S
    N = paper.normalized
    assert np.abs(N(stored) - N(paper.abs_inverse(H))).max() > 0.01  # two different matrices
    # rescaling the groups: the stored inverse follows (its normalised form is unchanged),
    # |H|⁻¹ does not
    E = np.diag([5.0, 0.2, 3.0])
    rescaled = linalg.inverse(torch.tensor(E @ H @ E)).inv.numpy()
    np.testing.assert_allclose(N(rescaled), N(stored), atol=1e-12)
    assert np.abs(N(paper.abs_inverse(E @ H @ E)) - N(paper.abs_inverse(H))).max() > 0.01
    P = A @ A.T + np.eye(3)  # positive definite: both are the inverse
    np.testing.assert_allclose(paper.abs_inverse(P), np.linalg.inv(P), rtol=1e-10)


def test_long_range_averages_every_far_pair_of_the_last_layers():
    n = 6
    S = 2 * n
    H = np.eye(S)
    w = [2 * i for i in range(n)]
    tail = w[-5:]
    for i, a in enumerate(tail):
        for j, b in enumerate(tail):
            if a != b:
                H[a, b] = 0.4 if abs(i - j) == 1 else 0.1  # neighbours 0.4, far pairs 0.1
    H[w[0], w[2]] = H[w[2], w[0]] = 9.0  # outside the last five: not counted
    rec = {"summary": record(H, n)["summary"], "arrays": {"Hinv": H}}
    assert paper.long_range(rec, "Hinv", "raw") == pytest.approx(0.1 / 0.4)
    H[tail[0], tail[4]] = H[tail[4], tail[0]] = 2.1  # one far pair: the single-pair measure jumps
    assert paper.long_distance(rec, "Hinv", "raw") == pytest.approx(2.1 / 0.4)
    assert paper.long_range(rec, "Hinv", "raw") == pytest.approx((5 * 0.1 + 2.1) / 6 / 0.4)
    two = {"summary": record(np.eye(4), 2)["summary"], "arrays": {"Hinv": np.eye(4)}}
    assert np.isnan(paper.long_range(two, "Hinv", "raw"))  # no pair two layers apart


def test_kind_means_by_kind_pair():
    n = 3
    H = np.eye(2 * n)
    H[0, 2] = H[2, 0] = 0.5  # weights of layers 0 and 1
    H[1, 3] = H[3, 1] = 4.0  # biases of layers 0 and 1
    H[0, 5] = H[5, 0] = 2.0  # weight of layer 0, bias of layer 2
    rec = {"summary": record(H, n)["summary"], "arrays": {"Hinv": H}}
    means = paper.kind_means(rec, "Hinv", "raw")
    assert means == pytest.approx({"WW": 2 * 0.5 / 6, "BB": 2 * 4.0 / 6, "WB": 2.0 / 6})
    assert paper.weights_dominate(rec, "Hinv", "raw") == pytest.approx((1 / 6) / (8 / 6))
