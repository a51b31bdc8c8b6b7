"""Pass 2 kept on disk as it goes, so that a killed computation resumes where it stopped.

With ``Options(resume=path)`` the driver writes pass 2's running sums (the
:class:`~hessian_lens.engine.accumulate.Accumulator`'s) to ``path`` after every batch of rows
of H̄ (H̄ alone, computed along the groups) or after every micro-batch (other orders),
with the position reached: ``(micro-batch b, next row r)``. A later call with the same
file, model, data and options recomputes the direction (pass 1), checks it against the one
stored (per-tensor norms, to a relative 1e-5, 1e-10 in float64: the same data summed with
another thread count differs in float32's last digits), loads the sums and continues at
micro-batch b, row r: the rows already stored are kept. A file written for other groups,
orders, dtype or data (its direction differs) is set aside with a warning and the call
starts over. The file is an ``.npz`` of plain arrays
(read with ``allow_pickle=False``), replaced atomically; once complete it holds the whole
result (a call again only recomputes the direction), and the caller removes it. Under
``torch.distributed`` every rank keeps its own file (``path`` with ``.rank<r>of<w>``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from hessian_lens.engine.feed import Totals
from hessian_lens.io.files import atomic_write

__all__ = ["PARTIAL_FORMAT", "Partial"]

PARTIAL_FORMAT = "hessian-lens-partial/1"
# a recomputed direction matches the stored one to this (per-tensor norms, relative): the
# same weights and data summed in another order (another thread count) differ in float32's
# last digits, other data or weights by far more
DIRECTION_RTOL = {torch.float64: 1e-10}
DIRECTION_RTOL_DEFAULT = 1e-5


class Partial:
    """The running sums of pass 2 on disk and the position they reach (module docstring).

    Args:
        path: the file (``None``: nothing is kept; every method is a no-op).
        every_s: write at most this often (seconds); the end of a micro-batch always writes.
    """

    def __init__(self, path: str | os.PathLike | None, every_s: float = 0.0) -> None:
        self.path = None if path is None else Path(path)
        self.every_s = every_s
        self.batch, self.row = 0, 0
        self._stored: dict | None = None
        self._last = 0.0

    @classmethod
    def for_rank(cls, path, rank: int, world: int, every_s: float = 0.0) -> Partial:
        """This rank's file: ``path`` itself in one process, ``path.rank<r>of<w>`` else."""
        if path is None or world <= 1:
            return cls(path, every_s)
        return cls(f"{path}.rank{rank}of{world}", every_s)

    @property
    def on(self) -> bool:
        """Whether sums are kept on disk."""
        return self.path is not None

    def start(self, acc) -> None:
        """Load the stored sums into ``acc`` when they belong to this computation.

        Called once the direction is known (after pass 1). Sets :attr:`batch` and
        :attr:`row`, the position to continue from (0, 0 when nothing is stored).
        """
        if self.path is None or not self.path.exists():
            return
        try:
            meta, sums = _read(self.path)
        except (OSError, ValueError, KeyError) as err:
            self._set_aside(f"it cannot be read ({err})")
            return
        if meta.get("key") != _key(acc):
            self._set_aside("it belongs to another computation (groups, orders, dtype, shapes)")
            return
        if not _same_direction(meta.get("direction"), _norms(acc), acc.state.dtype):
            self._set_aside("it belongs to another computation (its direction: data or weights)")
            return
        _load(acc, sums)
        self.batch, self.row = int(meta["batch"]), int(meta["row"])

    def skip(self, b: int) -> bool:
        """Whether micro-batch ``b`` is already in the loaded sums."""
        return b < self.batch

    def first_row(self, b: int) -> int:
        """The first row of H̄ micro-batch ``b`` still needs (0 unless resumed inside it)."""
        return self.row if b == self.batch else 0

    def save(self, acc, batch: int, row: int, *, force: bool = False) -> None:
        """Write the sums of ``acc`` reaching micro-batch ``batch``, row ``row`` (atomic)."""
        if self.path is None:
            return
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        meta = {"format": PARTIAL_FORMAT, "key": _key(acc), "batch": batch, "row": row}
        meta["direction"] = _norms(acc)
        sums = [t.detach().to("cpu", torch.float64).numpy() for t in acc.sums()]
        arrays = {f"sum{i}": a for i, a in enumerate(sums)}

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, meta=np.array(json.dumps(meta)), **arrays)

        atomic_write(self.path, write)
        self._last = now

    def remove(self) -> None:
        """Delete the file (the computation returned its result)."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def _set_aside(self, why: str) -> None:
        aside = self.path.with_name(self.path.name + ".stale")
        os.replace(self.path, aside)
        warnings.warn(
            f"{self.path} was not resumed: {why}; starting over (the file is kept as {aside})",
            RuntimeWarning,
            stacklevel=4,
        )


def _load(acc, sums: list[np.ndarray]) -> None:
    """Put stored sums (laid out as ``acc.sums()``) into ``acc`` (no sample counted yet: ok)."""
    tensors = iter(torch.as_tensor(a).to(acc.state.device, acc.state.dtype) for a in sums)
    acc.full = {k: next(tensors) for k in acc.full}
    acc.diag = {k: next(tensors) for k in acc.diag}
    acc.loss_sum = float(next(tensors))
    acc.totals = Totals(round(float(next(tensors))), float(next(tensors)))


def _read(path: Path) -> tuple[dict, list[np.ndarray]]:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        if meta.get("format") != PARTIAL_FORMAT:
            raise ValueError(f"not a {PARTIAL_FORMAT} file")
        count = len([k for k in z.files if k.startswith("sum")])
        return meta, [z[f"sum{i}"] for i in range(count)]


def _norms(acc) -> list[float]:
    """The per-tensor norms of the direction (what identifies the data and weights)."""
    return [float(torch.linalg.vector_norm(t.double())) for t in acc.direction]


def _same_direction(stored, now: list[float], dtype: torch.dtype) -> bool:
    """Whether stored norms are those of ``now`` up to the dtype's summation order."""
    if not isinstance(stored, list) or len(stored) != len(now):
        return False
    rtol = DIRECTION_RTOL.get(dtype, DIRECTION_RTOL_DEFAULT)
    return bool(np.allclose(np.asarray(stored, dtype=float), now, rtol=rtol, atol=0.0))


def _key(acc) -> str:
    """What the stored sums depend on besides the direction: groups, orders, dtype, shapes.

    The direction is compared apart, its per-tensor norms within a relative tolerance
    (:func:`_same_direction`): a hash of rounded norms changed with the thread count.
    """
    part = acc.partition
    parts = {
        "labels": part.labels,
        "names": part.names,
        "spec": [acc.spec.full, acc.spec.diag],
        "dtype": str(acc.state.dtype),
        "shapes": [list(p.shape) for p in acc.state.params],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
