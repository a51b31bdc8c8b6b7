"""The paper's figures 1–2 as numbers and images, from the shipped (or any) analysed runs.

Prints, as JSON lines then markdown: for every analysed epoch of each run, the off-block
shares of H̄ and H̄⁻¹ (layer blocks; raw and normalised); the claims table at the paper's
epochs (``hessian_lens.paper.figure_claims``); the strongest H̄⁻¹ weight couplings at
layer distance ≥ 2. With ``--images DIR``, draws the WW / BB / WB panels of H̄ and H̄⁻¹ at
the paper's epochs with the project's own plot code (``plots.panel_row``), rendered to PNG
in Debian's Chromium.

    python benchmarks/reproduce_paper.py --lenet checkpoints/lenet5-cifar10-paper \\
        --vgg checkpoints/vgg11p-cifar10 --images docs/figures --markdown docs/claims.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hessian_lens import paper, plots
from hessian_lens.runs import load_run
from tests.e2e.browser import figure_png

LENET_EPOCHS, VGG_EPOCHS = (1, 21), (1, 6)


def records(run_dir: str, epochs) -> dict[float, dict]:
    """Analysed records of a run, by epoch: the analysis covering most of the paper's
    epochs (ties: the most complete one), as the Paper page picks it."""
    run = load_run(run_dir)
    settings = run.settings()
    if not settings:
        raise SystemExit(f"{run_dir} has no analysis")
    best = max(
        settings,
        key=lambda s: sum(r.epoch in epochs for r in run.records(s, arrays=False)),
    )
    out: dict[float, dict] = {}
    for r in run.records(best):  # of two records of one epoch, the first by name (the .pt)
        out.setdefault(r.epoch, {"epoch": r.epoch, "summary": r.summary, "arrays": r.arrays})
    return out


def shares(recs: dict[float, dict]) -> list[dict]:
    """Off-block shares of H̄ and H̄⁻¹ per epoch (layer blocks), raw and normalised."""
    rows = []
    for epoch, rec in sorted(recs.items()):
        blocks = paper.layer_blocks(rec["summary"])
        row = {"epoch": epoch}
        for name in ("H", "Hinv"):
            for scale in paper.SCALES:
                M = paper.on_scale(rec["arrays"][name], scale)
                # not rounded here: rounding before formatting made 0.452535 into 45.2%
                row[f"{name}_{scale}"] = paper.off_block_share(M, blocks)
        row["status"] = rec["summary"]["inverse"]["status"]
        rows.append(row)
    return rows


def draw(recs: dict, epochs, name: str, out: Path) -> list[str]:
    """PNG panels of H̄ and H̄⁻¹ at the given epochs (raw and normalised)."""
    made = []
    for epoch in epochs:
        rec = recs.get(epoch)
        if rec is None:
            continue
        s = rec["summary"]
        for mat, label in (("H", "H̄"), ("Hinv", "H̄⁻¹")):
            for scale in ("raw", "normalized"):
                shown = plots.transform(rec["arrays"][mat], scale)
                panels = plots.interaction_blocks(
                    shown, s["kinds"], s["layers"], rec["arrays"][mat]
                )
                fig = plots.panel_row(
                    list(panels.values()),
                    colorbar="" if scale == "raw" else scale,
                    height=300,
                    title=f"{name}: {label}, epoch {epoch} ({scale})",
                )
                path = out / f"{name}_{mat}_epoch{epoch}_{scale}.png"
                figure_png(fig, path)
                made.append(str(path))
    return made


def markdown(lenet_shares, vgg_shares, claims, top) -> str:
    lines = [
        "| run | epoch | H̄ raw | H̄ normalised | H̄⁻¹ raw | H̄⁻¹ normalised | H̄ |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rows in (("LeNet-5", lenet_shares), ("VGG-11'", vgg_shares)):
        for r in rows:
            lines.append(
                f"| {name} | {r['epoch']:g} | {r['H_raw']:.1%} | {r['H_normalized']:.1%} | "
                f"{r['Hinv_raw']:.1%} | {r['Hinv_normalized']:.1%} | {r['status']} |"
            )
    lines += [
        "",
        "| figure | claim | measure | raw | normalised | threshold | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in claims:
        lines.append(
            f"| {c.figure} | {c.claim} | {c.measure} | {c.raw:.3g} | {c.normalized:.3g} | "
            f"{c.threshold} | **{c.verdict}** |"
        )
    lines += [""]
    for where, pairs in top:
        lines.append(f"- {where}: " + ", ".join(f"{a}–{b} {v:+.3f}" for a, b, v in pairs))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lenet", default="checkpoints/lenet5-cifar10-paper")
    ap.add_argument("--vgg", default="checkpoints/vgg11p-cifar10")
    ap.add_argument("--images", default=None, help="folder for the PNG panels")
    ap.add_argument("--markdown", default=None, help="write the tables here")
    args = ap.parse_args(argv)
    lenet, vgg = records(args.lenet, LENET_EPOCHS), records(args.vgg, VGG_EPOCHS)
    lenet_shares, vgg_shares = shares(lenet), shares(vgg)
    for name, rows in (("lenet5", lenet_shares), ("vgg11p", vgg_shares)):
        for r in rows:
            print(json.dumps({"run": name, **r}), flush=True)
    claims = paper.figure_claims(
        {str(e): lenet[e] for e in LENET_EPOCHS if e in lenet},
        {str(e): vgg[e] for e in VGG_EPOCHS if e in vgg},
    )
    for c in claims:
        print(json.dumps(c.__dict__), flush=True)
    top = [
        (f"LeNet-5 epoch {e}", paper.strongest_long_range(lenet[e]))
        for e in LENET_EPOCHS
        if e in lenet
    ]
    top += [
        (f"VGG-11' epoch {e}", paper.strongest_long_range(vgg[e])) for e in VGG_EPOCHS if e in vgg
    ]
    if args.images:
        out = Path(args.images)
        out.mkdir(parents=True, exist_ok=True)
        made = draw(lenet, LENET_EPOCHS, "lenet5", out) + draw(vgg, VGG_EPOCHS, "vgg11p", out)
        print(json.dumps({"images": made}), flush=True)
    if args.markdown:
        Path(args.markdown).write_text(markdown(lenet_shares, vgg_shares, claims, top))


if __name__ == "__main__":
    main()
