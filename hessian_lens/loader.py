"""Re-iterable, seeded batches of a data set: what training and analysis iterate over.

A data set here is anything with ``len()`` and ``prepare(indices) -> (inputs, targets)``
(:class:`hessian_lens.data.ImageData`, :class:`hessian_lens.text.TextData`). The order is
the data's own, or a permutation seeded by ``(seed, epoch)``: a resumed run replays it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["SHUFFLE_STRIDE", "Loader"]

SHUFFLE_STRIDE = 100_003  # a prime: (seed, epoch) -> distinct shuffle seeds


class Loader:
    """Re-iterable batches of a data set (``len`` and ``prepare(indices)``), seeded shuffles.

    Shuffling depends on (seed, epoch); ``data.prepare(idx)`` makes a batch.
    """

    def __init__(self, data, batch_size: int, shuffle: bool = False, seed: int = 0) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.data, self.batch_size, self.shuffle, self.seed = data, batch_size, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffle order of ``epoch`` (resuming a run replays the same order)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch_size)

    def _order(self) -> Tensor | None:
        """The epoch's shuffled order, or None (in order: each batch's indices made as drawn).

        int32 below 2**31 items: the same permutation as int64, half the memory.
        """
        n = len(self.data)
        if not self.shuffle:
            return None
        gen = torch.Generator().manual_seed(self.seed * SHUFFLE_STRIDE + self.epoch)
        return torch.randperm(n, generator=gen, dtype=torch.int32 if n < 2**31 else torch.int64)

    def _indices(self, order: Tensor | None, start: int) -> Tensor:
        stop = min(start + self.batch_size, len(self.data))
        return torch.arange(start, stop) if order is None else order[start:stop].long()

    def batch(self, index: int) -> tuple[Tensor, Tensor]:
        """Batch number ``index`` of the current order."""
        return self.data.prepare(self._indices(self._order(), index * self.batch_size))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self._order()
        for start in range(0, len(self.data), self.batch_size):
            yield self.data.prepare(self._indices(order, start))
