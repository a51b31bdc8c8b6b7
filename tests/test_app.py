"""The dashboard pages through streamlit.testing.v1.AppTest (no browser)."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

import hessian_lens as hl
from hessian_lens import plots
from hessian_lens.checkpoint import save_checkpoint
from hessian_lens.registry import build_model
from hessian_lens.store import ResultStore
from tests.apptools import heatmap_z, make_analysed_run, make_run, plotly_specs
from tests.conftest import REPO

TIMEOUT = 120


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    return make_analysed_run(tmp_path_factory.mktemp("app"))


@pytest.fixture
def env(analysed, tmp_path, monkeypatch):
    run, npz = analysed
    monkeypatch.setenv("HESSIAN_LENS_RUNS", str(run.parent))
    monkeypatch.setenv("HESSIAN_LENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HESSIAN_LENS_DATA", str(npz))
    return run, npz


def page(name: str, run=None) -> AppTest:
    at = AppTest.from_file(str(REPO / name), default_timeout=TIMEOUT)
    if run is not None:
        at.session_state["run_path"] = str(run)
    return at.run()


def stored(run):
    return ResultStore(run / "analysis.sqlite").records()


def no_errors(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_home_lists_runs_with_cards(env):
    run, _ = env
    at = page("app.py", run)
    no_errors(at)
    text = " ".join(m.value for m in at.markdown)
    assert "tiny-run" in " ".join(h.value for h in at.subheader)
    assert "lenet5" in text and "Analysed** 3 checkpoints" in text
    assert len(plotly_specs(at)) >= 1  # training curves


def test_interactions_page_shows_the_stored_blocks(env):
    run, _ = env
    at = page("pages/1_Layer_interactions.py", run)
    no_errors(at)
    specs = plotly_specs(at)
    assert len(specs) == 2  # one row of WW, BB, WB for H and one for its inverse
    last = stored(run)[-1]
    blocks = plots.interaction_blocks(
        last.arrays["H"], last.summary["kinds"], last.summary["layers"]
    )
    assert np.allclose(heatmap_z(specs[0], 0), blocks["WW"].z)
    assert np.allclose(heatmap_z(specs[0], 2), blocks["WB"].z)
    for axis in ("coloraxis", "coloraxis2", "coloraxis3"):
        limits = specs[0]["layout"][axis]
        assert limits["cmin"] == -limits["cmax"] > -np.inf
    inv = plots.interaction_blocks(
        last.arrays["Hinv"], last.summary["kinds"], last.summary["layers"]
    )
    assert np.allclose(heatmap_z(specs[1], 0), inv["WW"].z)


def test_slider_changes_the_epoch_shown(env):
    run, _ = env
    at = page("pages/1_Layer_interactions.py", run)
    assert at.select_slider(key="interactions-epoch").value == "2"
    at.select_slider(key="interactions-epoch").set_value("0").run()
    no_errors(at)
    first = stored(run)[0]
    block = plots.interaction_blocks(
        first.arrays["H"], first.summary["kinds"], first.summary["layers"]
    )["BB"]
    assert np.allclose(heatmap_z(plotly_specs(at)[0], 1), block.z)
    assert any("epoch 0" in m.value for m in at.markdown)


def test_scales_views_and_same_range(env):
    run, _ = env
    at = page("pages/1_Layer_interactions.py", run)
    at.radio(key="interactions-view").set_value("full")
    at.radio(key="interactions-scale").set_value("normalized").run()
    no_errors(at)
    specs = plotly_specs(at)
    assert len(specs) == 2
    H = stored(run)[-1].arrays["H"]
    assert np.allclose(heatmap_z(specs[0]), plots.transform(H, "normalized"))
    at.toggle(key="interactions-same").set_value(True).run()
    top = max(np.abs(plots.transform(r.arrays["H"], "normalized")).max() for r in stored(run))
    assert plotly_specs(at)[0]["layout"]["coloraxis"]["cmax"] == pytest.approx(top)
    at.toggle(key="interactions-animate").set_value(True).run()
    no_errors(at)
    anim = plotly_specs(at)[-1]
    assert [f["name"] for f in anim["frames"]] == ["0", "1", "2"]
    assert len(at.get("download_button")) == 3


def test_block_diagonal_page_metrics_and_trends(env):
    run, _ = env
    at = page("pages/2_Block_diagonal.py", run)
    no_errors(at)
    m = stored(run)[-1].summary["compare"]["layer"]
    metrics = {x.label: x.value for x in at.metric}
    assert metrics["relative error"] == f"{m['rel_error']:.3f}"
    assert metrics["cos(η_full, η_bd)"] == f"{m['cos_eta']:.3f}"
    assert len(plotly_specs(at)) == 3  # side by side + two trend charts
    at.radio(key="blockdiag-by").set_value("kind").run()
    no_errors(at)
    m = stored(run)[-1].summary["compare"]["kind"]
    assert {x.label: x.value for x in at.metric}["relative error"] == f"{m['rel_error']:.3f}"


def upload(at: AppTest, name: str, data: bytes) -> AppTest:
    at.file_uploader[0].set_value((name, data, "application/octet-stream"))
    return at.run()


def test_inspect_good_upload_computes_then_comes_from_the_store(env):
    run, _ = env
    data = (run / "epoch_0001.pt").read_bytes()
    at = page("pages/3_Inspect_checkpoint.py")
    no_errors(at)
    upload(at, "epoch_0001.pt", data)
    no_errors(at)
    at.number_input(key="samples").set_value(100)
    at.button(key="compute").click().run()
    no_errors(at)
    assert len(plotly_specs(at)) >= 3  # H and inverse rows, block-diagonal comparison
    again = page("pages/3_Inspect_checkpoint.py")
    upload(again, "copy.pt", data)
    again.number_input(key="samples").set_value(100).run()
    no_errors(again)
    assert any("From the store" in c.value for c in again.caption)
    assert len(plotly_specs(again)) >= 3


def _bad_files(tmp_path) -> dict[str, tuple[bytes, str]]:
    torch.manual_seed(0)
    good = build_model("lenet5")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    files = {}
    files["text.pt"] = (b"hello, not a checkpoint", "not a checkpoint")
    files["evil.pt"] = (pickle.dumps({"state_dict": Evil()}, protocol=2), "pickled Python objects")
    path = tmp_path / "arch.pt"
    save_checkpoint(path, good, {"model": {"name": "transformer", "kwargs": {}}})
    files["arch.pt"] = (path.read_bytes(), "unknown architecture 'transformer'")
    path = tmp_path / "shape.pt"
    save_checkpoint(
        path, build_model("lenet5", num_classes=4), {"model": {"name": "lenet5", "kwargs": {}}}
    )
    files["shape.pt"] = (path.read_bytes(), "shape mismatch for fc3.weight")
    nan = build_model("lenet5")
    with torch.no_grad():
        nan.fc2.weight[0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_checkpoint(path, nan, {"model": {"name": "lenet5", "kwargs": {}}})
    files["nan.safetensors"] = (path.read_bytes(), "non-finite weights: fc2.weight")
    path = tmp_path / "good.pt"
    save_checkpoint(path, good, {"model": {"name": "lenet5", "kwargs": {}}})
    files["truncated.pt"] = (path.read_bytes()[:5000], "corrupt or truncated")
    return files


def test_inspect_bad_files_each_get_their_error(env, tmp_path):
    for name, (data, message) in _bad_files(tmp_path).items():
        at = upload(page("pages/3_Inspect_checkpoint.py"), name, data)
        assert not at.exception, name
        assert any(message in e.value for e in at.error), (name, [e.value for e in at.error])


def test_inspect_size_limit_and_missing_data(env, tmp_path, monkeypatch):
    run, _ = env
    data = (run / "epoch_0000.pt").read_bytes()
    monkeypatch.setenv("HESSIAN_LENS_MAX_UPLOAD_MB", "0.1")
    at = upload(page("pages/3_Inspect_checkpoint.py"), "big.pt", data)
    assert any("over the 0.1 MB limit" in e.value for e in at.error)
    monkeypatch.delenv("HESSIAN_LENS_MAX_UPLOAD_MB")
    at = upload(page("pages/3_Inspect_checkpoint.py"), "ok.pt", data)
    at.text_input(key="data-source").set_value(str(tmp_path / "nowhere.npz")).run()
    assert not at.exception
    assert any("was not found at" in e.value and "nowhere.npz" in e.value for e in at.error)
    assert not (tmp_path / "nowhere.npz").exists()


def test_bare_state_dict_with_chosen_architecture(env, tmp_path):
    mlp = build_model("mlp", sizes=[3072, 16, 10])
    path = tmp_path / "bare.pt"
    torch.save(mlp.state_dict(), path)
    at = upload(page("pages/3_Inspect_checkpoint.py"), "bare.pt", path.read_bytes())
    assert any("bare state_dict" in e.value for e in at.error)
    at.selectbox(key="arch-name").set_value("mlp")
    at.text_input(key="arch-kwargs").set_value('{"sizes": [3072, 16, 10]}').run()
    no_errors(at)
    assert any("`mlp`" in s.value for s in at.success)


def test_optimizer_page(env, tmp_path, monkeypatch):
    run, npz = env
    root = tmp_path / "pn-runs"
    make_run(
        root / "pn-run",
        npz,
        epochs=1,
        batch_size=16,
        optimizer="partition-newton",
        lr=0.3,
        optimizer_kwargs={"period": 1, "average": 1},
    )
    monkeypatch.setenv("HESSIAN_LENS_RUNS", f"{run.parent},{root}")
    at = page("pages/4_Optimizer.py")
    no_errors(at)
    at.selectbox(key="optim-pn").set_value("pn-run").run()
    no_errors(at)
    titles = [s["layout"]["title"]["text"] for s in plotly_specs(at)]
    title = "per-group learning rates lr·η_s at each recomputation (× = clipped to 0)"
    rates = plotly_specs(at)[titles.index(title)]
    labels = hl.Partition.canonical(build_model("lenet5")).labels
    assert rates["data"][0]["type"] == "heatmap"
    assert rates["layout"]["yaxis"]["ticktext"] == labels  # one row per group
    log = json.loads((root / "pn-run" / "optimizer_log.json").read_text())
    updates = [e for e in log["entries"] if e.get("eta") is not None]
    assert len(rates["data"][0]["x"]) == len(updates)  # one column per recomputation
    at.multiselect(key="optim-runs").set_value(["tiny-run"]).run()
    no_errors(at)
    assert any("None of these runs used PartitionNewton" in i.value for i in at.info)
