"""Shared fixtures: the real CIFAR-10 npz of ../shared and a small synthetic npz."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_NPZ = REPO.parent / "shared" / "datasets" / "cifar10" / "cifar10.npz"


def real_npz_path() -> Path | None:
    """The real CIFAR-10 npz ($HESSIAN_LENS_TEST_NPZ or ../shared), or None."""
    path = Path(os.environ.get("HESSIAN_LENS_TEST_NPZ", SHARED_NPZ))
    return path if path.is_file() else None


@pytest.fixture(scope="session")
def cifar_npz() -> Path:
    path = real_npz_path()
    if path is None:
        pytest.skip(f"real CIFAR-10 npz not found at {SHARED_NPZ} (set HESSIAN_LENS_TEST_NPZ)")
    return path


def write_tiny_npz(path: Path, n_train: int = 120, n_test: int = 40, seed: int = 0) -> Path:
    """A synthetic CIFAR-shaped npz (random uint8 images, labels 0..9)."""
    rng = np.random.default_rng(seed)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        y_train=rng.integers(0, 10, n_train).astype(np.uint8),
        x_test=rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        y_test=rng.integers(0, 10, n_test).astype(np.uint8),
    )
    return path


@pytest.fixture
def tiny_npz(tmp_path) -> Path:
    return write_tiny_npz(tmp_path / "tiny.npz")


@pytest.fixture(scope="session")
def app_run(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-epoch LeNet-5 run on synthetic data, analysed (shared by the dashboard tests)."""
    from tests.apptools import make_analysed_run

    return make_analysed_run(tmp_path_factory.mktemp("app"))


@pytest.fixture
def app_env(app_run, tmp_path, monkeypatch) -> tuple[Path, Path]:
    """The dashboard's settings pointing at ``app_run``, a fresh cache, clean st caches."""
    import streamlit as st

    run, npz = app_run
    monkeypatch.setenv("HESSIAN_LENS_RUNS", str(run.parent))
    monkeypatch.setenv("HESSIAN_LENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HESSIAN_LENS_DATA", str(npz))
    for name in ("HESSIAN_LENS_MODELS", "HESSIAN_LENS_CACHE_MB", "HESSIAN_LENS_MAX_UPLOAD_MB"):
        monkeypatch.delenv(name, raising=False)
    st.cache_data.clear()
    st.cache_resource.clear()
    return run, npz


def need_browser() -> None:
    """Skip without Chromium and Playwright; fail instead where CI requires the browser."""
    from tests.e2e.browser import missing_browser

    reason = missing_browser()
    if reason:
        if os.environ.get("HESSIAN_LENS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser test required in CI but {reason}")
        pytest.skip(reason)
