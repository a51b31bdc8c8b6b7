"""Runs and their recorded analyses as text: ``hessian-lens runs`` and ``hessian-lens show``.

``runs [DIR ...]`` lists the runs under folders (default ``./checkpoints`` when there is
one, else the working folder, and ``$HESSIAN_LENS_RUNS``): one line each with its model,
epochs, checkpoints and analyses. ``show RUN`` prints a run's card, then each analysis
(its settings), its records (epoch, checkpoint, loss, seconds) and the measures a record
holds (arrays with their shapes, summary keys), and how to read them in Python with
:func:`hessian_lens.load_run`. Torch-free and read-only, like the dashboard; ``--json``
gives the same as one JSON document.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hessian_lens import runcard, runfolder
from hessian_lens.runs import Run, describe_settings, find_runs, load_run, run_roots
from hessian_lens.store import StoreError


def default_roots(dirs: Sequence[str]) -> list[Path]:
    """The folders ``runs`` looks in.

    Those given, else ``./checkpoints`` (or ``.``) and those of ``$HESSIAN_LENS_RUNS``.
    """
    if dirs:
        return [Path(d) for d in dirs]
    here = Path("checkpoints") if Path("checkpoints").is_dir() else Path(".")
    return run_roots(here)


def run_row(run: Run) -> dict[str, Any]:
    """One run as a row of ``runs``: name, folder, model, epochs, checkpoints, analyses."""
    try:
        analyses = [
            {"settings": describe_settings(s), "records": len(run.records(s, arrays=False))}
            for s in run.settings()
        ]
        problem = None
    except StoreError as err:
        analyses, problem = [], str(err)
    trained = max((h["epoch"] for h in run.history), default=None)
    return {
        "name": run.name,
        "folder": str(run.path),
        "model": runcard.model_text(run.manifest.model),
        "epochs": trained,
        "checkpoints": len(run.checkpoints),
        "analyses": analyses,
        "state": "live" if run.live() else run.manifest.raw.get("state", ""),
        "warnings": run.warnings + ([problem] if problem else []),
    }


def runs_text(rows: Sequence[dict[str, Any]]) -> str:
    """The ``runs`` table: a line per run, a line per warning."""
    if not rows:
        return "no runs here (a run is a folder with run.json or epoch_* checkpoints)"
    lines = []
    for r in rows:
        epochs = "?" if r["epochs"] is None else f"{r['epochs']:g}"
        analysed = "; ".join(f"{a['records']} × {a['settings']}" for a in r["analyses"])
        lines.append(
            f"{r['name']}  [{r['folder']}]  {r['model']} · {epochs} epochs · "
            f"{_count(r['checkpoints'], 'checkpoint')} · analysed: {analysed or 'not yet'}"
            + (f" · {r['state']}" if r["state"] == "live" else "")
        )
        lines += [f"    warning: {w}" for w in r["warnings"]]
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    """``1 checkpoint``, ``3 checkpoints``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def show(path: str | Path) -> dict[str, Any]:
    """What ``show RUN`` prints: card, analyses with their records, measures, history.

    Raises:
        ValueError: ``path`` is not a run folder.
    """
    if not runfolder.is_run(path):
        raise ValueError(
            f"{path} is not a run folder (no run.json and no epoch_* checkpoint): "
            "`hessian-lens runs DIR` lists the runs under a folder"
        )
    run = load_run(path)
    m = run.manifest
    analyses = []
    for settings in run.settings():
        records = run.records(settings)
        analyses.append(
            {
                "settings": settings,
                "described": describe_settings(settings),
                "records": [_record_row(r) for r in records],
                "measures": _measures(records[-1]) if records else {},
            }
        )
    return {
        "name": run.name,
        "folder": str(run.path),
        "card": {
            "architecture": runcard.model_text(m.model),
            "data": runcard.data_text(m.data),
            "loss": m.loss or "?",
            "training": runcard.training_text(m),
        },
        "history": {
            "entries": len(run.history),
            "metrics": sorted({k for h in run.history for k in h} - {"epoch", "checkpoint"}),
        },
        "checkpoints": [p.name for p in run.checkpoints],
        "analyses": analyses,
        "warnings": run.warnings,
    }


def _record_row(record) -> dict[str, Any]:
    loss = record.summary.get("loss")
    return {
        "epoch": record.epoch,
        "checkpoint": record.checkpoint,
        "loss": loss if isinstance(loss, int | float) else None,
        "seconds": record.seconds,
    }


def _measures(record) -> dict[str, Any]:
    """The arrays of a record with their shapes, and the keys of its summary."""
    return {
        "arrays": {k: list(getattr(v, "shape", ())) for k, v in sorted(record.arrays.items())},
        "summary": sorted(record.summary),
    }


def show_text(info: dict[str, Any]) -> str:
    """``show``'s output as text."""
    card = info["card"]
    lines = [
        f"{info['name']}  [{info['folder']}]",
        f"  architecture  {card['architecture']}",
        f"  data          {card['data']}",
        f"  loss          {card['loss']}",
        f"  training      {card['training']}",
        f"  history       {info['history']['entries']} entries: "
        + (", ".join(info["history"]["metrics"]) or "no metrics"),
        f"  checkpoints   {len(info['checkpoints'])}: " + " ".join(info["checkpoints"]),
    ]
    lines += [f"  warning       {w}" for w in info["warnings"]]
    if not info["analyses"]:
        lines.append(f"  not analysed yet: hessian-lens analyze {info['folder']}")
    for i, a in enumerate(info["analyses"]):
        lines += _analysis_lines(i, a)
    lines.append(
        f"\nIn Python: run = hessian_lens.load_run({info['folder']!r}); "
        "rec = run.records()[-1]; rec.epoch, rec.arrays['H'], rec.summary['labels']"
        + ("; run.records(run.settings()[i]) for analysis i" if len(info["analyses"]) > 1 else "")
    )
    return "\n".join(lines)


def _analysis_lines(i: int, a: dict[str, Any]) -> list[str]:
    lines = [f"\nanalysis {i}: {a['described']}  ({len(a['records'])} records)"]
    lines.append("  epoch       checkpoint                    loss        seconds")
    for r in a["records"]:
        epoch = "?" if r["epoch"] is None else f"{r['epoch']:g}"
        loss = "?" if r["loss"] is None else f"{r['loss']:.6g}"
        lines.append(f"  {epoch:<11} {r['checkpoint']:<29} {loss:<11} {r['seconds']:.1f}")
    measures = a["measures"]
    if measures:
        shapes = ", ".join(
            f"{k} {'x'.join(map(str, s)) or 'scalar'}" for k, s in measures["arrays"].items()
        )
        lines.append(f"  measures    arrays: {shapes}")
        lines.append(f"              summary: {', '.join(measures['summary'])}")
    return lines


def as_json(value: Any) -> str:
    """``value`` as indented JSON (paths and other objects as strings)."""
    return json.dumps(value, indent=2, default=str)


def list_runs(dirs: Sequence[str]) -> list[dict[str, Any]]:
    """The rows of ``runs`` for the folders ``dirs`` (:func:`default_roots`)."""
    return [run_row(r) for r in find_runs(default_roots(dirs))]
