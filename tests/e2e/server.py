"""Start the dashboard on a free local port and drive Debian's Chromium with Playwright."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("HESSIAN_LENS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def missing_browser() -> str | None:
    """Why the browser test cannot run here, or None."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} not found (apt-get install -y chromium chromium-driver)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright (Python) is not installed"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(env: dict[str, str], log: Path, timeout: float = 90.0) -> Iterator[str]:
    """``streamlit run app.py`` headless on 127.0.0.1; yields its base URL."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app.py",
        "--server.headless",
        "true",
        "--server.address",
        "127.0.0.1",
        "--server.port",
        str(port),
        "--browser.gatherUsageStats",
        "false",
    ]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(url, proc, timeout, log)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited early:\n{log.read_text()[-2000:]}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r,
        ):
            if r.read().strip() == b"ok":
                return
        time.sleep(0.5)
    raise TimeoutError(f"streamlit did not answer within {timeout:.0f} s")


@contextlib.contextmanager
def chromium_page(width: int = 1500, height: int = 1100):
    """A Playwright page in headless Debian Chromium (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()


def wait_for_heatmaps(page, count: int, timeout_ms: int = 90_000) -> None:
    """Wait until at least ``count`` plotly heatmaps are drawn (one image each: the image
    and its ``g.hm`` group used to be counted twice)."""
    page.wait_for_function(
        f"document.querySelectorAll('.js-plotly-plot .heatmaplayer image').length >= {count}",
        timeout=timeout_ms,
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


def heatmap_count(page) -> int:
    """How many plotly heatmaps the page draws."""
    return page.locator(".js-plotly-plot .heatmaplayer image").count()


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
