"""Test tooling: the dashboard on a free local port, Debian's Chromium driven by Playwright.

Shared by the browser tests (``tests/e2e``), the first-paint benchmark and the figure
images of the docs. Chromium is Debian's (``/usr/bin/chromium``, or
``$HESSIAN_LENS_CHROMIUM``), never a downloaded browser; Playwright for Python drives it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from hessian_lens.settings import chromium_path

REPO = Path(__file__).resolve().parents[2]  # the repository (app.py)
CHROMIUM = chromium_path()
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
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(
    env: dict[str, str], log: Path, timeout: float = 90.0, cwd: Path = REPO
) -> Iterator[str]:
    """``streamlit run app.py`` (of ``cwd``) headless on 127.0.0.1; yields its base URL."""
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
            cmd, cwd=cwd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
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
    """Wait until at least ``count`` plotly heatmaps are drawn (one image each)."""
    page.wait_for_function(
        f"document.querySelectorAll('.js-plotly-plot .heatmaplayer image').length >= {count}",
        timeout=timeout_ms,
    )


def heatmap_count(page) -> int:
    """How many plotly heatmaps the page draws."""
    return page.locator(".js-plotly-plot .heatmaplayer image").count()


def figure_png(fig, path: Path, width: int = 1100) -> None:
    """A plotly figure rendered to PNG by Chromium (plotly.js embedded: no network)."""
    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / "fig.html"
        fig.write_html(html, include_plotlyjs=True, full_html=True)
        with chromium_page(width=width, height=int(fig.layout.height or 450) + 40) as page:
            page.goto(html.as_uri())
            page.wait_for_selector(".js-plotly-plot .heatmaplayer", timeout=60_000)
            page.locator(".js-plotly-plot").first.screenshot(path=str(path))
