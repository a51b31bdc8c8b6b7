"""What a batch's loss divides by: the weight ``W_b`` of a mean, known or seen.

The whole data's mean loss is ``L = sum_b W_b L_b / sum_b W_b`` (:mod:`hessian_lens.batches`),
so every batch and micro-batch must be weighted by what its own loss divides by. For a
cross-entropy or NLL mean that is not the sample count but its *valid targets*: the summed
class weights of the targets that are not ``ignore_index`` (their count without class
weights) — the padding of a language model changes it from batch to batch.

This module finds that weight without trusting how the loss is written:

* :func:`observe` runs a loss under a torch-function mode that records every
  ``F.cross_entropy`` and ``F.nll_loss`` call (torch's modules call them too, and so do
  Hugging Face models' own losses) with the targets, class weights, ``ignore_index`` and
  reduction it actually used; :class:`Observation` says whether the loss returned the
  output of one such call, and what that call divides by (:func:`index_weight`).
* :func:`label_weight` is the rule for a Hugging Face model's own loss: the labels that are
  not -100, shifted by one for language-model heads (:func:`causal_lm`).
* :func:`valid_targets` is the normalizer of a token loss on ``(inputs, targets)`` batches
  (the project's ``next_token`` declares it).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = [
    "IGNORE_INDEX",
    "IndexCall",
    "Observation",
    "causal_lm",
    "hugging_face_model",
    "index_weight",
    "label_weight",
    "observe",
    "valid_targets",
]

IGNORE_INDEX = -100  # torch's default ignore_index, and Hugging Face's label padding
INDEX_LOSSES = (F.cross_entropy, F.nll_loss)
CAUSAL_LOSS_TYPES = ("ForCausalLM", "ForConditionalGeneration")  # transformers' shifted losses
_SIGNATURES = {f: inspect.signature(f) for f in INDEX_LOSSES}


@dataclass(frozen=True)
class IndexCall:
    """One cross-entropy / NLL call as it ran.

    Attributes:
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        weight: what its mean divides by (:func:`index_weight`).
        uneven: some target ignored or class-weighted: the weight is not the target count.
        output: the tensor the call returned.
    """

    reduction: str
    weight: float
    uneven: bool
    output: Tensor = field(repr=False)


@dataclass
class Observation:
    """A loss value and the cross-entropy / NLL calls that computed it."""

    value: Tensor
    calls: list[IndexCall]

    @property
    def explained(self) -> IndexCall | None:
        """The call whose output the loss *is* (the same tensor), else ``None``.

        Then the loss divides by exactly what that call divides by.
        """
        mean_or_sum = [c for c in self.calls if c.reduction in ("mean", "sum")]
        return next((c for c in mean_or_sum if c.output is self.value), None)

    @property
    def single_mean(self) -> IndexCall | None:
        """The one call, when the loss ran exactly one and it was a mean."""
        if len(self.calls) == 1 and self.calls[0].reduction == "mean":
            return self.calls[0]
        return None

    @property
    def uneven(self) -> bool:
        """Whether some call ignored or class-weighted its targets."""
        return any(c.uneven for c in self.calls)


class _IndexLossSpy(TorchFunctionMode):
    """Records the cross-entropy / NLL calls made while active (nothing else changes)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[IndexCall] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if any(func is f for f in INDEX_LOSSES) and isinstance(out, Tensor):
            self.calls.append(_index_call(func, args, kwargs, out))
        return out


def observe(loss: Callable[[], Tensor]) -> Observation:
    """Run ``loss()`` and record the cross-entropy / NLL calls it makes.

    Example:
        >>> logits, t = torch.zeros(4, 3), torch.tensor([0, 1, -100, 2])
        >>> seen = observe(lambda: F.cross_entropy(logits, t))
        >>> seen.explained.weight, seen.explained.uneven
        (3.0, True)
        >>> observe(lambda: 2 * F.cross_entropy(logits, t)).explained is None
        True
    """
    with _IndexLossSpy() as spy:
        value = loss()
    return Observation(value, spy.calls)


def _index_call(func, args, kwargs, out: Tensor) -> IndexCall:
    bound = _SIGNATURES[func].bind(*args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    reduction = a["reduction"]
    if a["size_average"] is not None or a["reduce"] is not None:  # torch's legacy flags
        reduction = nn._reduction.legacy_get_string(a["size_average"], a["reduce"], False)
    weight, uneven = index_weight(a["input"], a["target"], a["weight"], a["ignore_index"])
    return IndexCall(reduction, weight, uneven, out)


def index_weight(
    inputs: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int
) -> tuple[float, bool]:
    """What a cross-entropy / NLL mean divides by, and whether it is not the target count.

    Class targets: ``sum_i weight[t_i] [t_i != ignore_index]`` (the count of the targets
    that are not ignored without class weights), as torch's ``nll_loss`` total weight.
    Probability targets: the number of positions (``inputs.numel() / classes``).

    Example:
        >>> index_weight(torch.zeros(3, 2), torch.tensor([0, 1, 1]), torch.tensor([1.0, 3.0]), -100)
        (7.0, True)
    """
    if target.is_floating_point():
        classes = inputs.shape[1] if inputs.dim() > 1 else inputs.shape[0]
        return float(inputs.numel() // max(classes, 1)), False
    keep = target != ignore_index
    if weight is None:
        kept = int(keep.sum())
        return float(kept), kept != target.numel()
    w = weight.detach().to(target.device)[torch.where(keep, target, 0)] * keep
    kept_w = w[keep]
    equal = kept_w.numel() == 0 or bool((kept_w == kept_w[0]).all())
    return float(w.sum()), not (bool(keep.all()) and equal)


# ---------------------------------------------------------------------------- known rules
def valid_targets(batch: Any, ignore_index: int = IGNORE_INDEX) -> float:
    """The targets of an ``(inputs, targets)`` batch that are not ``ignore_index``.

    What a token cross-entropy mean divides by (``next_token``'s normalizer).

    Example:
        >>> valid_targets((None, torch.tensor([[1, 2, -100], [3, -100, -100]])))
        3.0
    """
    targets = batch[1] if isinstance(batch, (tuple, list)) else batch["labels"]
    return float((targets != ignore_index).sum())


def hugging_face_model(model: nn.Module | None) -> bool:
    """Whether ``model`` is a ``transformers.PreTrainedModel`` (without importing it)."""
    return model is not None and any(
        c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers")
        for c in type(model).__mro__
    )


def causal_lm(model: nn.Module) -> bool:
    """Whether a Hugging Face model's own loss shifts its labels by one (LM heads).

    transformers picks the loss from the class name (``loss_type``) and falls back to
    the causal language-model loss (``GPT2LMHeadModel`` has none of the names).
    """
    loss_type = getattr(model, "loss_type", None)
    if loss_type is None:
        return True
    return str(loss_type) in CAUSAL_LOSS_TYPES


def label_weight(inputs: Any, samples: int, shift: bool) -> float:
    """What a Hugging Face model's own loss divides by, from the batch's ``labels``.

    Integer labels: those that are not -100, after dropping the first position of every
    sequence for a shifted (causal language-model) loss; float labels (regression,
    multi-label): the sample count.

    Example:
        >>> batch = {"labels": torch.tensor([[5, 6, -100], [7, -100, -100]])}
        >>> label_weight(batch, 2, shift=True), label_weight(batch, 2, shift=False)
        (1.0, 3.0)
    """
    labels = inputs.get("labels") if isinstance(inputs, Mapping) else None
    if not isinstance(labels, Tensor) or labels.is_floating_point():
        return float(samples)
    if shift:
        labels = labels[..., 1:]
    return float((labels != IGNORE_INDEX).sum())
