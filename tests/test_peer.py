"""Agreement with the field: H̄ against curvlinops' Hessian operator, H̄ = U (H Uᵀ).

curvlinops (``curvlinops-for-pytorch``, a test dependency) multiplies the exact Hessian of
the data's loss by a matrix, batch by batch, with its own handling of mean and sum
reductions. On a zoo of its kinds of problems (losses, convolutions, pooling, transposed
convolutions, embeddings, weight sharing, BatchNorm in eval mode, frozen parameters) the
engine's H̄ and ḡ must equal ``U H Uᵀ`` and ``U g`` to float64 round-off, with the data cut
into unequal batches.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hessian_lens as hl
from tests.compare import EXACT, assert_close
from tests.tiny import perturb

curvlinops = pytest.importorskip("curvlinops")
F64 = torch.float64
N = 10


class Shared(nn.Module):
    """One layer applied twice (weight sharing)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.mid, self.out = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.mid(torch.tanh(self.mid(torch.tanh(self.inp(x)))))))


class Embed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.fc = nn.Embedding(6, 3), nn.Linear(6, 3)

    def forward(self, ids):
        return self.fc(torch.tanh(self.emb(ids)).flatten(1))


def _conv() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.BatchNorm2d(2),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def _transposed() -> nn.Module:
    return nn.Sequential(
        nn.ConvTranspose2d(1, 1, 2, stride=2),
        nn.Sigmoid(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(9, 3),
    )


def _frozen() -> nn.Module:
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    net[0].bias.requires_grad_(False)
    return net


def _classes(shape):
    return lambda gen: (
        torch.randn(*shape, generator=gen, dtype=F64),
        torch.randint(0, 3, (N,), generator=gen),
    )


ZOO = {
    "mlp-ce-mean": (
        lambda: nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)),
        nn.CrossEntropyLoss(),
        _classes((N, 4)),
    ),
    "mlp-ce-sum": (
        lambda: nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)),
        nn.CrossEntropyLoss(reduction="sum"),
        _classes((N, 4)),
    ),
    "mlp-mse-mean": (
        lambda: nn.Sequential(nn.Linear(4, 5), nn.Sigmoid(), nn.Linear(5, 2)),
        nn.MSELoss(),
        lambda gen: (
            torch.randn(N, 4, generator=gen, dtype=F64),
            torch.randn(N, 2, generator=gen, dtype=F64),
        ),
    ),
    "mlp-mse-sum": (
        lambda: nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)),
        nn.MSELoss(reduction="sum"),
        lambda gen: (
            torch.randn(N, 4, generator=gen, dtype=F64),
            torch.randn(N, 2, generator=gen, dtype=F64),
        ),
    ),
    "bce-logits": (
        lambda: nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)),
        nn.BCEWithLogitsLoss(),
        lambda gen: (
            torch.randn(N, 4, generator=gen, dtype=F64),
            torch.randint(0, 2, (N, 2), generator=gen).to(F64),
        ),
    ),
    "conv-bn-pool": (_conv, nn.CrossEntropyLoss(), _classes((N, 1, 6, 6))),
    "transposed-conv": (_transposed, nn.CrossEntropyLoss(reduction="sum"), _classes((N, 1, 3, 3))),
    "weight-sharing": (Shared, nn.CrossEntropyLoss(), _classes((N, 4))),
    "embedding": (
        Embed,
        nn.CrossEntropyLoss(),
        lambda gen: (
            torch.randint(0, 6, (N, 2), generator=gen),
            torch.randint(0, 3, (N,), generator=gen),
        ),
    ),
    "frozen-bias": (_frozen, nn.CrossEntropyLoss(), _classes((N, 4))),
}


@pytest.mark.parametrize("name", list(ZOO))
def test_pseudo_hessian_agrees_with_curvlinops(name):
    build, loss, make = ZOO[name]
    torch.manual_seed(0)
    model = perturb(build(), scale=0.3).eval()
    x, y = make(torch.Generator().manual_seed(1))
    data = [(x[:3], y[:3]), (x[3:7], y[3:7]), (x[7:], y[7:])]
    res = hl.pseudo_hessian(model, loss, data)

    part = res.partition
    params = part.parameters(model)
    H_op = curvlinops.HessianLinearOperator(model, loss, params, data)
    g, _ = H_op.gradient_and_loss()
    U = part.matrix(g)  # S x P, rows U^s
    HUt = H_op @ U.T.contiguous()
    assert_close(res.H, U @ HUt, **EXACT)
    assert_close(res.g, U @ torch.cat([t.reshape(-1) for t in g]), **EXACT)


@pytest.mark.parametrize("name", list(ZOO))
def test_gauss_newton_agrees_with_curvlinops(name):
    """G_bar = U (G U^T) with curvlinops' GGNLinearOperator (its own J^T H_l J)."""
    build, loss, make = ZOO[name]
    torch.manual_seed(0)
    model = perturb(build(), scale=0.3).eval()
    x, y = make(torch.Generator().manual_seed(1))
    data = [(x[:3], y[:3]), (x[3:7], y[3:7]), (x[7:], y[7:])]
    res = hl.pseudo_hessian(model, loss, data, curvature="ggn")
    part = res.partition
    params = part.parameters(model)
    G_op = curvlinops.GGNLinearOperator(model, loss, params, data)
    U = part.matrix(res.direction)
    assert_close(res.H, U @ (G_op @ U.T.contiguous()), **EXACT)
