"""A run being written: pages follow it, the slider extends itself, reads are never partial."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from hessian_lens import runfolder
from hessian_lens.runs import load_run
from hessian_lens.store import ResultStore, StoreError
from tests.apptools import no_errors, open_page
from tests.conftest import REPO

INTERACTIONS = "views/Layer_interactions.py"


def start_writer(run, epochs, gate=None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tests.live_writer", str(run), str(epochs)]
    return subprocess.Popen([*cmd, *(["--gate", str(gate)] if gate else [])], cwd=REPO)


def wait_for_epochs(run, count, proc, timeout=120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() in (None, 0), "the writer failed"
        store = run / "analysis.sqlite"
        if store.exists():
            try:
                if len(ResultStore.reader(store).records(arrays=False)) >= count:
                    return
            except StoreError:
                pass  # being created
        time.sleep(0.1)
    raise TimeoutError(f"the writer did not reach {count} analysed epochs")


def slider(at):
    (s,) = [s for s in at.select_slider if s.key == "interactions-epoch"]
    return s


@pytest.fixture
def live_env(tmp_path, monkeypatch):
    import streamlit as st

    monkeypatch.setenv("HESSIAN_LENS_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("HESSIAN_LENS_CACHE", str(tmp_path / "cache"))
    st.cache_data.clear()
    return tmp_path


def test_the_page_follows_a_run_being_written(live_env):
    run, gate = live_env / "runs" / "live-run", live_env / "gate"
    gate.mkdir()
    proc = start_writer(run, 3, gate)
    try:
        wait_for_epochs(run, 2, proc)
        at = open_page(INTERACTIONS, run)
        no_errors(at)
        assert any("● live" in c.value for c in at.caption)
        assert slider(at).options == ["0", "1"] and slider(at).value == "1"
        home = open_page("app.py", run)
        assert any("● live" in m.value for m in home.markdown)
        (card,) = [m.value for m in home.markdown if "user:" in m.value]  # its card
        assert "**Training** recorded by hl.Recorder" in card and "?" not in card, card
        assert "**Data** batches given to hl.Recorder" in card

        (gate / "go_2").touch()  # a new epoch lands: the slider, left at the last, follows
        wait_for_epochs(run, 3, proc)
        at.run()
        no_errors(at)
        assert slider(at).options == ["0", "1", "2"] and slider(at).value == "2"

        slider(at).set_value("0").run()  # an epoch picked by hand stays picked
        (gate / "go_3").touch()
        wait_for_epochs(run, 4, proc)
        at.run()
        assert slider(at).options == ["0", "1", "2", "3"] and slider(at).value == "0"
        assert proc.wait(60) == 0
    finally:
        proc.kill()
    at.run()  # the Recorder closed: finished, no longer live
    assert not any("● live" in c.value for c in at.caption)
    assert load_run(run).manifest.raw["state"] == "finished"


def test_reads_while_writing_are_always_whole(live_env):
    run = live_env / "runs" / "live-run"
    proc = start_writer(run, 4)
    seen, reads = 0, 0
    try:
        while proc.poll() is None or reads == 0:
            manifest = runfolder.read_manifest(run)
            assert manifest.warnings == []
            store = run / "analysis.sqlite"
            if not store.exists():
                time.sleep(0.05)
                continue
            try:
                recs = ResultStore.reader(store).records()
            except StoreError:
                continue  # the file is being created (no table yet)
            reads += 1
            assert len(recs) >= seen  # rows only ever appear, whole
            seen = len(recs)
            time.sleep(0.05)  # leave the writer the CPU
            for rec in recs:
                S = len(rec.summary["labels"])
                assert rec.arrays["H"].shape == (S, S) and rec.arrays["Hinv"].shape == (S, S)
                np.testing.assert_allclose(rec.arrays["H"], rec.arrays["H"].T, atol=1e-9)
        assert proc.wait(60) == 0
    finally:
        proc.kill()
    assert reads > 3 and len(ResultStore.reader(run / "analysis.sqlite").records()) == 5


def test_a_training_run_is_live_while_it_trains_and_the_optimizer_page_follows_it(
    live_env, monkeypatch
):
    from tests.apptools import make_pn_run
    from tests.conftest import write_tiny_npz

    states = []
    real = runfolder.write_manifest
    monkeypatch.setattr(
        runfolder, "write_manifest", lambda path, m: states.append(m.get("state")) or real(path, m)
    )
    run = make_pn_run(live_env / "runs" / "pn-live", write_tiny_npz(live_env / "d.npz"))
    assert states[0] == "recording" and states[-1] == "finished", states
    assert not load_run(run).live()
    manifest = runfolder.read_manifest(run).raw
    runfolder.write_manifest(run, {**manifest, "state": "recording"})  # as if still training
    for page in ("views/Optimizer.py", "views/Paper.py"):
        at = open_page(page)
        no_errors(at)
        assert any("● live" in c.value and "pn-live" in c.value for c in at.caption), page
    runfolder.write_manifest(run, {**manifest, "state": "finished"})
    at = open_page("views/Optimizer.py")
    assert not any("● live" in c.value for c in at.caption)
