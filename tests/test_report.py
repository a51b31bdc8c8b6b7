"""``hessian-lens report``: one self-contained HTML page of a run, and its figures as files."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

from hessian_lens import cli, report
from hessian_lens.runs import load_run
from tests.conftest import REPO, need_browser
from tests.recorded import make_recorder_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_recorder_run(tmp_path_factory.mktemp("report") / "tiny-run", epochs=3)


def figure_of(page: str, div: str) -> dict:
    """The figure (data, layout, frames) the page's script draws in ``div``."""
    start = page.index(f'<div id="{div}"')
    text = page[page.index("var fig = ", start) + len("var fig = ") :]
    return json.JSONDecoder().raw_decode(text)[0]


def frames_of(page: str, div: str) -> list[dict]:
    """The frames passed to ``Plotly.addFrames`` for the figure ``div``."""
    assert "Plotly.addFrames" in page
    return figure_of(page, div)["frames"]


def array(value) -> np.ndarray:
    """A plotly JSON array: a list, or plotly's typed array ``{"dtype", "bdata", "shape"}``."""
    if isinstance(value, dict):
        out = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = value.get("shape")
        return out.reshape([int(n) for n in str(shape).split(",")]) if shape else out
    return np.array(value, dtype=float)


def test_the_page_is_self_contained_and_holds_every_epoch(run, tmp_path):
    out = tmp_path / "run.html"
    assert cli.main(["report", str(run), "-o", str(out)]) == 0
    page = out.read_text()
    assert not re.search(r"<script[^>]+src=", page)  # plotly.js embedded, nothing fetched
    assert "Plotly.newPlot" in page and len(page) > 3_000_000  # plotly.js itself is ~4.6 MB
    assert "tiny-run" in page and "4 checkpoints (epochs 0–3)" in page
    recs = load_run(run).records()
    frames = frames_of(page, "fig-H")
    assert [f["name"] for f in frames] == ["0", "1", "2", "3"]
    ww = recs[1].arrays["H"][0::2, 0::2]  # epoch 1, weights x weights
    np.testing.assert_allclose(array(frames[1]["data"][0]["z"]), ww, rtol=1e-6)  # float32
    assert "text" not in frames[1]["data"][0]  # the hover names once, not once an epoch
    table = page[page.index("<table><tr><th>epoch") :]
    assert table.count("<tr>") == 1 + 4  # header + one row per analysed epoch
    off = recs[3].summary["compare"]["layer"]["off_share_H"]
    assert f"{off:.1%}" in table


def test_a_folder_that_is_no_run_is_one_line(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path), "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "is not a run folder" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.html").exists()


def test_an_unknown_format_writes_nothing(run, tmp_path, capsys):
    out = tmp_path / "r.html"
    code = cli.main(
        [
            "report",
            str(run),
            "-o",
            str(out),
            "--figures",
            str(tmp_path / "f"),
            "--formats",
            "svg,jpg",
        ]
    )
    assert code == 2 and "unknown figure format 'jpg'" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "f").exists()


def test_figures_as_files(run, tmp_path):
    pytest.importorskip("kaleido")
    need_browser()
    folder = tmp_path / "figs"
    written = report.write_report(run, tmp_path / "r.html", folder, ("svg", "pdf"))
    names = sorted(p.name for p in written[1:])
    assert names == sorted(
        f"{stem}.{fmt}"
        for stem in ("curves", "H_epoch3", "Hinv_epoch3", "blockdiag_trends")
        for fmt in ("svg", "pdf")
    )
    assert (folder / "H_epoch3.svg").read_text().startswith("<svg")
    assert (folder / "H_epoch3.pdf").read_bytes().startswith(b"%PDF")
    assert "weights × weights" in (folder / "H_epoch3.svg").read_text()


def test_one_figure_as_bytes_in_each_format():
    pytest.importorskip("kaleido")
    from hessian_lens import plots
    from hessian_lens.figexport import figure_bytes

    need_browser()
    fig = plots.heatmap(plots.full_panel(np.eye(3), ["a", "b", "c"]))
    assert figure_bytes(fig, "svg").startswith(b"<svg")
    assert figure_bytes(fig, "png").startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="unknown figure format 'gif'"):
        figure_bytes(fig, "gif")


VIT = REPO / "checkpoints" / "vit-cifar10"


def test_a_per_head_run_is_drawn_one_per_head_one_epoch_each():
    """vit-cifar10 (S = 108, 14 analyses of 13 epochs): one record per epoch, heatmaps of
    the 33 heads and blocks of the layer -> head tree (exact unions), rows that stay
    readable, nothing overlapping, and a card whose counts agree with the analysis."""
    from hessian_lens import hierarchy
    from tests.layoutcheck import layout_problems

    run = load_run(VIT)
    recs = report.run_records(run)
    epochs = [r["epoch"] for r in recs]
    assert len(run.records(arrays=False)) == 14 and len(recs) == 13 == len(set(epochs))
    assert recs[-1]["checkpoint"] == "epoch_0008.safetensors"  # the file in the folder
    shown, level = report.shown_records(recs)
    assert level == "head" and len(shown[-1]["summary"]["labels"]) == 33
    groups = hierarchy.units(recs[-1]["summary"]["labels"], "head")
    M = hierarchy.membership(108, groups)
    np.testing.assert_allclose(shown[-1]["arrays"]["H"], M.T @ recs[-1]["arrays"]["H"] @ M)
    static = report.static_figures(run, recs)
    for name in ("H_epoch8", "Hinv_epoch8"):
        fig = static[name]
        assert len(fig.data) == 1 and layout_problems(fig) == [], name  # one full panel
        rows_px = fig.layout.height - fig.layout.margin.t - fig.layout.margin.b
        assert rows_px / 33 >= 18, rows_px  # not squeezed
        assert fig.layout.title.text.endswith("— epoch 8")
        assert fig.layout.annotations[0].text != fig.layout.title.text  # no title twice
    card = dict(report.card_rows(run, recs))
    assert card["Epochs"].startswith("8 trained · 3 checkpoints kept (13 analysed")
    assert card["Analysis"].startswith("13 checkpoints (epochs 0–8)")
    assert "the 108 groups collapsed into 33" in card["Heatmaps"]
    assert card["Architecture"].startswith("torchvision:VisionTransformer · image_size 32")


def test_static_figures_are_drawn_at_their_own_size(tmp_path):
    """kaleido's batch export drew every figure at 700 x 500, squeezing tall heatmaps."""
    pytest.importorskip("kaleido")
    from PIL import Image

    from hessian_lens import plots
    from hessian_lens.figexport import SCALE, WIDTH, write_figures

    need_browser()
    labels = [f"group{i}" for i in range(40)]
    fig = plots.panel_row([plots.full_panel(np.eye(40), labels)], height=900)
    (png,) = write_figures({"tall": fig}, tmp_path, ("png",))
    with Image.open(png) as im:
        assert im.size == (SCALE * WIDTH, SCALE * fig.layout.height)
