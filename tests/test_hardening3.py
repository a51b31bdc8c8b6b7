"""Issue 18: what a file costs once read is bounded, nothing outside the run is written or
deleted, nothing hangs, every failure is one line.

One test (or more) per numbered item of the issue. Memory items run the read in a fresh
interpreter (:func:`bounded`) whose address space is capped a little above what it holds
after its imports, and report the growth of its peak resident memory: the hostile files are
small on disk, and the unfixed code fails such a test quickly (``MemoryError`` under the cap,
or a time limit) instead of allocating gigabytes. benchmarks/attacks.py measures the same
attempts at the issue's sizes (docs/hardening.md).
"""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import tomllib
import zipfile
import zlib
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hessian_lens.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from hessian_lens.registry import build_model
from hessian_lens.store import Record, ResultStore, StoreError
from tests.conftest import REPO, write_tiny_npz

MB = 2**20
LIMIT = 64 * MB  # the file limit the memory tests read under
MARGIN_MB = 200  # what a refusal may cost beyond the file limit (imports excluded)
LENET = {"model": {"name": "lenet5", "kwargs": {}}}

BOUNDED = r"""
import json, resource, sys, time
import torch, hessian_lens.checkpoint, hessian_lens.io.pt2, hessian_lens.data
import hessian_lens.store, hessian_lens.inspection

def vm():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024

cap = vm() + {headroom}
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.monotonic()
try:
    exec({code!r})
    error = None
except BaseException as err:
    error = type(err).__name__ + ": " + str(err)
out = dict(error=error, seconds=time.monotonic() - t0,
           growth_mb=(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
print("@@" + json.dumps(out))
"""


def bounded(code: str, headroom_gib: float = 1.5, timeout: float = 120) -> dict:
    """Run ``code`` in a fresh interpreter capped at its post-import size + ``headroom_gib``.

    Returns ``{"error", "seconds", "growth_mb"}`` (peak RSS growth after the imports); a
    run past ``timeout`` is killed and reported as ``{"error": "timed out"}``.
    """
    script = BOUNDED.format(headroom=int(headroom_gib * 2**30), code=code)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"error": "timed out", "seconds": timeout, "growth_mb": None}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@")]
    assert lines, proc.stderr[-2000:]
    return json.loads(lines[-1][2:])


@contextmanager
def time_limit(seconds: int):
    """Fail the test (instead of hanging) when the block runs longer than ``seconds``."""

    def stop(*_):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def torch_zip(path: Path, pickle_bytes: bytes, compress: bool = False) -> Path:
    """A torch.save-style zip archive whose ``data.pkl`` is ``pickle_bytes``."""
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", mode) as zf:
        zf.writestr("archive/data.pkl", pickle_bytes)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")
    return path


BYTEARRAY_3GIB = b"\x80\x02cbuiltins\nbytearray\n\x8a\x05\x00\x00\x00\xc0\x00\x85R."


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ---------------------------------------------------------------------------- item 1
def test_a_pickle_calling_bytearray_is_refused_before_torch_allocates(tmp_path):
    path = torch_zip(tmp_path / "ba.pt", BYTEARRAY_3GIB)
    assert path.stat().st_size < 1000
    out = bounded(f"hessian_lens.checkpoint.read_checkpoint({str(path)!r}, {LIMIT})")
    assert out["error"] and out["error"].startswith("CheckpointError"), out
    assert "builtins.bytearray" in out["error"], out
    assert out["growth_mb"] < LIMIT / MB + MARGIN_MB, out


def test_a_pt2_whose_sample_inputs_call_bytearray_is_refused(tmp_path):
    from tests.test_export import read_members, save_export, write_members

    src = save_export(nn.Linear(3, 2), torch.randn(2, 3), tmp_path / "ok.pt2", dynamic=False)
    root, members = read_members(src)
    inner = io.BytesIO()
    torch_zip(inner, BYTEARRAY_3GIB)
    members["data/sample_inputs/model.pt"] = inner.getvalue()
    bad = write_members(tmp_path / "ba.pt2", root, members)
    out = bounded(f"hessian_lens.io.pt2.load_exported({str(bad)!r}, {LIMIT})")
    assert out["error"] and out["error"].startswith("CheckpointError"), out
    assert "builtins.bytearray" in out["error"], out
    assert out["growth_mb"] < LIMIT / MB + MARGIN_MB, out


# ---------------------------------------------------------------------------- item 2
def test_a_pickle_building_millions_of_objects_is_stopped_early(tmp_path):
    n = 40_000_000  # 40 MB of EMPTY_DICT opcodes, deflated to ~40 kB; ~3 GB as dicts
    path = torch_zip(tmp_path / "dicts.pt", b"\x80\x02(" + b"}" * n + b"l.", compress=True)
    assert path.stat().st_size < 200_000
    out = bounded(f"hessian_lens.checkpoint.read_checkpoint({str(path)!r}, {LIMIT})", timeout=90)
    assert out["error"] and out["error"].startswith("CheckpointError"), out
    assert "objects" in out["error"], out
    assert out["seconds"] < 20, out
    assert out["growth_mb"] < LIMIT / MB + MARGIN_MB, out


# ---------------------------------------------------------------------------- item 3
def test_a_tensor_expanded_from_one_value_is_refused_at_read_time(tmp_path):
    path = tmp_path / "expanded.pt"
    torch.save({"w": torch.zeros(1).expand(30000, 30000)}, path)
    assert path.stat().st_size < 5000
    with pytest.raises(CheckpointError, match="expanded"):
        read_checkpoint(path)


def test_inspect_page_checks_memory_before_values(tmp_path, monkeypatch):
    """The page used to check for NaNs (allocating a mask of the expanded tensor) first."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("HESSIAN_LENS_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "nan.pt"
    torch.save({"w": torch.full((1,), float("nan")).expand(8192, 8192)}, path)  # 256 MB
    at = AppTest.from_file(str(REPO / "views/Inspect_checkpoint.py"), default_timeout=180)
    at.run()
    at.file_uploader[0].set_value(("nan.pt", path.read_bytes(), "application/octet-stream"))
    at.run()
    errors = [str(e.value) for e in at.error]
    assert any("expanded" in e for e in errors), errors


# ---------------------------------------------------------------------------- item 4
def test_a_store_listing_100k_labels_does_not_lift_the_array_limit(tmp_path):
    store = ResultStore(tmp_path / "analysis.sqlite")
    labels = [f"g{i}" for i in range(100_000)]
    store.put(Record("ab", {"k": 1}, "e.pt", 1, {"labels": labels}, {"H": np.eye(2)}))
    buf = io.BytesIO()
    np.savez_compressed(buf, H=np.zeros((2048, 2048)))  # 32 MB once inflated, 30 kB stored
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE results SET arrays=?", (buf.getvalue(),))
    db.close()
    with pytest.raises(StoreError, match="groups"):
        store.records()


def test_an_analysis_never_stores_more_groups_than_a_store_reads_back(monkeypatch):
    import hessian_lens.analyze as analyze

    monkeypatch.setattr(
        analyze, "MAX_GROUPS", 4, raising=False
    )  # LeNet-5's canonical partition: 10
    data = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))]
    with pytest.raises(ValueError, match="S = 10 groups"):
        analyze.analyze_model(build_model("lenet5"), data, analyze.AnalysisSettings(samples=4))


def zeros_member(zf: zipfile.ZipFile, name: str, shape: tuple, dtype: str) -> None:
    """An .npy member of zeros written in chunks (deflated: a few hundred kB per 512 MB)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": dtype, "fortran_order": False, "shape": shape}
    )
    left = int(np.prod(shape)) * np.dtype(dtype).itemsize
    with zf.open(name, "w", force_zip64=True) as f:
        f.write(header.getvalue())
        block = bytes(1 << 24)
        while left > 0:
            f.write(block[: min(left, len(block))])
            left -= len(block)


def store_with_inflating_h(path: Path) -> Path:
    store = ResultStore(path)
    labels = [f"g{i}" for i in range(100_000)]
    store.put(Record("ab", {"k": 1}, "e.pt", 1, {"labels": labels}, {"H": np.eye(2)}))
    blob = io.BytesIO()
    with zipfile.ZipFile(blob, "w", zipfile.ZIP_DEFLATED) as zf:
        zeros_member(zf, "H.npy", (2**26,), "<f8")  # 512 MB once inflated
    with sqlite3.connect(path) as db:
        db.execute("UPDATE results SET arrays=?", (blob.getvalue(),))
    db.close()
    return path


def npz_declaring(path: Path, images: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zeros_member(zf, "x.npy", (images, 32, 32, 3), "|u1")
        zeros_member(zf, "y.npy", (images,), "<i8")
    return path


@pytest.mark.parametrize("case", ["expanded", "store", "npz", "graph"])
def test_memory_items_grow_the_process_by_less_than_the_limit_plus_a_margin(tmp_path, case):
    """Items 3, 4, 6, 7 measured like items 1, 2, 5: each read refused, RSS growth bounded."""
    if case == "expanded":
        torch.save({"w": torch.zeros(1).expand(30000, 30000)}, tmp_path / "e.pt")  # 3.4 GB
        code = f"hessian_lens.checkpoint.read_checkpoint({str(tmp_path / 'e.pt')!r}, {LIMIT})"
    elif case == "store":
        path = store_with_inflating_h(tmp_path / "analysis.sqlite")
        code = f"hessian_lens.store.ResultStore.reader({str(path)!r}).records()"
    elif case == "npz":
        path = npz_declaring(tmp_path / "bomb.npz", 2**29 // 3072)  # 512 MB of images
        code = (
            f"import os; os.environ['HESSIAN_LENS_MAX_DATA_MB'] = '{LIMIT // MB}'\n"
            f"hessian_lens.data.load_npz({str(path)!r})"
        )
    else:

        def huge(program):
            for node in program["graph_module"]["graph"]["nodes"]:
                if node["target"] == "torch.ops.aten.ones.default":
                    node["inputs"][0]["arg"]["as_ints"] = [30000, 30000]

        path = edited_export(tmp_path, huge, "ones.pt2")
        code = (
            f"m, _ = hessian_lens.io.pt2.load_exported({str(path)!r}, {LIMIT})\n"
            "m(torch.zeros(2, 3, 4))"
        )
    out = bounded(code)
    assert out["error"] and out["error"].split(":")[0] in ("CheckpointError", "StoreError",
                                                           "DataError"), out  # fmt: skip
    assert out["growth_mb"] < LIMIT / MB + MARGIN_MB, out


# ---------------------------------------------------------------------------- item 5
def test_a_pt2_program_padded_with_millions_of_empty_objects_is_refused(tmp_path):
    from tests.test_export import PROGRAM, read_members, save_export

    src = save_export(nn.Linear(3, 2), torch.randn(2, 3), tmp_path / "ok.pt2", dynamic=False)
    root, members = read_members(src)
    text = members[PROGRAM].decode()
    members[PROGRAM] = (text[:-1] + ', "padding": [' + "{}," * 3_000_000 + "{}]}").encode()
    with zipfile.ZipFile(tmp_path / "pad.pt2", "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(f"{root}/{name}", data)
    assert (tmp_path / "pad.pt2").stat().st_size < 200_000
    out = bounded(f"hessian_lens.io.pt2.load_exported({str(tmp_path / 'pad.pt2')!r}, {LIMIT})")
    assert out["error"] and out["error"].startswith("CheckpointError"), out
    assert "objects" in out["error"], out
    assert out["growth_mb"] < LIMIT / MB + MARGIN_MB, out


def test_a_safetensors_header_of_millions_of_empty_objects_is_refused(tmp_path):
    header = b'{"pad": [' + b"{}," * 3_000_000 + b"{}]}"
    path = tmp_path / "pad.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    out = bounded(f"hessian_lens.checkpoint.read_checkpoint({str(path)!r}, {LIMIT})")
    assert out["error"] and out["error"].startswith("CheckpointError"), out
    assert "objects" in out["error"], out
    assert out["growth_mb"] < 9 / 1 + MARGIN_MB, out  # a 9 MB file


# ---------------------------------------------------------------------------- item 6
def test_analyze_reads_run_checkpoints_under_the_checkpoint_limit(tmp_path, monkeypatch):
    from hessian_lens.analyze import AnalysisSettings, analyze_run

    run = tmp_path / "run"
    save_checkpoint(run / "epoch_0001.pt", build_model("lenet5"), {**LENET, "epoch": 1})
    npz = write_tiny_npz(tmp_path / "tiny.npz")
    monkeypatch.setenv("HESSIAN_LENS_MAX_CHECKPOINT_MB", "0.1")  # LeNet-5: 0.25 MB
    with pytest.raises(CheckpointError, match="over the 0 MB limit|limit"):
        analyze_run(run, AnalysisSettings(samples=32, batch_size=32), str(npz), progress=False)
    assert not (run / "analysis.sqlite").exists()


def test_npz_members_are_checked_against_the_data_limit_before_inflating(tmp_path, monkeypatch):
    from hessian_lens.data import DataError, load_npz

    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, x=np.zeros((2048, 32, 32, 3), np.uint8), y=np.zeros(2048, np.int64))
    assert path.stat().st_size < 100_000  # 6 MB of images once inflated
    monkeypatch.setenv("HESSIAN_LENS_MAX_DATA_MB", "1")
    with pytest.raises(DataError, match="HESSIAN_LENS_MAX_DATA_MB"):
        load_npz(path)


def png_header(width: int, height: int, idat: bytes = b"") -> bytes:
    """A greyscale PNG declaring ``width x height`` pixels, with ``idat`` as its data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [12_000, 14_200])  # 144 and 200 Mpx
def test_huge_images_are_refused_from_their_header(tmp_path, side):
    from hessian_lens.data import DataError, load_image_folder

    folder = tmp_path / "imgs" / "cat"
    folder.mkdir(parents=True)
    (folder / "big.png").write_bytes(png_header(side, side, zlib.compress(b"\0" * 1000)))
    with pytest.raises(DataError, match="pixels"):
        load_image_folder(tmp_path / "imgs")


# ---------------------------------------------------------------------------- item 7
class AllocatesAtRunTime(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1)) + torch.ones(4, 4, device=x.device).sum() * 0


def edited_export(tmp_path: Path, edit: Callable[[dict], None], name: str) -> Path:
    from tests.test_export import PROGRAM, edit_json, read_members, save_export, write_members

    torch.manual_seed(0)
    src = save_export(AllocatesAtRunTime(), torch.randn(2, 3, 4), tmp_path / "src.pt2", True)
    root, members = read_members(src)
    edit_json(members, PROGRAM, edit)
    return write_members(tmp_path / name, root, members)


def test_a_pt2_graph_allocating_gigabytes_is_refused_before_running(tmp_path):
    from hessian_lens.io.pt2 import load_exported

    def huge(program):
        for node in program["graph_module"]["graph"]["nodes"]:
            if node["target"] == "torch.ops.aten.ones.default":
                node["inputs"][0]["arg"]["as_ints"] = [30000, 30000]

    path = edited_export(tmp_path, huge, "ones.pt2")
    with pytest.raises(CheckpointError, match="aten.ones"):
        load_exported(path)


def test_a_pt2_graph_of_plain_allocations_still_loads(tmp_path):
    from hessian_lens.io.pt2 import load_exported

    module, _ = load_exported(edited_export(tmp_path, lambda p: None, "fine.pt2"))
    assert module(torch.ones(5, 3, 4)).shape == (5, 3)


# ---------------------------------------------------------------------------- item 8
def test_a_pt2_with_a_huge_symbolic_max_is_refused_quickly(tmp_path):
    from hessian_lens.io.pt2 import load_exported

    terms = ", ".join(f"{i}*s77 + {40000 - i * i}" for i in range(1, 201))

    def slow(program):  # sympy compares every pair of arguments: minutes
        sizes = program["graph_module"]["graph"]["tensor_values"]["add"]["sizes"]
        sizes[0]["as_expr"]["expr_str"] = f"Max({terms})"

    path = edited_export(tmp_path, slow, "max.pt2")
    with time_limit(30), pytest.raises(CheckpointError, match="symbolic size"):
        load_exported(path)


# ---------------------------------------------------------------------------- item 9
def test_the_servers_upload_limit_is_the_apps():
    from hessian_lens.settings import DEFAULT_UPLOAD_MB

    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] <= DEFAULT_UPLOAD_MB


def test_inspect_page_caps_the_app_limit_at_the_servers(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("HESSIAN_LENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HESSIAN_LENS_MAX_UPLOAD_MB", "5000")
    at = AppTest.from_file(str(REPO / "views/Inspect_checkpoint.py"), default_timeout=180)
    at.run()
    assert not at.exception
    shown = [str(w.value) for w in at.warning]
    assert any("server.maxUploadSize" in w for w in shown), shown


# ---------------------------------------------------------------------------- item 10
def test_analyze_never_writes_a_store_symlinked_outside_the_run(tmp_path):
    from hessian_lens.analyze import AnalysisSettings, analyze_run

    outside = tmp_path / "outside"
    outside.mkdir()
    sqlite3.connect(outside / "victim.sqlite").close()  # an empty SQLite file
    (outside / "notes.txt").write_text("keep me")
    run = tmp_path / "run"
    save_checkpoint(run / "epoch_0001.pt", build_model("lenet5"), {**LENET, "epoch": 1})
    (run / "analysis.sqlite").symlink_to(outside / "victim.sqlite")
    npz = write_tiny_npz(tmp_path / "tiny.npz")
    before = listing(outside)
    with pytest.raises(StoreError, match="symbolic link"):
        analyze_run(run, AnalysisSettings(samples=32, batch_size=32), str(npz), progress=False)
    assert listing(outside) == before


def test_checkpoints_linked_from_outside_the_run_are_not_read(tmp_path):
    from hessian_lens.runfolder import list_checkpoints

    outside = tmp_path / "outside"
    save_checkpoint(outside / "secret.pt", build_model("lenet5"), LENET)
    run = tmp_path / "run"
    save_checkpoint(run / "epoch_0001.pt", build_model("lenet5"), LENET)
    (run / "epoch_0002.pt").symlink_to(outside / "secret.pt")
    (run / "epoch_0003.pt").symlink_to(run / "epoch_0001.pt")  # inside: fine
    assert [p.name for p in list_checkpoints(run)] == ["epoch_0001.pt", "epoch_0003.pt"]


# ---------------------------------------------------------------------------- item 11
def test_eviction_never_deletes_files_the_cache_did_not_write(tmp_path):
    from hessian_lens import uploads

    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("a.txt", "0123456789abcdef.pt", "b.pt"):
        (outside / name).write_bytes(b"x" * 100_000)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / uploads.UPLOADS).symlink_to(outside)
    before = listing(outside)
    with pytest.raises(CheckpointError, match="symbolic link"):
        uploads.save_upload(cache, "m.pt", b"y" * 100_000, 10 * MB)
    uploads.evict(cache, 1000)
    assert listing(outside) == before


def test_eviction_deletes_only_what_the_index_lists(tmp_path):
    from hessian_lens import uploads

    cache = tmp_path / "cache"
    mine = [uploads.save_upload(cache, f"m{i}.pt", bytes([i]) * 50_000, MB)[0] for i in range(3)]
    stranger = cache / uploads.UPLOADS / "fedcba9876543210.pt"
    stranger.write_bytes(b"z" * 500_000)  # not written by the cache
    gone = uploads.evict(cache, 60_000, keep=mine[-1])
    assert stranger.exists() and mine[-1].exists()
    assert sorted(gone) == sorted(mine[:2])


# ---------------------------------------------------------------------------- item 12
HANG = """
import sqlite3, sys
from hessian_lens.store import ResultStore, StoreError
path = sys.argv[1]
db = sqlite3.connect(path)
db.executescript('''
CREATE VIEW forever AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)
    SELECT max(x) FROM c;
CREATE TRIGGER slow AFTER INSERT ON claims BEGIN SELECT * FROM forever; END;
''')
db.close()
try:
    ResultStore(path).claim("ab", {"k": 1}, "me", 60.0)
    print("claimed")
except StoreError as err:
    print("refused:", err)
"""


def test_a_store_with_a_trigger_or_view_is_refused_not_run(tmp_path):
    path = tmp_path / "analysis.sqlite"
    ResultStore(path)
    proc = _run_killed(HANG, str(path))
    assert proc.startswith("refused:") and "trigger" in proc, proc


def _run_killed(code: str, *args: str, timeout: float = 30) -> str:
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout} s"
    return (proc.stdout + proc.stderr).strip()


SLOW_QUERY = """
import sys
import hessian_lens.store as store
store.QUERY_SECONDS = 1.0
s = store.ResultStore(sys.argv[1])
try:
    with s._connect() as db:
        db.execute(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c"
        ).fetchone()
    print("finished")
except store.StoreError as err:
    print("refused:", err)
"""


def test_every_store_query_has_a_time_bound(tmp_path):
    path = tmp_path / "analysis.sqlite"
    ResultStore(path)
    out = _run_killed(SLOW_QUERY, str(path))
    assert out.startswith("refused:") and "longer than" in out, out


# ---------------------------------------------------------------------------- item 13
def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hessian_lens", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), "HOME": str(cwd)},
    )


def one_line_exit_2(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


class SmallCifarNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 5, stride=4)
        self.fc = nn.Linear(4 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_analyze_reads_a_pt2_checkpoint_of_a_run(tmp_path):
    from hessian_lens.analyze import AnalysisSettings, analyze_run
    from tests.test_export import save_export

    run = tmp_path / "run"
    run.mkdir()
    torch.manual_seed(0)
    save_export(SmallCifarNet(), torch.randn(2, 3, 32, 32), run / "epoch_0001.pt2", True)
    npz = write_tiny_npz(tmp_path / "tiny.npz")
    done = analyze_run(run, AnalysisSettings(samples=32, batch_size=16), str(npz), progress=False)
    assert done["computed"] == 1
    assert len(ResultStore.reader(run / "analysis.sqlite")) == 1


def test_analyze_with_a_nan_lease_is_one_line(tmp_path):
    run = tmp_path / "run"
    save_checkpoint(run / "epoch_0001.pt", build_model("lenet5"), {**LENET, "epoch": 1})
    npz = write_tiny_npz(tmp_path / "tiny.npz")
    args = ["--samples", "32", "--lease-seconds", "nan", "--no-progress", "--device", "cpu"]
    proc = cli("analyze", str(run), "--data-root", str(npz), *args, cwd=tmp_path)
    assert "--lease-seconds" in one_line_exit_2(proc)
    assert not (run / "analysis.sqlite").exists()


def test_safetensors_data_with_bfloat16_targets_is_read(tmp_path):
    from safetensors.torch import save_file

    from hessian_lens.data import load_safetensors_data

    y = torch.arange(8) % 3
    path = tmp_path / "d.safetensors"
    save_file({"inputs": torch.rand(8, 3, 4, 4), "targets": y.to(torch.bfloat16)}, path)
    data = load_safetensors_data(path)
    assert torch.equal(data.y, y)


def test_analyze_of_all_zero_images_is_one_line_and_leaves_no_store(tmp_path):
    run = tmp_path / "run"
    lenet = {"name": "lenet5", "kwargs": {"in_channels": 1}}
    torch.manual_seed(0)
    save_checkpoint(run / "epoch_0001.pt", build_model("lenet5", in_channels=1),
                    {"model": lenet, "epoch": 1})  # fmt: skip
    n, y = 40, np.random.default_rng(0).integers(0, 10, 40)
    zeros = np.zeros((n, 32, 32, 1), np.uint8)  # normalised with their own statistics: 0
    np.savez(tmp_path / "zeros.npz", x_train=zeros, y_train=y, x_test=zeros, y_test=y)
    args = ["--samples", "40", "--batch-size", "20", "--no-progress", "--device", "cpu"]
    proc = cli("analyze", str(run), "--data-root", str(tmp_path / "zeros.npz"), *args, cwd=tmp_path)
    line = one_line_exit_2(proc)
    assert "constant" in line, line  # (they normalised to NaN: std 1e-6 rounded to 0)
    assert sorted(p.name for p in run.iterdir()) == ["epoch_0001.pt"]


# ---------------------------------------------------------------------------- item 14
INTERRUPT = """
import os, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA cache_size = 1")  # spill: the file itself is changed mid-transaction
db.execute("BEGIN IMMEDIATE")
db.execute("UPDATE results SET checkpoint = 'half-written'")
for i in range(300):
    db.execute("INSERT INTO claims VALUES (?, 'k', 'me', 1)", (str(i) * 50,))
os._exit(0)  # killed mid-transaction: a hot journal stays behind
"""


def test_a_hot_journal_is_rolled_back_by_a_writer_and_explained_to_a_viewer(tmp_path):
    path = tmp_path / "analysis.sqlite"
    ResultStore(path).put(Record("ab", {"k": 1}, "e.pt", 1, {"labels": ["a"]}, {"H": np.eye(1)}))
    subprocess.run([sys.executable, "-c", INTERRUPT, str(path)], check=True, timeout=60)
    assert Path(f"{path}-journal").stat().st_size > 0
    with pytest.raises(StoreError, match="interrupted write; run analyze"):
        ResultStore.reader(path).records()
    store = ResultStore(path)  # a writer: SQLite rolls the journal back
    assert [r.checkpoint for r in store.records()] == ["e.pt"]
    assert store.claims() == []
    assert [r.checkpoint for r in ResultStore.reader(path).records()] == ["e.pt"]


# ---------------------------------------------------------------------------- item 15
def test_torch_logs_nothing_while_a_pt2_is_validated(tmp_path, capfd):
    from hessian_lens.io.pt2 import load_exported

    def unranged(program):
        sizes = program["graph_module"]["graph"]["tensor_values"]["add"]["sizes"]
        sizes[0]["as_expr"]["expr_str"] = "u5"

    path = edited_export(tmp_path, unranged, "sym.pt2")
    capfd.readouterr()
    with pytest.raises(CheckpointError):
        load_exported(path)
    captured = capfd.readouterr()
    assert captured.err.strip() == "" and captured.out.strip() == "", captured.err[-2000:]


# ---------------------------------------------------------------------------- item 16
def unescaped_markup(text: str) -> list[str]:
    """Markdown an element would interpret: images, links, HTML, emphasis from a file."""
    import re

    return re.findall(r"(?<!\\)!(?<!\\)\[|(?<!\\)\]\(|(?<!\\)<[a-z]|(?<!\\):[a-z_]+:", text)


def test_home_page_shows_run_json_fields_as_plain_text(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    image = "![x](http://127.0.0.1:9/pixel.png)"
    run = tmp_path / "runs" / "evil"
    run.mkdir(parents=True)
    (run / "run.json").write_text(
        json.dumps(
            {
                "name": f"evil {image}",
                "model": {"name": f"m{image}", "kwargs": {"k": image}},
                "init": image,
                "data": {"name": image},
                "optimizer": {"name": image, "lr": image},
                "batch_size": image,
                "history": [{"epoch": 1, "train_loss": 1.0, "note": image}],
            }
        )
    )
    monkeypatch.setenv("HESSIAN_LENS_RUNS", str(run.parent))
    monkeypatch.setenv("HESSIAN_LENS_CACHE", str(tmp_path / "cache"))
    from hessian_lens.ui import home

    monkeypatch.setattr(home, "PAGE_SIZE", 100)  # the shipped runs fill the first page
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=180).run()
    assert not at.exception
    shown = [
        str(e.value)
        for kind in ("markdown", "subheader", "caption", "warning", "info", "error", "success")
        for e in at.get(kind)
    ]
    from_file = [s for s in shown if "pixel" in s]  # the page's own text has real links
    assert any("evil" in s for s in from_file), shown
    bad = [s for s in from_file if unescaped_markup(s)]
    assert not bad, bad
