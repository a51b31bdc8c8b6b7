"""Re-create the checkpoint of an initialisation run that ships without its weights.

    python benchmarks/remake_init.py RUN            # re-create RUN/epoch_0000.pt, check it
    python benchmarks/remake_init.py RUN --record   # record the sha256 of the present file

A run trained for 0 epochs (``train --epochs 0``) holds the seeded initialisation: its
weights depend only on the model, its arguments, ``init`` and ``seed`` of ``run.json``
(``torch.manual_seed(seed)`` right before the model is built). ``--record`` writes into
``run.json`` (atomically) the file's sha256 (``checkpoints_not_shipped.sha256``: the
store's records are keyed by it; the history no longer names the file) and the weights'
own digest (``weights_sha256``: sha256 over every tensor's name, dtype, shape and bytes,
independent of the file's metadata).
Without ``--record`` the run's recorded training configuration is trained again for 0
epochs in a scratch folder beside RUN; the new checkpoint replaces nothing unless its
weights digest is the recorded one. The file's sha256 also matches when the metadata does
(the same corpus for the epoch-0 losses, the same Python, torch and hessian_lens versions:
the metadata records them); otherwise the analyses stored for the recorded file are not
found for the new one (analyse it again).
One JSON line on stdout; a refusal is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hessian_lens.checkpoint import load_checkpoint
from hessian_lens.io.files import file_sha256, write_json
from hessian_lens.runfolder import RUN_FILE, checkpoint_name

NOTE = (
    "The initialisation checkpoint is not shipped (too big for the repository); "
    "`python benchmarks/remake_init.py RUN` re-creates it from run.json's config (seeded) "
    "and checks it against these sha256."
)


class RemakeError(ValueError):
    """A run that cannot be re-created or whose re-creation does not match."""


def weights_sha256(state_dict) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes (names sorted)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _manifest(run: Path) -> dict:
    path = run / RUN_FILE
    if not path.is_file():
        raise RemakeError(f"{run}: no {RUN_FILE}; give a run folder made by `train`")
    manifest = json.loads(path.read_text())
    if manifest.get("config", {}).get("epochs") != 0:
        raise RemakeError(
            f"{run}: not an initialisation run (config epochs must be 0); only seeded "
            "initialisations are re-created"
        )
    return manifest


def record(run: Path) -> dict:
    """Write the present checkpoint's file and weights sha256 into ``run.json``."""
    manifest = _manifest(run)
    name = checkpoint_name(0)
    if not (run / name).is_file():
        raise RemakeError(f"{run}: no {name} to record")
    model, _ = load_checkpoint(run / name, max_bytes=None)
    shipped = {
        "note": NOTE,
        "sha256": {name: file_sha256(run / name)},
        "weights_sha256": {name: weights_sha256(model.state_dict())},
        "remake": f"python benchmarks/remake_init.py {run.as_posix()}",
    }
    history = [{k: v for k, v in h.items() if k != "checkpoint"} for h in manifest["history"]]
    write_json(run / RUN_FILE, {**manifest, "history": history, "checkpoints_not_shipped": shipped})
    return {"run": str(run), "recorded": shipped}


def remake(run: Path) -> dict:
    """Train the recorded configuration for 0 epochs again and check it (module docstring)."""
    from hessian_lens.train import TrainConfig, train

    manifest = _manifest(run)
    shipped = manifest.get("checkpoints_not_shipped", {})
    name = checkpoint_name(0)
    want_file = shipped.get("sha256", {}).get(name)
    want_weights = shipped.get("weights_sha256", {}).get(name)
    if want_weights is None:
        raise RemakeError(f"{run}: run.json records no weights_sha256; run --record first")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = {k: v for k, v in manifest["config"].items() if k in fields}
    scratch = Path(tempfile.mkdtemp(prefix=".remake-", dir=run.parent))
    try:
        out = scratch / run.name  # the checkpoint's metadata names its run folder
        train(TrainConfig(**{**config, "out": str(out)}), progress=False)
        model, _ = load_checkpoint(out / name, max_bytes=None)
        got_weights, got_file = weights_sha256(model.state_dict()), file_sha256(out / name)
        if got_weights != want_weights:
            raise RemakeError(
                f"{run}: the re-created weights differ from the recorded ones "
                f"({got_weights[:16]} != {want_weights[:16]}); another torch version or "
                "a changed model definition"
            )
        os.replace(out / name, run / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "run": str(run),
        "checkpoint": name,
        "weights_identical": True,
        "file_identical": got_file == want_file,
        "sha256": got_file,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--record", action="store_true", help="record the present file's sha256")
    args = p.parse_args(argv)
    try:
        out = record(args.run) if args.record else remake(args.run)
    except RemakeError as err:
        print(f"remake_init: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    print(json.dumps(out))


if __name__ == "__main__":
    main()
