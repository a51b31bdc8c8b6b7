"""End to end in a real browser: Debian's Chromium through Playwright.

Starts the dashboard on a free local port, opens the interactions page, moves the epoch
slider, uploads a checkpoint on the inspect page and waits for its heatmaps. Screenshots
go to artifacts/e2e/. Skipped (with the reason) where Chromium is absent, except in CI
(HESSIAN_LENS_REQUIRE_BROWSER=1), where that is a failure.
"""

from __future__ import annotations

import os

import pytest

from tests.apptools import make_analysed_run
from tests.e2e.server import (
    REPO,
    chromium_page,
    missing_browser,
    not_blank,
    streamlit_server,
    wait_for_heatmaps,
)

pytestmark = pytest.mark.browser
ARTIFACTS = REPO / "artifacts" / "e2e"


@pytest.fixture(scope="module")
def browser_ready():
    reason = missing_browser()
    if reason:
        if os.environ.get("HESSIAN_LENS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser test required in CI but {reason}")
        pytest.skip(reason)


def test_dashboard_in_chromium(browser_ready, tmp_path):
    run, npz = make_analysed_run(tmp_path / "e2e")
    env = {
        "HESSIAN_LENS_RUNS": str(run.parent),
        "HESSIAN_LENS_DATA": str(npz),
        "HESSIAN_LENS_CACHE": str(tmp_path / "cache"),
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with streamlit_server(env, ARTIFACTS / "streamlit.log") as url, chromium_page() as page:
        page.goto(f"{url}/Layer_interactions")  # opens on the shipped demo run
        page.get_by_text("lenet5-cifar10 · 22 analysed").first.wait_for(timeout=90_000)
        wait_for_heatmaps(page, 6)
        page.get_by_text("— epoch 21").first.wait_for()
        slider = page.get_by_role("slider").first
        slider.focus()
        slider.press("Home")  # first analysed epoch
        page.get_by_text("— epoch 0").first.wait_for(timeout=30_000)
        wait_for_heatmaps(page, 6)
        shot = ARTIFACTS / "interactions.png"
        page.screenshot(path=str(shot), full_page=True)
        assert not_blank(shot)[0]

        page.goto(f"{url}/Inspect_checkpoint")
        page.locator("input[type=file]").set_input_files(str(run / "epoch_0001.pt"))
        page.get_by_role("button", name="Compute H̄").click(timeout=90_000)
        page.get_by_text("done in").first.wait_for(timeout=120_000)
        wait_for_heatmaps(page, 6)
        shot = ARTIFACTS / "inspect.png"
        page.screenshot(path=str(shot), full_page=True)
        ok, colours = not_blank(shot)
        assert ok, f"screenshot looks blank ({colours} colours)"
        assert page.get_by_text("Traceback").count() == 0
