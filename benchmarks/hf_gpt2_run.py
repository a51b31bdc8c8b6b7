"""Make the shipped ``hf-gpt2-text`` run: a Hugging Face GPT-2 on the standard library.

    OMP_NUM_THREADS=1 python benchmarks/hf_gpt2_run.py WORK [--out checkpoints/hf-gpt2-text]

(one thread: on a busy 2-core machine two threads spend ten times the CPU per step).

Each step is resumable (run the same command again) and prints one JSON line:

1. a byte-level BPE tokenizer of 1024 tokens trained by ``tokenizers`` on the *training*
   split of the corpus (the files of the standard library's top folder, the corpus of
   ``gpt-text``), written to ``WORK/hf-gpt2-text/tokenizer.json``;
2. ``train --model hf:gpt2`` (2 layers, 4 heads, width 64, context 64, no dropout) with the
   project's own loop on that tokenised text, checkpoints inside epoch 1 as for gpt-text;
3. ``analyze --partition by_head`` of every checkpoint (256 windows);
4. the shipped folder (``benchmarks/ship_run.py``): the analysis, epochs 0 to 0.1 as they
   are, the last epoch as float16; beside them ``tokenizer.json`` (run.json names it
   relative to the folder) and ``save_pretrained/``, the last checkpoint written by
   ``save_pretrained`` with its tokenizer (the folder the Inspect page opens, zipped);
5. ``analyze`` of the shipped folder (the float16 epoch's own record).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import sysconfig
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ship_run import ship
from hessian_lens import cli, hf_folders
from hessian_lens.checkpoint import load_checkpoint
from hessian_lens.io.files import write_json
from hessian_lens.runfolder import RUN_FILE, checkpoint_name, read_manifest
from hessian_lens.tokenized import train_bpe

CORPUS = f"text:{sysconfig.get_paths()['stdlib']}/*.py"
CONTEXT = 64
VOCAB = 1024
MODEL = {
    "n_layer": 2,
    "n_head": 4,
    "n_embd": 64,
    "n_positions": CONTEXT,
    "vocab_size": VOCAB,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
    "bos_token_id": 0,
    "eos_token_id": 0,
}
KEEP = "0,0.05,0.1"
NOTE = (
    "A Hugging Face GPT2LMHeadModel (transformers) trained by hessian_lens's own loop on the "
    "standard library's top-level .py files, tokenised by a 1024-token byte-level BPE trained "
    "on the training split (tokenizer.json); save_pretrained/ holds the last epoch as a "
    "save_pretrained folder with that tokenizer."
)


def run(argv: list[str]) -> None:
    sys.argv = [sys.argv[0], *argv]  # run.json records the command as typed
    code = cli.main(argv)
    if code:
        raise SystemExit(f"{argv[0]} failed ({code})")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("work", type=Path)
    p.add_argument("--out", type=Path, default=Path("checkpoints/hf-gpt2-text"))
    p.add_argument("--epochs", type=int, default=6)
    args = p.parse_args(argv)
    folder = args.work / "hf-gpt2-text"
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = folder / "tokenizer.json"
    if not tokenizer.exists():
        train_bpe(CORPUS, VOCAB, tokenizer)
    print(json.dumps({"tokenizer": str(tokenizer)}), flush=True)
    train = ["train", "--model", "hf:gpt2", "--model-kwargs", json.dumps(MODEL)]
    train += ["--data", f"{CORPUS}@{CONTEXT}", "--tokenizer", str(tokenizer), "--loss"]
    train += ["next_token", "--optimizer", "adam", "--lr", "0.002", "--test-size", "4000"]
    train += ["--epochs", str(args.epochs), "--batch-size", "32", "--checkpoints-at"]
    train += ["0.05,0.1,0.25,0.5", "--seed", "0", "--device", "cpu", "--no-progress"]
    run([*train, "--out", str(folder)])
    analyze = ["analyze", "--samples", "256", "--partition", "by_head", "--device", "cpu"]
    run([analyze[0], str(folder), *analyze[1:], "--no-progress"])
    if not args.out.exists():
        done = ship(folder, args.out, {float(e) for e in KEEP.split(",")}, NOTE)
        shutil.copyfile(tokenizer, args.out / tokenizer.name)
        manifest = read_manifest(args.out).raw
        corpus = manifest["data"]["corpus"]  # the shipped copy, named relative to the run
        corpus["tokenizer"] = {**corpus["tokenizer"], "path": tokenizer.name}
        manifest["data"] = {**manifest["data"], "tokenizer": tokenizer.name, "corpus": corpus}
        write_json(args.out / RUN_FILE, manifest)
        last = max(h["epoch"] for h in manifest["history"])
        model, _ = load_checkpoint(folder / checkpoint_name(last))
        hf_folders.save_folder(model, args.out / "save_pretrained", tokenizer=str(tokenizer))
        print(json.dumps(done), flush=True)
    run([analyze[0], str(args.out), *analyze[1:], "--no-progress"])
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(json.dumps({"shipped": str(args.out), "bytes": size}), flush=True)


if __name__ == "__main__":
    main()
