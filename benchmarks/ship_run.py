"""Make a trained, analysed run folder small enough to ship in ``checkpoints/``.

    python benchmarks/ship_run.py RUN OUT [--keep 0,0.05,0.1]

OUT gets ``run.json``, ``analysis.sqlite``, the ``--keep`` epochs' checkpoints as they are,
and the last checkpoint as float16 safetensors (``epoch_NNNN.safetensors``). ``run.json``
then lists only what the folder holds: its history names the float16 file at the last epoch
and no file at the others, and ``checkpoints_not_shipped`` gives the sha256 of every analysed
checkpoint left behind (the store's records are keyed by them). ``resume.pt`` stays behind:
a shipped run is finished. Analyse OUT again afterwards (same settings) so the store also
holds the float16 file's own record, and the shipped folder computes nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hessian_lens.checkpoint import load_checkpoint, save_checkpoint
from hessian_lens.io.files import file_sha256, write_json
from hessian_lens.runfolder import RUN_FILE, checkpoint_name, list_checkpoints, read_manifest
from hessian_lens.store import ResultStore

NOTE = (
    "These checkpoints were analysed (their records are in analysis.sqlite, keyed by these "
    "sha256) but are not shipped, to keep the repository small; the last one ships as "
    "float16 safetensors."
)


def ship(run: Path, out: Path, keep: set[float], note: str = "") -> dict:
    """Write the shipped folder ``out`` from ``run``; returns what was done."""
    out.mkdir(parents=True, exist_ok=False)
    manifest = read_manifest(run).raw
    last = max(h["epoch"] for h in manifest["history"])
    shutil.copy2(run / "analysis.sqlite", out / "analysis.sqlite")
    model, meta = load_checkpoint(run / checkpoint_name(last))
    half = out / checkpoint_name(last, ".safetensors")
    save_checkpoint(half, model.half(), meta)
    kept = [p for p in list_checkpoints(run) if p.suffix == ".pt" and _epoch(p) in keep]
    for p in kept:
        shutil.copy2(p, out / p.name)
    analysed = {
        r.checkpoint for r in ResultStore.reader(run / "analysis.sqlite").records(arrays=False)
    }
    shipped = {p.name for p in kept}
    absent = {n: file_sha256(run / n) for n in sorted(analysed - shipped)}
    history = []
    for h in manifest["history"]:
        h = {k: v for k, v in h.items() if k != "checkpoint"}
        name = checkpoint_name(h["epoch"])
        if h["epoch"] == last:
            h["checkpoint"] = half.name
        elif name in shipped:
            h["checkpoint"] = name
        history.append(h)
    manifest = {**manifest, "history": history, "state": "finished"}
    if note:
        manifest["note"] = note
    augment = manifest.get("config", {}).get("augment")
    if augment and "augment" not in manifest.get("data", {}):  # runs from before it was copied
        manifest["data"] = {**manifest["data"], "augment": augment}
    manifest["checkpoints_not_shipped"] = {"note": NOTE, "sha256": absent}
    write_json(out / RUN_FILE, manifest)
    size = sum(p.stat().st_size for p in out.iterdir())
    return {"out": str(out), "float16": half.name, "kept": sorted(shipped), "bytes": size}


def _epoch(path: Path) -> float:
    """The epoch of ``epoch_0000.250.pt`` (0.25) or ``epoch_0003.pt`` (3)."""
    return float(path.stem.removeprefix("epoch_"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--keep", default="", help="epochs whose .pt checkpoints ship as they are")
    p.add_argument("--note", default="", help="a note for run.json (e.g. why it stopped)")
    args = p.parse_args(argv)
    keep = {float(e) for e in args.keep.split(",") if e.strip()}
    print(json.dumps(ship(args.run, args.out, keep, args.note)))


if __name__ == "__main__":
    main()
