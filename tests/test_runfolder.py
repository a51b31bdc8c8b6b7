"""The run folder's one owner: names, listing, defensive manifest and log reading."""

from __future__ import annotations

import json
import os
import sys

import pytest

from hessian_lens import runfolder
from hessian_lens.runfolder import (
    checkpoint_name,
    clean_history,
    epoch_of,
    is_run,
    list_checkpoints,
    read_manifest,
    read_optimizer_log,
    thin,
)


def test_names_round_trip_whole_and_fractional_epochs():
    for epoch in (0, 3, 21, 0.1, 0.25, 0.5, 5.75):
        assert epoch_of(checkpoint_name(epoch)) == pytest.approx(epoch)
    assert checkpoint_name(0.25, ".safetensors") == "epoch_0000.250.safetensors"
    assert epoch_of("epoch_0007.pth") == 7 and epoch_of("model_12.pt") == 12
    assert epoch_of("final.pt2") is None
    assert epoch_of("resnet18.pt") is None and epoch_of("vgg11.safetensors") is None
    assert epoch_of("ckpt-7.pt") == 7 and epoch_of("epoch12.pt") == 12
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            checkpoint_name(bad)


def test_listing_takes_every_suffix_in_epoch_order_and_skips_what_is_not_a_file(tmp_path):
    for name in (
        "epoch_0002.pt",
        "epoch_0000.250.pt",
        "epoch_0001.safetensors",
        "epoch_0000.pt",
        "exported.pt2",
        "resume.pt",
        "notes.txt",
    ):
        (tmp_path / name).write_bytes(b"x")
    os.mkfifo(tmp_path / "epoch_0009.pt")
    (tmp_path / "epoch_0010.pt").symlink_to("/dev/zero")
    (tmp_path / "epoch_0011.pt").mkdir()
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == [
        "epoch_0000.pt",
        "epoch_0000.250.pt",
        "epoch_0001.safetensors",
        "epoch_0002.pt",
        "exported.pt2",
    ]
    assert is_run(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not is_run(empty) and not is_run(tmp_path / "missing")
    assert list_checkpoints(tmp_path / "missing") == []


@pytest.mark.parametrize(
    "content,warning",
    [
        ("{not json", "unreadable"),
        ("[1, 2]", "holds a list"),
        (json.dumps({"name": 5}), "'name' is a int"),
        (json.dumps({"model": ["lenet5"]}), "'model' is a list"),
        (json.dumps({"history": [{"loss": 1}, {"epoch": 1, "loss": 2}]}), "1 history entries"),
        ("[" * 100_000 + "]" * 100_000, "nested"),
    ],
)
def test_bad_manifests_are_warnings_with_safe_defaults(tmp_path, content, warning):
    (tmp_path / "run.json").write_text(content)
    m = read_manifest(tmp_path)
    assert any(warning in w for w in m.warnings), m.warnings
    assert m.model == {"name": "?", "kwargs": {}} or m.model["name"] == "lenet5"
    assert all(isinstance(h["epoch"], (int, float)) for h in m.history)
    assert m.name is None or isinstance(m.name, str)


def test_clean_history_keeps_numbers_and_sorts():
    raw = [
        {"epoch": 2, "a": 1.0, "b": [1]},
        {"epoch": "x"},
        {"epoch": 1e30},
        {"epoch": 0.5},
        "junk",
        {"epoch": float("nan")},
    ]
    assert clean_history(raw) == [{"epoch": 0.5}, {"epoch": 2, "a": 1.0}]


def test_optimizer_log_is_validated_and_thinned(tmp_path):
    entries = [{"step": i, "loss": 1.0 / (i + 1)} for i in range(10_000)]
    entries += [{"step": i, "eta": [0.1, 0.2]} for i in range(0, 10_000, 10)]
    entries += ["junk", {"step": "x"}, {"no": "step"}]
    (tmp_path / runfolder.OPTIMIZER_LOG).write_text(
        json.dumps({"labels": ["w", "b"], "entries": entries})
    )
    log, warnings = read_optimizer_log(tmp_path, max_entries=500)
    assert warnings == ["optimizer_log.json: 3 malformed entries skipped"]
    assert len([e for e in log["entries"] if "loss" in e]) == 500
    assert len([e for e in log["entries"] if "eta" in e]) == 500
    assert log["entries"][-1]["step"] == 9999 and log["total_entries"] == 11_000
    (tmp_path / runfolder.OPTIMIZER_LOG).write_text(json.dumps({"entries": "nope"}))
    assert read_optimizer_log(tmp_path)[0] is None
    log, warnings = read_optimizer_log(tmp_path, max_bytes=10)
    assert log is None and "over the" in warnings[0]


def test_thin_keeps_ends():
    assert thin(list(range(100)), 5) == [0, 25, 50, 74, 99]
    assert thin([1, 2], 5) == [1, 2]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_writer_is_gone_when_its_process_is_or_another_took_its_id():
    me = runfolder.writer_entry()
    assert me["pid"] == os.getpid() and not runfolder.writer_gone({"writer": me})
    assert runfolder.writer_gone({"writer": {**me, "start": me["start"] + 1}})  # id reused
    assert runfolder.writer_gone({"writer": {**me, "boot": "another boot"}})  # restarted
    assert not runfolder.writer_gone({"writer": {**me, "host": "elsewhere"}})  # cannot know
    assert not runfolder.writer_gone({}) and not runfolder.writer_gone({"writer": "junk"})
