"""The stored measures on the pages: run-card curves, block spectra, the norm map, the report.

A tiny LeNet-5 run analysed with ``--measures frobenius,spectra,lmax``; every check
compares what a page drew with the stored arrays and summaries.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hessian_lens import measured, plots
from hessian_lens.analyze import AnalysisSettings, analyze_run
from hessian_lens.store import ResultStore
from hessian_lens.ui.reads import as_dict
from tests.apptools import (
    axis_values,
    cards,
    chart,
    heatmap_z,
    make_analysed_run,
    no_errors,
    open_page,
)

MEASURES = AnalysisSettings(
    samples=32,
    batch_size=32,
    measures=("frobenius", "lmax", "spectra"),
    probes=4,
    steps=6,
    slq_probes=1,
)


@pytest.fixture(scope="module")
def measured_run(tmp_path_factory):
    run, npz = make_analysed_run(tmp_path_factory.mktemp("measured"))
    analyze_run(run, MEASURES, progress=False)
    return run, npz


@pytest.fixture
def env(measured_run, tmp_path, monkeypatch):
    import streamlit as st

    run, npz = measured_run
    monkeypatch.setenv("HESSIAN_LENS_RUNS", str(run.parent))
    monkeypatch.setenv("HESSIAN_LENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HESSIAN_LENS_DATA", str(npz))
    st.cache_data.clear()
    return run


def stored(run) -> list:
    recs = ResultStore(run / "analysis.sqlite").records()
    return sorted((r for r in recs if r.settings.get("measures")), key=lambda r: r.epoch)


def test_the_run_card_draws_lambda_max_and_the_trace(env):
    at = open_page("app.py", env)
    no_errors(at)
    card = cards(at)[env.name]
    lam = f"lambda_{env.name}"
    assert any(k.endswith(lam) for k in card["charts"]), card["charts"]
    spec = chart(at, f"measures-{env}-{lam}")
    recs = stored(env)
    lmax = [r.summary["measures"]["lmax"] for r in recs]
    assert np.allclose(axis_values(spec["data"][0]["y"]), lmax)
    assert spec["data"][0]["name"] == "λ_max"


def test_block_spectra_and_js0_on_block_heterogeneity(env):
    at = open_page("views/Block_heterogeneity.py", env)
    no_errors(at)
    recs = stored(env)
    rec = as_dict(recs[-1])
    spec = next(s for s in [chart(at, k) for k in _keys(at) if k.endswith("spectra")] if s["data"])
    labels = rec["summary"]["labels"]
    names = [t["name"] for t in spec["data"]]
    assert len(names) == min(8, len(labels)) and set(names) <= set(labels)  # spread groups
    _, dens = measured.densities(rec, [labels.index(t["name"]) for t in spec["data"]])
    first = spec["data"][0]
    want = np.maximum(dens[labels.index(first["name"])], max(d.max() for d in dens.values()) * 1e-6)
    assert np.allclose(axis_values(first["y"]), want)
    js = chart(at, next(k for k in _keys(at) if k.endswith("js0")))
    assert np.allclose(
        axis_values(js["data"][0]["y"]), [r.summary["measures"]["js0"] for r in recs]
    )


def test_the_norm_map_on_layer_interactions(env):
    at = open_page("views/Layer_interactions.py", env)
    no_errors(at)
    key = next(k for k in _keys(at) if k.endswith("norms"))
    z = heatmap_z(chart(at, key))
    F = stored(env)[-1].arrays["frobenius"]
    want = np.clip(np.log10(np.where(F > 0, F, F.max() * 1e-6) / F.max()), -6, 0)
    assert np.allclose(z, want)


def test_the_report_holds_the_measure_curves(env):
    from hessian_lens.report import build_html, open_run

    page = build_html(open_run(env))
    assert "extreme eigenvalues of H (Lanczos)" in page and "Hutchinson \\u00b1 2 se" in page


def test_figures_of_the_measures():
    series = {
        "epoch": [0, 1],
        "lmax": [2.0, 3.0],
        "lmin": [-1.0, -0.5],
        "trace_total": [5.0, 6.0],
        "trace_total_se": [0.5, 0.25],
        "js0": [math.nan] * 2,
        "diagonal_share": [math.nan] * 2,
    }
    figs = plots.measure_curves(series, "ggn")
    assert set(figs) == {"lambda", "trace"}
    band, _ = figs["trace"].data
    assert list(band.y) == [6.0, 6.5, 5.5, 4.0]  # ± 2 se: upper, then lower reversed
    assert figs["lambda"].layout.title.text == "extreme eigenvalues of G (Lanczos)"
    series["lmax"] = [math.nan] * 2
    assert set(plots.measure_curves(series)) == {"trace"}
    grid = np.linspace(-1, 1, 5)
    fig = plots.spectra_figure(grid, {"a": np.array([0, 1, 2, 1, 0.0])})
    assert fig.layout.yaxis.type == "log" and min(fig.data[0].y) > 0


def _keys(at) -> list[str]:
    return [el.proto.id.split("-", 2)[-1] for el in at.get("plotly_chart")]
