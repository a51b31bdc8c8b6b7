"""Curvature scalars and heatmaps sent to TensorBoard (real SummaryWriter, events read back)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import hessian_lens as hl
from hessian_lens.integrations.loggers import as_logger, curvature_scalars, heatmap_images
from hessian_lens.store import ResultStore
from tests.recorded import make_recorder_run, tiny_data, tiny_net


def events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_recorder_sends_scalars_and_heatmaps_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tb"))
    run = make_recorder_run(tmp_path / "run", epochs=2, loggers=[writer])
    writer.close()
    acc = events(tmp_path / "tb")
    records = ResultStore(run / "analysis.sqlite").records()
    off = acc.Scalars("hessian/off_block_H")
    assert [e.step for e in off] == [0, 1, 2]
    for event, rec in zip(off, records, strict=True):
        assert event.value == pytest.approx(rec.summary["compare"]["layer"]["off_share_H"])
    trace = acc.Scalars("hessian/trace")[-1].value
    assert trace == pytest.approx(np.trace(records[-1].arrays["H"]), rel=1e-6)
    norm = acc.Scalars("hessian/grad_norm")[-1].value
    assert norm == pytest.approx(np.linalg.norm(records[-1].arrays["g"]), rel=1e-6)
    for tag in ("hessian/spread", "hessian/condition", "hessian/off_block_Hinv"):
        assert len(acc.Scalars(tag)) == 3
    image = acc.Images("hessian/H")[-1]  # a labelled figure, not a bitmap of the cells
    drawn = heatmap_images(records[-1].arrays, records[-1].summary["labels"])["hessian/H"]
    with Image.open(io.BytesIO(image.encoded_image_string)) as im:
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), drawn)
    assert image.height > image.width > 200  # names under the matrix, and its colour bar


def test_the_direction_norms_are_stored_and_the_spread_follows_its_formula(tmp_path):
    run = make_recorder_run(tmp_path / "run", epochs=1)
    rec = ResultStore(run / "analysis.sqlite").records()[-1]
    # u = the gradient: gbar_s = grad L . U^s = |U^s|^2
    np.testing.assert_allclose(rec.arrays["u_sq"], rec.arrays["g"], rtol=1e-5)
    r = np.diag(rec.arrays["H"]) / rec.arrays["u_sq"]
    spread = curvature_scalars(rec.summary, rec.arrays)["hessian/spread"]
    assert spread == pytest.approx(np.log10(np.abs(r[r != 0])).std())
    assert spread > 0.1  # the groups of this net differ (not a constant)


def test_a_given_direction_is_analysed_and_stored_apart(tmp_path):
    model, batches = tiny_net(), tiny_data()
    u = [torch.randn_like(p) for p in model.parameters()]
    with hl.Recorder(tmp_path / "run", model, F.cross_entropy, batches) as rec:
        got = rec.log(0, direction=u)
    want = hl.pseudo_hessian(model, F.cross_entropy, batches, direction=u)
    np.testing.assert_allclose(got.arrays["H"], want.H.double().numpy(), rtol=1e-5, atol=1e-9)
    assert got.settings["direction"] == "given"
    squares = [float(t.pow(2).sum()) for t in u]  # canonical: one tensor a group
    np.testing.assert_allclose(got.arrays["u_sq"], squares, rtol=1e-5)


def test_an_unknown_logger_is_one_clear_error():
    with pytest.raises(TypeError, match="give a torch.utils.tensorboard.SummaryWriter"):
        as_logger(object())
    concave = curvature_scalars({}, {"H": -np.eye(2), "g": np.ones(2), "Hinv": -np.eye(2)})
    assert concave["hessian/spread"] == 0.0  # |c_s| alike
    assert concave["hessian/negative_curvature_groups"] == 2


def test_import_hessian_lens_does_not_import_the_frameworks():
    import subprocess
    import sys

    code = (
        "import sys, hessian_lens, hessian_lens.recorder, hessian_lens.integrations.loggers;"
        "print(sorted(m for m in ('lightning', 'transformers', 'tensorboard', 'wandb', 'aim',"
        " 'kaleido') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------- W&B, MLflow, Aim
def wandb_rows(folder) -> tuple[list[dict], list[tuple[str, str]]]:
    """The history rows and metric definitions an offline W&B run wrote (its .wandb file:
    LevelDB-style 32 KiB blocks of protobuf ``Record`` messages after a 7-byte header)."""
    import json
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = folder.glob("wandb/offline-run-*/run-*.wandb")
    raw, pos, part, out = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(raw):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header: padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        data, pos = raw[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 2):  # a full record, or the first piece of one
            part = data
        elif kind in (3, 4):
            part += data
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(part)
            out.append(rec)
    rows = [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        for r in out
        if r.WhichOneof("record_type") == "history"
    ]
    metrics = [
        (r.metric.name or r.metric.glob_name, r.metric.step_metric)
        for r in out
        if r.WhichOneof("record_type") == "metric"
    ]
    return rows, metrics


def test_wandb_files_the_curvature_under_its_own_step(tmp_path, monkeypatch):
    """Offline W&B, read back from its file: the training loop logs a loss per batch (the
    run's step passes 6), then epochs 0, 1, 2 of curvature arrive; all three are kept,
    against hessian/step (they used to be logged at steps 0-2, below the run's step: W&B
    dropped them)."""
    wandb = pytest.importorskip("wandb")
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(project="hessian-lens-test", dir=str(tmp_path))
    try:
        for i in range(7):
            run.log({"batch_loss": 1.0 / (i + 1)})
        recorded = make_recorder_run(tmp_path / "run", epochs=2, loggers=[run])
    finally:
        run.finish()
    rows, metrics = wandb_rows(tmp_path)
    assert ("hessian/*", "hessian/step") in metrics
    curvature = [r for r in rows if "hessian/trace" in r]
    assert [r["hessian/step"] for r in curvature] == [0, 1, 2]
    records = ResultStore.reader(recorded / "analysis.sqlite").records()
    for row, rec in zip(curvature, records, strict=True):
        assert row["hessian/trace"] == pytest.approx(np.trace(rec.arrays["H"]), rel=1e-6)
    assert [r["batch_loss"] for r in rows if "batch_loss" in r][-1] == pytest.approx(1 / 7)


def test_mlflow_gets_every_scalar_at_its_step_and_the_heatmaps(tmp_path, monkeypatch):
    """A local MLflow file store, read back with MlflowClient."""
    mlflow = pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # 3.x: kept for local use
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    try:
        with mlflow.start_run() as active:
            recorded = make_recorder_run(tmp_path / "run", epochs=2, loggers=[active])
        client = MlflowClient()
        records = ResultStore.reader(recorded / "analysis.sqlite").records()
        history = client.get_metric_history(active.info.run_id, "hessian/off_block_H")
        assert [m.step for m in history] == [0, 1, 2]
        for metric, rec in zip(history, records, strict=True):
            want = rec.summary["compare"]["layer"]["off_share_H"]
            assert metric.value == pytest.approx(want)
        norms = client.get_metric_history(active.info.run_id, "hessian/grad_norm")
        assert norms[-1].value == pytest.approx(np.linalg.norm(records[-1].arrays["g"]))
        images = [a.path for a in client.list_artifacts(active.info.run_id, "images")]
        assert sum(p.endswith(".png") and "hessian~H+step+2" in p for p in images) == 1
        assert sum(p.endswith(".png") for p in images) == 6  # H and Hinv at 3 steps
    finally:
        mlflow.set_tracking_uri("")


class FakeAimRun:
    """A faithful stand-in for ``aim.Run`` (aim 3.29 does not install beside this project:
    it pins filelock < 4 and python-dateutil < 3): ``track(value, name=, step=)`` recorded."""

    __module__ = "aim.sdk.run"

    def __init__(self) -> None:
        self.tracked: list[tuple[str, int, object]] = []

    def track(self, value, name: str, step: int) -> None:
        self.tracked.append((name, step, value))


def test_aim_is_sent_every_scalar_and_image_write_only(tmp_path, monkeypatch):
    import sys
    import types

    aim = types.ModuleType("aim")
    aim.Image = type("Image", (), {"__init__": lambda self, img: setattr(self, "pixels", img)})
    monkeypatch.setitem(sys.modules, "aim", aim)
    run = FakeAimRun()
    recorded = make_recorder_run(tmp_path / "run", epochs=1, loggers=[run])
    records = ResultStore.reader(recorded / "analysis.sqlite").records()
    traces = [(step, v) for name, step, v in run.tracked if name == "hessian/trace"]
    assert [s for s, _ in traces] == [0, 1]
    for (_, value), rec in zip(traces, records, strict=True):
        assert value == pytest.approx(np.trace(rec.arrays["H"]))
    images = [v for name, _, v in run.tracked if name == "hessian/H"]
    labels = records[-1].summary["labels"]
    want = heatmap_images(records[-1].arrays, labels)["hessian/H"]
    np.testing.assert_array_equal(images[-1].pixels, want)
