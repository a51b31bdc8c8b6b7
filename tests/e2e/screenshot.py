"""Screenshot of the interactions page on the shipped demo run (for the README).

python -m tests.e2e.screenshot docs/screenshot_interactions.png
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests.e2e.server import REPO, chromium_page, streamlit_server, wait_for_heatmaps


def main(out: str = "docs/screenshot_interactions.png", epoch_steps_back: int = 0) -> None:
    target = REPO / out
    with tempfile.TemporaryDirectory() as tmp:
        env = {"HESSIAN_LENS_RUNS": "", "HESSIAN_LENS_CACHE": tmp}
        with (
            streamlit_server(env, Path(tmp) / "streamlit.log") as url,
            chromium_page(width=1400, height=1250) as page,
        ):
            page.goto(f"{url}/Layer_interactions")
            wait_for_heatmaps(page, 6)
            page.get_by_text("normalized", exact=True).first.click()
            page.wait_for_timeout(2500)
            wait_for_heatmaps(page, 6)
            target.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(target), full_page=False)
    print(f"saved {target}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
