"""A plain PyTorch training loop for a torchvision ResNet-18 on CIFAR-10, recorded with
``hl.Recorder``: a checkpoint, the metrics and the pseudo-Hessian H̄ of every epoch land in
a run folder the dashboard opens (``streamlit run app.py``).

    python examples/recorder_resnet18_cifar10.py --data ../shared/datasets/cifar10/cifar10.npz \\
        --epochs 5 --out checkpoints/resnet18-cifar10
    python examples/recorder_resnet18_cifar10.py --torchvision-root ~/data --download ...

Everything below except the three ``rec`` lines is an ordinary training script.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone

import hessian_lens as hl

MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)


def cifar10(args) -> tuple[torch.Tensor, ...]:
    """uint8 NCHW images and labels of both splits, from an npz file or torchvision."""
    if args.data:
        z = np.load(args.data)
        parts = [z["x_train"], z["y_train"], z["x_test"], z["y_test"]]
    else:
        sets = [
            torchvision.datasets.CIFAR10(args.torchvision_root, train=t, download=args.download)
            for t in (True, False)
        ]
        parts = [sets[0].data, sets[0].targets, sets[1].data, sets[1].targets]
    x_tr, y_tr, x_te, y_te = (torch.as_tensor(np.asarray(p)) for p in parts)
    return x_tr.permute(0, 3, 1, 2), y_tr.long(), x_te.permute(0, 3, 1, 2), y_te.long()


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255 - MEAN) / STD


@torch.no_grad()
def evaluate(model, x, y, batch=1000) -> tuple[float, float]:
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(y), batch):
        out = model(normalize(x[i : i + batch]))
        loss += float(F.cross_entropy(out, y[i : i + batch], reduction="sum"))
        correct += int((out.argmax(1) == y[i : i + batch]).sum())
    return loss / len(y), correct / len(y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="CIFAR-10 npz (x_train, y_train, x_test, y_test)")
    ap.add_argument("--torchvision-root", default="~/.cache/cifar10")
    ap.add_argument("--download", action="store_true")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--analysis-samples", type=int, default=1000)
    ap.add_argument("--partition", default="canonical", help="canonical, by_module:2, ...")
    ap.add_argument("--out", default="runs/resnet18-cifar10")
    args = ap.parse_args()

    torch.manual_seed(0)
    x_tr, y_tr, x_te, y_te = cifar10(args)
    loader = DataLoader(TensorDataset(x_tr, y_tr), batch_size=args.batch_size, shuffle=True)
    model = torchvision.models.resnet18(num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    # A fixed set of training samples, the same at every epoch: H̄ is measured on it.
    keep = torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(1))
    keep = keep[: args.analysis_samples]
    analysis = [
        (normalize(x_tr[keep[i : i + 250]]), y_tr[keep[i : i + 250]])
        for i in range(0, len(keep), 250)
    ]

    with hl.Recorder(
        args.out,
        model,
        F.cross_entropy,
        analysis,
        name=Path(args.out).name,
        architecture="torchvision:resnet18",
        architecture_kwargs={"num_classes": 10},
        partition=args.partition,
        progress=True,
        data_spec="cifar10",  # so that `hessian-lens analyze RUN` can load more of it
        data_source=args.data,
    ) as rec:
        test_loss, test_acc = evaluate(model, x_te, y_te)
        rec.log(0, test_loss=test_loss, test_acc=test_acc)
        for epoch in range(1, args.epochs + 1):
            model.train()
            t0, total, seen = time.perf_counter(), 0.0, 0
            for x, y in loader:
                x = normalize(x)
                flip = torch.rand(len(x)) < 0.5  # random horizontal flips
                x[flip] = x[flip].flip(3)
                optimizer.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
                total, seen = total + loss.item() * len(y), seen + len(y)
            scheduler.step()
            seconds = time.perf_counter() - t0
            test_loss, test_acc = evaluate(model, x_te, y_te)
            rec.log(
                epoch,
                train_loss=total / seen,
                test_loss=test_loss,
                test_acc=test_acc,
                seconds=seconds,
                lr=scheduler.get_last_lr()[0],
            )
            print(
                f"epoch {epoch}: train loss {total / seen:.3f}, test accuracy {test_acc:.1%}, "
                f"{seconds:.0f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
