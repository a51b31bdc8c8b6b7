"""hl.Options: one value for the data contract and the run, taken by every entry point."""

from __future__ import annotations

import dataclasses
import typing
import warnings

import pytest
import torch

import hessian_lens as hl
from hessian_lens.engine.options import EngineKeywords
from tests.compare import EXACT, assert_close
from tests.tiny import SeqNet, data_for, loss_fn, mlp


def test_keywords_mirror_the_options_fields():
    fields = {f.name for f in dataclasses.fields(hl.Options)}
    assert set(typing.get_type_hints(EngineKeywords)) == fields


def test_keywords_override_options_and_unknown_names_are_refused():
    opts = hl.Options(batch_dim=(1, 0), reduction="sum")
    assert hl.Options.of(opts, reduction="mean") == hl.Options(batch_dim=(1, 0), reduction="mean")
    assert hl.Options.of(None) == hl.Options()
    assert hl.Options.of({"method": "loop"}).method == "loop"
    with pytest.raises(TypeError, match=r"unknown engine option\(s\) \['batch_size'\].*batch_dim"):
        hl.Options.of(opts, batch_size=3)
    with pytest.raises(TypeError, match="must be a hessian_lens.Options"):
        hl.Options.of("fast")


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("method", "magic", "method must be one of"),
        ("reduction", "max", "reduction must be"),
        ("batch_dim", -1, "batch_dim must be"),
        ("chunk_size", 0, "chunk_size must be"),
        ("forward", 3, "forward must be callable"),
        ("dtype", "float64", "dtype must be a torch.dtype"),
        ("train_mode", 1, "train_mode must be True or False"),
    ],
)
def test_bad_options_are_refused_when_made(field, value, match):
    with pytest.raises((TypeError, ValueError), match=match):
        hl.Options(**{field: value})


def test_every_entry_point_takes_the_same_options():
    """pseudo_hessian, summary_tensor, taylor_terms, losses_along, memory_plan, the step."""
    model = SeqNet(batch_first=False)
    torch.manual_seed(0)
    x, y = torch.randn(5, 8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    opts = hl.Options(batch_dim=(1, 0), dtype=torch.float64)
    res = hl.pseudo_hessian(model, loss_fn, (x, y), options=opts)
    keywords = hl.pseudo_hessian(model, loss_fn, (x, y), batch_dim=(1, 0), dtype=torch.float64)
    assert_close(res.H, keywords.H, **EXACT)
    assert_close(hl.summary_tensor(model, loss_fn, (x, y), 2, options=opts), res.H, **EXACT)
    u = res.direction
    terms = hl.taylor_terms(model, loss_fn, (x, y), u, 2, options=opts)
    assert_close(terms[1], res.H.sum(), rtol=1e-9, atol=1e-12)
    assert hl.losses_along(model, loss_fn, (x, y), u, [0.0], options=opts)[0] == pytest.approx(
        res.loss, rel=1e-12
    )
    eta, _ = hl.partition_newton_step(model, loss_fn, (x, y), options=opts)
    assert eta.shape == (len(res.labels),)
    with pytest.raises(ValueError, match="disagree on the sample count"):
        hl.pseudo_hessian(model, loss_fn, (x, y), options=opts, batch_dim=0)  # keyword wins


def test_recorder_takes_options(tmp_path):
    model = mlp()
    data = data_for("mlp")
    opts = hl.Options(dtype=torch.float64, reduction="mean")
    with hl.Recorder(tmp_path / "run", model, loss_fn, data, options=opts) as rec:
        record = rec.log(0)
    want = hl.pseudo_hessian(model, loss_fn, data, options=opts)
    assert_close(torch.as_tensor(record.arrays["H"]), want.H, **EXACT)
    assert record.settings["dtype"] == "float64"


def test_the_old_module_path_is_a_deprecated_alias():
    import importlib
    import sys

    sys.modules.pop("hessian_lens.summary", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = importlib.import_module("hessian_lens.summary")
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    assert summary.pseudo_hessian is hl.pseudo_hessian
    assert summary.MemoryPlan is hl.MemoryPlan
