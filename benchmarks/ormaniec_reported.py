"""Ormaniec et al.'s own Q-Q and V-V block norms, read from their published results files.

dalab/transformer-hessian ships the numbers behind the paper's growth figures as pickles
(``results/norm=none_num_layers=L_scale=log_residual_scaling=1.0_linear_attention=False
_loss=ce_frob_{q,v}{,_outer,_func}.pickle``): for each layer, 20 repeats (model seeds
1234 + r) of 20 embedding scales sigma = 10^linspace(-2, 1, 20), the Hutchinson estimate
(20 products) of ``||H_QQ||_F`` (``frob_q``), of its Gauss-Newton part (``_outer``) and of
its functional part (``_func``), and the same for V-V.

Nothing is unpickled: the opcodes are walked with :mod:`pickletools` and only the float32
payloads of the numpy scalars are decoded (their files' layout: a dict layer -> dict
repeat -> list over sigma, written in that order; the count is checked). The summary
(mean over the repeats at each sigma, the log-log slope over sigma in [0.01, 0.3], where
their figure's power laws hold) goes to ``benchmarks/results/ormaniec_reported.json``, which
``benchmarks/ormaniec_addition.py`` puts beside this project's measurements.

    python benchmarks/ormaniec_reported.py /work/.mirror/dalab+transformer-hessian/repo
"""

from __future__ import annotations

import argparse
import json
import pickletools
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "ormaniec_reported.json"
SIGMA = 10 ** np.linspace(-2, 1.0, 20)  # their scale='log'
REPEATS = 20
PARTS = {"": "H", "_outer": "GN", "_func": "functional"}
NAME = (
    "results/norm=none_num_layers={layers}_scale=log_residual_scaling=1.0_"
    "linear_attention=False_loss=ce_frob_{block}{part}.pickle"
)


def float32_payloads(data: bytes) -> list[float]:
    """The float32 values of the numpy scalars in a pickle, in order, without unpickling."""
    out = []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINBYTES", "BINBYTES") and len(arg) == 4:
            out.append(struct.unpack("<f", arg)[0])
    return out


def read(repo: Path, layers: int, block: str, part: str, commit: str) -> np.ndarray:
    """(layers, repeats, sigma) values of one results file at ``commit``."""
    path = NAME.format(layers=layers, block=block, part=part)
    data = subprocess.run(
        ["git", "-C", str(repo), "show", f"{commit}:{path}"], capture_output=True, check=True
    ).stdout
    values = float32_payloads(data)
    want = layers * REPEATS * len(SIGMA)
    if len(values) != want:
        raise ValueError(f"{path}: {len(values)} float32 values, expected {want}")
    return np.asarray(values, dtype=np.float64).reshape(layers, REPEATS, len(SIGMA))


def slope(sigma, values, lo: float = 0.01, hi: float = 0.3) -> float | None:
    """Least-squares slope of log(value) on log(sigma) over ``lo <= sigma <= hi``.

    None when fewer than 3 of those values are positive (a block that is zero: their
    one-layer functional V-V part).
    """
    sigma, values = np.asarray(sigma, dtype=np.float64), np.asarray(values, dtype=np.float64)
    keep = (sigma >= lo * (1 - 1e-9)) & (sigma <= hi * (1 + 1e-9)) & (values > 0)
    if keep.sum() < 3:
        return None
    return float(np.polyfit(np.log(sigma[keep]), np.log(values[keep]), 1)[0])


def summarise(repo: Path, depths=(1, 2, 3)) -> dict:
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    out = {
        "source": "github.com/dalab/transformer-hessian",
        "commit": commit,
        "files": NAME,
        "setup": "d_model 128, 1 head, d_mlp 512, ReLU, no LayerNorm, batch 64 of 5-digit "
        "addition, cross-entropy on the 6 answer digits, 20 repeats, 20 Hutchinson products",
        "sigma": SIGMA.tolist(),
        "depths": {},
    }
    for layers in depths:
        entry = {}
        for block in ("q", "v"):
            for suffix, part in PARTS.items():
                v = read(repo, layers, block, suffix, commit).mean(axis=1)  # over repeats
                entry[f"{block}_{part}"] = {
                    "mean": v.tolist(),
                    "slope": [slope(SIGMA, row) for row in v],
                }
        out["depths"][str(layers)] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("repo", type=Path, help="a git checkout of dalab/transformer-hessian")
    args = parser.parse_args()
    result = summarise(args.repo)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(OUT)
    print(f"wrote {OUT.relative_to(REPO)}", file=sys.stderr)


if __name__ == "__main__":
    main()
