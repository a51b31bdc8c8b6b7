"""The Taylor view of a step: exact polynomials, true loss along the line, replay."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import hessian_lens as hl
from hessian_lens.taylor import (
    first_update_view,
    group_direction,
    loss_along,
    step_direction,
    taylor_view,
)
from tests.apptools import make_run
from tests.tiny import data_for, mlp


def test_a_quadratic_loss_is_its_own_order_2_polynomial():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2).double()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    v = [torch.randn_like(p) for p in net.parameters()]
    view = taylor_view(net, F.mse_loss, (x, y), v, ts=[-1.0, 0.0, 0.5, 2.0], max_order=4)
    assert view.loss == pytest.approx(view.polynomials[1], rel=1e-12, abs=1e-12)
    assert view.terms[2] == pytest.approx(0.0, abs=1e-12) and view.terms[3] == pytest.approx(
        0.0, abs=1e-12
    )
    assert view.polynomials[0] != pytest.approx(view.loss)  # order 1 misses the curvature


def test_polynomials_are_sums_of_the_exact_terms_and_converge_for_small_steps():
    model = mlp()
    x, y = data_for("mlp")
    part = hl.Partition.canonical(model)
    g = torch.autograd.grad(F.cross_entropy(model(x), y), part.parameters(model))
    eta = torch.linspace(0.1, 0.4, len(part), dtype=torch.float64)
    v = step_direction(model, part, g, eta, lr=0.5)
    ts = [0.0, 0.01, 0.1]
    view = taylor_view(model, F.cross_entropy, (x, y), v, ts=ts, max_order=4)
    for k in range(4):
        for t, value in zip(ts, view.polynomials[k], strict=True):
            expected = view.loss0 + sum(
                t**d / math.factorial(d) * view.terms[d - 1] for d in range(1, k + 2)
            )
            assert value == pytest.approx(expected, rel=1e-12)
    err = [abs(view.loss[1] - view.polynomials[k][1]) for k in range(4)]
    assert err[3] < err[1] < err[0]  # higher orders approach the true loss at small t
    moved = {n: p + 0.1 * d for (n, p), d in zip(model.named_parameters(), v, strict=True)}
    direct = float(F.cross_entropy(torch.func.functional_call(model, moved, (x,)), y))
    assert view.loss[2] == pytest.approx(direct, rel=1e-12)
    sums = hl.summary_tensor(model, F.cross_entropy, (x, y), 2, direction=v).sum()
    assert view.terms[1] == pytest.approx(float(sums), rel=1e-9)


def test_a_group_direction_moves_only_that_group():
    model = mlp()
    part = hl.Partition.canonical(model)
    u = [torch.ones_like(p) for p in part.parameters(model)]
    v = group_direction(model, part, u, group=2, rate=0.5)
    assert [float(t.abs().sum()) > 0 for t in v] == [i == 2 for i in range(len(part))]
    assert loss_along(model, F.cross_entropy, data_for("mlp"), v, [0.0])[0] == pytest.approx(
        float(F.cross_entropy(model(data_for("mlp")[0]), data_for("mlp")[1]))
    )


def test_replay_finds_the_first_update_of_a_partition_newton_run(tmp_path, tiny_npz):
    from hessian_lens.train import replay_first_update

    run = make_run(
        tmp_path / "pn",
        tiny_npz,
        epochs=1,
        batch_size=16,
        optimizer="partition-newton",
        lr=0.3,
        optimizer_kwargs={"period": 2, "average": 2},
    )
    r = replay_first_update(run)
    assert r["step"] == 2  # warm-up: recomputations at steps 0 and 2, the update at step 2
    assert r["eta"] is not None and len(r["eta"]) == 10
    start, _ = hl.load_checkpoint(run / "epoch_0000.pt")
    for (name, p), (_, q) in zip(
        r["model"].named_parameters(), start.named_parameters(), strict=True
    ):
        assert torch.equal(p, q), name  # the model is at the weights before the update
    assert any(float(d.abs().max()) > 0 for d in r["direction"].values())
    two = replay_first_update(run, updates=2)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(two["direction"].values(), r["direction"].values(), strict=True)
    )
    view = first_update_view(run, ts=[0.0, 1.0])
    assert view.step == 2 and view.eta == pytest.approx([float(e) for e in r["eta"]])
    assert view.labels == hl.Partition.canonical(r["model"]).labels
    moved = {n: p + r["direction"][n] for n, p in start.named_parameters()}
    x, y = r["batch"]
    with torch.no_grad():
        after = F.cross_entropy(torch.func.functional_call(start.eval(), moved, (x,)), y)
    assert view.view.loss[1] == pytest.approx(float(after), rel=1e-5)  # t = 1: the step taken
    assert view.view.loss0 == view.view.loss[0]
