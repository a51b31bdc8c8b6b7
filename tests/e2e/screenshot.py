"""Screenshots of the dashboard on the shipped demo run, for the README and docs/.

    python -m tests.e2e.screenshot            # all three below
    python -m tests.e2e.screenshot readme     # docs/screenshot_interactions.png only

* docs/screenshot_interactions.png: Layer interactions (WW · BB · WB blocks, normalised) at
  1400 x 1250, the README's picture;
* docs/layout_1100.png, docs/layout_1500.png: the Layer interactions page (blocks view)
  beside the Block-diagonal page, in a window 1100 / 1500 px wide (the main column of each,
  cropped), after the overlap check of tests/e2e/layout.py found nothing.

Each image stays under 400 KB (a 256-colour palette when full colour would not).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests.e2e.layout import collect, problems
from tests.e2e.server import REPO, chromium_page, settle, streamlit_server, wait_for_heatmaps

DOCS = REPO / "docs"


def _blocks_normalized(page, url: str) -> None:
    page.goto(f"{url}/Layer_interactions")
    wait_for_heatmaps(page, 6)
    page.get_by_text("normalized", exact=True).first.click()
    settle(page)
    wait_for_heatmaps(page, 6)
    page.wait_for_timeout(1000)


def _main_column(page, path: Path) -> Path:
    """Screenshot of the page without its sidebar."""
    left = page.evaluate(
        "() => (document.querySelector('[data-testid=stSidebar]') || "
        "{getBoundingClientRect: () => ({right: 0})}).getBoundingClientRect().right"
    )
    size = page.viewport_size
    page.screenshot(
        path=str(path),
        clip={"x": left, "y": 0, "width": size["width"] - left, "height": size["height"]},
    )
    return path


def _save_small(image, target: Path, limit: int = 380 * 1024) -> None:
    """A PNG under ``limit`` bytes: full colour when it fits, else a 256-colour palette."""
    image.convert("RGB").save(target, optimize=True)
    if target.stat().st_size > limit:
        image.convert("RGB").quantize(256).save(target, optimize=True)
    print(f"saved {target} ({target.stat().st_size / 1024:.0f} KB)")


def readme(url: str) -> None:
    from PIL import Image

    with chromium_page(width=1400, height=1250) as page, tempfile.TemporaryDirectory() as tmp:
        _blocks_normalized(page, url)
        raw = Path(tmp) / "shot.png"
        page.screenshot(path=str(raw))
        _save_small(Image.open(raw), DOCS / "screenshot_interactions.png")


def layouts(url: str) -> None:
    from PIL import Image

    for width in (1100, 1500):
        with chromium_page(width=width, height=1450) as page, tempfile.TemporaryDirectory() as tmp:
            _blocks_normalized(page, url)
            found = problems(collect(page), where=f"interactions at {width} px: ")
            left = Image.open(_main_column(page, Path(tmp) / "a.png"))
            page.goto(f"{url}/Block_diagonal")
            wait_for_heatmaps(page, 3)
            page.wait_for_timeout(1000)
            found += problems(collect(page), where=f"block-diagonal at {width} px: ")
            right = Image.open(_main_column(page, Path(tmp) / "b.png"))
            if found:
                raise SystemExit("overlaps:\n" + "\n".join(found))
            both = Image.new(
                "RGB", (left.width + right.width + 8, max(left.height, right.height)), "#d0d0d0"
            )
            both.paste(left, (0, 0))
            both.paste(right, (left.width + 8, 0))
            _save_small(both, DOCS / f"layout_{width}.png")


def main(which: str = "all") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {"HESSIAN_LENS_RUNS": "", "HESSIAN_LENS_CACHE": tmp}
        with streamlit_server(env, Path(tmp) / "streamlit.log") as url:
            if which in ("all", "readme"):
                readme(url)
            if which in ("all", "layout"):
                layouts(url)


if __name__ == "__main__":
    main(*sys.argv[1:2])
