"""In Chromium: the HTML report offline, and a run being written updating in the dashboard.

Skipped (with the reason) where Chromium is absent, except in CI
(HESSIAN_LENS_REQUIRE_BROWSER=1), where that is a failure.
"""

from __future__ import annotations

import json

import pytest

from hessian_lens.report import write_report
from tests.conftest import REPO, need_browser
from tests.e2e.layout import collect, problems
from tests.e2e.server import chromium_page, heatmap_count, wait_for_heatmaps
from tests.recorded import make_recorder_run

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser_ready():
    need_browser()


def test_report_opens_offline_and_its_slider_changes_the_epoch(browser_ready, tmp_path):
    run = make_recorder_run(tmp_path / "tiny-run", epochs=2)
    page_file = tmp_path / "report.html"
    write_report(run, page_file)
    requested = []

    def only_local(route):
        requested.append(route.request.url)
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            route.abort()

    with chromium_page() as page:
        page.route("**/*", only_local)
        page.goto(page_file.as_uri())
        wait_for_heatmaps(page, 6, timeout_ms=30_000)  # H̄ and H̄⁻¹: WW, BB, WB each
        assert heatmap_count(page) == 6
        assert requested == [page_file.as_uri()]  # nothing else asked for: offline
        slider = page.locator("#fig-H .slider-container")
        assert slider.text_content().startswith("epoch 2")
        bars = "Array.from(document.querySelectorAll('#fig-H .colorbar')).map(c => c.textContent)"
        before = page.evaluate(bars)  # each panel's limits ±max|value| at epoch 2
        page.locator("#fig-H .slider-group").first.click(position={"x": 5, "y": 20})
        page.wait_for_function(
            "document.querySelector('#fig-H .slider-container').textContent.startsWith('epoch 0')",
            timeout=10_000,
        )
        page.wait_for_function(
            f"JSON.stringify({bars}) !== {json.dumps(json.dumps(before, separators=(',', ':')))}",
            timeout=10_000,
        )  # epoch 0's colour limits are drawn
        assert heatmap_count(page) == 6


#: The report page's budget: plotly.js (4.8 MB) and the run's figures (README: ~5 MB).
REPORT_MAX_BYTES = 5_500_000


@pytest.mark.parametrize("width", [1100, 1500])
def test_the_report_of_a_per_head_run_is_readable(browser_ready, tmp_path, width):
    """vit-cifar10 (S = 108): heatmaps one per head, nothing overlaps on the page or in the
    static figures (their SVGs laid out by Chromium), one entry per epoch, a page of ~5 MB."""
    pytest.importorskip("kaleido")
    page_file, figs = tmp_path / "vit.html", tmp_path / "figs"
    write_report(REPO / "checkpoints" / "vit-cifar10", page_file, figs, ("svg",))
    assert page_file.stat().st_size < REPORT_MAX_BYTES, page_file.stat().st_size
    found = []
    with chromium_page(width=width, height=1400) as page:
        page.goto(page_file.as_uri())
        wait_for_heatmaps(page, 2, timeout_ms=30_000)  # H̄ and H̄⁻¹, one panel each
        assert heatmap_count(page) == 2
        labels = page.locator("#fig-H .slider-group .slider-label").all_text_contents()
        steps = [t for t in labels if not t.startswith("epoch ")]  # not the current value
        assert len(steps) == 13 and len(set(steps)) == 13, steps  # no epoch twice
        page.wait_for_timeout(1500)
        heatmaps = [f for f in collect(page) if any(i["kind"] == "heatmap" for i in f["items"])]
        assert len(heatmaps) == 2
        found += problems(heatmaps, where=f"report at {width} px: ")
        for svg in sorted(figs.glob("H*.svg")):  # the heatmaps: fixed margins, no race
            page.set_content(f"<div class='js-plotly-plot'>{svg.read_text()}</div>")
            found += problems(collect(page), where=f"{svg.name}: ")
    assert found == []


def test_a_run_being_written_updates_in_the_browser_without_reload(browser_ready, tmp_path):
    from tests.e2e.server import streamlit_server
    from tests.test_live import start_writer, wait_for_epochs

    run, gate = tmp_path / "runs" / "live-run", tmp_path / "gate"
    gate.mkdir()
    proc = start_writer(run, 2, gate)
    env = {"HESSIAN_LENS_RUNS": str(run), "HESSIAN_LENS_CACHE": str(tmp_path / "cache")}
    try:
        wait_for_epochs(run, 2, proc)
        with (
            streamlit_server(env, tmp_path / "streamlit.log") as url,
            chromium_page() as page,
        ):
            page.goto(f"{url}/Layer_interactions?run=live-run")
            wait_for_heatmaps(page, 6)
            page.get_by_text("● live").first.wait_for(timeout=30_000)
            page.get_by_text("— epoch 1").first.wait_for(timeout=30_000)
            loads = []
            page.on("load", lambda _: loads.append(1))
            (gate / "go_2").touch()
            page.get_by_text("— epoch 2").first.wait_for(timeout=60_000)  # no reload asked
            wait_for_heatmaps(page, 6)
            assert loads == []  # the page was not reloaded: the fragment redrew it
            assert proc.wait(60) == 0
            page.get_by_text("● live").first.wait_for(state="detached", timeout=30_000)
    finally:
        proc.kill()
