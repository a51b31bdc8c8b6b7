"""A download of each figure of a page as PNG, SVG or PDF (drawn on click, by kaleido)."""

from __future__ import annotations

from collections.abc import Mapping

import plotly.graph_objects as go
import streamlit as st

from hessian_lens.figexport import FORMATS, MIME, figure_bytes, safe_stem


def figure_downloads(figures: Mapping[str, go.Figure | dict], key: str) -> None:
    """A toggle that shows one download button per figure, in the chosen format.

    The file is drawn only when its button is clicked (a deferred download); without
    kaleido the toggle says how to get it (each chart's camera button still saves SVG).
    One widget until it is switched on: it costs the page's first paint nothing.
    """
    if st.toggle("⬇ Figures as PNG / SVG / PDF", key=f"{key}-fig-export"):
        try:
            import kaleido  # noqa: F401
        except ImportError:
            st.caption(
                "Static export needs kaleido (`pip install kaleido`); the camera button of "
                "each chart saves it as SVG meanwhile."
            )
            return
        fmt = st.radio("Format", FORMATS, horizontal=True, key=f"{key}-fig-format")
        for col, (name, fig) in zip(
            st.columns(max(len(figures), 1)), figures.items(), strict=False
        ):
            col.download_button(
                f"⬇ {name}.{fmt}",
                lambda fig=fig: figure_bytes(go.Figure(fig), fmt),
                f"{safe_stem(name)}.{fmt}",
                mime=MIME[fmt],
                key=f"{key}-fig-{safe_stem(name)}",
                on_click="ignore",
            )
