"""Training that writes one checkpoint per epoch into a run folder, and resumes.

The folder's layout belongs to :mod:`hessian_lens.runfolder`: ``run.json`` (model, init,
data, loss, the optimizer's *effective* settings, seed, versions, per-epoch metrics),
``epoch_0000.pt`` (the initialisation), one checkpoint per epoch (and at fractions of an
epoch when asked, e.g. ``epoch_0000.250.pt``) and ``resume.pt``. Every file is written
atomically.

The author's pipeline is available as options: the paper's initialisation
(``init="paper"``), a validation split (``val_size``), and for PartitionNewton a separate
curvature loader (``curvature_data="separate"``: a fixed, unshuffled, cycling loader of
``curvature_size`` training samples feeding the optimizer's curvature closure).
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hessian_lens import runfolder
from hessian_lens.checkpoint import CheckpointError, check_pickle, save_checkpoint
from hessian_lens.data import (
    AUGMENTS,
    Batches,
    ImageData,
    augment,
    augment_generator,
    check_model_fits,
    load_dataset,
    split_validation,
)
from hessian_lens.io.files import atomic_write, write_json
from hessian_lens.losses import LOSSES, correct_predictions, get_loss
from hessian_lens.models import INITS
from hessian_lens.registry import build_model, check_kwargs
from hessian_lens.settings import checkpoint_limit_bytes
from hessian_lens.version import __version__

OPTIMIZERS = ("sgd", "adam", "partition-newton")
CURVATURE_DATA = ("separate", "same")


@dataclass
class TrainConfig:
    """Everything that defines a run (stored in ``run.json``).

    ``train_size`` / ``test_size``: deterministic subsets (None: the whole split).
    ``data``: a data set spec (:func:`hessian_lens.data.load_dataset`); ``data_source``:
    where it lives (an npz file, a torchvision root). ``momentum``: None means the
    optimizer's own default (SGD 0, PartitionNewton 0.9). ``checkpoints_at``: extra
    checkpoints at fractions of an epoch (e.g. ``[0.25, 0.5]``).
    """

    out: str
    model: str = "lenet5"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    init: str = "torch"
    data: str = "cifar10"
    data_source: str | None = None
    train_size: int | None = None
    test_size: int | None = None
    val_size: int | None = None
    loss: str = "cross_entropy"
    epochs: int = 21
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float | None = None
    weight_decay: float = 0.0
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    curvature_data: str | None = None
    curvature_size: int = 100
    checkpoints_at: list[float] = field(default_factory=list)
    seed: int = 0
    device: str = "cpu"
    lr_plateau: int | None = None
    download: bool = False
    augment: str = "none"
    tokenizer: str | None = None

    def identity(self) -> dict[str, Any]:
        """The fields a resumed run must share with the stored one (all but epochs/out)."""
        d = dataclasses.asdict(self)
        for key in ("out", "epochs", "device", "download"):
            d.pop(key)
        return d

    def validate(self) -> None:
        """Raise ValueError with what to change for settings that cannot train."""
        checks = [
            (
                self.optimizer in OPTIMIZERS,
                f"unknown optimizer '{self.optimizer}'; known: {list(OPTIMIZERS)}",
            ),
            (self.init in INITS, f"unknown init '{self.init}'; choose one of {list(INITS)}"),
            (self.loss in LOSSES, f"unknown loss '{self.loss}'; choose one of {list(LOSSES)}"),
            (_finite(self.lr) and self.lr > 0, f"--lr must be a finite number > 0, got {self.lr}"),
            (
                self.momentum is None or (_finite(self.momentum) and 0 <= self.momentum < 1),
                f"--momentum must be in [0, 1), got {self.momentum}",
            ),
            (
                _finite(self.weight_decay) and self.weight_decay >= 0,
                f"--weight-decay must be >= 0, got {self.weight_decay}",
            ),
            (self.epochs >= 0, f"--epochs must be >= 0, got {self.epochs}"),
            (self.batch_size > 0, f"--batch-size must be > 0, got {self.batch_size}"),
            (
                self.curvature_data in (None, *CURVATURE_DATA),
                f"--curvature-data must be one of {list(CURVATURE_DATA)}",
            ),
            (self.curvature_size > 0, "--curvature-size must be > 0"),
            (
                self.augment in AUGMENTS,
                f"--augment must be one of {list(AUGMENTS)}, got {self.augment!r}",
            ),
            (
                all(_finite(f) and 0 < f < self.epochs for f in self.checkpoints_at),
                f"--checkpoints-at must be epochs strictly between 0 and {self.epochs}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        check_kwargs(self.model, self.model_kwargs)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def versions() -> dict[str, str]:
    """Library versions recorded in runs and checkpoints."""
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "hessian_lens": __version__,
    }


def load_data(config: TrainConfig) -> tuple[ImageData, ImageData, ImageData | None]:
    """Train, test and (with ``val_size``) validation sets of a config."""
    tok = config.tokenizer
    train_set = load_dataset(config.data, config.data_source, True, config.download, tok)
    val_set = None
    if config.val_size:
        train_set, val_set = split_validation(train_set, config.val_size)
    train_set = train_set.subset(config.train_size, config.seed)
    test_set = load_dataset(config.data, config.data_source, False, config.download, tok)
    return train_set, test_set.subset(config.test_size, config.seed), val_set


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (optional momentum), Adam, or PartitionNewton over the model's parameters.

    ``optimizer_kwargs`` the optimizer does not take are a ValueError naming them.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    kw = dict(config.optimizer_kwargs)
    if config.momentum is not None and config.optimizer != "adam":
        kw["momentum"] = config.momentum
    try:
        if config.optimizer == "sgd":
            return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay, **kw)
        if config.optimizer == "adam":
            return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, **kw)
        from hessian_lens.optim import PartitionNewton

        named = [{"params": [p], "name": n} for n, p in model.named_parameters() if p.requires_grad]
        return PartitionNewton(named, lr=config.lr, **kw)
    except TypeError as err:
        raise ValueError(
            f"--optimizer-kwargs: {config.optimizer} does not take them ({err})"
        ) from None


def optimizer_settings(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The settings an optimizer really runs with (what run.json records)."""
    group = optimizer.param_groups[0]
    out = {k: v for k, v in group.items() if k not in ("params", "name")}
    out.update(getattr(optimizer, "config", {}))
    return json.loads(json.dumps(out, default=str))


@torch.no_grad()
def evaluate(
    model: nn.Module, batches, device: torch.device, loss: str = "cross_entropy"
) -> tuple[float, float]:
    """Mean loss and accuracy over the batches, in eval mode."""
    was = model.training
    model.eval()
    loss_fn = get_loss(loss)
    total, correct, n, targets = 0.0, 0, 0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        out = model(x)
        total += float(loss_fn(out, y)) * len(y)
        correct += correct_predictions(out, y)
        n += len(y)
        targets += y.numel()
    model.train(was)
    return total / n, correct / targets


@dataclass
class _Session:
    """What one training call works with."""

    config: TrainConfig
    out: Path
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: Batches
    test: Batches
    val: Batches | None
    curvature: Batches | None
    manifest: dict[str, Any]
    progress: bool


def train(config: TrainConfig, progress: bool = True, command: str | None = None) -> Path:
    """Train and write the run folder ``config.out``; resume it when it exists.

    Returns:
        The run folder.

    Raises:
        FloatingPointError: the loss became non-finite (the run folder keeps every epoch
            before, and run.json says where it diverged).
    """
    config.validate()
    sess = _session(config, progress, command)
    sess.manifest["state"] = "recording"  # the dashboard follows the run while it trains
    sess.manifest["writer"] = runfolder.writer_entry()  # never live once this process ends
    try:
        _train_epochs(sess, config, progress)
    finally:
        _finish(sess)
    return sess.out


def _finish(sess: _Session) -> None:
    """Mark the run ``"state": "finished"`` (it no longer shows as live)."""
    manifest = runfolder.read_manifest(sess.out).raw
    if manifest:
        runfolder.write_manifest(sess.out, {**manifest, "state": "finished"})


def _train_epochs(sess: _Session, config: TrainConfig, progress: bool) -> None:
    history = _resume(sess)
    if not history:
        history = [_epoch_zero(sess)]
        _save(sess, history)
    start = int(history[-1]["epoch"]) + 1
    bar = _bar(progress, config.epochs, start - 1)
    for epoch in range(start, config.epochs + 1):
        record = _run_epoch(sess, epoch, history)
        if sess.scheduler is not None:
            sess.scheduler.step(record["train_loss"])
        if bar is not None:
            bar.update(1)
            bar.set_postfix(
                loss=f"{record['train_loss']:.3f}", test_acc=f"{record['test_acc']:.3f}"
            )
    if bar is not None:
        bar.close()


def _session(config: TrainConfig, progress: bool, command: str | None) -> _Session:
    out = Path(config.out)
    for folder in (out, *out.parents):
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"--out {out}: {folder} is a file; give a folder for the run.")
    device = torch.device(config.device)
    train_set, test_set, val_set = load_data(config)
    if config.augment != "none" and not isinstance(train_set, ImageData):
        raise ValueError(f"--augment {config.augment} applies to images; {config.data} is not")
    torch.manual_seed(config.seed)
    model = build_model(config.model, init=config.init, **config.model_kwargs).to(device)
    check_model_fits(model, train_set)
    optimizer = make_optimizer(config, model)
    scheduler = None
    if config.lr_plateau is not None:  # halve lr when the training loss plateaus
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=0.5, patience=config.lr_plateau
        )
    curvature = None
    if (
        config.optimizer == "partition-newton"
        and (config.curvature_data or "separate") == "separate"
    ):
        curvature = train_set.batches(config.curvature_size, shuffle=False)
    return _Session(
        config=config,
        out=out,
        device=device,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        loader=train_set.batches(config.batch_size, shuffle=True, seed=config.seed),
        test=test_set.batches(1000),
        val=val_set.batches(1000) if val_set is not None else None,
        curvature=curvature,
        manifest=_manifest(config, optimizer, train_set, test_set, val_set, command),
        progress=progress,
    )


def _run_epoch(sess: _Session, epoch: int, history: list[dict[str, Any]]) -> dict[str, Any]:
    """Train one epoch (saving the fractional checkpoints inside it), evaluate, save."""
    sess.loader.set_epoch(epoch)
    curvature = getattr(sess.optimizer, "curvature_seconds", None)
    marks = _marks(sess.config.checkpoints_at, epoch, len(sess.loader))
    t0 = time.perf_counter()
    for stats, fraction in _train_epoch(sess, marks):
        if fraction is None:
            break
        history.append({"epoch": fraction, **stats, **_evaluate_all(sess), "seconds": 0.0})
        _save(sess, history, resume=False)
    seconds = time.perf_counter() - t0
    record = {"epoch": epoch, **stats, **_evaluate_all(sess), "seconds": seconds}
    record["lr"] = sess.optimizer.param_groups[0]["lr"]
    if curvature is not None:
        record["curvature_seconds"] = sess.optimizer.curvature_seconds - curvature
    history.append(record)
    _save(sess, history)
    return record


def _marks(fractions: list[float], epoch: int, steps: int) -> dict[int, float]:
    """``{step index in the epoch: fractional epoch}`` of the checkpoints inside ``epoch``."""
    inside = [f for f in fractions if epoch - 1 < f < epoch]
    return {max(1, round((f - (epoch - 1)) * steps)): f for f in sorted(inside)}


def _train_epoch(sess: _Session, marks: dict[int, float]):
    """Yield ``(running stats, fraction)`` at each mark, then ``(epoch stats, None)``."""
    model, optimizer, device = sess.model, sess.optimizer, sess.device
    loss_fn = get_loss(sess.config.loss)
    model.train()
    total, correct, n, targets = 0.0, 0, 0, 0
    newton = type(optimizer).__name__ == "PartitionNewton"
    batches = _bar(sess.progress, len(sess.loader), 0, leave=False, desc="batches", it=sess.loader)
    gen = augment_generator(sess.config.seed, sess.loader.epoch)
    for step, (x, y) in enumerate(batches if batches is not None else sess.loader, start=1):
        x, y = augment(x, sess.config.augment, gen).to(device), y.to(device)
        box: dict[str, Any] = {}

        def closure(x=x, y=y, box=box):
            if not newton:
                optimizer.zero_grad(set_to_none=True)
            box["out"] = model(x)
            loss = loss_fn(box["out"], y)
            if not newton:
                loss.backward()
            return loss

        if newton:
            loss = optimizer.step(closure, _curvature_closure(sess, loss_fn)).detach()
        else:
            loss = optimizer.step(closure).detach()
        if not torch.isfinite(loss):
            _record_divergence(sess, step, float(loss))
        total += float(loss) * len(y)
        correct += correct_predictions(box["out"].detach(), y)
        n += len(y)
        targets += y.numel()
        if step in marks:
            yield {"train_loss": total / n, "train_acc": correct / targets}, marks[step]
    yield {"train_loss": total / n, "train_acc": correct / targets}, None


def _curvature_closure(sess: _Session, loss_fn):
    """The loss on the next batch of the fixed curvature loader (None: the minibatch)."""
    if sess.curvature is None:
        return None
    optimizer, period = sess.optimizer, sess.optimizer.config["period"]

    def closure():
        index = (optimizer.steps // period) % len(sess.curvature)
        x, y = sess.curvature.batch(index)
        return loss_fn(sess.model(x.to(sess.device)), y.to(sess.device))

    return closure


def _record_divergence(sess: _Session, step: int, loss: float) -> None:
    manifest = runfolder.read_manifest(sess.out).raw
    manifest["status"] = f"diverged: loss {loss} at step {step} of the next epoch"
    runfolder.write_manifest(sess.out, manifest)
    raise FloatingPointError(
        f"training diverged (loss {loss}); lower the learning rate. Epochs before are kept."
    )


def _evaluate_all(sess: _Session) -> dict[str, float]:
    loss, acc = evaluate(sess.model, sess.test, sess.device, sess.config.loss)
    out = {"test_loss": loss, "test_acc": acc}
    if sess.val is not None:
        out["val_loss"], out["val_acc"] = evaluate(
            sess.model, sess.val, sess.device, sess.config.loss
        )
    return out


def _epoch_zero(sess: _Session) -> dict[str, Any]:
    train_loss, train_acc = evaluate(sess.model, sess.loader, sess.device, sess.config.loss)
    return {
        "epoch": 0,
        "train_loss": train_loss,
        "train_acc": train_acc,
        **_evaluate_all(sess),
        "seconds": 0.0,
    }


def _manifest(
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    train_set: ImageData,
    test_set: ImageData,
    val_set: ImageData | None,
    command: str | None,
) -> dict[str, Any]:
    return {
        "format": runfolder.RUN_FORMAT,
        "name": Path(config.out).name,
        "model": {"name": config.model, "kwargs": config.model_kwargs},
        "init": config.init,
        "data": {
            "name": config.data,
            "source": config.data_source,
            "train": train_set.source,
            "train_size": len(train_set),
            "test": test_set.source,
            "test_size": len(test_set),
            "val_size": len(val_set) if val_set is not None else 0,
            "input_shape": list(train_set.x.shape[1:]),
            **_data_facts(train_set),
            "curvature": (
                f"separate: first {config.curvature_size}-sample batches of the training "
                "set, unshuffled, cycling"
                if config.optimizer == "partition-newton"
                and (config.curvature_data or "separate") == "separate"
                else "same: the training minibatch"
            ),
            "augment": config.augment,
            **({"tokenizer": config.tokenizer} if config.tokenizer else {}),
        },
        "loss": config.loss,
        "optimizer": {"name": config.optimizer, **optimizer_settings(optimizer)},
        "batch_size": config.batch_size,
        "epochs": config.epochs,
        "seed": config.seed,
        "config": dataclasses.asdict(config),
        "versions": versions(),
        "command": command or "python -m hessian_lens " + shlex.join(sys.argv[1:]),
    }


def _data_facts(data) -> dict[str, Any]:
    """Images: their normalisation; text: the corpus (path, files, bytes, split, context)."""
    corpus = getattr(data, "corpus", None)
    if corpus is not None:
        return {"corpus": corpus}
    return {"normalization": {"mean": list(data.mean), "std": list(data.std)}}


def _save(sess: _Session, history: list[dict[str, Any]], resume: bool = True) -> None:
    """Checkpoint, then (at epoch ends) resume state, then logs and manifest: each atomic."""
    epoch = history[-1]["epoch"]
    name = runfolder.checkpoint_name(epoch)
    history[-1]["checkpoint"] = name
    meta = {
        "model": sess.manifest["model"],
        "epoch": epoch,
        "run": sess.manifest["name"],
        "metrics": {k: v for k, v in history[-1].items() if k != "checkpoint"},
        "versions": sess.manifest["versions"],
    }
    save_checkpoint(sess.out / name, sess.model, meta)
    if resume:
        state = {
            "epoch": epoch,
            "optimizer": sess.optimizer.state_dict(),
            "history": json.dumps(history),
            "identity": json.dumps(sess.manifest["config"]),
            "scheduler": sess.scheduler.state_dict() if sess.scheduler is not None else None,
        }
        atomic_write(sess.out / runfolder.RESUME_FILE, lambda tmp: torch.save(state, tmp))
    log = getattr(sess.optimizer, "log", None)
    if log is not None:  # PartitionNewton: per-step losses and per-group rates
        write_json(
            sess.out / runfolder.OPTIMIZER_LOG,
            {"labels": sess.optimizer.partition.labels, "entries": log},
        )
    runfolder.write_manifest(sess.out, {**sess.manifest, "history": history})


def _resume(sess: _Session) -> list[dict[str, Any]]:
    """History of an interrupted run in ``out`` (model and optimizer restored), or []."""
    out, config = sess.out, sess.config
    state_path = out / runfolder.RESUME_FILE
    if not state_path.exists():
        if (out / runfolder.RUN_FILE).exists():
            raise CheckpointError(f"{out} holds a run without resume.pt; choose a new --out.")
        return []
    check_pickle(state_path, checkpoint_limit_bytes(), state_path.name)  # before torch sees it
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    stored = json.loads(state["identity"])
    defaults = TrainConfig(out="").identity()  # fields added since the run was written
    stored_identity = {
        **defaults,
        **{k: v for k, v in stored.items() if k not in ("out", "epochs", "device", "download")},
    }
    if stored_identity != config.identity():
        diff = sorted(k for k in stored_identity if stored_identity[k] != config.identity().get(k))
        raise CheckpointError(
            f"{out} holds a run with other settings ({', '.join(diff)}); "
            "resume it with the same ones or choose a new --out."
        )
    from hessian_lens.checkpoint import load_checkpoint

    epoch = state["epoch"]
    saved, _ = load_checkpoint(out / runfolder.checkpoint_name(epoch), max_bytes=None)
    sess.model.load_state_dict(saved.state_dict())
    sess.model.to(sess.device)
    sess.optimizer.load_state_dict(state["optimizer"])
    if sess.scheduler is not None and state.get("scheduler"):
        sess.scheduler.load_state_dict(state["scheduler"])
    history = json.loads(state["history"])
    return [h for h in history if h["epoch"] <= epoch]


def replay_first_update(
    run: str | Path, data_source: str | None = None, updates: int = 1
) -> dict[str, Any]:
    """Replay a run from its initialisation until its optimizer first moves the weights.

    With ``updates = k > 1`` the direction spans the first k updates (PartitionNewton
    reuses one set of rates for ``period`` steps: ``k = period`` shows what they did).

    The run's settings (``run.json``), data order and curvature loader are reproduced
    exactly; PartitionNewton makes no update during its warm-up, so the first update
    starts from ``epoch_0000``. What the Taylor view needs to explain that step.

    Returns:
        ``{"model"`` (at the weights before the update), ``"direction"`` (the update
        ``v = theta_after - theta_before`` per parameter, named), ``"step"`` (its index),
        ``"eta"`` (PartitionNewton's rates, else None), ``"lr"``, ``"batch"`` (the
        training minibatch of that step)``}``.
    """
    manifest = runfolder.read_manifest(run).raw
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    stored = {k: v for k, v in (manifest.get("config") or {}).items() if k in fields}
    if not stored:
        raise ValueError(f"{run}: run.json has no training config to replay")
    config = TrainConfig(**{**stored, "out": str(run), "device": "cpu"})
    if data_source:
        config.data_source = data_source
    sess = _session(config, progress=False, command=None)
    from hessian_lens.checkpoint import load_checkpoint

    start, _ = load_checkpoint(Path(run) / runfolder.checkpoint_name(0), max_bytes=None)
    sess.model.load_state_dict(start.state_dict())
    sess.loader.set_epoch(1)
    return _first_moving_steps(sess, updates)


def _first_moving_steps(sess: _Session, updates: int) -> dict[str, Any]:
    loss_fn = get_loss(sess.config.loss)
    model, optimizer = sess.model, sess.optimizer
    newton = type(optimizer).__name__ == "PartitionNewton"
    named = dict(model.named_parameters())
    before, first, batch = None, None, None
    for step, (x, y) in enumerate(sess.loader):
        if first is None:
            before = {k: p.detach().clone() for k, p in named.items()}

        def closure(x=x, y=y):
            if not newton:
                optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            if not newton:
                loss.backward()
            return loss

        if newton:
            optimizer.step(closure, _curvature_closure(sess, loss_fn))
        else:
            optimizer.step(closure)
        moved = {k: p.detach() - before[k] for k, p in named.items()}
        if first is None and any(bool(v.abs().max() > 0) for v in moved.values()):
            first, batch = step, (x, y)
            eta = getattr(optimizer, "eta", None)
        if first is not None and step - first + 1 >= updates:
            with torch.no_grad():
                for k, p in named.items():
                    p.copy_(before[k])
            return {
                "model": model.eval(),
                "direction": moved,
                "step": first,
                "updates": updates,
                "eta": eta.tolist() if eta is not None else None,
                "lr": optimizer.param_groups[0]["lr"],
                "batch": batch,
            }
    raise ValueError("the optimizer did not make that many updates during the first epoch")


def _bar(
    progress: bool, total: int, initial: int, leave: bool = True, desc: str = "epochs", it=None
):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(it, total=total, initial=initial, leave=leave, desc=desc, unit="")
