"""Transformer partitions: attention heads, output neurons, Adam-mini's blocks.

An :class:`AttentionLayout` says where the heads of one attention layer live among a
model's parameters: a fused ``[Q; K; V]`` projection (``nn.MultiheadAttention``'s
``in_proj_weight``), separate Q / K / V projections, and the output projection whose
columns read the heads. Layouts are found automatically for ``nn.MultiheadAttention``
(torchvision's ``VisionTransformer``, ``nn.TransformerEncoderLayer``), for any module
with a ``head_layout(prefix)`` method (the built-in ``gpt``) and for the Hugging Face
families that :mod:`hessian_lens.hf` knows (GPT-2, BERT / RoBERTa, Llama / Mistral / Qwen
with grouped-query attention, ViT); other layouts are given with ``heads=``. Tensors stored
in x out (GPT-2's ``Conv1D``) are named in ``transposed``: their features are columns.

With grouped-query attention (``num_kv_heads`` < ``num_heads``) each K / V head is shared
by ``num_heads / num_kv_heads`` consecutive query heads and its label names them all:
``model.layers.0.self_attn.k.head0-1``.

Labels name the module, the role and the head or neuron:
``encoder.layers.encoder_layer_3.self_attention.q.head2``, ``blocks.0.mlp.fc1.neuron17``,
``tok_emb.token65``. :func:`block_of` reads the block type (q, k, v, o, qkv, mlp,
embedding, norm, output, conv, linear, other) back from any label, and :func:`head_of`
the head, so stored analyses can be grouped without the model.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from hessian_lens.errors import PartitionError

ROLES = ("q", "k", "v")
#: Normalisation modules: their weight and bias are kinds of their own (norm_weight, ...).
NORMS = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)
Groups = list[tuple[str, dict[str, Any]]]  # (label, {parameter name: index}) per group
BLOCK_TYPES = (
    "q",
    "k",
    "v",
    "o",
    "qkv",
    "mlp",
    "embedding",
    "norm",
    "output",
    "conv",
    "linear",
    "other",
)
_ROLE_TOKENS = {
    "q": {"q", "q_proj", "query", "wq"},
    "k": {"k", "k_proj", "key", "wk"},
    "v": {"v", "v_proj", "value", "wv"},
    "o": {"o", "out_proj", "o_proj"},
    "qkv": {"qkv", "in_proj_weight", "in_proj_bias", "c_attn"},
}
_EMBEDDING_TOKENS = {"wte", "wpe", "class_token", "cls_token", "conv_proj", "patch_embed"}
_MLP_TOKENS = {"linear1", "linear2", "feed_forward"}
_OUTPUT_TOKENS = {"head", "heads", "lm_head", "classifier", "output"}
_HEAD = re.compile(r"\.head([0-9]{1,9})(?:\.|$)")  # more digits: not a head number
_HEADS = re.compile(r"\.head([0-9]{1,9})(?:-([0-9]{1,9}))?(?:\.|$)")
#: Modules consulted (imported on first use) for layouts, tensors stored in x out and the
#: block types of their names: each may define ``attention_layout(prefix, module)``,
#: ``is_transposed(module)`` and ``BLOCK_PATTERNS`` (``(regex, block type)`` pairs).
PLUGINS = ("hessian_lens.hf",)
_NORM_TOKEN = re.compile(r"^(ln|bn)(_?[0-9a-z]*)$")


@dataclass(frozen=True)
class AttentionLayout:
    """Where the heads of one attention layer live (parameter names of the model).

    Attributes:
        prefix: label prefix of the layer's groups (usually the attention module's path).
        num_heads: H; every projection splits into H equal slices.
        qkv: fused tensors whose first dimension stacks Q, K and V (weight and bias).
        q: separate query tensors (rows are the heads' query features), weight and bias.
        k: separate key tensors.
        v: separate value tensors.
        o: output projection weights, whose second dimension (columns) reads the heads.
        num_kv_heads: heads of K and V (grouped-query attention); None: ``num_heads``.
        transposed: the 2-D tensors above stored in x out (GPT-2's ``Conv1D``): their
            features are columns, and the rows of an output projection read the heads.
    """

    prefix: str
    num_heads: int
    qkv: tuple[str, ...] = ()
    q: tuple[str, ...] = ()
    k: tuple[str, ...] = ()
    v: tuple[str, ...] = ()
    o: tuple[str, ...] = ()
    num_kv_heads: int | None = None
    transposed: tuple[str, ...] = ()

    @property
    def kv_heads(self) -> int:
        """The heads of K and V (``num_heads`` without grouped-query attention)."""
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    def heads_of(self, role: str) -> int:
        """How many heads a role splits into (``o`` and ``q``: H; ``k``, ``v``: the K/V heads)."""
        return self.kv_heads if role in ("k", "v") else self.num_heads

    def head_label(self, role: str, h: int) -> str:
        """``head<h>``, or for a K / V head shared by query heads a..b ``head<a>-<b>``.

        Example:
            >>> AttentionLayout("a", 4, num_kv_heads=2).head_label("k", 1)
            'head2-3'
        """
        group = self.num_heads // self.heads_of(role)
        return f"head{h}" if group == 1 else f"head{h * group}-{(h + 1) * group - 1}"

    def index(self, name: str, shapes: Mapping[str, tuple[int, ...]], features: Any) -> Any:
        """The index of ``features`` (an int or a slice) along a tensor's feature axis."""
        if name in self.transposed and len(shapes[name]) >= 2:
            return (slice(None), features)
        return features

    def role_rows(self, shapes: Mapping[str, tuple[int, ...]]) -> Iterator[tuple[str, str, slice]]:
        """``(role, tensor name, features)`` of every Q / K / V tensor slice of this layer.

        The features are rows, or columns of a tensor in ``transposed``; a fused tensor
        holds Q (``num_heads`` heads), then K and V (``kv_heads`` heads each).
        """
        grouped = self.kv_heads != self.num_heads
        parts = self.num_heads + 2 * self.kv_heads if grouped else 3
        for name in self.qkv:
            width = _features(shapes, name, self, parts, "a fused Q/K/V tensor")
            sizes = [width * self.heads_of(r) for r in ROLES] if grouped else [width] * 3
            stops = [0, *itertools.accumulate(sizes)]
            for r, role in enumerate(ROLES):
                yield role, name, slice(stops[r], stops[r + 1])
        for role in ROLES:
            for name in getattr(self, role):
                yield role, name, slice(0, _features(shapes, name, self, 1, f"a {role} tensor"))

    def check(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Raise :class:`PartitionError` unless every named tensor splits into the heads."""
        if not isinstance(self.num_heads, int) or self.num_heads < 1:
            raise PartitionError(f"{self.prefix}: num_heads must be an integer >= 1")
        kv = self.kv_heads
        if not isinstance(kv, int) or kv < 1 or self.num_heads % kv:
            raise PartitionError(
                f"{self.prefix}: num_kv_heads must be an integer >= 1 dividing num_heads "
                f"({self.num_heads}), got {kv!r}"
            )
        for role, name, rows in self.role_rows(shapes):
            if (rows.stop - rows.start) % self.heads_of(role):
                raise PartitionError(
                    f"{self.prefix}: {rows.stop - rows.start} features of '{name}' do not "
                    f"split into {self.heads_of(role)} heads"
                )
        for name in self.o:
            shape = _shape(shapes, name)
            axis = 0 if name in self.transposed else 1
            if len(shape) < 2 or shape[axis] % self.num_heads:
                raise PartitionError(
                    f"{self.prefix}: output projection '{name}' of shape {shape} needs "
                    f"{'rows' if axis == 0 else 'columns'} that split into "
                    f"{self.num_heads} heads"
                )


def _shape(shapes: Mapping[str, tuple[int, ...]], name: str) -> tuple[int, ...]:
    if name not in shapes:
        raise PartitionError(f"attention layout names '{name}', not a trainable parameter")
    return tuple(shapes[name])


def _features(shapes, name: str, layout: AttentionLayout, parts: int, what: str) -> int:
    """The features of one of ``parts`` equal parts of a tensor (rows, or columns)."""
    shape = _shape(shapes, name)
    axis = 1 if name in layout.transposed and len(shape) >= 2 else 0
    if not shape or shape[axis] % parts:
        raise PartitionError(f"'{name}' of shape {shape} is not {what}")
    return shape[axis] // parts


# ---------------------------------------------------------------------------- layouts
def attention_layouts(model: nn.Module, heads: Any = None) -> list[AttentionLayout]:
    """The attention layouts of a model: given (``heads``) or found.

    Args:
        model: the model.
        heads: ``None`` to find them (``nn.MultiheadAttention`` and modules with a
            ``head_layout(prefix)`` method); else a sequence of :class:`AttentionLayout`
            or a mapping ``{prefix: {"num_heads": H, "qkv": [...], "o": [...], ...}}``.

    Raises:
        PartitionError: a layout naming unknown tensors or that does not split evenly.
    """
    if heads is None:
        layouts = _found_layouts(model)
    elif isinstance(heads, Mapping):
        layouts = [_layout_from_mapping(prefix, spec) for prefix, spec in heads.items()]
    else:
        layouts = list(heads)
        if not all(isinstance(x, AttentionLayout) for x in layouts):
            raise PartitionError("heads= takes AttentionLayout objects or a {prefix: {...}} map")
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    for layout in layouts:
        layout.check(shapes)
    return layouts


def _layout_from_mapping(prefix: str, spec: Any) -> AttentionLayout:
    if not isinstance(spec, Mapping) or "num_heads" not in spec:
        raise PartitionError(f"heads['{prefix}'] must be a mapping with num_heads, got {spec!r}")
    unknown = set(spec) - {"num_heads", "num_kv_heads", "qkv", "q", "k", "v", "o", "transposed"}
    if unknown:
        raise PartitionError(f"heads['{prefix}']: unknown keys {sorted(unknown)}")
    counts = ("num_heads", "num_kv_heads")
    names = {k: tuple([v] if isinstance(v, str) else v) for k, v in spec.items() if k not in counts}
    return AttentionLayout(
        str(prefix), spec["num_heads"], num_kv_heads=spec.get("num_kv_heads"), **names
    )


def _found_layouts(model: nn.Module) -> list[AttentionLayout]:
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    layouts = []
    for prefix, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            layout = _mha_layout(prefix, module)
        elif callable(getattr(module, "head_layout", None)):
            layout = module.head_layout(prefix)
        else:
            layout = _plugin_layout(prefix, module)
            if layout is None:
                continue
        keep = {
            role: tuple(n for n in getattr(layout, role) if n in trainable)
            for role in ("qkv", *ROLES, "o")
        }
        layouts.append(replace(layout, **keep))
    return layouts


@functools.cache
def _plugins() -> tuple[Any, ...]:
    """The modules of :data:`PLUGINS` (imported once; none of them imports torch's peers)."""
    return tuple(importlib.import_module(name) for name in PLUGINS)


def _plugin_layout(prefix: str, module: nn.Module) -> AttentionLayout | None:
    for plugin in _plugins():
        layout = plugin.attention_layout(prefix, module)
        if layout is not None:
            return layout
    return None


def is_transposed(module: nn.Module) -> bool:
    """Whether a module stores its weight in x out (GPT-2's ``Conv1D``): neurons are columns."""
    return any(plugin.is_transposed(module) for plugin in _plugins())


def _mha_layout(prefix: str, m: nn.MultiheadAttention) -> AttentionLayout:
    def name(attr: str) -> str:
        return f"{prefix}.{attr}" if prefix else attr

    bias = (name("in_proj_bias"),) if m.in_proj_bias is not None else ()
    o = (name("out_proj.weight"),)
    if m._qkv_same_embed_dim:
        return AttentionLayout(prefix, m.num_heads, qkv=(name("in_proj_weight"), *bias), o=o)
    return AttentionLayout(
        prefix,
        m.num_heads,
        qkv=bias,
        q=(name("q_proj_weight"),),
        k=(name("k_proj_weight"),),
        v=(name("v_proj_weight"),),
        o=o,
    )


# ---------------------------------------------------------------------------- partitions
def head_groups(model: nn.Module, heads: Any = None) -> Groups:
    """One group per attention head and role (what :meth:`Partition.by_head` groups).

    For each attention layer and head h: ``<prefix>.q.head<h>`` (the head's query rows of
    the weight and their bias entries), ``.k.head<h>``, ``.v.head<h>``, and
    ``.o.head<h>`` (the output projection's columns that read head h). The output
    projection's bias, the MLPs, norms and embeddings keep one group per tensor.

    Raises:
        PartitionError: the model has no attention layer found (pass ``heads=``).

    Example:
        >>> [label for label, _ in head_groups(nn.MultiheadAttention(8, 2))][:4]
        ['q.head0', 'q.head1', 'k.head0', 'k.head1']
    """
    layouts = _required_layouts(model, heads, "by_head")
    shapes = _shapes(model)
    groups: list[tuple[str, dict[str, Any]]] = []
    for layout in layouts:
        groups += _head_groups(layout, shapes)
    return groups


def _head_groups(layout: AttentionLayout, shapes) -> list[tuple[str, dict[str, Any]]]:
    by_role: dict[tuple[str, int], dict[str, Any]] = {}
    for role, name, rows in layout.role_rows(shapes):
        H = layout.heads_of(role)
        d = (rows.stop - rows.start) // H
        for h in range(H):
            start = rows.start + h * d
            by_role.setdefault((role, h), {})[name] = layout.index(
                name, shapes, slice(start, start + d)
            )
    groups = [
        (_label(layout.prefix, f"{r}.{layout.head_label(r, h)}"), sets)
        for (r, h), sets in by_role.items()
    ]
    H = layout.num_heads
    for name in layout.o:
        transposed = name in layout.transposed
        d = shapes[name][0 if transposed else 1] // H
        for h in range(H):
            heads = slice(h * d, (h + 1) * d)
            index = heads if transposed else (slice(None), heads)
            groups.append((_label(layout.prefix, f"o.head{h}"), {name: index}))
    return groups


def adam_mini_groups(model: nn.Module, heads: Any = None) -> Groups:
    """The blocks of Adam-mini, one learning rate per block (:meth:`Partition.adam_mini`).

    Adam-mini (Zhang et al., arXiv 2406.16793, "Partition for Transformers"):

    * Query and key weights: one block per head (``<prefix>.q.head<h>``);
    * value weights, the attention output projection and the MLPs: one block per output
      neuron (a weight row: ``<prefix>.v.neuron<j>``, ``<prefix>.o.neuron<j>``,
      ``blocks.0.mlp.fc1.neuron<j>``), and so every other Linear / Conv weight (patch
      embedding, classifier or LM head: its rows are the tokens or classes);
    * embedding tables: one block per token (``tok_emb.token<j>``); positional tables
      (a raw parameter such as torchvision's ``pos_embedding``) one block per position;
    * everything else (biases, norms, class token): one block per tensor, as Adam-mini's
      default PyTorch partition; a fused Q/K/V bias counts as three tensors.

    Raises:
        PartitionError: the model has no attention layer found (pass ``heads=``).
    """
    layouts = _required_layouts(model, heads, "adam_mini")
    shapes = _shapes(model)
    groups: list[tuple[str, dict[str, Any]]] = []
    claimed: set[str] = set()
    for layout in layouts:
        groups += _adam_mini_attention(layout, shapes)
        claimed.update(*(getattr(layout, r) for r in ("qkv", *ROLES)))
    o_weights = {n for layout in layouts for n in layout.o}
    for name, module, param in _owned(model):
        if name in claimed or param.dim() < 2:
            continue
        if isinstance(module, nn.Embedding):
            word = "position" if "pos" in name.rsplit(".", 1)[0] else "token"
            groups += _rows_of(name, param.shape[0], word)
        elif name in o_weights:
            prefix = next(lay.prefix for lay in layouts if name in lay.o)
            groups += _neurons_of(name, module, param, label=_label(prefix, "o"))
        elif isinstance(module, _LINEARS) or is_transposed(module):
            groups += _neurons_of(name, module, param)
        elif block_of(name) == "embedding":
            groups += _positions_of(name, tuple(param.shape))
    return groups


def _adam_mini_attention(layout: AttentionLayout, shapes) -> list[tuple[str, dict[str, Any]]]:
    groups = []
    for role, name, rows in layout.role_rows(shapes):
        label = _label(layout.prefix, role)
        if len(shapes[name]) == 1:
            groups.append((f"{label}.bias", {name: rows}))
        elif role == "v":
            groups += [
                (f"{label}.neuron{j}", {name: layout.index(name, shapes, rows.start + j)})
                for j in _count(rows)
            ]
        else:
            H = layout.heads_of(role)
            d = (rows.stop - rows.start) // H
            groups += [
                (
                    f"{label}.{layout.head_label(role, h)}",
                    {
                        name: layout.index(
                            name, shapes, slice(rows.start + h * d, rows.start + (h + 1) * d)
                        )
                    },
                )
                for h in range(H)
            ]
    return groups


def neuron_groups(model: nn.Module, modules: Sequence[str] | str | None = None) -> Groups:
    """One group per output neuron: weight row and bias entry (:meth:`Partition.by_neuron`).

    Linear layers: ``<module>.neuron<j>``; convolutions: ``<module>.channel<j>``;
    embeddings: ``<module>.token<j>``; norms: ``<module>.feature<j>`` (weight and bias
    entry j); fused or separate Q / K / V projections: ``<prefix>.q.neuron<j>`` ...
    Other tensors keep one group each.

    Args:
        model: the model.
        modules: split only the modules with these names (or under these prefixes);
            ``None``: every module.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1))
        >>> [label for label, _ in neuron_groups(net, modules=["0"])]
        ['0.neuron0', '0.neuron1']
    """
    wanted = [modules] if isinstance(modules, str) else modules

    def chosen(name: str) -> bool:
        return wanted is None or any(name == m or name.startswith(m + ".") for m in wanted)

    shapes = _shapes(model)
    groups: list[tuple[str, dict[str, Any]]] = []
    for layout in _found_layouts(model):
        rows: dict[tuple[str, int], dict[str, Any]] = {}
        for role, name, span in layout.role_rows(shapes):
            if chosen(name.rsplit(".", 1)[0]):
                for j in _count(span):
                    rows.setdefault((role, j), {})[name] = layout.index(
                        name, shapes, span.start + j
                    )
        groups += [(_label(layout.prefix, f"{r}.neuron{j}"), s) for (r, j), s in rows.items()]
    taken = {n for _, sets in groups for n in sets}
    for prefix, module in model.named_modules():
        word = _neuron_word(module)
        own = [(n, p) for n, p in _own_params(prefix, module, taken) if n in shapes]  # untied
        if word and own and chosen(prefix):
            groups += _module_neurons(prefix, word, own, is_transposed(module))
    return groups


def _module_neurons(prefix: str, word: str, own: list, transposed: bool) -> list:
    """One group per output feature of a module's own tensors (columns of a transposed weight)."""

    def axis(p) -> int:
        return 1 if transposed and p.dim() == 2 else 0

    size = own[0][1].shape[axis(own[0][1])]
    if not all(p.shape[axis(p)] == size for _, p in own):
        return []
    return [
        (_label(prefix, f"{word}{j}"), {n: (slice(None), j) if axis(p) else j for n, p in own})
        for j in range(size)
    ]


_LINEARS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _neuron_word(module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear) or is_transposed(module):
        return "neuron"
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return "channel"
    if isinstance(module, nn.Embedding):
        return "token"
    if isinstance(module, NORMS):
        return "feature"
    return None


def _own_params(prefix: str, module: nn.Module, taken: set[str]) -> list[tuple[str, Any]]:
    return [
        (f"{prefix}.{n}" if prefix else n, p)
        for n, p in module.named_parameters(recurse=False)
        if p.requires_grad and (f"{prefix}.{n}" if prefix else n) not in taken and p.dim() >= 1
    ]


# ---------------------------------------------------------------------------- labels
def block_of(label: str) -> str:
    """The block type of a group label or parameter name (one of :data:`BLOCK_TYPES`).

    Rules on the dotted tokens, first match wins: an attention role (``q``, ``k_proj``,
    ``out_proj``, ...; a whole fused ``in_proj_weight`` is ``qkv``); a norm (``norm*``,
    ``ln*``, ``bn*``); an embedding (``*emb*``, ``wte``, ``class_token``, ``conv_proj``);
    an MLP (``*mlp*``, ``*ffn*``, ``linear1/2``); an output layer (``head``,
    ``lm_head``, ``classifier``); ``conv*`` / ``features`` (conv), ``fc*`` (linear).

    Example:
        >>> [block_of(x) for x in ("enc.attn.q.head2", "blocks.0.mlp.fc1.neuron3",
        ...  "encoder.ln.weight", "tok_emb.token7", "heads.head.weight", "conv1.bias")]
        ['q', 'mlp', 'norm', 'embedding', 'output', 'conv']
    """
    tokens = str(label).lower().split(".")
    for pattern, kind in _block_patterns():
        if pattern.search(str(label)):
            return kind
    for kind in ("q", "k", "v", "o", "qkv"):
        if any(t in _ROLE_TOKENS[kind] for t in tokens):
            return kind
    rules = (
        ("norm", lambda t: "norm" in t or bool(_NORM_TOKEN.match(t))),
        ("embedding", lambda t: "emb" in t or t in _EMBEDDING_TOKENS),
        ("mlp", lambda t: "mlp" in t or "ffn" in t or t in _MLP_TOKENS),
        ("output", lambda t: t in _OUTPUT_TOKENS),
        ("conv", lambda t: t.startswith("conv") or t == "features"),
        ("linear", lambda t: t.startswith("fc") or t.startswith("linear")),
    )
    for kind, test in rules:
        if any(test(t) for t in tokens):
            return kind
    return "other"


@functools.cache
def _block_patterns() -> tuple[tuple[re.Pattern, str], ...]:
    return tuple(pair for plugin in _plugins() for pair in getattr(plugin, "BLOCK_PATTERNS", ()))


def head_of(label: str) -> int | None:
    """The attention head a label names (``...q.head2`` -> 2), else None.

    A K / V head shared by several query heads (``...k.head0-1``) belongs to none of them:
    :func:`heads_of` gives their range.
    """
    match = _HEAD.search(str(label))
    return int(match.group(1)) if match else None


def heads_of(label: str) -> range | None:
    """The query heads a group serves: ``q.head2`` -> range(2, 3), ``k.head0-1`` -> range(0, 2).

    Example:
        >>> heads_of("model.layers.0.self_attn.k.head2-3"), heads_of("fc.weight")
        (range(2, 4), None)
    """
    match = _HEADS.search(str(label))
    if match is None:
        return None
    first = int(match.group(1))
    return range(first, int(match.group(2) or first) + 1)


# ---------------------------------------------------------------------------- helpers
def _required_layouts(model: nn.Module, heads: Any, scheme: str) -> list[AttentionLayout]:
    layouts = attention_layouts(model, heads)
    if not layouts:
        raise PartitionError(
            f"{scheme} needs attention layers and this model has none found "
            "(nn.MultiheadAttention, a module with head_layout(), or a Hugging Face GPT-2, "
            "BERT / RoBERTa, Llama / Mistral / Qwen or ViT attention); pass heads= with the "
            "layout of yours, or choose another partition (canonical, by_neuron)."
        )
    return layouts


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}


def _owned(model: nn.Module) -> Iterator[tuple[str, nn.Module, Any]]:
    """``(parameter name, owning module, parameter)`` of the trainable parameters."""
    seen = set()
    for prefix, module in model.named_modules():
        for n, p in module.named_parameters(recurse=False):
            name = f"{prefix}.{n}" if prefix else n
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                yield name, module, p


def _label(prefix: str, tail: str) -> str:
    return f"{prefix}.{tail}" if prefix else tail


def _count(rows: slice) -> range:
    return range(rows.stop - rows.start)


def _rows_of(name: str, n: int, word: str, label: str | None = None):
    base = label or name.rsplit(".", 1)[0]
    return [(f"{base}.{word}{j}", {name: j}) for j in range(n)]


def _neurons_of(name: str, module: nn.Module, param, label: str | None = None):
    """One group per output neuron of a weight: its rows, or its columns when stored in x out."""
    if not (is_transposed(module) and param.dim() == 2):
        return _rows_of(name, param.shape[0], "neuron", label)
    base = label or name.rsplit(".", 1)[0]
    return [(f"{base}.neuron{j}", {name: (slice(None), j)}) for j in range(param.shape[1])]


def _positions_of(name: str, shape: tuple[int, ...]):
    """One group per position of a raw positional table (first non-unit, non-last dim)."""
    axis = next((a for a in range(len(shape) - 1) if shape[a] > 1), None)
    if axis is None:
        return []
    lead = (slice(None),) * axis
    return [(f"{name}.position{j}", {name: (*lead, j)}) for j in range(shape[axis])]
