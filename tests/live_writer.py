"""A training loop writing a run while a test reads it: ``python -m tests.live_writer``.

    python -m tests.live_writer RUN EPOCHS [--gate DIR]

Records epochs 0..EPOCHS with ``hl.Recorder`` (tiny MLP, analysed at every epoch). With
``--gate``, epoch e >= 2 waits for the file ``DIR/go_<e>`` first, so a test decides when
each new epoch lands; without, epochs follow each other as fast as they can.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import hessian_lens as hl
from tests.recorded import tiny_data, tiny_net, train_epoch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("epochs", type=int)
    ap.add_argument("--gate", default=None)
    args = ap.parse_args()
    model, batches = tiny_net(), tiny_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    with hl.Recorder(args.run, model, F.cross_entropy, batches, name="live-run") as rec:
        rec.log(0)
        for epoch in range(1, args.epochs + 1):
            if args.gate and epoch >= 2:
                while not (Path(args.gate) / f"go_{epoch}").exists():
                    time.sleep(0.05)
            rec.log(epoch, train_loss=train_epoch(model, batches, opt))


if __name__ == "__main__":
    main()
