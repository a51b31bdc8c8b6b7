"""Data-parallel summaries: every rank passes its own shard, every rank gets the union's.

The protocol of :mod:`hessian_lens.summary` inside an initialised process group (a sum over
samples is a sum over shards, so two all-reduces make the result exact):

* pass 1 (the direction, unless given): each rank sums ``n_b * grad L_b`` and ``n_b`` over
  its batches; one all-reduce gives every rank ``u = sum / n`` of the union;
* pass 2 (the summaries): each rank sums ``n_b * D^(k)_b(u)`` (full orders and diagonals),
  ``n_b * L_b`` and ``n_b``; one all-reduce, then every rank divides by the union's ``n``.

Shards may be unequal and even empty (a rank with no sample adds zeros); only the union must
hold a sample. A rank that fails still joins the all-reduce with a failure flag so that no
rank waits forever: it raises its own error, the others :class:`RankFailedError`. Sums are
reduced in float64 on the compute device for NCCL, on the CPU for other back ends (gloo).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")
REDUCE_DTYPE = torch.float64  # exact sums of sample counts, accurate sums of summaries
ENV_RANK, ENV_WORLD, ENV_LOCAL_RANK = "RANK", "WORLD_SIZE", "LOCAL_RANK"


class RankFailedError(RuntimeError):
    """Another rank failed during a collective pass (its own error is on that rank)."""


def is_active() -> bool:
    """Whether a process group of more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def resolve(distributed: bool | None) -> bool:
    """The ``distributed=`` argument: ``None`` means :func:`is_active`, ``False`` opts out.

    Raises:
        ValueError: ``distributed=True`` without an initialised process group.
    """
    if distributed is None:
        return is_active()
    if distributed and not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "distributed=True needs an initialised torch.distributed process group "
            "(torch.distributed.init_process_group, or hessian_lens.distributed.init_from_env)"
        )
    return bool(distributed)


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the process group, ``(0, 1)`` outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: str | torch.device | None = None) -> torch.device:
    """Join the process group ``torchrun`` describes and return this rank's device.

    The group is read from ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT``.
    ``device="cuda"`` maps the rank to GPU ``LOCAL_RANK`` and uses NCCL; otherwise gloo.
    Without ``WORLD_SIZE`` (or with 1) nothing is initialised and the device is returned.

    Example:
        >>> init_from_env("cpu")  # not under torchrun: a single process
        device(type='cpu')
    """
    device = torch.device(device if device is not None else "cpu")
    world = int(os.environ.get(ENV_WORLD, "1"))
    cuda = device.type == "cuda"
    if cuda:
        device = torch.device("cuda", int(os.environ.get(ENV_LOCAL_RANK, "0")))
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            "nccl" if cuda else "gloo",
            rank=int(os.environ[ENV_RANK]),
            world_size=world,
            **({"device_id": device} if cuda else {}),
        )
    return device


def leave() -> None:
    """Leave the process group, if any: a barrier, then its destruction.

    A process that exits with its gloo group alive can be killed at exit ("terminate
    called without an active exception", seen in 1 of 4 two-rank runs), so the command line
    leaves the group it joined before returning.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """The items of rank ``rank`` out of ``world``, dealt round robin.

    Rank ``rank`` gets the items at rank, rank + world, rank + 2 world, ...; for instance
    the checkpoints each rank analyses.

    Example:
        >>> shard(["e1", "e2", "e3", "e4", "e5"], 1, 2)
        ['e2', 'e4']
    """
    _check_rank(rank, world)
    return list(items[rank::world])


def split_indices(n: int, rank: int, world: int) -> range:
    """The contiguous block of ``range(n)`` of rank ``rank`` out of ``world``.

    Block sizes differ by at most one: the first ``n % world`` ranks take one more (a rank
    may get none when ``n < world``).

    Example:
        >>> [list(split_indices(5, r, 2)) for r in range(2)]
        [[0, 1, 2], [3, 4]]
    """
    _check_rank(rank, world)
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def _check_rank(rank: int, world: int) -> None:
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank {rank} of {world}")


def reduce_device(compute: torch.device) -> torch.device:
    """Where the all-reduce runs: the compute device for NCCL, else the CPU."""
    return compute if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_over_ranks(
    compute: Callable[[], list[Tensor]], *, numel: int, device: torch.device
) -> list[Tensor]:
    """``compute()`` on this rank, summed elementwise over all ranks (all ranks get it).

    Args:
        compute: this rank's partial sums, always the same shapes on every rank.
        numel: their total number of elements (what a failing rank sends as zeros).
        device: the compute device (chooses where NCCL reduces).

    Raises:
        RankFailedError: another rank's ``compute`` raised (this rank raises its own).
    """
    rank, world = rank_and_world()
    try:
        local, error = compute(), None
        if sum(t.numel() for t in local) != numel:
            raise AssertionError(f"partial sums hold {sum(t.numel() for t in local)} != {numel}")
    except Exception as err:  # joins the all-reduce below, then re-raised
        local, error = None, err
    where = reduce_device(device)
    flags = torch.zeros(world, dtype=REDUCE_DTYPE, device=where)
    flags[rank] = float(error is not None)
    body = (
        torch.cat([t.detach().reshape(-1).to(where, REDUCE_DTYPE) for t in local])
        if local is not None
        else torch.zeros(numel, dtype=REDUCE_DTYPE, device=where)
    )
    packed = torch.cat([body, flags])
    dist.all_reduce(packed)
    if error is not None:
        raise error
    failed = packed[numel:].nonzero().reshape(-1).tolist()
    if failed:
        raise RankFailedError(f"rank(s) {failed} failed during a collective pass (see there)")
    return _unpack(packed[:numel], local)


def _unpack(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
    out, start = [], 0
    for t in like:
        out.append(flat[start : start + t.numel()].reshape(t.shape).to(t.device, t.dtype))
        start += t.numel()
    return out


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` of rank ``src`` on every rank (unchanged outside a process group).

    For instance the list of checkpoints left to analyse, decided once by rank 0.
    """
    if not is_active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def sum_int(value: int) -> int:
    """The sum of an integer over all ranks (itself outside a process group)."""
    if not is_active():
        return int(value)
    t = torch.tensor([float(value)], dtype=REDUCE_DTYPE)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return int(t.item())
