"""Long analyses survive: pass 2 kept on disk row by row, resumed after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import hessian_lens as hl
from hessian_lens.analyze import PARTIAL_DIR, AnalysisSettings, analyze_run
from hessian_lens.cli import main
from hessian_lens.engine import directional as D
from hessian_lens.store import ResultStore
from tests.compare import EXACT, assert_close
from tests.conftest import REPO
from tests.test_heads import LOSS, MODELS, data
from tests.tiny import data_for, loss_fn, mlp


class StopError(Exception):
    """Raised from a progress callback: the computation dies there."""


def batches_of_gpt():
    x, y = data("gpt", n=12)
    return [(x[:6], y[:6]), (x[6:], y[6:])]


def stop_after(level: float):
    """A progress callback that stops pass 2 once ``level`` batches are done."""

    def tick(done, total):
        if done >= level:
            raise StopError

    return tick


def counted_rows(monkeypatch) -> list[int]:
    rows: list[int] = []
    original = D.directional_rows

    def counting(d, grads, run):
        rows.extend(run)
        return original(d, grads, run)

    monkeypatch.setattr(D, "directional_rows", counting)
    return rows


def test_a_killed_pass_resumes_at_the_next_row(tmp_path, monkeypatch):
    model, batches = MODELS["gpt"](), batches_of_gpt()
    part, file = hl.Partition.by_head(model), tmp_path / "rows.npz"
    S = len(part)
    whole = hl.pseudo_hessian(model, LOSS["gpt"], batches, partition=part)
    with pytest.raises(StopError):  # pass 1 is 2 batches, then half of the first batch's rows
        hl.pseudo_hessian(
            model, LOSS["gpt"], batches, partition=part, resume=file, progress=stop_after(2.5)
        )
    with np.load(file, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
    assert meta["batch"] == 0 and S / 2 <= meta["row"] < S
    rows = counted_rows(monkeypatch)
    res = hl.pseudo_hessian(model, LOSS["gpt"], batches, partition=part, resume=file)
    assert len(rows) == (S - meta["row"]) + S  # the rest of batch 0, all of batch 1
    assert_close(res.H, whole.H, **EXACT)
    assert_close(res.g, whole.g, **EXACT)
    assert res.loss == pytest.approx(whole.loss, rel=1e-14) and res.n_samples == 12
    rows.clear()  # the file is complete: a call again computes no row
    again = hl.pseudo_hessian(model, LOSS["gpt"], batches, partition=part, resume=file)
    assert rows == [] and torch.equal(again.H, res.H)


def test_a_file_of_another_computation_is_set_aside(tmp_path, monkeypatch):
    model, batches = MODELS["gpt"](), batches_of_gpt()
    part, file = hl.Partition.by_head(model), tmp_path / "rows.npz"
    with pytest.raises(StopError):
        hl.pseudo_hessian(
            model, LOSS["gpt"], batches, partition=part, resume=file, progress=stop_after(2.5)
        )
    other = [(x.flip(0), y.flip(0)) for x, y in batches[::-1]][:1]  # other data
    rows = counted_rows(monkeypatch)
    with pytest.warns(RuntimeWarning, match="not resumed: it belongs to another computation"):
        res = hl.pseudo_hessian(model, LOSS["gpt"], other, partition=part, resume=file)
    assert len(rows) == len(part) and (tmp_path / "rows.npz.stale").exists()
    want = hl.pseudo_hessian(model, LOSS["gpt"], other, partition=part)
    assert_close(res.H, want.H, **EXACT)


def test_other_orders_resume_micro_batch_by_micro_batch(tmp_path):
    """D^(3) (and H̄ with its order-3 diagonal) keep whole micro-batches."""
    model, (x, y) = mlp(), data_for("mlp", n=12)
    batches, file = [(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:], y[8:])], tmp_path / "d3.npz"
    whole = hl.pseudo_hessian(model, loss_fn, batches, d3_diagonal=True)
    with pytest.raises(StopError):
        hl.pseudo_hessian(
            model, loss_fn, batches, d3_diagonal=True, resume=file, progress=stop_after(5)
        )
    with np.load(file, allow_pickle=False) as z:
        assert json.loads(str(z["meta"]))[("batch")] == 2
    res = hl.pseudo_hessian(model, loss_fn, batches, d3_diagonal=True, resume=file)
    for got, want in ((res.H, whole.H), (res.g, whole.g), (res.d3, whole.d3)):
        assert_close(got, want, **EXACT)


def test_resume_must_be_a_path():
    with pytest.raises(TypeError, match="resume must be a file path"):
        hl.Options(resume=3)


KILLED = """
import sys, time
from hessian_lens.analyze import AnalysisSettings, analyze_run

def progress(fraction, message):
    if fraction > 0.6:
        time.sleep(3600)  # killed here, rows stored

analyze_run(sys.argv[1], AnalysisSettings(**eval(sys.argv[2])), progress=progress)
"""


def tiny_text_run(folder) -> None:
    text = folder.parent / "corpus.txt"
    text.write_text("".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(60)))
    kwargs = '{"layers": 1, "heads": 2, "width": 8, "context": 8}'
    assert (
        main(
            [
                "train",
                "--model",
                "gpt",
                "--model-kwargs",
                kwargs,
                "--data",
                f"text:{text}@8",
                "--loss",
                "next_token",
                "--train-size",
                "48",
                "--test-size",
                "8",
                "--epochs",
                "0",
                "--out",
                str(folder),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )


def test_an_analysis_killed_midway_resumes_at_once_keeping_its_rows(tmp_path, monkeypatch):
    """kill -9 in the middle of H̄: the rerun takes over the dead process's claim at once
    (no lease to wait for), loads the rows stored and computes only the others."""
    run, fresh = tmp_path / "run", tmp_path / "fresh"
    tiny_text_run(run)
    (tmp_path / "fresh").mkdir()
    for f in ("run.json", "epoch_0000.pt"):
        (fresh / f).write_bytes((run / f).read_bytes())
    settings = {
        "samples": 40,
        "batch_size": 40,
        "partition": "by_head",
        "loss": "next_token",
        "dtype": "float64",
    }
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    victim = subprocess.Popen([sys.executable, str(script), str(run), repr(settings)], env=env)
    partial_dir = run / PARTIAL_DIR
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not any(partial_dir.glob("*.npz")):
        time.sleep(0.2)
    time.sleep(1.0)  # the victim sleeps once past 60%: its last rows are stored
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(30) == -signal.SIGKILL
    (stored,) = partial_dir.glob("*.npz")
    with np.load(stored, allow_pickle=False) as z:
        row = json.loads(str(z["meta"]))["row"]
    assert row > 0
    rows = counted_rows(monkeypatch)
    t0 = time.monotonic()
    done = analyze_run(run, AnalysisSettings(**settings), progress=False, lease_s=3600)
    assert done["computed"] == 1 and time.monotonic() - t0 < 600  # not the hour's lease
    S = len(ResultStore(run / "analysis.sqlite").records()[0].summary["labels"])
    assert len(rows) == S - row and not any(partial_dir.glob("*.npz"))
    analyze_run(fresh, AnalysisSettings(**settings), progress=False)
    (got,) = ResultStore(run / "analysis.sqlite").records()
    (want,) = ResultStore(fresh / "analysis.sqlite").records()
    for name in ("H", "g"):
        np.testing.assert_allclose(got.arrays[name], want.arrays[name], rtol=1e-10, atol=1e-15)


def _nudge_direction(file, factor: float) -> None:
    """Scale the stored direction norms of a partial file by ``factor`` (atomic enough here)."""
    with np.load(file, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    meta["direction"] = [n * factor for n in meta["direction"]]
    arrays["meta"] = np.array(json.dumps(meta))
    with open(file, "wb") as f:
        np.savez(f, **arrays)


def test_a_direction_recomputed_in_another_order_resumes_another_is_set_aside(
    tmp_path, monkeypatch
):
    """The same data summed with another thread count moves float32 norms in their last
    digits (the 100M GPT's resume started over when 2 threads became 1): within 1e-5 the
    rows are kept; a direction off by 1e-3 (other data or weights) is set aside."""
    model, batches = MODELS["gpt"]().float(), batches_of_gpt()  # float32, as analyze runs
    part, file = hl.Partition.by_head(model), tmp_path / "rows.npz"
    S = len(part)
    for factor, resumed in ((1 + 3e-7, True), (1 + 1e-3, False)):
        file.unlink(missing_ok=True)
        with pytest.raises(StopError):
            hl.pseudo_hessian(
                model, LOSS["gpt"], batches, partition=part, resume=file, progress=stop_after(2.5)
            )
        with np.load(file, allow_pickle=False) as z:
            row = json.loads(str(z["meta"]))["row"]
        _nudge_direction(file, factor)
        rows = counted_rows(monkeypatch)
        if resumed:
            hl.pseudo_hessian(model, LOSS["gpt"], batches, partition=part, resume=file)
            assert len(rows) == (S - row) + S
        else:
            with pytest.warns(RuntimeWarning, match="its direction: data or weights"):
                hl.pseudo_hessian(model, LOSS["gpt"], batches, partition=part, resume=file)
            assert len(rows) == 2 * S
