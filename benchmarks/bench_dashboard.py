"""First paint of the dashboard in Chromium: one JSON line per page load.

Starts ``streamlit run app.py`` on a free port, loads the interactions page of the
shipped demo run (22 analysed checkpoints) once cold, then ``--repeats`` times with the
server's caches warm (as a full page load, and by clicking the sidebar link from the home
page), and reports the seconds until all six heatmaps are drawn.
Needs Debian's Chromium (``/usr/bin/chromium``) and Playwright for Python.

    python benchmarks/bench_dashboard.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hessian_lens.browser import chromium_page, streamlit_server, wait_for_heatmaps


def paint_seconds(page, url: str) -> float:
    """Seconds from loading the interactions page (a full page load) to its six heatmaps."""
    t0 = time.perf_counter()
    page.goto(f"{url}/Layer_interactions")
    wait_for_heatmaps(page, 6)
    return time.perf_counter() - t0


def navigate_seconds(page, url: str) -> float:
    """Seconds from clicking "Layer interactions" in the sidebar (on the home page, the app
    already loaded: what a user browsing does) to its six heatmaps."""
    page.goto(url)
    page.get_by_text("Last epoch").first.wait_for(timeout=60_000)
    t0 = time.perf_counter()
    page.get_by_role("link", name="Layer interactions").first.click()
    wait_for_heatmaps(page, 6)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        env = {"HESSIAN_LENS_RUNS": "", "HESSIAN_LENS_CACHE": tmp}
        with streamlit_server(env, Path(tmp) / "streamlit.log") as url, chromium_page() as page:
            cold = paint_seconds(page, url)
            print(
                json.dumps(
                    {"page": "Layer_interactions", "load": "cold", "seconds": round(cold, 2)}
                ),
                flush=True,
            )
            for load, measure in (
                ("cached, full page load", paint_seconds),
                ("cached, sidebar navigation", navigate_seconds),
            ):
                times = [measure(page, url) for _ in range(args.repeats)]
                print(
                    json.dumps(
                        {
                            "page": "Layer_interactions",
                            "load": load,
                            "median_s": round(statistics.median(times), 2),
                            "max_s": round(max(times), 2),
                            "repeats": args.repeats,
                        }
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
