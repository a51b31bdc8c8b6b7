"""Training runs: the run folder, resuming, and a tiny run end to end through analysis."""

from __future__ import annotations

import json

import pytest
import torch

from hessian_lens.analyze import AnalysisSettings, analyze_run
from hessian_lens.checkpoint import CheckpointError, load_checkpoint
from hessian_lens.store import ResultStore
from hessian_lens.train import TrainConfig, train


def config(out, source, **kw) -> TrainConfig:
    base = {
        "out": str(out),
        "data_source": str(source),
        "train_size": 96,
        "test_size": 32,
        "epochs": 2,
        "batch_size": 32,
        "lr": 0.05,
        "momentum": 0.9,
        "seed": 3,
    }
    return TrainConfig(**{**base, **kw})


def test_run_folder_layout(tmp_path, tiny_npz):
    out = train(config(tmp_path / "run", tiny_npz), progress=False)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["epoch_0000.pt", "epoch_0001.pt", "epoch_0002.pt", "resume.pt", "run.json"]
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["model"] == {"name": "lenet5", "kwargs": {}}
    assert manifest["optimizer"]["name"] == "sgd" and manifest["optimizer"]["momentum"] == 0.9
    assert manifest["data"]["train_size"] == 96 and manifest["seed"] == 3
    assert set(manifest["versions"]) == {"python", "torch", "hessian_lens"}
    assert [h["epoch"] for h in manifest["history"]] == [0, 1, 2]
    assert all(0 <= h["test_acc"] <= 1 and h["train_loss"] > 0 for h in manifest["history"])
    _, meta = load_checkpoint(out / "epoch_0002.pt")
    assert meta["epoch"] == 2 and meta["metrics"]["test_acc"] == manifest["history"][2]["test_acc"]


def test_resume_gives_the_uninterrupted_trajectory(tmp_path, tiny_npz):
    straight = train(config(tmp_path / "a", tiny_npz, epochs=2), progress=False)
    train(config(tmp_path / "b", tiny_npz, epochs=1), progress=False)
    resumed = train(config(tmp_path / "b", tiny_npz, epochs=2), progress=False)
    a, _ = load_checkpoint(straight / "epoch_0002.pt")
    b, _ = load_checkpoint(resumed / "epoch_0002.pt")
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.allclose(x, y, atol=1e-6)
    history = json.loads((resumed / "run.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2]


def test_resume_with_other_settings_is_refused(tmp_path, tiny_npz):
    train(config(tmp_path / "r", tiny_npz, epochs=1), progress=False)
    with pytest.raises(CheckpointError, match=r"other settings \(lr\)"):
        train(config(tmp_path / "r", tiny_npz, epochs=2, lr=0.1), progress=False)


def test_adam_and_unknown_optimizer(tmp_path, tiny_npz):
    out = train(
        config(tmp_path / "adam", tiny_npz, epochs=1, optimizer="adam", lr=1e-3), progress=False
    )
    assert json.loads((out / "run.json").read_text())["optimizer"]["name"] == "adam"
    with pytest.raises(ValueError, match="unknown optimizer"):
        train(config(tmp_path / "x", tiny_npz, optimizer="lbfgs"), progress=False)


def test_divergence_is_reported(tmp_path, tiny_npz):
    with pytest.raises(FloatingPointError, match="diverged"):
        train(
            config(
                tmp_path / "d",
                tiny_npz,
                lr=1e38,
                momentum=0.0,
                model="mlp",
                model_kwargs={"sizes": [3072, 8, 10]},
            ),
            progress=False,
        )


def test_tiny_real_run_end_to_end(tmp_path, cifar_npz):
    """2 epochs on 512 real CIFAR-10 images -> analyze -> read back (well under a minute)."""
    out = train(
        config(tmp_path / "real", cifar_npz, train_size=512, test_size=256, batch_size=64, lr=0.01),
        progress=False,
    )
    settings = AnalysisSettings(samples=256, batch_size=128, order3=True)
    seen = []
    done = analyze_run(out, settings, progress=lambda f, msg: seen.append((f, msg)))
    assert done["computed"] == 3 and done["skipped"] == 0
    assert seen[-1][0] == 1.0 and all(0 <= f <= 1 for f, _ in seen)
    assert [f for f, _ in seen] == sorted(f for f, _ in seen)
    records = ResultStore(out / "analysis.sqlite").records()
    assert [r.epoch for r in records] == [0, 1, 2]
    for r in records:
        assert r.arrays["H"].shape == (10, 10) and r.arrays["d3"].shape == (10,)
        assert r.summary["labels"][0] == "conv1.weight"
        assert r.summary["n_samples"] == 256
    again = analyze_run(out, settings, progress=False)
    assert again["computed"] == 0 and again["skipped"] == 3


def test_partition_newton_run_logs_rates_and_resumes(tmp_path, tiny_npz):
    kw = {
        "optimizer": "partition-newton",
        "lr": 0.3,
        "optimizer_kwargs": {"period": 1, "average": 1},
        "lr_plateau": 0,
        "batch_size": 48,
    }
    straight = train(config(tmp_path / "pn", tiny_npz, epochs=2, **kw), progress=False)
    log = json.loads((straight / "optimizer_log.json").read_text())
    assert log["labels"][:2] == ["conv1.weight", "conv1.bias"]
    rates = [e for e in log["entries"] if e.get("eta") is not None]
    assert rates and all(len(e["eta"]) == 10 and min(e["eta"]) >= 0 for e in rates)
    history = json.loads((straight / "run.json").read_text())["history"]
    assert history[1]["curvature_seconds"] > 0 and history[1]["lr"] == 0.3
    train(config(tmp_path / "pn2", tiny_npz, epochs=1, **kw), progress=False)
    resumed = train(config(tmp_path / "pn2", tiny_npz, epochs=2, **kw), progress=False)
    a, _ = load_checkpoint(straight / "epoch_0002.pt")
    b, _ = load_checkpoint(resumed / "epoch_0002.pt")
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.allclose(x, y, atol=1e-5)


@pytest.mark.parametrize("momentum,expected", [(0.0, 0.0), (None, 0.9), (0.5, 0.5)])
def test_partition_newton_gets_the_momentum_asked_for(tmp_path, tiny_npz, momentum, expected):
    """--momentum 0 once became 0.9 (``config.momentum or 0.9``); run.json records what ran."""
    out = train(
        config(
            tmp_path / "pn",
            tiny_npz,
            epochs=1,
            optimizer="partition-newton",
            lr=0.3,
            momentum=momentum,
            optimizer_kwargs={"period": 1, "average": 1},
        ),
        progress=False,
    )
    recorded = json.loads((out / "run.json").read_text())["optimizer"]
    assert recorded["momentum"] == expected
    state = torch.load(out / "resume.pt", weights_only=True)["optimizer"]
    assert state["partition_newton"]["config"]["momentum"] == expected


def test_run_records_init_split_curvature_and_fractional_checkpoints(tmp_path, tiny_npz):
    out = train(
        config(
            tmp_path / "r",
            tiny_npz,
            epochs=2,
            init="paper",
            val_size=20,
            optimizer="partition-newton",
            lr=0.3,
            checkpoints_at=[0.5],
            optimizer_kwargs={"period": 1, "average": 1},
        ),
        progress=False,
    )
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["init"] == "paper"
    assert manifest["data"]["val_size"] == 20 and manifest["data"]["train_size"] == 96
    assert manifest["data"]["curvature"].startswith("separate")
    assert [h["epoch"] for h in manifest["history"]] == [0, 0.5, 1, 2]
    assert all("val_acc" in h for h in manifest["history"])
    assert (out / "epoch_0000.500.pt").is_file()
    _, meta = load_checkpoint(out / "epoch_0000.500.pt")
    assert meta["epoch"] == 0.5


def test_separate_curvature_data_feeds_the_curvature_closure(tmp_path, tiny_npz):
    """separate: H̄ from the fixed unshuffled curvature batches, not the training minibatch."""
    kw = {
        "epochs": 1,
        "optimizer": "partition-newton",
        "lr": 0.3,
        "curvature_size": 40,
        "optimizer_kwargs": {"period": 1, "average": 1},
    }
    logs = {}
    for mode in ("separate", "same"):
        out = train(config(tmp_path / mode, tiny_npz, curvature_data=mode, **kw), progress=False)
        entries = json.loads((out / "optimizer_log.json").read_text())["entries"]
        logs[mode] = [e["g"] for e in entries if "g" in e]
    assert len(logs["separate"]) == len(logs["same"]) == 3
    assert logs["separate"][0] != logs["same"][0]


def _pn_losses(tmp_path, npz, init: str, seed: int) -> list[float]:
    """Per-step losses of 40 PartitionNewton steps (paper defaults) on real CIFAR-10."""
    out = tmp_path / f"{init}-{seed}"
    cfg = TrainConfig(
        out=str(out),
        model="lenet5",
        init=init,
        data_source=str(npz),
        train_size=4000,
        test_size=100,
        epochs=1,
        batch_size=100,
        optimizer="partition-newton",
        lr=0.3,
        seed=seed,
        optimizer_kwargs={"hard_case": "keep_previous"},
    )
    try:
        train(cfg, progress=False)
    except FloatingPointError:
        return [float("inf")]
    entries = json.loads((out / "optimizer_log.json").read_text())["entries"]
    return [e["loss"] for e in entries if "loss" in e]


def test_paper_init_and_paper_defaults_do_not_diverge(tmp_path, cifar_npz):
    """The paper's defaults (lr 0.3, lambda_int 1, period 10, average 3, separate curvature
    batch) with the author's initialisation: no divergence on 3 seeds; with PyTorch's default
    initialisation the same first updates blow the loss up (seed 0)."""
    for seed in (0, 1, 2):
        losses = _pn_losses(tmp_path, cifar_npz, "paper", seed)
        assert len(losses) == 40 and max(losses) < 3.0, (seed, max(losses))
        assert sum(losses[-5:]) / 5 < losses[0]  # and the loss went down
    torch_init = _pn_losses(tmp_path, cifar_npz, "torch", 0)
    assert max(torch_init) > 100.0  # measured: 2.3 -> ~8e4 within 20 steps of the first update


def test_gpt_on_text_trains_records_the_corpus_and_resumes(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 15)
    cfg = {
        "out": str(tmp_path / "gpt"),
        "model": "gpt",
        "model_kwargs": {"layers": 1, "heads": 2, "width": 16, "context": 32},
        "data": f"text:{corpus}@32",
        "loss": "next_token",
        "train_size": 48,
        "batch_size": 16,
        "optimizer": "adam",
        "lr": 0.01,
    }
    train(TrainConfig(**cfg, epochs=1), progress=False)
    out = train(TrainConfig(**cfg, epochs=2), progress=False)
    manifest = json.loads((out / "run.json").read_text())
    data = manifest["data"]
    assert data["corpus"]["files"] == 12 and data["corpus"]["context"] == 32
    assert data["corpus"]["bytes_train"] + data["corpus"]["bytes_test"] == data["corpus"]["bytes"]
    assert data["input_shape"] == [32] and data["train_size"] == 48 and "normalization" not in data
    history = manifest["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[2]["train_loss"] < history[0]["train_loss"] < 6.0  # starts near log(256)
    assert all(0 < h["test_acc"] <= 1 for h in history[1:])  # token accuracy, not 0
    model, _ = load_checkpoint(out / "epoch_0002.pt")
    assert model(torch.zeros(1, 32, dtype=torch.long)).shape == (1, 32, 256)


class _Payload:
    """Any class: its pickle names a global beyond tensors."""


def test_a_hostile_resume_file_is_refused_before_torch_loads_it(tmp_path, tiny_npz):
    out = train(config(tmp_path / "r", tiny_npz, epochs=1), progress=False)
    torch.save({"identity": "{}", "payload": _Payload()}, out / "resume.pt")
    with pytest.raises(CheckpointError, match="beyond tensors"):
        train(config(tmp_path / "r", tiny_npz, epochs=2), progress=False)


def test_augmented_runs_resume_on_the_same_trajectory_and_differ_from_plain(tmp_path, tiny_npz):
    aug = {"augment": "crop+flip"}
    straight = train(config(tmp_path / "a", tiny_npz, **aug), progress=False)
    train(config(tmp_path / "b", tiny_npz, epochs=1, **aug), progress=False)
    resumed = train(config(tmp_path / "b", tiny_npz, **aug), progress=False)
    plain = train(config(tmp_path / "c", tiny_npz), progress=False)
    a, b, c = (
        load_checkpoint(r / "epoch_0002.pt")[0].state_dict() for r in (straight, resumed, plain)
    )
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not all(torch.allclose(a[k], c[k], atol=1e-3) for k in a)
    assert json.loads((resumed / "run.json").read_text())["data"]["augment"] == "crop+flip"
    with pytest.raises(CheckpointError, match=r"other settings \(augment\)"):
        train(config(tmp_path / "b", tiny_npz, epochs=3), progress=False)
    with pytest.raises(ValueError, match="--augment must be one of"):
        train(config(tmp_path / "d", tiny_npz, augment="mixup"), progress=False)
