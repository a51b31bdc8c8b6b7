"""Bounded, atomic file I/O: regular files only, size and depth limits, atomic writes."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from hessian_lens.io.files import (
    MAX_JSON_DEPTH,
    UnsafeFileError,
    atomic_write,
    file_sha256,
    is_regular_file,
    json_text_depth,
    loads_bounded,
    object_depth,
    read_json,
    regular_file,
    write_json,
)


def test_atomic_write_replaces_whole_and_refuses_a_file_in_the_way(tmp_path):
    target = tmp_path / "a" / "b.json"
    write_json(target, {"x": 1})
    assert json.loads(target.read_text()) == {"x": 1}

    def fail(tmp):
        Path(tmp).write_text("half written")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(target, fail)
    assert json.loads(target.read_text()) == {"x": 1}  # the old file is intact
    assert [p.name for p in target.parent.iterdir()] == ["b.json"]  # no temporary left
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UnsafeFileError, match="is a file, not a folder"):
        write_json(blocker / "under" / "run.json", {})
    assert blocker.read_text() == "x"


def test_write_json_refuses_nan():
    with pytest.raises(ValueError):
        write_json("/nonexistent-never-written.json", {"x": float("nan")})


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "epoch_0001.pt"
    os.mkfifo(fifo)
    done = threading.Event()

    def probe():
        assert not is_regular_file(fifo)
        with pytest.raises(UnsafeFileError, match="not a regular file"):
            file_sha256(fifo)
        done.set()

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(5)
    assert done.is_set(), "reading a FIFO blocked"
    link = tmp_path / "zero.pt"
    link.symlink_to("/dev/zero")
    with pytest.raises(UnsafeFileError, match="not a regular file"):
        regular_file(link)


def test_json_depth_and_size_limits(tmp_path):
    deep = "[" * 200_000 + "]" * 200_000
    assert json_text_depth(deep) == 200_000
    with pytest.raises(UnsafeFileError, match="nested 200000 levels deep"):
        loads_bounded(deep)
    assert json_text_depth('{"a": "[[[[[", "b": [[1]]}') == 3  # brackets in strings ignored
    ok = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert loads_bounded(ok) is not None
    path = tmp_path / "big.json"
    path.write_text(json.dumps(list(range(1000))))
    with pytest.raises(UnsafeFileError, match="over the"):
        read_json(path, max_bytes=100)
    assert len(read_json(path)) == 1000
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(UnsafeFileError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")


def test_object_depth_stops_early_on_shared_nesting():
    x = [1]
    for _ in range(12):
        x = [x] * 10  # 10**12 leaves, shared: never expanded
    assert object_depth(x, limit=5) == 6
    assert object_depth({"a": [1, {"b": 2}]}) == 3


@pytest.mark.parametrize("recreate", [False, True])
def test_atomic_writes_get_the_usual_permissions(tmp_path, recreate):
    """Readable by the team as any file the user creates (umask), even when the writer
    replaces the temporary file with a private one (safetensors' save_file does)."""

    def write(tmp: str) -> None:
        if recreate:
            os.unlink(tmp)
            os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600))
        Path(tmp).write_text("x")

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "f.txt", write)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644
