"""The H / Gauss-Newton / functional split from one set of probes equals three separate calls."""

from __future__ import annotations

import pytest
import torch

import hessian_lens as hl
from hessian_lens.losses import next_token
from hessian_lens.split import SPLIT, split_norms
from tests.test_heads import data, tiny_gpt


def test_split_equals_block_norms_for_each_curvature():
    model, batch = tiny_gpt(), data("gpt")
    part = hl.Partition.by_head(model)
    split = split_norms(model, next_token, batch, part, probes=3, seed=2)
    for name in SPLIT:
        bn = hl.block_norms(model, next_token, batch, part, probes=3, seed=2, curvature=name)
        for field in ("trace", "trace_se", "frobenius_sq", "frobenius_sq_se", "frobenius"):
            torch.testing.assert_close(
                getattr(split[name], field), getattr(bn, field), rtol=1e-9, atol=1e-14
            )
        assert split[name].curvature == name and split[name].probes == 3
    # the three differ: the functional part is neither H nor G (the model is not linear)
    H, G, F = (split[n].frobenius_sq.sum() for n in SPLIT)
    assert min(abs(H - G), abs(H - F), abs(G - F)) > 1e-3 * H


def test_split_refuses_one_probe():
    model, batch = tiny_gpt(), data("gpt")
    with pytest.raises(ValueError, match="probes must be an integer >= 2"):
        split_norms(model, next_token, batch, hl.Partition.by_head(model), probes=1)
