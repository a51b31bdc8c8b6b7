"""First paint of the dashboard in Chromium: one JSON line per page load.

Starts ``streamlit run app.py`` on a free port, loads the interactions page of the
shipped demo run (22 analysed checkpoints) once cold, then ``--repeats`` times with the
server's caches warm (as a full page load, and by clicking the sidebar link from the home
page), and reports the seconds until all six heatmaps are drawn.
Needs Debian's Chromium (``/usr/bin/chromium``) and Playwright for Python.

With ``--baseline REV`` the dashboard of git revision REV (its app.py, views/ and
hessian_lens/, on the same runs) is served beside this one and every measurement is taken
on both, interleaved, so that a busy machine slows both alike; a last line gives the
ratio of the medians (this tree / REV).

    python benchmarks/bench_dashboard.py --repeats 5
    python benchmarks/bench_dashboard.py --repeats 7 --baseline main
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.browser import REPO, chromium_page, streamlit_server, wait_for_heatmaps

TREE = ("app.py", "views", "hessian_lens", ".streamlit")


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


def baseline_tree(rev: str, folder: Path) -> Path:
    """The dashboard's files at git revision ``rev`` in ``folder``, on this tree's runs."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "--", *TREE],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    (folder / "checkpoints").symlink_to(REPO / "checkpoints")
    return folder


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--baseline", default=None, metavar="REV", help="also measure git REV")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        env = {"HESSIAN_LENS_RUNS": "", "HESSIAN_LENS_CACHE": tmp}
        trees = {"this tree": REPO}
        if args.baseline:
            trees[args.baseline] = baseline_tree(args.baseline, Path(tmp) / "baseline")
        urls = {
            name: stack.enter_context(streamlit_server(env, Path(tmp) / f"{i}.log", cwd=tree))
            for i, (name, tree) in enumerate(trees.items())
        }
        page = stack.enter_context(chromium_page())
        for name, url in urls.items():
            emit({"tree": name, "load": "cold", "seconds": round(paint_seconds(page, url), 2)})
        medians = {}
        for load, measure in (
            ("cached, full page load", paint_seconds),
            ("cached, sidebar navigation", navigate_seconds),
        ):
            times = {name: [] for name in urls}
            for i in range(args.repeats):  # interleaved, in alternating order (ABBA...):
                order = list(urls) if i % 2 == 0 else list(urls)[::-1]  # load hits both alike
                for name in order:
                    times[name].append(measure(page, urls[name]))
            for name, ts in times.items():
                medians[(name, load)] = statistics.median(ts)
                emit(
                    {
                        "tree": name,
                        "page": "Layer_interactions",
                        "load": load,
                        "median_s": round(statistics.median(ts), 2),
                        "max_s": round(max(ts), 2),
                        "repeats": args.repeats,
                    }
                )
            if args.baseline:
                ratio = medians[("this tree", load)] / medians[(args.baseline, load)]
                emit({"load": load, "ratio_this_over_baseline": round(ratio, 3)})


if __name__ == "__main__":
    main()
