"""The benchmark scripts keep running and printing their JSON lines (smoke runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO


def run_script(*args: str) -> list[dict]:
    out = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_bench_summary_quick():
    rows = run_script("benchmarks/bench_summary.py", "--quick", "--models", "lenet5", "--no-d3")
    assert [r["what"] for r in rows] == [
        "gradient",
        "hbar_auto",
        "hbar_loop",
        "hbar_vmap",
        "plain_hvp_loop",
    ]
    assert rows[0]["x_gradient"] == 1.0 and all(r["median_s"] > 0 for r in rows)
    assert all(r["peak_extra_mb"] >= 0 and r["S"] == 10 for r in rows)


def test_optim_compare_smoke(tmp_path, tiny_npz):
    rows = run_script(
        "benchmarks/optim_compare.py",
        "--data",
        str(tiny_npz),
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "runs"),
        "--only",
        "partition-newton",
        "sgd",
        "--markdown",
        str(tmp_path / "table.md"),
    )
    assert [r["optimizer"] for r in rows] == ["partition-newton"] * 2 + ["sgd"] * 3
    assert rows[0]["curvature_share"] is not None and rows[2]["curvature_share"] is None
    assert (tmp_path / "table.md").read_text().count("\n") == 7


def test_gpu_check_quick_on_cpu():
    out = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--quick", "--device", "cpu"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO)},
    ).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert not [r for r in rows if "error" in r or "skipped" in r], rows
    whats = [r["what"] for r in rows]
    assert whats[0] == "env" and whats[-1] == "done" and whats.count("d3") == 2
    assert all(r["max_rel_error"] < 1e-12 for r in rows if r["what"] == "exactness")
    hbar = {(r["model"], r["method"]) for r in rows if r["what"] == "hbar"}
    assert hbar == {
        ("lenet5", "loop"),
        ("lenet5", "vmap"),
        ("vgg11p", "loop"),
        ("resnet18", "loop"),
    }
    assert all(
        r["x_gradient"] > 0 and r["predicted_peak_mib"] > 0 for r in rows if r["what"] == "hbar"
    )
    assert next(r for r in rows if r["what"] == "dataset")["samples"] == 64
