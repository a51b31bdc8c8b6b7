"""Analysis into the results store: contents, resume after a crash, concurrent writers."""

from __future__ import annotations

import multiprocessing as mp
import shutil
import sqlite3

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hessian_lens as hl
from hessian_lens import linalg
from hessian_lens.analyze import AnalysisSettings, analysis_batches, analyze_model, analyze_run
from hessian_lens.checkpoint import load_checkpoint
from hessian_lens.store import ResultStore
from tests.apptools import make_run
from tests.conftest import REPO

SETTINGS = AnalysisSettings(samples=64, batch_size=32)


@pytest.fixture
def tiny_run(tmp_path, tiny_npz):
    return make_run(tmp_path / "run", tiny_npz, seed=1)


def test_analysis_matches_the_engine(tiny_run):
    analyze_run(tiny_run, SETTINGS, progress=False)
    record = ResultStore(tiny_run / "analysis.sqlite").records()[1]
    model, _ = load_checkpoint(tiny_run / "epoch_0001.pt")
    batches, _ = analysis_batches(str(tiny_run.parent / "tiny.npz"), SETTINGS)
    res = hl.pseudo_hessian(model, F.cross_entropy, batches)
    assert np.allclose(record.arrays["H"], res.H.double().numpy())
    assert np.allclose(record.arrays["g"], res.g.double().numpy())
    inv = linalg.inverse(res.H)
    assert np.allclose(record.arrays["Hinv"], inv.inv.numpy())
    assert record.summary["inverse"]["status"] == inv.status
    assert np.allclose(record.arrays["H_norm"], linalg.normalize(res.H).numpy())
    assert set(record.summary["compare"]) == {"layer", "tensor", "kind"}
    layer = record.summary["compare"]["layer"]
    assert 0 <= layer["off_share_H"] <= 1 and -1 <= layer["cos_eta"] <= 1
    assert record.arrays["eta_bd_layer"].shape == (10,)
    assert record.summary["kinds"] == ["weight", "bias"] * 5
    assert record.summary["loss"] == pytest.approx(res.loss, rel=1e-5)


def test_interrupted_analysis_resumes(tiny_run):
    calls = {"n": 0}

    def crash_in_second_checkpoint(fraction, message):
        if message.startswith("epoch_0001.pt: batch"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        analyze_run(tiny_run, SETTINGS, progress=crash_in_second_checkpoint)
    store = ResultStore(tiny_run / "analysis.sqlite")
    assert [r.checkpoint for r in store.records(arrays=False)] == ["epoch_0000.pt"]

    def count(fraction, message):
        calls["n"] += 1

    done = analyze_run(tiny_run, SETTINGS, progress=count)
    assert done["computed"] == 2 and done["skipped"] == 1 and calls["n"] > 0
    assert [r.epoch for r in store.records(arrays=False)] == [0, 1, 2]


def test_only_the_asked_epochs_are_analysed(tiny_run):
    done = analyze_run(tiny_run, SETTINGS, progress=False, epochs=[0, 2])
    store = ResultStore(tiny_run / "analysis.sqlite")
    assert done["computed"] == 2 and done["skipped"] == 0
    assert [r.epoch for r in store.records(arrays=False)] == [0, 2]
    with pytest.raises(
        ValueError, match=r"no checkpoint of epoch 7 \(the run has epochs 0, 1, 2\)"
    ):
        analyze_run(tiny_run, SETTINGS, progress=False, epochs=[1, 7])
    assert len(store.records(arrays=False)) == 2  # nothing computed for a bad selection


def _analyze_in_process(run: str, barrier) -> None:
    torch.set_num_threads(1)
    barrier.wait()
    analyze_run(run, SETTINGS, progress=False)


def test_concurrent_analysis_leaves_a_consistent_store(tiny_run, tmp_path):
    reference = tmp_path / "reference"
    shutil.copytree(tiny_run, reference)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same arithmetic as the single-threaded writers below
    try:
        analyze_run(reference, SETTINGS, progress=False)
    finally:
        torch.set_num_threads(threads)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_analyze_in_process, args=(str(tiny_run), barrier)) for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    with sqlite3.connect(tiny_run / "analysis.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = ResultStore(tiny_run / "analysis.sqlite").records()
    expected = ResultStore(reference / "analysis.sqlite").records()
    assert [r.checkpoint for r in rows] == ["epoch_0000.pt", "epoch_0001.pt", "epoch_0002.pt"]
    for got, want in zip(rows, expected, strict=True):
        assert got.checkpoint_sha == want.checkpoint_sha
        assert np.allclose(got.arrays["H"], want.arrays["H"], rtol=1e-5)


def test_analyze_model_with_order3_and_other_partitions(tiny_run):
    model, _ = load_checkpoint(tiny_run / "epoch_0002.pt")
    batches, _ = analysis_batches(str(tiny_run.parent / "tiny.npz"), SETTINGS)
    summary, arrays = analyze_model(
        model, batches, AnalysisSettings(samples=64, partition="by_layer", order3=True)
    )
    assert summary["labels"] == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert arrays["d3"].shape == (5,) and arrays["H"].shape == (5, 5)
    ref = hl.summary_tensor(
        model, F.cross_entropy, batches, 3, hl.Partition.by_layer(model), diagonal=True
    )
    assert np.allclose(arrays["d3"], ref.double().numpy(), rtol=1e-5)


CLAIM_WORKER = """
import sys, time, torch
torch.set_num_threads(1)
from hessian_lens.analyze import AnalysisSettings, analyze_run
run, log, hang = sys.argv[1], sys.argv[2], sys.argv[3] == "hang"

def progress(fraction, message):
    if hang and ": batch" in message:
        time.sleep(3600)  # killed while holding its claim

done = analyze_run(run, AnalysisSettings(samples=64, batch_size=32), progress=progress,
                   lease_s=2.0, poll_s=0.3)
with open(log, "a") as f:
    f.write(f"{done['computed']}\\n")
"""


def test_four_processes_and_a_kill_compute_each_checkpoint_once(tmp_path, tiny_npz):
    """Claims with leases: 4 analysers share a run; one is killed -9 holding a claim, its
    checkpoint is taken over when the lease expires; nothing lost, nothing done twice."""
    import os
    import signal
    import subprocess
    import sys
    import time

    run = make_run(tmp_path / "run", tiny_npz, epochs=5, seed=4)
    script = tmp_path / "worker.py"
    script.write_text(CLAIM_WORKER)
    log = tmp_path / "computed.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

    def start(mode):
        return subprocess.Popen([sys.executable, str(script), str(run), str(log), mode], env=env)

    victim = start("hang")
    store_path = run / "analysis.sqlite"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if store_path.exists() and ResultStore(store_path).claims():
            break
        time.sleep(0.2)
    assert ResultStore(store_path).claims(), "the victim never claimed a checkpoint"
    others = [start("work") for _ in range(3)]
    time.sleep(1.0)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(30) == -signal.SIGKILL
    assert [p.wait(180) for p in others] == [0, 0, 0]
    rows = ResultStore(store_path).records(arrays=False)
    assert [r.checkpoint for r in rows] == [f"epoch_{e:04d}.pt" for e in range(6)]
    counts = [int(line) for line in log.read_text().split()]
    assert sum(counts) == 6, counts  # every checkpoint computed once, the killed one retaken
    assert ResultStore(store_path).claims() == []


def test_measures_and_gauss_newton_are_stored_with_their_conventions(tiny_run):
    """analyze --measures: the record holds what block_norms / block_spectra give."""
    from hessian_lens.measures import block_norms
    from hessian_lens.spectra import block_spectra

    settings = AnalysisSettings(
        samples=32,
        batch_size=32,
        measures=("frobenius", "spectra"),
        probes=4,
        steps=6,
        slq_probes=1,
        curvature="ggn",
    )
    analyze_run(tiny_run, settings, progress=False, epochs=[1])
    (record,) = [
        r for r in ResultStore(tiny_run / "analysis.sqlite").records() if r.settings.get("measures")
    ]
    assert record.settings["curvature"] == "ggn" and record.settings["measures"] == [
        "frobenius",
        "spectra",
    ]
    model, _ = load_checkpoint(tiny_run / "epoch_0001.pt")
    batches, _ = analysis_batches(str(tiny_run.parent / "tiny.npz"), settings)
    bn = block_norms(model, F.cross_entropy, batches, probes=4, seed=0, curvature="ggn")
    assert np.allclose(record.arrays["trace"], bn.trace.numpy(), rtol=1e-5)
    assert np.allclose(
        record.arrays["frobenius_se"], bn.frobenius_se.numpy(), rtol=1e-4, atol=1e-12
    )
    sp = block_spectra(model, F.cross_entropy, batches, steps=6, probes=1, seed=0, curvature="ggn")
    assert record.arrays["spectrum_nodes"].shape == (10, 1, 6)
    assert record.summary["measures"]["lmax"] == pytest.approx(sp.lmax, rel=1e-4)
    assert record.summary["measures"]["js0"] >= 0 and record.summary["curvature"] == "ggn"
    ggn = hl.pseudo_hessian(model, F.cross_entropy, batches, curvature="ggn")
    assert np.allclose(record.arrays["H"], ggn.H.double().numpy(), rtol=1e-5)


def test_default_settings_keep_the_keys_of_earlier_records():
    """Records stored before curvature= and measures= existed keep their keys."""
    key = SETTINGS.key("abc")
    assert not {"curvature", "measures", "probes", "steps", "slq_probes"} & set(key)
    with pytest.raises(ValueError, match="unknown measure"):
        AnalysisSettings(measures=("trace", "hutchinson"))
    with pytest.raises(ValueError, match="steps x slq_probes"):
        AnalysisSettings(measures=("spectra",), steps=1000, slq_probes=256)
