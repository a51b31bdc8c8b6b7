"""torch.export ``.pt2`` archives: round trips, exact H̄, and poisoned or broken files.

Every poisoned archive below is a real ``torch.export.save`` file rewritten member by member.
Each payload only creates a marker file in the test's temporary folder; ``test_poison_is_live``
shows torch's own loader reaches it, ``test_poisoned_archive_is_refused`` that Hessian Lens
refuses the file without running it.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import shutil
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hessian_lens as hl
from hessian_lens.checkpoint import CheckpointError
from hessian_lens.io.pt2 import is_exported_archive, load_exported
from hessian_lens.io.pt2_graph import (
    CONSTANTS_CONFIG,
    PROGRAM,
    SAMPLE_INPUTS,
    WEIGHTS_CONFIG,
    _check_expr,
)
from hessian_lens.reference import reference_summary


# ---------------------------------------------------------------------------- models
class SmallCNN(nn.Module):
    """Conv + BatchNorm + pooling + linear, a non-persistent buffer and a tensor constant."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 4 * 4, 5)
        self.register_buffer("scale", torch.tensor(1.5), persistent=False)
        self.offset = torch.linspace(-0.1, 0.1, 5)  # lifted as a tensor constant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        return self.head(h.flatten(1)) * self.scale + self.offset


class OddMLP(nn.Module):
    """An MLP with a nested Sequential (names like ``body.0.weight``)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(12, 7), nn.Tanh(), nn.Linear(7, 6))
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.sigmoid(self.body(x.reshape(x.shape[0], -1))))


def trained_cnn() -> SmallCNN:
    torch.manual_seed(0)
    model = SmallCNN()
    with torch.no_grad():  # non-trivial running statistics
        model.bn1.running_mean.uniform_(-0.2, 0.2)
        model.bn1.running_var.uniform_(0.5, 1.5)
    return model.eval()


def save_export(model: nn.Module, x: torch.Tensor, path: Path, dynamic: bool) -> Path:
    shapes = ({0: torch.export.Dim("batch", min=1, max=512)},) if dynamic else None
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=shapes), path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pt2")
    torch.manual_seed(1)
    cnn_x, mlp_x = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 4)
    return {
        "cnn": save_export(trained_cnn(), cnn_x, folder / "cnn.pt2", dynamic=True),
        "cnn_static": save_export(trained_cnn(), cnn_x, folder / "cnn_static.pt2", False),
        "mlp": save_export(mlp(), mlp_x, folder / "mlp.pt2", dynamic=True),
    }


def mlp() -> OddMLP:
    torch.manual_seed(2)
    return OddMLP()


def names(module: nn.Module) -> list[str]:
    return [n for n, _ in module.named_parameters()]


# ---------------------------------------------------------------------------- round trips
@pytest.mark.parametrize(
    ("key", "make", "shape"), [("cnn", trained_cnn, (5, 3, 8, 8)), ("mlp", mlp, (7, 3, 4))]
)
def test_round_trip_keeps_names_and_outputs(files, key, make, shape):
    eager = make()
    module, meta = load_exported(files[key])
    assert names(module) == names(eager)
    assert {n for n, _ in eager.named_buffers()} <= {n for n, _ in module.named_buffers()}
    assert not any(m.training for m in module.modules())
    x = torch.randn(shape)  # another batch size than the exported example
    torch.testing.assert_close(module(x), eager(x), rtol=1e-6, atol=1e-6)
    assert meta["model"] == {"name": "export", "kwargs": {}}
    assert meta["parameters"] == sum(p.numel() for p in eager.parameters())
    assert meta["input_shape"] == [None, *shape[1:]]
    assert meta["static_batch_size"] is None
    assert meta["torch_version"] == torch.__version__
    assert meta["inputs"][0]["dtype"] == "float32"
    assert meta["example_inputs"] == [meta["inputs"][0]["example_shape"]]
    assert meta["train_mode_ops"] == []


def test_train_mode_export_is_reported(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))
    path = save_export(model.train(), torch.randn(4, 3, 4, 4), tmp_path / "t.pt2", False)
    assert load_exported(path)[1]["train_mode_ops"] == ["aten.batch_norm.default"]


def test_static_batch_size_is_exposed_and_checked(files):
    eager = trained_cnn()
    module, meta = load_exported(files["cnn_static"])
    assert meta["static_batch_size"] == 2 and meta["input_shape"] == [2, 3, 8, 8]
    assert names(module) == names(eager)  # a hook, not a wrapper: same names
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(module(x), eager(x))
    with pytest.raises(ValueError, match=r"fixed batch size of 2: feed batches of 2 \(got 5\)"):
        module(torch.randn(5, 3, 8, 8))
    with pytest.raises(ValueError, match="expects x of shape"):
        module(torch.randn(2, 3, 9, 8))


def test_load_checkpoint_reads_pt2_without_architecture(files, tmp_path):
    model, meta = hl.load_checkpoint(files["mlp"])
    assert meta["model"]["name"] == "export" and names(model) == names(mlp())
    disguised = shutil.copy(files["mlp"], tmp_path / "model.pt")  # recognised by content
    assert is_exported_archive(disguised)
    assert names(hl.load_checkpoint(disguised)[0]) == names(mlp())
    plain = tmp_path / "plain.pt"
    torch.save(mlp().state_dict(), plain)
    assert not is_exported_archive(plain)


def test_program_exported_on_a_gpu_loads_on_the_cpu(files, tmp_path):
    def to_cuda(members):
        for member in (PROGRAM, WEIGHTS_CONFIG, CONSTANTS_CONFIG):
            text = members[member].decode()
            members[member] = text.replace(
                '"type": "cpu", "index": null', '"type": "cuda", "index": 0'
            ).encode()

    module, _ = load_exported(rewrite(files["cnn"], tmp_path / "gpu.pt2", to_cuda))
    assert {p.device.type for p in module.parameters()} == {"cpu"}
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(module(x), trained_cnn()(x))


# ---------------------------------------------------------------------------- exact H̄
def test_pseudo_hessian_of_loaded_cnn_equals_eager(files):
    torch.manual_seed(3)
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 5, (6,))
    module, _ = load_exported(files["cnn"])
    got = hl.pseudo_hessian(module, F.cross_entropy, (x, y), dtype=torch.float64)
    want = hl.pseudo_hessian(trained_cnn(), F.cross_entropy, (x, y), dtype=torch.float64)
    assert got.labels == want.labels and got.H.dtype == torch.float64
    torch.testing.assert_close(got.H, want.H, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.g, want.g, rtol=1e-10, atol=1e-12)
    assert got.H.abs().max() > 1e-3  # not trivially zero


def test_pseudo_hessian_of_loaded_mlp_equals_brute_force(files):
    torch.manual_seed(4)
    x, y = torch.randn(5, 3, 4), torch.randint(0, 3, (5,))
    module, _ = load_exported(files["mlp"])
    got = hl.pseudo_hessian(module, F.cross_entropy, (x, y), dtype=torch.float64)
    # reference.py calls model.train(), which ExportedProgram modules refuse: its brute-force
    # derivatives are taken on the eager twin holding the same weights.
    eager = mlp()
    H = reference_summary(eager, F.cross_entropy, (x, y), order=2)
    g = reference_summary(eager, F.cross_entropy, (x, y), order=1)
    torch.testing.assert_close(got.H, H, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.g, g, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------- archive tools
def read_members(path: Path) -> tuple[str, dict[str, bytes]]:
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        root = infos[0].filename.split("/", 1)[0]
        return root, {i.filename[len(root) + 1 :]: zf.read(i) for i in infos}


def write_members(path: Path, root: str, members: dict[str, bytes], compress=None) -> Path:
    with zipfile.ZipFile(path, "w", compress or zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(f"{root}/{name}" if root else name, data)
    return path


def rewrite(src: Path, dst: Path, edit: Callable[[dict[str, bytes]], None]) -> Path:
    root, members = read_members(src)
    edit(members)
    return write_members(dst, root, members)


def edit_json(members: dict[str, bytes], member: str, edit: Callable[[dict], None]) -> None:
    data = json.loads(members[member])
    edit(data)
    members[member] = json.dumps(data).encode()


class Payload:
    """Unpickling it creates ``marker``: harmless proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def touch_code(marker: Path) -> str:
    """A Python expression that creates ``marker``."""
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


def saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


# ---------------------------------------------------------------------------- poisons
def plant_sample_inputs(members, marker):
    members[SAMPLE_INPUTS] = saved(Payload(marker))


def plant_pickled_weight(members, marker):
    def edit(config):
        entry = next(iter(config["config"].values()))
        entry["use_pickle"] = True
        members[f"data/weights/{entry['path_name']}"] = pickle.dumps(Payload(marker))

    edit_json(members, WEIGHTS_CONFIG, edit)


def plant_pickled_constant(members, marker):
    def edit(config):
        entry = config["config"]["offset"]
        entry["use_pickle"] = True
        members[f"data/constants/{entry['path_name']}"] = pickle.dumps(Payload(marker))

    edit_json(members, CONSTANTS_CONFIG, edit)


def plant_object(prefix: str):
    def plant(members, marker):
        entry = {
            "path_name": f"{prefix}0",
            "is_param": False,
            "use_pickle": True,
            "tensor_meta": None,
        }
        edit_json(members, CONSTANTS_CONFIG, lambda c: c["config"].update(obj={**entry}))
        members[f"data/constants/{prefix}0"] = pickle.dumps(Payload(marker))

    return plant


def plant_legacy_weights(members, marker):
    members["data/weights/model.pt"] = saved(Payload(marker))


def plant_sympy(members, marker):
    def edit(program):
        sizes = program["graph_module"]["graph"]["tensor_values"]["x"]["sizes"]
        sizes[0]["as_expr"]["expr_str"] = touch_code(marker)

    edit_json(members, PROGRAM, edit)


def plant_forward_arg_names(members, marker):
    # pasted twice into FX's generated source: def forward(self, NAME) and [NAME]
    name = f"x, y='''):\n    {touch_code(marker)}\n    return ((["

    def edit(program):
        signature = program["graph_module"]["module_call_graph"][0]["signature"]
        signature["forward_arg_names"] = [name]

    edit_json(members, PROGRAM, edit)


def plant_aotinductor(members, marker):
    members["data/aotinductor/model/model.so"] = b"\x7fELF" + bytes(60)


def plant_old_format(members, marker):
    program = members[PROGRAM]
    members.clear()
    members.update(
        {
            "version": b"8.20",
            "serialized_exported_program.json": program,
            "serialized_state_dict.pt": saved({}),
            "serialized_constants.pt": saved(Payload(marker)),
            "serialized_example_inputs.pt": saved(Payload(marker)),
        }
    )


POISONS = {
    "sample_inputs": (plant_sample_inputs, "sample inputs"),
    "pickled_weight": (plant_pickled_weight, "with pickle"),
    "pickled_constant": (plant_pickled_constant, "with pickle"),
    "opaque_object": (plant_object("opaque_obj_"), "pickle.loads"),
    "custom_object": (plant_object("custom_obj_"), "TorchBind"),
    "legacy_weights": (plant_legacy_weights, "legacy pickled weights"),
    "old_format": (plant_old_format, "pre-2.7"),
    "sympy_eval": (plant_sympy, "not a plain sympy expression"),
    "forward_arg_names": (plant_forward_arg_names, "not Python identifiers"),
    "aotinductor": (plant_aotinductor, "AOTInductor"),
}


def poisoned(files, tmp_path, case: str) -> tuple[Path, Path]:
    marker = tmp_path / f"{case}.marker"
    plant = POISONS[case][0]
    path = tmp_path / f"{case}.pt2"
    root, members = read_members(files["cnn"])
    plant(members, marker)
    write_members(path, "" if case == "old_format" else root, members)
    return path, marker


@pytest.mark.parametrize("case", sorted(POISONS))
def test_poisoned_archive_is_refused(files, tmp_path, case):
    path, marker = poisoned(files, tmp_path, case)
    with pytest.raises(CheckpointError, match=POISONS[case][1]) as err:
        load_exported(path)
    assert str(err.value).startswith(path.name)
    assert not marker.exists()


def run_torch_loader(path: Path) -> None:
    """What torch.export.load would do with the file, module and forward included."""
    with contextlib.suppress(Exception):  # the payloads break the program after running
        torch.export.load(path).module()(torch.randn(2, 3, 8, 8))


@pytest.mark.parametrize("case", sorted(set(POISONS) - {"custom_object", "aotinductor"}))
def test_poison_is_live(files, tmp_path, case):
    path, marker = poisoned(files, tmp_path, case)
    run_torch_loader(path)
    assert marker.exists(), f"{case}: torch's loader did not reach the payload"


def test_custom_object_and_aoti_reach_torch_code_loaders(files, tmp_path, monkeypatch):
    from torch.export.pt2_archive import _package

    seen = []
    monkeypatch.setattr(torch._C, "_pickle_load_obj", lambda data: seen.append(data))
    monkeypatch.setattr(_package, "_load_aoti", lambda file, name, *a: seen.append(name))
    for case in ("custom_object", "aotinductor"):
        run_torch_loader(poisoned(files, tmp_path, case)[0])
    assert len(seen) == 2 and b"exec" in seen[0] and seen[1] == "model"


def test_guards_code_is_dropped_not_run(files, tmp_path):
    marker = tmp_path / "guard.marker"
    guard = [f"{touch_code(marker)} is None"]
    path = rewrite(
        files["cnn_static"],
        tmp_path / "guard.pt2",
        lambda m: edit_json(m, PROGRAM, lambda p: p.update(guards_code=guard)),
    )
    module, meta = load_exported(path)
    module(torch.randn(2, 3, 8, 8))
    assert not marker.exists() and meta["dropped_guards"] == 1
    run_torch_loader(path)  # torch exec-s it in ExportedProgram.module()
    assert marker.exists()


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ("torch.os.system", "not an ATen operator"),
        ("torch.ops.higher_order.cond", "control flow"),
        ("torch.ops.mylib.custom.default", "not an ATen operator"),
        ("torch.ops.aten.from_file.default", "not an ATen operator"),
    ],
)
def test_graph_targets_outside_aten_are_refused(files, tmp_path, target, match):
    def edit(program):
        program["graph_module"]["graph"]["nodes"][0]["target"] = target

    path = rewrite(files["cnn"], tmp_path / "t.pt2", lambda m: edit_json(m, PROGRAM, edit))
    with pytest.raises(CheckpointError, match=match):
        load_exported(path)


def test_names_pasted_into_generated_code_must_be_identifiers(files, tmp_path):
    def edit(program):
        program["graph_module"]["graph"]["nodes"][0]["name"] = "conv2d\nimport os"

    path = rewrite(files["cnn"], tmp_path / "n.pt2", lambda m: edit_json(m, PROGRAM, edit))
    with pytest.raises(CheckpointError, match="not a Python identifier"):
        load_exported(path)


@pytest.mark.parametrize(
    "text",
    [
        "Symbol('s77', positive=True, integer=True)",
        "Mul(Integer(2), Symbol('s0', integer=True))",
        "Pow(Symbol('s0'), Integer(-1))",
        "FloorDiv(Add(Symbol('s1'), Integer(-1)), Integer(2))",
        "Max(Integer(1), Symbol('u0')) <= oo",
        "2*s0 + FloorDiv(s1, 2)",
    ],
)
def test_plain_sympy_expressions_pass(text):
    _check_expr(text, "m.pt2")


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "Symbol('s0').func",
        "Symbol('a b')",
        "Pow(Integer(10), Pow(Integer(10), Integer(10)))",
        "Pow(Pow(Integer(10), Integer(60)), Integer(60))",
        "LShift(Integer(1), Integer(10000000))",
        "Integer(10**100)",
        "Integer(123456789012345678901234567890)",
        "(lambda: 0)()",
        "Symbol(*['s0'])",
        "s0 ^ 2",
        "exec",
        "s0.func",
        "Symbol('s0', evaluate=exec)",
    ],
)
def test_unsafe_sympy_expressions_are_refused(text):
    with pytest.raises(CheckpointError, match="not a plain sympy expression"):
        _check_expr(text, "m.pt2")


# ---------------------------------------------------------------------------- broken files
def patch_declared_size(data: bytearray, member: str, size: int) -> None:
    """Set the uncompressed size of ``member`` in its local and central headers."""
    zf = zipfile.ZipFile(io.BytesIO(bytes(data)))
    info = zf.getinfo(member)
    data[info.header_offset + 22 : info.header_offset + 26] = size.to_bytes(4, "little")
    pos = zf.start_dir
    while data[pos : pos + 4] == b"PK\x01\x02":
        lengths = [int.from_bytes(data[pos + i : pos + i + 2], "little") for i in (28, 30, 32)]
        if data[pos + 46 : pos + 46 + lengths[0]] == member.encode():
            data[pos + 24 : pos + 28] = size.to_bytes(4, "little")
        pos += 46 + sum(lengths)


def bomb(files, tmp_path, lie: bool) -> Path:
    root, members = read_members(files["cnn"])
    members["data/weights/weight_0"] = bytes(64 << 20)  # deflates to ~64 kB
    path = write_members(tmp_path / "bomb.pt2", root, members, zipfile.ZIP_DEFLATED)
    if lie:
        data = bytearray(path.read_bytes())
        patch_declared_size(data, f"{root}/data/weights/weight_0", 432)
        path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(("lie", "match"), [(False, "uncompressed"), (True, "corrupt member")])
def test_zip_bomb_is_refused_before_inflating(files, tmp_path, lie, match):
    path = bomb(files, tmp_path, lie)
    assert path.stat().st_size < 2 << 20
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=match):
            load_exported(path, max_bytes=16 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MB while refusing a 64 MB bomb"


def corrupt_member(path: Path, dst: Path, member: str) -> Path:
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(member))
    head = info.header_offset
    n, extra = (int.from_bytes(data[head + i : head + i + 2], "little") for i in (26, 28))
    data[head + 30 + n + extra] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda f, d: d.write_bytes(f.read_bytes()[: f.stat().st_size // 2]), "not a readable zip"),
        (lambda f, d: d.write_bytes(b"not a zip at all " * 64), "not a readable zip"),
        (lambda f, d: corrupt_member(f, d, "data/weights/weight_2"), "corrupt member"),
        (lambda f, d: None, "no such file"),
        (
            lambda f, d: rewrite(f, d, lambda m: m.update({"data/evil.bin": b"x"})),
            "unexpected member 'data/evil.bin'",
        ),
        (
            lambda f, d: rewrite(f, d, lambda m: m.update({"../evil": b"x"})),
            "unexpected path",
        ),
        (
            lambda f, d: rewrite(f, d, lambda m: m.pop(WEIGHTS_CONFIG)),
            "not a torch.export archive",
        ),
        (
            lambda f, d: rewrite(f, d, lambda m: m.update(archive_version=b"7")),
            "archive_version other than '0'",
        ),
    ],
)
def test_broken_files_get_a_precise_message(files, tmp_path, make, match):
    path = tmp_path / "broken.pt2"
    make(files["cnn"], path)
    with pytest.raises(CheckpointError, match=match):
        load_exported(path)


def test_duplicate_member_is_refused(files, tmp_path):
    root, members = read_members(files["cnn"])
    path = write_members(tmp_path / "dup.pt2", root, members)
    with pytest.warns(UserWarning), zipfile.ZipFile(path, "a") as zf:
        zf.writestr(f"{root}/{PROGRAM}", b"{}")
    with pytest.raises(CheckpointError, match="twice"):
        load_exported(path)


def test_tensor_sizes_declared_in_metadata_count_against_the_limit(files, tmp_path):
    def edit(members):
        def huge(config):
            entry = config["config"]["conv1.weight"]
            entry["tensor_meta"]["sizes"] = [{"as_int": 1 << 30}]
            entry["tensor_meta"]["strides"] = [{"as_int": 1}]
            members[f"data/weights/{entry['path_name']}"] = b""  # torch would allocate zeros

        edit_json(members, WEIGHTS_CONFIG, huge)

    path = rewrite(files["cnn"], tmp_path / "huge.pt2", edit)
    with pytest.raises(CheckpointError, match="4,096.0 MB of tensors, over the limit"):
        load_exported(path)


def test_size_limit(files):
    with pytest.raises(CheckpointError, match="over the"):
        load_exported(files["cnn"], max_bytes=1000)
