"""Tiny float64 models and data shared by the tests (perturbed away from their init)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def perturb(model: nn.Module, seed: int = 0, scale: float = 0.5) -> nn.Module:
    """Move every parameter and floating buffer away from its initialisation (float64)."""
    gen = torch.Generator().manual_seed(seed)
    model = model.double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        for name, b in model.named_buffers():
            if b.is_floating_point():
                b.copy_(
                    b + 0.3 * torch.rand(b.shape, generator=gen, dtype=b.dtype)
                    if "var" in name
                    else b + 0.3 * torch.randn(b.shape, generator=gen, dtype=b.dtype)
                )
    return model


def mlp() -> nn.Module:
    torch.manual_seed(1)
    return perturb(
        nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 3))
    )


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.pool(torch.tanh(self.conv(x))).flatten(1))


def cnn() -> nn.Module:
    torch.manual_seed(2)
    return perturb(SmallCNN())


def batchnorm_dropout() -> nn.Module:
    torch.manual_seed(3)
    return perturb(
        nn.Sequential(
            nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.5), nn.Linear(6, 3)
        )
    )


def frozen() -> nn.Module:
    torch.manual_seed(4)
    net = perturb(
        nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 3))
    )
    net[2].weight.requires_grad_(False)
    return net


MODELS = {"mlp": mlp, "cnn": cnn, "bn_dropout": batchnorm_dropout, "frozen": frozen}


def data_for(name: str, n: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = (n, 1, 6, 6) if name == "cnn" else (n, 4)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=gen)
    return x, y


loss_fn = F.cross_entropy


class SeqNet(nn.Module):
    """An LSTM classifier on the last step; ``batch_first=False`` takes (T, N, F) inputs."""

    def __init__(self, batch_first: bool, features: int = 3, hidden: int = 4, classes: int = 2):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, batch_first=batch_first)
        self.fc = nn.Linear(hidden, classes)
        self.batch_first = batch_first

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out[:, -1] if self.batch_first else out[-1])


class TinyAttention(nn.Module):
    """Self-attention (fused in_proj_weight) over the tokens, mean-pooled, then a classifier."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.fc = nn.Linear(4, classes)

    def forward(self, x):
        return self.fc(self.attn(x, x, x, need_weights=False)[0].mean(1))
