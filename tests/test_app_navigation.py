"""The dashboard's one page list (st.navigation) and a run switch on every page (AppTest).

Runs are switched in the sidebar on the shipped runs: a CNN (lenet5-cifar10, S = 10), a
per-head ViT (vit-cifar10, S = 108) and the per-head GPT (gpt-text, S = 54).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from hessian_lens.runs import describe_settings, load_run
from tests.apptools import no_errors, open_page, plotly_specs
from tests.conftest import REPO
from tests.layoutcheck import layout_problems

VIEWS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "views").glob("*.py"))
SHIPPED = REPO / "checkpoints"
#: The addresses the pages had as files of the legacy pages/ folder (they must keep
#: working), with each page's title.
TITLES = {
    "Layer_interactions": "Layer interactions",
    "Block_diagonal": "Block-diagonal vs full inverse",
    "Inspect_checkpoint": "Inspect a checkpoint",
    "Optimizer": "Optimizer: one learning rate per tensor",
    "Paper": "The paper, reproduced",
    "Block_heterogeneity": "Block heterogeneity",
}
ADDRESSES = set(TITLES)


@pytest.fixture(autouse=True)
def only_shipped(monkeypatch, tmp_path):
    """The shipped runs alone, a fresh upload cache, no user models."""
    import streamlit as st

    for name in ("HESSIAN_LENS_RUNS", "HESSIAN_LENS_MODELS", "HESSIAN_LENS_DATA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HESSIAN_LENS_CACHE", str(tmp_path / "cache"))
    st.cache_data.clear()


def switch(at, name: str):
    """Pick the run ``name`` in the sidebar and rerun the page."""
    box = at.sidebar.selectbox(key="run_select")
    box.set_value(next(o for o in box.options if Path(o).name == name)).run()
    no_errors(at)
    return at


def test_one_page_list_replaces_the_pages_folder():
    assert not (REPO / "pages").exists()  # Streamlit's legacy page folder is gone
    tree = ast.parse((REPO / "app.py").read_text())
    listed = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and str(node.value).startswith("views/")
    }
    assert listed == set(VIEWS)  # every page file is in the one list, and only those
    assert {Path(v).stem for v in VIEWS} == ADDRESSES  # the file names are the addresses


def test_the_home_page_links_to_every_page():
    at = open_page("app.py", timeout=300)
    no_errors(at)
    links = {link.proto.page: link.label for link in at.get("page_link")}
    assert set(links) == ADDRESSES
    assert links["Block_heterogeneity"] == "Block heterogeneity →"


@pytest.mark.parametrize("address", sorted(ADDRESSES))
def test_a_page_opens_at_its_address_with_its_title(address):
    at = open_page(f"views/{address}.py", timeout=300)
    no_errors(at)
    assert at.title[0].value == TITLES[address]


def key(at, base: str, rest: str = "") -> str:
    """The key ``base + rest`` of a widget of the current run, ``base`` renewed by every
    switch (ui.common.scoped)."""
    state = at.session_state  # AppTest's has no .get
    switches = state["run_switches"] if "run_switches" in state else 0  # noqa: SIM401
    return (f"{base}~{switches}" if switches else base) + rest


def _analysis_labels(at) -> list[str]:
    return list(at.sidebar.selectbox(key=key(at, "settings_select")).options)


def _expect_own_analysis(at, name: str) -> None:
    labels = [describe_settings(s) for s in load_run(SHIPPED / name).settings()]
    assert _analysis_labels(at) == labels


@pytest.mark.parametrize("page", ["Layer_interactions", "Block_diagonal", "Block_heterogeneity"])
def test_a_run_page_follows_a_run_switch(page):
    at = open_page(f"views/{page}.py", timeout=300)
    no_errors(at)
    for name in ("vit-cifar10", "gpt-text", "lenet5-cifar10"):
        switch(at, name)
        _expect_own_analysis(at, name)
        texts = [x.value for x in (*at.markdown, *at.caption, *at.info)]
        assert not any("Showing 0 of" in t or "No group left" in t for t in texts), texts
        assert at.get("plotly_chart"), f"{page} on {name}: nothing drawn"
        if page == "Layer_interactions":
            assert not any(t.startswith("Showing") for t in texts), texts  # no stale filter
        if page != "Block_diagonal":
            assert any(t.startswith(f"**{name}**") for t in texts), texts
        if page != "Block_heterogeneity":  # heatmap rows: nothing overlaps at 620 px
            heatmaps = [
                s for s in plotly_specs(at) if {d["type"] for d in s["data"]} == {"heatmap"}
            ]
            assert heatmaps and all(layout_problems(s) == [] for s in heatmaps), (page, name)


def test_the_paper_page_draws_the_sidebar_run():
    at = open_page("views/Paper.py", timeout=300)
    no_errors(at)
    for name in ("lenet5-cifar10-paper", "lenet5-cifar10", "lenet5-cifar10-paper"):
        switch(at, name)
        box = at.selectbox(key=key(at, "paper", "-run1"))
        assert box.format_func(box.value) == name
    switch(at, "vit-cifar10")  # no figure of its own: the shipped runs stay
    box = at.selectbox(key=key(at, "paper", "-run1"))
    assert box.format_func(box.value) == "lenet5-cifar10-paper"


def test_the_optimizer_page_compares_the_sidebar_run():
    at = open_page("views/Optimizer.py", timeout=300)
    no_errors(at)
    for name in ("vit-cifar10", "gpt-text", "pn-lambda1-seed0"):
        switch(at, name)
        assert name in at.multiselect(key=key(at, "optim", "-runs")).value
    assert at.selectbox(key=key(at, "optim", "-pn")).value == "pn-lambda1-seed0"


def test_the_inspect_page_follows_a_run_switch():
    at = open_page("views/Inspect_checkpoint.py", timeout=300)
    no_errors(at)
    for name in ("gpt-text", "vit-cifar10"):
        switch(at, name)
        assert at.sidebar.selectbox(key="run_select").value == str(SHIPPED / name)


def test_an_upload_takes_the_sidebar_runs_data_when_it_trained_that_architecture(tiny_npz):
    from types import SimpleNamespace

    from hessian_lens.ui.inspect import run_defaults

    def run(name, model, data, loss):
        return SimpleNamespace(
            name=name, manifest=SimpleNamespace(model={"name": model}, data=data, loss=loss)
        )

    gpt = run("gpt-text", "gpt", {"name": "text:stdlib@64"}, "next_token")
    lenet = run("lenet", "lenet5", {"name": f"npz:{tiny_npz}", "source": str(tiny_npz)}, "nll")
    bare = {"model": {"name": "gpt"}}  # a checkpoint naming no run
    assert run_defaults(bare, [gpt, lenet], selected=gpt)["spec"] == "text:stdlib@64"
    assert run_defaults(bare, [gpt, lenet], selected=lenet)["spec"] == "cifar10"
    chosen = run_defaults({}, [gpt, lenet], selected=lenet, architecture="lenet5")
    assert chosen == {"spec": f"npz:{tiny_npz}", "source": str(tiny_npz), "loss": "nll"}
