"""Browser-test helpers on top of :mod:`tests.e2e.browser` (server, Chromium page)."""

from __future__ import annotations

import contextlib
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.e2e.browser import (  # noqa: F401  (re-exported for the tests)
    CHROMIUM,
    REPO,
    chromium_page,
    free_port,
    heatmap_count,
    missing_browser,
    streamlit_server,
    wait_for_heatmaps,
)


def not_blank(png: Path) -> tuple[bool, int]:
    """Whether a screenshot has real content (many distinct colours), and how many."""
    from PIL import Image

    with Image.open(png) as im:
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20) or []
    return len(colours) > 200, len(colours)


def alive(url: str) -> bool:
    """Whether the server still answers its health check."""
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as r:
            return r.read().strip() == b"ok"
    except OSError:
        return False


def alerts(page, kind: str = "Error") -> list[str]:
    """Texts of the page's st.error (``kind`` "Error") or st.warning ("Warning") boxes."""
    return page.locator(f"[data-testid=stAlertContent{kind}]").all_inner_texts()


def choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the selectbox labelled ``label`` (typed, then Enter)."""
    page.get_by_test_id("stSelectbox").filter(has_text=label).first.click()
    page.keyboard.type(option)
    page.keyboard.press("Enter")


def set_number(page, label: str, value: float) -> None:
    """Type a value into the number input labelled ``label``."""
    box = page.get_by_label(label).first
    box.fill(str(value))
    box.press("Enter")


def tracebacks(page) -> int:
    """How many exception boxes (or raw tracebacks) the page shows."""
    return page.get_by_test_id("stException").count() + page.get_by_text("Traceback").count()


@contextlib.contextmanager
def read_only_mount(source: Path, target: Path) -> Iterator[Path]:
    """``source`` bind-mounted read-only at ``target`` (root only; unmounted after)."""
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=False)


def settle(page, timeout_ms: int = 120_000) -> None:
    """Wait until the script run an interaction started has finished."""
    page.wait_for_timeout(400)  # the running indicator appears a moment after the event
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=stStatusWidgetRunningIcon], "
        "[data-testid=stStatusWidgetRunningManIcon]')",
        timeout=timeout_ms,
    )


def open_expander(page, title: str, inside, attempts: int = 4) -> None:
    """Unfold the expander titled ``title`` until ``inside`` (a locator) shows.

    A click that lands while a script run re-renders the page can be lost, or fold an
    expander that the run just unfolded: look again after each click.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(attempts):
        settle(page)
        if inside.count() and inside.first.is_visible():
            return
        page.get_by_text(title).first.click()
        try:
            inside.first.wait_for(timeout=10_000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"the expander {title!r} does not show what it holds")
