"""Ship a training-seed replicate whose measurements live in the claims stores.

    python benchmarks/ship_seed.py RUN benchmarks/results/claims/runs/gpt-text-seed1 --keep 1

OUT gets ``run.json`` and the ``--keep`` epochs' checkpoints as they are (the replicate's
records are in ``benchmarks/results/claims/<run>.sqlite``, keyed by the checkpoints'
sha256; it is no dashboard run, so it stays out of ``checkpoints/``); ``run.json``'s
history names only the shipped files, and
``checkpoints_not_shipped`` gives the sha256 of every other checkpoint, so a re-run of the
training command can be checked file by file. ``resume.pt`` stays behind.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hessian_lens.io.files import file_sha256, write_json
from hessian_lens.runfolder import RUN_FILE, list_checkpoints, read_manifest

NOTE = (
    "A training-seed replicate for docs/transformers.md: its measurements are in "
    "benchmarks/results/claims/, keyed by these sha256; only the kept checkpoints ship."
)


def ship(run: Path, out: Path, keep: set[float], note: str = "") -> dict:
    """Write ``out`` from ``run``; returns what was done."""
    out.mkdir(parents=True, exist_ok=False)
    manifest = read_manifest(run).raw
    every = {p.name: p for p in list_checkpoints(run)}
    kept = {n for n, p in every.items() if float(p.stem.removeprefix("epoch_")) in keep}
    for name in kept:
        shutil.copy2(every[name], out / name)
    history = []
    for h in manifest["history"]:
        h = dict(h)
        if h.get("checkpoint") not in kept:
            h.pop("checkpoint", None)
        history.append(h)
    absent = {n: file_sha256(p) for n, p in sorted(every.items()) if n not in kept}
    manifest = {**manifest, "history": history, "state": "finished"}
    manifest["checkpoints_not_shipped"] = {"note": note or NOTE, "sha256": absent}
    write_json(out / RUN_FILE, manifest)
    return {"out": str(out), "kept": sorted(kept), "not_shipped": len(absent)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--keep", default="", help="epochs whose checkpoints ship, e.g. 0.05,1")
    p.add_argument("--note", default="")
    args = p.parse_args()
    keep = {float(e) for e in args.keep.split(",") if e}
    print(ship(args.run, args.out, keep, args.note))


if __name__ == "__main__":
    main()
