"""Reading recorded results: ``hessian-lens runs`` / ``show`` and ``hl.load_run(dir).records()``."""

from __future__ import annotations

import json

import numpy as np
import pytest

import hessian_lens as hl
from hessian_lens import cli
from hessian_lens.store import ResultStore
from tests.recorded import make_recorder_run


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("listing")
    make_recorder_run(root / "tiny-run", epochs=2)
    (root / "not-yet").mkdir()
    (root / "not-yet" / "run.json").write_text('{"name": "not-yet", "history": []}')
    (root / "broken").mkdir()
    (root / "broken" / "run.json").write_text("{oops")
    return root


def test_runs_lists_every_run_with_its_analyses(root, capsys, monkeypatch):
    monkeypatch.delenv("HESSIAN_LENS_RUNS", raising=False)
    assert cli.main(["runs", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    tiny = next(x for x in lines if x.startswith("tiny-run"))
    assert "user:Sequential · 2 epochs · 3 checkpoints" in tiny
    assert "analysed: 3 × canonical" in tiny
    assert any(x.startswith("not-yet") and "analysed: not yet" in x for x in lines)
    assert any("warning: run.json unreadable" in x for x in lines)  # broken: said, not fatal
    assert cli.main(["runs", str(root), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["tiny-run"]["analyses"][0]["records"] == 3 and rows["tiny-run"]["epochs"] == 2


def test_runs_defaults_to_the_checkpoints_folder(root, capsys, monkeypatch):
    monkeypatch.chdir(root.parent)
    (root.parent / "checkpoints").symlink_to(root, target_is_directory=True)
    monkeypatch.delenv("HESSIAN_LENS_RUNS", raising=False)
    assert cli.main(["runs"]) == 0
    assert "tiny-run" in capsys.readouterr().out


def test_show_lists_records_epochs_and_measures(root, capsys):
    run = root / "tiny-run"
    assert cli.main(["show", str(run)]) == 0
    out = capsys.readouterr().out
    stored = ResultStore.reader(run / "analysis.sqlite").records()
    for rec in stored:
        assert f"  {rec.epoch:g}           {rec.checkpoint}" in out
    assert "arrays: H 6x6" in out and "g 6" in out and "summary: compare" in out
    assert "history       3 entries: test_acc, train_loss" in out
    assert "training      recorded by hl.Recorder" in out
    assert "hessian_lens.load_run(" in out
    assert cli.main(["show", str(run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [r["epoch"] for r in info["analyses"][0]["records"]] == [0, 1, 2]
    assert info["analyses"][0]["measures"]["arrays"]["Hinv"] == [6, 6]


def test_show_of_a_folder_that_is_no_run_is_one_line(tmp_path, capsys):
    assert cli.main(["show", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a run folder" in err and "runs DIR" in err


def test_load_run_is_public_and_gives_the_records(root):
    assert {"load_run", "find_runs", "Run"} <= set(hl.__all__)
    run = hl.load_run(root / "tiny-run")
    recs = run.records()
    assert [r.epoch for r in recs] == [0, 1, 2]
    stored = ResultStore.reader(root / "tiny-run" / "analysis.sqlite").records()
    np.testing.assert_array_equal(recs[-1].arrays["H"], stored[-1].arrays["H"])
    assert recs[-1].summary["labels"] == stored[-1].summary["labels"]
    assert run.history[-1]["epoch"] == 2 and run.settings()[0]["partition"] == "canonical"
