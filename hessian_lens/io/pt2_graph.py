"""The graph of a ``.pt2`` archive, checked before torch reads it (:mod:`hessian_lens.io.pt2`).

The program JSON: node targets must be ``torch.ops.aten.*`` or a fixed set of
symbolic-size operators; every ``expr_str`` is parsed with :mod:`ast` (which runs nothing)
and must be a small sympy expression built from an allow-list of names; every node and
argument name is an identifier, parameter and buffer names dotted identifiers; the forward
takes positional tensors only and returns one tensor; symbol ranges are bounded.
``guards_code`` is emptied and node metadata other than ``nn_module_stack`` / ``torch_fn``
dropped. The limits and the messages of both modules live here.
"""

from __future__ import annotations

import ast
import json
import keyword
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from hessian_lens.errors import CheckpointError

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

RAW_MEMBER = re.compile(r"data/(weights/weight|constants/tensor)_\d{1,9}")
EXTRA_MEMBER = re.compile(r"extra/[\w.\-]{1,200}")
REFUSED_MEMBERS = (
    (r"data/aotinductor/.*", "AOTInductor compiled code (shared libraries torch would load)"),
    (r"data/constants/opaque_obj_.*", "an opaque Python object torch would read with pickle.loads"),
    (r"data/constants/custom_obj_.*", "a TorchBind object torch would read with its unpickler"),
    (
        r"data/(weights|constants)/[^/]*\.pt",
        "legacy pickled weights (torch.load, weights_only=False)",
    ),
    (r"models/.*", "a second exported program (Hessian Lens reads the one named 'model')"),
)
OLD_FORMAT = ("serialized_exported_program.json", "serialized_state_dict.pt", "version")

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
DTYPES = {
    **{1: torch.uint8, 2: torch.int8, 3: torch.int16, 4: torch.int32, 5: torch.int64},
    **{6: torch.float16, 7: torch.float32, 8: torch.float64, 12: torch.bool, 13: torch.bfloat16},
}
STRIDED = 7
LEAF = {"type": None, "context": None, "children_spec": []}


@dataclass
class Input:
    """A forward input of the program: its name, shapes, symbol ranges and dtype."""

    name: str
    shape: list[int | None]  # None: dynamic
    example: list[int]
    ranges: list[tuple[int, int | None] | None]
    dtype: str


@dataclass
class Program:
    """The checked program JSON and what the model card shows of it."""

    json: dict[str, Any]
    parameters: list[str]
    inputs: list[Input]
    train_mode_ops: list[str]
    operators: list[str]
    dropped_guards: int
    specs: dict[str, list] = field(default_factory=dict)  # the signature's names by kind


def checked_program(archive: Any) -> Program:
    """Validate the archive's format files and program JSON (the payloads: :mod:`pt2`).

    ``archive``: :mod:`hessian_lens.io.pt2`'s reader (``name``, ``text(member)``, ...).
    """
    _check_format(archive)
    program = archive.text(PROGRAM)
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise pt2_error(archive.name, f"has no exported program in {PROGRAM}", REEXPORT)
    name, gm = archive.name, program["graph_module"]
    _check_values(program, name)
    operators = _check_graph(gm.get("graph"), name)
    specs = _check_signature(gm.get("signature"), name)
    _check_call_graph(gm, len(specs["user_input"]), name)
    ranges = _check_ranges(program.get("range_constraints"), name)
    guards = program.get("guards_code") or []
    program["guards_code"] = []  # Python source exec-ed by ExportedProgram.module()
    inputs = [_input(gm["graph"], n, ranges, name) for n in specs["user_input"]]
    train_ops = _train_mode_ops(gm["graph"])
    return Program(program, specs["parameter"], inputs, train_ops, operators, len(guards), specs)


def _check_format(archive: Any) -> None:
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
            raise pt2_error(
                archive.name,
                f"has {member} other than {value!r} (written by another torch version or on "
                "another machine)",
                REEXPORT,
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
            raise pt2_error(
                name, "holds a subgraph (control flow or a wrapped region)", UNSUPPORTED
            )
        elif key in ("name", "as_name") and isinstance(value, str) and not _NAME.fullmatch(value):
            raise pt2_error(
                name,
                f"has a value named {value[:80]!r}, not a Python identifier "
                "(torch pastes names into generated code)",
                REEXPORT,
            )
        elif key in ("as_custom_obj", "custom_obj") or (key == "custom_obj_values" and value):
            raise pt2_error(
                name,
                "holds custom (TorchBind) objects, which only load by unpickling",
                UNSUPPORTED,
            )


def _check_graph(graph: Any, name: str) -> list[str]:
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
        raise pt2_error(name, f"has no graph in {PROGRAM}", REEXPORT)
    targets = set()
    for node in graph["nodes"]:
        if not isinstance(node, dict):
            raise pt2_error(name, f"has a malformed node in {PROGRAM}", REEXPORT)
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
        raise pt2_error(name, f"has a node without a target in {PROGRAM}", REEXPORT)
    aten = _ATEN_TARGET.fullmatch(target)
    if (aten and aten.group(1) not in _BLOCKED_ATEN) or target in _SYMBOLIC_TARGETS:
        return
    if target.startswith("torch.ops.higher_order."):
        raise pt2_error(
            name, f"uses {target[:100]} (control flow or a wrapped region)", UNSUPPORTED
        )
    raise pt2_error(
        name,
        f"calls {target[:100]!r}, which is not an ATen operator; Hessian Lens only runs "
        "graphs of torch's own operators (no custom operators)",
        UNSUPPORTED,
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
            raise pt2_error(
                self.name,
                f"holds symbolic sizes too large to rebuild in a bounded time (up to "
                f"{text[:60]!r}: {self.nodes:,} expression nodes, {self.pairs:,} pairwise "
                "comparisons of Max/Min arguments)",
                REEXPORT,
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
    return pt2_error(
        name,
        f"holds a symbolic size {shown!r} that is not a plain sympy "
        "expression (torch would eval it)",
        REEXPORT,
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
        raise pt2_error(name, f"has no signature in {PROGRAM}", REEXPORT)
    out: dict[str, list] = {
        k: [] for k in ("parameter", "buffer", "constant", "user_input", "mutation", "user_output")
    }
    for spec in signature.get("input_specs") or []:
        _input_spec(spec, out, name)
    for spec in signature.get("output_specs") or []:
        _output_spec(spec, out, name)
    if not out["user_input"] or len(out["user_output"]) != 1:
        raise pt2_error(
            name,
            "does not map input tensors to one output tensor (Hessian Lens "
            "calls model(x) and feeds the output to the loss)",
            UNSUPPORTED,
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
        raise pt2_error(name, "takes non-tensor inputs", UNSUPPORTED)
    else:
        raise pt2_error(name, f"has inputs of kind {kind!r}", UNSUPPORTED)


def _output_spec(spec: Any, out: dict[str, list], name: str) -> None:
    kind, body = _union(spec, name)
    if kind == "user_output" and _tensor_name(body.get("arg")):
        out["user_output"].append(_tensor_name(body["arg"]))
    elif kind == "buffer_mutation":
        out["mutation"].append(body.get("buffer_name"))
    else:
        raise pt2_error(
            name,
            f"has outputs of kind {kind!r} (a non-tensor output, a loss or "
            "gradients, or a mutation of parameters or inputs)",
            UNSUPPORTED,
        )


def _union(spec: Any, name: str) -> tuple[str, dict]:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise pt2_error(name, f"has a malformed signature in {PROGRAM}", REEXPORT)
    kind, body = next(iter(spec.items()))
    if not isinstance(body, dict):
        raise pt2_error(name, f"has a malformed signature in {PROGRAM}", REEXPORT)
    return kind, body


def _tensor_name(arg: Any) -> str | None:
    tensor = arg.get("as_tensor") if isinstance(arg, dict) else None
    return tensor.get("name") if isinstance(tensor, dict) else None


def _check_fqn(fqn: Any, name: str) -> None:
    if not isinstance(fqn, str) or not _FQN.fullmatch(fqn):
        raise pt2_error(name, f"has a tensor named {str(fqn)[:80]!r}", REEXPORT)


def _check_call_graph(gm: dict, n_inputs: int, name: str) -> None:
    """The forward's calling convention, pasted by torch into generated Python source."""
    calls = gm.get("module_call_graph")
    calls = calls if isinstance(calls, list) and calls else [{}]
    root = calls[0] if isinstance(calls[0], dict) else {}
    sig = root.get("signature")
    if root.get("fqn") != "" or not isinstance(sig, dict):
        raise pt2_error(name, f"has no call signature in {PROGRAM}", REEXPORT)
    args = sig.get("forward_arg_names")
    if args is not None and not (
        isinstance(args, list) and len(args) == n_inputs and all(map(_identifier, args))
    ):
        raise pt2_error(
            name, "has forward argument names that are not Python identifiers", REEXPORT
        )
    if _spec_json(sig.get("in_spec")) != _in_spec(n_inputs):
        raise pt2_error(
            name,
            "takes keyword, nested or non-tensor inputs (Hessian Lens calls "
            "model(x) with positional tensors)",
            UNSUPPORTED,
        )
    if _spec_json(sig.get("out_spec")) != [1, LEAF]:
        raise pt2_error(name, "does not return a single tensor", UNSUPPORTED)
    if gm.get("treespec_namedtuple_fields") or any(
        not isinstance(c, dict) or c.get("signature") is not None or not _fqn_or_root(c)
        for c in calls[1:]
    ):
        raise pt2_error(name, "preserves submodule call signatures", UNSUPPORTED)


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
        raise pt2_error(name, f"has no range constraints in {PROGRAM}", REEXPORT)
    for symbol, bounds in ranges.items():
        lo = bounds.get("min_val") if isinstance(bounds, dict) else None
        hi = bounds.get("max_val") if isinstance(bounds, dict) else None
        if not (
            _SYMBOL_NAME.fullmatch(symbol)
            and all(v is None or (type(v) is int and abs(v) < MAX_INT) for v in (lo, hi))
        ):
            raise pt2_error(name, f"has a malformed range for {symbol[:40]!r}", REEXPORT)
        out[symbol] = (lo if lo is not None else 0, hi)
    return out


def _input(graph: dict, tensor: str, ranges: dict, name: str) -> Input:
    """Shape, example shape, ranges and dtype of one user input, from the graph's metadata."""
    meta = (graph.get("tensor_values") or {}).get(tensor)
    if not isinstance(meta, dict) or not isinstance(meta.get("sizes"), list):
        raise pt2_error(name, f"has no shape for input {tensor!r} in {PROGRAM}", REEXPORT)
    shape, example, bounds = [], [], []
    for size in meta["sizes"]:
        static = size.get("as_int") if isinstance(size, dict) else None
        expr = (size.get("as_expr") or {}) if isinstance(size, dict) else {}
        hint = (expr.get("hint") or {}).get("as_int") if isinstance(expr, dict) else None
        shape.append(static if type(static) is int else None)
        example.append(static if type(static) is int else hint)
        bounds.append(None if type(static) is int else ranges.get(_symbol(expr)))
    dtype = DTYPES.get(meta.get("dtype"))
    return Input(tensor, shape, example, bounds, str(dtype).removeprefix("torch."))


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


def _in_spec(n_inputs: int) -> list:
    """The serialised pytree spec of ``forward(x1, ..., xn)`` with no keyword arguments."""
    args = {"type": "builtins.tuple", "context": "null", "children_spec": [LEAF] * n_inputs}
    kwargs = {"type": "builtins.dict", "context": "[]", "children_spec": []}
    return [1, {"type": "builtins.tuple", "context": "null", "children_spec": [args, kwargs]}]


# ---------------------------------------------------------------------------- public API


# ---------------------------------------------------------------------------- messages
REEXPORT = "Write it again with torch.export.save(torch.export.export(model, (x,)), 'model.pt2')."
REDOWNLOAD = "Re-download it or write it again with torch.export.save."
TRUST = "Raise the limit (max_bytes / HESSIAN_LENS_MAX_UPLOAD_MB) only if you trust the file."
UNSUPPORTED = (
    "Hessian Lens reads programs of plain ATen operators with tensor inputs, one tensor "
    "output and raw tensor weights; export such a model (or use a .pt / .safetensors "
    "state_dict with a named architecture)."
)


def pt2_error(name: str, what: str, todo: str) -> CheckpointError:
    """The one-line refusal of a ``.pt2``: the file, what is wrong, what to do."""
    return CheckpointError(f"{name} {what}. {todo}")


def megabytes(n: int) -> str:
    """``n`` bytes in MB, for messages."""
    return f"{n / 2**20:,.1f} MB"
