"""Issue 11, the CLI: every bad input exits with status 2 and one line saying what to do.

Each case runs ``python -m hessian_lens`` in a fresh interpreter (warnings and tracebacks
reach stderr as a user sees them) and checks: exit status 2, exactly one line on stderr, no
traceback, and nothing created or removed in the case's folder (no run folder, no store, no
cache). Items 1, 4, 9 and 13 of the issue; the reader-level checks live in
test_checkpoint.py, test_data_sets.py and test_analyze.py. An empty or garbage npz was
already one line and status 2 at fe81ed9 (test_data.py::test_malformed_npz).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from hessian_lens.checkpoint import save_checkpoint
from hessian_lens.registry import build_model
from tests.conftest import REPO, write_tiny_npz

TRAIN = ["train", "--epochs", "1", "--train-size", "32", "--test-size", "16", "--batch-size"]
TRAIN += ["16", "--device", "cpu", "--no-progress"]
LENET = {"model": {"name": "lenet5", "kwargs": {}}}


def npz(path: Path, n: int = 64, shape=(32, 32, 3), labels=None) -> Path:
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (n, *shape), dtype=np.uint8),
        y_train=rng.integers(0, 10, n) if labels is None else labels,
        x_test=rng.integers(0, 256, (n // 2, *shape), dtype=np.uint8),
        y_test=rng.integers(0, 10, n // 2),
    )
    return path


def lenet_run(tmp: Path) -> Path:
    """A run folder: one LeNet-5 checkpoint, no store yet."""
    run = tmp / "run"
    torch.manual_seed(0)
    save_checkpoint(run / "epoch_0001.pt", build_model("lenet5"), {**LENET, "epoch": 1})
    return run


def train(data: Callable[[Path], Path] | None, *more: str, out: str = "out"):
    def args(tmp: Path) -> list[str]:
        root = data(tmp) if data else write_tiny_npz(tmp / "tiny.npz")
        return [*TRAIN, "--data-root", str(root), "--out", str(tmp / out), *more]

    return args


def analyze_with(labels: np.ndarray):
    def args(tmp: Path) -> list[str]:
        run, bad = lenet_run(tmp), npz(tmp / "bad.npz", labels=labels)
        return ["analyze", str(run), "--data-root", str(bad), "--samples", "32", "--device"]

    return lambda tmp: [*args(tmp), "cpu", "--no-progress"]


def inspect_meta(meta_of: Callable[[], object], state: Callable[[], dict] | None = None):
    def args(tmp: Path) -> list[str]:
        torch.manual_seed(0)
        sd = state() if state else build_model("lenet5").state_dict()
        torch.save({"state_dict": sd, "meta": meta_of()}, tmp / "file.pt")
        return ["inspect", str(tmp / "file.pt")]

    return args


def memo_bomb(levels: int = 12):
    bomb: object = "x"
    for _ in range(levels):
        bomb = [bomb] * 10
    return bomb


def sparse_state() -> dict:
    sd = build_model("lenet5").state_dict()
    sd["fc3.bias"] = torch.zeros(10).to_sparse()
    return sd


def file_in_the_way(tmp: Path, out: str) -> list[str]:
    (tmp / "file").write_text("x")
    return train(None, out=out)(tmp)


def etc_like(tmp: Path) -> list[str]:
    etc = tmp / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    return ["analyze", str(etc), "--data-root", str(write_tiny_npz(tmp / "tiny.npz"))]


CASES = {
    # item 13: data and labels
    "train labels 10": (
        train(lambda t: npz(t / "b.npz", labels=np.full(64, 10))),
        "labels up to 10",
    ),
    "train labels -1": (train(lambda t: npz(t / "b.npz", labels=np.full(64, -1))), "0..C-1"),
    "train labels NaN": (train(lambda t: npz(t / "b.npz", labels=np.full(64, np.nan))), "whole"),
    "train labels -100": (train(lambda t: npz(t / "b.npz", labels=np.full(64, -100))), "0..C-1"),
    "analyze labels 10": (analyze_with(np.full(64, 10)), "build it with num_classes=11"),
    "analyze labels -1": (analyze_with(np.full(64, -1)), "0..C-1"),
    "analyze labels NaN": (analyze_with(np.full(64, np.nan)), "whole class indices"),
    "analyze labels -100": (analyze_with(np.full(64, -100)), "0..C-1"),
    "28x28 into LeNet-5": (train(lambda t: npz(t / "m.npz", shape=(28, 28, 1))), "1x28x28"),
    "1 channel into 3": (train(lambda t: npz(t / "g.npz", shape=(32, 32, 1))), "1x32x32"),
    "2-D y": (train(lambda t: npz(t / "y.npz", labels=np.zeros((64, 2), int))), "1-D"),
    # item 13: arguments
    "--out a file": (lambda t: file_in_the_way(t, "file"), "is a file"),
    "--out under a file": (lambda t: file_in_the_way(t, "file/run"), "is a file"),
    "--lr nan": (train(None, "--lr", "nan"), "--lr must be a finite number"),
    "--optimizer-kwargs bogus": (train(None, "--optimizer-kwargs", '{"bogus": 1}'), "bogus"),
    "--device bogus": (train(None, "--device", "bogus"), "is not a device"),
    "--device cuda": (train(None, "--device", "cuda"), "no CUDA GPU"),
    "num_classes 0": (train(None, "--model-kwargs", '{"num_classes": 0}'), "num_classes"),
    # item 9: folders that are not runs
    "analyze a missing folder": (
        lambda t: ["analyze", str(t / "nonexistent"), "--no-progress"],
        "is not a run folder",
    ),
    "analyze a system folder": (etc_like, "is not a run folder"),
    "analyze an epoch the run lacks": (
        lambda t: ["analyze", str(lenet_run(t)), "--epochs", "1,5", "--no-progress"],
        "no checkpoint of epoch 5 (the run has epochs 1)",
    ),
    # items 1 and 4: files the inspector refuses
    "inspect a meta bomb": (inspect_meta(lambda: {**LENET, "junk": memo_bomb()}), "1 MB"),
    "inspect a sparse tensor": (inspect_meta(lambda: LENET, sparse_state), "sparse_coo"),
    "inspect num_classes -1": (
        inspect_meta(lambda: {"model": {"name": "lenet5", "kwargs": {"num_classes": -1}}}),
        "num_classes must be an integer >= 1, got -1",
    ),
    "inspect kwargs 'ab'": (
        inspect_meta(lambda: {"model": {"name": "lenet5", "kwargs": "ab"}}),
        "must be a JSON object",
    ),
}


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line_and_creates_nothing(tmp_path, case):
    make, expected = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    args = make(work)
    before = snapshot(work)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HESSIAN_LENS_")}
    env.update(
        PYTHONPATH=str(REPO),
        HOME=str(tmp_path / "home"),
        HESSIAN_LENS_CACHE=str(tmp_path / "cache"),
        OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",  # "--device cuda" on a machine with a GPU too
    )
    done = subprocess.run(
        [sys.executable, "-m", "hessian_lens", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("hessian-lens ") and expected in lines[0], lines[0]
    assert snapshot(work) == before, sorted(snapshot(work) ^ before)
    assert not (tmp_path / "home").exists() and not (tmp_path / "cache").exists()
