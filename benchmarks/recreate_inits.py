"""Re-create the two CNN initial checkpoints the claims measure (they were not shipped).

* VGG-11' (``checkpoints/vgg11p-cifar10``): ``torch.manual_seed(0)`` and
  ``build_model("vgg11p", init="paper")``, what ``hessian_lens train --seed 0`` does before
  its first step;
* ResNet-18 (``checkpoints/resnet18-cifar10``): ``torch.manual_seed(0)`` and torchvision's
  ``resnet18(num_classes=10)``, what ``examples/recorder_resnet18_cifar10.py`` does.

Each is written with the shipped run's epoch-0 metadata; the script prints each model's
loss on its shipped record's samples beside the record's (they agree to float rounding:
these are the shipped runs' initial weights). The weights are the same on every run; the
file's bytes are not (``torch.save`` writes no byte-identical zip twice), so the sha256 the
claims stores key on is that of the file measured, and a re-created file is measured anew.

    python benchmarks/recreate_inits.py --data ../shared/datasets/cifar10/cifar10.npz
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hessian_lens.checkpoint import save_checkpoint  # noqa: E402
from hessian_lens.data import load_dataset  # noqa: E402
from hessian_lens.io.files import file_sha256  # noqa: E402
from hessian_lens.registry import build_model  # noqa: E402
from hessian_lens.store import ResultStore  # noqa: E402

RUNS = {
    "vgg11p-cifar10": ("vgg11p", {"init": "paper"}),
    "resnet18-cifar10": ("torchvision:resnet18", {"num_classes": 10}),
}


def recreate(name: str, data: str, out: Path) -> dict:
    """Write ``out/<name>/epoch_0000.pt`` and its run.json; the losses beside the record's."""
    shipped = REPO / "checkpoints" / name
    run = json.loads((shipped / "run.json").read_text())
    builder, kwargs = RUNS[name]
    torch.manual_seed(0)
    model = build_model(builder, **kwargs).eval()
    rec = next(
        r
        for r in ResultStore.reader(shipped / "analysis.sqlite").records(arrays=False)
        if r.epoch == 0
    )
    loss = _record_loss(name, model, data, rec.settings["samples"])
    h0 = next(h for h in run["history"] if h["epoch"] == 0)
    meta = {
        "model": run["model"],
        "epoch": 0,
        "run": run["name"],
        "metrics": {k: v for k, v in h0.items() if k != "checkpoint"},
    }
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / "epoch_0000.pt", model, meta)
    manifest = {k: v for k, v in run.items() if k not in ("history", "checkpoints_not_shipped")}
    (folder / "run.json").write_text(json.dumps({**manifest, "history": [h0]}, indent=1) + "\n")
    return {
        "run": name,
        "loss": loss,
        "record_loss": rec.summary["loss"],
        "sha256": file_sha256(folder / "epoch_0000.pt"),
    }


def _record_loss(name: str, model, data: str, samples: int) -> float:
    """The loss on the shipped epoch-0 record's samples: ``analyze``'s subset (seed 0), or
    the example's fixed analysis samples (``randperm`` of seed 1) for the ResNet."""
    seed = 1 if name == "resnet18-cifar10" else 0
    sub = load_dataset("cifar10", data, train=True).subset(samples, seed)
    total = 0.0
    with torch.no_grad():
        for x, y in sub.batches(250):
            total += float(F.cross_entropy(model(x), y, reduction="sum"))
    return total / samples


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the CIFAR-10 npz")
    p.add_argument("--out", type=Path, default=REPO / "work" / "runs" / "s0")
    args = p.parse_args()
    for name in RUNS:
        print(json.dumps(recreate(name, args.data, args.out)))


if __name__ == "__main__":
    main()
