"""A tiny run written by ``hl.Recorder`` from a plain loop (fast: an MLP on 40 samples)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import hessian_lens as hl


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))


def tiny_data(n: int = 40) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen)
    return [(x[: n // 2], y[: n // 2]), (x[n // 2 :], y[n // 2 :])]


def train_epoch(model: nn.Module, batches, opt) -> float:
    total = 0.0
    for bx, by in batches:
        opt.zero_grad()
        loss = F.cross_entropy(model(bx), by)
        loss.backward()
        opt.step()
        total += loss.item()
    return total / len(batches)


def make_recorder_run(path: Path, epochs: int = 3, **kwargs) -> Path:
    """Epochs 0..``epochs`` recorded and analysed (blocks: 3 weights, 3 biases)."""
    model, batches = tiny_net(), tiny_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    with hl.Recorder(path, model, F.cross_entropy, batches, **kwargs) as rec:
        with torch.no_grad():
            loss0 = float(F.cross_entropy(model(batches[0][0]), batches[0][1]))
        rec.log(0, train_loss=loss0)
        for epoch in range(1, epochs + 1):
            rec.log(epoch, train_loss=train_epoch(model, batches, opt), test_acc=0.5)
    return path
