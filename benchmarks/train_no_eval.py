"""``hessian_lens train`` with its evaluations skipped: the same weights, sooner.

The training seed replicates of docs/transformers.md were trained with this on a shared
2-core CPU, where evaluating the ViT on 60,000 images before its first step took longer
than the 18 steps to epoch 0.05. Evaluation reads no random state the training uses (the
loader's order and the augmentation are seeded by (seed, epoch), and the models run in
eval mode without dropout), so the checkpoints are those ``train`` writes
(tests/test_benchmarks.py trains a small model both ways and compares the weights); the
history simply has no test or validation metrics.

    python benchmarks/train_no_eval.py --model gpt ... --seed 1 --out gpt-text-seed1
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hessian_lens.train as training
from hessian_lens.cli import main


def no_metrics(sess) -> dict:
    """What ``_evaluate_all`` returns when nothing is evaluated."""
    return {}


def epoch_zero(sess) -> dict:
    """The history's epoch-0 entry without the training-set evaluation."""
    return {"epoch": 0, "seconds": 0.0}


def run(argv: list[str]) -> int:
    """``train`` with ``argv``, evaluations skipped; run.json records this command."""
    real = training.train, training._evaluate_all, training._epoch_zero

    def train(config, progress=True, command=None):
        return real[0](config, progress, "python benchmarks/train_no_eval.py " + shlex.join(argv))

    training.train, training._evaluate_all, training._epoch_zero = train, no_metrics, epoch_zero
    try:
        return main(["train", *argv])
    finally:  # the module as it was: a later train in this process evaluates again
        training.train, training._evaluate_all, training._epoch_zero = real


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
