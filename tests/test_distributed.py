"""Data-parallel summaries: 2 gloo ranks on unequal shards give the union's result.

The ranks are forked (no second torch import: the test takes about a second), join the
group through :func:`hessian_lens.distributed.init_from_env` with torchrun's variables, and
save what they computed; the parent compares it with one process on the union.
"""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

import hessian_lens as hl
from hessian_lens import distributed as hd
from tests.compare import EXACT, assert_close
from tests.tiny import cnn, data_for, loss_fn

pytestmark = pytest.mark.skipif(
    not (tdist.is_available() and tdist.is_gloo_available()), reason="no gloo back end"
)
N = 20  # samples of the union
CUTS = {"unequal": 7, "empty": 0}  # rank 0 takes the first CUT samples, rank 1 the rest
METHODS = {7: ("loop", "vmap"), 0: ("loop",)}  # back ends checked per cut
START = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
HANG_SECONDS = 120


def shard_of(rank: int, cut: int):
    """Rank 0: one batch (or nothing); rank 1: two batches (unequal sizes)."""
    x, y = data_for("cnn", n=N)
    if rank == 0:
        return (x[:cut], y[:cut]) if cut else []
    middle = (cut + N) // 2
    return [(x[cut:middle], y[cut:middle]), (x[middle:], y[middle:])]


def direction(model):
    gen = torch.Generator().manual_seed(3)
    return [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in model.parameters()]


def everything(model, data, methods=("loop", "vmap")) -> dict[str, torch.Tensor]:
    """Every quantity the distributed protocol must reproduce."""
    out = {}
    for method in methods:
        res = hl.pseudo_hessian(model, loss_fn, data, method=method, d3_diagonal=True)
        out |= {f"H {method}": res.H, f"g {method}": res.g, f"d3 {method}": res.d3}
        out[f"loss {method}"] = torch.tensor([res.loss, res.n_samples], dtype=torch.float64)
        out[f"D3 {method}"] = hl.summary_tensor(model, loss_fn, data, 3, method=method)
        out[f"D3 diagonal {method}"] = hl.summary_tensor(
            model, loss_fn, data, 3, method=method, diagonal=True
        )
    summed = hl.pseudo_hessian(model, torch.nn.CrossEntropyLoss(reduction="sum"), data)
    out["H sum"], out["g sum"] = summed.H, summed.g  # a sum over the union, not a mean
    out["loss sum"] = torch.tensor([summed.loss, summed.n_samples], dtype=torch.float64)
    out["taylor"] = hl.taylor_terms(model, loss_fn, data, direction(model), max_order=3)
    out["eta"] = hl.partition_newton_step(model, loss_fn, data)[0]
    return out


def rank_main(rank: int, world: int, port: int, folder: str, cut: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    device = hd.init_from_env("cpu")
    try:
        assert device == torch.device("cpu") and hd.rank_and_world() == (rank, world)
        model, data = cnn(), shard_of(rank, cut)
        out = everything(model, data, METHODS[cut])
        if data:
            out["local H"] = hl.pseudo_hessian(model, loss_fn, data, distributed=False).H
        torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        tdist.destroy_process_group()


def record_outcome(rank: int, world: int, port: int, folder: str, compute) -> None:
    """Join the group, run ``compute(rank)`` and write the name of what it raised."""
    torch.set_num_threads(1)
    tdist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        compute(rank)
        outcome = "no error"
    except Exception as err:
        outcome = type(err).__name__
    finally:
        tdist.destroy_process_group()
    with open(os.path.join(folder, f"rank{rank}.txt"), "w") as f:
        f.write(outcome)


def failing_rank(rank: int, world: int, port: int, folder: str, _cut: int) -> None:
    """Rank 1's inputs have the wrong shape: its forward fails inside pass 1."""

    def compute(rank: int) -> None:
        x, y = data_for("cnn", n=6)
        hl.pseudo_hessian(cnn(), loss_fn, [(x if rank == 0 else x[:, :, :3], y)])

    record_outcome(rank, world, port, folder, compute)


class Reordering:
    """A shard whose batches come in another order at each pass (a shuffling loader)."""

    def __init__(self, batches) -> None:
        self.batches, self.calls = batches, 0

    def __iter__(self):
        self.calls += 1
        return iter(self.batches if self.calls % 2 else self.batches[::-1])


def shuffling_rank(rank: int, world: int, port: int, folder: str, _cut: int) -> None:
    """Rank 1's shard changes between the passes: it says so, rank 0 does not wait."""

    def compute(rank: int) -> None:
        x, y = data_for("cnn", n=8)
        data = [(x, y)] if rank == 0 else Reordering([(x[:3], y[:3]), (x[3:], y[3:])])
        hl.pseudo_hessian(cnn(), loss_fn, data)

    record_outcome(rank, world, port, folder, compute)


def launch(worker, folder, cut: int = 0, world: int = 2) -> None:
    """Run ``worker`` on ``world`` forked ranks; fail (not hang) if they do not finish."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = (world, port, str(folder), cut)
    ctx = mp.start_processes(worker, args=args, nprocs=world, join=False, start_method=START)
    deadline = time.monotonic() + HANG_SECONDS
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"ranks still running after {HANG_SECONDS} s")


@pytest.mark.parametrize("shards", list(CUTS))
def test_ranks_with_unequal_shards_equal_one_process_on_the_union(tmp_path, shards):
    cut = CUTS[shards]
    model, union = cnn(), data_for("cnn", n=N)
    expected = everything(model, union, METHODS[cut])  # first: the forked ranks inherit
    launch(rank_main, tmp_path, cut)  # what it imported (torch.func's first call takes 2 s)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for name, value in expected.items():
            assert_close(got[name], value, rtol=1e-12, atol=EXACT["atol"])
    local = torch.load(tmp_path / "rank1.pt", weights_only=True)["local H"]
    assert_close(local, hl.pseudo_hessian(model, loss_fn, shard_of(1, cut)).H, **EXACT)
    if cut:  # opting out gives the shard's own result
        assert float((local - expected["H loop"]).abs().max()) > 1e-6


def test_a_failing_rank_stops_every_rank(tmp_path):
    launch(failing_rank, tmp_path)
    outcomes = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert outcomes == ["RankFailedError", "RuntimeError"]


def test_helpers_outside_a_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert hd.rank_and_world() == (0, 1) and not hd.is_active() and not hd.resolve(None)
    assert hd.init_from_env("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="initialised"):
        hl.pseudo_hessian(cnn(), loss_fn, data_for("cnn"), distributed=True)
    blocks = [list(hd.split_indices(7, r, 3)) for r in range(3)]
    assert blocks == [[0, 1, 2], [3, 4], [5, 6]]
    assert [len(hd.split_indices(2, r, 3)) for r in range(3)] == [1, 1, 0]
    assert hd.shard(list("abcde"), 0, 2) == ["a", "c", "e"] and hd.shard([], 1, 2) == []
    with pytest.raises(ValueError, match="rank"):
        hd.split_indices(5, 2, 2)


def test_a_rank_whose_data_changed_stops_every_rank(tmp_path):
    launch(shuffling_rank, tmp_path)
    outcomes = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert outcomes == ["RankFailedError", "DataChangedError"]
