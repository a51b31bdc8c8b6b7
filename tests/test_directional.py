"""H̄ differentiated along the groups (engine/directional.py) against the float64 oracle."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hessian_lens as hl
from hessian_lens import memory
from hessian_lens.engine import directional as D
from hessian_lens.engine.options import Options
from hessian_lens.engine.state import functional_state
from hessian_lens.reference import reference_summary
from tests.compare import EXACT, assert_close
from tests.test_heads import LOSS, MODELS, attention_for_derivatives, data, reference
from tests.tiny import data_for, loss_fn, mlp


class Shared(nn.Module):
    """A linear weight also used outside ``F.linear`` (moved as a whole tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.tanh(self.fc(x))
        return self.out(h + h @ self.fc.weight)


@pytest.mark.parametrize("rows", [1, 3, None])
@pytest.mark.parametrize("name", list(MODELS))
def test_heads_along_the_groups_match_brute_force(name, rows):
    """Rows (fused Q/K/V heads), columns (output-projection heads), whole tensors, tied
    embeddings; rows of one fused tensor one by one, three at a time, or as planned."""
    model, batch = MODELS[name](), data(name)
    part = hl.Partition.by_head(model)
    with attention_for_derivatives():
        res = hl.pseudo_hessian(model, LOSS[name], batch, partition=part, chunk_size=rows)
    H, g = reference(name, part)
    assert_close(res.H, H, **EXACT)
    assert_close(res.g, g, **EXACT)


@pytest.mark.parametrize("scheme", ["by_neuron", "discrete", "by_kind"])
def test_other_layouts_match_brute_force(scheme):
    model, batch = mlp(), data_for("mlp", n=7)
    part = hl.Partition.from_name(model, scheme)
    res = hl.pseudo_hessian(model, loss_fn, batch, partition=part, chunk_size=4)
    assert_close(res.H, reference_summary(model, loss_fn, batch, 2, part), **EXACT)
    assert_close(res.g, reference_summary(model, loss_fn, batch, 1, part), **EXACT)


def test_a_weight_used_outside_linear_moves_whole():
    torch.manual_seed(0)
    model = Shared().double()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    part = hl.Partition.by_neuron(model)
    with functional_state(model, part, Options()) as st:
        assert [part.names[i] for i in D.linear_only(st, x)] == ["out.weight"]
    res = hl.pseudo_hessian(model, F.cross_entropy, (x, y), partition=part)
    assert_close(res.H, reference_summary(model, F.cross_entropy, (x, y), 2, part), **EXACT)


def test_layouts_of_the_gpt_weights():
    """qkv splits by rows (heads' features), out_proj by columns (the heads it reads)."""
    model = MODELS["gpt"]()
    part = hl.Partition.by_head(model)
    with functional_state(model, part, Options()) as st:
        x = data("gpt")[0]
        kinds = {
            part.names[i]: D._layout(part, i, st.params[i].shape).kind for i in D.linear_only(st, x)
        }
    assert kinds == {
        "blocks.0.attn.qkv.weight": "rows",
        "blocks.0.attn.out_proj.weight": "columns",
        "blocks.0.mlp.fc1.weight": "whole",
        "blocks.0.mlp.fc2.weight": "whole",
    }


def test_rows_of_one_fused_tensor_share_a_pass():
    model = MODELS["gpt"]()
    part = hl.Partition.by_head(model)
    runs = D.row_batches(part, range(len(part)), 64)
    heads = [part.labels[r[0]] for r in runs if len(r) > 1]
    assert heads == ["blocks.0.attn.q.head0", "blocks.0.attn.o.head0"]
    assert [len(r) for r in runs if len(r) > 1] == [6, 2]
    assert max(len(r) for r in D.row_batches(part, range(len(part)), 4)) == 4


def test_rows_per_pass_are_planned_from_the_memory_left(monkeypatch):
    """Many rows per pass with room to spare; one when a second would not fit."""
    model, (x, y) = MODELS["gpt"](), data("gpt", n=12)
    part = hl.Partition.by_head(model)
    with attention_for_derivatives():
        free = hl.memory_plan(model, LOSS["gpt"], (x, y), partition=part)
        assert free.rows == 6 and free.row_bytes(12) > 0
        tight = free.peak(12) - (free.rows - 1) * free.row_bytes(12) + free.row_bytes(12) // 2
        monkeypatch.setenv(memory.MAX_MEMORY_ENV, repr(tight / memory.GIB))
        plan = hl.memory_plan(model, LOSS["gpt"], (x, y), partition=part)
        assert plan.rows == 1 and plan.micro_batch >= 12
        res = hl.pseudo_hessian(model, LOSS["gpt"], (x, y), partition=part)
        monkeypatch.delenv(memory.MAX_MEMORY_ENV)
        many = hl.pseudo_hessian(model, LOSS["gpt"], (x, y), partition=part)
    assert res.memory.rows == 1 and many.memory.rows == 6
    assert_close(res.H, many.H, **EXACT)
