"""Finding runs and reading their logs (what the dashboard browses)."""

from __future__ import annotations

import json
from pathlib import Path

from hessian_lens.runs import (
    describe_settings,
    find_runs,
    load_run,
    loss_over_steps,
    optimizer_log,
    rates_over_steps,
    run_roots,
)


def fake_run(folder, name="r", history=None):
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"name": name, "history": history or []}))
    (folder / "epoch_0000.pt").write_bytes(b"")
    return folder


def test_find_runs_in_roots_and_subfolders(tmp_path, monkeypatch):
    a = fake_run(tmp_path / "root" / "a", "a")
    fake_run(tmp_path / "root" / "b", "b")
    (tmp_path / "root" / "not-a-run").mkdir()
    single = fake_run(tmp_path / "single", "single")
    runs = find_runs([tmp_path / "root", single, a, tmp_path / "missing"])
    assert [r.name for r in runs] == ["a", "b", "single"]  # no duplicates, no missing root
    assert [p.name for p in runs[0].checkpoints] == ["epoch_0000.pt"]
    monkeypatch.setenv("HESSIAN_LENS_RUNS", f"{tmp_path / 'x'}:{tmp_path / 'y'}")
    assert run_roots("checkpoints", "p, q") == [
        Path("checkpoints"),
        tmp_path / "x",
        tmp_path / "y",
        Path("p"),
        Path("q"),
    ]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "run.json").write_text("{not json")
    assert load_run(broken).manifest.raw == {} and load_run(broken).name == "broken"
    assert "run.json unreadable" in load_run(broken).warnings[0]
    assert load_run(broken).records() == [] and load_run(broken).settings() == []


def test_optimizer_log_rates_and_losses(tmp_path):
    run = fake_run(tmp_path / "pn")
    assert optimizer_log(load_run(run)) == (None, [])
    entries = [
        {"step": 0, "loss": 2.0, "lr": [0.5, 0.5]},
        {"step": 0, "recomputed": True, "warmup": True},
        {"step": 1, "loss": 1.0, "lr": [0.25, 0.25]},
        {"step": 1, "recomputed": True, "eta": [2.0, 0.0]},
        {"step": 2, "loss": 3.0, "lr": [0.25, 0.25]},
    ]
    (run / "optimizer_log.json").write_text(json.dumps({"labels": ["w", "b"], "entries": entries}))
    log, warnings = optimizer_log(load_run(run))
    assert warnings == []
    steps, labels, rates = rates_over_steps(log)
    assert steps == [1] and labels == ["w", "b"] and rates == [[0.5], [0.0]]
    assert loss_over_steps(log, window=2) == ([0, 1, 2], [2.0, 1.5, 2.0])


def test_describe_settings():
    text = describe_settings(
        {"partition": "canonical", "samples": 10000, "dtype": "float32", "seed": 0, "order3": True}
    )
    assert text == "canonical · 10,000 samples · float32 · seed 0 · + D³ diagonal"
