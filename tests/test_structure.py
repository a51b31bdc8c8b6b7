"""The package's shape: its import graph has no cycle and no upward arrow, modules stay small.

The graph is built with ``ast`` from every module of ``hessian_lens`` (imports inside
functions included, as they run too). Every module sits in one layer of :data:`LAYERS`,
from the helpers at the bottom to the entry points at the top; a module may import its
own layer (without a cycle) and the layers below, never one above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "hessian_lens"
MAX_LINES = 800

#: Bottom to top. A module's layer is the first whose prefixes match its dotted name.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # no hessian_lens imports, or only each other: settings, errors, limits, algebra
    (
        "helpers",
        (
            "version",
            "errors",
            "labels",
            "settings",
            "losses",
            "linalg",
            "distributed",
            "paper",
            "batches",
            "normalizers",
            "memory",
            "loader",
            "writerlock",
            "textfiles",
            "matching",
        ),
    ),
    # safe reading of untrusted files, no model built: bounded I/O, pickles, .pt2, .pt
    ("io", ("io",)),
    # models, their groups, their data; building a model from a file or a name
    (
        "models",
        (
            "models",
            "modelsize",
            "heads",
            "partition",
            "hf",
            "registry",
            "reference",
            "checkpoint",
            "hf_folders",
            "text",
            "tokenized",
            "data",
            "addition",
            "subsets",
        ),
    ),
    # the engine and what it measures
    (
        "engine",
        (
            "engine",
            "summary",
            "optim",
            "measures",
            "split",
            "spectra",
            "heterogeneity",
            "hierarchy",
        ),
    ),
    # runs on disk: the store, analysis, training, inspection, reading stored results
    (
        "runs",
        (
            "store",
            "runfolder",
            "runs",
            "analyze",
            "inspection",
            "train",
            "taylor",
            "listing",
            "runcard",
            "measured",
            "uploads",
        ),
    ),
    # figures and pages as files
    ("views", ("plots", "images", "figexport", "report")),
    # a training loop's outputs: the Recorder, its loggers, the Lightning and HF callbacks
    ("integrations", ("recorder", "integrations")),
    ("pages", ("ui",)),
    ("entry", ("cli", "__main__", "")),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports (relative to the package, '' = the package)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            subs = [f"{node.module}.{a.name}" for a in node.names]
            subs = [t for t in subs if _rel(t) in known]  # ``from pkg import module``
            targets = subs or [node.module]  # else names defined in node.module itself
        else:
            continue
        for t in targets:
            if t == "hessian_lens" or t.startswith("hessian_lens."):
                rel = _rel(t)
                if rel in known and rel != name:
                    out.add(rel)
    return out


def _rel(dotted: str) -> str:
    return dotted.removeprefix("hessian_lens").removeprefix(".")


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports(name, path, known) for name, path in found.items()}


def layer(name: str) -> int:
    head = name.split(".")[0]
    for i, (_, prefixes) in enumerate(LAYERS):
        if head in prefixes:
            return i
    raise AssertionError(f"hessian_lens.{name} is in no layer: give it one in LAYERS")


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycle():
    assert cycles(graph()) == []


def test_no_module_imports_a_layer_above_its_own():
    edges = graph()
    upward = [
        f"{a} ({LAYERS[layer(a)][0]}) -> {b} ({LAYERS[layer(b)][0]})"
        for a, targets in edges.items()
        for b in targets
        if layer(b) > layer(a)
    ]
    assert upward == []


def test_no_module_is_over_800_lines():
    big = {n: len(p.read_text().splitlines()) for n, p in modules().items()}
    assert {n: k for n, k in big.items() if k > MAX_LINES} == {}


def test_the_checks_see_a_cycle_and_an_upward_arrow():
    """The test's own machinery: a made-up graph with both faults is caught."""
    edges = {"io.files": {"plots"}, "plots": {"io.files"}, "ui.home": set()}
    assert cycles(edges) == [["io.files", "plots"]]
    assert layer("plots") > layer("io.files")
    with pytest.raises(AssertionError, match="in no layer"):
        layer("newmodule")
