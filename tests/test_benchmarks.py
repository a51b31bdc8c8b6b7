"""The benchmark scripts measure what they say (each check fails when its benchmark breaks).

bench_summary: the ratios divide by the gradient measured in the same run, every workload
computes what it is named after (H̄ of each back end = the plain HVP loop, the gradient,
D^(3)), and the peak-memory probe sees an allocation of known size. optim_compare: its
summary of a run is what the run folder holds, and its tables list every run.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from argparse import Namespace

import pytest
import torch
import torch.nn.functional as F

import hessian_lens as hl
from tests.compare import assert_close
from tests.conftest import REPO, write_tiny_npz


def load(script: str):
    """A benchmark script as a module (its functions, without running main)."""
    spec = importlib.util.spec_from_file_location(script.replace("/", "_")[:-3], REPO / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(*args: str) -> list[dict]:
    out = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_bench_summary_ratios_are_to_the_gradient_of_the_same_run():
    rows = run_script(
        "benchmarks/bench_summary.py",
        "--batches",
        "8",
        "--repeats",
        "3",
        "--models",
        "lenet5",
        "--no-d3",
    )
    assert [r["what"] for r in rows] == [
        "gradient",
        "hbar_auto",
        "hbar_loop",
        "hbar_vmap",
        "plain_hvp_loop",
    ]
    assert {(r["S"], r["batch"], r["repeats"]) for r in rows} == {(10, 8, 3)}
    gradient = rows[0]["median_s"]
    for r in rows:
        # both are rounded (ratio to 2 decimals, seconds to 5): 1% covers that, a ratio to
        # itself or to another row does not
        assert r["x_gradient"] == pytest.approx(r["median_s"] / gradient, rel=0.01, abs=0.006), r
    for r in rows:  # each call allocates (its graph, at least): a probe that sees nothing broke
        assert r["peak_extra_mb"] > 0, r


def test_bench_summary_workloads_compute_what_they_are_named_after():
    bench = load("benchmarks/bench_summary.py")
    model, x, y = bench.setup("lenet5", 8, torch.device("cpu"))
    jobs = bench.workloads(model, x, y, with_d3=True)
    params = [p for p in model.parameters() if p.requires_grad]
    want = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    for got, ref in zip(jobs["gradient"](), want, strict=True):
        assert_close(got, ref, rtol=1e-6, atol=1e-9)
    plain = jobs["plain_hvp_loop"]()
    reference = hl.pseudo_hessian(model, F.cross_entropy, (x, y), dtype=torch.float64).H
    assert_close(plain.double(), reference, rtol=1e-3, atol=1e-6)  # the brute-force H̄
    for what in ("hbar_auto", "hbar_loop", "hbar_vmap"):
        assert_close(jobs[what]().H, plain, rtol=1e-4, atol=1e-7)
    d3 = hl.summary_tensor(model, F.cross_entropy, (x, y), order=3)
    assert_close(jobs["d3_full"](), d3, rtol=1e-5, atol=1e-9)


def test_peak_memory_probe_sees_a_known_allocation():
    bench = load("benchmarks/bench_summary.py")
    with bench.PeakMemory(torch.device("cpu")) as mem:
        block = torch.ones(64 * 2**20 // 4 * 4)  # 256 MB, every page touched
        time.sleep(0.05)  # the probe samples every 2 ms
    del block
    assert 230 * 2**20 <= mem.peak <= 400 * 2**20, mem.peak / 2**20


def test_optim_compare_summarises_what_each_run_holds(tmp_path):
    optim = load("benchmarks/optim_compare.py")
    npz = write_tiny_npz(
        tmp_path / "data.npz", n_train=5300, n_test=40
    )  # 5,000 for validation, 3 steps
    args = Namespace(data=str(npz), epochs=1, out=str(tmp_path / "runs"), device="cpu")
    rows = [
        {
            "family": "partition-newton",
            **optim.run_one(
                args, "pn", "partition-newton", 0.3, {"optimizer_kwargs": optim.PN_PAPER}, 0
            ),
        },
        {"family": "sgd", **optim.run_one(args, "sgd", "sgd", 0.01, {"momentum": 0.9}, 0)},
        {"family": "sgd", **optim.run_one(args, "sgd", "sgd", 0.01, {"momentum": 0.9}, 1)},
    ]
    for r in rows:
        history = json.loads(
            (tmp_path / "runs" / f"{r['run']}-seed{r['seed']}" / "run.json").read_text()
        )["history"]
        assert r["epochs"] == 1 and r["diverged"] is None
        assert r["final_train_nll"] == history[-1]["train_loss"]
        assert (
            r["final_test_acc"] == history[-1]["test_acc"]
            and r["final_val_acc"] == history[-1]["val_acc"]
        )
        assert r["sec_per_epoch"] == history[-1]["seconds"] > 0
    assert 0 < rows[0]["curvature_share"] < 1  # PartitionNewton spends time on H̄
    assert rows[1]["curvature_share"] is None
    assert optim.best_of(rows, "sgd") is rows[1]  # seed 0 only
    (summary,) = optim.aggregate(rows)
    assert summary["run"] == "sgd" and summary["seeds"] == 2
    assert summary["nll_mean"] == pytest.approx(
        statistics.mean(r["final_train_nll"] for r in rows[1:])
    )
    table = optim.markdown(rows, [summary])
    assert [
        line.split(" | ")[:2]
        for line in table.splitlines()
        if line.startswith("| pn") or line.startswith("| sgd")
    ] == [
        ["| pn", "0"],
        ["| sgd", "0"],
        ["| sgd", "1"],
        ["| sgd", f"{summary['nll_mean']:.4f} ± {summary['nll_std']:.4f}"],
    ]


def test_optim_compare_picks_the_epoch_on_validation_not_on_test(tmp_path):
    optim = load("benchmarks/optim_compare.py")
    history = [
        {"epoch": 0, "train_loss": 2.3, "test_acc": 0.1, "val_acc": 0.1, "seconds": 0.0},
        {"epoch": 1, "train_loss": 1.5, "test_acc": 0.50, "val_acc": 0.48, "seconds": 1.0},
        {"epoch": 2, "train_loss": 1.2, "test_acc": 0.55, "val_acc": 0.57, "seconds": 1.0},
        {"epoch": 3, "train_loss": 1.1, "test_acc": 0.58, "val_acc": 0.52, "seconds": 1.0},
    ]
    (tmp_path / "run.json").write_text(json.dumps({"history": history}))
    row = optim.summarize("sgd", "sgd", 0.01, 0, tmp_path, None)
    assert row["best_val_epoch"] == 2 and row["test_acc_at_best_val"] == 0.55
    assert "best_test_acc" not in row  # 0.58 would be a pick on the test set
    for h in history:
        del h["val_acc"]
    (tmp_path / "run.json").write_text(json.dumps({"history": history}))
    row = optim.summarize("sgd", "sgd", 0.01, 0, tmp_path, None)
    assert row["best_val_epoch"] is None and row["test_acc_at_best_val"] is None


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
    gpt = {r["method"]: r for r in rows if r["what"] == "gpt"}
    assert set(gpt) == {"loop", "loop_one_row", "vmap"}
    assert gpt["vmap"]["ran"] == "vmap" and gpt["loop_one_row"]["rows_per_pass"] == 1
    assert all(gpt[m]["max_rel_diff_to_loop"] < 1e-4 for m in ("loop_one_row", "vmap"))
    from hessian_lens.models import GPT

    gpt_kwargs = load("benchmarks/gpu_check.py").GPT_CASE["quick"][0]
    S = len(hl.Partition.by_head(GPT(**gpt_kwargs)))
    assert all(r["x_gradient_per_group"] > 0 and r["S"] == S for r in gpt.values())


def test_bench_optim_epoch_times_each_optimizer_from_its_own_run(tmp_path):
    npz = write_tiny_npz(tmp_path / "data.npz", n_train=400, n_test=40)
    rows = run_script(
        "benchmarks/bench_optim_epoch.py", "--data", str(npz), "--steps", "3", "--repeats", "1"
    )
    by = {r["optimizer"]: r for r in rows}
    assert set(by) == {"partition-newton", "sgd", "adam"}
    for r in rows:
        assert r["sec_per_step"] > 0 and r["steps"] == 3
        assert r["sec_per_epoch_45k"] == pytest.approx(r["sec_per_step"] * 450, rel=0.01)
        assert r["ratio_to_sgd"] == pytest.approx(
            r["sec_per_step"] / by["sgd"]["sec_per_step"], rel=0.02
        )
    assert 0 < by["partition-newton"]["curvature_share"] < 1  # H̄ recomputed on its own batch
    assert by["sgd"]["curvature_share"] == by["adam"]["curvature_share"] == 0


def test_bench_train_step_times_steps_of_the_named_model_on_real_windows(tmp_path):
    text = "def f(x):\n    return x\n" * 400
    (tmp_path / "c.txt").write_text(text)
    kwargs = {"layers": 1, "heads": 2, "width": 8, "context": 16}
    (row,) = run_script(
        "benchmarks/bench_train_step.py",
        "gpt",
        "--data",
        f"text:{tmp_path / 'c.txt'}@16",
        "--model-kwargs",
        json.dumps(kwargs),
        "--batch-size",
        "8",
        "--steps",
        "4",
    )
    train_bytes = len(text) - int(len(text) * 0.1)  # the last 10% is the test split
    windows = (train_bytes - 1) // 16
    assert row["kwargs"] == kwargs and row["samples_per_epoch"] == windows
    assert row["steps_per_epoch"] == -(-windows // 8)
    assert row["s_per_epoch"] == round(row["s_per_step"] * row["steps_per_epoch"])


CLAIM_KEYS = {
    "claim",
    "run",
    "epoch",
    "measure",
    "value",
    "low",
    "high",
    "n_draws",
    "n_seeds",
    "samples",
    "verdict",
}
FOUR_RUNS = {"gpt-text", "vit-cifar10", "vgg11p-cifar10", "resnet18-cifar10"}


def test_transformer_claims_json_settles_each_claim_on_the_four_runs():
    """One object per claim, run, epoch and measure; the q/v claim on >= 5 draws and 3
    seeds; Zhang's JS⁰, the Frobenius split, the block-diagonal share and the damped
    Gauss-Newton comparison for the runs they apply to."""
    rows = run_script("benchmarks/transformer_claims.py", "--json")
    assert rows and all(set(r) == CLAIM_KEYS for r in rows)
    assert {r["verdict"] for r in rows} <= {"holds", "does not hold", "undecided"}
    for r in rows:
        assert r["low"] <= r["value"] <= r["high"] or r["verdict"] == "undecided", r
    qv = [r for r in rows if r["claim"] == "ormaniec-qv" and r["measure"] == "c_q / c_v"]
    settled = [r for r in qv if r["n_draws"] >= 5 and r["n_seeds"] >= 3]
    assert {r["run"] for r in settled} == {"gpt-text", "vit-cifar10"}
    assert all(r["verdict"] != "undecided" or r["low"] <= 1 <= r["high"] for r in settled)
    split = {r["run"] for r in rows if r["measure"].startswith("‖H − G_QQ‖")}
    assert split == {"gpt-text", "vit-cifar10"}
    for measure in (
        "JS⁰ of the weight blocks' spectra",
        "‖H‖²_F share in diagonal blocks (layers)",
        "damped GN ρ=0.01: layer-wise / full decrease",
    ):
        assert {r["run"] for r in rows if r["measure"] == measure} == FOUR_RUNS, measure


def test_docs_transformers_quotes_the_claims_json():
    """Every table and every marked number of docs/transformers.md is the JSON's; a changed
    number, a changed table cell or an unknown row is caught."""
    out = subprocess.run(
        [sys.executable, "benchmarks/transformer_claims.py", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and out.stdout.strip() == "", out.stdout + out.stderr
    claims = load("benchmarks/transformer_claims.py")
    table, doc = claims.rows(), (REPO / "docs" / "transformers.md").read_text()
    said, *key = claims.QUOTE.search(doc).groups()
    marker = "<!--q:" + "|".join(key) + "-->"
    assert claims.check(doc.replace(said + marker, "9" + said + marker, 1), table)
    assert claims.check(doc.replace(marker, marker.replace(key[1], "no-run"), 1), table)
    cell = re.search(r"\| (\d[^|\[]*) \[", claims.markdown(table)).group(1)
    assert claims.check(doc.replace(f"| {cell} [", "| 7 [", 1), table)
    said, *key = next(m.groups() for m in claims.QUOTE.finditer(doc) if m.group(6) == "verdict")
    marker = "<!--q:" + "|".join(key) + "-->"
    other = "holds" if said != "holds" else "does not hold"
    assert claims.check(doc.replace(said + marker, other + marker, 1), table)
    said, *key = next(m.groups() for m in claims.QUOTE.finditer(doc) if m.group(6) == "n_draws")
    marker = "<!--q:" + "|".join(key) + "-->"
    without_n = claims.check(doc.replace(said + marker, "", 1), table)
    assert any("its interval and n" in p for p in without_n)  # every number carries its n
    claims.SLOPE_AGREE = 0.0  # the doc's "every growth exponent within 0.1 of theirs"
    assert any("growth" in p for p in claims.check(doc, table))


def test_median_interval_has_its_coverage_and_verdicts_follow_the_interval():
    claims = load("benchmarks/transformer_claims.py")
    for n in range(5, 40):
        low, high = claims.median_interval(list(range(n)))
        k = int(low) + 1
        cover = 1 - 2 * sum(math.comb(n, j) for j in range(k)) / 2**n
        wider = 1 - 2 * sum(math.comb(n, j) for j in range(k + 1)) / 2**n
        assert high == n - k and cover >= 0.9 > wider
    assert all(math.isnan(x) for x in claims.median_interval([1.0, 2.0, 3.0, 4.0]))
    v = claims.verdict
    assert v(0.2, 0.8, 1.0, True, True) == "holds" and v(1.2, 3, 1.0, True, True) == "does not hold"
    assert (
        v(0.5, 2, 1.0, True, True) == "undecided" and v(0.2, 0.8, 1.0, True, False) == "undecided"
    )
    assert (
        v(0.6, 0.9, 0.5, False, True) == "holds"
        and v(0.1, 0.4, 0.5, False, True) == "does not hold"
    )


def test_bench_analysis_times_the_transformers_with_their_head_partition():
    (row,) = run_script(
        "benchmarks/bench_analysis.py",
        "--models",
        "gpt",
        "--samples",
        "8",
        "--batch-size",
        "4",
        "--repeats",
        "1",
    )
    assert row["model"] == "gpt" and row["partition"] == "by_head" and row["S"] == 54
    assert row["ratio"] == pytest.approx(row["analysis_s"] / row["gradient_s"], rel=0.02, abs=0.02)
    assert row["ratio_per_group"] == pytest.approx(row["ratio"] / 54, rel=0.02, abs=0.002)


def test_bench_analysis_times_a_shipped_runs_checkpoints_on_its_own_data(cifar_npz):
    """--run: the run's partition and loss, one row per asked checkpoint, ratio of the two."""
    rows = run_script(
        "benchmarks/bench_analysis.py",
        "--run",
        "checkpoints/lenet5-cifar10",
        "--epochs",
        "0,21",
        "--samples",
        "16",
        "--repeats",
        "1",
    )
    assert [r["epoch"] for r in rows] == [0, 21]
    for r in rows:
        assert r["run"] == "lenet5-cifar10" and r["partition"] == "canonical" and r["S"] == 10
        assert r["samples"] == 16 and r["gradient_s"] > 0 and r["analysis_s"] > 0
        assert abs(r["ratio"] - r["analysis_s"] / r["gradient_s"]) < 0.01 * r["ratio"] + 0.01


def test_bench_memory_compares_the_plan_with_the_measured_peak(capsys):
    """Quick mode: LeNet-5 on 8 samples, under the machine's budget then one fitting 2."""
    load("benchmarks/bench_memory.py").main(["--quick", "--device", "cpu"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["budget"] for r in rows] == ["machine", "split"], rows
    machine, split = rows
    assert (machine["micro_batch"], split["micro_batch"]) == (8, 2)  # what each budget fits
    assert split["budget_source"].startswith("HESSIAN_LENS_MAX_MEMORY_GB=")
    for r in rows:
        assert r["model"] == "lenet5" and r["method"] == r["ran"] == "loop" and r["S"] == 10
        plan = r["output_mib"] + r["fixed_mib"] + r["micro_batch"] * r["per_sample_mib"]
        assert r["predicted_mib"] == pytest.approx(plan, abs=0.02), r
        for ratio in ("ratio", "ratio_rss", "ratio_tensors"):
            assert 0 < r[ratio] < float("inf"), r
        assert r["ratio_rss"] == pytest.approx(r["rss_mib"] / r["predicted_mib"], rel=0.01)
        assert r["ratio_tensors"] == pytest.approx(r["tensors_mib"] / r["predicted_mib"], rel=0.01)
        assert r["ratio"] == r["ratio_rss"]  # on the CPU the ratio is the resident set's


def test_ship_run_keeps_what_it_says_and_the_last_checkpoint_as_float16(tmp_path):
    from hessian_lens.checkpoint import read_checkpoint
    from hessian_lens.io.files import file_sha256
    from hessian_lens.runfolder import list_checkpoints, read_manifest
    from tests.apptools import make_analysed_run

    run, _ = make_analysed_run(tmp_path / "src")
    spec = importlib.util.spec_from_file_location("ship_run", REPO / "benchmarks" / "ship_run.py")
    ship_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship_run)
    done = ship_run.ship(run, tmp_path / "out", keep={0.0}, note="stopped early")
    out = tmp_path / "out"
    assert sorted(p.name for p in list_checkpoints(out)) == [
        "epoch_0000.pt",
        "epoch_0002.safetensors",
    ]
    assert not (out / "resume.pt").exists() and done["bytes"] > 0
    half, _ = read_checkpoint(out / "epoch_0002.safetensors")
    full, _ = read_checkpoint(run / "epoch_0002.pt")
    assert half.keys() == full.keys()
    for k, v in full.items():
        assert half[k].dtype == (torch.float16 if v.is_floating_point() else v.dtype)
        assert torch.allclose(half[k].float(), v.float(), rtol=1e-3, atol=1e-4)
    manifest = read_manifest(out).raw
    assert manifest["state"] == "finished" and manifest["note"] == "stopped early"
    assert [h.get("checkpoint") for h in manifest["history"]] == [
        "epoch_0000.pt",
        None,
        "epoch_0002.safetensors",
    ]
    absent = manifest["checkpoints_not_shipped"]["sha256"]
    assert absent == {n: file_sha256(run / n) for n in ("epoch_0001.pt", "epoch_0002.pt")}


def test_bench_overhead_floor_is_the_engines_h_bar_and_ratios_are_of_the_same_run():
    bench = load("benchmarks/bench_overhead.py")
    for name in ("lenet5-b32", "gpt-b32"):
        model, data, loss_fn = bench.setup(*bench.CASES[name][:2], 4)
        floor = bench.pruned_floor(model, loss_fn, data)
        want = hl.pseudo_hessian(model, loss_fn, data).H
        assert_close(torch.triu(want), floor, rtol=2e-4, atol=1e-6)  # upper triangle
    rows = run_script("benchmarks/bench_overhead.py", "--quick")
    (row,) = rows
    assert row["case"] == "lenet5-b32" and row["S"] == 10
    assert row["x_floor"] == pytest.approx(row["engine_ms"] / row["floor_ms"], rel=0.01)


def test_train_no_eval_writes_the_checkpoints_train_writes(tmp_path, tiny_npz):
    """Skipping the evaluations changes no weight (augmented, shuffled, an in-epoch
    checkpoint) and no history entry but the metrics; run.json names the script."""
    from hessian_lens.checkpoint import load_checkpoint
    from hessian_lens.cli import main

    args = [
        "--data",
        "cifar10",
        "--data-root",
        str(tiny_npz),
        "--train-size",
        "96",
        "--test-size",
        "32",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--lr",
        "0.05",
        "--augment",
        "crop+flip",
        "--checkpoints-at",
        "0.5",
        "--seed",
        "4",
        "--no-progress",
    ]
    assert main(["train", *args, "--out", str(tmp_path / "a")]) == 0
    script = load("benchmarks/train_no_eval.py")
    assert script.run([*args, "--out", str(tmp_path / "b")]) == 0
    for name in ("epoch_0000.500.pt", "epoch_0001.pt", "epoch_0002.pt"):
        a, _ = load_checkpoint(tmp_path / "a" / name)
        b, _ = load_checkpoint(tmp_path / "b" / name)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
            assert torch.equal(x, y), name
    fast = json.loads((tmp_path / "b" / "run.json").read_text())
    assert fast["command"].startswith("python benchmarks/train_no_eval.py")
    assert [h["epoch"] for h in fast["history"]] == [0, 0.5, 1, 2]
    assert not any("test_loss" in h for h in fast["history"])
    import hessian_lens.train as training

    assert training.train.__module__ == "hessian_lens.train"  # restored
    assert training._evaluate_all is not script.no_metrics
    assert training._epoch_zero is not script.epoch_zero


def test_ormaniec_reported_reads_float32_values_without_unpickling(monkeypatch):
    """Their results files' numbers come out of the opcodes in order; pickle.loads is never
    called (a file that would run code is read the same way)."""
    import pickle

    import numpy as np

    reported = load("benchmarks/ormaniec_reported.py")
    values = {0: {r: [np.float32(r + s / 8) for s in range(3)] for r in range(2)}}
    blob = pickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL)

    def refuse(*a, **k):
        raise AssertionError("unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    assert reported.float32_payloads(blob) == [0.0, 0.125, 0.25, 1.0, 1.125, 1.25]
    sigma = np.array([0.01, 0.03, 0.1, 0.3, 1.0])
    assert reported.slope(sigma, 3 * sigma**5) == pytest.approx(5.0)
    assert reported.slope(sigma, 0 * sigma) is None


def test_ormaniec_point_has_their_structure():
    """One layer: the V-V block has no functional part (the output is piecewise linear in
    W_V), so H = GN there; the Q-Q block grows as sigma^5 and its GN part as sigma^6 at
    small scales, V-V as sigma^2 (their figure's rates)."""
    fig = load("benchmarks/ormaniec_addition.py")
    small, larger = fig.point(1, 0, 0, 2), fig.point(1, 6, 0, 2)
    assert small["0.v.functional"] == 0 and larger["0.v.functional"] == 0
    assert larger["0.v.H"] == pytest.approx(larger["0.v.GN"], rel=1e-9)
    step = math.log(fig.THEIR_SIGMA[6] / fig.THEIR_SIGMA[0])
    rate = {k: math.log(larger[k] / small[k]) / step for k in ("0.q.H", "0.q.GN", "0.v.H")}
    assert rate["0.q.H"] == pytest.approx(5, abs=0.3)
    assert rate["0.q.GN"] == pytest.approx(6, abs=0.3)
    assert rate["0.v.H"] == pytest.approx(2, abs=0.3)


def test_bench_measures_compares_like_with_like():
    """--quick: every comparison row, ratios of the same run, the GGN equal to curvlinops'."""
    pytest.importorskip("pyhessian")
    rows = run_script("benchmarks/bench_measures.py", "--quick")
    by = {r["what"]: r for r in rows}
    assert set(by) == {"block_traces", "frobenius_map", "trace_and_lmax", "ggn"}
    t = by["block_traces"]
    assert t["speedup"] == pytest.approx(t["per_block_loop_s"] / t["ours_s"], rel=0.02)
    assert t["target_speedup"] == t["S"] / 2 == 5
    f = by["frobenius_map"]
    assert f["curvlinops_pairs"] == "55 of 55"
    assert f["x_one_h_bar_per_probe"] == pytest.approx(
        f["ours_s"] / (f["one_h_bar_s"] * f["probes"]), rel=0.02
    )
    assert by["ggn"]["max_abs_diff_over_max"] < 1e-4  # float32, two implementations


def test_bench_scale_rows_are_ratios_of_the_same_run_and_the_twins_agree():
    """bench_scale --quick: one fresh process per case; every ratio divides by that case's
    own gradient, every twin (one row per pass, the loop w.r.t. the parameters, vmap,
    curvlinops) computes the same H̄, and the memory plan and the peak are both measured."""
    rows = run_script("benchmarks/bench_scale.py", "--quick", "--samples", "6", "--tokens", "8")
    assert [(r["width"], r["depth"]) for r in rows] == [(64, 2), (128, 2)], rows
    bench = load("benchmarks/bench_scale.py")
    for r in rows:
        _, part, _ = bench.build(r["width"], r["depth"], 6, 8)
        assert r["S"] == len(part) and r["tokens"] == 48 and r["heads"] == r["width"] // 64
        assert r["ratio"] == pytest.approx(r["analysis_s"] / r["gradient_s"], rel=0.02), r
        assert r["ratio_per_group"] == pytest.approx(r["ratio"] / r["S"], rel=0.02), r
        for twin in ("rows_serial", "parameters", "vmap", "curvlinops"):
            assert r[f"{twin}_max_rel_diff"] < 1e-3, (twin, r)
            assert r[f"{twin}_over_analysis"] == pytest.approx(
                r[f"{twin}_s"] / r["analysis_s"], rel=0.02, abs=0.01
            )
        assert r["vmap_method"] == "vmap" and r["method"] == "loop"
        assert r["peak_mb"] > 0 and r["plan_mb"] > 0 and r["rows_per_pass"] >= 1


def test_bench_scale_times_the_named_computations():
    bench = load("benchmarks/bench_scale.py")
    model, part, batch = bench.build(64, 1, 5, 6)
    model = model.double()
    from hessian_lens.losses import next_token

    want = hl.pseudo_hessian(model, next_token, batch, partition=part).H
    assert_close(
        bench._symmetric(bench.parameters_loop(model, part, batch)), want, rtol=1e-9, atol=1e-15
    )
    assert_close(bench.curvlinops_uhu(model, part, batch), want, rtol=1e-9, atol=1e-13)


def _init_run(tmp_path, seed: int = 0):
    """A 0-epoch (initialisation) GPT run on a small corpus: the shape of the 124M run."""
    from hessian_lens.train import TrainConfig, train

    corpus = tmp_path / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for i in range(6):
        (corpus / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 12)
    cfg = TrainConfig(
        out=str(tmp_path / "gpt-init"),
        model="gpt",
        model_kwargs={"layers": 1, "heads": 2, "width": 16, "context": 16},
        data=f"text:{corpus}@16",
        loss="next_token",
        train_size=8,
        test_size=8,
        epochs=0,
        batch_size=4,
        optimizer="adam",
        lr=6e-4,
        seed=seed,
    )
    return train(cfg, progress=False)


def test_remake_init_recreates_the_recorded_checkpoint_bit_for_bit(tmp_path):
    """--record, delete the weights, remake: the same file bytes and the same tensors."""
    bench = load("benchmarks/remake_init.py")
    run = _init_run(tmp_path)
    original = (run / "epoch_0000.pt").read_bytes()
    before = hl.load_checkpoint(run / "epoch_0000.pt")[0].state_dict()
    recorded = bench.record(run)["recorded"]
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["checkpoints_not_shipped"] == recorded
    assert all("checkpoint" not in h for h in manifest["history"])  # not shipped: not named
    (run / "epoch_0000.pt").unlink()
    out = bench.remake(run)
    assert out["weights_identical"] and out["file_identical"], out
    assert (run / "epoch_0000.pt").read_bytes() == original
    after = hl.load_checkpoint(run / "epoch_0000.pt")[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".remake-")]


def test_remake_init_refuses_other_weights_and_trained_runs(tmp_path):
    """A recorded digest of other weights (seed 1) is refused and nothing is replaced;
    a run trained for epochs is not an initialisation: one line, exit 1."""
    bench = load("benchmarks/remake_init.py")
    other = _init_run(tmp_path / "other", seed=1)
    digest = bench.record(other)["recorded"]["weights_sha256"]
    run = _init_run(tmp_path)
    bench.record(run)
    manifest = json.loads((run / "run.json").read_text())
    manifest["checkpoints_not_shipped"]["weights_sha256"] = digest
    (run / "run.json").write_text(json.dumps(manifest))
    (run / "epoch_0000.pt").unlink()
    with pytest.raises(bench.RemakeError, match="re-created weights differ"):
        bench.remake(run)
    assert not (run / "epoch_0000.pt").exists()
    manifest["config"]["epochs"] = 3
    (run / "run.json").write_text(json.dumps(manifest))
    done = subprocess.run(
        [sys.executable, "benchmarks/remake_init.py", str(run)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "not an initialisation run" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
