"""End to end in a real browser: Debian's Chromium through Playwright.

The dashboard runs headless on 127.0.0.1 over small synthetic runs and files:

* uploads: a torchvision ResNet-18 state_dict (``torchvision:resnet18`` picked), a ``.pt2``
  of a model the project never saw, a checkpoint of a user-registered model: each is
  computed and drawn;
* hardening: a metadata bomb (one error, no traceback, the server lives on), broken run
  folders beside good ones (the good cards draw), runs on a read-only bind mount, and a
  second server whose cache is read-only too;
* the Paper page and the Optimizer's Taylor view;
* layout at 1100 and 1500 px: nothing overlaps in any heatmap figure (tests/e2e/layout.py).

Screenshots go to artifacts/e2e/. Skipped (with the reason) where Chromium is absent, except
in CI (HESSIAN_LENS_REQUIRE_BROWSER=1), where that is a failure; the read-only cases need
root (``mount --bind``).
"""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest
import torch

from hessian_lens import hierarchy
from hessian_lens.checkpoint import save_checkpoint
from hessian_lens.registry import build_model
from tests.apptools import (
    USER_MODELS,
    export_stranger,
    fake_partition,
    make_analysed_run,
    make_fake_run,
    make_pn_run,
    metadata_bomb,
    user_net,
)
from tests.conftest import need_browser
from tests.e2e.layout import collect, problems
from tests.e2e.server import (
    REPO,
    alerts,
    alive,
    choose,
    chromium_page,
    heatmap_count,
    not_blank,
    open_expander,
    read_only_mount,
    set_number,
    settle,
    streamlit_server,
    tracebacks,
    wait_for_heatmaps,
)

pytestmark = pytest.mark.browser
ARTIFACTS = REPO / "artifacts" / "e2e"
SLOW_MS = 240_000  # ResNet-18's H̄ on 10 images: ~25 s on 2 cores, more on a busy machine


@pytest.fixture(scope="module")
def browser_ready():
    need_browser()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)


def _need_root():
    if os.geteuid() != 0:
        if os.environ.get("HESSIAN_LENS_REQUIRE_BROWSER") == "1":
            pytest.fail("the read-only mounts of the browser tests need root")
        pytest.skip("read-only bind mounts need root")


@pytest.fixture(scope="module")
def world(browser_ready, tmp_path_factory):
    """Run folders (good, broken, read-only), files to upload and the settings of a server."""
    _need_root()
    root = tmp_path_factory.mktemp("e2e")
    run, npz = make_analysed_run(root)
    runs = run.parent
    make_fake_run(runs / "my-vgg", fake_partition("vgg11p"), model="vgg11p", epochs=(1, 6))
    make_fake_run(
        runs / "deep-resnet18",
        fake_partition("torchvision:resnet18", num_classes=10),
        model="torchvision:resnet18",
        epochs=(0, 1),
    )
    make_pn_run(runs / "pn-run", npz)
    (runs / "broken-json").mkdir()
    (runs / "broken-json" / "run.json").write_text("{oops")
    (runs / "broken-store").mkdir()
    (runs / "broken-store" / "run.json").write_text('{"name": "broken-store"}')
    (runs / "broken-store" / "analysis.sqlite").write_bytes(b"garbage" * 64)
    source = root / "ro-source"
    shutil.copytree(run, source / "ro-run", ignore=shutil.ignore_patterns("*.sqlite-*"))
    (source / "ro-run" / "run.json").write_text(
        (run / "run.json").read_text().replace('"name": "tiny-run"', '"name": "ro-run"')
    )
    files = root / "files"
    files.mkdir()
    torch.manual_seed(0)
    torch.save(
        build_model("torchvision:resnet18", num_classes=10).state_dict(), files / "resnet18.pt"
    )
    export_stranger(files / "stranger.pt2")
    (files / "my_models.py").write_text(USER_MODELS)
    save_checkpoint(
        files / "user.pt", user_net(), {"model": {"name": "tiny-user-net", "kwargs": {"width": 6}}}
    )
    (files / "bomb.pt").write_bytes(metadata_bomb())
    empty_cache = root / "ro-cache-source"
    empty_cache.mkdir()
    with (
        read_only_mount(source, root / "ro-runs") as ro_runs,
        read_only_mount(empty_cache, root / "ro-cache") as ro_cache,
    ):
        assert not os.access(ro_runs / "ro-run", os.W_OK)
        env = {
            "HESSIAN_LENS_RUNS": f"{runs},{ro_runs}",
            "HESSIAN_LENS_DATA": str(npz),
            "HESSIAN_LENS_CACHE": str(root / "cache"),
            "HESSIAN_LENS_MODELS": str(files / "my_models.py"),
        }
        yield {"env": env, "files": files, "ro_runs": ro_runs, "ro_cache": ro_cache, "root": root}


@pytest.fixture(scope="module")
def url(world):
    with streamlit_server(world["env"], ARTIFACTS / "streamlit.log") as base:
        yield base


def shot(page, name: str, at=None) -> None:
    """A screenshot of the window (scrolled to ``at``, a locator, when given)."""
    if at is not None:
        at.scroll_into_view_if_needed()
        page.wait_for_timeout(500)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    ok, colours = not_blank(path)
    assert ok, f"{name}.png looks blank ({colours} colours)"


def upload_and_compute(page, url: str, path, ready_text: str, pick: str | None = None) -> None:
    page.goto(f"{url}/Inspect_checkpoint")
    page.locator("input[type=file]").set_input_files(str(path))
    if pick:
        page.get_by_text("is a bare state_dict").first.wait_for(timeout=90_000)
        choose(page, "Architecture", pick)
    page.get_by_text(ready_text).first.wait_for(timeout=90_000)
    set_number(page, "Samples", 10)
    page.get_by_role("button", name="Compute H̄").click(timeout=90_000)
    page.get_by_text("done in").first.wait_for(timeout=SLOW_MS)
    wait_for_heatmaps(page, 2)
    assert alerts(page) == [] and tracebacks(page) == 0


def test_uploads_are_computed_and_drawn(url, world):
    files = world["files"]
    with chromium_page(width=1500, height=1300) as page:
        upload_and_compute(
            page, url, files / "resnet18.pt", "11,181,642 parameters", pick="torchvision:resnet18"
        )
        assert page.get_by_text("{'num_classes': 10}").count() == 1  # inferred from the weights
        shot(page, "upload_resnet18")
        upload_and_compute(page, url, files / "stranger.pt2", "9,130 parameters")
        assert (
            page.get_by_text("A torch.export program: its graph is the architecture.").count() == 1
        )
        assert page.get_by_test_id("stSelectbox").filter(has_text="Architecture").count() == 0
        shot(page, "upload_export_pt2")
        upload_and_compute(page, url, files / "user.pt", "18,508 parameters")
        assert page.get_by_text("tiny-user-net").count() >= 1
        shot(page, "upload_user_model")


def test_a_zipped_hugging_face_folder_computes_per_head_curvature(url, tmp_path):
    """The shipped hf-gpt2-text's save_pretrained folder, zipped and uploaded: built from its
    config.json, tokenised by its own tokenizer.json, H̄ per head computed and drawn."""
    folder = REPO / "checkpoints" / "hf-gpt2-text" / "save_pretrained"
    archive = shutil.make_archive(str(tmp_path / "hf-gpt2"), "zip", folder.parent, folder.name)
    corpus = tmp_path / "corpus.py"
    corpus.write_text("def f(x):\n    return x * 2 + 1\n" * 300)
    with chromium_page(width=1500, height=1300) as page:
        page.goto(f"{url}/Inspect_checkpoint")
        page.locator("input[type=file]").set_input_files(archive)
        page.get_by_text("A Hugging Face folder").first.wait_for(timeout=90_000)
        box = page.locator("input[aria-label='Data set']")
        box.fill(f"text:{corpus}@64")
        box.press("Enter")
        settle(page)
        assert page.get_by_text("Tokenised by the upload's own tokenizer.json.").count() == 1
        set_number(page, "Samples", 10)
        page.get_by_role("button", name="Compute H̄").click(timeout=90_000)
        page.get_by_text("done in").first.wait_for(timeout=SLOW_MS)
        wait_for_heatmaps(page, 2)
        assert alerts(page) == [] and tracebacks(page) == 0
        shot(page, "upload_hf_zip")


def test_hardening(url, world):
    with chromium_page(width=1500, height=1300) as page:
        page.goto(f"{url}/Inspect_checkpoint")
        page.locator("input[type=file]").set_input_files(str(world["files"] / "bomb.pt"))
        page.get_by_text("its metadata is larger than 1 MB").first.wait_for(timeout=90_000)
        errors = alerts(page)
        assert len(errors) == 1 and errors[0].startswith("bomb.pt: its metadata"), errors
        assert tracebacks(page) == 0
        shot(page, "metadata_bomb")
        assert alive(url)
        bomb = hashlib.sha256((world["files"] / "bomb.pt").read_bytes()).hexdigest()[:16]
        assert not (world["root"] / "cache" / "uploads" / f"{bomb}.pt").exists()  # deleted

        page.goto(url)  # the home page: broken folders beside good ones
        box = page.get_by_label("Filter runs")  # beside the shipped runs: more than a page
        box.fill(str(world["root"]))
        box.press("Enter")
        page.get_by_text("run.json unreadable").first.wait_for(timeout=90_000)
        page.get_by_text("is not a Hessian Lens store").first.wait_for()
        settle(page)  # the cards come one after the other
        for name in ("tiny-run", "ro-run", "my-vgg", "pn-run", "broken-json", "broken-store"):
            page.get_by_role("heading", name=name).first.wait_for(timeout=30_000)
            assert page.get_by_role("heading", name=name).count() == 1, name
        card = (  # the innermost block holding the heading and a chart: the card
            page.get_by_test_id("stVerticalBlock")
            .filter(has=page.get_by_role("heading", name="tiny-run"))
            .filter(has=page.locator(".js-plotly-plot"))
            .last
        )
        card.locator(".js-plotly-plot .scatterlayer .trace").first.wait_for()  # its curves
        assert card.get_by_text("Analysed 3 checkpoints").count() == 1
        assert alerts(page) == [] and tracebacks(page) == 0
        shot(page, "home_broken_beside_good", at=page.get_by_text("run.json unreadable").first)

        page.goto(f"{url}/Layer_interactions?run=ro-run")  # a run on a read-only mount
        page.get_by_text("ro-run · 3 analysed checkpoints").first.wait_for(timeout=90_000)
        wait_for_heatmaps(page, 6)
        assert alerts(page) == [] and tracebacks(page) == 0
        shot(page, "read_only_run")


def test_read_only_runs_and_cache(world):
    env = {
        **world["env"],
        "HESSIAN_LENS_RUNS": str(world["ro_runs"]),
        "HESSIAN_LENS_CACHE": str(world["ro_cache"]),
    }
    with (
        streamlit_server(env, ARTIFACTS / "streamlit-read-only.log") as base,
        chromium_page(width=1500, height=1300) as page,
    ):
        page.goto(base)
        box = page.get_by_label("Filter runs")  # the shipped runs fill the first page
        box.fill("ro-run")
        box.press("Enter")
        page.get_by_role("heading", name="ro-run").first.wait_for(timeout=90_000)
        page.get_by_text("Analysed 3 checkpoints").first.wait_for()
        assert alerts(page) == [] and alerts(page, "Warning") == [] and tracebacks(page) == 0
        page.goto(f"{base}/Layer_interactions?run=ro-run")
        wait_for_heatmaps(page, 6)
        page.get_by_text("normalized", exact=True).first.click()
        page.get_by_text("Fixed colour range").first.click()
        page.wait_for_timeout(1500)
        wait_for_heatmaps(page, 6)
        assert alerts(page) == [] and tracebacks(page) == 0
        shot(page, "read_only_cache")
    assert list(world["ro_cache"].iterdir()) == []


def test_paper_page_and_taylor_view(url):
    with chromium_page(width=1500, height=1300) as page:
        page.goto(f"{url}/Paper")
        wait_for_heatmaps(page, 24)  # 2 figures x 2 epochs x (H̄, H̄⁻¹) x 3 blocks
        page.get_by_test_id("stDataFrame").first.wait_for()
        assert heatmap_count(page) == 24
        assert page.get_by_text("No analysed").count() == 0
        assert alerts(page) == [] and tracebacks(page) == 0
        shot(page, "paper")

        page.goto(f"{url}/Optimizer")
        page.get_by_text("PartitionNewton run").first.wait_for(timeout=90_000)
        settle(page)
        choose(page, "PartitionNewton run", "pn-run")
        settle(page)
        picker = page.get_by_test_id("stSelectbox").filter(has_text="PartitionNewton run")
        assert picker.first.get_by_role("combobox").input_value() == "pn-run"
        title = "Taylor view: why did a step help or hurt?"
        button = page.get_by_role("button", name="Replay and draw")
        open_expander(page, title, button)
        button.click(timeout=90_000)
        settle(page, SLOW_MS)
        open_expander(page, title, page.get_by_text("true change at t = 1"))
        legend = page.locator(".js-plotly-plot .legendtext")
        legend.filter(has_text="Taylor order 4").first.wait_for()
        assert legend.filter(has_text="true loss").count() == 1
        assert alerts(page) == [] and tracebacks(page) == 0
        shot(page, "taylor_view", at=page.get_by_text("true change at t = 1").first)


@pytest.mark.parametrize("width", [1100, 1500])
def test_nothing_overlaps_at_two_widths(url, width):
    pages = [
        ("interactions_blocks", "Layer_interactions", 6),
        ("block_diagonal", "Block_diagonal", 3),
        ("interactions_resnet18", "Layer_interactions?run=deep-resnet18", 2),
        ("heterogeneity_gpt", "Block_heterogeneity?run=gpt-text", 1),
        ("interactions_gpt", "Layer_interactions?run=gpt-text", 2),
        ("interactions_vit", "Layer_interactions?run=vit-cifar10", 2),
        ("heterogeneity_vit", "Block_heterogeneity?run=vit-cifar10", 1),
    ]
    found = []
    with chromium_page(width=width, height=2000) as page:
        for name, path, count in pages:
            page.goto(f"{url}/{path}")
            wait_for_heatmaps(page, count)
            if name == "interactions_blocks":
                page.get_by_text("normalized", exact=True).first.click()
                page.wait_for_timeout(1500)
                wait_for_heatmaps(page, count)
                slider = page.get_by_role("slider").first  # and the epoch slider moves
                slider.focus()
                slider.press("Home")
                page.get_by_text("— epoch 0").first.wait_for(timeout=60_000)
                wait_for_heatmaps(page, count)
            if name == "interactions_gpt":  # every group, then one per head (54 -> 17)
                found += problems(collect(page), where=f"{name} (groups) at {width} px: ")
                choose(page, "Show", hierarchy.LEVEL_NAMES["head"])
                page.get_by_text("blocks.0.head3").first.wait_for(timeout=60_000)
                wait_for_heatmaps(page, count)
            page.wait_for_timeout(800)
            found += problems(collect(page), where=f"{name} at {width} px: ")
            shot(page, f"layout_{name}_{width}")
    assert found == []


def test_layout_check_sees_overlaps(url):
    """The overlap check fails on a figure whose colour bar sits on a neighbour's labels."""
    with chromium_page(width=1100, height=1400) as page:
        page.goto(f"{url}/Layer_interactions")
        wait_for_heatmaps(page, 6)
        page.wait_for_timeout(800)
        assert problems(collect(page)) == []
        page.evaluate(  # move the second panel's colour bar onto the first panel's y labels
            """() => {
              const plot = document.querySelector('.js-plotly-plot');
              const bar = plot.querySelectorAll('.infolayer g.colorbar')[1];
              const labels = plot.querySelectorAll('.cartesianlayer .subplot')[0]
                .querySelector('.yaxislayer-above').getBoundingClientRect();
              const box = bar.getBoundingClientRect();
              const move = `translate(${labels.left - box.left}, ${labels.top - box.top})`;
              bar.setAttribute('transform', `${move} ${bar.getAttribute('transform') || ''}`);
            }"""
        )
        found = problems(collect(page))
        assert any(("cbfill" in p or "colorbar" in p) and "ytick" in p for p in found), found


def _sidebar_choice(page, label: str) -> str:
    """What the sidebar's selectbox ``label`` shows."""
    box = page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").filter(has_text=label)
    return box.first.get_by_role("combobox").input_value()


def _switch(page, name: str) -> None:
    """Pick the run ``name`` in the sidebar and wait for the page to be redrawn."""
    box = page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").filter(has_text="Run")
    box.first.click()
    page.keyboard.type(name)
    page.keyboard.press("Enter")
    settle(page)
    page.wait_for_timeout(1000)
    settle(page)


#: page -> heatmaps drawn on a per-head run (vit-cifar10, gpt-text); 0: none
SWITCH_PAGES = {
    "": 0,
    "Layer_interactions": 2,
    "Block_diagonal": 3,
    "Block_heterogeneity": 1,
    "Inspect_checkpoint": 0,
    "Optimizer": 0,
    "Paper": 24,
}


@pytest.mark.parametrize("address", list(SWITCH_PAGES))
def test_every_page_follows_a_run_switch(url, address):
    """Open a page on the demo run, switch the sidebar's run twice: the page redraws for
    the new run (its analysis, its groups, its figures), nothing stale, nothing overlaps."""
    from hessian_lens.runs import describe_settings, load_run

    found = []
    with chromium_page(width=1500, height=1600) as page:
        page.goto(f"{url}/{address}")
        page.get_by_test_id("stSidebar").get_by_text("Run", exact=True).first.wait_for()
        settle(page)
        for name in ("vit-cifar10", "gpt-text", "lenet5-cifar10-paper"):
            _switch(page, name)
            assert _sidebar_choice(page, "Run") == name
            assert alerts(page) == [] and tracebacks(page) == 0, (name, alerts(page))
            assert page.get_by_text("No group left").count() == 0
            assert page.get_by_text("Showing 0 of").count() == 0
            analysed = load_run(REPO / "checkpoints" / name).settings()
            if address in ("Layer_interactions", "Block_diagonal", "Block_heterogeneity"):
                assert _sidebar_choice(page, "Analysis") == describe_settings(analysed[0])
            heatmaps = SWITCH_PAGES[address]
            if name == "lenet5-cifar10-paper":  # a CNN: fewer, different figures
                heatmaps = min(heatmaps, 1)
            if heatmaps:
                wait_for_heatmaps(page, heatmaps)
                page.wait_for_timeout(800)
                found += problems(collect(page), where=f"{address} on {name}: ")
            if address == "Layer_interactions" and name != "lenet5-cifar10-paper":
                modules = page.get_by_test_id("stMultiSelect").filter(has_text="Modules").first
                first = "class_token" if name == "vit-cifar10" else "tok_emb"
                assert modules.get_by_text(first, exact=True).count() == 1
            if address == "Paper" and name == "lenet5-cifar10-paper":
                main = page.get_by_test_id("stMain").get_by_test_id("stSelectbox")
                picked = main.filter(has_text="Run").first.get_by_role("combobox")
                assert picked.input_value() == name
            if address == "Optimizer" and name != "lenet5-cifar10-paper":
                compared = page.get_by_test_id("stMultiSelect").first
                assert compared.get_by_text(name, exact=True).count() == 1
        shot(page, f"switch_{address or 'home'}")
    assert found == []
