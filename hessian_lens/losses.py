"""Loss functions by name: what ``--loss`` chooses and what a run and an analysis record.

Each returns the batch *mean*, as the engine expects (``loss_fn(outputs, targets)``):

* ``cross_entropy`` (default): ``F.cross_entropy`` on logits and class indices.
* ``mse``: ``F.mse_loss``; integer class targets are one-hot encoded to the outputs' width,
  real targets of the outputs' shape are used as they are.
* ``nll``: ``F.nll_loss``, for models whose outputs are already log-probabilities.
* ``next_token``: mean cross-entropy per token of (B, T, V) logits against (B, T) next
  tokens (a language model; in nats per token, per byte for byte-level tokens); targets
  -100 (padding) are ignored, and a batch weighs its valid tokens
  (``next_token.normalizer``, :mod:`hessian_lens.normalizers`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from hessian_lens.normalizers import valid_targets

LOSSES = ("cross_entropy", "mse", "nll", "next_token")
OWN_LOSS = "model"  # a run whose model returns its own loss (loss_fn=None)
LossFn = Callable[[Tensor, Tensor], Tensor]


def mse(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean squared error; class indices become one-hot rows of the outputs' width.

    Example:
        >>> import torch
        >>> out = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
        >>> float(mse(out, torch.tensor([0, 1]))), float(mse(out, torch.zeros(2, 2)))
        (0.25, 0.25)
    """
    if not targets.is_floating_point():
        if outputs.dim() != 2:
            raise ValueError(
                f"mse with class targets needs (N, classes) outputs, got {tuple(outputs.shape)}"
            )
        targets = F.one_hot(targets.long(), outputs.shape[1]).to(outputs.dtype)
    elif targets.shape != outputs.shape:
        targets = targets.reshape(outputs.shape) if targets.numel() == outputs.numel() else targets
    if targets.shape != outputs.shape:
        raise ValueError(
            f"mse: targets of shape {tuple(targets.shape)} do not match outputs "
            f"{tuple(outputs.shape)}"
        )
    return F.mse_loss(outputs, targets)


def next_token(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy per valid token: logits (B, T, V), targets (B, T) of token ids.

    Targets -100 (padding) are ignored: the mean is over the others, so a batch weighs
    its valid tokens in the whole data's loss (``next_token.normalizer``).

    Example:
        >>> import torch
        >>> out = torch.zeros(2, 3, 4)
        >>> round(float(next_token(out, torch.zeros(2, 3, dtype=torch.long))), 4)  # log 4
        1.3863
    """
    if outputs.dim() != 3 or targets.shape != outputs.shape[:2]:
        raise ValueError(
            f"next_token needs (batch, T, vocab) logits and (batch, T) targets, got "
            f"{tuple(outputs.shape)} and {tuple(targets.shape)}"
        )
    return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1).long())


next_token.reduction = "mean"
next_token.normalizer = valid_targets  # what the mean divides by: the tokens that are not -100


def correct_predictions(outputs: Tensor, targets: Tensor) -> int:
    """How many argmax predictions equal the targets (classes, or tokens of (B, T, V)).

    0 when the outputs are not class scores of the targets' shape (regression).
    """
    scores = outputs.dim() == targets.dim() + 1 and outputs.shape[:-1] == targets.shape
    if scores and not targets.is_floating_point():
        return int((outputs.argmax(-1) == targets).sum())
    return 0


def get_loss(name: str) -> LossFn | None:
    """The loss function of a name in :data:`LOSSES`; ``None`` for :data:`OWN_LOSS`.

    Raises:
        ValueError: unknown name, listing the known ones.
    """
    table: dict[str, LossFn] = {
        "cross_entropy": F.cross_entropy,
        "mse": mse,
        "nll": F.nll_loss,
        "next_token": next_token,
    }
    key = str(name).lower().replace("-", "_")
    if key == OWN_LOSS:
        return None
    if key not in table:
        raise ValueError(f"unknown loss '{name}'; choose one of {list(LOSSES)}")
    return table[key]
