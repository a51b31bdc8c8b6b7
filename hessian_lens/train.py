"""Training that writes one checkpoint per epoch into a run folder, and resumes.

A run folder holds ``run.json`` (model, data, loss, optimizer and hyper-parameters, seed,
library versions, per-epoch metrics), ``epoch_0000.pt`` (the initialisation), one
``epoch_NNNN.pt`` per epoch and ``resume.pt`` (optimizer state and history, for resuming).
Every file is written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hessian_lens.checkpoint import CheckpointError, atomic_write, save_checkpoint, write_json
from hessian_lens.data import Batches, ImageData, load_cifar10
from hessian_lens.models import build_model

RUN_FORMAT = "hessian-lens-run/1"
OPTIMIZERS = ("sgd", "adam", "partition-newton")


@dataclass
class TrainConfig:
    """Everything that defines a run (stored in ``run.json``).

    ``train_size`` / ``test_size``: deterministic subsets (None: the whole split).
    ``data``: ``"cifar10"``; ``data_source``: an npz file or a torchvision root.
    """

    out: str
    model: str = "lenet5"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str = "cifar10"
    data_source: str | None = None
    train_size: int | None = None
    test_size: int | None = None
    epochs: int = 21
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "cpu"
    lr_plateau: int | None = None

    def identity(self) -> dict[str, Any]:
        """The fields a resumed run must share with the stored one (all but epochs/out)."""
        d = dataclasses.asdict(self)
        for key in ("out", "epochs", "device"):
            d.pop(key)
        return d


def versions() -> dict[str, str]:
    """Library versions recorded in runs and checkpoints."""
    import hessian_lens

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "hessian_lens": hessian_lens.__version__,
    }


def load_data(config: TrainConfig) -> tuple[ImageData, ImageData]:
    """The train and test sets of a config (deterministic subsets)."""
    if config.data != "cifar10":
        raise ValueError(f"unknown data set '{config.data}'; known: cifar10")
    train = load_cifar10(config.data_source, train=True).subset(config.train_size, config.seed)
    test = load_cifar10(config.data_source, train=False).subset(config.test_size, config.seed)
    return train, test


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (optional momentum), Adam, or PartitionNewton over the model's parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    kw = dict(config.optimizer_kwargs)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, **kw
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, **kw)
    if config.optimizer == "partition-newton":
        from hessian_lens.optim import PartitionNewton

        named = [{"params": [p], "name": n} for n, p in model.named_parameters() if p.requires_grad]
        return PartitionNewton(named, lr=config.lr, momentum=config.momentum or 0.9, **kw)
    raise ValueError(f"unknown optimizer '{config.optimizer}'; known: {list(OPTIMIZERS)}")


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, device: torch.device) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over the batches, in eval mode."""
    was = model.training
    model.eval()
    loss, correct, n = 0.0, 0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        out = model(x)
        loss += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        n += len(y)
    model.train(was)
    return loss / n, correct / n


def train(config: TrainConfig, progress: bool = True, command: str | None = None) -> Path:
    """Train and write the run folder ``config.out``; resume it when it exists.

    Returns:
        The run folder.
    """
    out = Path(config.out)
    device = torch.device(config.device)
    train_set, test_set = load_data(config)
    torch.manual_seed(config.seed)
    model = build_model(config.model, **config.model_kwargs).to(device)
    optimizer = make_optimizer(config, model)
    scheduler = None
    if config.lr_plateau is not None:  # halve lr when the training loss plateaus
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=0.5, patience=config.lr_plateau
        )
    loader = train_set.batches(config.batch_size, shuffle=True, seed=config.seed)
    test_batches = test_set.batches(1000)
    manifest = _manifest(config, train_set, test_set, command)
    history = _resume(out, config, model, optimizer, scheduler, device)
    if not history:
        history = [_epoch_zero(model, loader, test_batches, device)]
        _save_epoch(out, model, optimizer, scheduler, manifest, history)
    start = history[-1]["epoch"] + 1
    bar = _bar(progress, config.epochs, start - 1)
    for epoch in range(start, config.epochs + 1):
        loader.set_epoch(epoch)
        curvature = getattr(optimizer, "curvature_seconds", None)
        t0 = time.perf_counter()
        stats = _train_epoch(model, optimizer, loader, device, progress)
        seconds = time.perf_counter() - t0
        test_loss, test_acc = evaluate(model, test_batches, device)
        record = {
            "epoch": epoch,
            **stats,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "seconds": seconds,
            "lr": optimizer.param_groups[0]["lr"],
        }
        if curvature is not None:
            record["curvature_seconds"] = optimizer.curvature_seconds - curvature
        history.append(record)
        if scheduler is not None:
            scheduler.step(stats["train_loss"])
        _save_epoch(out, model, optimizer, scheduler, manifest, history)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{stats['train_loss']:.3f}", test_acc=f"{test_acc:.3f}")
    if bar is not None:
        bar.close()
    return out


def _train_epoch(model, optimizer, loader, device, progress) -> dict[str, float]:
    model.train()
    total, correct, n = 0.0, 0, 0
    newton = type(optimizer).__name__ == "PartitionNewton"
    batches = _bar(progress, len(loader), 0, leave=False, desc="batches", it=loader)
    for x, y in batches if batches is not None else loader:
        x, y = x.to(device), y.to(device)
        out_box = {}

        def closure(x=x, y=y, box=out_box):
            if not newton:
                optimizer.zero_grad(set_to_none=True)
            box["out"] = model(x)
            loss = F.cross_entropy(box["out"], y)
            if not newton:
                loss.backward()
            return loss

        loss = optimizer.step(closure).detach()
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training diverged (loss {float(loss)}); lower the learning rate"
            )
        total += float(loss) * len(y)
        correct += int((out_box["out"].detach().argmax(1) == y).sum())
        n += len(y)
    return {"train_loss": total / n, "train_acc": correct / n}


def _epoch_zero(model, loader, test_batches, device) -> dict[str, Any]:
    train_loss, train_acc = evaluate(model, loader, device)
    test_loss, test_acc = evaluate(model, test_batches, device)
    return {
        "epoch": 0,
        "train_loss": train_loss,
        "train_acc": train_acc,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "seconds": 0.0,
    }


def _manifest(
    config: TrainConfig, train_set: ImageData, test_set: ImageData, command: str | None
) -> dict[str, Any]:
    return {
        "format": RUN_FORMAT,
        "name": Path(config.out).name,
        "model": {"name": config.model, "kwargs": config.model_kwargs},
        "data": {
            "name": config.data,
            "source": config.data_source,
            "train": train_set.source,
            "train_size": len(train_set),
            "test": test_set.source,
            "test_size": len(test_set),
        },
        "loss": "cross_entropy",
        "optimizer": {
            "name": config.optimizer,
            "lr": config.lr,
            "momentum": config.momentum,
            "weight_decay": config.weight_decay,
            **config.optimizer_kwargs,
        },
        "batch_size": config.batch_size,
        "epochs": config.epochs,
        "seed": config.seed,
        "config": dataclasses.asdict(config),
        "versions": versions(),
        "command": command or "python -m hessian_lens " + shlex.join(sys.argv[1:]),
    }


def _save_epoch(out: Path, model, optimizer, scheduler, manifest, history) -> None:
    """epoch checkpoint, then resume state, then manifest: each atomic, in that order."""
    epoch = history[-1]["epoch"]
    name = f"epoch_{epoch:04d}.pt"
    history[-1]["checkpoint"] = name
    meta = {
        "model": manifest["model"],
        "epoch": epoch,
        "run": manifest["name"],
        "metrics": {k: v for k, v in history[-1].items() if k not in ("checkpoint",)},
        "versions": manifest["versions"],
    }
    save_checkpoint(out / name, model, meta)
    state = {
        "epoch": epoch,
        "optimizer": optimizer.state_dict(),
        "history": json.dumps(history),
        "identity": json.dumps(manifest["config"]),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
    }
    atomic_write(out / "resume.pt", lambda tmp: torch.save(state, tmp))
    log = getattr(optimizer, "log", None)
    if log is not None:  # PartitionNewton: per-step losses and per-group rates
        write_json(
            out / "optimizer_log.json", {"labels": optimizer.partition.labels, "entries": log}
        )
    write_json(out / "run.json", {**manifest, "history": history})


def _resume(
    out: Path, config: TrainConfig, model, optimizer, scheduler, device
) -> list[dict[str, Any]]:
    """History of an interrupted run in ``out`` (model and optimizer restored), or []."""
    state_path = out / "resume.pt"
    if not state_path.exists():
        if (out / "run.json").exists():
            raise CheckpointError(f"{out} holds a run without resume.pt; choose a new --out.")
        return []
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    stored = json.loads(state["identity"])
    defaults = TrainConfig(out="").identity()  # fields added since the run was written
    stored_identity = {
        **defaults,
        **{k: v for k, v in stored.items() if k not in ("out", "epochs", "device")},
    }
    if stored_identity != config.identity():
        diff = sorted(k for k in stored_identity if stored_identity[k] != config.identity().get(k))
        raise CheckpointError(
            f"{out} holds a run with other settings ({', '.join(diff)}); "
            "resume it with the same ones or choose a new --out."
        )
    from hessian_lens.checkpoint import load_checkpoint

    epoch = int(state["epoch"])
    saved, _ = load_checkpoint(out / f"epoch_{epoch:04d}.pt", max_bytes=None)
    model.load_state_dict(saved.state_dict())
    model.to(device)
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler"):
        scheduler.load_state_dict(state["scheduler"])
    return json.loads(state["history"])


def _bar(
    progress: bool, total: int, initial: int, leave: bool = True, desc: str = "epochs", it=None
):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(it, total=total, initial=initial, leave=leave, desc=desc, unit="")
