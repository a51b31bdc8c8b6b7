"""Helpers for the dashboard tests: a tiny analysed run and plotly specs from AppTest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hessian_lens.analyze import AnalysisSettings, analyze_run
from hessian_lens.train import TrainConfig, train
from tests.conftest import write_tiny_npz

APP_SETTINGS = AnalysisSettings(samples=64, batch_size=32)


def make_run(out: Path, npz: Path, **overrides) -> Path:
    """A small LeNet-5 run on a synthetic npz (2 epochs of 64 images unless overridden)."""
    fields = {
        "out": str(out),
        "data_source": str(npz),
        "train_size": 64,
        "test_size": 32,
        "epochs": 2,
        "batch_size": 32,
        "lr": 0.05,
        "seed": 2,
        **overrides,
    }
    return train(TrainConfig(**fields), progress=False)


def make_analysed_run(root: Path) -> tuple[Path, Path]:
    """A 2-epoch LeNet-5 run on synthetic data, analysed; returns (run folder, npz)."""
    root.mkdir(parents=True, exist_ok=True)
    npz = write_tiny_npz(root / "tiny.npz")
    run = make_run(root / "runs" / "tiny-run", npz)
    analyze_run(run, APP_SETTINGS, progress=False)
    return run, npz


def plotly_specs(at) -> list[dict]:
    """The figures an AppTest page drew, as plotly JSON dicts."""
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def heatmap_z(spec: dict, trace: int = 0) -> np.ndarray:
    """The z matrix of a heatmap trace in a plotly spec (decoding typed arrays)."""
    z = spec["data"][trace]["z"]
    if isinstance(z, dict) and "bdata" in z:
        import base64

        arr = np.frombuffer(base64.b64decode(z["bdata"]), dtype=np.dtype(z["dtype"]))
        shape = z.get("shape")
        if isinstance(shape, str):  # plotly writes "rows, cols"
            shape = tuple(int(n) for n in shape.split(","))
        return arr.reshape(shape) if shape else arr
    return np.asarray(z, dtype=float)
