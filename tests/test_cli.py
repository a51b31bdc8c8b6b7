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
