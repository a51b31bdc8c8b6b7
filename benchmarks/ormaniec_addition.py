"""Ormaniec et al.'s growth figure, reproduced: Q-Q and V-V block norms against the embedding scale.

Their setup (dalab/transformer-hessian, ``Transformer_Hessian.ipynb``; ICLR 2025, the
growth-rate figures), rebuilt in :mod:`hessian_lens.addition`: a GPT-2-style transformer
of width 128 with one head, a ReLU MLP of width 512 and no LayerNorm, at initialisation,
one batch of 64 generated 5-digit additions, the mean cross-entropy of the six answer
digits. For each depth L, embedding scale sigma (both embeddings ~ N(0, sigma^2)) and
model seed, this measures ``||H_QQ||_F`` and ``||H_VV||_F`` of every layer's ``W_Q`` and
``W_V`` block, with their Gauss-Newton and functional parts (:func:`hessian_lens.split.
split_norms`, the other tensors frozen: :mod:`hessian_lens.subsets`), in float64.

It writes ``benchmarks/results/ormaniec_addition.json`` (resumable: finished points are
kept) and ``--markdown`` prints the table docs/transformers.md quotes, beside the values
read from their results files (``benchmarks/results/ormaniec_reported.json``, made by
``benchmarks/ormaniec_reported.py``).

    python benchmarks/ormaniec_addition.py --depths 1,2 --repeats 5 --probes 8
    python benchmarks/ormaniec_addition.py --markdown
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hessian_lens.addition import AdditionTransformer, addition_data, answer_loss  # noqa: E402
from hessian_lens.engine import Options, products  # noqa: E402
from hessian_lens.partition import Partition  # noqa: E402
from hessian_lens.split import SPLIT, split_norms  # noqa: E402
from hessian_lens.subsets import kept_groups, subset, trainable_only  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "ormaniec_addition.json"
REPORTED = REPO / "benchmarks" / "results" / "ormaniec_reported.json"
THEIR_SIGMA = 10 ** np.linspace(-2, 1.0, 20)  # their scale='log'
SIGMA_INDEX = (0, 3, 6, 9, 13, 16, 19)  # 0.01, 0.03, 0.089, 0.30, 1.13, 3.4, 10
BATCH, DATA_SEED, WIDTH = 64, 1234, 128
PART_NAMES = {"hessian": "H", "ggn": "GN", "functional": "functional"}
#: The growth rates sigma^k their figure draws as guides for one layer without LayerNorm
#: (Transformer_Hessian.ipynb, ``get_exponent``; the paper's Theorem on the block growth).
PAPER_RATE = {
    ("q", "H"): 5,
    ("q", "GN"): 6,
    ("q", "functional"): 5,
    ("v", "H"): 2,
    ("v", "GN"): 2,
    ("v", "functional"): 0,
}
SLOPE_RANGE = (0.01, 0.3)  # small scales, where the power laws hold (sigma 0.01 .. 0.30)


def point(depth: int, sigma_i: int, repeat: int, probes: int) -> dict:
    """``||C||_F`` of every layer's Q-Q and V-V block for C = H, GN, H - GN at one point."""
    sigma = float(THEIR_SIGMA[sigma_i])
    model = AdditionTransformer(width=WIDTH, layers=depth, sigma=sigma, seed=repeat).double()
    data = addition_data(BATCH, DATA_SEED)[0]
    part = Partition.canonical(model)
    keep = [s for s, x in enumerate(part.labels) if x.endswith((".q.weight", ".v.weight"))]
    with trainable_only(model, part, keep):
        sub = subset(model, part, keep)
        split = split_norms(
            model,
            answer_loss,
            data,
            sub,
            probes=probes,
            seed=repeat,
            options=Options(dtype=torch.float64),
        )
    out = {}
    for s in kept_groups(sub):
        label = sub.labels[s]  # blocks.L.attn.q.weight
        layer, block = int(label.split(".")[1]), label.split(".")[3]
        for c in SPLIT:
            key = f"{layer}.{block}.{PART_NAMES[c]}"
            out[key] = math.sqrt(max(float(split[c].frobenius_sq[s, s]), 0.0))
    return out


def run(depths, repeats: int, probes: int) -> dict:
    done = json.loads(OUT.read_text()) if OUT.exists() else {"points": {}}
    done.update(
        setup={
            "width": WIDTH,
            "heads": 1,
            "mlp": 4 * WIDTH,
            "norm": "none",
            "batch": BATCH,
            "data_seed": DATA_SEED,
            "probes": probes,
            "dtype": "float64",
        },
        sigma=THEIR_SIGMA.tolist(),
    )
    for repeat in range(repeats):
        for depth in depths:
            for i in SIGMA_INDEX:
                key = f"L{depth}/s{i}/r{repeat}"
                if key in done["points"]:
                    continue
                t0 = time.perf_counter()
                done["points"][key] = point(depth, i, repeat, probes)
                print(f"{key}: {time.perf_counter() - t0:.1f} s", flush=True)
                tmp = OUT.with_suffix(".tmp")
                tmp.write_text(json.dumps(done, indent=1) + "\n")
                tmp.replace(OUT)
    return done


# ---------------------------------------------------------------------------- summary
def slope(sigma, values, lo: float = SLOPE_RANGE[0], hi: float = SLOPE_RANGE[1]) -> float | None:
    """Least-squares slope of log(value) on log(sigma) for lo <= sigma <= hi (None: < 3 points)."""
    sigma, values = np.asarray(sigma, dtype=np.float64), np.asarray(values, dtype=np.float64)
    keep = (sigma >= lo * (1 - 1e-9)) & (sigma <= hi * (1 + 1e-9)) & (values > 0)
    if keep.sum() < 3:
        return None
    return float(np.polyfit(np.log(sigma[keep]), np.log(values[keep]), 1)[0])


def ours(done: dict) -> dict:
    """``{(depth, key): (mean over repeats per sigma index, repeats)}``."""
    table: dict = {}
    for name, values in done["points"].items():
        depth, i, _ = name.split("/")
        for key, v in values.items():
            table.setdefault((int(depth[1:]), key), {}).setdefault(int(i[1:]), []).append(v)
    return table


def summary(done: dict, reported: dict) -> list[dict]:
    """One row per depth, layer, block and part: ours and theirs at 4 scales, and slopes."""
    rows = []
    show = (0, 6, 13, 19)  # sigma = 0.01, 0.089, 1.13, 10
    for (depth, key), per in sorted(ours(done).items()):
        layer, block, part = key.split(".")
        idx = sorted(per)
        mine = [float(np.mean(per[i])) for i in idx]
        theirs = reported["depths"].get(str(depth), {}).get(f"{block}_{part}")
        their_row = theirs["mean"][int(layer)] if theirs else None
        rows.append(
            {
                "depth": depth,
                "layer": int(layer) + 1,
                "block": block,
                "part": part,
                "repeats": min(len(per[i]) for i in idx),
                "ours": {i: float(np.mean(per[i])) for i in show if i in per},
                "theirs": {i: their_row[i] for i in show} if their_row else {},
                "slope_ours": slope(THEIR_SIGMA[idx], mine),
                "slope_theirs": slope(
                    THEIR_SIGMA[list(SIGMA_INDEX)], [their_row[i] for i in SIGMA_INDEX]
                )
                if their_row
                else None,
                "paper_rate": PAPER_RATE.get((block, part)) if depth == 1 else None,
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    head = (
        "| L | layer | block | part | ours: σ=0.01 | 0.089 | 1.13 | 10 | theirs: σ=0.01 | 0.089 "
        "| 1.13 | 10 | growth k, ours | theirs | paper | repeats |"
    )
    lines = [head, "|" + "---|" * 16]
    for r in rows:
        cells = [str(r["depth"]), str(r["layer"]), r["block"].upper(), r["part"]]
        cells += [_fmt(r["ours"].get(i)) for i in (0, 6, 13, 19)]
        cells += [_fmt(r["theirs"].get(i)) for i in (0, 6, 13, 19)]
        cells += [_slope(r["slope_ours"]), _slope(r["slope_theirs"])]
        cells += ["–" if r["paper_rate"] is None else str(r["paper_rate"]), str(r["repeats"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _slope(x) -> str:
    return "–" if x is None else f"{x:.1f}"


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return "0" if x == 0 else f"{x:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depths", default="1,2")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--markdown", action="store_true", help="print the table only")
    parser.add_argument("--json", action="store_true", help="print the summary rows as JSON")
    args = parser.parse_args()
    if args.markdown or args.json:
        done = json.loads(OUT.read_text())
        rows = summary(done, json.loads(REPORTED.read_text()))
        print(markdown(rows) if args.markdown else json.dumps(rows))
        return
    products.MAX_BATCH = 1  # one product per backward pass: faster on these CPUs
    torch.set_num_threads(1)
    run([int(d) for d in args.depths.split(",")], args.repeats, args.probes)


if __name__ == "__main__":
    main()
