"""PartitionNewton: closed forms (Cauchy, Newton), invariance, the cubic solver, state."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hessian_lens as hl
from hessian_lens.optim import PartitionNewton, StepError, partition_newton_step, solve_rates
from hessian_lens.reference import full_derivative
from tests.compare import EXACT, assert_close
from tests.tiny import data_for, mlp

F64 = torch.float64


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_trivial_partition_is_cauchy_steepest_descent():
    model, data = mlp(), data_for("mlp")
    g = full_derivative(model, F.cross_entropy, data, 1)
    H = full_derivative(model, F.cross_entropy, data, 2)
    assert float(g @ H @ g) > 0
    cauchy = float(g @ g / (g @ H @ g))
    eta, _info = partition_newton_step(
        model, F.cross_entropy, data, hl.Partition.trivial(model), regularization="none"
    )
    assert float(eta[0]) == pytest.approx(cauchy, rel=1e-10)
    before = flat(model)
    opt = PartitionNewton(
        [{"params": list(model.parameters())}],
        lr=1.0,
        direction="gradient",
        regularization="none",
        period=1,
        average=1,
        clip_negative=False,
    )
    opt.step(lambda: F.cross_entropy(model.eval()(data[0]), data[1]))
    assert_close(flat(model), before - cauchy * g, **EXACT)


def logistic():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(40, 3, generator=gen, dtype=F64)
    y = (X[:, 0] - X[:, 1] + 0.5 * torch.randn(40, generator=gen, dtype=F64) > 0).to(F64)
    model = nn.Linear(3, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.3, -0.2, 0.1]]))

    def loss_fn(out, target):
        reg = 0.05 * sum((p**2).sum() for p in model.parameters())
        return F.binary_cross_entropy_with_logits(out.reshape(-1), target) + reg

    return model, loss_fn, (X, y)


def test_discrete_partition_is_newtons_step():
    model, loss_fn, data = logistic()
    g = full_derivative(model, loss_fn, data, 1)
    H = full_derivative(model, loss_fn, data, 2)
    eta, _ = partition_newton_step(
        model, loss_fn, data, hl.Partition.discrete(model), regularization="none"
    )
    assert_close(eta * g, torch.linalg.solve(H, g), **EXACT)  # theta - H^-1 g


class Rescaled(nn.Module):
    """tanh MLP whose tensors are ``scale * parameter`` (an equivalent reparameterisation)."""

    def __init__(self, base: nn.Sequential, scales: list[float]) -> None:
        super().__init__()
        self.scales = scales
        self.p = nn.ParameterList(
            [
                nn.Parameter(t.detach().clone() / a)
                for t, a in zip(base.parameters(), scales, strict=True)
            ]
        )

    def forward(self, x):
        w1, b1, w2, b2, w3, b3 = (a * p for a, p in zip(self.scales, self.p, strict=True))
        x = torch.tanh(F.linear(x, w1, b1))
        x = torch.tanh(F.linear(x, w2, b2))
        return F.linear(x, w3, b3)


@pytest.mark.parametrize("regularization", ["cubic", "diag"])
@pytest.mark.parametrize("direction", ["momentum", "gradient"])
def test_trajectory_is_invariant_under_layer_rescaling(regularization, direction):
    base = mlp()
    scales = [10.0, 0.1, 1.0, 3.0, 0.02, 1.0]
    other = Rescaled(copy.deepcopy(base), scales)
    x, y = data_for("mlp", n=20)
    kwargs = dict(
        lr=0.5,
        direction=direction,
        regularization=regularization,
        period=2,
        average=2,
        lambda_int=1.0,
        eps=1.0,
    )
    opt_a = PartitionNewton(base.parameters(), **kwargs)
    opt_b = PartitionNewton(other.parameters(), **kwargs)
    for _ in range(12):
        la = opt_a.step(lambda: F.cross_entropy(base(x), y))
        lb = opt_b.step(lambda: F.cross_entropy(other(x), y))
        assert float(la) == pytest.approx(float(lb), rel=1e-9)
    for p, q, a in zip(base.parameters(), other.p, scales, strict=True):
        assert_close(p, a * q, rtol=1e-8, atol=1e-10)
    assert opt_a.eta is not None and float(opt_a.eta.abs().sum()) > 0


def cubic_residual(H, g, d3, eta, lam):
    D = torch.diag(d3.abs() ** (1 / 3))
    r = float((D @ eta).norm())
    M = H + 0.5 * lam * r * D @ D
    return float((M @ eta - g).norm()), float(torch.linalg.eigvalsh(M).min())


@pytest.mark.parametrize("shift", [2.0, -0.5, -3.0])
def test_cubic_solution_satisfies_its_equation(shift):
    gen = torch.Generator().manual_seed(int(10 * shift) + 40)
    A = torch.randn(6, 6, generator=gen, dtype=F64)
    H = A @ A.T / 6 + shift * torch.eye(6, dtype=F64)  # shift < 0: indefinite H
    g = torch.randn(6, generator=gen, dtype=F64)
    d3 = torch.randn(6, generator=gen, dtype=F64) * torch.logspace(-2, 2, 6, dtype=F64)
    for lam in (0.1, 1.0, 10.0):
        sol = solve_rates(H, g, d3, "cubic", lambda_int=lam)
        residual, smallest = cubic_residual(H, g, d3, sol.eta, lam)
        assert residual <= 1e-9 * float(g.norm())
        assert smallest >= -1e-10  # the largest root: the matrix is positive (semi)definite
        assert sol.r == pytest.approx(float((d3.abs() ** (1 / 3) * sol.eta).norm()), rel=1e-9)
        assert sol.acted


def test_cubic_degenerate_cases():
    H = torch.diag(torch.tensor([2.0, -1.0], dtype=F64))
    g = torch.tensor([1.0, 1.0], dtype=F64)
    with pytest.raises(StepError, match="lambda_int = 0"):
        solve_rates(H, g, torch.ones(2), "cubic", lambda_int=0.0)
    with pytest.raises(StepError, match="diagonal of D\\^\\(3\\) is zero"):
        solve_rates(H, g, torch.zeros(2), "cubic")
    pd = torch.diag(torch.tensor([2.0, 4.0], dtype=F64))
    sol = solve_rates(pd, g, torch.zeros(2), "cubic")
    assert_close(sol.eta, torch.tensor([0.5, 0.25], dtype=F64), **EXACT)
    assert not sol.acted
    sol = solve_rates(H, g, torch.tensor([0.0, 1.0]), "cubic")  # zero d3 on a PD group
    residual, smallest = cubic_residual(H, g, torch.tensor([0.0, 1.0], dtype=F64), sol.eta, 1)
    assert residual < 1e-9 and smallest >= -1e-10
    with pytest.raises(StepError, match=r"groups \[1\] have D\^\(3\)\[s,s,s\] = 0"):
        solve_rates(H, g, torch.tensor([1.0, 0.0]), "cubic")
    with pytest.raises(StepError, match="singular"):
        solve_rates(torch.zeros(2, 2), g, regularization="none")
    with pytest.raises(ValueError, match="needs the diagonal"):
        solve_rates(pd, g, None, "diag")
    diag = solve_rates(H, g, torch.tensor([8.0, 27.0]), "diag", eps=1.0)
    expected = torch.linalg.solve(H + torch.diag(torch.tensor([4.0, 9.0], dtype=F64)), g)
    assert_close(diag.eta, expected, **EXACT)


def test_functional_step_reports_diagnostics():
    model, data = mlp(), data_for("mlp")
    eta, info = partition_newton_step(model, F.cross_entropy, data)
    assert eta.shape == (6,) and info["regularization"] == "cubic"
    assert info["d3"].shape == (6,) and info["H"].shape == (6, 6)
    residual, _ = cubic_residual(info["H"], info["g"], info["d3"], eta, 1.0)
    assert residual < 1e-8


def run_steps(model, opt, x, y, n):
    return [float(opt.step(lambda: F.cross_entropy(model(x), y))) for _ in range(n)]


def test_state_dict_round_trip_resumes_the_same_trajectory():
    model = mlp()
    x, y = data_for("mlp", n=20)
    opt = PartitionNewton(model.parameters(), lr=0.3, period=3, average=2)
    run_steps(model, opt, x, y, 7)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    straight = run_steps(model, opt, x, y, 8)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    clone = mlp()
    clone.load_state_dict(saved["model"])
    resumed_opt = PartitionNewton(clone.parameters(), lr=0.3, period=3, average=2)
    resumed_opt.load_state_dict(saved["opt"])
    resumed = run_steps(clone, resumed_opt, x, y, 8)
    assert resumed == pytest.approx(straight, rel=1e-12)
    assert torch.equal(flat(clone), flat(model))


def test_strongly_convex_quadratic_converges_like_newton():
    gen = torch.Generator().manual_seed(1)
    blocks = [torch.randn(5, 5, generator=gen, dtype=F64) for _ in range(4)]
    scales = [1e-3, 1.0, 30.0, 1e3]
    A = torch.block_diag(
        *[a * (b @ b.T / 5 + torch.eye(5, dtype=F64)) for a, b in zip(scales, blocks, strict=True)]
    )
    C = torch.randn(20, 20, generator=gen, dtype=F64)
    S = torch.diag(torch.tensor(scales, dtype=F64).repeat_interleave(5).sqrt())
    A = A + 0.2 * S @ (C @ C.T / 20) @ S  # couple the groups, keep their scales
    b = torch.randn(20, generator=gen, dtype=F64)
    best = float(-0.5 * b @ torch.linalg.solve(A, b))
    params = [nn.Parameter(torch.zeros(5, dtype=F64)) for _ in range(4)]

    def loss():
        theta = torch.cat(list(params))
        return 0.5 * theta @ A @ theta - b @ theta

    opt = PartitionNewton(
        params, lr=1.0, direction="gradient", period=1, average=1, clip_negative=False
    )
    gaps = [float(opt.step(loss)) - best for _ in range(40)]
    assert gaps[-1] < 1e-10 * gaps[0]
    steps = next(i for i, gap in enumerate(gaps) if gap < 1e-8 * gaps[0])
    assert steps <= 30
    # gradient descent with its best fixed rate, 1/L, is hopeless on cond(A) ~ 1e6
    theta = torch.zeros(20, dtype=F64)
    L = float(torch.linalg.eigvalsh(A).max())
    for _ in range(200):
        theta -= (A @ theta - b) / L
    assert float(0.5 * theta @ A @ theta - b @ theta) - best > 1e-3 * gaps[0]


def test_param_groups_labels_warmup_scheduler_and_adam():
    model = mlp()
    x, y = data_for("mlp", n=20)
    groups = [
        {"params": [model[0].weight, model[0].bias], "name": "first"},
        {"params": list(model[2].parameters()) + list(model[4].parameters()), "name": "rest"},
    ]
    opt = PartitionNewton(groups, lr=0.3, period=2, average=3)
    assert opt.partition.labels == ["first", "rest"]
    before = flat(model)
    run_steps(model, opt, x, y, 4)  # recomputations at steps 0 and 2: still warming up
    assert torch.equal(flat(model), before) and opt.eta is None
    run_steps(model, opt, x, y, 1)
    assert opt.eta.shape == (2,) and not torch.equal(flat(model), before)
    assert next(e for e in opt.log if e.get("eta"))["step"] == 4
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
    sched.step(1.0)
    sched.step(2.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.15)
    adam_model = mlp()
    adam = PartitionNewton(adam_model.parameters(), lr=0.3, direction="adam", period=1, average=1)
    losses = run_steps(adam_model, adam, x, y, 15)
    assert losses[-1] < losses[0]


def test_separate_curvature_batch_and_misuse():
    model = mlp()
    x, y = data_for("mlp", n=20)
    cx, cy = data_for("mlp", n=10, seed=5)
    opt = PartitionNewton(model.parameters(), period=1, average=1)
    opt.step(lambda: F.cross_entropy(model(x), y), lambda: F.cross_entropy(model(cx), cy))
    assert opt.eta is not None

    def backward_closure():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="without calling backward"):
        opt.step(backward_closure)
    for bad, match in (
        (dict(direction="newton"), "direction"),
        (dict(regularization="l2"), "regularization"),
        (dict(period=0), "period"),
    ):
        with pytest.raises(ValueError, match=match):
            PartitionNewton(model.parameters(), **bad)


def test_damping_and_gauss_newton_in_the_step():
    """damping= solves with H_bar + lambda diag(||U^s||^2); the GGN needs regularization='none'."""
    from hessian_lens import linalg

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)
    ).double()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randint(0, 2, (16,))
    eta, info = hl.partition_newton_step(
        net, F.cross_entropy, (x, y), regularization="none", damping=0.5
    )
    norms_sq = torch.stack([(u * u).sum() for u in info["direction"]])
    want = torch.linalg.solve(linalg.damped(info["H"], 0.5, norms_sq), info["g"])
    assert torch.allclose(eta, want, rtol=1e-9)
    ggn, ginfo = hl.partition_newton_step(
        net, F.cross_entropy, (x, y), regularization="none", damping=0.5, curvature="ggn"
    )
    G = hl.pseudo_hessian(net, F.cross_entropy, (x, y), curvature="ggn").H
    assert torch.allclose(ginfo["H"], G) and not torch.allclose(ggn, eta)
    with pytest.raises(ValueError, match="has no D\\^\\(3\\)"):
        hl.partition_newton_step(net, F.cross_entropy, (x, y), curvature="ggn")
