"""Safe reading of torch.export ``.pt2`` archives: a model without its Python code.

``torch.export.save(torch.export.export(model, (x,)), "model.pt2")`` writes a zip archive
that holds the traced ATen graph as JSON plus the raw bytes of the weights, so it can be
rebuilt with no architecture argument. :func:`load_exported` gives back an ``nn.Module`` whose
parameters keep their original names (``conv1.weight``, ``layer1.0.conv1.weight``, ...), in
eval semantics, and a meta dict.

Why not simply ``torch.export.load``
------------------------------------
``torch.export.load`` (torch 2.11-2.14, ``torch/export/pt2_archive/_package.py`` and
``torch/_export/serde/serialize.py``) runs code chosen by the file in several places:

* pickled members: ``data/sample_inputs/model.pt`` (``torch.load(weights_only=True)``, then
  ``weights_only=False`` when that fails), weights and tensor constants whose config says
  ``use_pickle`` (``torch.load(weights_only=False)``), ``data/constants/opaque_obj_*``
  (``pickle.loads``), ``data/constants/custom_obj_*`` (TorchScript's unpickler), the legacy
  ``data/{weights,constants}/model.pt`` and the pre-2.7 format's ``serialized_*.pt``
  (``weights_only=False`` fallback);
* ``data/aotinductor/``: shared libraries that would be loaded;
* the program JSON itself: every symbolic size (``expr_str``) goes through
  ``sympy.sympify``, which is ``eval``; ``guards_code`` strings are ``exec``-ed by
  ``ExportedProgram.module()``; ``forward_arg_names``, the input spec's keyword names and node
  names are pasted unescaped into the Python source FX generates for ``forward``; node targets
  resolve to any attribute of ``torch``, ``operator`` or ``math`` (``torch.os.system``
  included; today only torch's verifier stops it from being called). The tests show each of
  these reached by ``torch.export.load`` with a harmless payload, except the last.

What this module does instead
-----------------------------
1. Zip level, before anything is inflated: the file size and the sum of the *declared*
   uncompressed sizes must fit ``max_bytes``; names must be unique and safe under one root;
   every member must be one torch.export writes and this module knows how to check (anything
   else, and every member above that would be unpickled or loaded as code, is refused with
   :class:`~hessian_lens.checkpoint.CheckpointError`). Members are then read in 1 MiB chunks,
   so a member whose header lies about its size cannot inflate past it (``ZipFile.read``
   would decompress a whole bomb first), and its CRC is checked.
2. JSON level: node targets must be ``torch.ops.aten.*`` or a fixed set of symbolic-size
   operators (no higher-order ops, subgraphs or custom objects); every ``expr_str`` is parsed
   with :mod:`ast` (which runs nothing) and must be a small sympy expression built from an
   allow-list of names, with plain symbol names and bounded powers; every node and argument
   name is an identifier and parameter and buffer names dotted identifiers; the forward takes
   positional tensors only, its argument names are identifiers, and it returns one tensor;
   symbol ranges are bounded. ``guards_code`` is emptied (counted in ``meta``) and node
   metadata other than ``nn_module_stack`` / ``torch_fn`` dropped (``source_fn_stack`` is
   resolved to objects, stack traces can reach generated code).
3. Payloads: weights and tensor constants must be raw bytes (``use_pickle`` false) with plain
   strided tensor metadata whose total size fits ``max_bytes`` (torch allocates zeros for an
   empty member), and they are loaded on the CPU wherever they were exported. The sample
   inputs are loaded here with ``torch.load(weights_only=True)`` only (after the same zip
   checks on the nested archive), to report their shapes; a sample that needs more is
   refused.
4. A new archive is written with torch's own ``PT2ArchiveWriter`` holding only the checked
   members, the re-serialised JSON and *empty* sample inputs, and only that archive reaches
   ``torch.export.load``. Parser differences between Python's zipfile and torch's reader
   (duplicate names, lying headers) therefore cannot smuggle anything past the checks, and no
   path in torch's loader has anything left to unpickle or evaluate.

Without sample inputs ``ExportedProgram.module()`` installs no guard function; torch's own
input-constraint hook still runs, and a forward pre-hook of this module runs before it (a
hook, not a wrapper, so the parameter names stay those of the original model): a program
exported with a static batch size raises ``ValueError`` naming that size when fed another
one.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import re
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hessian_lens.errors import CheckpointError
from hessian_lens.io.files import UnsafeFileError, loads_bounded
from hessian_lens.io.pt2_graph import (
    CHUNK,
    CONSTANTS_CONFIG,
    DTYPES,
    EXTRA_MEMBER,
    FORMAT_MEMBERS,
    MAX_JSON_DEPTH,
    MAX_MEMBERS,
    OLD_FORMAT,
    PROGRAM,
    RAW_MEMBER,
    REDOWNLOAD,
    REEXPORT,
    REFUSED_MEMBERS,
    SAMPLE_INPUTS,
    STRIDED,
    TRUST,
    UNSUPPORTED,
    WEIGHTS_CONFIG,
    WRITER_MEMBERS,
    Input,
    Program,
    checked_program,
    megabytes,
    pt2_error,
)
from hessian_lens.io.torchfiles import DEFAULT_MAX_BYTES, check_pickle


def load_exported(
    path: str | Path, max_bytes: int | None = DEFAULT_MAX_BYTES, display_name: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a ``torch.export.save`` archive without running code from it.

    Args:
        path: the ``.pt2`` file.
        max_bytes: refuse files, or archives declaring more uncompressed bytes or tensor
            bytes, above this (``None``: no limit).
        display_name: the name used in messages (default: the file's own name).

    Returns:
        ``(module, meta)``: the module in eval semantics (``training`` is False everywhere;
        it refuses ``.train()``/``.eval()``, like every ``ExportedProgram.module()``), its
        parameters named as in the exported model; meta holds ``model`` (``{"name":
        "export", "kwargs": {}}``), ``parameters``, ``inputs`` (name, shape with ``None``
        for dynamic dims, example shape, dtype), ``input_shape``, ``static_batch_size``
        (``None`` when the batch dimension is dynamic), ``torch_version`` (of the writer),
        ``operators``, ``train_mode_ops`` (operators traced with ``training=True``, e.g.
        BatchNorm using batch statistics: the graph keeps them whatever ``training`` says)
        and more.

    Raises:
        CheckpointError: on anything unsafe, unsupported, corrupt or too large; the message
            names the file and says what to do.
    """
    path = Path(path)
    name = display_name or path.name
    with _open_zip(path, max_bytes, name) as zf:
        archive = _Archive(name, zf, _members(zf, name, max_bytes), max_bytes)
        program = checked_program(archive)
        _check_payloads(archive, program.specs)
        examples = _example_shapes(archive)
        with tempfile.TemporaryDirectory(prefix="hessian-lens-pt2-") as tmp:
            clean = Path(tmp) / "sanitized.pt2"
            _write_sanitized(archive, program.json, clean)
            module = _rebuild(clean, program, name, max_bytes)
    meta = _meta(module, program, examples, archive)
    return module, meta


def is_exported_archive(path: str | Path) -> bool:
    """Whether ``path`` is meant for :func:`load_exported`.

    True for a ``.pt2`` suffix (even a broken file, so that it gets the precise message of
    :func:`load_exported`) and for a zip holding ``<root>/archive_format``; only the zip's
    directory is read.
    """
    path = Path(path)
    if path.suffix == ".pt2":
        return True
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()[:MAX_MEMBERS]
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return any(n.count("/") == 1 and n.endswith("/archive_format") for n in names)


# ---------------------------------------------------------------------------- zip level
@dataclass
class _Archive:
    name: str
    zf: zipfile.ZipFile
    members: dict[str, zipfile.ZipInfo]  # name below the root -> info
    max_bytes: int | None

    def read(self, member: str) -> bytes:
        """The bytes of a member, never inflating past its declared size."""
        info = self.members[member]
        out = bytearray()
        try:
            with self.zf.open(info) as f:
                while chunk := f.read(CHUNK):
                    out += chunk
                    if len(out) > info.file_size:
                        raise zipfile.BadZipFile("more data than declared")
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as err:
            raise pt2_error(
                self.name, f"has a corrupt member {member} ({err})", REDOWNLOAD
            ) from None
        return bytes(out)

    def text(self, member: str) -> Any:
        """A JSON member, parsed (bounded: at most 1,000,000 objects and arrays)."""
        try:
            text = self.read(member).decode("utf-8")
        except ValueError as err:  # bad UTF-8
            raise pt2_error(self.name, f"has invalid JSON in {member} ({err})", REEXPORT) from None
        try:
            return loads_bounded(text, member, max_depth=MAX_JSON_DEPTH)
        except UnsafeFileError as err:  # too many objects, too deep, bad JSON, 5000-digit ints
            raise pt2_error(self.name, f"has unusable JSON: {err}", REEXPORT) from None


def _open_zip(path: Path, max_bytes: int | None, name: str) -> zipfile.ZipFile:
    if not path.is_file():
        raise CheckpointError(f"{name}: no such file.")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise pt2_error(name, f"is {megabytes(size)}, over the {megabytes(max_bytes)} limit", TRUST)
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise pt2_error(
            name,
            f"is not a torch.export archive: not a readable zip file, maybe truncated ({err})",
            "Re-download it or write it again with torch.export.save(program, 'model.pt2').",
        ) from None


def _members(zf: zipfile.ZipFile, name: str, max_bytes: int | None) -> dict[str, zipfile.ZipInfo]:
    """Check every entry's name, kind, flags and declared size; nothing is inflated here."""
    infos = [i for i in zf.infolist() if not i.filename.endswith("/")]
    if not infos or len(infos) > MAX_MEMBERS:
        raise pt2_error(
            name, f"is not a torch.export archive: it holds {len(infos)} files", REEXPORT
        )
    if any(i.filename in OLD_FORMAT for i in infos):
        raise pt2_error(
            name, "is in the pre-2.7 torch.export format, whose weights are pickled", REEXPORT
        )
    root = infos[0].filename.split("/", 1)[0]
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        rel = _relative(info.filename, root, name)
        if rel in members:
            raise pt2_error(name, f"holds {info.filename!r} twice", REEXPORT)
        _check_entry(info, rel, name)
        members[rel] = info
    declared = sum(i.file_size for i in infos)
    if max_bytes is not None and declared > max_bytes:
        raise pt2_error(
            name,
            f"declares {megabytes(declared)} once uncompressed, over the "
            f"{megabytes(max_bytes)} limit (a zip bomb?)",
            TRUST,
        )
    missing = [
        m for m in (*FORMAT_MEMBERS, PROGRAM, WEIGHTS_CONFIG, CONSTANTS_CONFIG) if m not in members
    ]
    if missing:
        raise pt2_error(name, f"is not a torch.export archive: {missing} missing", REEXPORT)
    return members


def _relative(filename: str, root: str, name: str) -> str:
    prefix = root + "/"
    rel = filename[len(prefix) :] if filename.startswith(prefix) else ""
    if not root or not rel or "\\" in filename or any(p in ("", ".", "..") for p in rel.split("/")):
        raise pt2_error(name, f"holds an unexpected path {filename[:120]!r}", REEXPORT)
    return rel


def _check_entry(info: zipfile.ZipInfo, rel: str, name: str) -> None:
    if info.flag_bits & 0x1:
        raise pt2_error(name, f"has an encrypted member {rel}", REEXPORT)
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise pt2_error(
            name, f"has a member {rel} in an unknown compression ({info.compress_type})", REEXPORT
        )
    for pattern, why in REFUSED_MEMBERS:
        if re.fullmatch(pattern, rel) and rel != PROGRAM:
            raise pt2_error(
                name, f"holds {rel}: {why}. Hessian Lens never runs code from a file", REEXPORT
            )
    known = (
        *FORMAT_MEMBERS,
        *WRITER_MEMBERS,
        PROGRAM,
        WEIGHTS_CONFIG,
        CONSTANTS_CONFIG,
        SAMPLE_INPUTS,
    )
    if rel not in known and not RAW_MEMBER.fullmatch(rel) and not EXTRA_MEMBER.fullmatch(rel):
        raise pt2_error(name, f"holds an unexpected member {rel[:120]!r}", REEXPORT)


# ---------------------------------------------------------------------------- payloads
def _check_payloads(archive: _Archive, specs: dict[str, list]) -> None:
    """Weights and constants: raw bytes only, plain strided tensors, bounded total size."""
    used, total = set(), 0
    for config, kind, expected in (
        (WEIGHTS_CONFIG, "weights", specs["parameter"] + specs["buffer"]),
        (CONSTANTS_CONFIG, "constants", specs["constant"]),
    ):
        entries = _config(archive, config)
        if set(entries) != set(expected):
            raise pt2_error(
                archive.name, f"has a {config} that does not match the program's {kind}", REEXPORT
            )
        for fqn, payload in entries.items():
            member, nbytes = _check_payload(archive, kind, fqn, payload)
            used.add(member)
            total += nbytes
    if archive.max_bytes is not None and total > archive.max_bytes:
        raise pt2_error(
            archive.name, f"declares {megabytes(total)} of tensors, over the limit", TRUST
        )
    unused = [m for m in archive.members if RAW_MEMBER.fullmatch(m) and m not in used]
    if unused:
        raise pt2_error(archive.name, f"holds members no config refers to: {unused[:4]}", REEXPORT)


def _config(archive: _Archive, member: str) -> dict[str, Any]:
    config = archive.text(member)
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise pt2_error(archive.name, f"has a malformed {member}", REEXPORT)
    return entries


def _check_payload(archive: _Archive, kind: str, fqn: str, payload: Any) -> tuple[str, int]:
    """The member holding a raw (never pickled) payload, and the bytes of its tensor."""
    name = archive.name
    if not isinstance(payload, dict) or payload.get("use_pickle") is not False:
        raise pt2_error(
            name,
            f"stores {kind[:-1]} {fqn[:80]!r} with pickle (a tensor subclass or "
            "a Python object); torch.export.load would unpickle it",
            UNSUPPORTED,
        )
    prefix = "data/weights/weight" if kind == "weights" else "data/constants/tensor"
    member = f"{prefix.rsplit('/', 1)[0]}/{payload.get('path_name')}"
    if not member.startswith(prefix) or member not in archive.members:
        raise pt2_error(name, f"has no data for {kind[:-1]} {fqn[:80]!r}", REEXPORT)
    nbytes, extent = _tensor_bytes(payload.get("tensor_meta"), fqn, name)
    stored = archive.members[member].file_size
    if stored and stored < extent:
        raise pt2_error(name, f"has a {member} too short for {fqn!r}", REDOWNLOAD)
    return member, nbytes


def _tensor_bytes(meta: Any, fqn: str, name: str) -> tuple[int, int]:
    """``(numel * itemsize, bytes spanned in storage)`` of a plain strided tensor."""
    meta = meta if isinstance(meta, dict) else {}
    dtype = DTYPES.get(meta.get("dtype"))
    sizes, strides = _ints(meta.get("sizes")), _ints(meta.get("strides"))
    offset = _ints([meta.get("storage_offset")])
    if dtype is None or meta.get("layout") != STRIDED or None in (sizes, strides, offset):
        raise pt2_error(
            name,
            f"holds {fqn[:80]!r}, not a plain dense tensor of a supported dtype with static sizes",
            UNSUPPORTED,
        )
    if len(sizes) != len(strides) or len(sizes) > 64:
        raise pt2_error(name, f"has malformed sizes for {fqn[:80]!r}", REEXPORT)
    item = torch.empty((), dtype=dtype).element_size()
    numel = math.prod(sizes)
    span = (
        0
        if numel == 0
        else offset[0] + sum((n - 1) * s for n, s in zip(sizes, strides, strict=True)) + 1
    )
    return numel * item, span * item


def _ints(values: Any) -> list[int] | None:
    if not isinstance(values, list):
        return None
    out = [v.get("as_int") if isinstance(v, dict) else None for v in values]
    return out if all(type(v) is int and 0 <= v < 2**40 for v in out) else None


# ---------------------------------------------------------------------------- sample inputs
def _example_shapes(archive: _Archive) -> list[list[int]] | None:
    """Shapes of the sample inputs, read with ``torch.load(weights_only=True)`` only."""
    if SAMPLE_INPUTS not in archive.members or not archive.members[SAMPLE_INPUTS].file_size:
        return None
    data = archive.read(SAMPLE_INPUTS)
    _check_nested_zip(data, archive)
    check_pickle(io.BytesIO(data), archive.max_bytes, f"{archive.name}'s sample inputs")
    try:
        sample = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # any failure of the restricted unpickler
        why = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise pt2_error(
            archive.name,
            f"holds sample inputs ({SAMPLE_INPUTS}) that are not plain tensors ({why}); "
            "torch.export.load would unpickle them with weights_only=False",
            "Re-export it from trusted code with tensor example inputs.",
        ) from None
    return [list(t.shape) for t in _leaves(sample)]


def _leaves(obj: Any) -> Iterator[Tensor]:
    """The tensors of nested tuples, lists and dicts, in order."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _leaves(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _leaves(item)


def _check_nested_zip(data: bytes, archive: _Archive) -> None:
    """The sample inputs are a ``torch.save`` zip: same size checks before torch reads it."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise pt2_error(
            archive.name,
            f"holds a {SAMPLE_INPUTS} that is not a torch.save file "
            "(torch would unpickle it with weights_only=False)",
            REEXPORT,
        ) from None
    declared = sum(i.file_size for i in infos)
    if len(infos) > MAX_MEMBERS or (archive.max_bytes is not None and declared > archive.max_bytes):
        raise pt2_error(
            archive.name,
            f"has a {SAMPLE_INPUTS} declaring {megabytes(declared)} once uncompressed "
            "(a zip bomb?)",
            TRUST,
        )


# ---------------------------------------------------------------------------- rebuild
def _write_sanitized(archive: _Archive, program: dict, target: Path) -> None:
    """Only checked members, re-serialised JSON and empty sample inputs reach torch."""
    from torch.export.pt2_archive import PT2ArchiveWriter

    with PT2ArchiveWriter(str(target)) as writer:
        writer.write_string(PROGRAM, json.dumps(program))
        for config in (WEIGHTS_CONFIG, CONSTANTS_CONFIG):
            writer.write_string(config, json.dumps(_on_cpu(archive.text(config))))
        writer.write_bytes(SAMPLE_INPUTS, b"")
        for member in archive.members:
            if RAW_MEMBER.fullmatch(member):
                writer.write_bytes(member, archive.read(member))


def _on_cpu(config: dict) -> dict:
    """Load every payload on the CPU (torch would move it to the device it was exported on)."""
    for payload in config["config"].values():
        payload["tensor_meta"]["device"] = {"type": "cpu", "index": None}
    return config


def _rebuild(clean: Path, program: Program, name: str, max_bytes: int | None) -> nn.Module:
    try:
        with _quiet_torch():
            exported = torch.export.load(clean)
            _check_allocations(exported, program, name, max_bytes)
            module = exported.module()
    except CheckpointError:
        raise
    except Exception as err:  # torch raises many types on a bad program
        why = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        if "warnings above" in why:  # torch's log, silenced: say what it usually means
            why = "its deserializer failed: a symbolic size without a range, or a malformed node"
        raise pt2_error(
            name,
            f"passed the safety checks, but torch could not rebuild the program ({why})",
            REEXPORT,
        ) from None
    for sub in module.modules():  # .eval() is refused by ExportedProgram modules
        sub.training = False
    names = [n for n, _ in module.named_parameters()]
    if sorted(names) != sorted(program.parameters):
        raise pt2_error(
            name,
            f"was rebuilt with parameters {names[:4]} that differ from its signature",
            REEXPORT,
        )
    module.register_forward_pre_hook(InputCheck(program.inputs, name), prepend=True)
    return module


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """No log records or warnings while torch reads a file: its error is reported in one line.

    torch logs a whole traceback (140+ lines) before raising on, e.g., a symbol without a
    range. ``logging.disable`` is process-wide; it is restored at once.
    """
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _check_allocations(exported: Any, program: Program, name: str, limit: int | None) -> None:
    """Run the graph on fake tensors (shapes only); refuse any step above ``limit`` bytes.

    A graph can allocate at run time whatever its arguments say (``aten.ones([30000,
    30000])``: 3.4 GB from a few bytes of JSON); propagating fake tensors at the example
    input shapes computes every intermediate's size without allocating any of them.
    """
    if limit is None:
        return
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        args = _fake_inputs(exported, program, mode)
        try:
            _Sizes(exported.graph_module, limit, name).run(*args)
        except CheckpointError:
            raise
        except Exception as err:  # an operator without shape rules, a bad argument
            why = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            raise pt2_error(
                name, f"cannot be checked before running it ({why})", UNSUPPORTED
            ) from None


class _Sizes(torch.fx.Interpreter):
    """Runs a graph (on fake tensors) and refuses the first step above ``limit`` bytes."""

    def __init__(self, gm: torch.fx.GraphModule, limit: int, name: str) -> None:
        super().__init__(gm)
        self.extra_traceback = False
        self.limit, self.name = limit, name

    def run_node(self, node: torch.fx.Node) -> Any:
        """Run one node and check the size of what it returns."""
        out = super().run_node(node)
        leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, Tensor)]
        nbytes = sum(t.numel() * t.element_size() for t in leaves)
        if nbytes > self.limit:
            raise pt2_error(
                self.name,
                f"would allocate {megabytes(nbytes)} in one step ({node.target} -> "
                f"{[tuple(t.shape) for t in leaves][:2]}), over the {megabytes(self.limit)} "
                "limit, at its example input shape",
                TRUST,
            )
        return out


def _fake_inputs(exported: Any, program: Program, mode: Any) -> list:
    """The graph's placeholders: its weights as fake tensors, inputs of the example shapes."""
    from torch.export.graph_signature import InputKind

    users = iter(program.inputs)
    out = []
    for spec in exported.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            user = next(users)
            shape = [s if s is not None else 2 for s in user.example]
            with mode:
                out.append(torch.empty(shape, dtype=getattr(torch, user.dtype)))
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
            value = exported.state_dict.get(spec.target)
            if value is None:  # a non-persistent buffer
                value = exported.constants[spec.target]
            out.append(mode.from_tensor(value))
        else:
            out.append(mode.from_tensor(exported.constants[spec.target]))
    return out


class InputCheck:
    """Forward pre-hook: the inputs must fit the shapes the program was exported for.

    Raises ``ValueError`` naming the expected sizes, e.g. the static batch size, instead of
    torch's guard assertion or a wrong result.
    """

    def __init__(self, inputs: list[Input], source: str) -> None:
        self.inputs = inputs
        self.source = source

    def __call__(self, module: nn.Module, args: tuple) -> None:
        """Check ``args`` against the exported input shapes."""
        if len(args) != len(self.inputs) or not all(isinstance(a, Tensor) for a in args):
            raise ValueError(
                f"{self.source} takes {len(self.inputs)} positional tensor input(s) "
                f"({', '.join(i.name for i in self.inputs)}), got {len(args)} argument(s)."
            )
        for spec, x in zip(self.inputs, args, strict=True):
            self._check(spec, tuple(x.shape))

    def _check(self, spec: Input, got: tuple[int, ...]) -> None:
        shape = tuple("N" if s is None else s for s in spec.shape)
        if len(got) != len(spec.shape):
            raise ValueError(f"{self.source} expects {spec.name} of shape {shape}, got {got}.")
        if got and spec.shape[0] is not None and got[0] != spec.shape[0]:
            raise ValueError(
                f"{self.source} was exported with a fixed batch size of {spec.shape[0]}: feed "
                f"batches of {spec.shape[0]} (got {got[0]}), or re-export it with "
                f"dynamic_shapes={{'{spec.name}': {{0: torch.export.Dim('batch')}}}}."
            )
        for dim, (size, want, bounds) in enumerate(zip(got, spec.shape, spec.ranges, strict=True)):
            low, high = bounds or (0, None)
            if (want is not None and size != want) or size < low or (high and size > high):
                raise ValueError(
                    f"{self.source} expects {spec.name} of shape {shape}, dim {dim} in "
                    f"[{low}, {high if high is not None else 'inf'}] where dynamic; got {got}."
                )


def _meta(
    module: nn.Module, program: Program, examples: list | None, archive: _Archive
) -> dict[str, Any]:
    first = program.inputs[0]
    version = program.json.get("schema_version") or {}
    return {
        "format": "torch.export",
        "model": {"name": "export", "kwargs": {}},
        "source": archive.name,
        "torch_version": str(program.json.get("torch_version", "unknown"))[:40],
        "schema_version": f"{version.get('major')}.{version.get('minor')}",
        "parameters": sum(p.numel() for p in module.parameters()),
        "parameter_tensors": len(program.parameters),
        "inputs": [
            {"name": i.name, "shape": i.shape, "example_shape": i.example, "dtype": i.dtype}
            for i in program.inputs
        ],
        "input_shape": first.shape,
        "static_batch_size": first.shape[0] if first.shape else None,
        "example_inputs": examples,
        "train_mode_ops": program.train_mode_ops,
        "dropped_guards": program.dropped_guards,
        "operators": program.operators,
        "extra_files": sorted(
            m[len("extra/") :] for m in archive.members if m.startswith("extra/")
        ),
    }
