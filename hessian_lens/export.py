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

import ast
import contextlib
import io
import json
import keyword
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

from hessian_lens.checkpoint import DEFAULT_MAX_BYTES, CheckpointError, check_pickle
from hessian_lens.files import UnsafeFileError, loads_bounded

CHUNK = 1 << 20
MAX_MEMBERS = 100_000
MAX_EXPR_CHARS = 4000
MAX_EXPR_NODES = 2000
MAX_CALL_ARGS = 32
#: Max / Min / And / Or take at most this many arguments: sympy compares every pair of
#: them (200 arguments took minutes), and all such calls of a program together may cost at
#: most MAX_PAIRWISE_COST (the sum of their squared argument counts).
MAX_PAIRWISE_ARGS = 8
MAX_PAIRWISE_COST = 2000
MAX_PROGRAM_EXPR_NODES = 200_000
MAX_INT = 2**63
MAX_JSON_DEPTH = 64  # a program's JSON is about 12 deep; its values are checked one by one

PROGRAM = "models/model.json"
WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
SAMPLE_INPUTS = "data/sample_inputs/model.pt"
FORMAT_MEMBERS = ("archive_format", "archive_version")
WRITER_MEMBERS = ("byteorder", ".data/version", ".data/serialization_id")

_RAW_MEMBER = re.compile(r"data/(weights/weight|constants/tensor)_\d{1,9}")
_EXTRA_MEMBER = re.compile(r"extra/[\w.\-]{1,200}")
_REFUSED_MEMBERS = (
    (r"data/aotinductor/.*", "AOTInductor compiled code (shared libraries torch would load)"),
    (r"data/constants/opaque_obj_.*", "an opaque Python object torch would read with pickle.loads"),
    (r"data/constants/custom_obj_.*", "a TorchBind object torch would read with its unpickler"),
    (
        r"data/(weights|constants)/[^/]*\.pt",
        "legacy pickled weights (torch.load, weights_only=False)",
    ),
    (r"models/.*", "a second exported program (Hessian Lens reads the one named 'model')"),
)
_OLD_FORMAT = ("serialized_exported_program.json", "serialized_state_dict.pt", "version")

_ATEN_TARGET = re.compile(r"torch\.ops\.aten\.([A-Za-z_]\w{0,100})\.[A-Za-z_]\w{0,100}")
_BLOCKED_ATEN = frozenset({"from_file"})  # reads a file named by the graph
_SYMBOLIC_TARGETS = frozenset(
    {f"_operator.{op}" for op in ("getitem", "add", "sub", "mul", "truediv", "floordiv")}
    | {f"_operator.{op}" for op in ("mod", "neg", "pos", "eq", "ne", "lt", "le", "gt", "ge")}
    | {"_operator.and_", "_operator.or_", "math.trunc", "torch._sym_sqrt"}
    | {f"torch.sym_{op}" for op in ("int", "float", "max", "min", "not", "ite", "sqrt")}
)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")
_KEPT_NODE_METADATA = ("nn_module_stack", "torch_fn")
_FQN = re.compile(r"\w{1,200}(\.\w{1,200}){0,50}", re.ASCII)
_SYMBOL_NAME = re.compile(r"[a-z]{1,8}\d{1,6}")
_FLOAT_TEXT = re.compile(r"-?\d{1,40}(\.\d{0,40})?([eE][-+]?\d{1,3})?")

_SYMPY_FUNCS = frozenset(
    {"Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs"}
    | {"floor", "ceiling", "sign", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality"}
    | {"StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "And", "Or", "Not"}
    | {"Piecewise", "ExprCondPair", "FloorDiv", "ModularIndexing", "Where", "PythonMod"}
    | {"CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural"}
    | {"FloatPow", "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator"}
    | {"TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity"}
)  # sympy's names and those of torch.utils._sympy.functions that torch's deserializer knows
_SYMPY_ATOMS = frozenset({"oo", "zoo", "nan", "true", "false"})
_POW_LIKE = frozenset({"Pow", "PowByNatural", "FloatPow", "LShift", "RShift"})
_ASSUMPTIONS = frozenset(
    {"integer", "positive", "negative", "nonnegative", "nonpositive", "real", "finite"}
    | {"zero", "nonzero", "even", "odd", "rational", "extended_real"}
)
_EXPR_NODES = (
    (ast.Expression, ast.Call, ast.Name, ast.Load, ast.Constant, ast.keyword),
    (ast.UnaryOp, ast.USub, ast.UAdd, ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div),
    (ast.FloorDiv, ast.Mod, ast.Compare, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE),
)  # nested tuples: isinstance accepts them

# schema.ScalarType codes of torch._export.serde (part of the serialised format)
_DTYPES = {
    **{1: torch.uint8, 2: torch.int8, 3: torch.int16, 4: torch.int32, 5: torch.int64},
    **{6: torch.float16, 7: torch.float32, 8: torch.float64, 12: torch.bool, 13: torch.bfloat16},
}
_STRIDED = 7
_LEAF = {"type": None, "context": None, "children_spec": []}


def _in_spec(n_inputs: int) -> list:
    """The serialised pytree spec of ``forward(x1, ..., xn)`` with no keyword arguments."""
    args = {"type": "builtins.tuple", "context": "null", "children_spec": [_LEAF] * n_inputs}
    kwargs = {"type": "builtins.dict", "context": "[]", "children_spec": []}
    return [1, {"type": "builtins.tuple", "context": "null", "children_spec": [args, kwargs]}]


# ---------------------------------------------------------------------------- public API
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
        program = _checked_program(archive)
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
            raise _error(self.name, f"has a corrupt member {member} ({err})", _REDOWNLOAD) from None
        return bytes(out)

    def text(self, member: str) -> Any:
        """A JSON member, parsed (bounded: at most 1,000,000 objects and arrays)."""
        try:
            text = self.read(member).decode("utf-8")
        except ValueError as err:  # bad UTF-8
            raise _error(self.name, f"has invalid JSON in {member} ({err})", _REEXPORT) from None
        try:
            return loads_bounded(text, member, max_depth=MAX_JSON_DEPTH)
        except UnsafeFileError as err:  # too many objects, too deep, bad JSON, 5000-digit ints
            raise _error(self.name, f"has unusable JSON: {err}", _REEXPORT) from None


def _open_zip(path: Path, max_bytes: int | None, name: str) -> zipfile.ZipFile:
    if not path.is_file():
        raise CheckpointError(f"{name}: no such file.")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise _error(name, f"is {_mb(size)}, over the {_mb(max_bytes)} limit", _TRUST)
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise _error(
            name,
            f"is not a torch.export archive: not a readable zip file, maybe truncated ({err})",
            "Re-download it or write it again with torch.export.save(program, 'model.pt2').",
        ) from None


def _members(zf: zipfile.ZipFile, name: str, max_bytes: int | None) -> dict[str, zipfile.ZipInfo]:
    """Check every entry's name, kind, flags and declared size; nothing is inflated here."""
    infos = [i for i in zf.infolist() if not i.filename.endswith("/")]
    if not infos or len(infos) > MAX_MEMBERS:
        raise _error(name, f"is not a torch.export archive: it holds {len(infos)} files", _REEXPORT)
    if any(i.filename in _OLD_FORMAT for i in infos):
        raise _error(
            name, "is in the pre-2.7 torch.export format, whose weights are pickled", _REEXPORT
        )
    root = infos[0].filename.split("/", 1)[0]
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        rel = _relative(info.filename, root, name)
        if rel in members:
            raise _error(name, f"holds {info.filename!r} twice", _REEXPORT)
        _check_entry(info, rel, name)
        members[rel] = info
    declared = sum(i.file_size for i in infos)
    if max_bytes is not None and declared > max_bytes:
        raise _error(
            name,
            f"declares {_mb(declared)} once uncompressed, over the "
            f"{_mb(max_bytes)} limit (a zip bomb?)",
            _TRUST,
        )
    missing = [
        m for m in (*FORMAT_MEMBERS, PROGRAM, WEIGHTS_CONFIG, CONSTANTS_CONFIG) if m not in members
    ]
    if missing:
        raise _error(name, f"is not a torch.export archive: {missing} missing", _REEXPORT)
    return members


def _relative(filename: str, root: str, name: str) -> str:
    prefix = root + "/"
    rel = filename[len(prefix) :] if filename.startswith(prefix) else ""
    if not root or not rel or "\\" in filename or any(p in ("", ".", "..") for p in rel.split("/")):
        raise _error(name, f"holds an unexpected path {filename[:120]!r}", _REEXPORT)
    return rel


def _check_entry(info: zipfile.ZipInfo, rel: str, name: str) -> None:
    if info.flag_bits & 0x1:
        raise _error(name, f"has an encrypted member {rel}", _REEXPORT)
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise _error(
            name, f"has a member {rel} in an unknown compression ({info.compress_type})", _REEXPORT
        )
    for pattern, why in _REFUSED_MEMBERS:
        if re.fullmatch(pattern, rel) and rel != PROGRAM:
            raise _error(
                name, f"holds {rel}: {why}. Hessian Lens never runs code from a file", _REEXPORT
            )
    known = (
        *FORMAT_MEMBERS,
        *WRITER_MEMBERS,
        PROGRAM,
        WEIGHTS_CONFIG,
        CONSTANTS_CONFIG,
        SAMPLE_INPUTS,
    )
    if rel not in known and not _RAW_MEMBER.fullmatch(rel) and not _EXTRA_MEMBER.fullmatch(rel):
        raise _error(name, f"holds an unexpected member {rel[:120]!r}", _REEXPORT)


# ---------------------------------------------------------------------------- program JSON
@dataclass
class _Input:
    name: str
    shape: list[int | None]  # None: dynamic
    example: list[int]
    ranges: list[tuple[int, int | None] | None]
    dtype: str


@dataclass
class _Program:
    json: dict[str, Any]
    parameters: list[str]
    inputs: list[_Input]
    train_mode_ops: list[str]
    operators: list[str]
    dropped_guards: int


def _checked_program(archive: _Archive) -> _Program:
    """Validate the archive's format files, program JSON and payload configs."""
    _check_format(archive)
    program = archive.text(PROGRAM)
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise _error(archive.name, f"has no exported program in {PROGRAM}", _REEXPORT)
    name, gm = archive.name, program["graph_module"]
    _check_values(program, name)
    operators = _check_graph(gm.get("graph"), name)
    specs = _check_signature(gm.get("signature"), name)
    _check_call_graph(gm, len(specs["user_input"]), name)
    ranges = _check_ranges(program.get("range_constraints"), name)
    _check_payloads(archive, specs)
    guards = program.get("guards_code") or []
    program["guards_code"] = []  # Python source exec-ed by ExportedProgram.module()
    inputs = [_input(gm["graph"], n, ranges, name) for n in specs["user_input"]]
    train_ops = _train_mode_ops(gm["graph"])
    return _Program(program, specs["parameter"], inputs, train_ops, operators, len(guards))


def _check_format(archive: _Archive) -> None:
    from torch.export.pt2_archive.constants import ARCHIVE_FORMAT_VALUE, ARCHIVE_VERSION_VALUE

    expected = {
        "archive_format": ARCHIVE_FORMAT_VALUE,
        "archive_version": ARCHIVE_VERSION_VALUE,
        "byteorder": "little",
    }
    for member, value in expected.items():
        if member not in archive.members:  # byteorder: absent from older archives
            continue
        small = archive.members[member].file_size <= 64
        if not small or archive.read(member).decode("utf-8", "replace") != value:
            raise _error(
                archive.name,
                f"has {member} other than {value!r} (written by another torch version or on "
                "another machine)",
                _REEXPORT,
            )


def _walk(obj: Any) -> Iterator[tuple[str, Any]]:
    """Every ``(key, value)`` of nested dicts and lists, iteratively (no recursion limit)."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                yield key, value
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def _check_values(program: dict, name: str) -> None:
    """Symbolic expressions, operator arguments and custom objects anywhere in the JSON.

    The expressions together are bounded too (their nodes, and the pairwise comparisons
    their Max / Min calls cost sympy), so that rebuilding them takes a bounded time.
    """
    budget = _ExprBudget(name)
    for key, value in _walk(program):
        if key == "expr_str":
            budget.charge(_check_expr(value, name), value)
        elif key == "as_operator":
            _check_target(value, name)
        elif key == "as_graph":
            raise _error(name, "holds a subgraph (control flow or a wrapped region)", _UNSUPPORTED)
        elif key in ("name", "as_name") and isinstance(value, str) and not _NAME.fullmatch(value):
            raise _error(
                name,
                f"has a value named {value[:80]!r}, not a Python identifier "
                "(torch pastes names into generated code)",
                _REEXPORT,
            )
        elif key in ("as_custom_obj", "custom_obj") or (key == "custom_obj_values" and value):
            raise _error(
                name,
                "holds custom (TorchBind) objects, which only load by unpickling",
                _UNSUPPORTED,
            )


def _check_graph(graph: Any, name: str) -> list[str]:
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
        raise _error(name, f"has no graph in {PROGRAM}", _REEXPORT)
    targets = set()
    for node in graph["nodes"]:
        if not isinstance(node, dict):
            raise _error(name, f"has a malformed node in {PROGRAM}", _REEXPORT)
        _check_target(node.get("target"), name)
        targets.add(node["target"])
        metadata = node.get("metadata")
        if isinstance(metadata, dict):  # source_fn_stack resolves objects, traces reach code
            node["metadata"] = {k: v for k, v in metadata.items() if k in _KEPT_NODE_METADATA}
    return sorted(t.removeprefix("torch.ops.") for t in targets)


def _train_mode_ops(graph: dict) -> list[str]:
    """Operators traced in train mode (``training=True``: BatchNorm batch statistics, ...)."""
    found = set()
    for node in graph["nodes"]:
        for arg in node.get("inputs") or []:
            if not isinstance(arg, dict):
                continue
            if arg.get("name") in ("training", "train") and arg.get("arg") == {"as_bool": True}:
                found.add(node["target"].removeprefix("torch.ops."))
    return sorted(found)


def _check_target(target: Any, name: str) -> None:
    if not isinstance(target, str):
        raise _error(name, f"has a node without a target in {PROGRAM}", _REEXPORT)
    aten = _ATEN_TARGET.fullmatch(target)
    if (aten and aten.group(1) not in _BLOCKED_ATEN) or target in _SYMBOLIC_TARGETS:
        return
    if target.startswith("torch.ops.higher_order."):
        raise _error(name, f"uses {target[:100]} (control flow or a wrapped region)", _UNSUPPORTED)
    raise _error(
        name,
        f"calls {target[:100]!r}, which is not an ATen operator; Hessian Lens only runs "
        "graphs of torch's own operators (no custom operators)",
        _UNSUPPORTED,
    )


# ---------------------------------------------------------------------------- sympy text
class _ExprBudget:
    """What a program's symbolic expressions may cost sympy, all together."""

    def __init__(self, name: str) -> None:
        self.name, self.nodes, self.pairs = name, 0, 0

    def charge(self, nodes: list[ast.AST], text: str) -> None:
        """Count an expression's nodes and its Max / Min pairs; refuse past the budget."""
        self.nodes += len(nodes)
        self.pairs += sum(
            len(n.args) ** 2
            for n in nodes
            if isinstance(n, ast.Call) and getattr(n.func, "id", None) in _PAIRWISE
        )
        if self.nodes > MAX_PROGRAM_EXPR_NODES or self.pairs > MAX_PAIRWISE_COST:
            raise _error(
                self.name,
                f"holds symbolic sizes too large to rebuild in a bounded time (up to "
                f"{text[:60]!r}: {self.nodes:,} expression nodes, {self.pairs:,} pairwise "
                "comparisons of Max/Min arguments)",
                _REEXPORT,
            )


_PAIRWISE = frozenset({"Max", "Min", "And", "Or"})


def _check_expr(text: Any, name: str) -> list[ast.AST]:
    """Refuse an ``expr_str`` that is more than a small sympy expression.

    torch rebuilds it with ``sympy.sympify``, i.e. ``eval``: only calls of allow-listed sympy
    names on numbers and ``Symbol('s0', positive=True)``-style symbols pass, with bounded
    powers and shifts (no ``10**10**10``).
    """
    if not isinstance(text, str) or len(text) > MAX_EXPR_CHARS:
        raise _bad_expr(text, name)
    try:
        nodes = list(ast.walk(ast.parse(text, mode="eval")))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise _bad_expr(text, name) from None
    if len(nodes) > MAX_EXPR_NODES:
        raise _bad_expr(text, name)
    strings: set[int] = set()
    for node in nodes:  # breadth first: a call is seen before its arguments
        if not _expr_node_ok(node, strings):
            raise _bad_expr(text, name)
    return nodes


def _expr_node_ok(node: ast.AST, strings: set[int]) -> bool:
    if not isinstance(node, _EXPR_NODES):
        return False
    if isinstance(node, ast.Call):
        return _call_ok(node, strings)
    if isinstance(node, ast.Name):  # a bare symbol (str() rather than srepr()) is harmless
        return node.id in _SYMPY_FUNCS or node.id in _SYMPY_ATOMS or _bare_symbol(node)
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, str):
            return id(node) in strings
        if isinstance(value, float):
            return math.isfinite(value)
        return (
            value is None
            or isinstance(value, bool)
            or (isinstance(value, int) and abs(value) < MAX_INT)
        )
    return True


def _bare_symbol(node: ast.Name) -> bool:
    return _SYMBOL_NAME.fullmatch(node.id) is not None


def _call_ok(node: ast.Call, strings: set[int]) -> bool:
    func = node.func.id if isinstance(node.func, ast.Name) else None
    if func not in _SYMPY_FUNCS or not all(_keyword_ok(k, func) for k in node.keywords):
        return False
    args = node.args
    if len(args) > (MAX_PAIRWISE_ARGS if func in _PAIRWISE else MAX_CALL_ARGS):
        return False
    if func in ("Symbol", "Float") and args and isinstance(args[0], ast.Constant):
        pattern = _SYMBOL_NAME if func == "Symbol" else _FLOAT_TEXT
        if isinstance(args[0].value, str) and pattern.fullmatch(args[0].value):
            strings.add(id(args[0]))
    if func in _POW_LIKE:
        base_has_pow = (
            any(
                isinstance(n, ast.Call) and getattr(n.func, "id", None) in _POW_LIKE
                for n in ast.walk(args[0])
            )
            if args
            else False
        )
        return len(args) == 2 and not base_has_pow and _small(args[1])
    return True


def _keyword_ok(kw: ast.keyword, func: str) -> bool:
    value = kw.value.value if isinstance(kw.value, ast.Constant) else None
    if func == "Symbol" and kw.arg in _ASSUMPTIONS:
        return isinstance(value, bool)
    if func == "Float" and kw.arg == "precision":
        return isinstance(value, int) and 0 < value <= 1024
    return False


def _small(node: ast.AST) -> bool:
    """An exponent or shift that cannot blow up: |n| <= 64, or a symbol."""
    for _ in range(3):  # unwrap -Integer(-n)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            node = node.operand
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Symbol":
            return True
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Integer":
            node = node.args[0] if len(node.args) == 1 else node
    return isinstance(node, ast.Constant) and type(node.value) is int and abs(node.value) <= 64


def _bad_expr(text: Any, name: str) -> CheckpointError:
    shown = str(text)[:80]
    return _error(
        name,
        f"holds a symbolic size {shown!r} that is not a plain sympy "
        "expression (torch would eval it)",
        _REEXPORT,
    )


# ---------------------------------------------------------------------------- signature
_INPUT_KINDS = {
    "parameter": "parameter_name",
    "buffer": "buffer_name",
    "tensor_constant": "tensor_constant_name",
}


def _check_signature(signature: Any, name: str) -> dict[str, list]:
    """Names by kind: parameter, buffer, constant (non-persistent too), user_input, mutation."""
    if not isinstance(signature, dict):
        raise _error(name, f"has no signature in {PROGRAM}", _REEXPORT)
    out: dict[str, list] = {
        k: [] for k in ("parameter", "buffer", "constant", "user_input", "mutation", "user_output")
    }
    for spec in signature.get("input_specs") or []:
        _input_spec(spec, out, name)
    for spec in signature.get("output_specs") or []:
        _output_spec(spec, out, name)
    if not out["user_input"] or len(out["user_output"]) != 1:
        raise _error(
            name,
            "does not map input tensors to one output tensor (Hessian Lens "
            "calls model(x) and feeds the output to the loss)",
            _UNSUPPORTED,
        )
    return out


def _input_spec(spec: Any, out: dict[str, list], name: str) -> None:
    kind, body = _union(spec, name)
    if kind in _INPUT_KINDS:
        fqn = body.get(_INPUT_KINDS[kind])
        _check_fqn(fqn, name)
        persistent = kind != "tensor_constant" and body.get("persistent", True) is not False
        out[kind if persistent else "constant"].append(fqn)
    elif kind == "user_input" and _tensor_name(body.get("arg")):
        out["user_input"].append(_tensor_name(body["arg"]))
    elif kind == "user_input":
        raise _error(name, "takes non-tensor inputs", _UNSUPPORTED)
    else:
        raise _error(name, f"has inputs of kind {kind!r}", _UNSUPPORTED)


def _output_spec(spec: Any, out: dict[str, list], name: str) -> None:
    kind, body = _union(spec, name)
    if kind == "user_output" and _tensor_name(body.get("arg")):
        out["user_output"].append(_tensor_name(body["arg"]))
    elif kind == "buffer_mutation":
        out["mutation"].append(body.get("buffer_name"))
    else:
        raise _error(
            name,
            f"has outputs of kind {kind!r} (a non-tensor output, a loss or "
            "gradients, or a mutation of parameters or inputs)",
            _UNSUPPORTED,
        )


def _union(spec: Any, name: str) -> tuple[str, dict]:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise _error(name, f"has a malformed signature in {PROGRAM}", _REEXPORT)
    kind, body = next(iter(spec.items()))
    if not isinstance(body, dict):
        raise _error(name, f"has a malformed signature in {PROGRAM}", _REEXPORT)
    return kind, body


def _tensor_name(arg: Any) -> str | None:
    tensor = arg.get("as_tensor") if isinstance(arg, dict) else None
    return tensor.get("name") if isinstance(tensor, dict) else None


def _check_fqn(fqn: Any, name: str) -> None:
    if not isinstance(fqn, str) or not _FQN.fullmatch(fqn):
        raise _error(name, f"has a tensor named {str(fqn)[:80]!r}", _REEXPORT)


def _check_call_graph(gm: dict, n_inputs: int, name: str) -> None:
    """The forward's calling convention, pasted by torch into generated Python source."""
    calls = gm.get("module_call_graph")
    calls = calls if isinstance(calls, list) and calls else [{}]
    root = calls[0] if isinstance(calls[0], dict) else {}
    sig = root.get("signature")
    if root.get("fqn") != "" or not isinstance(sig, dict):
        raise _error(name, f"has no call signature in {PROGRAM}", _REEXPORT)
    args = sig.get("forward_arg_names")
    if args is not None and not (
        isinstance(args, list) and len(args) == n_inputs and all(map(_identifier, args))
    ):
        raise _error(name, "has forward argument names that are not Python identifiers", _REEXPORT)
    if _spec_json(sig.get("in_spec")) != _in_spec(n_inputs):
        raise _error(
            name,
            "takes keyword, nested or non-tensor inputs (Hessian Lens calls "
            "model(x) with positional tensors)",
            _UNSUPPORTED,
        )
    if _spec_json(sig.get("out_spec")) != [1, _LEAF]:
        raise _error(name, "does not return a single tensor", _UNSUPPORTED)
    if gm.get("treespec_namedtuple_fields") or any(
        not isinstance(c, dict) or c.get("signature") is not None or not _fqn_or_root(c)
        for c in calls[1:]
    ):
        raise _error(name, "preserves submodule call signatures", _UNSUPPORTED)


def _identifier(text: Any) -> bool:
    return isinstance(text, str) and text.isidentifier() and not keyword.iskeyword(text)


def _fqn_or_root(call: dict) -> bool:
    fqn = call.get("fqn")
    return fqn == "" or (isinstance(fqn, str) and _FQN.fullmatch(fqn) is not None)


def _spec_json(text: Any) -> Any:
    try:
        return json.loads(text) if isinstance(text, str) and len(text) < 100_000 else None
    except (json.JSONDecodeError, RecursionError):
        return None


def _check_ranges(ranges: Any, name: str) -> dict[str, tuple[int, int | None]]:
    """Symbol ranges, e.g. ``{"s77": (2, None)}``; torch loops up to unbacked indices."""
    out = {}
    if not isinstance(ranges, dict):
        raise _error(name, f"has no range constraints in {PROGRAM}", _REEXPORT)
    for symbol, bounds in ranges.items():
        lo = bounds.get("min_val") if isinstance(bounds, dict) else None
        hi = bounds.get("max_val") if isinstance(bounds, dict) else None
        if not (
            _SYMBOL_NAME.fullmatch(symbol)
            and all(v is None or (type(v) is int and abs(v) < MAX_INT) for v in (lo, hi))
        ):
            raise _error(name, f"has a malformed range for {symbol[:40]!r}", _REEXPORT)
        out[symbol] = (lo if lo is not None else 0, hi)
    return out


def _input(graph: dict, tensor: str, ranges: dict, name: str) -> _Input:
    """Shape, example shape, ranges and dtype of one user input, from the graph's metadata."""
    meta = (graph.get("tensor_values") or {}).get(tensor)
    if not isinstance(meta, dict) or not isinstance(meta.get("sizes"), list):
        raise _error(name, f"has no shape for input {tensor!r} in {PROGRAM}", _REEXPORT)
    shape, example, bounds = [], [], []
    for size in meta["sizes"]:
        static = size.get("as_int") if isinstance(size, dict) else None
        expr = (size.get("as_expr") or {}) if isinstance(size, dict) else {}
        hint = (expr.get("hint") or {}).get("as_int") if isinstance(expr, dict) else None
        shape.append(static if type(static) is int else None)
        example.append(static if type(static) is int else hint)
        bounds.append(None if type(static) is int else ranges.get(_symbol(expr)))
    dtype = _DTYPES.get(meta.get("dtype"))
    return _Input(tensor, shape, example, bounds, str(dtype).removeprefix("torch."))


def _symbol(expr: Any) -> str | None:
    """``s77`` for ``Symbol('s77', ...)`` (already checked by :func:`_check_expr`), else None."""
    text = expr.get("expr_str") if isinstance(expr, dict) else None
    call = ast.parse(text, mode="eval").body if isinstance(text, str) else None
    if isinstance(call, ast.Name):
        return call.id
    if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Symbol" and call.args:
        return getattr(call.args[0], "value", None)
    return None


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
            raise _error(
                archive.name, f"has a {config} that does not match the program's {kind}", _REEXPORT
            )
        for fqn, payload in entries.items():
            member, nbytes = _check_payload(archive, kind, fqn, payload)
            used.add(member)
            total += nbytes
    if archive.max_bytes is not None and total > archive.max_bytes:
        raise _error(archive.name, f"declares {_mb(total)} of tensors, over the limit", _TRUST)
    unused = [m for m in archive.members if _RAW_MEMBER.fullmatch(m) and m not in used]
    if unused:
        raise _error(archive.name, f"holds members no config refers to: {unused[:4]}", _REEXPORT)


def _config(archive: _Archive, member: str) -> dict[str, Any]:
    config = archive.text(member)
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise _error(archive.name, f"has a malformed {member}", _REEXPORT)
    return entries


def _check_payload(archive: _Archive, kind: str, fqn: str, payload: Any) -> tuple[str, int]:
    """The member holding a raw (never pickled) payload, and the bytes of its tensor."""
    name = archive.name
    if not isinstance(payload, dict) or payload.get("use_pickle") is not False:
        raise _error(
            name,
            f"stores {kind[:-1]} {fqn[:80]!r} with pickle (a tensor subclass or "
            "a Python object); torch.export.load would unpickle it",
            _UNSUPPORTED,
        )
    prefix = "data/weights/weight" if kind == "weights" else "data/constants/tensor"
    member = f"{prefix.rsplit('/', 1)[0]}/{payload.get('path_name')}"
    if not member.startswith(prefix) or member not in archive.members:
        raise _error(name, f"has no data for {kind[:-1]} {fqn[:80]!r}", _REEXPORT)
    nbytes, extent = _tensor_bytes(payload.get("tensor_meta"), fqn, name)
    stored = archive.members[member].file_size
    if stored and stored < extent:
        raise _error(name, f"has a {member} too short for {fqn!r}", _REDOWNLOAD)
    return member, nbytes


def _tensor_bytes(meta: Any, fqn: str, name: str) -> tuple[int, int]:
    """``(numel * itemsize, bytes spanned in storage)`` of a plain strided tensor."""
    meta = meta if isinstance(meta, dict) else {}
    dtype = _DTYPES.get(meta.get("dtype"))
    sizes, strides = _ints(meta.get("sizes")), _ints(meta.get("strides"))
    offset = _ints([meta.get("storage_offset")])
    if dtype is None or meta.get("layout") != _STRIDED or None in (sizes, strides, offset):
        raise _error(
            name,
            f"holds {fqn[:80]!r}, not a plain dense tensor of a supported dtype with static sizes",
            _UNSUPPORTED,
        )
    if len(sizes) != len(strides) or len(sizes) > 64:
        raise _error(name, f"has malformed sizes for {fqn[:80]!r}", _REEXPORT)
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
        raise _error(
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
        raise _error(
            archive.name,
            f"holds a {SAMPLE_INPUTS} that is not a torch.save file "
            "(torch would unpickle it with weights_only=False)",
            _REEXPORT,
        ) from None
    declared = sum(i.file_size for i in infos)
    if len(infos) > MAX_MEMBERS or (archive.max_bytes is not None and declared > archive.max_bytes):
        raise _error(
            archive.name,
            f"has a {SAMPLE_INPUTS} declaring {_mb(declared)} once uncompressed (a zip bomb?)",
            _TRUST,
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
            if _RAW_MEMBER.fullmatch(member):
                writer.write_bytes(member, archive.read(member))


def _on_cpu(config: dict) -> dict:
    """Load every payload on the CPU (torch would move it to the device it was exported on)."""
    for payload in config["config"].values():
        payload["tensor_meta"]["device"] = {"type": "cpu", "index": None}
    return config


def _rebuild(clean: Path, program: _Program, name: str, max_bytes: int | None) -> nn.Module:
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
        raise _error(
            name,
            f"passed the safety checks, but torch could not rebuild the program ({why})",
            _REEXPORT,
        ) from None
    for sub in module.modules():  # .eval() is refused by ExportedProgram modules
        sub.training = False
    names = [n for n, _ in module.named_parameters()]
    if sorted(names) != sorted(program.parameters):
        raise _error(
            name,
            f"was rebuilt with parameters {names[:4]} that differ from its signature",
            _REEXPORT,
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


def _check_allocations(exported: Any, program: _Program, name: str, limit: int | None) -> None:
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
            raise _error(
                name, f"cannot be checked before running it ({why})", _UNSUPPORTED
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
            raise _error(
                self.name,
                f"would allocate {_mb(nbytes)} in one step ({node.target} -> "
                f"{[tuple(t.shape) for t in leaves][:2]}), over the {_mb(self.limit)} "
                "limit, at its example input shape",
                _TRUST,
            )
        return out


def _fake_inputs(exported: Any, program: _Program, mode: Any) -> list:
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

    def __init__(self, inputs: list[_Input], source: str) -> None:
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

    def _check(self, spec: _Input, got: tuple[int, ...]) -> None:
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
    module: nn.Module, program: _Program, examples: list | None, archive: _Archive
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


# ---------------------------------------------------------------------------- messages
_REEXPORT = "Write it again with torch.export.save(torch.export.export(model, (x,)), 'model.pt2')."
_REDOWNLOAD = "Re-download it or write it again with torch.export.save."
_TRUST = "Raise the limit (max_bytes / HESSIAN_LENS_MAX_UPLOAD_MB) only if you trust the file."
_UNSUPPORTED = (
    "Hessian Lens reads programs of plain ATen operators with tensor inputs, one tensor "
    "output and raw tensor weights; export such a model (or use a .pt / .safetensors "
    "state_dict with a named architecture)."
)


def _error(name: str, what: str, todo: str) -> CheckpointError:
    return CheckpointError(f"{name} {what}. {todo}")


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"
