"""The one gradient call of the engine and of :mod:`hessian_lens.optim`, with clear errors."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["differentiate"]

NO_GRAPH_HINTS = ("second time", "does not require grad")  # autograd: the graph is gone
NO_HIGHER_ORDER_HINT = "does not support"  # autograd: no derivative of that order
NOT_IMPLEMENTED = re.compile(r"derivative for (\S+) is not implemented")  # e.g. multi_margin


def differentiate(
    output: Tensor,
    inputs: Sequence[Tensor],
    *,
    create_graph: bool = False,
    retain_graph: bool = True,
    allow_constant: bool = True,
) -> list[Tensor]:
    """``d output / d inputs`` by autograd, zeros where ``output`` does not depend on an input.

    The one gradient call of the engine and of :mod:`hessian_lens.optim`.

    Args:
        output: the tensor to differentiate (a loss, or a sum of gradient entries).
        inputs: the tensors to differentiate with respect to.
        create_graph: keep the graph of the result (for a further derivative).
        retain_graph: keep the graph of ``output`` (for another pass through it).
        allow_constant: an ``output`` without graph has zero derivatives; ``False`` raises.

    Raises:
        ValueError: PyTorch has no derivative of that order (BatchNorm in train mode).
        RuntimeError: the graph of ``output`` is gone (backward() already called on it).
    """
    if allow_constant and not output.requires_grad:
        return [torch.zeros_like(t) for t in inputs]
    try:
        return list(
            torch.autograd.grad(
                output,
                inputs,
                retain_graph=retain_graph,
                create_graph=create_graph,
                allow_unused=True,
                materialize_grads=True,
            )
        )
    except RuntimeError as err:
        explained = _explained(err)
        if explained is None:
            raise
        raise explained from err


def _explained(err: RuntimeError) -> Exception | None:
    """A clearer error for the autograd failures users can fix, else ``None``."""
    text = str(err)
    missing = NOT_IMPLEMENTED.search(text)
    if missing:
        return ValueError(
            f"PyTorch has no derivative of {missing.group(1)}, so the loss cannot be "
            "differentiated as often as asked (H̄ needs a second derivative of the loss and "
            "of every layer; nn.MultiMarginLoss has none): use a loss and layers with one "
            "(e.g. cross_entropy), or ask for the gradient only (hl.pseudo_gradient)"
        )
    if NO_HIGHER_ORDER_HINT in text:
        return ValueError(
            f"PyTorch cannot differentiate this model that many times ({err}). "
            "BatchNorm in train mode has no 3rd-order derivative: analyse in "
            "eval mode (train_mode=False, the default) or ask for order <= 2."
        )
    if any(hint in text for hint in NO_GRAPH_HINTS):
        return RuntimeError(
            "the loss has no autograd graph left: PartitionNewton differentiates the "
            "closure's loss itself: return the loss without calling backward() in the "
            f"closure ({err})"
        )
    return None
