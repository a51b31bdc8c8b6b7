r"""Command line: ``python -m hessian_lens train | analyze | inspect | report | runs | show``.

Examples::

    python -m hessian_lens train --model lenet5 --init paper --data cifar10 --epochs 21 \
        --data-root shared/datasets/cifar10/cifar10.npz --out checkpoints/lenet5-cifar10
    python -m hessian_lens analyze checkpoints/lenet5-cifar10 --samples 10000
    torchrun --nproc-per-node 4 -m hessian_lens analyze checkpoints/big-run --shard data
    python -m hessian_lens inspect checkpoints/lenet5-cifar10/epoch_0021.pt
    python -m hessian_lens report checkpoints/lenet5-cifar10 -o lenet5.html --figures figs/
    python -m hessian_lens runs                          # the runs under ./checkpoints
    python -m hessian_lens show checkpoints/lenet5-cifar10   # its records, epochs, measures

Bad input prints one line saying what to do and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence

from hessian_lens.data import DATASETS
from hessian_lens.losses import LOSSES
from hessian_lens.partition import SCHEMES
from hessian_lens.train import OPTIMIZERS

SHARDS = ("auto", "checkpoints", "data")
TORCHRUN_POLL_S = 0.5  # seconds between looks at the other ranks' checkpoints


def _floats(text: str) -> list[float]:
    """``"1,21"`` → ``[1.0, 21.0]`` for argparse."""
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        msg = f"expected numbers separated by commas, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def _names(text: str) -> tuple[str, ...]:
    """``"trace,lmax"`` → ``("lmax", "trace")``, each a known measure, for argparse."""
    from hessian_lens.measures import check_measures

    try:
        return check_measures(text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('expected a JSON object, e.g. \'{"activation": "relu"}\'')
    return value


def _epochs_list(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("expected epochs like 0.25,0.5,0.75") from None


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--models",
        default=None,
        metavar="FILE.py",
        help="your own model file(s) using @hessian_lens.register_model (':'-separated)",
    )
    p.add_argument("--no-progress", action="store_true")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model, one checkpoint per epoch (resumable)")
    p.add_argument(
        "--model",
        default="lenet5",
        help="lenet5 | vgg11p | mlp | torchvision:<builder> | a registered name",
    )
    p.add_argument(
        "--model-kwargs",
        type=_json_dict,
        default={},
        help='constructor arguments as JSON, e.g. \'{"activation": "relu"}\'',
    )
    p.add_argument(
        "--init",
        default="torch",
        choices=["torch", "paper"],
        help="torch: PyTorch's default; paper: the author's N(0, sigma_w^2/fan_in), biases 0",
    )
    p.add_argument("--data", default="cifar10", help=" | ".join(DATASETS))
    p.add_argument(
        "--data-root",
        default=None,
        help="an .npz file or a torchvision root folder (default: $HESSIAN_LENS_DATA "
        "or ~/.cache/hessian_lens/data)",
    )
    p.add_argument("--download", action="store_true", help="let torchvision download the data")
    p.add_argument("--loss", default="cross_entropy", choices=LOSSES)
    p.add_argument("--train-size", type=int, default=None, help="deterministic training subset")
    p.add_argument("--test-size", type=int, default=None, help="deterministic test subset")
    p.add_argument("--val-size", type=int, default=None, help="hold out this many training samples")
    p.add_argument("--epochs", type=int, default=21)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument(
        "--momentum",
        type=float,
        default=None,
        help="default: the optimizer's own (sgd 0, partition-newton 0.9)",
    )
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument(
        "--optimizer-kwargs", type=_json_dict, default={}, help="more optimizer arguments as JSON"
    )
    p.add_argument(
        "--curvature-data",
        default=None,
        choices=["separate", "same"],
        help="partition-newton: a fixed, unshuffled, cycling loader of "
        "--curvature-size training samples (separate, the default) or the training "
        "minibatch (same)",
    )
    p.add_argument("--curvature-size", type=int, default=100)
    p.add_argument(
        "--checkpoints-at",
        type=_epochs_list,
        default=[],
        metavar="E1,E2",
        help="extra checkpoints at fractions of an epoch, e.g. 0.25,0.5,0.75",
    )
    p.add_argument(
        "--lr-plateau",
        type=int,
        default=None,
        metavar="PATIENCE",
        help="halve lr when the training loss has not improved for PATIENCE epochs",
    )
    p.add_argument(
        "--augment",
        default="none",
        choices=["none", "flip", "crop+flip"],
        help="training-batch augmentation of images: left-right flips, and random crops "
        "of the 4-pixel zero-padded image (evaluation and analysis never augment)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--tokenizer",
        default=None,
        metavar="FOLDER",
        help="text data: a tokenizer.json (or a folder / zip holding one) read by the "
        "tokenizers library offline; its token ids replace the bytes",
    )
    p.add_argument("--out", required=True, help="run folder (resumed when it exists)")
    _common(p)


def _add_analyze(sub) -> None:
    p = sub.add_parser(
        "analyze",
        help="compute H̄, its inverse and comparisons for every checkpoint of a run into "
        "<run>/analysis.sqlite (several processes share the work; torchrun too)",
    )
    p.add_argument("run", help="run folder")
    p.add_argument("--samples", type=int, default=10000, help="training samples per checkpoint")
    p.add_argument(
        "--partition",
        default="canonical",
        help=" | ".join(SCHEMES) + " (by_module:K for any depth K)",
    )
    p.add_argument("--order3", action="store_true", help="also the diagonal of D^(3)")
    p.add_argument(
        "--epochs",
        type=_floats,
        default=None,
        help="only these epochs' checkpoints, e.g. 1,21 (default: all)",
    )
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="seed of the sample subset")
    p.add_argument("--data", default=None, help="data set spec (default: the run's)")
    p.add_argument("--data-root", default=None, help="override the run's data source")
    p.add_argument(
        "--tokenizer", default=None, metavar="FOLDER", help="text data (default: the run's)"
    )
    p.add_argument(
        "--loss",
        default=None,
        choices=LOSSES,
        help="default: the run's own (run.json), else cross_entropy",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument(
        "--curvature",
        default="hessian",
        choices=["hessian", "ggn"],
        help="H̄ = UᵀHU, or the Gauss-Newton Ḡ = UᵀJᵀH_lJU",
    )
    p.add_argument(
        "--measures",
        type=_names,
        default=(),
        help="also per checkpoint, comma-separated: trace (block traces), frobenius (the S x S "
        "block Frobenius map, traces included), spectra (per-block Lanczos/SLQ, JS⁰, lambda_max), "
        "lmax (the whole model's lambda_max and lambda_min)",
    )
    p.add_argument("--probes", type=int, default=16, help="Rademacher probes of trace/frobenius")
    p.add_argument("--steps", type=int, default=20, help="Lanczos steps of spectra/lmax")
    p.add_argument("--slq-probes", type=int, default=2, help="random starts of spectra/lmax")
    p.add_argument(
        "--shard",
        default="auto",
        choices=SHARDS,
        help="under torchrun: spread the checkpoints over the ranks, or split every "
        "checkpoint's samples (auto: checkpoints while there are more left than ranks)",
    )
    p.add_argument(
        "--lease-seconds",
        type=float,
        default=600.0,
        help="a claim not renewed for this long is taken over by another process",
    )
    _common(p)


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="validate a checkpoint file and print its metadata")
    p.add_argument("path")
    p.add_argument(
        "--architecture", default=None, help="for a bare state_dict, e.g. torchvision:resnet18"
    )
    p.add_argument("--model-kwargs", type=_json_dict, default={})
    p.add_argument("--models", default=None, metavar="FILE.py")


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report",
        help="one self-contained HTML page of a run (opens offline), and its figures as files",
    )
    p.add_argument("run", help="run folder")
    p.add_argument("-o", "--out", required=True, help="the HTML file to write, e.g. run.html")
    p.add_argument(
        "--figures", default=None, metavar="DIR", help="also write every figure into DIR"
    )
    p.add_argument(
        "--formats",
        default="png,svg,pdf",
        help="figure formats for --figures, comma-separated (png, svg, pdf)",
    )


def _add_runs(sub) -> None:
    p = sub.add_parser("runs", help="list the runs under folders (default ./checkpoints)")
    p.add_argument("dirs", nargs="*", metavar="DIR", help="folders of runs, or runs")
    p.add_argument("--json", action="store_true", help="one JSON document")


def _add_show(sub) -> None:
    p = sub.add_parser("show", help="a run's card, its analyses, records, epochs and measures")
    p.add_argument("run", help="run folder")
    p.add_argument("--json", action="store_true", help="one JSON document")


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m hessian_lens``."""
    ap = argparse.ArgumentParser(
        prog="hessian-lens",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_analyze(sub)
    _add_inspect(sub)
    _add_report(sub)
    _add_runs(sub)
    _add_show(sub)
    return ap


def resolve_device(name: str) -> str:
    """Resolve a device name: ``auto`` -> ``cuda`` when available, else ``cpu``.

    Any other name is checked: a device torch cannot use is a ValueError saying so.

    Raises:
        ValueError: not a device name, or CUDA asked for on a machine without a GPU.
    """
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(
            f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA GPU here; use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} GPUs")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: only cpu and cuda are supported")
    return str(device)


def _load_models(args) -> None:
    from hessian_lens.registry import load_env_models, load_model_files

    load_env_models()
    if getattr(args, "models", None):
        load_model_files(args.models)


def _train(args) -> int:
    from hessian_lens.train import TrainConfig, train

    config = TrainConfig(
        out=args.out,
        model=args.model,
        model_kwargs=args.model_kwargs,
        init=args.init,
        data=args.data,
        data_source=args.data_root,
        train_size=args.train_size,
        test_size=args.test_size,
        val_size=args.val_size,
        loss=args.loss,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        optimizer_kwargs=args.optimizer_kwargs,
        curvature_data=args.curvature_data,
        curvature_size=args.curvature_size,
        checkpoints_at=args.checkpoints_at,
        seed=args.seed,
        lr_plateau=args.lr_plateau,
        download=args.download,
        augment=args.augment,
        tokenizer=args.tokenizer,
        device=resolve_device(args.device),
    )
    out = train(config, progress=not args.no_progress)
    print(f"run written to {out}")
    return 0


def _analyze(args) -> int:
    from hessian_lens import distributed
    from hessian_lens.analyze import AnalysisSettings

    if not math.isfinite(args.lease_seconds) or args.lease_seconds <= 0:
        raise ValueError(f"--lease-seconds must be a finite number > 0, got {args.lease_seconds}")
    settings = AnalysisSettings(
        samples=args.samples,
        partition=args.partition,
        order3=args.order3,
        batch_size=args.batch_size,
        seed=args.seed,
        dtype=args.dtype,
        loss=args.loss or _run_loss(args.run),
        curvature=args.curvature,
        measures=args.measures,
        probes=args.probes,
        steps=args.steps,
        slq_probes=args.slq_probes,
    )
    device = distributed.init_from_env(resolve_device(args.device))
    try:
        return _analyze_on(args, settings, device)
    finally:
        distributed.leave()


def _analyze_on(args, settings, device) -> int:
    """``analyze`` once this process has joined the ranks torchrun started (if any)."""
    from hessian_lens import distributed
    from hessian_lens.analyze import POLL_S, analyze_run, analyze_run_data_parallel

    rank, world = distributed.rank_and_world()
    kwargs = {
        "data_source": args.data_root,
        "device": device,
        "data": args.data,
        "progress": not args.no_progress and rank == 0,
        "epochs": args.epochs,
        "tokenizer": args.tokenizer,
    }
    mode = _shard_mode(args, world)
    if mode == "data":
        done = analyze_run_data_parallel(args.run, settings, **kwargs)
    else:
        # torchrun ranks finish together: look again soon for the others' last checkpoints
        poll_s = TORCHRUN_POLL_S if world > 1 else POLL_S
        done = analyze_run(args.run, settings, lease_s=args.lease_seconds, poll_s=poll_s, **kwargs)
    if mode == "checkpoints" and world > 1:  # each rank computed its own share
        total = done["computed"] + done["skipped"]
        done["computed"] = distributed.sum_int(done["computed"])
        done["skipped"] = total - done["computed"]
    if rank == 0:
        print(
            f"{done['computed']} checkpoints analysed, {done['skipped']} already in "
            f"{done['store']}" + (f" ({world} ranks, --shard {mode})" if world > 1 else "")
        )
    return 0


def _run_loss(run: str) -> str:
    """The loss a run was trained with, so that its analysis measures the same loss."""
    from hessian_lens.runfolder import read_manifest

    loss = read_manifest(run).loss
    return loss if loss in LOSSES else "cross_entropy"


def _shard_mode(args, world: int) -> str:
    """How the ranks share the work, ``checkpoints`` or ``data``, under ``--shard``.

    ``auto`` splits the data when fewer checkpoints are left than there are ranks.
    """
    if world == 1 or args.shard != "auto":
        return "checkpoints" if world == 1 else args.shard
    from hessian_lens.analyze import select_checkpoints

    left = len(select_checkpoints(args.run, args.epochs))
    return "checkpoints" if left >= world else "data"


def _inspect(args) -> int:
    from hessian_lens.inspection import Inspection
    from hessian_lens.settings import checkpoint_limit_bytes

    ins = Inspection.open(args.path, max_bytes=checkpoint_limit_bytes())
    model, meta = ins.build(args.architecture, args.model_kwargs)
    out = {
        "file": args.path,
        "sha256": ins.sha,
        "architecture": meta["model"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "meta": {k: v for k, v in meta.items() if k != "model"},
    }
    print(json.dumps(out, indent=2, default=str))
    return 0


def _report(args) -> int:
    from hessian_lens.figexport import ExportError
    from hessian_lens.report import write_report

    formats = tuple(f.strip().lower() for f in args.formats.split(",") if f.strip())
    try:
        written = write_report(args.run, args.out, args.figures, formats)
    except ExportError as err:
        raise ValueError(str(err)) from None
    print(f"wrote {written[0]}" + (f" and {len(written) - 1} figure files" if args.figures else ""))
    return 0


def _runs(args) -> int:
    from hessian_lens import listing

    rows = listing.list_runs(args.dirs)
    print(listing.as_json(rows) if args.json else listing.runs_text(rows))
    return 0


def _show(args) -> int:
    from hessian_lens import listing

    info = listing.show(args.run)
    print(listing.as_json(info) if args.json else listing.show_text(info))
    return 0


HANDLERS = {
    "train": _train,
    "analyze": _analyze,
    "inspect": _inspect,
    "report": _report,
    "runs": _runs,
    "show": _show,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input prints one clear line and exits with status 2."""
    args = parser().parse_args(argv)
    handler = HANDLERS[args.command]
    try:
        _load_models(args)
        return handler(args)
    except (ValueError, OSError, MemoryError, FloatingPointError) as err:
        print(f"hessian-lens {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__
