"""Block spectra: Lanczos against dense eigvalsh, SLQ densities, and JS⁰."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import hessian_lens as hl
from hessian_lens.losses import next_token
from hessian_lens.reference import full_derivative, full_ggn
from hessian_lens.spectra import Spectrum, block_spectra, js_divergence, lanczos
from tests.test_curvature import gpt_data, tiny_gpt
from tests.tiny import cnn, data_for, mlp

F64 = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def masks(part: hl.Partition) -> torch.Tensor:
    return part.matrix([torch.ones(s, dtype=F64) for s in part.shapes]).bool()


CASES = {
    "mlp": (mlp, F.cross_entropy, lambda: data_for("mlp"), hl.Partition.canonical),
    "cnn": (cnn, F.cross_entropy, lambda: data_for("cnn"), hl.Partition.canonical),
    "gpt-heads": (tiny_gpt, next_token, gpt_data, hl.Partition.by_head),
}


@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
@pytest.mark.parametrize("name", list(CASES))
def test_lanczos_with_enough_steps_gives_every_eigenvalue(name, curvature):
    """steps >= block size: the Ritz values are eigvalsh of the dense float64 block."""
    build, loss_fn, make, scheme = CASES[name]
    model, data = build().double(), make()
    part = scheme(model)
    steps = part.numel  # every block's size and the whole model's
    sp = block_spectra(model, loss_fn, data, part, steps=steps, probes=1, curvature=curvature)
    with sdpa_kernel(SDPBackend.MATH):
        C = (
            full_ggn(model, loss_fn, data)
            if curvature == "ggn"
            else full_derivative(model, loss_fn, data, 2)
        )
    for block, m in zip(sp.blocks, masks(part), strict=True):
        want = torch.linalg.eigvalsh(C[m][:, m])
        got = block.nodes[0][: block.size]
        assert torch.allclose(got, want, rtol=0, atol=1e-8 * max(1.0, float(want.abs().max()))), (
            block.label
        )
    eig = torch.linalg.eigvalsh(C)
    assert sp.lmax == pytest.approx(float(eig.max()), abs=1e-8)
    assert sp.lmin == pytest.approx(float(eig.min()), abs=1e-8)


def test_repeated_eigenvalues_are_found_by_restarting():
    """Lanczos alone finds one copy of a repeated eigenvalue; the restart finds them all."""
    A = torch.diag(torch.tensor([0.0, 0.0, 0.0, 2.0, 2.0, 5.0], dtype=F64))
    Q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=F64, generator=torch.Generator().manual_seed(0)))
    A = Q @ A @ Q.T
    theta, tau = lanczos(lambda v: A @ v, 6, steps=6)
    assert torch.allclose(theta, torch.linalg.eigvalsh(A), atol=1e-10)
    assert float(tau.sum()) == pytest.approx(1.0)


def test_slq_trace_is_unbiased_over_probes():
    model, data = mlp().double(), data_for("mlp")
    part = hl.Partition.canonical(model)
    sp = block_spectra(model, F.cross_entropy, data, part, steps=6, probes=200, whole=False)
    C = full_derivative(model, F.cross_entropy, data, 2)
    for block, m in zip(sp.blocks, masks(part), strict=True):
        per_probe = block.size * (block.nodes * block.weights).sum(1)
        se = float(per_probe.std() / math.sqrt(per_probe.numel()))
        assert abs(block.trace() - float(C[m][:, m].trace())) <= 4 * se + 1e-12, block.label


def test_spectra_do_not_depend_on_how_the_data_are_cut():
    model, (x, y) = cnn().double(), data_for("cnn", n=20)
    whole = block_spectra(model, F.cross_entropy, (x, y), steps=5, probes=2, seed=3)
    parts = block_spectra(
        model, F.cross_entropy, [(x[:8], y[:8]), (x[8:], y[8:])], steps=5, probes=2, seed=3
    )
    for a, b in zip([*whole.blocks, whole.whole], [*parts.blocks, parts.whole], strict=True):
        assert torch.allclose(a.nodes, b.nodes, rtol=1e-9, atol=1e-12)


def test_js_divergence_conventions():
    a = Spectrum(
        "a", 2, torch.tensor([[0.0, 1.0]], dtype=F64), torch.tensor([[0.5, 0.5]], dtype=F64)
    )
    far = Spectrum(
        "b", 2, torch.tensor([[50.0, 60.0]], dtype=F64), torch.tensor([[0.5, 0.5]], dtype=F64)
    )
    scaled = Spectrum(
        "c", 2, torch.tensor([[0.0, 10.0]], dtype=F64), torch.tensor([[0.5, 0.5]], dtype=F64)
    )
    assert js_divergence([a, a]).js0 == pytest.approx(0.0, abs=1e-12)
    assert js_divergence([a, far]).js0 == pytest.approx(math.log(2), rel=1e-6)
    raw = js_divergence([a, scaled])
    assert raw.js0 == pytest.approx(math.log(2) / 2, rel=1e-6)  # half the mass (at 0) shared
    assert js_divergence([a, scaled], scale="lmax").js0 == pytest.approx(0.0, abs=1e-9)
    three = js_divergence([a, far, scaled])
    assert torch.allclose(three.matrix, three.matrix.T) and three.matrix.diagonal().abs().max() == 0
    assert three.js0 == pytest.approx(float(three.matrix.sum()) / 6)
    with pytest.raises(ValueError, match="at least two"):
        js_divergence([a])


def test_block_spectra_refuses_bad_arguments():
    with pytest.raises(ValueError, match="steps and probes"):
        block_spectra(mlp(), F.cross_entropy, data_for("mlp"), steps=0)
    sp = block_spectra(mlp(), F.cross_entropy, data_for("mlp"), steps=3, probes=1, whole=False)
    with pytest.raises(ValueError, match="whole=False"):
        _ = sp.lmax
