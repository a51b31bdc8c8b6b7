"""Streamlit building blocks shared by the pages: run / settings pickers, cached reads,
error display and the heatmap views. Math lives in :mod:`linalg`, figures in :mod:`plots`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
import torch

from hessian_lens import linalg, plots
from hessian_lens.checkpoint import CheckpointError
from hessian_lens.data import DataNotFoundError
from hessian_lens.partition import PartitionError, blocks_of
from hessian_lens.runs import Run, describe_settings, find_runs, load_run, run_roots

CACHE_ENV = "HESSIAN_LENS_CACHE"
MATRICES = {"H": "H̄ (pseudo-Hessian)", "Hinv": "H̄⁻¹ (inverse)"}
BLOCK_CHOICES = {
    "layer": "per layer (weight + bias)",
    "tensor": "per tensor (diagonal)",
    "kind": "weights vs biases",
}
SCALE_HELP = (
    "raw: the values; normalized: diag(|M|)^-½ M diag(|M|)^-½, invariant when a "
    "layer is rescaled, comparable across layers and epochs; signed log: "
    "sign · log10(1 + |M|/t), to see orders of magnitude"
)


def page(title: str, icon: str = "🔭") -> None:
    """Page configuration and the sidebar title."""
    st.set_page_config(page_title=f"{title} · Hessian Lens", page_icon=icon, layout="wide")
    st.sidebar.markdown("### Hessian Lens")


def default_root() -> Path:
    """``checkpoints/`` beside the app (the repository), else in the working directory."""
    beside = Path(__file__).resolve().parents[1] / "checkpoints"
    return beside if beside.is_dir() else Path.cwd() / "checkpoints"


def cache_dir() -> Path:
    """Where uploads and their results go (``$HESSIAN_LENS_CACHE``, ~/.cache/hessian_lens)."""
    path = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "hessian_lens")
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Show failures as ``st.error`` with what to do, never a traceback."""
    try:
        yield
    except (CheckpointError, DataNotFoundError, PartitionError, ValueError, OSError) as err:
        st.error(str(err))
    except Exception as err:
        st.error(
            f"Unexpected error ({type(err).__name__}: {err}). The page could not be "
            "drawn; please report it with the steps that led here."
        )


# ---------------------------------------------------------------------------- runs & records
@st.cache_data(ttl=10, show_spinner=False)
def _runs(roots: tuple[str, ...]) -> list[str]:
    return [str(r.path) for r in find_runs(roots)]


def all_runs() -> list[Run]:
    """Runs under ``checkpoints/``, ``$HESSIAN_LENS_RUNS`` and the sidebar's extra folders."""
    extra = st.sidebar.text_input(
        "More run folders",
        key="extra_roots_input",
        value=st.session_state.get("extra_roots", ""),
        help="Folders holding runs (or runs themselves), separated by commas. "
        "$HESSIAN_LENS_RUNS adds more.",
    )
    st.session_state["extra_roots"] = extra
    return [load_run(p) for p in _runs(tuple(str(r) for r in run_roots(default_root(), extra)))]


def select_run(runs: Sequence[Run]) -> Run | None:
    """Sidebar run picker; the choice is kept across pages."""
    if not runs:
        st.info(
            "No runs found. Train one with `python -m hessian_lens train ... --out "
            "checkpoints/<run>` and analyse it with `python -m hessian_lens analyze "
            "checkpoints/<run>`, or add a folder in the sidebar."
        )
        return None
    paths = [str(r.path) for r in runs]
    wanted = st.session_state.get("run_path")
    index = (
        paths.index(wanted)
        if wanted in paths
        else next((i for i, r in enumerate(runs) if r.store_path.exists()), 0)
    )
    choice = st.sidebar.selectbox(
        "Run", paths, index=index, key="run_select", format_func=lambda p: Path(p).name
    )
    st.session_state["run_path"] = choice
    return runs[paths.index(choice)]


def select_settings(run: Run) -> dict[str, Any] | None:
    """Sidebar picker among the analyses stored for a run."""
    options = run.settings()
    if not options:
        st.warning(
            f"Run **{run.name}** has no analysis yet: `python -m hessian_lens analyze "
            f"{run.path}` computes one (a progress bar shows how long)."
        )
        return None
    labels = [describe_settings(s) for s in options]
    pick = st.sidebar.selectbox(
        "Analysis", range(len(options)), key="settings_select", format_func=lambda i: labels[i]
    )
    return options[pick]


def _stamp(path: Path) -> float:
    return max((p.stat().st_mtime for p in (path, Path(f"{path}-wal")) if p.exists()), default=0.0)


@st.cache_data(show_spinner=False, max_entries=64)
def _records(store: str, settings_json: str, stamp: float) -> list[dict[str, Any]]:
    from hessian_lens.store import ResultStore

    return [
        {"epoch": r.epoch, "checkpoint": r.checkpoint, "summary": r.summary, "arrays": r.arrays}
        for r in ResultStore(store).records(json.loads(settings_json))
    ]


def records(run: Run, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The analysed checkpoints of a run under settings (cached until the store changes)."""
    return _records(
        str(run.store_path), json.dumps(settings, sort_keys=True), _stamp(run.store_path)
    )


def select_epoch(recs: Sequence[dict], key: str, label: str = "Epoch") -> dict:
    """An epoch slider over analysed checkpoints (hidden for a single one)."""
    if len(recs) == 1:
        return recs[0]
    epochs = [r["epoch"] if r["epoch"] is not None else i for i, r in enumerate(recs)]
    epoch = st.select_slider(label, options=epochs, value=epochs[-1], key=key)
    return recs[epochs.index(epoch)]


# ---------------------------------------------------------------------------- views
def matrix_panels(rec: dict, name: str, scale: str, view: str) -> list[plots.Panel]:
    """Panels of matrix ``name`` ("H" or "Hinv") of a record in a view ("blocks"/"full")."""
    summary, raw = rec["summary"], rec["arrays"][name]
    shown = plots.transform(raw, scale)
    if view == "blocks":
        return list(
            plots.interaction_blocks(shown, summary["kinds"], summary["layers"], raw).values()
        )
    return [plots.full_panel(shown, summary["labels"], raw, MATRICES[name])]


def render_interactions(recs: Sequence[dict], key: str) -> None:
    """Heatmaps of H̄ and H̄⁻¹ (WW / BB / WB or full), epoch slider, play, downloads."""
    summary = recs[0]["summary"]
    has_blocks = {"weight", "bias"} <= set(summary["kinds"])
    c1, c2, c3 = st.columns([1.2, 1.4, 1.4])
    view = c1.radio(
        "View",
        ["blocks", "full"] if has_blocks else ["full"],
        key=f"{key}-view",
        format_func=lambda v: {"blocks": "WW · BB · WB blocks", "full": "full S × S"}[v],
        horizontal=True,
    )
    scale = c2.radio("Scale", plots.SCALES, key=f"{key}-scale", horizontal=True, help=SCALE_HELP)
    same = c3.toggle(
        "Same colour range for all epochs",
        key=f"{key}-same",
        disabled=len(recs) < 2,
        help="Limits = max |value| over every epoch, so change over time shows.",
    )
    rec = select_epoch(recs, key=f"{key}-epoch")
    _inverse_note(rec["summary"])
    for name in MATRICES:
        st.markdown(f"**{MATRICES[name]}** — epoch {rec['epoch']}")
        panels = matrix_panels(rec, name, scale, view)
        limits = _limits(recs, name, scale, view) if same else None
        fig = plots.panel_row(
            panels,
            zmax=limits,
            colorbar=scale if scale != "raw" else "",
            height=380 if view == "blocks" else 520,
        )
        st.plotly_chart(
            fig, key=f"{key}-{name}", config=plots.export_config(f"{name}_{view}_{rec['epoch']}")
        )
    if len(recs) > 1 and st.toggle("Animate across epochs", key=f"{key}-animate"):
        _animation(recs, key, scale, view)
    _downloads(rec, scale, key)


def _inverse_note(summary: dict) -> None:
    inv = summary["inverse"]
    if inv["status"] == "indefinite":
        st.caption(
            f"H̄ is indefinite ({inv['n_negative']} negative eigenvalues of its "
            "normalised form): H̄⁻¹ shown is the saddle-free inverse |H̄|⁻¹ "
            f"(condition number {inv['condition']:.3g})."
        )
    elif inv["status"] == "singular":
        st.caption(f"H̄ is singular ({inv['n_floored']} eigenvalues floored): H̄⁻¹ is regularised.")
    else:
        st.caption(
            f"H̄ is positive definite (condition number {inv['condition']:.3g}): H̄⁻¹ is exact."
        )


def _limits(recs, name, scale, view) -> list[float]:
    per_epoch = [[p.z for p in matrix_panels(r, name, scale, view)] for r in recs]
    return [plots.symmetric_limit(*[zs[i] for zs in per_epoch]) for i in range(len(per_epoch[0]))]


def _animation(recs, key, scale, view) -> None:
    c1, c2 = st.columns(2)
    name = c1.selectbox(
        "Matrix", list(MATRICES), format_func=MATRICES.get, key=f"{key}-anim-matrix"
    )
    titles = [p.title for p in matrix_panels(recs[0], name, scale, view)]
    which = c2.selectbox(
        "Block", range(len(titles)), format_func=lambda i: titles[i], key=f"{key}-anim-block"
    )
    frames = [(r["epoch"], matrix_panels(r, name, scale, view)[which]) for r in recs]
    zmax = plots.symmetric_limit(*[p.z for _, p in frames])
    st.plotly_chart(
        plots.animated_heatmap(frames, zmax, colorbar=scale),
        key=f"{key}-anim",
        config=plots.export_config(f"{name}_animation"),
    )


def _downloads(rec: dict, scale: str, key: str) -> None:
    summary, arrays = rec["summary"], rec["arrays"]
    shown = {n: plots.transform(arrays[n], scale) for n in MATRICES}
    buf = io.BytesIO()
    np.savez(
        buf,
        labels=np.array(summary["labels"]),
        kinds=np.array(summary["kinds"]),
        layers=np.array(summary["layers"]),
        epoch=np.array(rec["epoch"] or 0),
        g=arrays["g"],
        **{n: arrays[n] for n in MATRICES},
        **{f"{n}_shown": v for n, v in shown.items()},
    )
    stem = f"epoch{rec['epoch']}_{scale.replace(' ', '_')}"
    c1, c2, c3 = st.columns(3)
    c1.download_button(
        "⬇ NPZ (H̄, H̄⁻¹, labels)", buf.getvalue(), f"hbar_{stem}.npz", key=f"{key}-npz"
    )
    for col, name in ((c2, "H"), (c3, "Hinv")):
        col.download_button(
            f"⬇ CSV {MATRICES[name].split()[0]} ({scale})",
            to_csv(shown[name], summary["labels"]),
            f"{name}_{stem}.csv",
            mime="text/csv",
            key=f"{key}-csv-{name}",
        )


def to_csv(M: np.ndarray, labels: Sequence[str]) -> str:
    """A labelled matrix as CSV (first row and column: group labels)."""
    lines = ["," + ",".join(labels)]
    lines += [
        f"{lab}," + ",".join(f"{v:.10g}" for v in row)
        for lab, row in zip(labels, np.asarray(M), strict=True)
    ]
    return "\n".join(lines) + "\n"


def render_block_diagonal(recs: Sequence[dict], key: str) -> None:
    """H̄⁻¹ vs blockdiag(H̄)⁻¹ and their difference; metrics of an epoch and their trends."""
    c1, c2 = st.columns(2)
    by = c1.radio(
        "Blocks",
        list(BLOCK_CHOICES),
        format_func=BLOCK_CHOICES.get,
        key=f"{key}-by",
        horizontal=True,
    )
    scale = c2.radio(
        "Scale",
        ["raw", "normalized"],
        key=f"{key}-scale",
        horizontal=True,
        help="normalized: all three scaled by diag(|H̄⁻¹|)^-½ (invariant)",
    )
    rec = select_epoch(recs, key=f"{key}-epoch")
    summary, arrays = rec["summary"], rec["arrays"]
    blocks = blocks_of(by, summary["layers"], summary["kinds"])
    cmp = linalg.compare_block_diagonal(
        torch.from_numpy(arrays["H"]), torch.from_numpy(arrays["g"]), blocks
    )
    full, bd = cmp["inv_full"], cmp["inv_bd"]
    s = (
        linalg.scales(full)
        if scale == "normalized"
        else torch.ones(full.shape[0], dtype=full.dtype)
    )
    mats = [(full, "H̄⁻¹ (full)"), (bd, "blockdiag(H̄)⁻¹"), (full - bd, "difference")]
    panels = [
        plots.full_panel((s[:, None] * M * s[None, :]).numpy(), summary["labels"], M.numpy(), title)
        for M, title in mats
    ]
    st.plotly_chart(
        plots.side_by_side(panels, colorbar=scale),
        key=f"{key}-side",
        config=plots.export_config(f"blockdiag_{by}_{rec['epoch']}"),
    )
    stored = summary["compare"][by]
    cols = st.columns(6)
    for col, (label, value, help_) in zip(cols, _metric_rows(stored), strict=True):
        col.metric(label, value, help=help_)
    epochs = [r["epoch"] for r in recs]
    if len(recs) > 1:
        series = {
            k: [r["summary"]["compare"][by][k] for r in recs]
            for k in ("rel_error", "off_share_H", "off_share_Hinv", "cos_eta")
        }
        dec = {
            k: [r["summary"]["compare"][by][k] for r in recs]
            for k in ("decrease_full", "decrease_bd")
        }
        a, b = st.columns(2)
        a.plotly_chart(
            plots.trends(epochs, series, "block-diagonal vs full, across epochs"),
            key=f"{key}-trend",
        )
        b.plotly_chart(
            plots.trends(
                epochs,
                dec,
                "decrease of the order-2 model",
                log_y=all(v > 0 for vs in dec.values() for v in vs),
            ),
            key=f"{key}-decrease",
        )


def _metric_rows(m: dict) -> list[tuple[str, str, str]]:
    return [
        ("relative error", f"{m['rel_error']:.3f}", "‖H̄⁻¹ − blockdiag(H̄)⁻¹‖_F / ‖H̄⁻¹‖_F"),
        ("|H̄| outside", f"{m['off_share_H']:.1%}", "share of Σ|H̄| outside the blocks"),
        ("|H̄⁻¹| outside", f"{m['off_share_Hinv']:.1%}", "share of Σ|H̄⁻¹| outside the blocks"),
        ("cos(η_full, η_bd)", f"{m['cos_eta']:.3f}", "η = H̄⁻¹ḡ vs blockdiag(H̄)⁻¹ḡ"),
        ("decrease, full", f"{m['decrease_full']:.4g}", "ḡ·η − ηᵀH̄η/2 with η_full"),
        ("decrease, block-diag", f"{m['decrease_bd']:.4g}", "ḡ·η − ηᵀH̄η/2 with η_bd"),
    ]


# ---------------------------------------------------------------------------- inspect page
UPLOAD_LIMIT_ENV = "HESSIAN_LENS_MAX_UPLOAD_MB"


def upload_limit_bytes() -> int:
    """Largest accepted upload (``$HESSIAN_LENS_MAX_UPLOAD_MB``, default 500 MB)."""
    try:
        return int(float(os.environ.get(UPLOAD_LIMIT_ENV, "500")) * 2**20)
    except ValueError:
        return 500 * 2**20


def save_upload(uploaded, limit: int) -> tuple[Path, str]:
    """Write an uploaded file under the cache, named by its sha256; return (path, sha).

    Raises:
        CheckpointError: the file is over the size limit.
    """
    import hashlib

    from hessian_lens.checkpoint import atomic_write

    if uploaded.size > limit:
        raise CheckpointError(
            f"{uploaded.name} is {uploaded.size / 2**20:,.1f} MB, over the "
            f"{limit / 2**20:,.0f} MB limit; set {UPLOAD_LIMIT_ENV} to accept larger files."
        )
    data = uploaded.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    path = cache_dir() / "uploads" / f"{sha[:16]}{Path(uploaded.name).suffix.lower()}"
    if not path.exists():
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return path, sha


def architecture_picker(meta: dict) -> tuple[str | None, dict | None]:
    """The architecture to build: the file's own, or one chosen from the registry."""
    from hessian_lens.models import MODELS

    declared = meta.get("model") if isinstance(meta.get("model"), dict) else None
    if declared and declared.get("name"):
        st.caption(
            f"Architecture from the file: `{declared['name']}` {declared.get('kwargs') or ''}"
        )
        if not st.checkbox("Use another architecture", key="arch-override"):
            return None, None
    options = ["auto-detect", *sorted(MODELS)]
    c1, c2 = st.columns([1, 2])
    name = c1.selectbox(
        "Architecture",
        options,
        key="arch-name",
        help="auto-detect matches the registry's default models",
    )
    text = c2.text_input(
        "Arguments (JSON)",
        "{}",
        key="arch-kwargs",
        help='e.g. {"activation": "relu"} or {"sizes": [3072, 512, 10]}',
    )
    try:
        kwargs = json.loads(text or "{}")
    except json.JSONDecodeError as err:
        raise ValueError(f"architecture arguments are not valid JSON ({err})") from None
    if not isinstance(kwargs, dict):
        raise ValueError('architecture arguments must be a JSON object, e.g. {"width": 0.5}')
    return (None, None) if name == "auto-detect" else (name, kwargs)


def default_data_source(runs: Sequence[Run]) -> str:
    """``$HESSIAN_LENS_DATA``, else the data source of the first run that names one."""
    from hessian_lens.data import DATA_ENV

    if os.environ.get(DATA_ENV):
        return os.environ[DATA_ENV]
    return next(
        (
            str(r.manifest["data"]["source"])
            for r in runs
            if (r.manifest.get("data") or {}).get("source")
        ),
        "",
    )


@st.cache_resource(show_spinner="Loading data…", max_entries=4)
def analysis_data(source: str, samples: int, seed: int, batch_size: int):
    """The analysis subset and its fingerprint (loaded once per session of the server)."""
    from hessian_lens.analyze import AnalysisSettings, analysis_batches

    settings = AnalysisSettings(samples=samples, seed=seed, batch_size=batch_size)
    return analysis_batches(source or None, settings)


def as_dict(record) -> dict[str, Any]:
    """A store record as the plain dict the views take."""
    return {
        "epoch": record.epoch,
        "checkpoint": record.checkpoint,
        "summary": record.summary,
        "arrays": record.arrays,
    }


# ---------------------------------------------------------------------------- optimizer page
def render_optimizer(runs: Sequence[Run], key: str = "optim") -> None:
    """Loss / accuracy curves of runs side by side; per-group rates of PartitionNewton runs."""
    from hessian_lens.runs import loss_over_steps, optimizer_log, rates_over_steps

    with_history = [r for r in runs if r.history]
    if not with_history:
        st.info("No run with a training history yet.")
        return
    names = [r.name for r in with_history]
    chosen = st.multiselect("Runs to compare", names, default=names, key=f"{key}-runs")
    picked = [r for r in with_history if r.name in chosen]
    for col, metric, title, log_y in zip(
        st.columns(2),
        ("train_loss", "test_acc"),
        ("training loss", "test accuracy"),
        (True, False),
        strict=True,
    ):
        series = {
            _label(r): ([h["epoch"] for h in r.history], [h[metric] for h in r.history])
            for r in picked
        }
        col.plotly_chart(
            plots.lines(series, "epoch", title, f"{title} per epoch", log_y=log_y),
            key=f"{key}-{metric}",
        )
    newton = [r for r in picked if optimizer_log(r) is not None]
    if not newton:
        st.info(
            "None of these runs used PartitionNewton. Train one with `python -m "
            "hessian_lens train --optimizer partition-newton --lr 0.3 ...`."
        )
        return
    run = newton[
        [r.name for r in newton].index(
            st.selectbox("PartitionNewton run", [r.name for r in newton], key=f"{key}-pn")
        )
    ]
    log = optimizer_log(run)
    steps, rates = rates_over_steps(log)
    log_y = st.toggle("Log scale", value=True, key=f"{key}-log")
    positive = {k: v for k, v in rates.items() if not log_y or any(x > 0 for x in v)}
    st.plotly_chart(
        plots.lines(
            {k: (steps, v) for k, v in positive.items()},
            "step",
            "lr · η_s",
            "per-group learning rates (at each recomputation)",
            height=420,
            log_y=log_y,
        ),
        key=f"{key}-rates",
    )
    s, loss = loss_over_steps(log)
    st.plotly_chart(
        plots.lines(
            {run.name: (s, loss)},
            "step",
            "loss (50-step mean)",
            "training loss per step",
            log_y=True,
        ),
        key=f"{key}-steps",
    )
    errors = [e for e in log["entries"] if e.get("error")]
    if errors:
        st.caption(f"{len(errors)} recomputations kept the previous rates: {errors[-1]['error']}")


def _label(run: Run) -> str:
    opt = run.manifest.get("optimizer", {})
    return f"{run.name} ({opt.get('name', '?')}, lr {opt.get('lr', '?')})"
