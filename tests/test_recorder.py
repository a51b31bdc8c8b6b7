"""The Recorder: a run folder from a plain PyTorch loop, browsable without the model."""

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
import torch.nn.functional as F
from torch import nn

import hessian_lens as hl
from hessian_lens.runs import load_run
from hessian_lens.store import ResultStore


class OnlyInThisScript(nn.Module):
    """A model whose code the dashboard never sees."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))

    def forward(self, x):
        return self.body(x)


def loop(tmp_path, **kwargs):
    torch.manual_seed(0)
    model = OnlyInThisScript()
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    batches = [(x[:20], y[:20]), (x[20:], y[20:])]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with hl.Recorder(tmp_path / "run", model, F.cross_entropy, batches, **kwargs) as rec:
        rec.log(0, train_loss=float(F.cross_entropy(model(x), y)))
        for epoch in (1, 2, 3):
            for bx, by in batches:
                opt.zero_grad()
                F.cross_entropy(model(bx), by).backward()
                opt.step()
            rec.log(epoch, train_loss=torch.tensor(float(F.cross_entropy(model(x), y))))
    return model, batches, tmp_path / "run"


def test_recorder_writes_checkpoints_metrics_and_the_analysis(tmp_path):
    model, batches, run = loop(tmp_path, every=2)
    manifest = json.loads((run / "run.json").read_text())
    assert [h["epoch"] for h in manifest["history"]] == [0, 1, 2, 3]
    assert manifest["model"]["name"] == "user:OnlyInThisScript" and manifest["recorder"]
    assert sorted(p.name for p in run.glob("epoch_*.pt")) == [f"epoch_{e:04d}.pt" for e in range(4)]
    records = ResultStore(run / "analysis.sqlite").records()
    assert [r.epoch for r in records] == [0, 2]  # every=2: calls 0 and 2
    res = hl.pseudo_hessian(model, F.cross_entropy, batches)  # the final weights
    final = loop(tmp_path / "again", every=1)[2]
    last = ResultStore(final / "analysis.sqlite").records()[-1]
    np.testing.assert_allclose(last.arrays["H"], res.H.double().numpy(), rtol=1e-5, atol=1e-9)
    assert last.summary["labels"] == res.labels and last.summary["n_samples"] == 40


def test_the_dashboard_reads_a_recorder_run_without_the_model(tmp_path):
    _, _, run = loop(tmp_path)
    browsed = load_run(run)
    assert browsed.warnings == [] and len(browsed.records()) == 4
    assert browsed.history[-1]["train_loss"] < browsed.history[0]["train_loss"]


def test_recorder_refuses_bad_inputs(tmp_path):
    model = OnlyInThisScript()
    batch = (torch.randn(4, 6), torch.randint(0, 3, (4,)))
    with pytest.raises(ValueError, match="every"):
        hl.Recorder(tmp_path / "a", model, F.cross_entropy, batch, every=0)
    rec = hl.Recorder(tmp_path / "b", model, "cross_entropy", batch)
    with pytest.raises(ValueError, match="epoch must be a number"):
        rec.log(-1)
    with pytest.raises(TypeError, match="metric 'acc' must be a number"):
        rec.log(0, acc=[1, 2])
    rec.close()
    with pytest.raises(RuntimeError, match="closed"):
        rec.log(1)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "run.json").write_text(json.dumps({"name": "trained"}))
    with pytest.raises(ValueError, match="not written by a Recorder"):
        hl.Recorder(tmp_path / "c", model, F.cross_entropy, batch)


class OwnLoss(nn.Module):
    """A Hugging Face-style model: keyword inputs, a dict output with the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.fc = nn.Embedding(5, 4), nn.Linear(4, 5)

    def forward(self, input_ids, labels=None):
        logits = self.fc(torch.tanh(self.emb(input_ids)))
        return {"loss": F.cross_entropy(logits.flatten(0, 1), labels.flatten()), "logits": logits}


def test_recorder_with_dict_batches_the_models_own_loss_and_a_training_optimizer(tmp_path):
    torch.manual_seed(0)
    model = OwnLoss()
    ids = torch.randint(0, 5, (12, 3))
    batches = [{"input_ids": ids[:6], "labels": ids[:6]}, {"input_ids": ids[6:], "labels": ids[6:]}]
    opt = torch.optim.Adam(model.parameters(), lr=0.05)  # built before the Recorder analyses
    with hl.Recorder(tmp_path / "run", model, None, batches) as rec:
        first = rec.log(0)
        for _ in range(30):
            for b in batches:
                opt.zero_grad()
                model(**b)["loss"].backward()
                opt.step()
        last = rec.log(1)
    assert last.summary["loss"] < first.summary["loss"] - 0.2  # the analysis froze nothing
    res = hl.pseudo_hessian(
        model, None, {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    )
    np.testing.assert_allclose(last.arrays["H"], res.H.double().numpy(), rtol=1e-5, atol=1e-9)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["loss"] == "model"
    run = load_run(tmp_path / "run")
    assert run.store_path.exists() and not run.warnings and len(run.checkpoints) == 2


def test_recorder_refuses_a_shuffling_loader(tmp_path):
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=True
    )
    with pytest.raises(hl.DataChangedError, match="fixed_batches"):
        hl.Recorder(tmp_path / "run", OnlyInThisScript(), F.cross_entropy, loader).log(0)
    rec = hl.Recorder(
        tmp_path / "ok", OnlyInThisScript(), F.cross_entropy, hl.fixed_batches(loader)
    )
    assert rec.log(0).summary["n_samples"] == 32


def _mlp_run(path, npz, **kwargs):
    """A Recorder run of the built-in MLP measured on 32 images of an npz."""
    from hessian_lens.data import load_dataset

    torch.manual_seed(0)
    model = hl.build_model("mlp", sizes=[3072, 6, 10])
    batches = load_dataset(f"npz:{npz}").subset(32).batches(16)
    kw = {"architecture": "mlp", "architecture_kwargs": {"sizes": [3072, 6, 10]}, **kwargs}
    with hl.Recorder(path, model, F.cross_entropy, batches, **kw) as rec:
        rec.log(0)
    return path


def test_analyze_of_a_recorder_run_without_a_data_set_says_how_to_give_one(tmp_path, capsys):
    from hessian_lens import cli
    from tests.conftest import write_tiny_npz

    npz = write_tiny_npz(tmp_path / "tiny.npz")
    run = _mlp_run(tmp_path / "run", npz)
    assert cli.main(["analyze", str(run), "--samples", "16", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--data" in err and "data_spec=" in err, err
    assert "unknown data set" not in err
    args = ["analyze", str(run), "--samples", "16", "--no-progress", "--data", f"npz:{npz}"]
    assert cli.main(args) == 0  # as it says
    assert len(load_run(run).settings()) == 2  # the Recorder's analysis and this one


def test_a_recorder_given_its_data_set_records_it_and_analyze_reloads_it(tmp_path):
    from hessian_lens import cli
    from tests.conftest import write_tiny_npz

    npz = write_tiny_npz(tmp_path / "tiny.npz")
    run = _mlp_run(tmp_path / "run", npz, data_spec=f"npz:{npz}")
    assert json.loads((run / "run.json").read_text())["data"] == {"name": f"npz:{npz}"}
    assert cli.main(["analyze", str(run), "--samples", "16", "--no-progress"]) == 0
    assert len(load_run(run).settings()) == 2
    with pytest.raises(ValueError, match="data_source needs data_spec"):
        hl.Recorder(tmp_path / "other", nn.Linear(2, 2), F.mse_loss, [], data_source="x.npz")


def test_recorder_measures_reach_the_store_and_the_loggers(tmp_path):
    """Recorder(measures=...): lambda_max and tr(H) stored and sent to every logger."""
    from hessian_lens.measures import block_norms
    from hessian_lens.spectra import block_spectra

    class Collect:
        def __init__(self) -> None:
            self.records = []

        def log_record(self, record, step):
            self.records.append((record, step))

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    sink = Collect()
    with hl.Recorder(
        tmp_path / "run",
        model,
        F.cross_entropy,
        (x, y),
        loggers=[sink],
        measures=("trace", "lmax"),
        probes=4,
        steps=5,
    ) as rec:
        record = rec.log(0)
    from hessian_lens.integrations.loggers import curvature_scalars

    scalars = curvature_scalars(record.summary, record.arrays)
    bn = block_norms(model, F.cross_entropy, (x, y), probes=4, seed=0, frobenius=False)
    sp = block_spectra(model, F.cross_entropy, (x, y), steps=5, probes=1, seed=0, blocks=False)
    assert scalars["hessian/tr_H"] == pytest.approx(float(bn.trace.sum()), rel=1e-5)
    assert scalars["hessian/lambda_max"] == pytest.approx(sp.lmax, rel=1e-5)
    assert record.settings["measures"] == ["lmax", "trace"]
    assert sink.records and sink.records[0][0] is record
    with pytest.raises(ValueError, match="unknown measure"):
        hl.Recorder(tmp_path / "other", model, F.cross_entropy, (x, y), measures=("fisher",))


def test_keep_going_writes_the_error_to_the_run_logs_once_and_goes_on(tmp_path, caplog):
    """What the callbacks use: an analysis error never stops the loop."""
    torch.manual_seed(0)
    model = OnlyInThisScript()
    batch = (torch.randn(8, 6), torch.randint(0, 3, (8,)))

    def broken(out, t):
        raise RuntimeError("the loss broke")

    rec = hl.Recorder(tmp_path / "run", model, broken, batch, keep_going=True)
    with caplog.at_level("ERROR", logger="hessian_lens"):
        assert rec.log(0, train_loss=1.0) is None
        rec.log(1, train_loss=0.5)
        rec.log(2, train_loss=0.25)
    assert len([r for r in caplog.records if "analysis" in r.getMessage()]) == 1
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["state"] == "analysis failed" and "the loss broke" in manifest["error"]
    assert [h["epoch"] for h in manifest["history"]] == [0, 1, 2]  # checkpoints, metrics go on
    assert len(list((tmp_path / "run").glob("epoch_*.pt"))) == 3
    rec.close()
    run = load_run(tmp_path / "run")
    assert run.manifest.raw["state"] == "analysis failed" and not run.live()
    assert any("analysis failed: ValueError at epoch 0" in w for w in run.warnings)
    with pytest.raises(ValueError, match="the loss broke"):  # without keep_going: raised
        hl.Recorder(tmp_path / "raise", model, broken, batch).log(0)


def test_a_run_whose_writer_is_gone_is_never_live(tmp_path):
    from tests.conftest import REPO

    run, gate = tmp_path / "run", tmp_path / "gate"
    gate.mkdir()
    cmd = [sys.executable, "-m", "tests.live_writer", str(run), "3", "--gate", str(gate)]
    proc = subprocess.Popen(cmd, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not (run / "epoch_0001.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert load_run(run).live()  # the writer waits for its gate: alive
        writer = load_run(run).manifest.raw["writer"]
        assert writer["pid"] == proc.pid
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    browsed = load_run(run)
    assert browsed.manifest.raw["state"] == "recording"  # as the killed process left it
    assert not browsed.live()  # its files changed seconds ago, but the process is gone
