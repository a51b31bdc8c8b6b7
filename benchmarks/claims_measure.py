"""Measure the published transformer claims on draws of analysis samples, into claims stores.

Each unit is one checkpoint, one draw of ``--samples`` training samples (the draw's seed is
the sample subset's seed, as ``analyze --seed``) and one kind of measurement; it becomes
one record of ``benchmarks/results/claims/<run>.sqlite`` (a :class:`ResultStore`, keyed by
the checkpoint's sha256 and the settings, the draw and the training seed included), so a
rerun computes only what is missing. Kinds:

* ``qv``: H̄ and ḡ of the query, key and value heads (the other tensors frozen,
  :mod:`hessian_lens.subsets`): ``c_s = H̄_ss / ḡ_s`` and the raw ``H̄_ss`` per head;
* ``qvfrob``: ``||C_ss||_F^2`` of every Q / K / V head block and of each layer's whole
  Q-Q / K-K / V-V block, for C = H, the Gauss-Newton G and the functional part H - G
  (Ormaniec et al.'s split), ``--probes`` Rademacher probes;
* ``hessian`` / ``ggn``: the full partition's H̄ or Ḡ and ḡ (``analyze``'s pipeline;
  the record keeps H, g and the summary);
* ``frob``: the full partition's block Frobenius map of H (Adam-mini / Dong et al.);
* ``spectra``: Lanczos (``--steps`` steps, one start) on the diagonal blocks of the weight
  matrices (transformers: every Q, K, V, O head and the MLP weights; CNNs: every
  convolution and the classifier, ResNet-18 a fixed subset of 9), for Zhang et al.'s JS⁰.

The units run in rounds (draw 1 of every checkpoint first, then draw 2, ...), so a partial
run covers every checkpoint. Run it under ``nice``; it resumes where it stopped.

    python benchmarks/claims_measure.py --name gpt-text --train-seed 0 \\
        --run checkpoints/gpt-text --epochs 0,0.05,0.5,1,6 --kinds qv --draws 5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import hessian_lens as hl  # noqa: E402
from hessian_lens import runfolder  # noqa: E402
from hessian_lens.analyze import AnalysisSettings, analyze_model, select_checkpoints  # noqa: E402
from hessian_lens.checkpoint import load_checkpoint  # noqa: E402
from hessian_lens.data import load_dataset  # noqa: E402
from hessian_lens.engine import products  # noqa: E402
from hessian_lens.heads import block_of  # noqa: E402
from hessian_lens.io.files import file_sha256  # noqa: E402
from hessian_lens.losses import get_loss  # noqa: E402
from hessian_lens.split import split_norms  # noqa: E402
from hessian_lens.store import Record, ResultStore  # noqa: E402
from hessian_lens.subsets import subset, trainable_only  # noqa: E402

STORES = REPO / "benchmarks" / "results" / "claims"
KINDS = ("qv", "qvfrob", "hessian", "ggn", "frob", "spectra")
QKV = ("q", "k", "v")
#: ResNet-18's blocks for the spectra: the stem, the first convolution of each stage, the
#: three downsample convolutions and the classifier (every block costs Lanczos products).
RESNET_SPECTRA = (
    "conv1.weight",
    "layer1.0.conv1.weight",
    "layer2.0.conv1.weight",
    "layer3.0.conv1.weight",
    "layer4.0.conv1.weight",
    "layer2.0.downsample.0.weight",
    "layer3.0.downsample.0.weight",
    "layer4.0.downsample.0.weight",
    "fc.weight",
)


def spectra_blocks(labels: list[str], kinds: list[str]) -> list[int]:
    """The groups whose spectra enter JS⁰: weight matrices (module docstring)."""
    if "layer4.0.conv1.weight" in labels:  # ResNet-18
        return [s for s, x in enumerate(labels) if x in RESNET_SPECTRA]
    keep = []
    for s, (label, kind) in enumerate(zip(labels, kinds, strict=True)):
        block = block_of(label)
        attention = block in ("q", "k", "v", "o") and kind != "bias"
        if attention or (block in ("mlp", "conv", "output", "linear") and kind == "weight"):
            keep.append(s)
    return keep


class Unit:
    """One checkpoint of one run, with its model, data set and settings."""

    def __init__(self, args, path: Path, data) -> None:
        self.args, self.path, self.data = args, path, data
        self.sha = file_sha256(path)
        self.model, self.meta = load_checkpoint(path)
        self.model.float().eval()  # a float16 file is analysed in float32, as analyze does
        self.loss_name = runfolder.read_manifest(args.run).raw.get("loss") or "cross_entropy"
        self.loss = get_loss(self.loss_name)
        self.epoch = self.meta.get("epoch")

    def settings(self, kind: str, draw: int) -> dict:
        a = self.args
        s = {"kind": kind, "samples": a.samples, "seed": draw, "train_seed": a.train_seed}
        s["partition"] = a.partition
        if kind == "qvfrob":
            s["probes"] = a.probes
        if kind == "frob":
            s["probes"] = a.frob_probes
        if kind == "spectra":
            s["steps"] = a.steps
        return s

    def batch(self, draw: int):
        sub = self.data.subset(self.args.samples, draw)
        return next(iter(sub.batches(self.args.samples))), sub.fingerprint()

    def part(self):
        return hl.Partition.from_name(self.model, self.args.partition)


def measure(unit: Unit, kind: str, draw: int) -> tuple[dict, dict]:
    """``(summary, arrays)`` of one unit."""
    batch, fingerprint = unit.batch(draw)
    summary, arrays = MEASURES[kind](unit, batch, draw)
    summary.update(data=fingerprint, checkpoint_path=str(unit.path), loss_fn=unit.loss_name)
    return summary, {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}


def _qkv(unit: Unit):
    part = unit.part()
    keep = [s for s, x in enumerate(part.labels) if block_of(x) in QKV]
    return part, keep


def measure_qv(unit: Unit, batch, draw: int):
    part, keep = _qkv(unit)
    with trainable_only(unit.model, part, keep):
        sub = subset(unit.model, part, keep)
        res = hl.pseudo_hessian(unit.model, unit.loss, batch, partition=sub)
    return {"labels": sub.labels, "loss": res.loss}, {"H": res.H, "g": res.g}


def measure_qvfrob(unit: Unit, batch, draw: int):
    part, keep = _qkv(unit)
    arrays = {}
    with trainable_only(unit.model, part, keep):
        sub = subset(unit.model, part, keep)
        split = split_norms(unit.model, unit.loss, batch, sub, probes=unit.args.probes, seed=draw)
    for c, bn in split.items():
        arrays[f"fro_sq_{c}"] = bn.frobenius_sq
        arrays[f"fro_sq_se_{c}"] = bn.frobenius_sq_se
    return {"labels": sub.labels}, arrays


def measure_full(unit: Unit, batch, draw: int, curvature: str):
    settings = AnalysisSettings(
        samples=unit.args.samples,
        partition=unit.args.partition,
        seed=draw,
        loss=unit.loss_name,
        curvature=curvature,
        batch_size=unit.args.samples,
    )
    summary, arrays = analyze_model(unit.model, [batch], settings)
    return summary, {"H": arrays["H"], "g": arrays["g"]}


def measure_frob(unit: Unit, batch, draw: int):
    part = unit.part()
    bn = hl.block_norms(unit.model, unit.loss, batch, part, probes=unit.args.frob_probes, seed=draw)
    summary = {"labels": part.labels, "kinds": part.kinds, "layers": part.layers}
    return summary, {"fro_sq": bn.frobenius_sq, "fro_sq_se": bn.frobenius_sq_se}


def measure_spectra(unit: Unit, batch, draw: int):
    part = unit.part()
    keep = spectra_blocks(part.labels, part.kinds)
    with trainable_only(unit.model, part, keep):
        sub = subset(unit.model, part, keep)
        sp = hl.block_spectra(
            unit.model,
            unit.loss,
            batch,
            sub,
            steps=unit.args.steps,
            probes=1,
            seed=draw,
            whole=False,
        )
    kept = [j for j, x in enumerate(sub.labels) if not x.endswith(".rest")]
    blocks = [sp.blocks[j] for j in kept]
    summary = {
        "labels": [b.label for b in blocks],
        "sizes": [b.size for b in blocks],
        "js0": hl.js_divergence(blocks).js0,
        "js0_lmax": hl.js_divergence(blocks, scale="lmax").js0,
    }
    arrays = {
        "nodes": torch.stack([b.nodes[0] for b in blocks]),
        "weights": torch.stack([b.weights[0] for b in blocks]),
    }
    return summary, arrays


MEASURES = {
    "qv": measure_qv,
    "qvfrob": measure_qvfrob,
    "hessian": lambda u, b, d: measure_full(u, b, d, "hessian"),
    "ggn": lambda u, b, d: measure_full(u, b, d, "ggn"),
    "frob": measure_frob,
    "spectra": measure_spectra,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True, help="the run's name (its claims store)")
    parser.add_argument("--run", type=Path, required=True, help="the run folder")
    parser.add_argument("--train-seed", type=int, required=True)
    parser.add_argument("--epochs", required=True, help="e.g. 0,0.5,1")
    parser.add_argument("--kinds", required=True, help=",".join(KINDS))
    parser.add_argument("--draws", type=int, default=5, help="sample seeds 1..N")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--partition", default="by_head")
    parser.add_argument("--probes", type=int, default=4, help="Rademacher probes of qvfrob")
    parser.add_argument("--frob-probes", type=int, default=2, help="probes of frob (S x K)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--data", help="data set spec (default: the run's)")
    parser.add_argument("--data-root", help="override the run's data source")
    parser.add_argument("--stores", type=Path, default=STORES, help="folder of the stores")
    args = parser.parse_args()
    torch.manual_seed(0)
    # One product per backward pass: on these CPUs the engine's batched products (vmap over
    # up to 32 vectors) took twice as long as one at a time (GPT, 32 windows, 96 products).
    products.MAX_BATCH = 1
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        sys.exit(f"unknown kinds {unknown}: choose among {', '.join(KINDS)}")
    manifest = runfolder.read_manifest(args.run)
    spec = args.data or manifest.data.get("name") or "cifar10"
    data = load_dataset(spec, args.data_root or manifest.data.get("source"), train=True)
    epochs = [float(e) for e in args.epochs.split(",")]
    units = [Unit(args, p, data) for p in select_checkpoints(args.run, epochs)]
    args.stores.mkdir(parents=True, exist_ok=True)
    store = ResultStore(args.stores / f"{args.name}.sqlite")
    for draw in range(1, args.draws + 1):
        for kind in kinds:
            for unit in units:
                settings = unit.settings(kind, draw)
                if store.has(unit.sha, settings):
                    continue
                t0 = time.perf_counter()
                summary, arrays = measure(unit, kind, draw)
                seconds = time.perf_counter() - t0
                store.put(
                    Record(unit.sha, settings, unit.path.name, unit.epoch, summary, arrays, seconds)
                )
                print(
                    f"{args.name} seed {args.train_seed} epoch {unit.epoch} {kind} draw {draw}: "
                    f"{seconds:.0f} s",
                    flush=True,
                )


if __name__ == "__main__":
    main()
