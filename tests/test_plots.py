"""Figures are pure functions of the data: check what they draw."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hessian_lens import plots
from hessian_lens.heterogeneity import type_order
from hessian_lens.hierarchy import order
from tests.layoutcheck import layout_problems

KINDS = ["weight", "bias"] * 3
LAYERS = ["conv1", "conv1", "fc1", "fc1", "fc2", "fc2"]


def sym(n=6, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, n)) * np.exp(rng.normal(size=(n, 1)) * 3)
    return A + A.T


def test_blocks_are_the_right_submatrices():
    M = sym()
    b = plots.interaction_blocks(M, KINDS, LAYERS)
    w, bias = [0, 2, 4], [1, 3, 5]
    assert np.array_equal(b["WW"].z, M[np.ix_(w, w)])
    assert np.array_equal(b["BB"].z, M[np.ix_(bias, bias)])
    assert np.array_equal(b["WB"].z, M[np.ix_(w, bias)])  # row: weights l1, column: bias l2
    assert b["WB"].rows == b["WB"].cols == ["conv1", "fc1", "fc2"]
    with pytest.raises(ValueError, match="full view"):
        plots.interaction_blocks(M[:3, :3], ["mixed"] * 3, ["a", "b", "c"])


def test_heatmap_draws_the_panel_with_symmetric_diverging_limits():
    M = sym()
    panel = plots.full_panel(M, [f"g{i}" for i in range(6)])
    fig = plots.heatmap(panel)
    trace = fig.data[0]
    assert np.array_equal(np.asarray(trace.z), M)
    assert trace.zmin == -trace.zmax == -np.abs(M).max()
    assert trace.zmid == 0
    colours = [c for _, c in trace.colorscale]
    assert colours[0] == "#053061" and colours[2] == "#ffffff" and colours[-1] == "#67001f"
    assert list(fig.layout.xaxis.ticktext) == panel.cols
    assert list(fig.layout.yaxis.ticktext) == panel.rows
    assert fig.layout.yaxis.autorange == "reversed"  # row 0 at the top
    assert np.array_equal(np.asarray(trace.customdata)[..., 0], M)  # hover: exact value
    assert trace.text is None  # hover: "%{y} × %{x}", the axes' S + S labels, no S² texts
    assert (trace.y[1], trace.x[2]) == ("\u200bg1", "\u200bg2")
    assert trace.hovertemplate.startswith("%{y} × %{x}")
    assert plots.heatmap(panel, zmax=7.0).data[0].zmax == 7.0
    json.loads(fig.to_json())


def test_transforms():
    M = sym()
    assert np.array_equal(plots.transform(M, "raw"), M)
    C = plots.transform(M, "normalized")
    assert np.allclose(np.abs(np.diag(C)), 1)
    D = np.diag([10.0, 0.1, 3.0, 1.0, 2.0, 5.0])
    assert np.allclose(plots.transform(D @ M @ D, "normalized"), C)  # rescaling invariant
    L = plots.transform(M, "signed log")
    assert np.array_equal(np.sign(L), np.sign(M))
    assert np.all(np.diff(plots.transform(np.array([[1e-3, 1.0, 1e3]]), "signed log")) > 0)
    with pytest.raises(ValueError, match="unknown scale"):
        plots.transform(M, "cubic")


def test_side_by_side_shares_one_colour_scale():
    a, b = sym(seed=1), sym(seed=2)
    panels = [plots.full_panel(a, list("abcdef")), plots.full_panel(b, list("abcdef"))]
    fig = plots.side_by_side(panels)
    top = max(np.abs(a).max(), np.abs(b).max())
    assert fig.layout.coloraxis.cmin == -top and fig.layout.coloraxis.cmax == top
    assert all(t.coloraxis == "coloraxis" for t in fig.data)


def test_animation_has_one_frame_per_epoch():
    frames = [(e, plots.full_panel(sym(seed=e), list("abcdef"))) for e in (0, 1, 5)]
    fig = plots.animated_heatmap(frames, zmax=3.0)
    assert [f.name for f in fig.frames] == ["0", "1", "5"]
    assert np.array_equal(np.asarray(fig.frames[2].data[0].z), frames[2][1].z)
    assert [s.label for s in fig.layout.sliders[0].steps] == ["0", "1", "5"]
    assert fig.layout.updatemenus[0].buttons[0].label == "▶ Play"
    with pytest.raises(ValueError, match="no epochs"):
        plots.animated_heatmap([], 1.0)


def test_curves_trends_lines_and_limits():
    history = [
        {"epoch": 0, "train_loss": 2.3, "test_acc": 0.1},
        {"epoch": 1, "train_loss": 1.5, "test_acc": 0.4},
    ]
    fig = plots.curves(history)
    assert [t.name for t in fig.data] == ["train loss", "test accuracy"]
    full = plots.curves([{**h, "test_loss": 2.0, "train_acc": 0.5} for h in history])
    live = plots.curves([{"epoch": 0, "test_acc": 0.1}])  # a run that logs accuracy alone
    colour = {t.name: t.line.color for t in full.data}
    assert len(set(colour.values())) == 4  # each metric its own colour, on every card
    assert {t.name: t.line.color for t in [*fig.data, *live.data]}.items() <= colour.items()
    assert list(plots.trends([0, 1], {"x": [1, 2]}).data[0].y) == [1, 2]
    assert plots.lines({"a": ([0, 1], [3, 4])}, "step", "η", log_y=True).layout.yaxis.type == "log"
    assert plots.symmetric_limit(np.zeros((2, 2))) == 1.0
    assert plots.symmetric_limit(np.array([[-3.0]]), np.array([[2.0]])) == 3.0


def test_panel_row_has_one_symmetric_scale_per_panel():
    M = sym()
    b = plots.interaction_blocks(M, KINDS, LAYERS)
    panels = list(b.values())
    fig = plots.panel_row(panels)
    assert [t.coloraxis for t in fig.data] == ["coloraxis", "coloraxis2", "coloraxis3"]
    for t, p, axis in zip(fig.data, panels, ("coloraxis", "coloraxis2", "coloraxis3"), strict=True):
        assert np.array_equal(np.asarray(t.z), p.z)
        assert fig.layout[axis].cmax == -fig.layout[axis].cmin == np.abs(p.z).max()
    fixed = plots.panel_row(panels, zmax=[5.0, None, 2.0])
    assert fixed.layout.coloraxis.cmax == 5.0 and fixed.layout.coloraxis3.cmax == 2.0
    assert fixed.layout.coloraxis2.cmax == np.abs(panels[1].z).max()
    assert list(fig.layout.xaxis3.ticktext) == ["conv1", "fc1", "fc2"]


# ---------------------------------------------------------------------------- layout
def _deep_labels(n_modules: int, per_module: int) -> list[str]:
    return [f"layer{m}.{k}.conv.weight" for m in range(n_modules) for k in range(per_module)]


def _rows_of_panels():
    """Rows the pages draw: LeNet blocks, full matrices side by side, deep networks."""
    M = sym(10)
    lenet = ["conv1", "conv2", "fc1", "fc2", "fc3"]
    labels = [f"{lay}.{k}" for lay in lenet for k in ("weight", "bias")]
    kinds = ["weight", "bias"] * 5
    layers = [lay for lay in lenet for _ in range(2)]
    blocks = list(plots.interaction_blocks(M, kinds, layers).values())
    full = [plots.full_panel(sym(10, s), labels, title=t) for s, t in enumerate("abc")]
    deep = _deep_labels(6, 11)  # S = 66: ticks at module boundaries
    resnet = ["conv1.weight", "bn1.weight", "bn1.bias", *deep]
    big = plots.full_panel(sym(len(resnet)), resnet)
    mlp = [f"layers.{i}.{k}" for i in range(45) for k in ("weight", "bias")]
    mlp_blocks = plots.interaction_blocks(
        sym(90), ["weight", "bias"] * 45, [m.rsplit(".", 1)[0] for m in mlp]
    )
    return {
        "lenet blocks": plots.panel_row(blocks, colorbar="normalized"),
        "lenet blocks raw": plots.panel_row(blocks),
        "block-diagonal page": plots.side_by_side(full, colorbar="raw"),
        "resnet full": plots.panel_row([big], height=760),
        "mlp blocks": plots.panel_row(list(mlp_blocks.values()), colorbar="signed log"),
        "paper row": plots.panel_row(blocks, height=320, title="H̄, epoch 1"),
    }


@pytest.mark.parametrize("name", list(_rows_of_panels()))
def test_rows_of_panels_do_not_overlap_at_the_narrowest_width(name):
    fig = _rows_of_panels()[name]
    assert layout_problems(fig) == []
    json.loads(fig.to_json())


def test_deep_networks_get_ticks_at_module_boundaries_that_do_not_collide():
    fig = _rows_of_panels()["resnet full"]
    # conv1 and bn1 are one row apart: only conv1 keeps a tick
    assert list(fig.layout.yaxis.ticktext) == ["conv1", *[f"layer{m}" for m in range(6)]]
    assert list(fig.layout.yaxis.tickvals) == [0, *range(3, 69, 11)]
    mlp = _rows_of_panels()["mlp blocks"]
    texts = list(mlp.layout.yaxis.ticktext)
    assert texts[0] == "layers.0" and len(texts) < 45  # second level, thinned
    assert plots.module_prefixes(["fc.weight", "fc.bias"]) == ["fc.weight", "fc.bias"]
    assert plots.module_prefixes(["weight", "bias"]) == ["weight", "bias"]


def test_layout_check_catches_overlaps():
    """The checker above fails on the layouts that used to overlap."""
    fig = _rows_of_panels()["lenet blocks"]
    fig.update_layout(margin=dict(autoexpand=True))
    assert "margins may grow" in layout_problems(fig)[0]
    fig = _rows_of_panels()["block-diagonal page"]
    fig.update_xaxes(tickangle=0)
    assert any("x tick labels touch" in p for p in layout_problems(fig))
    fig = _rows_of_panels()["lenet blocks"]
    fig.update_layout(coloraxis2_colorbar=dict(x=0.5, len=0.6))
    assert any("leaves its panel" in p for p in layout_problems(fig))
    fig = _rows_of_panels()["lenet blocks"]
    fig.update_layout(margin=dict(b=60))
    assert any("reach the colour bars" in p for p in layout_problems(fig))
    fig = _rows_of_panels()["block-diagonal page"]
    fig.update_yaxes(tickvals=[0, 1, 2], ticktext=["conv1.weight"] * 3, row=1, col=2)
    assert any("reach into the panel on their left" in p for p in layout_problems(fig))
    fig = _rows_of_panels()["resnet full"]
    fig.update_yaxes(tickvals=[0, 1], ticktext=["conv1", "bn1"])
    assert any("y tick labels touch" in p for p in layout_problems(fig))


def test_transformer_heatmaps_tick_each_layer_and_separate_layers_with_lines():
    labels = ["tok_emb.weight", "pos_emb.weight"]
    for b in range(2):
        labels += [f"blocks.{b}.attn.{r}.head{h}" for h in range(4) for r in "qkvo"]
        labels += [f"blocks.{b}.mlp.fc{i}.{k}" for i in (1, 2) for k in ("weight", "bias")]
    labels += ["ln_f.weight", "ln_f.bias"]
    panel = plots.full_panel(sym(len(labels)), labels, separate_layers=True)
    assert panel.bounds == [1, 2, 22, 42]
    fig = plots.panel_row([panel], height=760)
    assert list(fig.layout.yaxis.ticktext) == ["tok_emb", "pos_emb", "blocks.0", "blocks.1", "ln_f"]
    assert len(fig.layout.shapes) == 2 * len(panel.bounds)
    assert not plots.full_panel(sym(len(labels)), labels).bounds
    assert not layout_problems(fig)


# ---------------------------------------------------------------------------- heterogeneity
H_LABELS = [
    "blocks.0.attn.q.head0",
    "blocks.0.attn.q.head1",
    "blocks.0.attn.k.head0",
    "blocks.0.attn.k.head1",
    "blocks.0.mlp.fc1.weight",
    "emb.weight",
]
H_BLOCKS = ["q", "q", "k", "k", "mlp", "embedding"]
H_HEADS = [0, 1, 0, 1, None, None]
H_TYPES = type_order(H_BLOCKS)  # the column order the page passes
H_ROWS = order(H_LABELS, "head")


def _points(fig):
    """Every strip point: (label, x, y, signed value, trace name)."""
    out = []
    for tr in fig.data:
        if tr.type == "scatter" and tr.customdata is not None:
            for x, y, cd in zip(tr.x, tr.y, tr.customdata, strict=True):
                out.append((cd[0], x, y, cd[1], tr.name))
    return out


def test_strip_draws_log_magnitudes_by_type_and_head_and_leaves_out_undefined_groups():
    values = np.array([0.01, -0.1, 10.0, np.nan, 0.0, 100.0])
    fig = plots.curvature_strip(H_LABELS, values, H_BLOCKS, H_HEADS, H_TYPES)
    pts = {p[0]: p for p in _points(fig)}
    assert sorted(pts) == sorted(np.array(H_LABELS)[[0, 1, 2, 5]].tolist())  # NaN and 0 out
    for i, label in enumerate(H_LABELS):
        if label in pts:
            assert pts[label][2] == pytest.approx(np.log10(abs(values[i])))
            assert pts[label][3] == values[i]  # hover: the signed value
    assert pts[H_LABELS[0]][4] == "head 0" and pts[H_LABELS[1]][4] == "head 1"
    assert pts["emb.weight"][4] == "no head"
    ticks = fig.layout.xaxis.ticktext
    assert ticks == ("embedding (1)", "q (2)", "k (2)", "mlp (1)")  # input to output
    for label, x, *_ in pts.values():  # each point in its type's column
        col = [t.split(" ")[0] for t in ticks].index(H_BLOCKS[H_LABELS.index(label)])
        assert abs(x - col) < 0.5
    (rings,) = [t for t in fig.data if t.name == "c_s < 0 (ringed)"]
    assert list(rings.y) == [pytest.approx(-1.0)]
    assert "1 of 6 groups left out: ḡ_s = 0" in fig.layout.title.text
    assert "1 with c_s = 0" in fig.layout.title.text
    clean = plots.curvature_strip(H_LABELS, np.ones(6), H_BLOCKS, H_HEADS, H_TYPES, title="t")
    assert clean.layout.title.text == "t"
    assert not [t for t in clean.data if t.name == "c_s < 0 (ringed)"]


def test_block_trends_median_and_band_per_type_across_epochs():
    values = np.array(
        [
            [1.0, 2.0, 3.0],
            [-4.0, 8.0, np.nan],
            [10.0, 10.0, 10.0],
            [1000.0, 100.0, 0.0],
            [5.0, 5.0, 5.0],
            [7.0, 7.0, 7.0],
        ]
    )
    fig = plots.block_trends([0, 0.5, 1], values, H_BLOCKS, H_LABELS, H_TYPES)
    lines = {t.name: t for t in fig.data if t.showlegend is not False}
    assert list(lines) == ["embedding", "q", "k", "mlp"]
    assert list(lines["q"].y) == [1.0, 2.0, 3.0]  # lower median of |1|, |-4| is 1; NaN out
    assert list(lines["k"].y) == [10.0, 10.0, 10.0]  # the 0 has no logarithm: left out
    band = [t for t in fig.data if t.legendgroup == "k" and t.showlegend is False]
    assert [list(t.y) for t in band] == [[1000.0, 100.0, 10.0], [10.0, 10.0, 10.0]]
    assert fig.layout.yaxis.type == "log"
    groups = plots.block_trends([0, 0.5, 1], values, H_BLOCKS, H_LABELS, H_TYPES, mode="groups")
    thin = [t for t in groups.data if t.showlegend is False]
    assert len(thin) == 6 and list(thin[1].y) == [1.0, 2.0, 3.0]  # q head0 ... in type order
    with pytest.raises(ValueError, match="mode"):
        plots.block_trends([0], values[:, :1], H_BLOCKS, H_LABELS, H_TYPES, mode="box")


def test_curvature_heatmap_rows_in_hierarchy_order_with_negatives_marked():
    from hessian_lens.hierarchy import order

    rng = np.random.default_rng(0)
    values = 10.0 ** rng.normal(size=(6, 3))
    values[1, 2] = -values[1, 2]
    values[3, 0] = np.nan
    fig = plots.curvature_heatmap(H_LABELS, ["0", "1", "2"], values, H_ROWS)
    rows = order(H_LABELS, "head")
    assert rows != list(range(6))  # head by head: the order matters here
    z = np.asarray(fig.data[0].z, dtype=float)
    want = np.log10(np.abs(values[rows]))
    np.testing.assert_allclose(z[np.isfinite(want)], want[np.isfinite(want)])
    assert np.isnan(z[rows.index(3), 0])
    assert list(fig.layout.yaxis.ticktext) == [H_LABELS[i] for i in rows]
    (cross,) = [t for t in fig.data if t.name == "c_s < 0"]
    assert (list(cross.x), list(cross.y)) == ([2], [rows.index(1)])
    assert "1 of 18 (group, checkpoint) cells left out" in fig.layout.title.text
    with pytest.raises(ValueError, match="groups x checkpoints"):
        plots.curvature_heatmap(H_LABELS, ["0", "1"], values, H_ROWS)


def test_comparison_shares_one_scale_and_draws_both_spreads():
    a = plots.StripSide(
        "gpt", H_LABELS, np.array([1e-3, 1e-2, 1, 10, 1, 1]), H_BLOCKS, H_HEADS, H_TYPES
    )
    b = plots.StripSide(
        "cnn",
        ["c1.weight", "c1.bias", "fc.weight"],
        np.array([1e3, 1.0, np.nan]),
        ["conv", "conv", "linear"],
        [None] * 3,
        ["conv", "linear"],
    )
    spreads = {
        "gpt": ([0, 0.5, 1], [1.0, 0.5, 0.4], [1.5, 1.0, 0.9]),
        "cnn": ([0, 1], [0.2, 0.3], [1.0, 1.2]),
    }
    fig = plots.heterogeneity_comparison(a, b, spreads)
    assert fig.layout.yaxis.range == fig.layout.yaxis2.range
    lo, hi = fig.layout.yaxis.range
    assert lo < -3 < 3 < hi  # both strips' extremes inside the one scale
    titles = [an.text for an in fig.layout.annotations]
    assert titles[0] == "gpt" and titles[1].startswith("cnn<br><sup>1 of 3 groups left out")
    lines = {t.name: list(t.y) for t in fig.data if t.name and ": " in t.name}
    assert lines == {
        "gpt: between block types": [1.0, 0.5, 0.4],
        "gpt: all groups": [1.5, 1.0, 0.9],
        "cnn: between block types": [0.2, 0.3],
        "cnn: all groups": [1.0, 1.2],
    }
    names = [t.name for t in fig.data if t.showlegend is not False and t.type == "scatter"]
    assert names.count("no head") == 1  # one legend entry for both strips


def test_no_defined_curvature_at_all_draws_empty_figures_that_say_so():
    nan = np.full(6, np.nan)  # e.g. every ḡ_s = 0
    strip = plots.curvature_strip(H_LABELS, nan, H_BLOCKS, H_HEADS, H_TYPES)
    assert _points(strip) == [] and "6 of 6 groups left out" in strip.layout.title.text
    trends = plots.block_trends([0, 1], np.stack([nan, nan], axis=1), H_BLOCKS, H_LABELS, H_TYPES)
    assert all(y is None for t in trends.data for y in t.y)
    heat = plots.curvature_heatmap(H_LABELS, ["0"], nan[:, None], H_ROWS)
    assert np.isnan(np.asarray(heat.data[0].z, dtype=float)).all()
    side = plots.StripSide("init", H_LABELS, nan, H_BLOCKS, H_HEADS, H_TYPES)
    fig = plots.heterogeneity_comparison(side, side, {"init": ([0.0], [np.nan], [np.nan])})
    assert [t.y for t in fig.data if t.name == "init: all groups"] == [(None,)]
