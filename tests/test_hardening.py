"""Issue 11 on the dashboard and around runs: bounded before the work, browsing never
writes, one bad folder spoils nothing.

Pages are driven through ``streamlit.testing.v1.AppTest`` (no browser). The reader-level
checks these rest on live in test_checkpoint.py, test_store.py, test_files.py,
test_runfolder.py and test_settings.py; the CLI's exit-2 matrix in test_cli_errors.py;
benchmarks/attacks.py measures every attempt against any checkout (docs/hardening.md).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from hessian_lens.analyze import AnalysisSettings, analyze_run
from hessian_lens.checkpoint import save_checkpoint
from hessian_lens.io.files import json_text_depth
from hessian_lens.registry import build_model
from hessian_lens.runfolder import read_optimizer_log
from hessian_lens.store import ResultStore, settings_key
from tests.apptools import make_analysed_run
from tests.conftest import REPO, write_tiny_npz

TIMEOUT = 180
LENET = {"model": {"name": "lenet5", "kwargs": {}}}


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """A 2-epoch LeNet-5 run, analysed (copied by each test that changes it)."""
    return make_analysed_run(tmp_path_factory.mktemp("hardening"))


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("HESSIAN_LENS_CACHE", str(tmp_path / "cache"))
    for name in ("HESSIAN_LENS_RUNS", "HESSIAN_LENS_DATA", "HESSIAN_LENS_MAX_UPLOAD_MB"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def copy_run(analysed, dest: Path) -> Path:
    run, _ = analysed
    shutil.copytree(run, dest)
    for extra in ("-wal", "-shm"):
        Path(f"{dest}/analysis.sqlite{extra}").unlink(missing_ok=True)
    return dest


def page(name: str, run: Path | None = None) -> AppTest:
    at = AppTest.from_file(str(REPO / name), default_timeout=TIMEOUT)
    if run is not None:
        at.session_state["run_path"] = str(run)
    return at.run()


def upload(at: AppTest, name: str, data: bytes) -> AppTest:
    at.file_uploader[0].set_value((name, data, "application/octet-stream"))
    return at.run()


def texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


def cards(at: AppTest) -> list[str]:
    return [h.value.removeprefix("▶ ") for h in at.subheader]


def lenet_bytes(tmp_path: Path, meta=LENET, seed: int = 0, name: str = "m.pt") -> bytes:
    torch.manual_seed(seed)
    save_checkpoint(tmp_path / name, build_model("lenet5"), meta)
    return (tmp_path / name).read_bytes()


# ---------------------------------------------------------------------------- item 1
def test_inspect_page_refuses_a_metadata_bomb_in_the_declared_arguments(env):
    bomb: object = "x"
    for _ in range(12):  # 10**12 leaves once written out; the old caption repr()-ed them
        bomb = [bomb] * 10
    path = env / "bomb.pt"
    torch.manual_seed(0)
    state = build_model("lenet5").state_dict()
    torch.save({"state_dict": state, "meta": {"model": {"name": "lenet5", "kwargs": bomb}}}, path)
    at = upload(page("views/Inspect_checkpoint.py"), "bomb.pt", path.read_bytes())
    assert not at.exception
    assert any("bomb.pt: its metadata is larger than 1 MB" in e for e in texts(at.error))
    assert sum(len(c) for c in texts(at.caption)) < 2000


# ---------------------------------------------------------------------------- item 2
def test_inspect_page_parses_an_upload_once(env, monkeypatch):
    loads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(1) or real(*a, **k))
    at = upload(page("views/Inspect_checkpoint.py"), "m.pt", lenet_bytes(env))
    assert any("`lenet5`" in s for s in texts(at.success)), texts(at.error)
    assert len(loads) == 1


# ---------------------------------------------------------------------------- item 3
def test_inspect_page_checks_typed_arguments_on_meta_before_allocating(env):
    path = env / "bare.pt"
    torch.save({"layers.0.weight": torch.zeros(4, 8), "layers.0.bias": torch.zeros(4)}, path)
    at = upload(page("views/Inspect_checkpoint.py"), "bare.pt", path.read_bytes())
    at.selectbox(key="arch-name").set_value("mlp")
    at.text_input(key="arch-kwargs").set_value('{"sizes": [30000, 30000]}').run()  # 3.6 GB
    assert not at.exception
    assert any("file (4, 8) vs model (30000, 30000)" in e for e in texts(at.error))
    at.text_input(key="arch-kwargs").set_value('{"sizes": [131072, 131072]}').run()  # 64 GB
    assert any("over the 1,000,000,000 parameters" in e for e in texts(at.error))


# ---------------------------------------------------------------------------- item 5
def test_interactions_page_refuses_a_store_blob_bomb_before_inflating(env, analysed, monkeypatch):
    run = copy_run(analysed, env / "runs" / "tiny-run")
    buf = io.BytesIO()
    np.savez_compressed(buf, H=np.zeros(10**7))  # 10 kB stored, 80 MB inflated
    with sqlite3.connect(run / "analysis.sqlite") as db:
        db.execute("UPDATE results SET arrays=?", (buf.getvalue(),))
    db.close()
    monkeypatch.setenv("HESSIAN_LENS_RUNS", str(run.parent))
    at = page("views/Layer_interactions.py", run)
    assert not at.exception
    assert any("larger than S = 10 groups can need" in e for e in texts(at.error))


def test_home_page_pages_and_filters_many_runs(env, monkeypatch):
    root = env / "runs"
    for i in range(25):
        folder = root / f"many-{i:02d}"
        folder.mkdir(parents=True)
        (folder / "run.json").write_text(json.dumps({"name": f"many-{i:02d}"}))
    monkeypatch.setenv("HESSIAN_LENS_RUNS", str(root))
    at = page("app.py")
    assert not at.exception and not at.error
    assert len(cards(at)) <= 10
    at.text_input(key="home-filter").set_value("many-2").run()
    assert sorted(cards(at)) == [f"many-{i}" for i in range(20, 25)]


def test_a_large_optimizer_log_is_thinned_and_parsed_once(env, monkeypatch):
    run = env / "runs" / "pn"
    run.mkdir(parents=True)
    history = [{"epoch": 1, "train_loss": 2.0, "test_acc": 0.1}]
    manifest = {"name": "pn", "optimizer": {"name": "partition-newton"}, "history": history}
    (run / "run.json").write_text(json.dumps(manifest))
    entries = []
    for step in range(30_000):
        entries.append({"step": step, "loss": 1.0 + 1 / (step + 1)})
        if step % 3 == 0:
            entries.append({"step": step, "eta": [0.1, 0.2], "lr": [0.3, 0.3]})
    (run / "optimizer_log.json").write_text(json.dumps({"labels": ["a", "b"], "entries": entries}))
    monkeypatch.setenv("HESSIAN_LENS_RUNS", str(run.parent))
    at = page("views/Optimizer.py")
    at.selectbox(key="optim-pn").set_value("pn").run()
    assert not at.exception and not at.error
    assert any("Log thinned to 4,000 of 40,000 entries" in c for c in texts(at.caption))
    rates = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    heatmaps = [s for s in rates if s["data"] and s["data"][0]["type"] == "heatmap"]
    assert heatmaps and len(heatmaps[0]["data"][0]["x"]) == 2000
    import hessian_lens.runfolder as runfolder

    monkeypatch.setattr(runfolder, "read_json", lambda *a: pytest.fail("parsed again"))
    log, _ = read_optimizer_log(run)  # the page's next render: from memory
    assert log["total_entries"] == 40_000


def test_json_depth_scan_handles_escapes_and_unterminated_strings():
    assert json_text_depth(r'["a\\", [["\"[[[", "\\\"]]"]]]') == 3
    assert json_text_depth('["unterminated [[[[') == 1
    assert json_text_depth(b'{"a": {"b": [1]}}') == 3
    assert json_text_depth("]]][[") == 0
    assert json_text_depth("[" * 100_000 + "]" * 100_000) == 100_000


# ---------------------------------------------------------------------------- item 6
def test_home_page_leaves_a_foreign_sqlite_file_untouched(env, analysed, monkeypatch):
    root = env / "runs"
    copy_run(analysed, root / "ours")
    theirs = root / "theirs"
    theirs.mkdir()
    (theirs / "run.json").write_text(json.dumps({"name": "theirs"}))
    db = sqlite3.connect(theirs / "analysis.sqlite")
    db.execute("CREATE TABLE users (name TEXT)")
    db.execute("INSERT INTO users VALUES ('alice')")
    db.commit()
    db.close()
    before = (theirs / "analysis.sqlite").read_bytes()
    monkeypatch.setenv("HESSIAN_LENS_RUNS", str(root))
    from hessian_lens.ui import common

    monkeypatch.setattr(common, "REPO_RUNS", root)  # only these runs: one page of cards
    at = page("app.py")
    assert not at.exception
    assert {"tiny-run", "theirs"} <= set(cards(at))  # the copy keeps its run.json's name
    assert any("is not a Hessian Lens store" in w for w in texts(at.warning))
    assert any("**Analysed** 3 checkpoints" in m for m in texts(at.markdown))
    assert (theirs / "analysis.sqlite").read_bytes() == before
    assert sorted(p.name for p in theirs.iterdir()) == ["analysis.sqlite", "run.json"]
    db = sqlite3.connect(f"file:{theirs / 'analysis.sqlite'}?mode=ro", uri=True)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["users"]
    db.close()


# ---------------------------------------------------------------------------- item 7
@pytest.fixture
def readonly_copy(analysed, tmp_path):
    """The analysed run and an empty cache, seen through a read-only bind mount."""
    src, ro = tmp_path / "src", tmp_path / "ro"
    copy_run(analysed, src / "runs" / "tiny-run")
    (src / "cache").mkdir()
    ro.mkdir()
    if subprocess.run(["mount", "--bind", str(src), str(ro)], capture_output=True).returncode:
        pytest.skip("cannot bind-mount here (needs root, as in CI)")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        yield ro
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_pages_work_on_a_read_only_mount(readonly_copy, monkeypatch):
    ro = readonly_copy
    with pytest.raises(OSError):
        (ro / "probe").write_text("x")
    run = ro / "runs" / "tiny-run"
    monkeypatch.setenv("HESSIAN_LENS_RUNS", str(run.parent))
    monkeypatch.setenv("HESSIAN_LENS_CACHE", str(ro / "cache"))
    from hessian_lens.ui import home as home_page

    monkeypatch.setattr(home_page, "PAGE_SIZE", 100)  # the shipped runs fill the first page
    home = page("app.py", run)
    assert not home.exception and not home.error, texts(home.error)
    assert any("**Analysed** 3 checkpoints" in m for m in texts(home.markdown))
    at = page("views/Layer_interactions.py", run)
    assert not at.exception and not at.error, texts(at.error)
    assert len(at.get("plotly_chart")) == 2


# ---------------------------------------------------------------------------- item 8
def test_inspect_data_field_never_creates_a_folder(env):
    at = upload(page("views/Inspect_checkpoint.py"), "m.pt", lenet_bytes(env))
    at.text_input(key="data-spec").set_value("cifar10")
    at.text_input(key="data-source").set_value(str(env / "nowhere" / "cifar")).run()
    assert not at.exception
    assert any("nowhere/cifar" in e and "not found" in e for e in texts(at.error))
    assert not (env / "nowhere").exists()


# ---------------------------------------------------------------------------- item 10
class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_refused_uploads_are_deleted_and_the_cache_is_bounded(env, monkeypatch):
    uploads = env / "cache" / "uploads"
    at = page("views/Inspect_checkpoint.py")
    assert str(uploads) in at.file_uploader[0].help  # says where uploads live
    upload(at, "evil.pt", pickle.dumps({"state_dict": Evil()}, protocol=2))
    assert any("pickled Python objects" in e for e in texts(at.error))
    upload(at, "text.pt", b"hello, not a checkpoint")
    assert any("not a checkpoint" in e for e in texts(at.error))
    assert list(uploads.iterdir()) == []
    monkeypatch.setenv("HESSIAN_LENS_CACHE_MB", "0.6")  # room for two LeNet-5 files
    for seed in range(4):
        upload(at, f"m{seed}.pt", lenet_bytes(env, seed=seed, name=f"m{seed}.pt"))
    assert len(list(uploads.iterdir())) == 2
    assert any(f"in {uploads}" in c for c in texts(at.caption))


def test_a_corrupt_results_cache_is_moved_aside(env, analysed, monkeypatch):
    _, npz = analysed
    monkeypatch.setenv("HESSIAN_LENS_DATA", str(npz))
    (env / "cache").mkdir()
    (env / "cache" / "inspect.sqlite").write_bytes(b"\x00garbage" * 1000)
    at = upload(page("views/Inspect_checkpoint.py"), "m.pt", lenet_bytes(env))
    assert not at.exception and not at.error, texts(at.error)
    assert any("was moved to" in w for w in texts(at.warning))
    names = sorted(p.name for p in (env / "cache").iterdir())
    assert "inspect.sqlite" in names and any(n.startswith("inspect.sqlite.broken-") for n in names)
    assert at.button(key="compute")  # the page goes on: ready to compute


# ---------------------------------------------------------------------------- item 11
def test_each_bad_run_folder_gets_its_own_warning(env, analysed, monkeypatch):
    root = env / "runs"
    copy_run(analysed, root / "a-good")
    bad = {
        "b-checkpoints-only": None,
        "c-list": "[1, 2, 3]",
        "d-not-json": "{not json",
        "e-int-name": json.dumps({"name": 5}),
        "f-no-epochs": json.dumps({"name": "f", "history": [{"train_loss": 1.0}, {"x": 2}]}),
        "g-model-list": json.dumps({"name": "g", "model": ["lenet5"]}),
        "h-garbage-store": json.dumps({"name": "h"}),
        "i-many-samples": json.dumps({"name": "i", "data": {"train_size": "many"}}),
    }
    for name, text in bad.items():
        (root / name).mkdir(parents=True)
        if text is not None:
            (root / name / "run.json").write_text(text)
    torch.manual_seed(0)
    save_checkpoint(root / "b-checkpoints-only" / "epoch_0000.pt", build_model("lenet5"), LENET)
    (root / "h-garbage-store" / "analysis.sqlite").write_bytes(b"\x00garbage" * 100)
    monkeypatch.setenv("HESSIAN_LENS_RUNS", str(root))
    at = page("app.py", root / "a-good")
    shown, warnings, markdown = [], [], []
    for number in (1, 2):  # 10 cards a page, the repository's own runs included
        at.number_input(key="home-page").set_value(number).run()
        assert not at.exception and not at.error, texts(at.error)
        shown += cards(at)
        warnings += texts(at.warning)
        markdown += texts(at.markdown)
    names = {"tiny-run", "b-checkpoints-only", "c-list", "d-not-json", "e-int-name"}
    names |= {"f", "g", "h", "i"}
    assert names <= set(shown), shown
    for what in ("holds a list", "not valid JSON", "'name' is a int", "without a numeric epoch"):
        assert any(what in w for w in warnings), what
    assert any("h-garbage-store/analysis.sqlite" in w for w in warnings)
    assert any("**Analysed** 3 checkpoints" in m for m in markdown)


@pytest.mark.parametrize("text_matches_key", [True, False])
def test_stored_settings_that_are_odd_are_messages(env, analysed, monkeypatch, text_matches_key):
    run = copy_run(analysed, env / "runs" / "tiny-run")
    settings = {"samples": "many"}
    key = settings_key(settings) if text_matches_key else "0123456789abcdef"
    with sqlite3.connect(run / "analysis.sqlite") as db:
        db.execute("UPDATE results SET settings=?, settings_key=?", (json.dumps(settings), key))
    db.close()
    monkeypatch.setenv("HESSIAN_LENS_RUNS", str(run.parent))
    at = page("views/Layer_interactions.py", run)
    assert not at.exception and not at.error, texts(at.error)
    if text_matches_key:
        assert len(at.get("plotly_chart")) == 2
    else:  # the listing offers only what can be shown
        assert any("has no analysis yet" in w for w in texts(at.warning))
        assert ResultStore.reader(run / "analysis.sqlite").settings() == []


def test_a_malformed_optimizer_log_is_a_warning(env, monkeypatch):
    run = env / "runs" / "pn"
    run.mkdir(parents=True)
    history = [{"epoch": 1, "train_loss": 2.0, "test_acc": 0.1}]
    (run / "run.json").write_text(json.dumps({"name": "pn", "history": history}))
    log = {"labels": ["a"], "entries": [{"step": "x"}, 5, {"step": 1, "eta": [1]}, {"loss": 2}]}
    (run / "optimizer_log.json").write_text(json.dumps(log))
    monkeypatch.setenv("HESSIAN_LENS_RUNS", str(run.parent))
    at = page("views/Optimizer.py")
    at.selectbox(key="optim-pn").set_value("pn").run()
    assert not at.exception and not at.error
    assert any("3 malformed entries skipped" in w for w in texts(at.warning))


# ---------------------------------------------------------------------------- item 12
def test_an_absurd_epoch_in_meta_is_stored_as_the_file_name_says(env):
    npz = write_tiny_npz(env / "tiny.npz", n_train=32, n_test=8)
    run = env / "run"
    torch.manual_seed(0)
    save_checkpoint(run / "epoch_0003.pt", build_model("lenet5"), {**LENET, "epoch": 10**30})
    settings = AnalysisSettings(samples=16, batch_size=16)
    done = analyze_run(run, settings, data_source=str(npz), progress=False)
    assert done["computed"] == 1
    assert [r.epoch for r in ResultStore.reader(run / "analysis.sqlite").records()] == [3]


def test_analyze_skips_a_fifo_and_dev_zero_named_like_checkpoints(env):
    npz = write_tiny_npz(env / "tiny.npz", n_train=32, n_test=8)
    run = env / "run"
    torch.manual_seed(0)
    save_checkpoint(run / "epoch_0001.pt", build_model("lenet5"), {**LENET, "epoch": 1})
    os.mkfifo(run / "epoch_0002.pt")
    (run / "epoch_0003.pt").symlink_to("/dev/zero")
    env_vars = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = ["analyze", str(run), "--data-root", str(npz), "--samples", "16", "--batch-size"]
    done = subprocess.run(
        [sys.executable, "-m", "hessian_lens", *args, "16", "--device", "cpu", "--no-progress"],
        cwd=REPO,
        env=env_vars,
        capture_output=True,
        text=True,
        timeout=240,  # reading either would never end
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 checkpoints analysed" in done.stdout


@pytest.mark.parametrize("value", ["inf", "abc", "-1"])
def test_a_bad_upload_limit_is_a_message_on_the_page(env, monkeypatch, value):
    monkeypatch.setenv("HESSIAN_LENS_MAX_UPLOAD_MB", value)
    at = page("views/Inspect_checkpoint.py")
    assert not at.exception
    assert [e for e in texts(at.error) if e.startswith("Settings: HESSIAN_LENS_MAX_UPLOAD_MB=")]
    assert not at.file_uploader  # nothing accepted under a limit that is not one
