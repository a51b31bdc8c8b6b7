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
