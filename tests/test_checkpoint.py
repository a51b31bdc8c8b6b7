"""Safe checkpoints: round trips, atomic writes and one precise message per bad input."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import hessian_lens as hl
from hessian_lens.checkpoint import (
    CheckpointError,
    atomic_write,
    build_from_state,
    file_sha256,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from hessian_lens.registry import build_model

META = {"model": {"name": "lenet5", "kwargs": {"activation": "tanh"}}, "epoch": 3}


def lenet():
    torch.manual_seed(0)
    return build_model("lenet5")


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors"])
def test_round_trip(tmp_path, suffix):
    model = lenet()
    path = tmp_path / f"epoch_0003{suffix}"
    save_checkpoint(path, model, META)
    loaded, meta = load_checkpoint(path)
    assert meta["epoch"] == 3 and meta["model"] == META["model"]
    assert meta["format"] == "hessian-lens-checkpoint/1"
    for (k, a), (k2, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a, b)
    assert not loaded.training


def test_bare_state_dicts(tmp_path):
    model = lenet()
    pt, st = tmp_path / "bare.pt", tmp_path / "bare.safetensors"
    torch.save(model.state_dict(), pt)
    save_file(model.state_dict(), str(st))
    for path in (pt, st):
        loaded, meta = load_checkpoint(path)  # recognised: LeNet-5 defaults
        assert meta["model"]["name"] == "lenet5"
        assert torch.equal(loaded.fc3.bias, model.fc3.bias)
    mlp = build_model("mlp", sizes=[3072, 20, 10])
    torch.save({"model_state_dict": mlp.state_dict()}, tmp_path / "mlp.pt")
    with pytest.raises(CheckpointError, match="bare state_dict.*name it"):
        load_checkpoint(tmp_path / "mlp.pt")
    loaded, meta = load_checkpoint(
        tmp_path / "mlp.pt", architecture="mlp", model_kwargs={"sizes": [3072, 20, 10]}
    )
    assert meta["model"] == {"name": "mlp", "kwargs": {"sizes": [3072, 20, 10]}}


def test_pickled_code_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"state_dict": Evil()}, protocol=2))
    with pytest.raises(CheckpointError, match="pickled Python objects.*never runs code"):
        load_checkpoint(path)
    zipped = tmp_path / "evil_zip.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, zipped)
    with zipfile.ZipFile(zipped) as z:
        names = z.namelist()
        contents = {n: z.read(n) for n in names}
    pkl = next(n for n in names if n.endswith("data.pkl"))
    contents[pkl] = pickle.dumps(Evil(), protocol=2)
    with zipfile.ZipFile(zipped, "w") as z:
        for n, data in contents.items():
            z.writestr(n, data)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_checkpoint(zipped)
    assert not marker.exists()


def test_corrupt_and_truncated_files(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, lenet(), META)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(truncated)
    st = tmp_path / "good.safetensors"
    save_checkpoint(st, lenet(), META)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(st.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated safetensors"):
        load_checkpoint(cut)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"PK\x03\x04" + os.urandom(2000))
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(garbage)


def test_not_a_checkpoint(tmp_path):
    png = tmp_path / "picture.pt"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(CheckpointError, match="not a checkpoint: neither a PyTorch file"):
        load_checkpoint(png)
    text = tmp_path / "notes.pth"
    text.write_text("just some text")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(text)
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(CheckpointError, match="found a list"):
        load_checkpoint(listed)
    mixed = tmp_path / "mixed.pt"
    torch.save({"state_dict": {"w": torch.zeros(1), "step": 3}}, mixed)
    with pytest.raises(CheckpointError, match=r"\['step'\] are not tensors"):
        load_checkpoint(mixed)


def test_unknown_architecture(tmp_path):
    path = tmp_path / "x.pt"
    save_checkpoint(path, lenet(), {"model": {"name": "resnet9", "kwargs": {}}})
    with pytest.raises(CheckpointError, match="unknown architecture 'resnet9'"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="bad arguments"):
        load_checkpoint(path, architecture="lenet5", model_kwargs={"layers": 3})


def test_missing_and_extra_keys(tmp_path):
    state = lenet().state_dict()
    state.pop("fc3.bias")
    state["fc4.weight"] = torch.zeros(2, 2)
    path = tmp_path / "keys.pt"
    torch.save({"state_dict": state, "meta": META}, path)
    with pytest.raises(
        CheckpointError,
        match=r"missing keys \['fc3.bias'\].*unexpected keys "
        r"\['fc4.weight'\]",
    ):
        load_checkpoint(path)


def test_wrong_shapes(tmp_path):
    path = tmp_path / "shapes.pt"
    save_checkpoint(path, build_model("lenet5", num_classes=5), META)
    with pytest.raises(
        CheckpointError,
        match=r"shape mismatch for fc3.weight: file \(5, 84\) "
        r"vs model \(10, 84\)",
    ):
        load_checkpoint(path)


def test_non_finite_weights(tmp_path):
    model = lenet()
    with torch.no_grad():
        model.conv1.weight[0, 0, 0, :3] = float("nan")
        model.fc1.bias[0] = float("inf")
    path = tmp_path / "nan.safetensors"
    save_checkpoint(path, model, META)
    with pytest.raises(
        CheckpointError,
        match=r"conv1.weight \(3 NaN, 0 inf\), fc1.bias "
        r"\(0 NaN, 1 inf\)",
    ):
        load_checkpoint(path)


def test_size_limit_and_missing_file(tmp_path):
    path = tmp_path / "big.pt"
    save_checkpoint(path, lenet(), META)
    with pytest.raises(CheckpointError, match="over the 0 MB limit"):
        read_checkpoint(path, max_bytes=1000)
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "absent.pt")


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "run.json"
    path.write_text("old")

    def failing(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, failing)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
    atomic_write(path, lambda tmp: Path(tmp).write_text("new"))
    assert path.read_text() == "new"
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)


def test_sha256_identifies_content(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    save_checkpoint(a, lenet(), META)
    b.write_bytes(a.read_bytes())
    assert file_sha256(a) == file_sha256(b) and len(file_sha256(a)) == 64


def test_loaded_model_runs_the_engine(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(
        path,
        build_model("mlp", sizes=[3072, 8, 10]),
        {"model": {"name": "mlp", "kwargs": {"sizes": [3072, 8, 10]}}},
    )
    model, _ = load_checkpoint(path)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    assert hl.pseudo_hessian(model, torch.nn.functional.cross_entropy, (x, y)).H.shape == (4, 4)


# ---------------------------------------------------------------------------- hardening
REPO = Path(__file__).resolve().parents[1]
PROBE = """
import json, sys, time
from hessian_lens.checkpoint import CheckpointError, load_checkpoint, read_checkpoint


def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


load_checkpoint(sys.argv[1])  # lazy imports and first allocations before the baseline
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current resident size
before = status("VmRSS:")
start = time.perf_counter()
try:
    {call}
    outcome = "accepted"
except CheckpointError as err:
    outcome = str(err)
seconds = time.perf_counter() - start
extra = status("VmHWM:") - before
print(json.dumps({{"extra_mb": extra, "seconds": seconds, "outcome": outcome}}))
"""


def probe(call: str, tmp_path: Path) -> dict:
    """Run ``call`` in a fresh interpreter: its peak extra resident memory (MB, Linux's
    VmHWM reset just before), time and outcome."""
    warm = tmp_path / "warm.pt"
    save_checkpoint(warm, lenet(), META)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(call=call), str(warm)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def memo_bomb(levels: int = 12) -> list:
    """Small in memory (each level shares one list), 10^levels strings once dumped."""
    bomb: object = "x" * 100
    for _ in range(levels):
        bomb = [bomb] * 10
    return bomb


def deep_meta_checkpoint(path: Path, depth: int, container: str) -> Path:
    """A .pt whose meta is a list or dict nested ``depth`` deep, built by pickle opcodes
    (no recursion: the weights-only unpickler builds it, only a recursive walk would fail)."""
    torch.save({"state_dict": lenet().state_dict(), "meta": "PLACEHOLDER-META"}, path)
    with zipfile.ZipFile(path) as z:
        contents = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in contents if n.endswith("data.pkl"))
    at = contents[pkl].index(b"PLACEHOLDER-META") - 5
    assert contents[pkl][at : at + 1] == b"X"  # BINUNICODE: opcode, 4-byte length, text
    if container == "list":  # EMPTY_LIST x depth, then APPEND each into the one before
        deep = b"]" * depth + b"a" * (depth - 1)
    else:  # EMPTY_DICT, key "a", ..., EMPTY_DICT, then SETITEM each into the one before
        deep = b"}X\x01\x00\x00\x00a" * (depth - 1) + b"}" + b"s" * (depth - 1)
    contents[pkl] = contents[pkl][:at] + deep + contents[pkl][at + 5 + 16 :]
    with zipfile.ZipFile(path, "w") as z:
        for n, data in contents.items():
            z.writestr(n, data)
    return path


def test_metadata_bombs_are_refused_at_read_time(tmp_path):
    bomb = tmp_path / "bomb.pt"
    torch.save({"state_dict": lenet().state_dict(), "meta": {"junk": memo_bomb()}}, bomb)
    assert bomb.stat().st_size < 300_000
    with pytest.raises(CheckpointError, match="bomb.pt: its metadata is larger than 1 MB as JSON"):
        read_checkpoint(bomb)
    for container in ("list", "dict"):
        deep = deep_meta_checkpoint(tmp_path / f"deep_{container}.pt", 200_000, container)
        with pytest.raises(CheckpointError, match=f"deep_{container}.pt: its metadata is nested"):
            read_checkpoint(deep)
    st = tmp_path / "deep.safetensors"
    save_file(
        lenet().state_dict(), str(st), metadata={"hessian_lens": "[" * 200_000 + "]" * 200_000}
    )
    with pytest.raises(CheckpointError, match="deep.safetensors: its metadata is nested deeper"):
        read_checkpoint(st)
    tensor_meta = tmp_path / "tensor_meta.pt"
    torch.save({"state_dict": lenet().state_dict(), "meta": {"lr": torch.ones(1)}}, tensor_meta)
    with pytest.raises(CheckpointError, match="holds a Tensor, which is not JSON data"):
        read_checkpoint(tensor_meta)
    with pytest.raises(CheckpointError, match="larger than 1 MB"):
        save_checkpoint(tmp_path / "never.pt", lenet(), {"junk": memo_bomb()})
    assert not (tmp_path / "never.pt").exists()


def test_deep_safetensors_header_is_refused(tmp_path):
    header = b'{"w": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    path = tmp_path / "deep_header.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(CheckpointError, match="deep_header.safetensors's safetensors header is"):
        read_checkpoint(path)


def deflated_checkpoint(path: Path, mib: int) -> Path:
    """A .pt whose one storage (``mib`` MiB of zeros) is deflated: a zip bomb."""
    plain = path.with_suffix(".plain")
    torch.save({"state_dict": {"w": torch.zeros(mib * 2**18)}, "meta": {}}, plain)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            with src.open(info) as r, dst.open(info.filename, "w", force_zip64=True) as w:
                while chunk := r.read(1 << 22):
                    w.write(chunk)
    plain.unlink()
    return path


def test_zip_bomb_is_refused_before_inflating_anything(tmp_path):
    bomb = deflated_checkpoint(tmp_path / "bomb.pt", mib=64)
    assert bomb.stat().st_size < 2**20
    got = probe(f"read_checkpoint({str(bomb)!r}, max_bytes=8 * 2**20)", tmp_path)
    assert "bomb.pt would inflate to 64.0 MB" in got["outcome"], got
    assert got["extra_mb"] < 24 and got["seconds"] < 1.0, got


def test_safetensors_sizes_are_checked_from_the_header(tmp_path):
    path = tmp_path / "liar.safetensors"
    save_file({"w": torch.zeros(4)}, str(path))
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b'"shape":[4]', b'"shape":[9]'))
    with pytest.raises(CheckpointError, match="tensor w has a bad header entry"):
        read_checkpoint(path)
    complex_file = tmp_path / "complex.safetensors"
    complex_file.write_bytes(raw.replace(b'"F32"', b'"C64"'))
    with pytest.raises(CheckpointError, match="tensor w has dtype C64"):
        read_checkpoint(complex_file)


def test_architecture_from_metadata_is_checked_on_meta_before_allocating(tmp_path):
    path = tmp_path / "huge_mlp.pt"
    state = build_model("mlp", sizes=[8, 4]).state_dict()
    huge = {"model": {"name": "mlp", "kwargs": {"sizes": [20000, 20000]}}}
    torch.save({"state_dict": state, "meta": huge}, path)
    got = probe(f"load_checkpoint({str(path)!r})", tmp_path)
    assert "layers.0.weight: file (4, 8) vs model (20000, 20000)" in got["outcome"], got
    assert got["extra_mb"] < 40, got
    huge["model"]["kwargs"]["sizes"] = [131072, 131072]  # 64 GB: over the size limit
    torch.save({"state_dict": state, "meta": huge}, path)
    too_big = r"17,180,000,256 parameters .* over the 1,000,000,000"  # from the arguments
    with pytest.raises(CheckpointError, match=too_big):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=too_big):  # typed kwargs
        load_checkpoint(path, "mlp", {"sizes": [131072, 131072]})


def test_expanded_tensors_cannot_make_a_tiny_file_allocate_a_big_model(tmp_path):
    sizes = [4096, 4096, 4096]  # 128 MB of weights, from one float each
    w, b = torch.zeros(1).expand(4096, 4096), torch.zeros(1).expand(4096)
    state = {"layers.0.weight": w, "layers.0.bias": b, "layers.2.weight": w, "layers.2.bias": b}
    path = tmp_path / "expanded.pt"
    torch.save(
        {"state_dict": state, "meta": {"model": {"name": "mlp", "kwargs": {"sizes": sizes}}}}, path
    )
    assert path.stat().st_size < 10_000
    with pytest.raises(  # refused at read time, before any model (issue 18, item 3)
        CheckpointError, match="hold 128 MB of values but the file stores only 0.0"
    ):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "make,kind",
    [
        (lambda: torch.empty(10, device="meta"), "without values"),
        (lambda: torch.zeros(10).to_sparse(), "sparse_coo tensor"),
        (lambda: torch.nested.nested_tensor([torch.zeros(4), torch.zeros(6)]), "nested tensor"),
        (lambda: torch.quantize_per_tensor(torch.zeros(10), 0.1, 0, torch.qint8), "quantized"),
        (lambda: torch.zeros(10, dtype=torch.complex64), "complex64 tensor"),
    ],
    ids=["meta", "sparse", "nested", "quantized", "complex"],
)
def test_tensors_that_are_not_dense_real_cpu_tensors_are_refused(tmp_path, make, kind):
    path = tmp_path / "odd.pt"
    state = lenet().state_dict()
    state["fc3.bias"] = make()
    torch.save({"state_dict": state, "meta": META}, path)
    with pytest.raises(CheckpointError, match=f"odd.pt: fc3.bias is a.* {kind}"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_classes": -1}, "num_classes must be an integer >= 1, got -1"),
        ({"num_classes": [10]}, r"num_classes must be an integer >= 1, got \[10\]"),
        ({"activation": 5}, "activation must be one of"),
        ("ab", "arguments must be a JSON object"),
        ([["num_classes", 3]], "arguments must be a JSON object"),
    ],
)
def test_bad_arguments_get_one_clear_message(tmp_path, kwargs, match):
    path = tmp_path / "args.pt"
    save_checkpoint(path, lenet(), {"model": {"name": "lenet5", "kwargs": kwargs}})
    with pytest.raises(CheckpointError, match=f"args.pt: cannot build the architecture: .*{match}"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=f"args.pt: cannot build the architecture: .*{match}"):
        load_checkpoint(path, architecture="lenet5", model_kwargs=kwargs)


def test_never_reads_a_fifo_or_a_device(tmp_path):
    fifo = tmp_path / "epoch_0001.pt"
    os.mkfifo(fifo)
    zero = tmp_path / "epoch_0002.pt"
    zero.symlink_to("/dev/zero")
    for path in (fifo, zero):
        with pytest.raises(CheckpointError, match=f"{path.name} is not a regular file"):
            load_checkpoint(path)  # opening either would block or never end


def test_messages_name_the_users_file_not_the_cache_name(tmp_path):
    cached = tmp_path / "9e3b7abbed5416e9.pt"
    good = tmp_path / "good.pt"
    save_checkpoint(good, lenet(), META)
    cases = [
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 100, {}, "not a checkpoint"),
        (good.read_bytes()[:5000], {}, "corrupt or truncated"),
        (good.read_bytes(), {"max_bytes": 1000}, "over the 0 MB limit"),
        (
            good.read_bytes(),
            {"architecture": "lenet5", "model_kwargs": {"num_classes": 3}},
            "shape",
        ),
        (good.read_bytes(), {"architecture": "resnet9"}, "unknown architecture"),
    ]
    for data, kwargs, what in cases:
        cached.write_bytes(data)
        with pytest.raises(CheckpointError, match=what) as info:
            load_checkpoint(cached, display_name="my model.pt", **kwargs)
        assert "my model.pt" in str(info.value) and "9e3b7abbed5416e9" not in str(info.value)
    with pytest.raises(CheckpointError, match="^my model.pt: no such file"):
        read_checkpoint(tmp_path / "absent.pt", display_name="my model.pt")


def test_read_once_then_build_without_parsing_again(tmp_path, monkeypatch):
    path = tmp_path / "epoch_0003.pt"
    model = lenet()
    save_checkpoint(path, model, META)
    state, meta = read_checkpoint(path)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("the file was read again"))
    built, meta2 = build_from_state(state, meta, display_name="epoch_0003.pt")
    assert meta2["model"] == META["model"] and not built.training
    assert torch.equal(built.fc3.weight, model.fc3.weight)
    _, picked = build_from_state(state, meta, "lenet5", {"activation": "relu"})
    assert picked["model"]["kwargs"] == {"num_classes": 10, "in_channels": 3, "activation": "relu"}
