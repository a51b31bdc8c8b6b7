"""The Paper page: figures 1 and 2 redrawn from the shipped runs, the claims table live."""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from hessian_lens import paper, plots
from hessian_lens.runs import Run
from hessian_lens.ui import reads
from hessian_lens.ui.common import fmt_epoch, plain
from hessian_lens.ui.exports import figure_downloads

FIGURES = {
    "1": ("Figure 1 — LeNet-5", ("lenet5-cifar10-paper", "lenet5-cifar10"), (1, 21), "lenet5"),
    "2": ("Figure 2 — VGG-11'", ("vgg11p-cifar10",), (1, 6), "vgg11p"),
}


def pick_run(
    runs: Sequence[Run], names: Sequence[str], arch: str, key: str, selected: Run | None = None
) -> Run | None:
    """A run for a figure: the sidebar's run if of that architecture, else the shipped one.

    Without either, any run of that architecture.
    """
    candidates = [r for r in runs if r.manifest.model["name"] == arch and r.store_path.exists()]
    if not candidates:
        return None
    paths = [r.path for r in candidates]
    if selected is not None and selected.path in paths:
        default = paths.index(selected.path)
    else:
        default = next((i for n in names for i, r in enumerate(candidates) if r.path.name == n), 0)
    labels = [r.name for r in candidates]
    choice = st.selectbox(
        "Run", range(len(candidates)), index=default, key=key, format_func=lambda i: labels[i]
    )
    return candidates[choice]


def records_at(run: Run, epochs: Sequence[float]) -> dict[str, dict]:
    """The analysed records of a run at the given epochs.

    From the analysis that covers most of those epochs (ties: the most complete one) among
    those whose partition has the paper's weight / bias blocks (the canonical one).
    """
    best: dict[str, dict] = {}
    for settings in run.settings():
        recs = reads.records(run, settings)
        found = {fmt_epoch(r["epoch"]): r for r in recs if r["epoch"] in epochs}
        if len(found) > len(best) and all(_has_blocks(r["summary"]) for r in found.values()):
            best = found
    return best


def _has_blocks(summary: dict) -> bool:
    kinds = summary.get("kinds") or []
    return "weight" in kinds and "bias" in kinds


def render_paper(runs: Sequence[Run], key: str = "paper", selected: Run | None = None) -> None:
    """Each figure at the paper's epochs, then the claims with their numbers.

    The figures come one after the other, at full width; the sidebar's run (``selected``)
    draws the figure of its architecture.
    """
    scale = st.radio(
        "Scale",
        ["raw", "normalized"],
        horizontal=True,
        key=f"{key}-scale",
        help="raw: as the paper draws them; normalized: rescaling-invariant",
    )
    chosen = {}
    for fig_id, (title, names, epochs, arch) in FIGURES.items():
        st.subheader(title)
        run = pick_run(runs, names, arch, f"{key}-run{fig_id}", selected)
        if run is None:
            st.info(
                f"No analysed {arch} run found: train one (`python -m hessian_lens train "
                f"--model {arch} --data cifar10 --epochs {max(epochs)} --out checkpoints/"
                f"{names[0]}`) and analyse it (`python -m hessian_lens analyze checkpoints/"
                f"{names[0]}`)."
            )
            chosen[fig_id] = {}
            continue
        recs = records_at(run, epochs)
        chosen[fig_id] = recs
        if not recs:
            st.warning(
                f"{plain(run.name)} has no canonical analysis at the paper's epochs "
                f"({', '.join(fmt_epoch(e) for e in epochs)})."
            )
        _figure(recs, scale, f"{key}-{fig_id}")
    st.subheader("The claims, measured")
    rows = paper.figure_claims(chosen.get("1", {}), chosen.get("2", {}))
    st.dataframe(
        [
            {
                "figure": c.figure,
                "claim": c.claim,
                "measure": c.measure,
                "raw": round(c.raw, 4),
                "normalised": round(c.normalized, 4),
                "threshold": c.threshold,
                "verdict": c.verdict,
            }
            for c in rows
        ],
        hide_index=True,
        key=f"{key}-claims",
    )
    for fig_id, recs in chosen.items():
        for epoch, rec in recs.items():
            top = paper.strongest_long_range(rec)
            st.caption(
                f"Figure {fig_id}, epoch {epoch}: strongest H̄⁻¹ weight couplings at layer distance "
                "≥ 2 (normalised): " + ", ".join(f"{a}–{b} {v:+.3f}" for a, b, v in top)
            )


def _figure(recs: dict[str, dict], scale: str, key: str) -> None:
    drawn = {}
    for epoch, rec in recs.items():
        summary = rec["summary"]
        for name, label in (("H", "H̄"), ("Hinv", "H̄⁻¹")):
            shown = plots.transform(rec["arrays"][name], scale)
            panels = plots.interaction_blocks(
                shown, summary["kinds"], summary["layers"], rec["arrays"][name]
            )
            fig = plots.panel_row(
                list(panels.values()),
                colorbar=scale if scale != "raw" else "",
                height=320,
                title=f"{label}, epoch {epoch}",
            )
            st.plotly_chart(
                fig,
                key=f"{key}-{epoch}-{name}",
                config=plots.export_config(f"figure_{key}_{name}_epoch{epoch}"),
            )
            drawn[f"figure_{key}_{name}_epoch{epoch}"] = fig
    if drawn:
        figure_downloads(drawn, key)
