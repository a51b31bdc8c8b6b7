"""The Optimizer page through AppTest: runs side by side, per-group rates, the Taylor view."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.func import functional_call

import hessian_lens as hl
from hessian_lens.losses import get_loss
from hessian_lens.registry import build_model
from hessian_lens.train import replay_first_update
from tests.apptools import (
    axis_values,
    chart,
    heatmap_z,
    make_pn_run,
    no_errors,
    open_page,
)

OPTIMIZER = "views/Optimizer.py"


@pytest.fixture(scope="module")
def pn_runs(app_run, tmp_path_factory):
    """A tiny PartitionNewton run (rates every step) and copies with broken logs."""
    _, npz = app_run
    root = tmp_path_factory.mktemp("pn")
    make_pn_run(root / "pn-run", npz)
    log = json.loads((root / "pn-run" / "optimizer_log.json").read_text())
    for name, text in (
        ("pn-not-json", "{oops"),
        ("pn-no-entries", json.dumps({"labels": log["labels"], "entries": "none"})),
        (
            "pn-some-bad",
            json.dumps({**log, "entries": [*log["entries"], {"loss": 1.0}, "junk", {"step": "x"}]}),
        ),
    ):
        folder = root / name
        folder.mkdir()
        manifest = json.loads((root / "pn-run" / "run.json").read_text())
        (folder / "run.json").write_text(json.dumps({**manifest, "name": name}))
        (folder / "optimizer_log.json").write_text(text)
    return root


@pytest.fixture
def pn_env(app_env, pn_runs, monkeypatch):
    run, _ = app_env
    monkeypatch.setenv("HESSIAN_LENS_RUNS", f"{run.parent},{pn_runs}")
    return pn_runs


def test_rates_heatmap_holds_every_recomputed_rate(pn_env):
    at = open_page(OPTIMIZER)
    no_errors(at)
    at.selectbox(key="optim-pn").set_value("pn-run").run()
    no_errors(at)
    rates = chart(at, "optim-rates")
    log = json.loads((pn_env / "pn-run" / "optimizer_log.json").read_text())
    labels = hl.Partition.canonical(build_model("lenet5")).labels
    assert log["labels"] == labels and rates["layout"]["yaxis"]["ticktext"] == labels
    updates = [e for e in log["entries"] if e.get("eta") is not None]
    lr_at = {e["step"]: e["lr"] for e in log["entries"] if isinstance(e.get("lr"), list)}
    assert len(updates) >= 3
    assert axis_values(rates["data"][0]["x"]) == [e["step"] for e in updates]
    want = np.array(
        [[lr_at[e["step"]][s] * e["eta"][s] for e in updates] for s in range(len(labels))]
    )
    z = heatmap_z(rates)
    np.testing.assert_allclose(z[want > 0], np.log10(want[want > 0]))
    assert np.isnan(z[want <= 0]).all()  # clipped rates are blanks (and crosses), never small
    steps = chart(at, "optim-steps")
    losses = [e["loss"] for e in log["entries"] if "loss" in e]
    assert steps["data"][0]["y"][0] == pytest.approx(losses[0])
    assert steps["data"][0]["y"][-1] == pytest.approx(np.mean(losses[-50:]))


def test_runs_side_by_side_and_a_run_without_partition_newton(pn_env):
    at = open_page(OPTIMIZER)
    at.multiselect(key="optim-runs").set_value(["tiny-run", "pn-run"]).run()
    no_errors(at)
    loss = chart(at, "optim-train_loss")
    assert [t["name"] for t in loss["data"]] == [
        "tiny-run (sgd, lr 0.05)",
        "pn-run (partition-newton, lr 0.3)",
    ]
    history = json.loads((pn_env / "pn-run" / "run.json").read_text())["history"]
    assert loss["data"][1]["y"] == [h["train_loss"] for h in history]
    at.multiselect(key="optim-runs").set_value(["tiny-run"]).run()
    no_errors(at)  # the rates section offers every PartitionNewton run, compared or not
    assert "pn-run" in at.selectbox(key="optim-pn").options


def test_no_partition_newton_run_says_how_to_train_one(app_env, tmp_path, monkeypatch):
    from hessian_lens.ui import common

    monkeypatch.setattr(common, "REPO_RUNS", tmp_path)  # not the shipped runs
    at = open_page(OPTIMIZER)
    no_errors(at)
    assert any("No run used PartitionNewton" in i.value for i in at.info)


@pytest.mark.parametrize(
    ("name", "warning"),
    [
        (
            "pn-not-json",
            "pn-not-json: optimizer_log.json unreadable: optimizer_log.json is not valid JSON",
        ),
        ("pn-no-entries", "pn-no-entries: optimizer_log.json has no list of 'entries'; ignored"),
        ("pn-some-bad", "optimizer_log.json: 3 malformed entries skipped"),
    ],
)
def test_malformed_optimizer_logs_are_named(pn_env, name, warning):
    at = open_page(OPTIMIZER)
    at.multiselect(key="optim-runs").set_value([name]).run()
    assert not at.exception and not at.error
    assert any(warning in w.value for w in at.warning), [w.value for w in at.warning]
    if name == "pn-some-bad":  # the readable entries still make the rates
        at.selectbox(key="optim-pn").set_value(name).run()
        no_errors(at)
        log = json.loads((pn_env / "pn-run" / "optimizer_log.json").read_text())
        updates = [e for e in log["entries"] if e.get("eta") is not None]
        rates = chart(at, "optim-rates")
        assert axis_values(rates["data"][0]["x"]) == [e["step"] for e in updates]


def _directional(model, loss_fn, batch, v, t):
    """L(θ + t v) and, at t = 0, g·v and vᵀHv (autograd, not the page's code)."""
    names = [n for n, _ in model.named_parameters()]
    theta = [p.detach() for _, p in model.named_parameters()]
    x, y = batch

    def loss_at(params):
        return loss_fn(functional_call(model, dict(zip(names, params, strict=True)), (x,)), y)

    with torch.no_grad():
        value = float(loss_at([p + t * d for p, d in zip(theta, v, strict=True)]))
    params = [p.clone().requires_grad_(True) for p in theta]
    grads = torch.autograd.grad(loss_at(params), params, create_graph=True)
    gv = sum((g * d).sum() for g, d in zip(grads, v, strict=True))
    hv = torch.autograd.grad(gv, params)
    vhv = sum((h * d).sum() for h, d in zip(hv, v, strict=True))
    return value, float(gv.detach()), float(vhv)


def test_taylor_view_of_the_first_update(pn_env):
    run = pn_env / "pn-run"
    at = open_page(OPTIMIZER)
    at.selectbox(key="optim-pn").set_value("pn-run").run()
    assert not at.get("plotly_chart") or "optim-taylor-fig" not in str(at.get("plotly_chart"))
    at.button(key="optim-taylor-go").click().run()
    no_errors(at)
    fig = chart(at, "optim-taylor-fig")
    names = [t["name"] for t in fig["data"]]
    assert names == ["true loss L(θ + t·v)"] + [f"Taylor order {k}" for k in range(1, 5)]
    t = axis_values(fig["data"][0]["x"])
    assert t == [i / 20 for i in range(31)]
    replay = replay_first_update(run)
    model, batch = replay["model"], replay["batch"]
    v = [replay["direction"][n] for n, _ in model.named_parameters()]
    loss_fn = get_loss("cross_entropy")
    L0, gv, vhv = _directional(model, loss_fn, batch, v, 0.0)
    L1, _, _ = _directional(model, loss_fn, batch, v, 1.0)
    true = axis_values(fig["data"][0]["y"])
    assert true[0] == pytest.approx(L0, rel=1e-5) and true[20] == pytest.approx(L1, rel=1e-5)
    order1, order2 = (axis_values(fig["data"][k]["y"]) for k in (1, 2))
    assert order1[20] == pytest.approx(L0 + gv, rel=1e-4)
    assert order2[20] == pytest.approx(L0 + gv + vhv / 2, rel=1e-4)
    for k in range(1, 5):  # every polynomial starts at the true loss
        assert axis_values(fig["data"][k]["y"])[0] == pytest.approx(L0, rel=1e-6)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["true change at t = 1"] == f"{L1 - L0:+.4g}"
    assert metrics["order 1 term / 1!"] == f"{gv:+.4g}"
    assert metrics["order 2 term / 2!"] == f"{vhv / 2:+.4g}"
    assert math.isfinite(float(metrics["order 4 term / 4!"]))
    assert fig["layout"]["title"]["text"].startswith(f"pn-run: step {replay['step']}, lr 0.3")
