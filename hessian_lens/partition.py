"""Partitions of a model's trainable parameters into S groups.

A partition splits the parameter vector ``theta`` (P scalars) into disjoint groups
``I_1 .. I_S``. For a direction ``u``, ``U^s`` is ``u`` restricted to group ``s``; the
summaries of :mod:`hessian_lens.summary` are indexed by groups.

Groups are whole parameter tensors (canonical, by layer, by kind, trivial, user mapping),
single scalars (discrete), or any index sets inside one or several tensors
(:meth:`Partition.from_index_sets`: one attention head's rows of a fused projection, one
output neuron, a block of embedding rows; the transformer partitions of
:mod:`hessian_lens.heads` are built on it). Groups are ordered by the first parameter they
touch, in ``model.named_parameters()`` order, so groups of later layers come later: the
engine relies on that to skip earlier layers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from hessian_lens import heads as heads_module
from hessian_lens.errors import PartitionError
from hessian_lens.heads import NORMS

DISCRETE_MAX_PARAMETERS = 5000
#: Partition schemes by name (``by_module:K`` takes a depth K); the CLI and pages list these.
SCHEMES = (
    "canonical",
    "by_layer",
    "by_module:1",
    "by_kind",
    "trivial",
    "discrete",
    "by_head",
    "adam_mini",
    "by_neuron",
)
KINDS = ("weight", "bias", "norm_weight", "norm_bias")


@dataclass(frozen=True)
class Group:
    """One group ``I_s`` of a partition.

    Attributes:
        label: display name (a parameter name for the canonical partition).
        kind: ``"weight"``, ``"bias"`` or ``"mixed"``.
        layer: name of the module owning the group's tensors (``"+"``-joined if several).
        layer_index: position of that module among the modules holding trainable
            parameters, or -1 when the group spans several modules.
        size: number of scalars in the group.
        params: names of the parameter tensors the group touches.
    """

    label: str
    kind: str
    layer: str
    layer_index: int
    size: int
    params: tuple[str, ...]


def parameter_kind(name: str, norm: bool = False) -> str:
    """Classify a parameter as ``"weight"``, ``"bias"``, ``"norm_weight"`` or ``"norm_bias"``.

    ``"bias"`` or ``"weight"`` by its name; ``"norm_bias"`` / ``"norm_weight"`` when it
    belongs to a normalisation layer (BatchNorm, LayerNorm, ...).

    Example:
        >>> parameter_kind("fc1.bias"), parameter_kind("bn1.weight", norm=True)
        ('bias', 'norm_weight')
    """
    base = "bias" if "bias" in name.rsplit(".", 1)[-1] else "weight"
    return f"norm_{base}" if norm else base


def norm_parameters(model: nn.Module) -> set[str]:
    """Names of the parameters owned by normalisation layers."""
    return {
        f"{prefix}.{n}" if prefix else n
        for prefix, m in model.named_modules()
        if isinstance(m, NORMS)
        for n, _ in m.named_parameters(recurse=False)
    }


def layer_name(name: str) -> str:
    """Module path of a parameter: ``"features.0.weight"`` -> ``"features.0"``."""
    return name.rsplit(".", 1)[0] if "." in name else ""


class Partition:
    """A partition of a model's trainable parameters into S groups.

    Build one with the class methods (:meth:`canonical`, :meth:`by_layer`,
    :meth:`by_kind`, :meth:`trivial`, :meth:`discrete`, :meth:`from_groups`; groups inside
    tensors: :meth:`from_index_sets`, :meth:`by_head`, :meth:`adam_mini`,
    :meth:`by_neuron`).

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        >>> Partition.canonical(net).labels
        ['0.weight', '0.bias', '2.weight', '2.bias']
        >>> Partition.by_layer(net).labels, len(Partition.discrete(net))
        (['0', '2'], 26)
    """

    def __init__(
        self,
        names: Sequence[str],
        shapes: Sequence[torch.Size],
        assignment: Sequence[int | torch.Tensor],
        groups: Sequence[Group],
        scheme: str = "custom",
    ) -> None:
        """Low-level constructor; prefer the class methods.

        Args:
            names: trainable parameter names, in ``named_parameters()`` order.
            shapes: their shapes.
            assignment: per parameter, a group index (whole tensor) or a LongTensor of
                the parameter's shape giving the group of every scalar.
            groups: the S groups, in order.
            scheme: name of the construction (``"canonical"``, ``"discrete"``, ...).
        """
        self.names = list(names)
        self.shapes = [torch.Size(s) for s in shapes]
        self.assignment = list(assignment)
        self.groups = list(groups)
        self.scheme = scheme
        self._validate()
        self._members = self._build_members()
        self._reach = self._build_reach()
        self._copies: dict[tuple[int, torch.device], torch.Tensor] = {}

    # ------------------------------------------------------------------ builders
    @classmethod
    def canonical(cls, model: nn.Module) -> Partition:
        """One group per trainable parameter tensor, in ``named_parameters()`` order."""
        params = _trainable(model)
        norms = norm_parameters(model)
        groups = [_group(n, [n], params, norms=norms) for n in params]
        return cls(list(params), _shapes(params), list(range(len(params))), groups, "canonical")

    @classmethod
    def by_layer(cls, model: nn.Module) -> Partition:
        """The tensors of one module together (weight and bias of a layer: one group)."""
        params = _trainable(model)
        return cls._from_labels(model, params, {n: layer_name(n) or n for n in params}, "by_layer")

    @classmethod
    def by_module(cls, model: nn.Module, depth: int = 1) -> Partition:
        """The tensors under one module prefix of ``depth`` dotted components together.

        ``layer1.0.conv1.weight`` is in group ``layer1`` at depth 1, ``layer1.0`` at 2.

        Example:
            >>> net = nn.Sequential(nn.Sequential(nn.Linear(3, 4), nn.Tanh()), nn.Linear(4, 2))
            >>> Partition.by_module(net, 1).labels, Partition.by_module(net, 2).labels
            (['0', '1'], ['0.0', '1.weight', '1.bias'])
        """
        if not isinstance(depth, int) or depth < 1:
            raise PartitionError(f"by_module depth must be an integer >= 1, got {depth!r}")
        params = _trainable(model)
        labels = {n: ".".join(n.split(".")[:depth]) for n in params}
        return cls._from_labels(model, params, labels, f"by_module:{depth}")

    @classmethod
    def by_regex(cls, model: nn.Module, rules: Sequence[tuple[str, str]]) -> Partition:
        """Groups by ordered ``(pattern, label)`` rules: the first ``re.search`` match wins.

        Parameters matching no rule keep their own group (their name).

        Example:
            >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
            >>> Partition.by_regex(net, [(r"bias$", "biases")]).labels
            ['0.weight', 'biases', '2.weight']
        """
        params = _trainable(model)
        try:
            compiled = [(re.compile(p), str(lab)) for p, lab in rules]
        except (re.error, TypeError, ValueError) as err:
            raise PartitionError(f"bad regular expression in the partition rules: {err}") from None
        labels = {n: next((lab for rx, lab in compiled if rx.search(n)), n) for n in params}
        return cls._from_labels(model, params, labels, "regex")

    @classmethod
    def by_kind(cls, model: nn.Module) -> Partition:
        """Two groups at most: all weights, all biases."""
        params = _trainable(model)
        norms = norm_parameters(model)
        plural = {k: k.replace("weight", "weights").replace("bias", "biases") for k in KINDS}
        labels = {n: plural[parameter_kind(n, n in norms)] for n in params}
        return cls._from_labels(model, params, labels, "by_kind")

    @classmethod
    def trivial(cls, model: nn.Module) -> Partition:
        """A single group holding every trainable parameter (S = 1)."""
        params = _trainable(model)
        return cls._from_labels(model, params, dict.fromkeys(params, "all"), "trivial")

    @classmethod
    def discrete(cls, model: nn.Module, max_parameters: int = DISCRETE_MAX_PARAMETERS) -> Partition:
        """One group per scalar (S = P): the pseudo-Hessian is then the Hessian scaled by u.

        Raises:
            PartitionError: when P exceeds ``max_parameters`` (S x S would not fit).
        """
        params = _trainable(model)
        total = sum(p.numel() for p in params.values())
        if total > max_parameters:
            raise PartitionError(
                f"discrete partition needs one group per scalar, and this model has P = "
                f"{total:,} trainable parameters (limit {max_parameters:,}: H̄ alone would be "
                f"{total * total * 4 / 2**20:,.0f} MiB and take P passes). Use canonical() or "
                f"by_layer(), or pass max_parameters= to raise the limit on a tiny model."
            )
        assignment, groups, offset = [], [], 0
        for name, p in params.items():
            assignment.append(torch.arange(offset, offset + p.numel()).reshape(p.shape))
            for flat in range(p.numel()):
                index = ",".join(str(i) for i in _unravel(flat, p.shape))
                groups.append(_group(f"{name}[{index}]", [name], params, size=1))
            offset += p.numel()
        return cls(list(params), _shapes(params), assignment, groups, "discrete")

    @classmethod
    def from_groups(cls, model: nn.Module, mapping: Mapping[str, str]) -> Partition:
        """Groups from a mapping ``{name or regex pattern: group label}``.

        Each trainable parameter must match exactly one entry (an exact name first, else
        a ``re.fullmatch`` pattern); several entries may share a label. Groups are ordered
        by their first parameter.

        Raises:
            PartitionError: a parameter matched twice with different labels (overlap),
                not matched at all (gap), or an entry that matches nothing.

        Example:
            >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
            >>> Partition.from_groups(net, {r".*weight": "W", r".*bias": "b"}).labels
            ['W', 'b']
        """
        params = _trainable(model)
        labels, used = {}, set()
        for name in params:
            hits = {lab for pat, lab in mapping.items() if pat == name}
            if not hits:
                hits = {lab for pat, lab in mapping.items() if re.fullmatch(pat, name)}
            used.update(pat for pat in mapping if pat == name or re.fullmatch(pat, name))
            if len(hits) > 1:
                raise PartitionError(
                    f"overlap: parameter '{name}' matches several groups "
                    f"{sorted(hits)}; make the patterns disjoint."
                )
            if hits:
                labels[name] = hits.pop()
        gaps = [n for n in params if n not in labels]
        if gaps:
            raise PartitionError(
                f"gap: trainable parameters in no group: {gaps}; add them "
                "to the mapping (e.g. a catch-all pattern '.*')."
            )
        unused = [pat for pat in mapping if pat not in used]
        if unused:
            raise PartitionError(
                f"entries match no trainable parameter: {unused}; known parameters: {list(params)}."
            )
        return cls._from_labels(model, params, labels, "custom")

    @classmethod
    def from_index_sets(
        cls,
        model: nn.Module,
        groups: Sequence[tuple[str, Mapping[str, Any]]],
        rest: str = "error",
        scheme: str = "custom",
    ) -> Partition:
        """Groups that are any index sets of one or several parameter tensors.

        Args:
            model: the model whose trainable parameters are partitioned.
            groups: ``(label, {parameter name: index})`` pairs; ``index`` is anything
                ``tensor[index]`` accepts (``None`` or ``...`` for the whole tensor, a slice
                of rows, a tuple of slices, a boolean mask, a LongTensor of rows).
            rest: ``"error"``: every trainable scalar must be in a group; ``"tensor"``:
                a tensor no group touches becomes its own group (labelled by its name),
                the scalars left over in a tensor some group touches one group
                ``<name>.rest``.
            scheme: the name recorded in :attr:`scheme`.

        Groups are reordered (stably) by the first parameter they touch, so the engine's
        pruned backward passes stay short.

        Raises:
            PartitionError: an unknown or frozen parameter name, an index the tensor does
                not accept, an empty group, two groups sharing a scalar, or (``rest="error"``)
                a scalar in no group.

        Example:
            >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
            >>> part = Partition.from_index_sets(
            ...     net, [("top", {"0.weight": slice(0, 2), "0.bias": slice(0, 2)})],
            ...     rest="tensor")
            >>> part.labels, [g.size for g in part.groups]
            (['top', '0.weight.rest', '0.bias.rest', '2.weight', '2.bias'], [8, 6, 2, 8, 2])
        """
        if rest not in ("error", "tensor"):
            raise PartitionError(f"rest must be 'error' or 'tensor', got {rest!r}")
        params = _trainable(model)
        ids = {n: torch.full(p.shape, -1, dtype=torch.long) for n, p in params.items()}
        labels = []
        for gid, (label, sets) in enumerate(groups):
            labels.append(str(label))
            if not sets:
                raise PartitionError(f"group '{label}' names no parameter")
            for name, index in sets.items():
                _claim(ids, name, index, gid, labels)
        labels += _leftovers(ids, len(labels), rest)
        return cls._from_ids(model, params, ids, labels, scheme)

    @classmethod
    def by_head(cls, model: nn.Module, heads=None) -> Partition:
        """One group per attention head and role (Q, K, V, O); other tensors whole.

        For each attention layer and head h: ``<prefix>.q.head<h>`` (the head's query rows
        of the weight and their bias entries), ``.k.head<h>``, ``.v.head<h>``, and
        ``.o.head<h>`` (the output projection's columns that read head h); the output
        projection's bias, the MLPs, norms and embeddings keep one group per tensor
        (:func:`hessian_lens.heads.head_groups`; ``heads=``: a layout for other models).

        Raises:
            PartitionError: the model has no attention layer found (pass ``heads=``).

        Example:
            >>> labels = Partition.by_head(nn.MultiheadAttention(8, 2)).labels
            >>> labels[:4], labels[-3:]
            (['q.head0', 'q.head1', 'k.head0', 'k.head1'], ['o.head0', 'o.head1', 'out_proj.bias'])
        """
        groups = heads_module.head_groups(model, heads)
        return cls.from_index_sets(model, groups, rest="tensor", scheme="by_head")

    @classmethod
    def adam_mini(cls, model: nn.Module, heads=None) -> Partition:
        """Adam-mini's blocks (arXiv 2406.16793): :func:`hessian_lens.heads.adam_mini_groups`."""
        groups = heads_module.adam_mini_groups(model, heads)
        return cls.from_index_sets(model, groups, rest="tensor", scheme="adam_mini")

    @classmethod
    def by_neuron(cls, model: nn.Module, modules: Sequence[str] | None = None) -> Partition:
        """One group per output neuron: :func:`hessian_lens.heads.neuron_groups`.

        Example:
            >>> net = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1))
            >>> Partition.by_neuron(net, modules=["0"]).labels
            ['0.neuron0', '0.neuron1', '2.weight', '2.bias']
        """
        groups = heads_module.neuron_groups(model, modules)
        return cls.from_index_sets(model, groups, rest="tensor", scheme="by_neuron")

    @classmethod
    def _from_ids(
        cls,
        model: nn.Module,
        params: dict[str, nn.Parameter],
        ids: dict[str, torch.Tensor],
        labels: list[str],
        scheme: str,
    ) -> Partition:
        """A partition from per-scalar group ids (every id in 0..len(labels)-1 used)."""
        names = list(params)
        first = [len(names)] * len(labels)
        touched: list[list[str]] = [[] for _ in labels]
        for i, n in enumerate(names):
            for g in np.unique(ids[n].numpy()).tolist():
                first[g] = min(first[g], i)
                touched[g].append(n)
        empty = [labels[g] for g in range(len(labels)) if not touched[g]]
        if empty:
            raise PartitionError(f"empty groups {empty}: every group needs a parameter")
        order = sorted(range(len(labels)), key=lambda g: first[g])
        new_id = torch.empty(len(labels), dtype=torch.long)
        new_id[torch.tensor(order)] = torch.arange(len(labels))
        norms = norm_parameters(model)
        layers = list(dict.fromkeys(layer_name(n) for n in params))
        counts = torch.zeros(len(labels), dtype=torch.long)
        assignment: list[int | torch.Tensor] = []
        for n in names:
            mapped = new_id[ids[n]]
            counts += torch.bincount(mapped.reshape(-1), minlength=len(labels))
            whole = mapped.numel() and bool((mapped == mapped.reshape(-1)[0]).all())
            assignment.append(int(mapped.reshape(-1)[0]) if whole else mapped)
        groups = [
            _group(labels[g], touched[g], params, int(counts[new_id[g]]), norms, layers)
            for g in order
        ]
        return cls(names, _shapes(params), assignment, groups, scheme)

    @classmethod
    def from_name(cls, model: nn.Module, name: str) -> Partition:
        """A partition by scheme name (:data:`SCHEMES`; ``by_module:K`` for any depth K)."""
        check_scheme(name)
        if name.startswith("by_module:"):
            return cls.by_module(model, int(name.split(":", 1)[1]))
        makers = {
            "canonical": cls.canonical,
            "by_layer": cls.by_layer,
            "by_kind": cls.by_kind,
            "trivial": cls.trivial,
            "discrete": cls.discrete,
            "by_head": cls.by_head,
            "adam_mini": cls.adam_mini,
            "by_neuron": cls.by_neuron,
        }
        return makers[name](model)

    @classmethod
    def _from_labels(
        cls,
        model: nn.Module,
        params: dict[str, nn.Parameter],
        labels: dict[str, str],
        scheme: str,
    ) -> Partition:
        order = list(dict.fromkeys(labels[n] for n in params))
        members = {lab: [n for n in params if labels[n] == lab] for lab in order}
        norms = norm_parameters(model)
        groups = [_group(lab, members[lab], params, norms=norms) for lab in order]
        assignment = [order.index(labels[n]) for n in params]
        return cls(list(params), _shapes(params), assignment, groups, scheme)

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self.groups)

    def __repr__(self) -> str:
        return f"Partition({self.scheme}, S={len(self)}, P={self.numel})"

    @property
    def labels(self) -> list[str]:
        """Group labels, in order."""
        return [g.label for g in self.groups]

    @property
    def kinds(self) -> list[str]:
        """Group kinds (``weight`` / ``bias`` / ``mixed``), in order."""
        return [g.kind for g in self.groups]

    @property
    def layers(self) -> list[str]:
        """Layer (module) name of every group, in order."""
        return [g.layer for g in self.groups]

    @property
    def numel(self) -> int:
        """P, the number of scalars covered."""
        return sum(s.numel() for s in self.shapes)

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The model's parameters covered by the partition, in partition order.

        Raises:
            PartitionError: the model does not have these trainable parameters.
        """
        self.check(model)
        params = dict(model.named_parameters())
        return [params[n] for n in self.names]

    def check(self, model: nn.Module) -> None:
        """Raise :class:`PartitionError` unless the model's trainable parameters match."""
        params = _trainable(model)
        if list(params) != self.names:
            missing = sorted(set(self.names) - set(params))
            extra = sorted(set(params) - set(self.names))
            if not missing and not extra:
                raise PartitionError(
                    "the partition lists the model's trainable tensors in another order than "
                    "model.named_parameters(): build it from this model (Partition.canonical, "
                    "from_groups, ...), which keeps that order"
                )
            raise PartitionError(
                f"partition does not match the model: missing {missing}, "
                f"not covered {extra}. Build it from this model."
            )
        for n, shape in zip(self.names, self.shapes, strict=True):
            if params[n].shape != shape:
                raise PartitionError(
                    f"parameter '{n}' has shape {tuple(params[n].shape)}, "
                    f"the partition expects {tuple(shape)}."
                )

    def blocks(self, by: str) -> list[list[int]]:
        """Group indices cut into blocks by ``"layer"``, ``"tensor"`` or ``"kind"``.

        ``"tensor"`` puts each group alone; ``"kind"`` separates weights from biases.

        Example:
            >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
            >>> Partition.canonical(net).blocks("layer")
            [[0, 1], [2, 3]]
        """
        return blocks_of(by, self.layers, self.kinds)

    # ------------------------------------------------------------------ algebra
    def reduce(self, tensors: Sequence[torch.Tensor | None], which: Sequence[int]) -> torch.Tensor:
        """Per-group sums: ``out[s] = sum_{p in I_s} t_p`` over the parameters ``which``.

        Args:
            tensors: one tensor per parameter index in ``which`` (``None`` = zeros).
            which: parameter indices (into :attr:`names`).

        Returns:
            A tensor of shape (S,), differentiable in ``tensors``.
        """
        ref = next(t for t in tensors if t is not None)
        out = ref.new_zeros(len(self))
        whole_ids, whole_vals = [], []
        for i, t in zip(which, tensors, strict=True):
            if t is None:
                continue
            a = self.assignment[i]
            if isinstance(a, int):
                whole_ids.append(a)
                whole_vals.append(t.sum())
            else:
                out = out.index_add(0, self._on(a, t.device).reshape(-1), t.reshape(-1))
        if whole_vals:
            ids = torch.tensor(whole_ids, device=ref.device)
            out = out.index_add(0, ids, torch.stack(whole_vals))
        return out

    def group_sum(
        self, s: int, tensors: Sequence[torch.Tensor | None], which: Sequence[int]
    ) -> torch.Tensor:
        """``sum_{p in I_s} t_p`` (differentiable), over the parameters ``which``."""
        total = None
        for i, t in zip(which, tensors, strict=True):
            sel = self._members[s].get(i, False)
            if t is None or sel is False:
                continue
            if sel is None:
                part = t.sum()
            elif isinstance(sel, slice):
                part = t.reshape(-1)[sel].sum()
            else:
                part = t.reshape(-1)[self._on(sel, t.device)].sum()
            total = part if total is None else total + part
        if total is None:
            raise PartitionError(f"group {s} has no parameter among {list(which)}")
        return total

    def params_from(self, s: int) -> list[int]:
        """Indices of the parameters holding some group ``>= s``."""
        return [i for i, hi in enumerate(self._reach) if hi >= s]

    def params_of(self, s: int) -> list[int]:
        """Indices of the parameters holding part of group ``s``."""
        return sorted(self._members[s])

    def entries(self, s: int, i: int) -> torch.Tensor | None:
        """Flat indices of group s inside parameter i (``None``: the whole parameter).

        Raises:
            PartitionError: parameter i holds no entry of group s.
        """
        sel = self._members[s].get(i, False)
        if sel is False:
            raise PartitionError(f"parameter {self.names[i]!r} holds no entry of group {s}")
        if isinstance(sel, slice):
            return torch.arange(sel.start, sel.stop)
        return sel

    def size(self, s: int) -> int:
        """The number of scalars in group s."""
        total = 0
        for i in self.params_of(s):
            idx = self.entries(s, i)
            total += self.shapes[i].numel() if idx is None else idx.numel()
        return total

    def expand(self, eta: torch.Tensor, i: int) -> torch.Tensor:
        """``eta`` broadcast onto parameter ``i``: entry ``eta[s]`` on every scalar of I_s."""
        a = self.assignment[i]
        return eta[a] if isinstance(a, int) else eta[self._on(a, eta.device)]

    def matrix(self, u: Sequence[torch.Tensor]) -> torch.Tensor:
        """The S x P matrix whose row s is ``U^s`` (``u`` restricted to group s), flattened."""
        flat = torch.cat([t.reshape(-1) for t in u])
        ids = torch.cat([self._flat_ids(i) for i in range(len(self.names))]).to(flat.device)
        out = flat.new_zeros(len(self), flat.numel())
        out[ids, torch.arange(flat.numel(), device=flat.device)] = flat
        return out

    # ------------------------------------------------------------------ internals
    def _on(self, index: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``index`` on ``device``, copied there once (index tensors are the partition's)."""
        if index.device == device:
            return index
        key = (id(index), device)
        if key not in self._copies:
            self._copies[key] = index.to(device)
        return self._copies[key]

    def _flat_ids(self, i: int) -> torch.Tensor:
        a = self.assignment[i]
        if isinstance(a, int):
            return torch.full((self.shapes[i].numel(),), a, dtype=torch.long)
        return a.reshape(-1)

    def _validate(self) -> None:
        if len(self.names) != len(self.shapes) or len(self.names) != len(self.assignment):
            raise PartitionError("names, shapes and assignment must have the same length")
        twice = sorted({n for n in self.names if self.names.count(n) > 1})
        if twice:
            raise PartitionError(
                f"the partition lists {twice} more than once: name every trainable tensor once "
                "(assign its scalars to several groups with an index tensor, from_index_sets)"
            )
        if not self.names:
            raise PartitionError("the model has no trainable parameter (all frozen?)")
        counts = torch.zeros(len(self.groups), dtype=torch.long)
        for i in range(len(self.assignment)):
            ids = self._flat_ids(i)
            if ids.numel() != self.shapes[i].numel():
                raise PartitionError(f"assignment of '{self.names[i]}' has the wrong shape")
            if ids.numel() and (ids.min() < 0 or ids.max() >= len(self.groups)):
                raise PartitionError(
                    f"'{self.names[i]}' is assigned to a group that does "
                    f"not exist (S = {len(self.groups)})"
                )
            counts += torch.bincount(ids, minlength=len(self.groups))
        empty = [self.groups[s].label for s in range(len(self.groups)) if counts[s] == 0]
        if empty:
            raise PartitionError(f"empty groups {empty}: every group needs a parameter")

    def _build_members(self) -> list[dict[int, torch.Tensor | slice | None]]:
        """Per group, per parameter index: None (whole), a slice or the flat indices."""
        members: list[dict[int, torch.Tensor | slice | None]] = [{} for _ in self.groups]
        for i, a in enumerate(self.assignment):
            if isinstance(a, int):
                members[a][i] = None
                continue
            flat = a.reshape(-1).numpy()
            order = np.argsort(flat, kind="stable")
            ids, starts = np.unique(flat[order], return_index=True)
            for s, idx in zip(ids.tolist(), np.split(order, starts[1:]), strict=True):
                start, stop = int(idx[0]), int(idx[-1]) + 1
                whole = stop - start == idx.size
                members[s][i] = slice(start, stop) if whole else torch.from_numpy(idx)
        return members

    def _build_reach(self) -> list[int]:
        return [int(self._flat_ids(i).max()) for i in range(len(self.names))]


def blocks_of(by: str, layers: Sequence[str], kinds: Sequence[str]) -> list[list[int]]:
    """Group indices cut into blocks from per-group layer names and kinds.

    Example:
        >>> blocks_of("layer", ["a", "a", "b"], ["weight", "bias", "weight"])
        [[0, 1], [2]]
    """
    keys = {"layer": list(layers), "kind": list(kinds), "tensor": list(range(len(layers)))}.get(by)
    if keys is None:
        raise ValueError(f"unknown block choice '{by}'; use 'layer', 'tensor' or 'kind'.")
    order = list(dict.fromkeys(keys))
    return [[s for s, k in enumerate(keys) if k == key] for key in order]


def check_scheme(name: str) -> None:
    """Raise :class:`PartitionError` unless ``name`` is a scheme of :data:`SCHEMES`."""
    fixed = [s for s in SCHEMES if not s.startswith("by_module")]
    if name in fixed:
        return
    head, _, depth = str(name).partition(":")
    if head == "by_module" and _whole(depth) and int(depth) >= 1:
        return
    raise PartitionError(
        f"unknown partition {str(name)[:60]!r}; choose one of {fixed} or by_module:K "
        "(K = 1, 2, ...)"
    )


def _whole(text: str) -> bool:
    """Digits 0-9 only, at most 9 of them (``"²"`` is a digit to ``str.isdigit``, not to int)."""
    return text.isascii() and text.isdigit() and len(text) <= 9


def _claim(ids: dict[str, torch.Tensor], name: str, index: Any, gid: int, labels: list[str]):
    """Mark ``ids[name][index]`` as group ``gid``; refuse overlaps and bad indices."""
    label = labels[gid]
    if name not in ids:
        raise PartitionError(
            f"group '{label}': '{name}' is not a trainable parameter of the model "
            f"(known: {list(ids)[:6]}{' ...' if len(ids) > 6 else ''})"
        )
    target = ids[name]
    index = ... if index is None else index
    try:
        chosen = target[index]
    except (IndexError, TypeError, RuntimeError, ValueError) as err:
        raise PartitionError(
            f"group '{label}': index {index!r} does not fit '{name}' of shape "
            f"{tuple(target.shape)} ({str(err).splitlines()[0][:100]})"
        ) from None
    if chosen.numel() == 0:
        raise PartitionError(f"group '{label}': index {index!r} selects nothing of '{name}'")
    taken = chosen[chosen >= 0]
    if taken.numel():
        raise PartitionError(
            f"overlap: groups '{labels[int(taken[0])]}' and '{label}' share scalars of "
            f"'{name}'; make the index sets disjoint."
        )
    target[index] = gid


def _leftovers(ids: dict[str, torch.Tensor], next_id: int, rest: str) -> list[str]:
    """Labels of the groups made of the unclaimed scalars, numbered from ``next_id``."""
    labels: list[str] = []
    for name, t in ids.items():
        free = t < 0
        if not bool(free.any()):
            continue
        if rest == "error":
            raise PartitionError(
                f"gap: {int(free.sum())} scalars of '{name}' are in no group; add them to "
                "a group or pass rest='tensor'."
            )
        t[free] = next_id
        labels.append(name if bool(free.all()) else f"{name}.rest")
        next_id += 1
    return labels


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise PartitionError("the model has no trainable parameter (all frozen?)")
    return params


def _shapes(params: dict[str, nn.Parameter]) -> list[torch.Size]:
    return [p.shape for p in params.values()]


def _group(
    label: str,
    names: list[str],
    params: dict[str, nn.Parameter],
    size: int | None = None,
    norms: set[str] | frozenset = frozenset(),
    order: list[str] | None = None,
) -> Group:
    kinds = {parameter_kind(n, n in norms) for n in names}
    layers = list(dict.fromkeys(layer_name(n) for n in names))
    order = order if order is not None else list(dict.fromkeys(layer_name(n) for n in params))
    return Group(
        label=label,
        kind=kinds.pop() if len(kinds) == 1 else "mixed",
        layer="+".join(layers),
        layer_index=order.index(layers[0]) if len(layers) == 1 else -1,
        size=size if size is not None else sum(params[n].numel() for n in names),
        params=tuple(names),
    )


def _unravel(flat: int, shape: torch.Size) -> tuple[int, ...]:
    out = []
    for dim in reversed(shape):
        out.append(flat % dim)
        flat //= dim
    return tuple(reversed(out)) if shape else ()
