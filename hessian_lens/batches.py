"""The one data contract of every entry point: batches, samples, the loss's reduction.

Every entry point (:func:`~hessian_lens.pseudo_hessian`, ``summary_tensor``,
``taylor_terms``, ``Recorder``, ``analyze``, the optimizer's functional step) reads its data
through this module, so that a result never depends on how the data were cut:

* **Batches.** A batch is ``(inputs, targets)``, where each of the two may be a tensor, a
  tuple / list, a Mapping (a dict, Hugging Face's ``BatchEncoding``) or a dataclass, walked
  as a pytree; or a single Mapping of model keyword arguments (``{"input_ids": ..,
  "labels": ..}``: inputs = the mapping, no targets). ``data`` is one batch or a re-iterable
  of batches.
* **Samples.** Every tensor of a batch holds its samples along ``batch_dim`` (an int, or
  ``(inputs_dim, targets_dim)``); all must agree on the count. Micro-batches and shards cut
  only there.
* **The loss's reduction and weight.** With ``W_b`` what the loss of batch ``b`` divides
  by, the whole data's loss is::

      mean:  L = sum_b W_b L_b / sum_b W_b          sum:  L = sum_b L_b

  The reduction is read from a torch loss module (``.reduction``), declared
  (``reduction="mean" | "sum"``), seen (below), or verified on a batch of two or more
  samples: the loss of the batch against the losses of its two halves.
* **What a batch's loss divides by** (``W_b``, for every batch *and* micro-batch; the
  rule, in order, :class:`LossContract`, :mod:`hessian_lens.normalizers`):

  1. declared: ``normalizer=`` (a function from a batch to its weight), or the loss's own
     ``normalizer`` attribute (``next_token``: the targets that are not -100);
  2. a sum: 1;
  3. a torch cross-entropy / NLL module, function or ``functools.partial`` called on the
     batch's targets: the summed class weights of the targets that are not
     ``ignore_index`` (their count without class weights), read from the targets;
  4. a Hugging Face model's own loss (``loss_fn=None``, ``labels`` in the batch): the labels
     that are not -100, shifted by one for language-model heads, confirmed once per model
     structure and shapes against the call the model makes (else rule 5);
  5. any other loss (a lambda, any model's own loss) is *seen*: it runs under a
     torch-function mode recording every ``F.cross_entropy`` / ``F.nll_loss`` call with the
     targets, class weights, ``ignore_index`` and reduction it really used. A loss that
     returns the output of such a call divides by that call's weight: exact, nothing to
     check. Otherwise ``W_b`` is the weight of its one mean call or the sample count,
     checked on the halves of *every* batch (``W L = W_1 L_1 + W_2 L_2`` or
     ``L = L_1 + L_2``); ignored or class-weighted targets hidden in another expression
     are refused in one line naming ``normalizer=``;
  6. torch's other mean losses (``F.mse_loss``, ...) and per-sample losses reduced here:
     the sample count.

  A known weight is the check: its batches need no forward pass of their own (the model's
  structure is checked once per shapes, :data:`hessian_lens.engine.feed.VERIFIED`). A
  micro-batch whose weight is 0 (every target ignored) is skipped.
* **The same data in every pass.** Pass 1 fingerprints each batch (its sample count, a hash
  of the targets and of a strided sample of the inputs); pass 2 compares
  (:class:`Fingerprints`), so a shuffling loader raises :class:`DataChangedError` instead of
  giving a wrong number.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hessian_lens import normalizers as N

__all__ = [
    "DataChangedError",
    "Fingerprints",
    "LossContract",
    "as_batches",
    "count_samples",
    "fixed_batches",
    "narrow",
    "split_batch",
    "tree_leaves",
    "tree_map",
]

REDUCTIONS = ("mean", "sum")
FINGERPRINT_ELEMENTS = 1024  # strided input elements hashed per tensor
VERIFY_RTOL = {torch.float64: 1e-9, torch.float32: 2e-4}  # loss(batch) vs its two halves
IGNORE_INDEX = -100  # torch's default ignore_index of cross_entropy / nll_loss


class DataChangedError(ValueError):
    """The data gave other samples in the second pass than in the first."""


# ---------------------------------------------------------------------------- pytrees
def tree_map(fn: Callable[[Tensor], Any], tree: Any) -> Any:
    """``tree`` with ``fn`` applied to every tensor leaf (other leaves kept as they are).

    Containers: tuples (named tuples too), lists, Mappings (rebuilt as their own type when it
    accepts a dict, else as a dict) and dataclass instances.

    Example:
        >>> tree_map(lambda t: t * 2, {"a": torch.ones(1), "b": (torch.ones(1), 3)})
        {'a': tensor([2.]), 'b': (tensor([2.]), 3)}
    """
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, Mapping):
        return _rebuild_mapping(tree, {k: tree_map(fn, v) for k, v in tree.items()})
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(tree_map(fn, v) for v in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(tree_map(fn, v) for v in tree)
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        fields = {f.name: tree_map(fn, getattr(tree, f.name)) for f in dataclasses.fields(tree)}
        return dataclasses.replace(tree, **{f.name: fields[f.name] for f in _init_fields(tree)})
    return tree


def tree_leaves(tree: Any) -> list[Tensor]:
    """The tensor leaves of ``tree`` in a fixed order (that of :func:`tree_map`)."""
    leaves: list[Tensor] = []
    tree_map(lambda t: leaves.append(t) or t, tree)
    return leaves


def _init_fields(obj: Any) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(obj) if f.init]


def _rebuild_mapping(original: Mapping, items: dict) -> Mapping:
    """A mapping of ``original``'s type holding ``items`` (a dict when that type refuses)."""
    if type(original) is dict:
        return items
    try:
        return type(original)(items)
    except Exception:  # any constructor that does not take a dict
        return items


# ---------------------------------------------------------------------------- batches
def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` of one batch; a Mapping is the model's keyword arguments.

    Raises:
        TypeError: the batch is neither a pair nor a Mapping.
    """
    if isinstance(batch, Mapping):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(
        "a batch must be (inputs, targets) or a Mapping of model keyword arguments "
        f"(e.g. {{'input_ids': ..., 'labels': ...}}), got {_describe(batch)}"
    )


def is_single_batch(data: Any) -> bool:
    """Whether ``data`` is one batch rather than an iterable of batches.

    One batch: a Mapping, or a pair whose inputs are a tensor, or whose targets are a
    tensor, ``None`` or a Mapping while the inputs are not a Mapping. A list of two dict
    batches is therefore two batches (wrap a single ``(dict, dict)`` batch in a list).
    """
    if isinstance(data, Mapping):
        return True
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        return False
    x, y = data
    if isinstance(x, Tensor):
        return True
    if isinstance(y, Tensor) or y is None:
        return isinstance(x, (tuple, list, Mapping)) or dataclasses.is_dataclass(x)
    return isinstance(y, Mapping) and not isinstance(x, Mapping)


def as_batches(data: Any, two_passes: bool = True) -> Iterable:
    """One batch -> ``[batch]``; an iterable of batches as it is (checked re-iterable).

    Raises:
        TypeError: ``data`` is neither; or a one-shot iterator where two passes are needed.
    """
    if is_single_batch(data):
        return [data]
    if isinstance(data, (Tensor, str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(
            "data must be an (inputs, targets) batch, a Mapping of model keyword arguments, "
            f"or an iterable of such batches (e.g. a DataLoader), got {_describe(data)}"
        )
    if two_passes and isinstance(data, Iterator):  # no iter(): a loader would start workers
        raise TypeError(
            "data is a one-shot iterator, but the direction needs a first pass "
            "over it: pass a list of batches or hl.fixed_batches(loader, n), or give direction="
        )
    return data


def fixed_batches(loader: Iterable, n: int | None = None) -> list:
    """The first ``n`` batches of ``loader`` (all when ``None``), read once into a list.

    Every pass over the list sees the same samples, whatever the loader does between
    iterations (``shuffle=True``, ``drop_last``, random augmentation).

    Raises:
        ValueError: ``n`` is not a positive integer, or the loader has fewer batches.

    Example:
        >>> loader = torch.utils.data.DataLoader(
        ...     torch.utils.data.TensorDataset(torch.randn(10, 2), torch.zeros(10)),
        ...     batch_size=4, shuffle=True)
        >>> [len(x) for x, _ in fixed_batches(loader, 2)]
        [4, 4]
    """
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"n must be a positive integer or None, got {n!r}")
    batches = list(itertools.islice(loader, n))
    if n is not None and len(batches) < n:
        raise ValueError(f"the loader gave {len(batches)} batches, fewer than the {n} asked for")
    return batches


@dataclass(frozen=True)
class BatchDims:
    """Where the samples are: ``inputs`` and ``targets`` dimensions."""

    inputs: int = 0
    targets: int = 0

    @classmethod
    def of(cls, batch_dim: int | Sequence[int]) -> BatchDims:
        """From ``batch_dim=``: one int for both, or ``(inputs_dim, targets_dim)``.

        Raises:
            ValueError: not a non-negative int or a pair of them.
        """
        dims = (batch_dim, batch_dim) if isinstance(batch_dim, int) else tuple(batch_dim)
        if len(dims) != 2 or not all(isinstance(d, int) and d >= 0 for d in dims):
            raise ValueError(
                f"batch_dim must be an int >= 0 or a pair (inputs_dim, targets_dim), got "
                f"{batch_dim!r}"
            )
        return cls(*dims)


def count_samples(inputs: Any, targets: Any, dims: BatchDims) -> int:
    """The batch's sample count: the size of every tensor along its batch dimension.

    Raises:
        ValueError: a tensor has no such dimension, or two tensors disagree.
    """
    sizes: dict[int, list[str]] = {}
    for where, tree, dim in (("inputs", inputs, dims.inputs), ("targets", targets, dims.targets)):
        for i, t in enumerate(tree_leaves(tree)):
            if t.dim() <= dim:
                raise ValueError(
                    f"{where} tensor {i} has shape {tuple(t.shape)}: no batch dimension {dim}. "
                    "Give batch_dim= the dimension that holds the samples (an int, or "
                    "(inputs_dim, targets_dim) when they differ, e.g. (1, 0) for (T, N, F) "
                    "inputs and (N,) targets)"
                )
            sizes.setdefault(int(t.shape[dim]), []).append(f"{where} {i} {tuple(t.shape)}")
    if not sizes:
        raise ValueError("the batch holds no tensor: give (inputs, targets) tensors")
    if len(sizes) > 1:
        seen = "; ".join(f"{n} in {', '.join(w)}" for n, w in sizes.items())
        raise ValueError(
            f"the batch's tensors disagree on the sample count along batch_dim ({seen}). "
            "Give batch_dim= the dimension that holds the samples (e.g. batch_dim=1 for "
            "sequence-first (T, N, F) inputs), or pass non-sample tensors through forward="
        )
    return next(iter(sizes))


def narrow(tree: Any, dim: int, start: int, stop: int) -> Any:
    """Samples ``start:stop`` along ``dim`` of every tensor of ``tree``."""
    return tree_map(lambda t: t.narrow(dim, start, stop - start), tree)


def _describe(obj: Any) -> str:
    return type(obj).__name__


def describe(tree: Any, depth: int = 0) -> str:
    """A short description of a pytree: tensor shapes and dtypes, container keys."""
    if isinstance(tree, Tensor):
        return f"tensor{tuple(tree.shape)} {str(tree.dtype).replace('torch.', '')}"
    if depth > 1:
        return type(tree).__name__
    if isinstance(tree, Mapping):
        items = ", ".join(f"{k}: {describe(v, depth + 1)}" for k, v in list(tree.items())[:4])
        return f"{type(tree).__name__}{{{items}}}"
    if isinstance(tree, (tuple, list)):
        return f"{type(tree).__name__}({', '.join(describe(v, depth + 1) for v in tree[:4])})"
    return type(tree).__name__


# ---------------------------------------------------------------------------- fingerprints
def fingerprint(inputs: Any, targets: Any, samples: int) -> str:
    """A cheap digest of one batch: count, targets, a strided sample of the inputs."""
    h = hashlib.blake2b(str(samples).encode(), digest_size=16)
    for t in tree_leaves(targets):
        _hash_tensor(h, t, t.numel())
    for t in tree_leaves(inputs):
        _hash_tensor(h, t, FINGERPRINT_ELEMENTS)
    return h.hexdigest()


def _hash_tensor(h, t: Tensor, elements: int) -> None:
    flat = t.detach().reshape(-1)
    step = max(1, flat.numel() // max(elements, 1))
    sample = flat[::step][: max(elements, 1)].contiguous().cpu()
    h.update(f"{tuple(t.shape)}{t.dtype}".encode())
    if sample.dtype == torch.bfloat16:
        sample = sample.float()
    h.update(sample.numpy().tobytes())


@dataclass
class Fingerprints:
    """Pass 1 records a digest per batch; pass 2 checks it got the same batches."""

    seen: list[str] = field(default_factory=list)
    checking: bool = False
    position: int = 0

    def observe(self, inputs: Any, targets: Any, samples: int) -> None:
        """Record (pass 1) or compare (pass 2) the next batch's digest.

        Raises:
            DataChangedError: pass 2 got another batch than pass 1 at this position.
        """
        digest = fingerprint(inputs, targets, samples)
        if not self.checking:
            self.seen.append(digest)
            return
        if self.position >= len(self.seen) or self.seen[self.position] != digest:
            raise DataChangedError(_changed(self.position, len(self.seen)))
        self.position += 1

    def start_checking(self) -> None:
        """Switch to pass 2."""
        self.checking, self.position = True, 0

    def finish(self) -> None:
        """At the end of pass 2: it must have seen every batch of pass 1.

        Raises:
            DataChangedError: pass 2 had fewer batches.
        """
        if self.checking and self.position != len(self.seen):
            raise DataChangedError(_changed(self.position, len(self.seen), ended=True))

    def digest(self) -> str:
        """One digest of all the batches seen in pass 1."""
        return hashlib.blake2b("".join(self.seen).encode(), digest_size=8).hexdigest()


def _changed(position: int, first: int, ended: bool = False) -> str:
    if ended and position == 0:
        return (
            f"the data gave no batch the second time it was read (the first pass had {first}):"
            " a one-shot iterable (a generator, or an object whose __iter__ returns the same "
            "iterator every time) can be read once, and the direction needs two passes. "
            "Pass a list of batches or hl.fixed_batches(loader, n)"
        )
    return (
        f"the data changed between the two passes over it (batch {position + 1}; the first "
        f"pass had {first} batches): a DataLoader with shuffle=True or drop_last=True, a "
        "sampler, or random augmentation gives other samples each time, and H̄ would mix "
        "them. Pass hl.fixed_batches(loader, n) or a list of batches"
    )


# ---------------------------------------------------------------------------- the loss
WEIGHT_KINDS = ("normalizer", "sum", "targets", "labels", "samples", "observe")


@dataclass
class LossContract:
    """How a batch's loss is computed, reduced and weighted into the whole data's loss.

    Attributes:
        fn: ``fn(outputs, targets)``; ``None``: the model returns its own loss
            (``outputs.loss``, ``outputs["loss"]`` or a scalar tensor).
        reduction: ``"mean"`` or ``"sum"`` over samples, or ``None`` until found.
        reduce_output: the loss returns one value per sample, reduced here by ``reduction``.
        source: where the reduction comes from (``"declared"``, ``"read from the loss"``,
            ``"verified"``), for messages.
        normalizer: ``normalizer(batch) -> W_b``, declared or the loss's own attribute.
        kind: how ``W_b`` is found (:data:`WEIGHT_KINDS`, set by :meth:`bind`).
        shift: a Hugging Face model's own loss shifts its labels (language-model heads).
        seen: the observed weights of each batch (pass 2 reuses those of pass 1).
        dtype: the dtype of the last loss computed.
    """

    fn: Callable | None
    reduction: str | None
    reduce_output: bool = False
    source: str = "declared"
    normalizer: Callable | None = None
    kind: str = ""
    shift: bool = False
    seen: dict[int, tuple[list, list[float]]] = field(default_factory=dict)
    dtype: torch.dtype | None = None

    @classmethod
    def of(
        cls,
        loss_fn: Callable | None,
        reduction: str | None = None,
        normalizer: Callable | None = None,
    ) -> LossContract:
        """The contract of ``loss_fn``: declared, read from a torch loss module, or to verify.

        ``normalizer`` (or the loss's own ``normalizer`` attribute, as ``next_token`` has)
        makes the loss a mean weighted by ``normalizer(batch)``.

        Raises:
            ValueError: an unknown reduction; ``"none"`` without a declared reduction; a
                normalizer with ``reduction="sum"``.
            TypeError: ``loss_fn`` or ``normalizer`` is not callable.
        """
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable or None, got {type(loss_fn).__name__}")
        if reduction is not None and reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be 'mean', 'sum' or None, got {reduction!r}")
        normalizer = normalizer if normalizer is not None else _own_normalizer(loss_fn)
        if normalizer is not None and not callable(normalizer):
            raise TypeError(f"normalizer must be callable, got {type(normalizer).__name__}")
        own = _own_reduction(loss_fn)
        if normalizer is not None:
            if "sum" in (reduction, own):
                raise ValueError(
                    "normalizer= says what a mean divides by, but the loss is a sum over "
                    "samples: give one or the other"
                )
            return cls(loss_fn, "mean", own == "none", "declared", normalizer)
        if own == "none" and reduction is None:
            raise ValueError(
                f"{_name(loss_fn)} with reduction='none' returns one loss per sample: "
                "give reduction='mean' or 'sum' to say how to reduce it"
            )
        if own in ("mean", "sum", "batchmean") and reduction is None:
            return cls(loss_fn, "sum" if own == "sum" else "mean", source="read from the loss")
        if reduction is not None:
            return cls(loss_fn, reduction, reduce_output=own == "none", source="declared")
        return cls(loss_fn, None, source="verified")

    def bind(self, model: nn.Module | None) -> None:
        """Decide once how ``W_b`` is found for this model (:data:`WEIGHT_KINDS`).

        ``normalizer``: declared; ``sum``: every batch weighs 1; ``targets``: a torch
        cross-entropy / NLL on the batch's targets; ``labels``: a Hugging Face model's own
        loss (its labels, shifted for LM heads); ``samples``: torch's other mean losses
        and per-sample losses reduced here; ``observe``: any other loss, weighted by what
        it is seen to divide by (:mod:`hessian_lens.normalizers`).
        """
        if self.kind:
            return
        if self.normalizer is not None:
            self.kind = "normalizer"
        elif self.reduce_output:
            self.kind = "sum" if self.reduction == "sum" else "samples"
        elif self.reduction == "sum" and self.source == "read from the loss":
            self.kind = "sum"
        elif _index_loss_options(self.fn) is not None:
            self.kind = "targets"
        elif self.fn is None and N.hugging_face_model(model):
            self.kind, self.shift = "labels", N.causal_lm(model)
        elif self.source == "read from the loss":
            self.kind = "samples"
        elif self.reduction == "sum":
            self.kind = "sum"
        else:
            self.kind = "observe"

    def __call__(self, outputs: Any, targets: Any) -> Tensor:
        """The batch's loss, a scalar in the contract's reduction."""
        loss = _own_loss(outputs) if self.fn is None else self._call(outputs, targets)
        if not isinstance(loss, Tensor):
            raise TypeError(f"the loss must be a tensor, got {type(loss).__name__}")
        self.dtype = loss.dtype
        if loss.dim() == 0:
            return loss
        if self.reduction is None:
            raise ValueError(
                f"the loss has shape {tuple(loss.shape)}, not a scalar: give reduction='mean' "
                "or 'sum' to reduce per-sample losses, or a loss_fn that returns a scalar"
            )
        return loss.mean() if self.reduction == "mean" else loss.sum()

    def _call(self, outputs: Any, targets: Any) -> Tensor:
        try:
            return self.fn(outputs, targets)
        except (TypeError, ValueError, RuntimeError, IndexError, AttributeError, KeyError) as err:
            raise ValueError(
                f"loss_fn(outputs, targets) failed ({type(err).__name__}: {first_line(err)}) "
                f"on outputs {describe(outputs)} and targets {describe(targets)}: give a "
                "loss_fn that takes them, or loss_fn=None when the model returns its own loss"
            ) from err

    def weight(self, inputs: Any, targets: Any, samples: int) -> float:
        """``W_b`` of a known kind: this batch's share of a mean (1 for a sum).

        The declared normalizer; for a torch cross-entropy / NLL the summed class weights
        of the targets that are not ignored; for a Hugging Face model's own loss its valid
        labels (:func:`~hessian_lens.normalizers.label_weight`); else the sample count.

        Raises:
            ValueError: a normalizer that gives no finite number >= 0.
        """
        if self.reduction == "sum" or self.kind == "sum":
            return 1.0
        if self.kind == "normalizer":
            return _normalized(self.normalizer, inputs if targets is None else (inputs, targets))
        if self.kind == "labels":
            return N.label_weight(inputs, samples, self.shift)
        options = _index_loss_options(self.fn) if self.kind == "targets" else None
        if options is None or not _class_targets(targets):
            return float(samples)
        class_weight, ignore = options
        return N.index_weight(targets, targets, class_weight, ignore)[0]

    def weigh(self, seen: N.Observation, samples: int) -> tuple[float, bool]:
        """``W_b`` of an observed loss, and whether it is exact (no check of values needed).

        Exact when the loss returned the output of a cross-entropy / NLL call: its weight
        (1 for a sum; the reduction is settled from it). Else, a single mean call's weight
        or the sample count, to be checked on the batch's halves.

        Raises:
            ValueError: the call's reduction contradicts the contract's; or ignored or
                class-weighted targets inside a loss whose weight cannot be seen.
        """
        call = seen.explained
        if call is not None:
            if self.reduction not in (None, call.reduction):
                raise ValueError(_seen_reduction(call.reduction, self.reduction, self.source))
            self.reduction = self.reduction or call.reduction
            self.source = "read from the loss"
            return (1.0 if call.reduction == "sum" else call.weight), True
        single = seen.single_mean
        if seen.uneven and single is None:
            raise ValueError(_hidden_weights(seen))
        return (single.weight if single is not None else float(samples)), False

    def check(self, evaluate, inputs, targets, dims, samples, weigh) -> None:
        """Check the reduction on this batch: its loss against its two halves' losses.

        ``W L = W_1 L_1 + W_2 L_2`` for a mean, ``L = L_1 + L_2`` for a sum, with ``W``
        from ``weigh(observation, inputs, targets, samples)`` (a part whose weight is 0
        holds no valid target and counts nothing).

        Args:
            evaluate: ``(inputs, targets) -> loss`` of the model on those samples.
            inputs: the batch's inputs.
            targets: the batch's targets (``None`` for the model's own loss).
            dims: where the samples are.
            samples: the batch's sample count.
            weigh: the weight of each part.

        Raises:
            ValueError: neither a mean nor a sum over samples (or both: say which).
        """
        if samples < 2:
            return
        half = samples // 2
        losses, weights = [], []
        with torch.no_grad():
            for a, b in ((0, samples), (0, half), (half, samples)):
                px, py = narrow(inputs, dims.inputs, a, b), _narrow_y(targets, dims, a, b)
                seen = N.observe(lambda px=px, py=py: evaluate(px, py))
                losses.append(float(seen.value))
                weights.append(float(weigh(seen, px, py, b - a)))
        self._settle(losses, weights, _rtol(inputs))

    def _settle(self, losses: list[float], weights: list[float], rtol: float) -> None:
        whole, a, b = losses
        if weights[0] == 0:
            return  # no valid target in this batch: nothing to check
        counted = [(w, v) for w, v in zip(weights, losses, strict=True) if w]
        if not all(math.isfinite(v) for _, v in counted):
            raise ValueError(_not_finite(losses, weights))
        scale = max((abs(v) for _, v in counted), default=1e-30) or 1e-30
        parts = sum(w * v for w, v in counted[1:])
        mean_like = abs(whole * weights[0] - parts) <= rtol * scale * weights[0]
        sum_like = all(map(math.isfinite, losses)) and abs(whole - (a + b)) <= rtol * scale
        found = {"mean": mean_like, "sum": sum_like}
        if self.reduction is not None:
            if not found[self.reduction]:
                raise ValueError(_not_reduction(self.reduction, losses, self.source))
        elif mean_like == sum_like:
            raise ValueError(_ambiguous(losses, mean_like))
        else:
            self.reduction = "mean" if mean_like else "sum"


_INDEX_LOSSES = N.INDEX_LOSSES
# torch's functional losses whose default reduction is a mean over samples (elementwise
# means: every sample has as many elements)
_MEAN_BY_DEFAULT = (
    *_INDEX_LOSSES,
    F.mse_loss,
    F.l1_loss,
    F.smooth_l1_loss,
    F.huber_loss,
    F.binary_cross_entropy,
    F.binary_cross_entropy_with_logits,
)


def _own_reduction(loss_fn: Callable | None) -> str | None:
    """The reduction a loss says it has.

    A module's or a function's ``reduction`` attribute, a ``functools.partial``'s
    ``reduction=`` keyword, or ``"mean"`` for torch's functional losses.
    """
    if isinstance(loss_fn, functools.partial):
        if "reduction" in loss_fn.keywords:
            return loss_fn.keywords["reduction"]
        loss_fn = loss_fn.func
    own = getattr(loss_fn, "reduction", None)
    if isinstance(own, str):
        return own
    return "mean" if any(loss_fn is f for f in _MEAN_BY_DEFAULT) else None


def _own_normalizer(loss_fn: Callable | None) -> Callable | None:
    """The normalizer a loss function declares itself (``next_token.normalizer``)."""
    own = getattr(loss_fn, "normalizer", None)
    return own if callable(own) and not isinstance(loss_fn, nn.Module) else None


def _normalized(normalizer: Callable, batch: Any) -> float:
    value = normalizer(batch)
    value = float(value.detach().sum()) if isinstance(value, Tensor) else value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(
            f"normalizer(batch) must give what the batch's mean loss divides by, a number "
            f">= 0, got {value!r}"
        )
    if not math.isfinite(value):
        raise ValueError(f"normalizer(batch) gave {value}: it must be a finite number >= 0")
    return float(value)


def _name(loss_fn: Callable | None) -> str:
    return getattr(loss_fn, "__name__", type(loss_fn).__name__)


def _index_loss_options(fn: Callable | None) -> tuple[Tensor | None, int] | None:
    """``(class weights, ignore_index)`` of a cross-entropy / NLL loss, else ``None``."""
    if isinstance(fn, (nn.CrossEntropyLoss, nn.NLLLoss)):
        return fn.weight, fn.ignore_index
    keywords = fn.keywords if isinstance(fn, functools.partial) else {}
    if (fn.func if isinstance(fn, functools.partial) else fn) in _INDEX_LOSSES:
        return keywords.get("weight"), keywords.get("ignore_index", IGNORE_INDEX)
    return None


def _class_targets(y: Any) -> bool:
    return isinstance(y, Tensor) and not y.is_floating_point() and not y.is_complex()


def _narrow_y(targets: Any, dims: BatchDims, start: int, stop: int) -> Any:
    return None if targets is None else narrow(targets, dims.targets, start, stop)


def _rtol(inputs: Any) -> float:
    leaves = [t for t in tree_leaves(inputs) if t.is_floating_point()]
    dtype = leaves[0].dtype if leaves else torch.float32
    return VERIFY_RTOL.get(dtype, 1e-2)


def first_line(err: BaseException) -> str:
    """The first line of an error's message, whole (or its type's name when empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


NORMALIZER_HINT = (
    "declare what each batch's loss divides by: normalizer=lambda batch: "
    "(batch[1] != -100).sum() (its valid targets), or reduction='sum'"
)


def _not_reduction(reduction: str, losses: list[float], source: str) -> str:
    whole, a, b = losses
    return (
        f"the loss is {source} as a {reduction} over samples, but on this batch it is "
        f"{whole:.6g} while its halves give {a:.6g} and {b:.6g}: declare the right "
        f"reduction= ('mean' or 'sum'), or, for a mean over valid targets, {NORMALIZER_HINT}"
    )


def _seen_reduction(seen: str, reduction: str, source: str) -> str:
    return (
        f"the loss is {source} as a {reduction} over samples, but it returns a "
        f"cross-entropy / NLL with reduction='{seen}': declare reduction='{seen}'"
    )


def _ambiguous(losses: list[float], both: bool) -> str:
    whole, a, b = losses
    if both:
        return (
            f"cannot tell whether the loss is a mean or a sum over samples (the batch and "
            f"its halves give {whole:.6g}, {a:.6g}, {b:.6g}): declare reduction='mean' or "
            "reduction='sum'"
        )
    return (
        f"the loss is neither a mean nor a sum over samples: a batch gives {whole:.6g}, its "
        f"halves {a:.6g} and {b:.6g}, and no cross-entropy / NLL call explains it (ignored "
        "targets or class weights inside another expression, a loss squared, a mean over "
        "another count). Hessian Lens needs the whole data's loss from its batches' "
        f"losses: {NORMALIZER_HINT}"
    )


def _hidden_weights(seen: N.Observation) -> str:
    calls = ", ".join(f"reduction='{c.reduction}' over weight {c.weight:g}" for c in seen.calls)
    return (
        f"the loss runs {len(seen.calls)} cross-entropy / NLL call(s) with ignored or "
        f"class-weighted targets ({calls}) inside an expression that returns another value, "
        "so what it divides by cannot be seen: return the cross-entropy itself, or "
        f"{NORMALIZER_HINT}"
    )


def _not_finite(losses: list[float], weights: list[float]) -> str:
    whole, a, b = losses
    return (
        f"the loss is not finite on a batch ({whole}; its halves give {a} and {b}, holding "
        f"{weights[1]:g} and {weights[2]:g} valid targets or samples): check the inputs for "
        "NaN or infinite values, and the model's weights"
    )


def _own_loss(outputs: Any) -> Tensor:
    """The loss a model returned itself (``loss_fn=None``)."""
    loss = getattr(outputs, "loss", None)
    if loss is None and isinstance(outputs, Mapping):
        loss = outputs.get("loss")
    if loss is None and isinstance(outputs, Tensor) and outputs.dim() == 0:
        loss = outputs
    if loss is None:
        raise ValueError(
            f"loss_fn=None, but the model's output ({_describe(outputs)}) has no loss: give "
            "the labels in the batch (e.g. 'labels' for Hugging Face models) or a loss_fn"
        )
    return loss
