"""The Lightning callback: a real (tiny, CPU) Trainer.fit writes a Recorder run folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hessian_lens as hl
from hessian_lens.store import ResultStore
from tests.recorded import tiny_data

pl = pytest.importorskip("lightning.pytorch")
from hessian_lens.integrations.lightning import HessianLensCallback  # noqa: E402


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)
        )

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2)


class Snapshots(pl.Callback):
    """The gradient before each optimizer step and the weights after it."""

    def __init__(self) -> None:
        self.grads, self.states = {}, {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        step = trainer.global_step + 1
        self.grads[step] = [p.grad.detach().clone() for p in pl_module.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        self.states[step] = {k: v.clone() for k, v in pl_module.state_dict().items()}


def fit(tmp_path, epochs=2, logger=False, trainer_kwargs=None, loss_fn=F.cross_entropy, **kwargs):
    batches = tiny_data()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(
            torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
        ),
        batch_size=10,
    )
    module, snaps = Tiny(), Snapshots()
    cb = HessianLensCallback(tmp_path / "run", batches, loss_fn, **kwargs)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[cb, snaps] if loss_fn != "none" else [snaps],
        **(trainer_kwargs or {}),
    )
    trainer.fit(module, loader, loader)
    return module, batches, snaps, tmp_path / "run"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Two epochs, analysed at each end (shared: one Trainer.fit for two tests)."""
    return fit(tmp_path_factory.mktemp("lightning"))


def test_fit_writes_the_recorder_run_folder(fitted):
    module, batches, _, run = fitted
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["recorder"] and manifest["model"]["name"] == "user:Tiny"
    history = manifest["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert {"train_loss", "test_acc"} <= set(history[-1])
    assert sorted(p.name for p in run.glob("epoch_*.pt")) == [f"epoch_{e:04d}.pt" for e in range(3)]
    recs = ResultStore(run / "analysis.sqlite").records()
    assert [r.epoch for r in recs] == [0, 1, 2]
    want = hl.pseudo_hessian(module, F.cross_entropy, batches)  # the final weights
    np.testing.assert_allclose(recs[-1].arrays["H"], want.H.double().numpy(), rtol=1e-5, atol=1e-9)


def test_every_n_steps_with_the_step_gradient(tmp_path):
    module, batches, snaps, run = fit(tmp_path, epochs=1, every_n_steps=2, step_gradient=True)
    recs = ResultStore(run / "analysis.sqlite").records()
    assert [r.epoch for r in recs] == [0.5, 1]  # 4 steps an epoch: after steps 2 and 4
    assert (run / "epoch_0000.pt").exists()  # the initialisation: checkpoint, no u to use
    assert all(r.settings["direction"] == "given" for r in recs)
    module.load_state_dict(snaps.states[2])  # the weights after step 2, u = step 2's gradient
    want = hl.pseudo_hessian(module, F.cross_entropy, batches, direction=snaps.grads[2])
    np.testing.assert_allclose(recs[0].arrays["H"], want.H.double().numpy(), rtol=1e-5, atol=1e-9)
    gbar = want.g.double().numpy()
    np.testing.assert_allclose(recs[0].arrays["g"], gbar, rtol=1e-5, atol=1e-9)


def test_epoch_ends_with_the_step_gradient_of_the_last_step(tmp_path):
    module, batches, snaps, run = fit(tmp_path, epochs=1, step_gradient=True)
    (rec,) = ResultStore(run / "analysis.sqlite").records()
    assert rec.epoch == 1 and rec.settings["direction"] == "given"
    module.load_state_dict(snaps.states[4])  # 4 steps: the epoch's last
    want = hl.pseudo_hessian(module, F.cross_entropy, batches, direction=snaps.grads[4])
    np.testing.assert_allclose(rec.arrays["H"], want.H.double().numpy(), rtol=1e-5, atol=1e-9)


PAGES = (
    "app.py",
    "views/Layer_interactions.py",
    "views/Block_diagonal.py",
    "views/Inspect_checkpoint.py",
    "views/Optimizer.py",
    "views/Paper.py",
    "views/Block_heterogeneity.py",
)


def test_the_run_opens_on_every_page(fitted, tmp_path, monkeypatch):
    import streamlit as st

    from tests.apptools import chart_keys, no_errors, open_page

    *_, run = fitted
    monkeypatch.setenv("HESSIAN_LENS_RUNS", str(run))
    monkeypatch.setenv("HESSIAN_LENS_CACHE", str(tmp_path / "cache"))
    st.cache_data.clear()
    from hessian_lens.ui import home

    monkeypatch.setattr(home, "PAGE_SIZE", 100)  # the shipped runs fill the first page
    drawn = {}
    for page in PAGES:
        at = open_page(page, run)
        no_errors(at)
        drawn[page] = chart_keys(at)
    assert "interactions-H" in drawn["views/Layer_interactions.py"]
    assert "blockdiag-side" in drawn["views/Block_diagonal.py"]
    assert "hetero-strip" in drawn["views/Block_heterogeneity.py"]
    assert any(k.startswith("curves-") and "run" in k for k in drawn["app.py"])


def test_the_trainers_tensorboard_logger_gets_the_curvature_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger

    from tests.test_loggers import events

    logger = TensorBoardLogger(str(tmp_path / "tb"), name="", version="")
    *_, run = fit(tmp_path, epochs=1, logger=logger)
    logger.experiment.flush()
    acc = events(tmp_path / "tb")
    recs = ResultStore(run / "analysis.sqlite").records()
    trace = acc.Scalars("hessian/trace")
    assert [e.step for e in trace] == [0, 4]  # the initialisation, then after 4 steps
    assert trace[-1].value == pytest.approx(np.trace(recs[-1].arrays["H"]), rel=1e-6)
    assert "hessian/Hinv" in acc.Tags()["images"]


def test_gradient_accumulation_records_each_optimizer_step_once(tmp_path):
    *_, run = fit(
        tmp_path, epochs=1, every_n_steps=1, trainer_kwargs={"accumulate_grad_batches": 2}
    )
    recs = ResultStore(run / "analysis.sqlite").records()
    assert [r.epoch for r in recs] == [0, 0.5, 1]  # 4 batches, 2 optimizer steps


def test_an_analysis_error_never_stops_training(tmp_path, caplog):
    """Written to the run ("analysis failed"), logged once; the weights as without the lens."""

    def broken(out, t):
        raise RuntimeError("the analysis broke")

    with caplog.at_level("ERROR", logger="hessian_lens"):
        module, *_, run = fit(tmp_path / "a", epochs=2, loss_fn=broken)
    assert len([r for r in caplog.records if "the analysis broke" in r.getMessage()]) == 1
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["state"] == "analysis failed" and "the analysis broke" in manifest["error"]
    assert [h["epoch"] for h in manifest["history"]] == [0, 1, 2]
    plain, *_ = fit(tmp_path / "b", epochs=2, loss_fn="none")  # no callback at all
    for p, q in zip(module.parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_run_folder_it_cannot_write_never_stops_training(tmp_path, caplog):
    (tmp_path / "run").write_text("a file where the run folder should be")
    with caplog.at_level("ERROR", logger="hessian_lens"):
        module, *_ = fit(tmp_path, epochs=1)
    (record,) = [r for r in caplog.records if "stopped recording" in r.getMessage()]
    assert "is a file" in record.getMessage()
    plain, *_ = fit(tmp_path / "b", epochs=1, loss_fn="none")
    for p, q in zip(module.parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q)
