"""The published transformer-Hessian claims, settled on draws of samples and training seeds.

Reads the claims stores ``benchmarks/results/claims/<run>.sqlite`` that
``benchmarks/claims_measure.py`` fills (one record per checkpoint, kind and draw of
analysis samples) and prints one object per claim, run, epoch and measure::

    {claim, run, epoch, measure, value, low, high, n_draws, n_seeds, samples, verdict}

* ``value``: the ordinary median over every (training seed, draw) value;
* ``low`` / ``high``: the distribution-free confidence interval of that median from
  order statistics (:func:`median_interval`: the widest ``[x_(k), x_(n+1-k)]`` whose
  coverage ``1 - 2 P(Binomial(n, 1/2) < k)`` is at least 90%; with 5 values it is their
  range, 93.8%), pooled over seeds and draws;
* ``n_draws`` / ``n_seeds``: the fewest draws of samples any training seed has, and the
  training seeds; ``samples``: the training samples (images, windows) in each draw;
* ``verdict``: ``holds`` when the interval lies on the claim's side of its threshold,
  ``does not hold`` when it lies on the other side, ``undecided`` when it straddles it or
  a seed has fewer than :data:`MIN_DRAWS` draws. Between-run claims (Zhang et al.) compare
  a run's interval with the other family's (:func:`between_families`).

The claims and their measures (``c_s = H̄_ss / ḡ_s``, u = the gradient):

* ``ormaniec-qv`` (Ormaniec, Dangel & Singh 2025): query blocks have smaller curvature
  than value blocks. Threshold 1 on: median |c_s| of the query heads over that of the
  value heads; the raw ratio of median |H̄_ss| (gradient-dominated: ``H̄_ss = c_s ḡ_s``);
  ``||H_QQ||_F / ||H_VV||_F`` per head (median over heads) and of the whole query and value
  blocks, and the same for the Gauss-Newton part G and the functional part H - G.
* ``zhang-heterogeneity`` (Zhang et al. 2024): the blocks' Hessian spectra differ more in
  transformers than in CNNs. JS⁰ of the weight blocks' spectral densities, and beside it
  the spread (std of log10 |c_s|) over all groups and between the shared roles
  (:func:`hessian_lens.heterogeneity.shared_roles`, ordinary medians).
* ``dong-block-diagonal`` (Adam-mini, Zhang et al. 2024; Dong et al. 2025): the Hessian is
  close to block-diagonal. Threshold 0.5 on the share of ``||H||_F^2`` in the diagonal
  blocks (per group, and per layer), and beside it the share of the normalised H̄ inside
  the layer blocks.
* ``abreu-layerwise`` (Abreu et al. 2025): layer-wise (block-diagonal) damped Gauss-Newton
  steps do about as well as the full one. Threshold 0.5 on the ratio of the decreases of
  the damped model ``ḡ·η − η·(Ḡ + λ diag ḡ)η / 2`` that the layer-wise and the full step
  achieve, for ``λ = ρ max_s Ḡ_ss / ḡ_s`` with ρ in :data:`DAMPING`; the cosine between the
  steps is reported with a 0.5 threshold too. Beside it, the undamped H̄ with the
  saddle-free step ``|H̄|⁻¹ ḡ`` (``linalg.inverse`` inverts |λ| in normalised coordinates).

    python benchmarks/transformer_claims.py --json       # the objects, one per line
    python benchmarks/transformer_claims.py --markdown   # the tables docs/transformers.md quotes
    python benchmarks/transformer_claims.py --check      # the docs quote exactly these
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hessian_lens import linalg  # noqa: E402
from hessian_lens.heads import block_of  # noqa: E402
from hessian_lens.heterogeneity import median, shared_roles  # noqa: E402
from hessian_lens.partition import blocks_of  # noqa: E402
from hessian_lens.store import ResultStore  # noqa: E402

STORES = REPO / "benchmarks" / "results" / "claims"
DOC = REPO / "docs" / "transformers.md"
RUNS = ("gpt-text", "vit-cifar10", "vgg11p-cifar10", "resnet18-cifar10")
FAMILY = {"gpt-text": "transformer", "vit-cifar10": "transformer"}
MIN_DRAWS = 5
#: The samples a draw of each kind holds (another draw size is reported as its own measure).
SAMPLES = {"spectra": 16, "frob": 16}
LEVEL = 0.9
DAMPING = (1e-3, 1e-2, 1e-1, 1.0)
HOLDS, FAILS, UNDECIDED = "holds", "does not hold", "undecided"


# ---------------------------------------------------------------------------- statistics
def median_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Distribution-free interval for the median: order statistics ``x_(k), x_(n+1-k)``.

    The largest ``k`` whose coverage ``1 - 2 P(B < k)``, ``B ~ Binomial(n, 1/2)``, is at
    least ``level`` (NaNs when even ``k = 1`` falls short: fewer than 5 values at 90%).

    Example:
        >>> median_interval([5.0, 1.0, 4.0, 2.0, 3.0])
        (1.0, 5.0)
        >>> median_interval(list(range(15)))
        (3.0, 11.0)
    """
    v = np.sort(np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64))
    n, best = v.size, 0
    for k in range(1, n // 2 + 1):
        below = sum(math.comb(n, j) for j in range(k)) / 2.0**n
        if 1 - 2 * below >= level:
            best = k
    return (float(v[best - 1]), float(v[n - best])) if best else (math.nan, math.nan)


def verdict(low: float, high: float, threshold: float, below: bool, enough: bool) -> str:
    """``holds`` when ``[low, high]`` is on the claim's side of ``threshold`` (below it when
    ``below``), ``does not hold`` when on the other side, else (or not ``enough``) undecided.
    """
    if not enough or not (math.isfinite(low) and math.isfinite(high)):
        return UNDECIDED
    if (high < threshold) if below else (low > threshold):
        return HOLDS
    if (low > threshold) if below else (high < threshold):
        return FAILS
    return UNDECIDED


# ---------------------------------------------------------------------------- per record
def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 and math.isfinite(a) and math.isfinite(b) else math.nan


def _med(values) -> float:
    values = [x for x in values if math.isfinite(x)]
    return median(values) if values else math.nan


def _roles(labels, wanted: str) -> list[int]:
    return [s for s, x in enumerate(labels) if block_of(x) == wanted and ".rest" not in x]


def qv_measures(rec) -> dict[str, float]:
    """c_s and raw H̄_ss of the query heads over the value heads (ordinary medians)."""
    labels, H, g = rec.summary["labels"], rec.arrays["H"], rec.arrays["g"]
    d = np.diag(H)
    c = np.where(g > 0, d / np.where(g > 0, g, 1), np.nan)
    q, v = _roles(labels, "q"), _roles(labels, "v")
    return {
        "c_q / c_v": _ratio(_med(np.abs(c[q])), _med(np.abs(c[v]))),
        "raw H̄_qq / H̄_vv (gradient-dominated)": _ratio(_med(np.abs(d[q])), _med(np.abs(d[v]))),
    }


FROB = {"hessian": "H", "ggn": "G", "functional": "H − G"}


def qvfrob_measures(rec) -> dict[str, float]:
    """||C_QQ||_F / ||C_VV||_F per head (median) and whole, for C = H, G, H - G."""
    labels = rec.summary["labels"]
    q, v = _roles(labels, "q"), _roles(labels, "v")
    out = {}
    for c, name in FROB.items():
        sq = np.clip(rec.arrays[f"fro_sq_{c}"], 0, None)
        whole = _ratio(math.sqrt(sq[np.ix_(q, q)].sum()), math.sqrt(sq[np.ix_(v, v)].sum()))
        out[f"‖{name}_QQ‖ / ‖{name}_VV‖ (whole blocks)"] = whole
        if c == "hessian":
            per_head = _ratio(_med(np.sqrt(sq[q, q])), _med(np.sqrt(sq[v, v])))
            out["‖H_QQ‖ / ‖H_VV‖ (per head, median)"] = per_head
    return out


def spread_measures(rec) -> dict[str, float]:
    """Std of log10 |c_s| over all groups and between the shared roles' medians of |c_s|.

    (Measure names avoid the pipe character: they are markdown table cells.)
    """
    labels, kinds = rec.summary["labels"], rec.summary["kinds"]
    g, d = rec.arrays["g"], np.diag(rec.arrays["H"])
    ok = (g > 0) & (d != 0)
    logc = np.log10(np.abs(d[ok] / g[ok]))
    roles = np.asarray(shared_roles(labels, kinds))[ok]
    per_role = [math.log10(median(10 ** logc[roles == r])) for r in dict.fromkeys(roles)]
    return {
        "spread of log10 c_s, all groups": float(np.std(logc)) if logc.size > 1 else math.nan,
        "spread of log10 c_s between shared roles": float(np.std(per_role))
        if len(per_role) > 1
        else math.nan,
    }


def _layer_blocks(rec) -> list[list[int]]:
    return blocks_of("layer", rec.summary["layers"], rec.summary["kinds"])


def saddle_free_measures(rec) -> dict[str, float]:
    """Layer-wise vs full saddle-free step ``|H̄|⁻¹ḡ`` on the undamped H̄."""
    H, g = torch.as_tensor(rec.arrays["H"]), torch.as_tensor(rec.arrays["g"])
    if not bool((g > 0).all()):
        return {}  # a group without gradient: any blocking is exact (the ViT's epoch 0)
    m = linalg.compare_block_diagonal(H, g, _layer_blocks(rec))
    return {
        "saddle-free step on H̄: layer-wise / full decrease": m["decrease_bd"] / m["decrease_full"],
        "saddle-free step on H̄: cos(layer-wise, full)": m["cos_eta"],
    }


def layer_mass_measures(rec) -> dict[str, float]:
    """The share of the normalised H̄'s absolute mass inside the layer blocks."""
    H = torch.as_tensor(rec.arrays["H"])
    if not bool((torch.as_tensor(rec.arrays["g"]) > 0).all()):
        return {}
    off = linalg.off_block_share(linalg.normalize(H), _layer_blocks(rec))
    return {"normalised H̄ mass inside the layer blocks": 1 - off}


def damped_measures(rec) -> dict[str, float]:
    """Layer-wise vs full damped Gauss-Newton steps across the damping sweep."""
    G, g = torch.as_tensor(rec.arrays["H"]), torch.as_tensor(rec.arrays["g"])
    if not bool((g > 0).all()):
        return {}
    top = float((G.diagonal() / g).max())
    out = {}
    for rho in DAMPING:
        D = linalg.damped(G, rho * top, g)
        m = linalg.compare_block_diagonal(D, g, _layer_blocks(rec))
        out[f"damped GN ρ={rho:g}: layer-wise / full decrease"] = (
            m["decrease_bd"] / m["decrease_full"]
        )
        out[f"damped GN ρ={rho:g}: cos(layer-wise, full)"] = m["cos_eta"]
    return out


def frob_measures(rec) -> dict[str, float]:
    """The share of ||H||_F^2 in the diagonal blocks: per group and per layer."""
    sq = np.clip(rec.arrays["fro_sq"], 0, None)
    total = sq.sum()
    inside = sum(sq[np.ix_(b, b)].sum() for b in _layer_blocks(rec))
    return {
        "‖H‖²_F share in diagonal blocks (groups)": float(np.trace(sq) / total),
        "‖H‖²_F share in diagonal blocks (layers)": float(inside / total),
    }


def spectra_measures(rec) -> dict[str, float]:
    return {"JS⁰ of the weight blocks' spectra": float(rec.summary["js0"])}


#: (store kind, claim, measures of a record, threshold, the claim is "below it")
TABLE: list[tuple[str, str, Callable, float, bool]] = [
    ("qv", "ormaniec-qv", qv_measures, 1.0, True),
    ("qvfrob", "ormaniec-qv", qvfrob_measures, 1.0, True),
    ("spectra", "zhang-heterogeneity", spectra_measures, math.nan, False),
    ("hessian", "zhang-heterogeneity", spread_measures, math.nan, False),
    ("frob", "dong-block-diagonal", frob_measures, 0.5, False),
    ("hessian", "dong-block-diagonal", layer_mass_measures, 0.5, False),
    ("ggn", "abreu-layerwise", damped_measures, 0.5, False),
    ("hessian", "abreu-layerwise", saddle_free_measures, 0.5, False),
]


# ---------------------------------------------------------------------------- rows
def records(run: str, stores: Path = STORES) -> list:
    path = stores / f"{run}.sqlite"
    return ResultStore.reader(path).records() if path.exists() else []


def rows(stores: Path = STORES) -> list[dict]:
    """Every (claim, run, epoch, measure) with its median, interval, n and verdict."""
    out = []
    for run in RUNS:
        recs = records(run, stores)
        for kind, claim, fn, threshold, below in TABLE:
            out += _rows_of(
                run, [r for r in recs if r.settings["kind"] == kind], claim, fn, threshold, below
            )
    between_families(out)
    return _order(out)


def _rows_of(run, recs, claim, fn, threshold, below) -> list[dict]:
    values: dict = {}
    samples: dict = {}
    for r in recs:
        for measure, x in fn(r).items():
            key = (float(r.epoch), measure + _draw_size(r))
            samples[key] = r.settings["samples"]
            values.setdefault(key, {}).setdefault(r.settings["train_seed"], {})[
                r.settings["seed"]
            ] = x
    out = []
    for (epoch, measure), per_seed in values.items():
        pooled = [x for d in per_seed.values() for x in d.values()]
        low, high = median_interval(pooled)
        n_draws = min(len(d) for d in per_seed.values())
        out.append(
            {
                "claim": claim,
                "run": run,
                "epoch": epoch,
                "measure": measure,
                "value": _med(pooled),
                "low": low,
                "high": high,
                "n_draws": n_draws,
                "n_seeds": len(per_seed),
                "samples": samples[(epoch, measure)],
                "verdict": verdict(
                    low, high, _threshold(measure, threshold), below, n_draws >= MIN_DRAWS
                ),
            }
        )
    return out


def _draw_size(rec) -> str:
    """``""`` for the standard draw size of the record's kind, else `` (n = N)``."""
    n = rec.settings["samples"]
    return "" if n == SAMPLES.get(rec.settings["kind"], 32) else f" (n = {n})"


def _threshold(measure: str, default: float) -> float:
    return 0.5 if "cos(" in measure else default


def between_families(table: list[dict]) -> None:
    """Zhang et al.'s verdicts: a transformer's interval against every CNN's, same stage.

    Stages are the first and the last analysed epoch of each run. A transformer row holds
    when its low end exceeds every CNN's high end at that stage (more heterogeneous), does
    not hold when its high end is below every CNN's low end; a CNN row the other way round.
    """
    zhang = [r for r in table if r["claim"] == "zhang-heterogeneity"]
    for row in zhang:
        stage = _stage(row, zhang)
        others = [
            r
            for r in zhang
            if r["measure"] == row["measure"]
            and _family(r) != _family(row)
            and _stage(r, zhang) == stage
            and r["n_draws"] >= MIN_DRAWS
        ]
        if row["n_draws"] < MIN_DRAWS or not others:
            row["verdict"] = UNDECIDED
            continue
        mine_above = row["low"] > max(r["high"] for r in others)
        mine_below = row["high"] < min(r["low"] for r in others)
        transformer = _family(row) == "transformer"
        if mine_above or mine_below:
            row["verdict"] = HOLDS if mine_above == transformer else FAILS
        else:
            row["verdict"] = UNDECIDED


def _family(row) -> str:
    return FAMILY.get(row["run"], "cnn")


def _stage(row, rows_) -> str:
    epochs = sorted(
        {r["epoch"] for r in rows_ if r["run"] == row["run"] and r["measure"] == row["measure"]}
    )
    return "init" if row["epoch"] == epochs[0] else "last" if row["epoch"] == epochs[-1] else "mid"


def _order(table: list[dict]) -> list[dict]:
    claims = [t[1] for t in TABLE]
    return sorted(
        table,
        key=lambda r: (claims.index(r["claim"]), RUNS.index(r["run"]), r["epoch"], r["measure"]),
    )


# ---------------------------------------------------------------------------- markdown
TITLES = {
    "ormaniec-qv": "Query vs value blocks (Ormaniec et al.): threshold 1, holds below it",
    "zhang-heterogeneity": "Block heterogeneity (Zhang et al.): transformers vs CNNs, same stage",
    "dong-block-diagonal": "Block-diagonal Hessian (Adam-mini, Dong et al.): threshold 0.5",
    "abreu-layerwise": "Layer-wise vs full damped Gauss-Newton (Abreu et al.): threshold 0.5",
}


def markdown(table: list[dict]) -> str:
    """One table per claim: ``| run | epoch | measure | median [interval] | n | verdict |``.

    n is ``draws × seeds × samples``: draws of samples per training seed (the fewest), the
    training seeds, and the samples in each draw.
    """
    parts = []
    for claim, title in TITLES.items():
        lines = [
            f"**{title}**",
            "",
            "| run | epoch | measure | median [90% interval] | draws × seeds × samples | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for r in (r for r in table if r["claim"] == claim):
            lines.append(
                f"| {r['run']} | {r['epoch']:g} | {r['measure']} | {fmt(r['value'])} "
                f"[{fmt(r['low'])}, {fmt(r['high'])}] | {r['n_draws']} × {r['n_seeds']} "
                f"× {r['samples']} | {r['verdict']} |"
            )
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _printed(row: dict, field: str) -> str:
    """A field as the doc quotes it: counts as integers, a verdict as its words, the rest
    by :func:`fmt`."""
    x = row[field]
    return str(x) if isinstance(x, int | str) else fmt(x)


def fmt(x: float) -> str:
    """3 significant digits (``–`` for NaN)."""
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:.3g}"


# ---------------------------------------------------------------------------- the docs
QUOTE = re.compile(
    r"(-?[0-9][0-9.e+-]*|–|holds|does not hold|undecided)"
    r"<!--q:([^|>]+)\|([^|>]+)\|([^|>]+)\|([^|>]+)\|(\w+)-->"
)
#: The generated blocks (empty ones too, as a new page has them).
BLOCK = re.compile(r"<!-- begin:claims -->\n(.*?)\n?<!-- end:claims -->", re.S)
ORMANIEC = re.compile(r"<!-- begin:ormaniec -->\n(.*?)\n?<!-- end:ormaniec -->", re.S)


#: The doc says every growth exponent of the Ormaniec reproduction is this close to theirs,
SLOPE_AGREE = 0.1
#: and every nonzero norm within this factor of theirs at these of their scale indices
#: (sigma = 0.01, 0.089, 1.13; at sigma = 10 the means over seeds are heavy-tailed).
NORM_AGREE, NORM_SCALES = 1.4, ("0", "6", "13")


def _ormaniec():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "ormaniec", REPO / "benchmarks/ormaniec_addition.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    done = json.loads(module.OUT.read_text())
    # through JSON, as --json prints them (the scale indices become strings)
    return module, json.loads(
        json.dumps(module.summary(done, json.loads(module.REPORTED.read_text())))
    )


def ormaniec_markdown() -> str:
    """``benchmarks/ormaniec_addition.py --markdown``: ours beside their reported values."""
    module, rows = _ormaniec()
    for r in rows:  # markdown() takes the scale indices as integers
        r["ours"] = {int(k): v for k, v in r["ours"].items()}
        r["theirs"] = {int(k): v for k, v in r["theirs"].items()}
    return module.markdown(rows)


def ormaniec_gaps() -> list[str]:
    """The reproduction's rows farther from theirs than the doc says: a growth exponent more
    than :data:`SLOPE_AGREE` off, or a norm more than :data:`NORM_AGREE` times off at the
    scales :data:`NORM_SCALES`."""
    _, rows = _ormaniec()
    out = []
    for r in rows:
        name = f"L{r['depth']} layer {r['layer']} {r['block']} {r['part']}"
        ours, theirs = r["slope_ours"], r["slope_theirs"]
        if ours is not None and theirs is not None and abs(ours - theirs) > SLOPE_AGREE:
            out.append(f"{name}: growth {ours:.2f} against their {theirs:.2f}")
        for i in NORM_SCALES:
            a, b = r["ours"].get(i), r["theirs"].get(i)
            if a and b and max(a / b, b / a) > NORM_AGREE:
                out.append(f"{name}: norm {a:.3g} against their {b:.3g} at scale index {i}")
    return out


def check(doc: str, table: list[dict]) -> list[str]:
    """What in ``doc`` differs from ``table``: the claims block, and every quoted number.

    A quote is ``NUMBER<!--q:claim|run|epoch|measure|field-->`` with field one of value,
    low, high, n_draws, n_seeds, samples, verdict; NUMBER must be the field as
    :func:`_printed` prints it (the verdict as its words).
    """
    problems = []
    block = BLOCK.search(doc)
    if block is None or block.group(1) != markdown(table):
        problems.append("the claims tables differ from `transformer_claims.py --markdown`")
    figure = ORMANIEC.search(doc)
    if figure is None or figure.group(1) != ormaniec_markdown():
        problems.append("the Ormaniec table differs from `ormaniec_addition.py --markdown`")
    problems += ormaniec_gaps()
    index = {(r["claim"], r["run"], f"{r['epoch']:g}", r["measure"]): r for r in table}
    for said, claim, run, epoch, measure, field in QUOTE.findall(doc):
        row = index.get((claim, run, epoch, measure))
        if row is None:
            problems.append(f"quoted row {claim}|{run}|{epoch}|{measure} is not in the JSON")
            continue
        want = _printed(row, field)
        if said != want:
            problems.append(
                f"{claim}|{run}|{epoch}|{measure}|{field}: doc says {said}, JSON {want}"
            )
    if not QUOTE.findall(doc):
        problems.append("the doc quotes no number of the JSON")
    return problems + unaccompanied(doc)


#: The fields a quoted median comes with: its interval and its n.
COMPANIONS = ("value", "low", "high", "n_draws", "n_seeds", "samples")


def unaccompanied(doc: str) -> list[str]:
    """Quoted medians of ``doc`` without their interval and n beside them (every claim number
    carries both): per row, each of :data:`COMPANIONS` is quoted as often as the value."""
    counts: dict = {}
    for *_, claim, run, epoch, measure, field in QUOTE.findall(doc):
        row = counts.setdefault((claim, run, epoch, measure), dict.fromkeys(COMPANIONS, 0))
        if field in row:
            row[field] += 1
    return [
        f"{'|'.join(key)}: quoted {row['value']} times, its interval and n {min(row.values())}"
        for key, row in counts.items()
        if min(row.values()) != row["value"]
    ]


def fill(doc: str, table: list[dict]) -> str:
    """``doc`` with the claims block and every quoted number set from ``table``."""
    index = {(r["claim"], r["run"], f"{r['epoch']:g}", r["measure"]): r for r in table}

    def quoted(m: re.Match) -> str:
        row = index.get(m.groups()[1:5])
        if row is None:
            return m.group(0)
        field = m.group(6)
        value = _printed(row, field)
        return value + m.group(0)[len(m.group(1)) :]

    doc = QUOTE.sub(quoted, doc)
    doc = BLOCK.sub(lambda _: f"<!-- begin:claims -->\n{markdown(table)}\n<!-- end:claims -->", doc)
    return ORMANIEC.sub(
        lambda _: f"<!-- begin:ormaniec -->\n{ormaniec_markdown()}\n<!-- end:ormaniec -->", doc
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="one object per line")
    parser.add_argument("--markdown", action="store_true", help="the tables")
    parser.add_argument("--check", action="store_true", help="docs/transformers.md agrees")
    parser.add_argument("--fill", action="store_true", help="rewrite the doc's numbers")
    parser.add_argument("--stores", type=Path, default=STORES)
    args = parser.parse_args()
    table = rows(args.stores)
    if args.markdown:
        print(markdown(table))
    elif args.fill:
        DOC.write_text(fill(DOC.read_text(), table))
    elif args.check:
        problems = check(DOC.read_text(), table)
        print("\n".join(problems))
        sys.exit(1 if problems else 0)
    else:
        for r in table:
            print(json.dumps(r, ensure_ascii=False))


if __name__ == "__main__":
    main()
