"""The command line: train -> analyze -> inspect, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hessian_lens.cli import main
from hessian_lens.store import ResultStore
from tests.conftest import REPO


def test_train_analyze_inspect(tmp_path, tiny_npz, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data-root",
                str(tiny_npz),
                "--train-size",
                "64",
                "--test-size",
                "32",
                "--epochs",
                "1",
                "--batch-size",
                "32",
                "--device",
                "cpu",
                "--out",
                str(out),
                "--no-progress",
                "--model-kwargs",
                '{"activation": "relu"}',
            ]
        )
        == 0
    )
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["model"]["kwargs"] == {"activation": "relu"}
    assert manifest["command"].startswith("python -m hessian_lens ")
    assert (
        main(
            [
                "analyze",
                str(out),
                "--samples",
                "32",
                "--partition",
                "by_layer",
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "2 checkpoints analysed, 0 already" in capsys.readouterr().out
    assert ResultStore(out / "analysis.sqlite").settings()[0]["partition"] == "by_layer"
    assert main(["inspect", str(out / "epoch_0001.pt")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"]["name"] == "lenet5" and info["parameters"] == 62006


def test_errors_are_one_line_with_status_2(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hessian-lens inspect: error: bad.pt is not a checkpoint")
    assert (
        main(
            [
                "train",
                "--data-root",
                str(tmp_path / "none.npz"),
                "--out",
                str(tmp_path / "r"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "--data npz:PATH.npz" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--out", "x", "--model-kwargs", "[1]"])


def test_module_entry_point_help():
    out = subprocess.run(
        [sys.executable, "-m", "hessian_lens", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "train" in out and "analyze" in out and "inspect" in out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    import os

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(_free_port()),
        "-m",
        "hessian_lens",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("shard", ["checkpoints", "data"])
def test_torchrun_two_gloo_ranks_fill_the_store_as_one_process(tmp_path, tiny_npz, shard):
    """2 CPU ranks (gloo): every checkpoint once, records equal to a single process's."""
    import shutil

    import numpy as np

    from tests.apptools import make_run

    run = make_run(tmp_path / "run", tiny_npz, epochs=2, seed=7)
    single = tmp_path / "single"
    shutil.copytree(run, single)
    common = [
        "--samples",
        "63",
        "--batch-size",
        "16",
        "--dtype",
        "float64",
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(["analyze", str(single), *common]) == 0
    done = _torchrun(["analyze", str(run), *common, "--shard", shard])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "3 checkpoints analysed, 0 already" in done.stdout
    assert f"(2 ranks, --shard {shard})" in done.stdout
    got = ResultStore(run / "analysis.sqlite").records()
    want = ResultStore(single / "analysis.sqlite").records()
    assert [r.checkpoint for r in got] == [r.checkpoint for r in want]
    for a, b in zip(got, want, strict=True):
        assert a.settings == b.settings and a.summary["n_samples"] == 63
        for name in ("H", "g", "Hinv"):
            np.testing.assert_allclose(a.arrays[name], b.arrays[name], rtol=1e-10, atol=1e-14)


def test_analyze_measures_the_loss_the_run_was_trained_with(tmp_path, tiny_npz):
    out = tmp_path / "mse-run"
    common = ["--device", "cpu", "--no-progress"]
    train = ["train", "--data-root", str(tiny_npz), "--train-size", "32", "--test-size", "16"]
    assert main([*train, "--epochs", "0", "--loss", "mse", "--out", str(out), *common]) == 0
    assert main(["analyze", str(out), "--samples", "16", *common]) == 0
    assert main(["analyze", str(out), "--samples", "16", "--loss", "nll", *common]) == 0
    stored = ResultStore(out / "analysis.sqlite").records(arrays=False)
    assert sorted(r.summary["loss_fn"] for r in stored) == ["mse", "nll"]
