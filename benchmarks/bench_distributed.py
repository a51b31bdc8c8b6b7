"""Speed-up of ``torchrun`` on this machine: one process vs 2 ranks (gloo), sharding the
checkpoints or the data. One JSON line per configuration, times as ratios to one process
with one thread (and to one process with as many threads as ranks) measured in the same run.

Each configuration analyses the same run into a fresh copy (so nothing is skipped):

    python benchmarks/bench_distributed.py --run checkpoints/lenet5-cifar10 --samples 5000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_run(run: Path, into: Path, checkpoints: int) -> Path:
    """The run's manifest and first ``checkpoints`` checkpoints, without any analysis."""
    into.mkdir(parents=True)
    shutil.copy(run / "run.json", into / "run.json")
    for path in sorted(run.glob("epoch_*.pt"))[:checkpoints]:
        shutil.copy(path, into / path.name)
    return into


def timed(cmd: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="checkpoints/lenet5-cifar10")
    ap.add_argument("--checkpoints", type=int, default=4)
    ap.add_argument("--samples", type=int, default=5000)
    ap.add_argument("--ranks", type=int, default=2)
    args = ap.parse_args(argv)
    analyze = [
        "-m",
        "hessian_lens",
        "analyze",
        "--samples",
        str(args.samples),
        "--device",
        "cpu",
        "--no-progress",
    ]
    configs = {
        "1 process, 1 thread": (lambda r: [sys.executable, *analyze[:3], str(r), *analyze[3:]], 1),
        f"1 process, {args.ranks} threads": (
            lambda r: [sys.executable, *analyze[:3], str(r), *analyze[3:]],
            args.ranks,
        ),
    }
    for shard in ("checkpoints", "data"):
        configs[f"{args.ranks} ranks, --shard {shard}"] = (
            lambda r, shard=shard: [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc-per-node",
                str(args.ranks),
                "--master-port",
                str(free_port()),
                *analyze[:3],
                str(r),
                *analyze[3:],
                "--shard",
                shard,
            ],
            1,
        )
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (cmd, threads)) in enumerate(configs.items()):
            run = copy_run(Path(args.run), Path(tmp) / f"run{i}", args.checkpoints)
            times[name] = timed(cmd(run), threads)
    base, threaded = times["1 process, 1 thread"], times[f"1 process, {args.ranks} threads"]
    for name, seconds in times.items():
        print(
            json.dumps(
                {
                    "config": name,
                    "checkpoints": args.checkpoints,
                    "samples": args.samples,
                    "seconds": round(seconds, 1),
                    "speedup_vs_1_thread": round(base / seconds, 2),
                    f"speedup_vs_{args.ranks}_threads": round(threaded / seconds, 2),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
