"""Heatmaps as labelled pictures for loggers (hessian_lens.images), checked pixel by pixel."""

from __future__ import annotations

import numpy as np

from hessian_lens import plots
from hessian_lens.images import LINE_PX, heatmap_image, ticks


def test_every_cell_has_the_dashboards_colour_and_every_name_is_written():
    rng = np.random.default_rng(0)
    M = rng.standard_normal((6, 6))
    labels = [f"layer{i // 2}.{'weight' if i % 2 == 0 else 'bias'}" for i in range(6)]
    pic = heatmap_image(M, labels, "title", zmax=2.0)
    colours = plots.matrix_rgb(M, zmax=2.0, cell=1)
    for i in range(6):
        for j in range(6):
            y = pic.top + i * pic.cell + pic.cell // 2
            x = pic.left + j * pic.cell + pic.cell // 2
            assert pic.pixels[y, x].tolist() == colours[i, j].tolist(), (i, j)
    assert pic.cell >= LINE_PX  # a name per row fits
    for i in range(6):  # ink left of each row (its name) and under each column (turned)
        y = pic.top + i * pic.cell + pic.cell // 2
        assert (pic.pixels[y - 3 : y + 3, : pic.left - 4] < 100).any(), i
        x = pic.left + i * pic.cell + pic.cell // 2
        below = pic.top + 6 * pic.cell
        assert (pic.pixels[below + 4 : below + 60, x - 4 : x + 4] < 100).any(), i
    assert pic.pixels.shape[0] > pic.top + 6 * pic.cell + 60  # the colour bar under it


def test_many_groups_are_named_once_a_layer():
    labels = [f"blocks.{b}.attn.q.head{h}" for b in range(4) for h in range(30)]
    assert ticks(labels, cell=5) == [(30 * b, f"blocks.{b}") for b in range(4)]
    pic = heatmap_image(np.eye(120), labels)
    assert pic.cell * 120 <= 640 and pic.pixels.dtype == np.uint8
    assert ticks(["a"], cell=40) == [(0, "a")]
