"""Every number docs/reproduction.md and docs/optimizer.md quote, recomputed from shipped files.

Reads only what the repository ships: the run folders in ``checkpoints/`` (their
``analysis.sqlite`` stores, ``run.json`` histories, ``optimizer_log.json`` and initial
checkpoints) and the raw JSON lines in ``benchmarks/results/``. Prints one JSON line per
quoted number, ``{"doc", "key", "value", "text"}``, and one per generated table,
``{"doc", "block", "markdown"}``. A few seconds: it computes nothing but small S x S
matrices.

**Rounding, one rule.** A number is formatted exactly once, from the float64 value
computed from the files, by Python's ``format`` (``f"{x:.1%}"``, ``f"{x:.3g}"``). It rounds
the exact binary value to the nearest decimal; a tie, possible only when the binary value
lies exactly halfway (0.125, 2.5), goes to the even digit. Nothing is rounded before it is
formatted: ``round(x, 4)`` and then ``f"{:.1%}"`` made 0.452535 into 45.2% (0.4525 is
stored as 0.45249999...), where the data give 45.3%.

**In the docs**, a quoted number is followed by its key, ``45.3%<!--n:key-->`` (invisible
once rendered), and a generated table sits between ``<!-- begin:key -->`` and
``<!-- end:key -->``. ``--check`` lists every difference and exits 1 (the test suite runs
it); ``--write`` rewrites the marked numbers and tables of the docs from the files.

    python benchmarks/doc_numbers.py            # the JSON lines
    python benchmarks/doc_numbers.py --check    # the docs say what the files say
    python benchmarks/doc_numbers.py --write    # make them say it
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hessian_lens import paper  # noqa: E402
from hessian_lens.io.files import file_sha256  # noqa: E402
from hessian_lens.runs import load_run  # noqa: E402

DOCS = ("docs/reproduction.md", "docs/optimizer.md")
LENET_EPOCHS, VGG_EPOCHS = (1, 21), (1, 6)
#: the seed-0 runs of docs/optimizer.md's comparison that ship in checkpoints/
SHIPPED_COMPARED = {
    "pn-lambda1": "pn-lambda1-seed0",
    "adam-lr0.001": "adam-lr0.001-seed0",
    "sgd-lr0.01": "sgd-lr0.01-seed0",
}
NUMBER = r"[-+−]?[0-9][0-9.,]*(?:e[-+][0-9]+)?[%x]?"
INLINE = re.compile(rf"({NUMBER})<!--n:([\w.:-]+)-->")
BLOCK = re.compile(r"<!-- begin:([\w.-]+) -->\n(.*?)<!-- end:\1 -->", re.S)


@dataclass
class Numbers:
    """The numbers and tables of one document."""

    doc: str
    values: dict[str, tuple[float, str]] = field(default_factory=dict)
    blocks: dict[str, str] = field(default_factory=dict)

    def add(self, key: str, value: float, spec: str, suffix: str = "") -> None:
        """Quote ``value`` as ``format(value, spec) + suffix`` under ``key``."""
        if key in self.values:
            raise ValueError(f"{self.doc}: key {key} given twice")
        self.values[key] = (float(value), format(float(value), spec) + suffix)

    def table(self, key: str, header: list[str], rows: list[list[str]]) -> None:
        """A markdown table under ``key`` (a ``|`` inside a cell escaped)."""

        def line(cells: list[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        lines = [line(header), "|" + "---|" * len(header)] + [line(row) for row in rows]
        self.blocks[key] = "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- records
def records(folder: Path, epochs: tuple[float, ...] | None = None) -> dict[float, dict]:
    """The analysed records of a run by epoch, from the settings covering most of ``epochs``.

    The same choice as the Paper page and ``benchmarks/reproduce_paper.py`` (ties: the
    settings listed first). Of two records of one epoch (VGG-11''s epoch 8: the original
    ``.pt`` and the shipped float16 copy), the first by name: the original.
    """
    run = load_run(folder)
    settings = run.settings()
    if not settings:
        raise SystemExit(f"{folder} has no analysis")
    wanted = set(epochs or ())
    best = max(settings, key=lambda s: sum(r.epoch in wanted for r in run.records(s, False)))
    out: dict[float, dict] = {}
    for r in run.records(best):
        out.setdefault(r.epoch, as_dict(r))
    return out


def as_dict(r) -> dict:
    """A store record as the dict the measures of ``hessian_lens.paper`` take."""
    return {"epoch": r.epoch, "summary": r.summary, "arrays": r.arrays, "checkpoint": r.checkpoint}


def with_inverse(rec: dict, inv: np.ndarray) -> dict:
    """The record with ``inv`` as its ``Hinv``."""
    return {**rec, "arrays": {**rec["arrays"], "Hinv": inv}}


def shares(rec: dict, name: str) -> dict[str, float]:
    """Off-block shares (layer blocks) of ``name`` on both scales."""
    blocks = paper.layer_blocks(rec["summary"])
    M = rec["arrays"][name]
    return {s: paper.off_block_share(paper.on_scale(M, s), blocks) for s in paper.SCALES}


def label(epoch: float) -> str:
    """An epoch as the docs write it (``1``, ``0.25``)."""
    return f"{epoch:g}"


# ---------------------------------------------------------------------------- reproduction.md
def reproduction(root: Path) -> Numbers:
    """Every number of docs/reproduction.md."""
    out = Numbers("docs/reproduction.md")
    lenet = records(root / "lenet5-cifar10-paper", LENET_EPOCHS)
    vgg = records(root / "vgg11p-cifar10", VGG_EPOCHS)
    default = records(root / "lenet5-cifar10", LENET_EPOCHS)
    paper_shares(out, lenet, vgg, default)
    inverses(out, lenet, vgg)
    claims(out, lenet, vgg)
    long_range(out, vgg)
    kinds(out, vgg)
    strongest(out, lenet, vgg)
    shipped = float16(out, root / "vgg11p-cifar10", vgg)
    vgg_training(out, root / "vgg11p-cifar10", vgg, shipped)
    return out


def paper_shares(out: Numbers, lenet: dict, vgg: dict, default: dict) -> None:
    """The off-block shares at the paper's epochs: a table, and the prose's numbers."""
    rows = []
    for run, recs, epochs in (("LeNet-5", lenet, LENET_EPOCHS), ("VGG-11'", vgg, VGG_EPOCHS)):
        for e in epochs:
            h, hi = shares(recs[e], "H"), shares(recs[e], "Hinv")
            if run == "LeNet-5":  # the prose quotes these
                for name, values in (("H", h), ("Hinv", hi)):
                    out.add(f"lenet.e{e}.{name}.raw", values["raw"], ".0%")
                    out.add(f"lenet.e{e}.{name}.norm", values["normalized"], ".0%")
            status = recs[e]["summary"]["inverse"]["status"]
            cells = [f"{v:.1%}" for v in (*h.values(), *hi.values())]
            rows.append([run, label(e), *cells, status])
    out.table(
        "paper-shares",
        ["run", "epoch", "H̄ raw", "H̄ normalised", "H̄⁻¹ raw", "H̄⁻¹ normalised", "H̄"],
        rows,
    )
    for e in LENET_EPOCHS:
        h = shares(default[e], "H")
        out.add(f"default.e{e}.H.raw", h["raw"], ".0%")
        out.add(f"default.e{e}.H.norm", h["normalized"], ".0%")
    vs = [shares(vgg[e], n) for e in VGG_EPOCHS for n in ("H", "Hinv")]
    out.add("vgg.H.min", min(min(s.values()) for s in vs[0::2]), ".0%")
    out.add("vgg.H.max", max(max(s.values()) for s in vs[0::2]), ".0%")
    out.add("vgg.Hinv.min", min(min(s.values()) for s in vs[1::2]), ".0%")
    out.add("vgg.Hinv.max", max(max(s.values()) for s in vs[1::2]), ".0%")


def inverses(out: Numbers, lenet: dict, vgg: dict) -> None:
    """What is stored as H̄⁻¹ (S|C|⁻¹S) against |H̄|⁻¹, wherever H̄ is indefinite."""
    rows = []
    for run, recs in (("LeNet-5", lenet), ("VGG-11'", vgg)):
        for e, rec in sorted(recs.items()):
            if rec["summary"]["inverse"]["status"] != "indefinite":
                continue
            stored = shares(rec, "Hinv")
            sf = shares(with_inverse(rec, paper.abs_inverse(rec["arrays"]["H"])), "Hinv")
            n_neg = rec["summary"]["inverse"]["n_negative"]
            cells = [f"{v:.1%}" for v in (*stored.values(), *sf.values())]
            rows.append([run, label(e), str(n_neg), *cells])
            if run == "LeNet-5" and e == 1:
                out.add("lenet.e1.abs.raw", sf["raw"], ".1%")
                out.add("lenet.e1.abs.norm", sf["normalized"], ".1%")
                out.add("lenet.e1.SCS.norm", stored["normalized"], ".1%")
    out.table(
        "inverses",
        [
            "run",
            "epoch",
            "negative eigenvalues",
            "S|C|⁻¹S raw",
            "S|C|⁻¹S normalised",
            "|H̄|⁻¹ raw",
            "|H̄|⁻¹ normalised",
        ],
        rows,
    )
    abs_claims = paper.figure_claims(*_paper_epochs(lenet, vgg, abs_inverse=True))
    same = paper.figure_claims(*_paper_epochs(lenet, vgg))
    changed = [
        [a.figure, a.claim, b.verdict, a.verdict]
        for a, b in zip(abs_claims, same, strict=True)
        if a.verdict != b.verdict
    ]
    out.table("abs-verdicts", ["figure", "claim", "with S|C|⁻¹S", "with |H̄|⁻¹"], changed)
    out.add("abs.changed", len(changed), ".0f")
    out.add("claims.total", len(same), ".0f")
    floored = [
        e for recs in (lenet, vgg) for e, r in recs.items() if r["summary"]["inverse"]["n_floored"]
    ]
    if floored:  # the page says that no eigenvalue was floored
        raise SystemExit(f"eigenvalues were floored at epochs {floored}: say so in the docs")


def _paper_epochs(lenet: dict, vgg: dict, abs_inverse: bool = False) -> tuple[dict, dict]:
    def pick(recs: dict, epochs: tuple) -> dict:
        out = {}
        for e in epochs:
            rec = recs[e]
            if abs_inverse:
                rec = with_inverse(rec, paper.abs_inverse(rec["arrays"]["H"]))
            out[str(e)] = rec
        return out

    return pick(lenet, LENET_EPOCHS), pick(vgg, VGG_EPOCHS)


def claims(out: Numbers, lenet: dict, vgg: dict) -> None:
    """The claims table (``paper.figure_claims``), and its numbers the prose quotes."""
    rows = []
    for c in paper.figure_claims(*_paper_epochs(lenet, vgg)):
        rows.append(
            [
                c.figure,
                c.claim,
                c.measure,
                f"{c.raw:.3g}",
                f"{c.normalized:.3g}",
                c.threshold,
                f"**{c.verdict}**",
            ]
        )
    out.table(
        "claims", ["figure", "claim", "measure", "raw", "normalised", "threshold", "verdict"], rows
    )
    for e in VGG_EPOCHS:
        rec = vgg[e]
        for scale, short in (("raw", "raw"), ("normalized", "norm")):
            out.add(
                f"vgg.e{e}.strength.{short}",
                paper.last_block_strength(rec, "Hinv", scale),
                ".1f",
                "x",
            )
            out.add(f"vgg.e{e}.long.{short}", paper.long_range(rec, "Hinv", scale), ".2f")
    dominate = [paper.weights_dominate(vgg[e], "Hinv", "normalized") for e in VGG_EPOCHS]
    out.add("vgg.dominate.norm.min", min(dominate), ".2f")
    out.add("vgg.dominate.norm.max", max(dominate), ".2f")


def long_range(out: Numbers, vgg: dict) -> None:
    """One far pair against every far pair, at every analysed epoch of VGG-11'."""
    rows, means = [], []
    for e, rec in sorted(vgg.items()):
        cells = [f"{paper.long_distance(rec, 'Hinv', s):.2f}" for s in paper.SCALES]
        cells += [f"{paper.long_range(rec, 'Hinv', s):.2f}" for s in paper.SCALES]
        rows.append([label(e), *cells])
        if e >= 1:
            means.append(paper.long_range(rec, "Hinv", "normalized"))
    out.table(
        "long-range",
        [
            "epoch",
            "one pair, raw",
            "one pair, normalised",
            "mean of far pairs, raw",
            "mean of far pairs, normalised",
        ],
        rows,
    )
    out.add("vgg.long.norm.min1", min(means), ".2f")
    out.add("vgg.long.norm.max1", max(means), ".2f")
    out.add("vgg.e0.5.long.norm", paper.long_range(vgg[0.5], "Hinv", "normalized"), ".2f")


def kinds(out: Numbers, vgg: dict) -> None:
    """Raw BB and WB couplings of H̄⁻¹ against WW in the last five layers of VGG-11'."""
    for e in VGG_EPOCHS:
        m = paper.kind_means(vgg[e], "Hinv", "raw")
        out.add(f"vgg.e{e}.BB_over_WW", m["BB"] / m["WW"], ".1e")
        out.add(f"vgg.e{e}.WB_over_WW", m["WB"] / m["WW"], ".0f")


def strongest(out: Numbers, lenet: dict, vgg: dict) -> None:
    """The strongest couplings of H̄⁻¹ between layers at least two apart."""
    lines = []
    for run, recs, epochs in (("LeNet-5", lenet, LENET_EPOCHS), ("VGG-11'", vgg, VGG_EPOCHS)):
        for e in epochs:
            top = paper.strongest_long_range(recs[e])
            lines.append(f"- {run} epoch {e}: " + ", ".join(f"{a}–{b} {v:+.3f}" for a, b, v in top))
    out.blocks["strongest"] = "\n".join(lines) + "\n"


def vgg_training(out: Numbers, folder: Path, vgg: dict, shipped: dict) -> None:
    """VGG-11' at every analysed point: accuracy and loss (run.json), off-block shares.

    The last row is the shipped float16 copy of the last checkpoint.
    """
    history = {h["epoch"]: h for h in load_run(folder).history}
    rows = []
    for e, rec in [*sorted(vgg.items()), (shipped["epoch"], shipped)]:
        h, hi = shares(rec, "H"), shares(rec, "Hinv")
        step = history[e]
        cells = [f"{v:.1%}" for v in (*h.values(), *hi.values())]
        name = label(e) if rec is not shipped else f"{label(e)}, `{rec['checkpoint']}`"
        rows.append(
            [
                name,
                f"{step['test_acc']:.1%}",
                f"{step['train_loss']:.3f}",
                *cells,
                rec["summary"]["inverse"]["status"],
            ]
        )
    out.table(
        "vgg-training",
        [
            "epoch",
            "test accuracy",
            "train loss",
            "H̄ raw",
            "H̄ normalised",
            "H̄⁻¹ raw",
            "H̄⁻¹ normalised",
            "H̄",
        ],
        rows,
    )


def float16(out: Numbers, folder: Path, vgg: dict) -> dict:
    """The shipped float16 last checkpoint's record against the original's (same settings).

    Raises when the store holds no record of the shipped file, or when its record is not
    analysed under the original's settings.
    """
    run = load_run(folder)
    (path,) = run.checkpoints
    sha = file_sha256(path)
    original = vgg[max(vgg)]
    mine = [r for s in run.settings() for r in run.records(s) if r.checkpoint_sha == sha]
    same = [
        r for r in mine if r.epoch == original["epoch"] and r.checkpoint != original["checkpoint"]
    ]
    if len(same) != 1 or len(mine) != 1:
        raise SystemExit(f"{folder}: expected one record of {path.name}, found {len(mine)}")
    shipped = as_dict(same[0])
    for name, key in (("H", "H"), ("g", "g"), ("Hinv", "Hinv")):
        a, b = shipped["arrays"][name], original["arrays"][name]
        out.add(f"f16.{key}.maxdiff", np.abs(a - b).max() / np.abs(b).max(), ".1e")
    loss_a, loss_b = shipped["summary"]["loss"], original["summary"]["loss"]
    out.add("f16.loss.reldiff", abs(loss_a - loss_b) / abs(loss_b), ".1e")
    out.add("f16.seconds", same[0].seconds, ".0f")
    diffs = [
        abs(shares(shipped, n)[s] - shares(original, n)[s])
        for n in ("H", "Hinv")
        for s in paper.SCALES
    ]
    out.add("f16.shares.maxdiff", max(diffs) * 100, ".2f")
    return shipped


# ---------------------------------------------------------------------------- optimizer.md
def optimizer(root: Path, results: Path) -> Numbers:
    """Every number of docs/optimizer.md."""
    out = Numbers("docs/optimizer.md")
    init_scale(out, root)
    first_update(out, results / "first_update.jsonl")
    rows = [r for r in read_lines(results / "optim_compare.jsonl") if "seed" in r]  # runs
    comparison(out, rows)
    best_validation(out, root, rows)
    trajectory(out, root / "pn-lambda1-seed0")
    rates(out, root / "pn-lambda1-seed0")
    return out


def read_lines(path: Path) -> list[dict]:
    """A JSON-lines file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def init_scale(out: Numbers, root: Path) -> None:
    """Weight scale of PyTorch's init against the paper's, from the shipped epoch-0 checkpoints.

    The spread of the std ratios over LeNet-5's five weight tensors (paper / PyTorch).
    """
    import torch

    def weights(run: str) -> dict:
        state = torch.load(root / run / "epoch_0000.pt", weights_only=True)["state_dict"]
        return {k: v.double() for k, v in state.items() if k.endswith("weight")}

    torch_w, paper_w = weights("lenet5-cifar10"), weights("lenet5-cifar10-paper")
    ratios = [float(paper_w[k].std() / torch_w[k].std()) for k in paper_w]
    out.add("init.std.min", min(ratios), ".2f", "x")
    out.add("init.std.max", max(ratios), ".2f", "x")
    out.add("init.var.min", min(ratios) ** 2, ".1f", "x")
    out.add("init.var.max", max(ratios) ** 2, ".1f", "x")


def first_update(out: Numbers, path: Path) -> None:
    """The first-update table and its prose (benchmarks/first_update.py's lines)."""
    lines = read_lines(path)
    one = [x for x in lines if x["updates"] == 1]
    period = {(x["init"], x["seed"]): x for x in lines if x["updates"] == 10}
    rows = []
    for x in one:
        end = period[(x["init"], x["seed"])]
        rates_ = ", ".join(f"`{n}` {v:.3g}" for n, v in x["top_rates"])
        taylor = ", ".join(f"{v:+.3g}" for v in x["taylor_at_1"])
        along = " → ".join(f"{x[k]:.3f}" for k in ("loss_before", "loss_at_0.3", "loss_after"))
        rows.append(
            [
                x["init"],
                str(x["seed"]),
                rates_,
                taylor,
                along,
                f"{x['loss_before']:.3f} → {end['loss_after']:.4g}",
            ]
        )
    out.table(
        "first-update",
        [
            "init",
            "seed",
            "largest rates η_s (first update)",
            "Taylor terms at t = 1, orders 1–4 (one update)",
            "loss along one update: t = 0 → 0.3 → 1",
            "over the first period (10 updates): t = 0 → 1",
        ],
        rows,
    )
    first_update_prose(out, one, period)


def first_update_prose(out: Numbers, one: list[dict], period: dict) -> None:
    """The ranges the prose quotes about the first update."""
    by_init = {i: [x for x in one if x["init"] == i] for i in ("torch", "paper")}
    torch_rates = [v for x in by_init["torch"] for _, v in x["top_rates"]]
    out.add("fu.torch.rate.min", min(torch_rates), ".2g")
    out.add("fu.torch.rate.max", max(torch_rates), ".3g")
    out.add("fu.paper.rate.max", max(v for x in by_init["paper"] for _, v in x["top_rates"]), ".3g")
    ends = {i: [period[(x["init"], x["seed"])] for x in by_init[i]] for i in by_init}
    out.add("fu.torch.after.min", min(x["loss_after"] for x in ends["torch"]), ".3g")
    out.add("fu.torch.after.max", max(x["loss_after"] for x in ends["torch"]), ",.0f")
    growth = [x["loss_after"] / x["loss_before"] for x in ends["torch"]]
    out.add("fu.torch.growth.min", min(growth), ".0f")
    out.add("fu.torch.growth.max", max(growth), ",.0f")
    before = {i: [x["loss_before"] for x in by_init[i]] for i in by_init}
    out.add("fu.torch.before.min", min(before["torch"]), ".2g")
    out.add("fu.paper.before.min", min(before["paper"]), ".2g")
    out.add("fu.paper.before.max", max(before["paper"]), ".2g")
    out.add("fu.paper.after.min", min(x["loss_after"] for x in ends["paper"]), ".3g")
    out.add("fu.paper.after.max", max(x["loss_after"] for x in ends["paper"]), ".3g")
    smaller = [
        abs(x["taylor_at_1"][1]) / max(map(abs, x["taylor_at_1"][2:])) for x in by_init["paper"]
    ]
    out.add("fu.paper.order2_over_higher.min", min(smaller), ".0f", "x")
    seed0 = next(x for x in by_init["torch"] if x["seed"] == 0)["taylor_at_1"]
    out.add("fu.torch.s0.o2", seed0[1], "+.3g")
    out.add("fu.torch.s0.o3", seed0[2], "+.3g")
    out.add("fu.torch.s0.o4", seed0[3], "+.3g")


def comparison(out: Numbers, rows: list[dict]) -> None:
    """The comparison's tables: every run, and the 3-seed summary (no pick on the test set)."""
    table = []
    for r in rows:
        table.append(
            [
                r["run"],
                str(r["seed"]),
                f"{r['final_train_nll']:.3f}",
                f"{r['final_val_acc']:.1%}",
                f"{r['final_test_acc']:.1%}",
                "no" if r["diverged"] is None else "yes",
            ]
        )
    out.table(
        "compare-runs",
        ["run", "seed", "final train NLL", "final val acc", "final test acc", "diverged"],
        table,
    )
    names = {
        "pn-lambda1": "PartitionNewton, paper defaults (λ_int 1)",
        "pn-lambda100": "PartitionNewton, λ_int 100",
        "adam-lr0.001": "Adam, lr 1e-3",
        "sgd-lr0.01": "SGD + momentum, lr 0.01",
    }
    summary = []
    for run, title in names.items():
        mine = [r for r in rows if r["run"] == run]
        nll = [r["final_train_nll"] for r in mine]
        share = mine[0]["curvature_share"]
        summary.append(
            [
                f"{title}",
                str(len(mine)),
                f"{statistics.mean(nll):.3f} ± {statistics.stdev(nll):.3f}",
                f"{statistics.mean(r['final_val_acc'] for r in mine):.1%}",
                f"{statistics.mean(r['final_test_acc'] for r in mine):.1%}",
                f"{share:.0%}" if share else "–",
                str(sum(r["diverged"] is not None for r in mine)),
            ]
        )
        if run == "sgd-lr0.01":
            out.add(f"cmp.{run}.nll.min", min(nll), ".2f")
            out.add(f"cmp.{run}.nll.max", max(nll), ".2f")
        if run in ("adam-lr0.001", "pn-lambda100"):
            out.add(f"cmp.{run}.nll.mean", statistics.mean(nll), ".2f")
        if run == "pn-lambda100":
            out.add(f"cmp.{run}.nll.std", statistics.stdev(nll), ".3f")
    out.table(
        "compare-summary",
        [
            "run",
            "seeds",
            "final train NLL, mean ± std",
            "final val acc (mean)",
            "final test acc (mean)",
            "curvature share",
            "divergences",
        ],
        summary,
    )
    comparison_prose(out, rows)


def comparison_prose(out: Numbers, rows: list[dict]) -> None:
    """Ranges the prose quotes about the comparison."""
    pn = [r for r in rows if r["run"] == "pn-lambda1" and r["seed"] != 0]
    out.add("cmp.pn-lambda1.good.min", min(r["final_train_nll"] for r in pn), ".2f")
    out.add("cmp.pn-lambda1.good.max", max(r["final_train_nll"] for r in pn), ".2f")
    shares_ = [r["curvature_share"] for r in rows if r["curvature_share"]]
    out.add("cmp.curvature.min", min(shares_), ".1%")
    out.add("cmp.curvature.max", max(shares_), ".1%")
    seconds = [r["sec_per_epoch"] for r in rows]
    out.add("cmp.seconds.min", min(seconds), ".1f")
    out.add("cmp.seconds.max", max(seconds), ".1f")
    out.add("cmp.runs", len(rows), ".0f")
    out.add("cmp.diverged", sum(r["diverged"] is not None for r in rows), ".0f")


def best_validation(out: Numbers, root: Path, rows: list[dict]) -> None:
    """Test accuracy at the epoch of best validation accuracy, for the shipped runs.

    The shipped run's history must end where the comparison's line does (else this
    raises: the table would mix two runs).
    """
    table = []
    for run, folder in SHIPPED_COMPARED.items():
        history = [h for h in load_run(root / folder).history if h["epoch"] >= 1]
        line = next(r for r in rows if r["run"] == run and r["seed"] == 0)
        if history[-1]["test_acc"] != line["final_test_acc"] or len(history) != line["epochs"]:
            raise SystemExit(f"checkpoints/{folder} is not the run of optim_compare.jsonl")
        best = max(history, key=lambda h: h["val_acc"])  # the first epoch on ties
        table.append(
            [
                run,
                "0",
                f"{best['epoch']:g}",
                f"{best['val_acc']:.1%}",
                f"{best['test_acc']:.1%}",
                f"{history[-1]['test_acc']:.1%}",
            ]
        )
        if run == "pn-lambda1":
            out.add(f"bestval.{run}.test", best["test_acc"], ".1%")
    out.table(
        "best-validation",
        [
            "run",
            "seed",
            "best validation epoch",
            "val acc there",
            "test acc there",
            "final test acc",
        ],
        table,
    )


def trajectory(out: Numbers, folder: Path) -> None:
    """PartitionNewton seed 0: its best training loss, what came after, the final damping."""
    every = load_run(folder).history
    history = [h for h in every if h["epoch"] >= 1]
    best = min(history, key=lambda h: h["train_loss"])
    after = [h["train_loss"] for h in history if h["epoch"] > best["epoch"]]
    start = every[0]["train_loss"]
    out.add("pn0.start.loss", start, ".2f")
    out.add(
        "pn0.undone.max", (max(after) - best["train_loss"]) / (start - best["train_loss"]), ".0%"
    )
    out.add("pn0.best.loss", best["train_loss"], ".2f")
    out.add("pn0.best.epoch", best["epoch"], "g")
    out.add("pn0.after.min", min(after), ".2f")
    out.add("pn0.after.max", max(after), ".2f")
    out.add("pn0.lr.first", history[0]["lr"], "g")
    out.add("pn0.lr.final", history[-1]["lr"], "g")


def rates(out: Numbers, folder: Path) -> None:
    """Per-tensor rates over the recomputations of PartitionNewton seed 0 (its log)."""
    log = json.loads((folder / "optimizer_log.json").read_text())
    entries = [e for e in log["entries"] if "eta" in e]
    eta = np.array([e["eta"] for e in entries], dtype=float)
    raw = np.array([e["raw_eta"] for e in entries], dtype=float)
    if not np.array_equal(eta == 0, raw < 0):
        raise SystemExit("optimizer_log.json: a rate is 0 that was not clipped, or the reverse")
    clipped = (eta == 0).mean(axis=0)
    medians = [float(np.median(eta[eta[:, i] > 0, i])) for i in range(eta.shape[1])]
    rows = [
        [f"`{n}`", f"{c:.0%}", f"{m:.2g}"]
        for n, c, m in zip(log["labels"], clipped, medians, strict=True)
    ]
    out.table("rates", ["tensor", "clipped to 0", "median unclipped rate"], rows)
    out.add("rates.recomputations", len(entries), ".0f")
    out.add("rates.clipped.min", clipped.min(), ".0%")
    out.add("rates.clipped.max", clipped.max(), ".0%")
    out.add("rates.median.min", min(medians), ".2g")
    out.add("rates.median.max", max(medians), ".2g")
    out.add("rates.orders", np.log10(max(medians) / min(medians)), ".1f")


# ---------------------------------------------------------------------------- docs
def compute(root: Path = REPO / "checkpoints", results: Path = REPO / "benchmarks/results"):
    """The numbers of both docs, by doc path."""
    return {n.doc: n for n in (reproduction(root), optimizer(root, results))}


def differences(text: str, numbers: Numbers) -> list[str]:
    """What a doc says that its numbers do not: a wrong or unknown key, a table or key unused."""
    problems = []
    used = set()
    for m in INLINE.finditer(text):
        said, key = m.group(1), m.group(2)
        used.add(key)
        if key not in numbers.values:
            problems.append(f"{numbers.doc}: unknown number key {key}")
        elif said != numbers.values[key][1]:
            problems.append(
                f"{numbers.doc}: {key} says {said}, the files give {numbers.values[key][1]}"
            )
    found = dict(BLOCK.findall(text))
    for key, markdown in numbers.blocks.items():
        if key not in found:
            problems.append(f"{numbers.doc}: table {key} is missing")
        elif found[key] != markdown:
            problems.append(f"{numbers.doc}: table {key} differs from the files")
    problems += [
        f"{numbers.doc}: table {k} is not computed here" for k in found if k not in numbers.blocks
    ]
    problems += [
        f"{numbers.doc}: number {k} is not quoted" for k in numbers.values if k not in used
    ]
    return problems


def rewrite(text: str, numbers: Numbers) -> str:
    """The doc with every marked number and table as the files give them."""

    def number(m: re.Match) -> str:
        key = m.group(2)
        return (numbers.values[key][1] if key in numbers.values else m.group(1)) + m.group(0)[
            len(m.group(1)) :
        ]

    def block(m: re.Match) -> str:
        key = m.group(1)
        body = numbers.blocks.get(key, m.group(2))
        return f"<!-- begin:{key} -->\n{body}<!-- end:{key} -->"

    return BLOCK.sub(block, INLINE.sub(number, text))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the docs; exit 1 if not")
    ap.add_argument("--write", action="store_true", help="rewrite the docs' numbers and tables")
    args = ap.parse_args(argv)
    problems = []
    for doc, numbers in compute().items():
        path = REPO / doc
        if args.write:
            path.write_text(rewrite(path.read_text(), numbers))
        if args.check or args.write:
            problems += differences(path.read_text(), numbers)
            continue
        for key, (value, text) in numbers.values.items():
            print(json.dumps({"doc": doc, "key": key, "value": value, "text": text}))
        for key, markdown in numbers.blocks.items():
            print(json.dumps({"doc": doc, "block": key, "markdown": markdown}))
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
