"""The Gauss-Newton curvature: G_bar = U^T J^T H_l J U against dense float64 twins."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hessian_lens as hl
from hessian_lens.engine import curvature
from hessian_lens.losses import next_token
from hessian_lens.models import GPT
from hessian_lens.reference import full_derivative, full_ggn
from tests.compare import EXACT, assert_close
from tests.tiny import cnn, data_for, mlp, perturb

F64 = torch.float64


def tiny_gpt() -> nn.Module:
    torch.manual_seed(0)
    return perturb(GPT(vocab_size=7, context=4, layers=1, heads=2, width=4, mlp_ratio=2), 1, 0.3)


def gpt_data(n: int = 6):
    gen = torch.Generator().manual_seed(3)
    return torch.randint(0, 7, (n, 4), generator=gen), torch.randint(0, 7, (n, 4), generator=gen)


def pseudo(model, loss_fn, data, part, G) -> torch.Tensor:
    """``U^T G U`` with ``u`` the whole data's gradient (the dense twin)."""
    g = full_derivative(model, loss_fn, data, 1)
    u = [
        t.reshape(s)
        for t, s in zip(g.split([s.numel() for s in part.shapes]), part.shapes, strict=True)
    ]
    U = part.matrix(u)
    return U @ G @ U.T


CASES = {
    "mlp-ce": (mlp, F.cross_entropy, lambda: data_for("mlp"), hl.Partition.canonical),
    "cnn-ce": (cnn, F.cross_entropy, lambda: data_for("cnn"), hl.Partition.canonical),
    "mlp-mse": (
        mlp,
        F.mse_loss,
        lambda: (data_for("mlp")[0], torch.randn(12, 3, dtype=F64)),
        hl.Partition.canonical,
    ),
    "gpt-heads": (tiny_gpt, next_token, gpt_data, hl.Partition.by_head),
}


@pytest.mark.parametrize("name", list(CASES))
def test_ggn_equals_the_dense_float64_twin(name):
    build, loss_fn, make, scheme = CASES[name]
    model, data = build().double(), make()
    part = scheme(model)
    res = hl.pseudo_hessian(model, loss_fn, data, partition=part, curvature="ggn")
    assert_close(res.H, pseudo(model, loss_fn, data, part, full_ggn(model, loss_fn, data)), **EXACT)
    plain = hl.pseudo_hessian(model, loss_fn, data, partition=part)
    assert_close(res.g, plain.g, **EXACT)
    assert torch.linalg.eigvalsh(res.H).min() > -1e-12  # G is PSD for a convex loss


def test_ggn_does_not_depend_on_batches_or_micro_batches(monkeypatch):
    model, (x, y) = cnn().double(), data_for("cnn", n=20)
    whole = hl.pseudo_hessian(model, F.cross_entropy, (x, y), curvature="ggn")
    pieces = [(x[:7], y[:7]), (x[7:], y[7:])]
    assert_close(
        hl.pseudo_hessian(model, F.cross_entropy, pieces, curvature="ggn").H, whole.H, **EXACT
    )
    plan = hl.memory_plan(model, F.cross_entropy, (x, y), curvature="ggn")
    budget = plan.output_bytes + plan.fixed_bytes + 6.5 * plan.per_sample_bytes
    monkeypatch.setenv("HESSIAN_LENS_MAX_MEMORY_GB", repr(budget / 2**30))
    split = hl.pseudo_hessian(model, F.cross_entropy, (x, y), curvature="ggn")
    assert split.memory.micro_batch < 20
    assert_close(split.H, whole.H, **EXACT)


def test_ggn_of_a_linear_model_with_squared_error_is_the_hessian():
    """Closed form: f linear in theta, l quadratic in f, so H = J^T H_l J exactly."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2).double()
    x, t = torch.randn(9, 4, dtype=F64), torch.randn(9, 2, dtype=F64)
    part = hl.Partition.discrete(model)
    ggn = hl.pseudo_hessian(model, F.mse_loss, (x, t), partition=part, curvature="ggn")
    hess = hl.pseudo_hessian(model, F.mse_loss, (x, t), partition=part)
    assert_close(ggn.H, hess.H, **EXACT)


@pytest.mark.parametrize("loss", ["cross_entropy", "module", "partial", "next_token"])
def test_closed_form_cross_entropy_equals_autograd_on_the_outputs(loss, monkeypatch):
    """The closed form (p*z - p(p.z)) and autograd agree, ignored targets included."""
    if loss == "next_token":
        model, (x, y) = tiny_gpt().double(), gpt_data()
        y[0, :2] = -100
        fn = next_token
    else:
        model, (x, y) = mlp().double(), data_for("mlp")
        y[:3] = -100
        fn = {
            "cross_entropy": F.cross_entropy,
            "module": nn.CrossEntropyLoss(),
            "partial": functools.partial(F.cross_entropy, ignore_index=-100),
        }[loss]
    closed = hl.pseudo_hessian(model, fn, (x, y), curvature="ggn", reduction="mean")
    calls = []
    real = curvature._CrossEntropyOutputHessian.__init__
    monkeypatch.setattr(
        curvature._CrossEntropyOutputHessian,
        "__init__",
        lambda self, *a: calls.append(1) or real(self, *a),
    )
    hl.pseudo_hessian(model, fn, (x, y), curvature="ggn", reduction="mean")
    assert calls, "the closed form was not used"
    monkeypatch.setattr(curvature, "_cross_entropy_options", lambda fn: None)  # autograd
    generic = hl.pseudo_hessian(model, fn, (x, y), curvature="ggn", reduction="mean")
    assert_close(closed.H, generic.H, **EXACT)


def test_a_large_vocabulary_never_builds_a_v_by_v_matrix():
    """V = 50,000: H_l z stays (tokens, V); autograd's V x V Hessian would need 20 GB."""
    torch.manual_seed(0)
    model = nn.Embedding(50_000, 8)
    head = nn.Linear(8, 50_000, bias=False)
    net = nn.Sequential(model, head)
    x = torch.randint(0, 50_000, (2, 3))
    y = torch.randint(0, 50_000, (2, 3))
    part = hl.Partition.canonical(net)
    res = hl.pseudo_hessian(net, next_token, (x, y), partition=part, curvature="ggn")
    assert res.H.shape == (2, 2) and torch.isfinite(res.H).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"d3_diagonal": True}, "order-2 summary only"),
        ({"method": "vmap"}, "loop back end"),
        ({"curvature": "fisher"}, "curvature must be one of"),
    ],
)
def test_ggn_refusals_are_one_line(kwargs, match):
    model, data = mlp(), data_for("mlp")
    kwargs = {"curvature": "ggn", **kwargs}
    with pytest.raises(ValueError, match=match) as err:
        hl.pseudo_hessian(model, F.cross_entropy, data, **kwargs)
    assert "\n" not in str(err.value)


def test_ggn_needs_the_loss_apart_from_the_model():
    class OwnLoss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x, y):
            return F.cross_entropy(self.fc(x), y)

    x, y = data_for("mlp")
    with pytest.raises(ValueError, match="needs the loss apart from the model"):
        hl.pseudo_hessian(OwnLoss().double(), None, [((x, y), None)], curvature="ggn")
    with pytest.raises(ValueError, match="order-2 summary only"):
        hl.summary_tensor(mlp(), F.cross_entropy, data_for("mlp"), 3, curvature="ggn")
