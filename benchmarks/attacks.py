"""Issue 11's attacks, run against a source tree in bounded subprocesses; one JSON line each.

Usage::

    python benchmarks/attacks.py --tree /path/to/checkout [--only 1,13] [--list]

Every attempt builds its files in a fresh folder, then runs one subprocess on the tree
(``python -m hessian_lens ...``, a short script, or a dashboard page through Streamlit's
``AppTest``) with the tree first on ``PYTHONPATH``, ``HOME`` and the cache inside that folder,
``OMP_NUM_THREADS=1``, an address-space limit (``RLIMIT_AS``, 6 GiB unless the attempt says
otherwise: torch and Streamlit alone reserve about 3 GiB of address space) and a wall-clock
limit. It reports:

``rc``
    exit status (``null`` when killed at the time limit: ``timed_out``).
``traceback``
    whether stderr holds a Python traceback.
``stderr_lines``
    lines on stderr.
``message``
    the last stderr line, or what the page showed (first error / exception).
``peak_mb``
    the subprocess's peak resident memory (``ru_maxrss``, interpreter and imports included:
    about 350 MB for the CLI, 550 MB for a page).
``seconds``
    wall time, imports included.
``created``
    paths that appeared in the attempt's folder (or were removed: ``-path``), the inputs
    excluded.
``extra``
    what the attempt checks besides (cards drawn, SQLite journal mode, files in the cache).

Safe to run on a shared machine: one subprocess at a time, each bounded in memory and time;
a bind mount (item 7, root only) is always unmounted; nothing is written outside the
temporary folder (the "/etc" of item 9 is a copy-like folder).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import pickle
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]
PY = sys.executable
GiB = 2**30
RESULT = "@@RESULT "


# ---------------------------------------------------------------------------- fixtures
def lenet_state(num_classes: int = 10, in_channels: int = 3) -> dict:
    """LeNet-5's state_dict built with plain torch (the same names in every tree)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers = {
        "conv1": nn.Conv2d(in_channels, 6, 5),
        "conv2": nn.Conv2d(6, 16, 5),
        "fc1": nn.Linear(400, 120),
        "fc2": nn.Linear(120, 84),
        "fc3": nn.Linear(84, num_classes),
    }
    return {
        f"{n}.{k}": v.detach().clone() for n, m in layers.items() for k, v in m.state_dict().items()
    }


LENET = {"model": {"name": "lenet5", "kwargs": {}}}


def save_pt(path: Path, state: dict, meta) -> Path:
    import torch

    torch.save({"state_dict": state, "meta": meta}, path)
    return path


def memo_bomb(levels: int = 12):
    """``[[...] * 10] * 10 ...``: 10**levels leaves, a few hundred bytes pickled (memo)."""
    bomb: object = "x"
    for _ in range(levels):
        bomb = [bomb] * 10
    return bomb


def deep_meta_pt(path: Path, depth: int) -> Path:
    """A .pt whose meta is a list nested ``depth`` deep, written as pickle opcodes."""
    save_pt(path, lenet_state(), "PLACEHOLDER-META")
    with zipfile.ZipFile(path) as z:
        contents = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in contents if n.endswith("data.pkl"))
    at = contents[pkl].index(b"PLACEHOLDER-META") - 5
    deep = b"]" * depth + b"a" * (depth - 1)
    contents[pkl] = contents[pkl][:at] + deep + contents[pkl][at + 5 + 16 :]
    with zipfile.ZipFile(path, "w") as z:
        for n, data in contents.items():
            z.writestr(n, data)
    return path


def deflated_pt(path: Path, mib: int) -> Path:
    """A .pt whose single storage (``mib`` MiB of zeros) is deflated: a zip bomb."""
    import torch

    plain = path.with_suffix(".plain")
    torch.save({"state_dict": {"w": torch.zeros(mib * 2**18)}, "meta": {}}, plain)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            with src.open(info) as r, dst.open(info.filename, "w", force_zip64=True) as w:
                while chunk := r.read(1 << 22):
                    w.write(chunk)
    plain.unlink()
    return path


def tiny_npz(path: Path, n: int = 64, shape=(32, 32, 3), labels=None, **extra) -> Path:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, n).astype(np.int64) if labels is None else labels
    arrays = {
        "x_train": rng.integers(0, 256, (n, *shape), dtype=np.uint8),
        "y_train": y,
        "x_test": rng.integers(0, 256, (n // 2, *shape), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n // 2).astype(np.int64),
    }
    arrays.update(extra)
    np.savez(path, **arrays)
    return path


def manifest(name: str = "run", **over) -> dict:
    m = {
        "name": name,
        "model": {"name": "lenet5", "kwargs": {}},
        "data": {"name": "cifar10", "source": "", "train_size": 64},
        "optimizer": {"name": "sgd", "lr": 0.05},
        "batch_size": 32,
        "history": [
            {"epoch": 1, "train_loss": 2.3, "test_acc": 0.1},
            {"epoch": 2, "train_loss": 2.2, "test_acc": 0.12},
        ],
    }
    m.update(over)
    return m


def write_run(folder: Path, man, checkpoints: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if man is not None:
        (folder / "run.json").write_text(man if isinstance(man, str) else json.dumps(man))
    for e in range(checkpoints):
        save_pt(folder / f"epoch_{e:04d}.pt", lenet_state(), {**LENET, "epoch": e})
    return folder


_ANALYSED: Path | None = None


def analysed_run(work: Path) -> Path:
    """A 2-epoch LeNet-5 run on 64 synthetic images, analysed (made once with this script's
    own tree through its CLI; the store format is the same in every tree), copied to ``work``.
    """
    global _ANALYSED
    if _ANALYSED is None:
        base = Path(tempfile.mkdtemp(prefix="hl-analysed-"))
        npz = tiny_npz(base / "tiny.npz")
        run = base / "runs" / "tiny-run"
        env = {**os.environ, "PYTHONPATH": str(HERE), "OMP_NUM_THREADS": "1"}
        common = ["--device", "cpu", "--no-progress"]
        subprocess.run(
            [PY, "-m", "hessian_lens", "train", "--data-root", str(npz), "--train-size", "64",
             "--test-size", "32", "--epochs", "2", "--batch-size", "32", "--lr", "0.05",
             "--out", str(run), *common],
            cwd=HERE, env=env, check=True, capture_output=True, timeout=600,
        )  # fmt: skip
        subprocess.run(
            [PY, "-m", "hessian_lens", "analyze", str(run), "--samples", "64",
             "--batch-size", "32", *common],
            cwd=HERE, env=env, check=True, capture_output=True, timeout=600,
        )  # fmt: skip
        for extra in ("-wal", "-shm"):
            Path(f"{run}/analysis.sqlite{extra}").unlink(missing_ok=True)
        _ANALYSED = base
    shutil.copytree(_ANALYSED, work / "analysed")
    return work / "analysed"


# ---------------------------------------------------------------------------- pages
PAGE = """
import json, sys
{pre}
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({app!r}, default_timeout=900)
at.switch_page({file!r})
{state}
at.run()
def upload(name, data):
    at.file_uploader[0].set_value((name, data, "application/octet-stream"))
    at.run()
act_error = None
try:
{act}
except Exception as err:  # a widget the page never drew
    act_error = f"{{type(err).__name__}}: {{err}}"
def vals(xs):
    return [str(x.value)[:400] for x in xs]
out = dict(
    exception=vals(at.exception), error=vals(at.error), warning=vals(at.warning),
    info=vals(at.info), subheaders=len(at.subheader), success=vals(at.success),
    caption_chars=sum(len(str(c.value)) for c in at.caption), act_error=act_error,
    markdown_chars=sum(len(str(m.value)) for m in at.markdown),
)
{post}
print({marker!r} + json.dumps(out))
"""


def page_code(
    tree: Path, page: str, act: str = "", state: str = "", pre: str = "", post: str = ""
) -> str:
    act = "\n".join("    " + line for line in (act or "pass").splitlines())
    return PAGE.format(
        app=str(tree / "app.py"),
        file=page,
        act=act,
        state=state,
        pre=pre,
        post=post,
        marker=RESULT,
    )


PICK_PN = "at.selectbox(key='optim-pn').set_value('pn').run()"
COUNT_LOADS = """
import torch
_load, loads = torch.load, []
def counting(*a, **k):
    loads.append(1)
    return _load(*a, **k)
torch.load = counting
"""


# ---------------------------------------------------------------------------- attempts
@dataclass
class Call:
    """What to run: ``python ARGS`` in the tree, with more environment variables."""

    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    timeout: float = 120.0
    mem: int = 6 * GiB
    check: Callable[[], dict] | None = None  # after the run: more facts
    teardown: Callable[[], None] | None = None


@dataclass
class Attempt:
    item: int
    name: str
    make: Callable[[Path, Path], Call]  # (work folder, tree) -> Call
    issue: int = 11


ATTEMPTS: list[Attempt] = []


def attempt(item: int, name: str, issue: int = 11):
    def add(make):
        ATTEMPTS.append(Attempt(item, name, make, issue))
        return make

    return add


def attempt18(item: int, name: str):
    """An attempt of issue 18 (``--issue 18``)."""
    return attempt(item, name, issue=18)


def cli(*args: str, **kw) -> Call:
    return Call(["-m", "hessian_lens", *args], **kw)


def code(text: str, **kw) -> Call:
    return Call(["-c", text], **kw)


# ---- 1. metadata bombs
@attempt(1, "inspect CLI: 252 KB .pt, meta [[...]*10]*10 x12")
def _(w, t):
    save_pt(w / "bomb.pt", lenet_state(), {**LENET, "junk": memo_bomb()})
    return cli("inspect", str(w / "bomb.pt"), timeout=60, mem=5 * GiB)


@attempt(1, "Inspect page: the bomb in the declared kwargs (caption)")
def _(w, t):
    save_pt(
        w / "bomb.pt", lenet_state(), {"model": {"name": "lenet5", "kwargs": {"j": memo_bomb()}}}
    )
    act = f"upload('bomb.pt', open({str(w / 'bomb.pt')!r}, 'rb').read())"
    return code(page_code(t, "views/Inspect_checkpoint.py", act), timeout=90, mem=5 * GiB)


@attempt(1, "inspect CLI: meta nested 200,000 deep (.pt)")
def _(w, t):
    deep_meta_pt(w / "deep.pt", 200_000)
    return cli("inspect", str(w / "deep.pt"))


@attempt(1, "inspect CLI: meta nested 200,000 deep (.safetensors)")
def _(w, t):
    from safetensors.torch import save_file

    save_file(lenet_state(), str(w / "deep.safetensors"),
              metadata={"hessian_lens": "[" * 200_000 + "]" * 200_000})  # fmt: skip
    return cli("inspect", str(w / "deep.safetensors"))


# ---- 2. zip bombs
@attempt(2, "inspect CLI: 1 MB .pt deflating to 1 GiB")
def _(w, t):
    deflated_pt(w / "zip.pt", 1024)
    return cli("inspect", str(w / "zip.pt"), timeout=120, mem=6 * GiB)


@attempt(2, "Inspect page: torch.load calls for one good upload")
def _(w, t):
    save_pt(w / "good.pt", lenet_state(), LENET)
    act = f"upload('good.pt', open({str(w / 'good.pt')!r}, 'rb').read())"
    post = "out['torch_load_calls'] = len(loads)"
    return code(page_code(t, "views/Inspect_checkpoint.py", act, pre=COUNT_LOADS, post=post))


# ---- 3. architectures from metadata
@attempt(3, "inspect CLI: meta mlp sizes [16384, 16384] (1 GiB of weights)")
def _(w, t):
    state = {
        "layers.0.weight": __import__("torch").zeros(4, 8),
        "layers.0.bias": __import__("torch").zeros(4),
    }
    save_pt(w / "mlp.pt", state, {"model": {"name": "mlp", "kwargs": {"sizes": [16384, 16384]}}})
    return cli("inspect", str(w / "mlp.pt"), mem=6 * GiB)


@attempt(3, "inspect CLI: meta mlp sizes [131072, 131072] (64 GiB)")
def _(w, t):
    import torch

    state = {"layers.0.weight": torch.zeros(4, 8), "layers.0.bias": torch.zeros(4)}
    save_pt(w / "mlp.pt", state, {"model": {"name": "mlp", "kwargs": {"sizes": [131072, 131072]}}})
    return cli("inspect", str(w / "mlp.pt"), mem=6 * GiB)


@attempt(3, "Inspect page: kwargs typed {sizes: [131072, 131072]} for a bare state_dict")
def _(w, t):
    import torch

    torch.save(
        {"layers.0.weight": torch.zeros(4, 8), "layers.0.bias": torch.zeros(4)}, w / "bare.pt"
    )
    act = (
        f"upload('bare.pt', open({str(w / 'bare.pt')!r}, 'rb').read())\n"
        "at.selectbox(key='arch-name').set_value('mlp')\n"
        "at.text_input(key='arch-kwargs').set_value('{\"sizes\": [131072, 131072]}').run()"
    )
    return code(page_code(t, "views/Inspect_checkpoint.py", act), mem=6 * GiB)


# ---- 4. odd tensors, bad kwargs
def _odd_tensor(make: str):
    def build(w, t):
        import torch

        state = lenet_state()
        state["fc3.bias"] = eval(make, {"torch": torch})
        save_pt(w / "odd.pt", state, LENET)
        return cli("inspect", str(w / "odd.pt"))

    return build


attempt(4, "inspect CLI: a meta-device tensor")(_odd_tensor("torch.empty(10, device='meta')"))
attempt(4, "inspect CLI: a sparse COO tensor")(_odd_tensor("torch.zeros(10).to_sparse()"))


def _bad_kwargs(kwargs):
    def build(w, t):
        save_pt(w / "args.pt", lenet_state(), {"model": {"name": "lenet5", "kwargs": kwargs}})
        return cli("inspect", str(w / "args.pt"))

    return build


for _kw in ({"num_classes": -1}, {"num_classes": [10]}, {"activation": 5}, "ab"):
    attempt(4, f"inspect CLI: meta kwargs {json.dumps(_kw)}")(_bad_kwargs(_kw))


# ---- 5. stores and logs
@attempt(5, "Interactions page: 0.8 MB store whose arrays inflate to 800 MB")
def _(w, t):
    run = analysed_run(w) / "runs" / "tiny-run"
    buf = io.BytesIO()
    np.savez_compressed(buf, H=np.zeros(10**8))
    with sqlite3.connect(run / "analysis.sqlite") as db:
        db.execute("UPDATE results SET arrays=?", (buf.getvalue(),))
    db.close()
    state = f"at.session_state['run_path'] = {str(run)!r}"
    return code(
        page_code(t, "views/Layer_interactions.py", state=state),
        env={"HESSIAN_LENS_RUNS": str(run.parent)},
        mem=7 * GiB,
        timeout=180,
    )


@attempt(5, "Optimizer page: 44 MB optimizer_log.json")
def _(w, t):
    run = write_run(
        w / "runs" / "pn", manifest("pn", optimizer={"name": "partition-newton", "lr": 0.3})
    )
    labels = [f"g{i}" for i in range(10)]
    rng = np.random.default_rng(0)
    entries = []
    for step in range(450_000):
        entries.append({"step": step, "loss": float(rng.random())})
        if step % 3 == 0:
            entries.append(
                {"step": step, "eta": rng.random(10).round(6).tolist(), "lr": [0.3] * 10}
            )
    (run / "optimizer_log.json").write_text(json.dumps({"labels": labels, "entries": entries}))
    post = f"out['log_mb'] = {round((run / 'optimizer_log.json').stat().st_size / 2**20, 1)}"
    return code(
        page_code(t, "views/Optimizer.py", PICK_PN, post=post),
        env={"HESSIAN_LENS_RUNS": str(run.parent)},
        timeout=300,
    )


@attempt(5, "home page: 500 runs")
def _(w, t):
    for i in range(500):
        write_run(w / "runs" / f"run{i:03d}", manifest(f"run{i:03d}"))
    return code(page_code(t, "app.py"), env={"HESSIAN_LENS_RUNS": str(w / "runs")}, timeout=300)


# ---- 6. foreign SQLite
def _sqlite_facts(path: Path) -> dict:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {
            "journal_mode": db.execute("PRAGMA journal_mode").fetchone()[0],
            "tables": sorted(
                r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ),
        }
    finally:
        db.close()


@attempt(6, "home page: a folder holding someone else's analysis.sqlite")
def _(w, t):
    run = write_run(w / "runs" / "theirs", manifest("theirs"))
    db = sqlite3.connect(run / "analysis.sqlite")
    db.execute("CREATE TABLE users (name TEXT)")
    db.execute("INSERT INTO users VALUES ('alice')")
    db.commit()
    db.close()
    return code(
        page_code(t, "app.py"),
        env={"HESSIAN_LENS_RUNS": str(run.parent)},
        check=lambda: _sqlite_facts(run / "analysis.sqlite"),
    )


# ---- 7. read-only mounts
def _readonly(w: Path, page: str) -> Call:
    src = analysed_run(w)
    (src / "cache").mkdir()
    ro = w / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(src), str(ro)], capture_output=True)
    if mounted.returncode != 0:
        raise RuntimeError("cannot bind-mount (needs root)")
    subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
    run = ro / "runs" / "tiny-run"
    return Call(
        [],
        env={"HESSIAN_LENS_RUNS": str(run.parent), "HESSIAN_LENS_CACHE": str(ro / "cache")},
        teardown=lambda: subprocess.run(["umount", str(ro)], check=True),
    ), f"at.session_state['run_path'] = {str(run)!r}"


@attempt(7, "home page: runs and cache on a read-only bind mount")
def _(w, t):
    call, state = _readonly(w, "app.py")
    call.args = ["-c", page_code(t, "app.py", state=state)]
    return call


@attempt(7, "Interactions page: runs and cache on a read-only bind mount")
def _(w, t):
    call, state = _readonly(w, "views/Layer_interactions.py")
    call.args = ["-c", page_code(t, "views/Layer_interactions.py", state=state)]
    return call


# ---- 8. the Inspect page's data field
@attempt(8, "Inspect page: data source = a folder that does not exist")
def _(w, t):
    save_pt(w / "good.pt", lenet_state(), LENET)
    act = (
        f"upload('good.pt', open({str(w / 'good.pt')!r}, 'rb').read())\n"
        f"at.text_input(key='data-source').set_value({str(w / 'nowhere' / 'cifar')!r}).run()"
    )
    return code(page_code(t, "views/Inspect_checkpoint.py", act), timeout=120)


# ---- 9. analyze outside runs
@attempt(9, "analyze CLI: a folder that does not exist")
def _(w, t):
    return cli("analyze", str(w / "nonexistent"), "--device", "cpu", "--no-progress")


@attempt(9, "analyze CLI: a system folder (an /etc look-alike)")
def _(w, t):
    etc = w / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "hostname").write_text("box\n")
    tiny_npz(w / "tiny.npz")
    return cli("analyze", str(etc), "--data-root", str(w / "tiny.npz"), "--samples", "32",
               "--device", "cpu", "--no-progress")  # fmt: skip


# ---- 10. the upload cache
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@attempt(10, "Inspect page: refused uploads (pickled os.system, text) left in the cache")
def _(w, t):
    evil = pickle.dumps({"state_dict": _Evil()}, protocol=2)
    act = f"upload('evil.pt', {evil!r})\nupload('text.pt', b'hello, not a checkpoint')"
    uploads = w / "cache" / "uploads"
    return code(
        page_code(t, "views/Inspect_checkpoint.py", act),
        check=lambda: {"cached": sorted(p.name for p in uploads.glob("*"))},
    )


@attempt(10, "Inspect page: 4 uploads of 250 kB with HESSIAN_LENS_CACHE_MB=0.6")
def _(w, t):
    import torch

    names = []
    for i in range(4):
        state = lenet_state()
        state["fc3.bias"] = torch.full((10,), float(i))
        save_pt(w / f"m{i}.pt", state, LENET)
        names.append(f"m{i}.pt")
    act = "\n".join(f"upload({n!r}, open({str(w / n)!r}, 'rb').read())" for n in names)
    uploads = w / "cache" / "uploads"
    return code(
        page_code(t, "views/Inspect_checkpoint.py", act),
        env={"HESSIAN_LENS_CACHE_MB": "0.6"},
        check=lambda: {"cached": len(list(uploads.glob("*")))},
    )


@attempt(10, "Inspect page: a corrupt inspect.sqlite in the cache")
def _(w, t):
    tiny_npz(w / "tiny.npz")
    (w / "cache").mkdir()
    (w / "cache" / "inspect.sqlite").write_bytes(b"\x00garbage" * 1000)
    save_pt(w / "good.pt", lenet_state(), LENET)
    act = f"upload('good.pt', open({str(w / 'good.pt')!r}, 'rb').read())"
    return code(
        page_code(t, "views/Inspect_checkpoint.py", act),
        env={"HESSIAN_LENS_DATA": str(w / "tiny.npz")},
        check=lambda: {"cache": sorted(p.name for p in (w / "cache").iterdir())},
    )


# ---- 11. one bad folder spoils nothing
@attempt(11, "home page: 7 bad run folders and one good run")
def _(w, t):
    runs = w / "runs"
    analysed = analysed_run(w) / "runs" / "tiny-run"
    shutil.copytree(analysed, runs / "a-good")
    write_run(runs / "b-checkpoints-only", None, checkpoints=1)
    write_run(runs / "c-list-json", [1, 2, 3])
    write_run(runs / "d-bad-json", "{not json")
    write_run(runs / "e-int-name", manifest(5))
    write_run(runs / "f-no-epochs", manifest("f", history=[{"train_loss": 1.0}, {"x": 2}]))
    write_run(runs / "g-model-list", manifest("g", model=["lenet5"]))
    garbage = write_run(runs / "h-garbage-store", manifest("h"))
    (garbage / "analysis.sqlite").write_bytes(b"\x00garbage" * 100)
    return code(page_code(t, "app.py"), env={"HESSIAN_LENS_RUNS": str(runs)})


def _key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _settings_run(w: Path, t: Path, settings: dict, key: str) -> Call:
    run = analysed_run(w) / "runs" / "tiny-run"
    with sqlite3.connect(run / "analysis.sqlite") as db:
        db.execute("UPDATE results SET settings=?, settings_key=?", (json.dumps(settings), key))
    db.close()
    return code(
        page_code(
            t, "views/Layer_interactions.py", state=f"at.session_state['run_path'] = {str(run)!r}"
        ),
        env={"HESSIAN_LENS_RUNS": str(run.parent)},
    )


@attempt(11, "Interactions page: a store whose settings say samples 'many'")
def _(w, t):
    return _settings_run(w, t, {"samples": "many"}, _key({"samples": "many"}))


@attempt(11, "Interactions page: a store whose settings text disagrees with its key")
def _(w, t):
    return _settings_run(w, t, {"samples": 10}, "0123456789abcdef")


@attempt(11, "Optimizer page: a malformed optimizer_log.json")
def _(w, t):
    run = write_run(w / "runs" / "pn", manifest("pn"))
    log = {
        "labels": ["a", "b"],
        "entries": [{"step": "x"}, 5, {"step": 1, "eta": [1]}, {"loss": 2}],
    }
    (run / "optimizer_log.json").write_text(json.dumps(log))
    return code(
        page_code(t, "views/Optimizer.py", PICK_PN), env={"HESSIAN_LENS_RUNS": str(run.parent)}
    )


# ---- 12. numbers and special files
def _run_with(w: Path, meta_epoch) -> Path:
    npz = tiny_npz(w / "tiny.npz")
    run = write_run(w / "run", manifest("r", data={"name": "cifar10", "source": str(npz)}))
    save_pt(run / "epoch_0001.pt", lenet_state(), {**LENET, "epoch": meta_epoch})
    return run


def _stored_rows(path: Path) -> Callable[[], dict]:
    def check() -> dict:
        if not path.exists():
            return {"rows": None}
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return {"rows": db.execute("SELECT COUNT(*) FROM results").fetchone()[0]}
        except sqlite3.Error as err:  # e.g. a hot journal left behind
            return {"rows": f"unreadable ({err})"}
        finally:
            db.close()

    return check


def _analyze(run: Path, **kw) -> Call:
    args = ["analyze", str(run), "--samples", "32", "--batch-size", "32", "--device", "cpu"]
    return cli(*args, "--no-progress", check=_stored_rows(run / "analysis.sqlite"), **kw)


@attempt(12, "analyze CLI: epoch = 10**30 in a checkpoint's meta")
def _(w, t):
    return _analyze(_run_with(w, 10**30))


@attempt(12, "analyze CLI: a FIFO named epoch_0002.pt")
def _(w, t):
    run = _run_with(w, 1)
    os.mkfifo(run / "epoch_0002.pt")
    return _analyze(run, timeout=60)


@attempt(12, "analyze CLI: epoch_0002.pt -> /dev/zero")
def _(w, t):
    run = _run_with(w, 1)
    (run / "epoch_0002.pt").symlink_to("/dev/zero")
    return _analyze(run, timeout=60)


for _v in ("inf", "abc", "-1"):

    def _limit(w, t, v=_v):
        return code(
            page_code(t, "views/Inspect_checkpoint.py"), env={"HESSIAN_LENS_MAX_UPLOAD_MB": v}
        )

    attempt(12, f"Inspect page: HESSIAN_LENS_MAX_UPLOAD_MB={_v}")(_limit)


# ---- 13. the CLI: exit 2 and one line
TRAIN = ["train", "--epochs", "1", "--train-size", "32", "--test-size", "16", "--batch-size",
         "16", "--device", "cpu", "--no-progress"]  # fmt: skip


def _train(npz: Callable[[Path], Path] | None, *more: str, out: str = "out"):
    def build(w, t):
        root = str(npz(w)) if npz else str(tiny_npz(w / "tiny.npz"))
        return cli(*TRAIN, "--data-root", root, "--out", str(w / out), *more)

    return build


def _npz_labels(labels_fn):
    return lambda w: tiny_npz(w / "bad.npz", labels=labels_fn())


def _analyze_labels(labels_fn):
    def build(w, t):
        run = _run_with(w, 1)
        bad = tiny_npz(w / "bad.npz", labels=labels_fn())
        return cli("analyze", str(run), "--data-root", str(bad), "--samples", "32",
                   "--batch-size", "32", "--device", "cpu", "--no-progress",
                   check=_stored_rows(run / "analysis.sqlite"))  # fmt: skip

    return build


_LABELS = {
    "10": lambda: np.full(64, 10),
    "-1": lambda: np.full(64, -1),
    "NaN": lambda: np.full(64, np.nan),
    "-100 (all)": lambda: np.full(64, -100),
}
for _k, _f in _LABELS.items():
    attempt(13, f"train CLI: labels {_k} in the npz")(_train(_npz_labels(_f)))
    attempt(13, f"analyze CLI: labels {_k} in the npz")(_analyze_labels(_f))


@attempt(13, "train CLI: --out an existing file")
def _(w, t):
    (w / "file").write_text("x")
    return _train(None, out="file")(w, t)


@attempt(13, "train CLI: --out a path under a file")
def _(w, t):
    (w / "file").write_text("x")
    return _train(None, out="file/run")(w, t)


attempt(13, "train CLI: 28x28 images into LeNet-5")(
    _train(lambda w: tiny_npz(w / "mnist.npz", shape=(28, 28, 1)))
)
attempt(13, "train CLI: 1-channel 32x32 images into a 3-channel LeNet-5")(
    _train(lambda w: tiny_npz(w / "gray.npz", shape=(32, 32, 1)))
)


@attempt(13, "train CLI: an empty npz")
def _(w, t):
    np.savez(w / "empty.npz")
    return _train(lambda w: w / "empty.npz")(w, t)


@attempt(13, "train CLI: a garbage npz")
def _(w, t):
    (w / "garbage.npz").write_bytes(os.urandom(4096))
    return _train(lambda w: w / "garbage.npz")(w, t)


attempt(13, "train CLI: 2-D y")(
    _train(lambda w: tiny_npz(w / "y2.npz", labels=np.zeros((64, 2), int)))
)
attempt(13, "train CLI: --lr nan")(_train(None, "--lr", "nan"))
attempt(13, "train CLI: --optimizer-kwargs '{\"bogus\": 1}'")(
    _train(None, "--optimizer-kwargs", '{"bogus": 1}')
)
attempt(13, "train CLI: --device bogus")(_train(None, "--device", "bogus"))
attempt(13, "train CLI: --device cuda without a GPU")(_train(None, "--device", "cuda"))
attempt(13, "train CLI: --model-kwargs '{\"num_classes\": 0}'")(
    _train(None, "--model-kwargs", '{"num_classes": 0}')
)


# ============================================================================ issue 18
# Round 3: what a file costs once read, writes outside the run, hangs. ``--issue 18``.
BYTEARRAY_3GIB = b"\x80\x02cbuiltins\nbytearray\n\x8a\x05\x00\x00\x00\xc0\x00\x85R."
MiB = 2**20


def torch_zip(path, pkl: bytes, compress: bool = False):
    """A torch.save-style zip whose ``data.pkl`` is ``pkl`` (``path`` may be a BytesIO)."""
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", mode) as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")
    return path


class _Net:
    """Models exported by the attempts (built lazily: torch is imported by the parent only)."""

    @staticmethod
    def ones():
        from torch import nn

        class Ones(nn.Module):  # allocates torch.ones(4, 4) at run time (edited to 30000²)
            def __init__(self) -> None:
                super().__init__()
                self.lin = nn.Linear(12, 3)

            def forward(self, x):
                import torch

                return self.lin(x.flatten(1)) + torch.ones(4, 4, device=x.device).sum() * 0

        return Ones()

    @staticmethod
    def cifar():
        from torch import nn

        class Small(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 5, stride=4)
                self.fc = nn.Linear(4 * 7 * 7, 10)

            def forward(self, x):
                return self.fc(self.conv(x).relu().flatten(1))

        return Small()


def export_pt2(path: Path, model, shape, dynamic: bool = True) -> Path:
    import torch

    torch.manual_seed(0)
    dims = ({0: torch.export.Dim("batch", min=1, max=512)},) if dynamic else None
    program = torch.export.export(model, (torch.randn(*shape),), dynamic_shapes=dims)
    torch.export.save(program, path)
    return path


def edit_pt2(src: Path, dst: Path, edit=None, members: dict | None = None, pad: str = "") -> Path:
    """A copy of a .pt2 with its model.json edited, members replaced, JSON text appended."""
    with zipfile.ZipFile(src) as zf:
        infos = zf.infolist()
        root = infos[0].filename.split("/", 1)[0]
        data = {i.filename[len(root) + 1 :]: zf.read(i) for i in infos}
    program = json.loads(data["models/model.json"])
    if edit is not None:
        edit(program)
    text = json.dumps(program)
    data["models/model.json"] = (text[:-1] + pad + "}").encode() if pad else text.encode()
    data.update(members or {})
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, body in data.items():
            zf.writestr(f"{root}/{name}", body)
    return dst


def _ones_pt2(w: Path, edit=None, **kw) -> Path:
    src = export_pt2(w / "src.pt2", _Net.ones(), (2, 3, 4))
    out = edit_pt2(src, w / "model.pt2", edit, **kw)
    src.unlink()
    return out


def _tensor_value(name: str, text: str):
    def edit(program):
        sizes = program["graph_module"]["graph"]["tensor_values"][name]["sizes"]
        sizes[0]["as_expr"]["expr_str"] = text

    return edit


def stream_zeros(write, nbytes: int, chunk: int = 1 << 24) -> None:
    zeros = bytes(chunk)
    while nbytes > 0:
        write(zeros[: min(chunk, nbytes)])
        nbytes -= chunk


def bomb_pt(path: Path, nbytes: int) -> Path:
    """A .pt (zip) whose one float32 storage of ``nbytes`` zeros is deflated (built streaming)."""
    import torch

    small = io.BytesIO()
    torch.save({"w": torch.zeros(1)}, small)
    with zipfile.ZipFile(io.BytesIO(small.getvalue())) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    pkl_name = next(n for n in members if n.endswith("data.pkl"))
    n = nbytes // 4  # the storage's numel and the tensor's size, in the pickle
    members[pkl_name] = members[pkl_name].replace(b"K\x01t", b"J" + n.to_bytes(4, "little") + b"t")
    members[pkl_name] = members[pkl_name].replace(
        b"K\x01\x85", b"J" + n.to_bytes(4, "little") + b"\x85", 1
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, body in members.items():
            if name.endswith("/data/0"):
                with zf.open(name, "w", force_zip64=True) as f:
                    stream_zeros(f.write, nbytes)
            else:
                zf.writestr(name, body)
    return path


def npz_bomb(path: Path, n: int) -> Path:
    """An npz of ``n`` 32x32x3 uint8 zero images (both splits: x, y), deflated, built streaming."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, shape, dtype in (("x", (n, 32, 32, 3), "|u1"), ("y", (n,), "<i8")):
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                header, {"descr": dtype, "fortran_order": False, "shape": shape}
            )
            size = int(np.prod(shape)) * np.dtype(dtype).itemsize
            with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                f.write(header.getvalue())
                stream_zeros(f.write, size)
    return path


def png(path: Path, side: int, rows: bool = True) -> Path:
    """A greyscale ``side`` x ``side`` PNG of zeros (its IDAT compressed streaming)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return len(body).to_bytes(4, "big") + kind + body + crc.to_bytes(4, "big")

    ihdr = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    z = zlib.compressobj(9)
    row = bytes(side + 1)
    idat = b"".join(z.compress(row) for _ in range(side if rows else 1)) + z.flush()
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def _listing(folder: Path) -> Callable[[], dict]:
    return lambda: {"outside": sorted(p.name for p in folder.iterdir())}


# ---- 1, 2. the unpickler
@attempt18(1, "inspect CLI: 854-byte .pt whose pickle calls builtins.bytearray(3 GiB)")
def _(w, t):
    torch_zip(w / "ba.pt", BYTEARRAY_3GIB)
    return cli("inspect", str(w / "ba.pt"), timeout=120, mem=6 * GiB)


@attempt18(1, "Inspect page: the same .pt uploaded")
def _(w, t):
    torch_zip(w / "ba.pt", BYTEARRAY_3GIB)
    act = f"upload('ba.pt', open({str(w / 'ba.pt')!r}, 'rb').read())"
    return code(page_code(t, "views/Inspect_checkpoint.py", act), mem=7 * GiB, timeout=180)


@attempt18(1, "inspect CLI: .pt2 whose sample_inputs call builtins.bytearray(3 GiB)")
def _(w, t):
    inner = torch_zip(io.BytesIO(), BYTEARRAY_3GIB).getvalue()
    _ones_pt2(w, members={"data/sample_inputs/model.pt": inner})
    return cli("inspect", str(w / "model.pt2"), timeout=120, mem=6 * GiB)


@attempt18(2, "inspect CLI: 40 kB .pt whose pickle builds 40 M empty dicts")
def _(w, t):
    torch_zip(w / "dicts.pt", b"\x80\x02(" + b"}" * 40_000_000 + b"l.", compress=True)
    return cli("inspect", str(w / "dicts.pt"), timeout=180, mem=6 * GiB)


# ---- 3. check order
@attempt18(3, "Inspect page: 1.6 kB .pt, a (30000, 30000) tensor expanded from one value")
def _(w, t):
    import torch

    torch.save({"w": torch.zeros(1).expand(30000, 30000)}, w / "expanded.pt")
    act = f"upload('expanded.pt', open({str(w / 'expanded.pt')!r}, 'rb').read())"
    return code(page_code(t, "views/Inspect_checkpoint.py", act), mem=7 * GiB, timeout=180)


# ---- 4. a store that lifts its own limit
@attempt18(4, "Interactions page: store listing 100k labels, its H inflating to 1 GiB")
def _(w, t):
    run = analysed_run(w) / "runs" / "tiny-run"
    blob = io.BytesIO()
    with zipfile.ZipFile(blob, "w", zipfile.ZIP_DEFLATED) as zf:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "<f8", "fortran_order": False, "shape": (2**27,)}
        )
        with zf.open("H.npy", "w", force_zip64=True) as f:
            f.write(header.getvalue())
            stream_zeros(f.write, 2**30)
    with sqlite3.connect(run / "analysis.sqlite") as db:
        for key, summary in db.execute("SELECT settings_key, summary FROM results").fetchall():
            summary = json.loads(summary)
            summary["labels"] = [f"g{i}" for i in range(100_000)]
            db.execute(
                "UPDATE results SET summary=?, arrays=? WHERE settings_key=?",
                (json.dumps(summary), blob.getvalue(), key),
            )
    db.close()
    state = f"at.session_state['run_path'] = {str(run)!r}"
    return code(
        page_code(t, "views/Layer_interactions.py", state=state),
        env={"HESSIAN_LENS_RUNS": str(run.parent)},
        mem=7 * GiB,
        timeout=240,
    )


# ---- 5. JSON that expands
@attempt18(5, "inspect CLI: 435 kB .pt2 whose model.json carries 150 MB of [{},…]")
def _(w, t):
    _ones_pt2(w, pad=', "padding": [' + "{}," * 50_000_000 + "{}]")
    return cli("inspect", str(w / "model.pt2"), timeout=240, mem=6 * GiB)


@attempt18(5, "inspect CLI: 95 MB safetensors header of [{},…]")
def _(w, t):
    header = b'{"pad": [' + b"{}," * 31_000_000 + b"{}]}"
    (w / "pad.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    return cli("inspect", str(w / "pad.safetensors"), timeout=240, mem=6 * GiB)


# ---- 6. the limits of analyze and of data files
def _tiny_run(w: Path, npz: Path | None = None) -> Path:
    npz = npz or tiny_npz(w / "tiny.npz")
    return write_run(w / "run", manifest("r", data={"name": "cifar10", "source": str(npz)}))


@attempt18(6, "analyze CLI: a 3 MB run checkpoint deflating to 3 GiB (inspect refuses it)")
def _(w, t):
    run = _tiny_run(w)
    bomb_pt(run / "epoch_0001.pt", 3 * GiB)
    return _analyze(run, timeout=240, mem=6 * GiB)


@attempt18(6, "analyze CLI: 4 MB npz holding 2 GiB per split")
def _(w, t):
    npz = npz_bomb(w / "bomb.npz", 2 * GiB // 3072)
    run = _tiny_run(w, npz)
    save_pt(run / "epoch_0001.pt", lenet_state(), {**LENET, "epoch": 1})
    return _analyze(run, timeout=240, mem=6 * GiB)


@attempt18(6, "analyze CLI: an image folder of 12 PNGs of 144 Mpx")
def _(w, t):
    for i in range(12):
        folder = w / "imgs" / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        png(folder / f"{i}.png", 12_000)
    run = _tiny_run(w)
    save_pt(run / "epoch_0001.pt", lenet_state(2, 1), {"model": {"name": "lenet5",
            "kwargs": {"in_channels": 1, "num_classes": 2}}, "epoch": 1})  # fmt: skip
    args = ["--data", f"imagefolder:{w / 'imgs'}"]
    return cli("analyze", str(run), *args, "--samples", "8", "--batch-size", "4", "--device",
               "cpu", "--no-progress", timeout=300, mem=6 * GiB)  # fmt: skip


@attempt18(6, "analyze CLI: one 200 Mpx PNG")
def _(w, t):
    folder = w / "imgs" / "c0"
    folder.mkdir(parents=True)
    png(folder / "big.png", 14_200, rows=False)
    run = _tiny_run(w)
    save_pt(run / "epoch_0001.pt", lenet_state(), {**LENET, "epoch": 1})
    args = ["--data", f"imagefolder:{w / 'imgs'}", "--samples", "8", "--batch-size", "4"]
    return cli("analyze", str(run), *args, "--device", "cpu", "--no-progress", timeout=120)


# ---- 7, 8. .pt2 graphs
@attempt18(7, "load + one forward: .pt2 whose graph calls aten.ones([30000, 30000])")
def _(w, t):
    def huge(program):
        for node in program["graph_module"]["graph"]["nodes"]:
            if node["target"] == "torch.ops.aten.ones.default":
                node["inputs"][0]["arg"]["as_ints"] = [30000, 30000]

    _ones_pt2(w, huge)
    probe = (
        "import sys, torch; from hessian_lens.checkpoint import load_checkpoint\n"
        "try:\n"
        f"    m, _ = load_checkpoint({str(w / 'model.pt2')!r})\n"
        "    m(torch.zeros(2, 3, 4)); print('loaded and ran', file=sys.stderr)\n"
        "except Exception as err:\n"
        "    sys.exit(f'{type(err).__name__}: {err}')"
    )
    return code(probe, timeout=180, mem=6 * GiB)


@attempt18(8, "inspect CLI: .pt2 with a symbolic Max(...) of 200 arguments")
def _(w, t):
    terms = ", ".join(f"{i}*s77 + {40000 - i * i}" for i in range(1, 201))
    _ones_pt2(w, _tensor_value("add", f"Max({terms})"))
    return cli("inspect", str(w / "model.pt2"), timeout=120)


# ---- 9. the server's upload limit
@attempt18(9, "server: Streamlit's maxUploadSize against the app's 500 MB")
def _(w, t):
    probe = (
        "import sys, streamlit as st\n"
        "print('server.maxUploadSize =', st.get_option('server.maxUploadSize'), 'MB', "
        "file=sys.stderr)"
    )
    return code(probe, timeout=60)


# ---- 10, 11, 12. writes, deletes, hangs
@attempt18(10, "analyze CLI: analysis.sqlite a symlink to a file outside the run")
def _(w, t):
    outside = w / "outside"
    outside.mkdir()
    sqlite3.connect(outside / "victim.sqlite").close()
    run = _tiny_run(w)
    save_pt(run / "epoch_0001.pt", lenet_state(), {**LENET, "epoch": 1})
    (run / "analysis.sqlite").symlink_to(outside / "victim.sqlite")

    def check() -> dict:
        return {"victim_tables": _sqlite_facts(outside / "victim.sqlite")["tables"]}

    return cli("analyze", str(run), "--samples", "32", "--batch-size", "32", "--device", "cpu",
               "--no-progress", check=check)  # fmt: skip


@attempt18(11, "Inspect page: uploads/ a symlink to a folder of 3 files, HESSIAN_LENS_CACHE_MB=0.1")
def _(w, t):
    outside = w / "outside"
    outside.mkdir()
    for name in ("notes.txt", "photo.jpg", "0123456789abcdef.pt"):
        (outside / name).write_bytes(b"x" * 200_000)
    (w / "cache").mkdir()
    (w / "cache" / "uploads").symlink_to(outside)
    save_pt(w / "m.pt", lenet_state(), LENET)
    act = f"upload('m.pt', open({str(w / 'm.pt')!r}, 'rb').read())"
    return code(
        page_code(t, "views/Inspect_checkpoint.py", act),
        env={"HESSIAN_LENS_CACHE_MB": "0.1"},
        check=_listing(outside),
    )


@attempt18(12, "analyze CLI: a store whose claims trigger reads a never-ending recursive view")
def _(w, t):
    run = analysed_run(w) / "runs" / "tiny-run"
    db = sqlite3.connect(run / "analysis.sqlite")
    db.executescript(
        "DELETE FROM results;"
        "CREATE VIEW forever AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)"
        " SELECT max(x) FROM c;"
        "CREATE TRIGGER slow AFTER INSERT ON claims BEGIN SELECT * FROM forever; END;"
    )
    db.close()
    npz = w / "analysed" / "tiny.npz"
    return cli("analyze", str(run), "--data-root", str(npz), "--samples", "32", "--batch-size",
               "32", "--device", "cpu", "--no-progress", timeout=90)  # fmt: skip


# ---- 13. tracebacks
@attempt18(13, "analyze CLI: a .pt2 as a run's checkpoint")
def _(w, t):
    run = _tiny_run(w)
    export_pt2(run / "epoch_0001.pt2", _Net.cifar(), (2, 3, 32, 32))
    return _analyze(run, timeout=180)


@attempt18(13, "analyze CLI: --lease-seconds nan")
def _(w, t):
    run = _tiny_run(w)
    save_pt(run / "epoch_0001.pt", lenet_state(), {**LENET, "epoch": 1})
    base = _analyze(run)
    base.args += ["--lease-seconds", "nan"]
    return base


@attempt18(13, "analyze CLI: --data safetensors with bfloat16 targets")
def _(w, t):
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    data = {"inputs": torch.rand(32, 3, 32, 32), "targets": (torch.arange(32) % 10).bfloat16()}
    save_file(data, w / "d.safetensors")
    run = _tiny_run(w)
    save_pt(run / "epoch_0001.pt", lenet_state(), {**LENET, "epoch": 1})
    base = _analyze(run)
    base.args += ["--data", str(w / "d.safetensors")]
    return base


@attempt18(13, "analyze CLI: all-zero 1-channel images")
def _(w, t):
    y = np.arange(40) % 10
    zeros = np.zeros((40, 32, 32, 1), np.uint8)
    np.savez(w / "zeros.npz", x_train=zeros, y_train=y, x_test=zeros, y_test=y)
    run = _tiny_run(w, w / "zeros.npz")
    save_pt(run / "epoch_0001.pt", lenet_state(10, 1),
            {"model": {"name": "lenet5", "kwargs": {"in_channels": 1}}, "epoch": 1})  # fmt: skip
    return _analyze(run)


# ---- 14. an interrupted write
INTERRUPT = """
import os, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA cache_size = 1")
db.execute("BEGIN IMMEDIATE")
db.execute("UPDATE results SET checkpoint = 'half-written'")
for i in range(300):
    db.execute("INSERT INTO claims VALUES (?, 'k', 'me', 1)", (str(i) * 50,))
os._exit(0)
"""


def _interrupted(w: Path) -> Path:
    run = analysed_run(w) / "runs" / "tiny-run"
    subprocess.run([PY, "-c", INTERRUPT, str(run / "analysis.sqlite")], check=True, timeout=60)
    return run


@attempt18(14, "Interactions page: a store with a hot journal (a writer killed mid-write)")
def _(w, t):
    run = _interrupted(w)
    state = f"at.session_state['run_path'] = {str(run)!r}"
    return code(
        page_code(t, "views/Layer_interactions.py", state=state),
        env={"HESSIAN_LENS_RUNS": str(run.parent)},
    )


@attempt18(14, "analyze CLI: the same store")
def _(w, t):
    run = _interrupted(w)
    npz = w / "analysed" / "tiny.npz"
    return cli("analyze", str(run), "--data-root", str(npz), "--samples", "64", "--batch-size",
               "32", "--device", "cpu", "--no-progress", check=_stored_rows(
                   run / "analysis.sqlite"))  # fmt: skip


# ---- 15, 16. what is printed and shown
@attempt18(15, "inspect CLI: .pt2 with a symbol without a range")
def _(w, t):
    _ones_pt2(w, _tensor_value("add", "u5"))
    return cli("inspect", str(w / "model.pt2"), timeout=120)


@attempt18(16, "home page: run.json fields holding markdown images")
def _(w, t):
    image = "![x](http://127.0.0.1:9/pixel.png)"
    write_run(
        w / "runs" / "evil",
        manifest(f"evil {image}", model={"name": image, "kwargs": {}}, init=image,
                 data={"name": image}, optimizer={"name": image, "lr": 0.1}),
    )  # fmt: skip
    post = (
        "out['images'] = sum(str(e.value).count('![x](') for k in ('markdown', 'subheader', "
        "'warning', 'info') for e in at.get(k))"
    )
    return code(page_code(t, "app.py", post=post), env={"HESSIAN_LENS_RUNS": str(w / "runs")})


# ============================================================================ issue 28
# Round 4: no regex, label, path or model config can freeze or bloat a shared server.
# ``--issue 28``. Files are built here with plain numpy / sqlite / torch (the same formats in
# every tree); the text corpora are sparse files (NUL bytes are valid UTF-8; nothing on disk).


def attempt28(item: int, name: str):
    """An attempt of issue 28 (``--issue 28``)."""
    return attempt(item, name, issue=28)


def store_run28(folder: Path, labels: list[str]) -> Path:
    """A run folder whose store holds one record with these labels (H, Hinv, g random),
    written by this checkout's store (the format is the same in every tree)."""
    sys.path.insert(0, str(HERE))
    from hessian_lens.store import Record, ResultStore

    folder.mkdir(parents=True)
    (folder / "run.json").write_text(
        json.dumps(
            {"name": folder.name, "model": {"name": "mlp", "kwargs": {}}, "data": {"name": "x"}}
        )
    )
    S = len(labels)
    rng = np.random.default_rng(0)
    H = rng.standard_normal((S, S))
    H = H + H.T
    summary = {"labels": labels, "kinds": ["weight"] * S,
               "layers": [x.rsplit(".", 1)[0] for x in labels], "sizes": [1] * S,
               "inverse": {"status": "positive definite", "condition": 10.0}}  # fmt: skip
    arrays = {"H": H, "Hinv": H, "g": rng.standard_normal(S)}
    store = ResultStore(folder / "analysis.sqlite")
    store.put(Record("sha0", {"samples": 8}, "epoch_0001.pt", 1, summary, arrays))
    return folder


def _interactions28(t: Path, run: Path, act: str = "", **kw) -> Call:
    state = f"at.session_state['run_path'] = {str(run)!r}"
    return code(page_code(t, "views/Layer_interactions.py", act, state=state),
                env={"HESSIAN_LENS_RUNS": str(run.parent)}, **kw)  # fmt: skip


GPT_SMALL = {"layers": 1, "heads": 1, "width": 4, "context": 8}


def gpt_run28(folder: Path, data: str) -> Path:
    """A run naming ``data`` in run.json, with one tiny GPT checkpoint that names the run."""
    import torch

    sys.path.insert(0, str(HERE))
    from hessian_lens.models import GPT  # the same names and shapes in every tree

    folder.mkdir(parents=True)
    torch.manual_seed(0)
    meta = {"model": {"name": "gpt", "kwargs": GPT_SMALL}, "epoch": 1, "run": folder.name}
    save_pt(folder / "epoch_0001.pt", GPT(**GPT_SMALL).state_dict(), meta)
    (folder / "run.json").write_text(json.dumps(
        {"name": folder.name, "model": {"name": "gpt", "kwargs": GPT_SMALL},
         "data": {"name": data}, "loss": "next_token"}))  # fmt: skip
    return folder


def sparse(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    return path


def _train_text28(w: Path, spec: str, context: int = 8, **kw) -> Call:
    model = {**GPT_SMALL, "context": context}
    return cli("train", "--model", "gpt", "--model-kwargs", json.dumps(model), "--loss",
               "next_token", "--data", spec, "--train-size", "8", "--test-size", "8",
               "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--out",
               str(w / "out"), "--no-progress", **kw)  # fmt: skip


# ---- 1. the regex box
@attempt28(1, "Interactions page: (.|.|.)*! typed on the shipped gpt-text")
def _(w, t):
    act = "at.text_input(key='interactions-regex').set_value('(.|.|.)*!').run()"
    return _interactions28(t, t / "checkpoints" / "gpt-text", act, timeout=60)


@attempt28(1, "Interactions page: (a+)+$ on 30 labels of 40 a's and a '!'")
def _(w, t):
    run = store_run28(w / "runs" / "many-a", [f"g{i}." + "a" * 40 + "!" for i in range(30)])
    act = "at.text_input(key='interactions-regex').set_value('(a+)+$').run()"
    return _interactions28(t, run, act, timeout=60)


# ---- 2. globs from a run.json
@attempt28(2, "analyze CLI: run.json data text:/**")
def _(w, t):
    return _analyze(gpt_run28(w / "run", "text:/**"), timeout=90)


@attempt28(2, "analyze CLI: run.json data text:/proc/self/**")
def _(w, t):
    return _analyze(gpt_run28(w / "run", "text:/proc/self/**"), timeout=90)


@attempt28(2, "Inspect page: upload a checkpoint whose run says text:/** (no click)")
def _(w, t):
    run = gpt_run28(w / "runs" / "globber", "text:/**")
    act = f"upload('epoch_0001.pt', open({str(run / 'epoch_0001.pt')!r}, 'rb').read())"
    return code(page_code(t, "views/Inspect_checkpoint.py", act), timeout=90,
                env={"HESSIAN_LENS_RUNS": str(run.parent)})  # fmt: skip


# ---- 3. model size from metadata
@attempt28(3, "inspect CLI: 0.5 MB checkpoint whose meta says gpt with layers 100000")
def _(w, t):
    import torch

    sys.path.insert(0, str(HERE))
    from hessian_lens.models import GPT

    torch.manual_seed(0)
    state = GPT(layers=2, heads=4, width=128, context=64).state_dict()  # ~0.5 MB
    meta = {"model": {"name": "gpt", "kwargs": {"layers": 100_000, "heads": 4, "width": 128,
                                                "context": 64}}}  # fmt: skip
    save_pt(w / "deep.pt", state, meta)
    return cli("inspect", str(w / "deep.pt"), timeout=240, mem=6 * GiB)


# ---- 4. labels
@attempt28(4, "Interactions page: a store with one 100 KB label (S = 30)")
def _(w, t):
    run = store_run28(w / "runs" / "long", [f"g{i}.weight" for i in range(29)] + ["x" * 100_000])
    return _interactions28(t, run, timeout=120, mem=7 * GiB)


@attempt28(4, "Interactions page: a store with one 1 MB label (S = 30)")
def _(w, t):
    run = store_run28(w / "runs" / "long", [f"g{i}.weight" for i in range(29)] + ["x" * 2**20])
    return _interactions28(t, run, timeout=120, mem=7 * GiB)


@attempt28(4, "Interactions page: a legitimate 5,000-group store (400 MB of arrays)")
def _(w, t):
    run = store_run28(w / "runs" / "wide", [f"layers.{i // 100}.neuron{i % 100}"
                                            for i in range(5000)])  # fmt: skip
    return _interactions28(t, run, timeout=300, mem=7 * GiB)


# ---- 5. corpora
@attempt28(5, "train CLI: a 1e9-byte corpus, 8 training samples at context 128")
def _(w, t):
    return _train_text28(w, f"text:{sparse(w / 'big.txt', 10**9)}@128", 128, timeout=240)


@attempt28(5, "train CLI: a 100 MB corpus, 8 training samples at context 1")
def _(w, t):
    return _train_text28(w, f"text:{sparse(w / 'mid.txt', 10**8)}@1", timeout=240)


# ---- 6. the report
@attempt28(6, "report CLI: a Recorder run in a folder named x<!--<script>")
def _(w, t):
    run = w / "x<!--<script>"
    subprocess.run([PY, "-c", "import sys; from tests.recorded import make_recorder_run; "
                    "make_recorder_run(__import__('pathlib').Path(sys.argv[1]), epochs=2)",
                    str(run)], cwd=HERE, env={**os.environ, "PYTHONPATH": str(HERE)},
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    page = w / "report.html"

    def check() -> dict:
        import re

        text = page.read_text() if page.exists() else ""
        bodies = re.findall(r"<script>(.*?)</script>", text, flags=re.S)
        broken = sum(bool(re.search(r"<!--|<script", b, flags=re.I)) for b in bodies)
        return {"scripts_broken": broken, "figures": len(re.findall(r"Plotly.newPlot", text))}

    return cli("report", str(run), "-o", str(page), check=check, timeout=180)


# ---- 7, 8. the Recorder
RECORDERS = """
import sys, json, torch, torch.nn.functional as F
from pathlib import Path
import hessian_lens as hl
from hessian_lens.runfolder import list_checkpoints
from hessian_lens.store import ResultStore
sys.path.insert(0, sys.argv[2])
from tests.recorded import tiny_data, tiny_net
run = Path(sys.argv[1])
try:
    a = hl.Recorder(run, tiny_net(), F.cross_entropy, tiny_data(), name="A")
    for e in range(3):
        a.log(e, train_loss=1.0)
    b = hl.Recorder(run, tiny_net(), F.cross_entropy, tiny_data(), name="B")
    for e in range(6):
        b.log(e / 2, train_loss=2.0)
    a.close(); b.close()
except Exception as err:  # what the user's loop sees, as one line
    sys.exit(f"{type(err).__name__}: {err}")
"""


@attempt28(7, "Recorder: a second Recorder on a folder one is writing")
def _(w, t):
    run = w / "run"

    def check() -> dict:
        man = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
        names = {p.name for p in run.glob("epoch_*.pt")}
        rows, dangling = 0, 0
        if (run / "analysis.sqlite").exists():
            db = sqlite3.connect(f"file:{run / 'analysis.sqlite'}?mode=ro", uri=True)
            found = [r[0] for r in db.execute("SELECT checkpoint FROM results")]
            db.close()
            rows, dangling = len(found), sum(n not in names for n in found)
        return {"name": man.get("name"), "history": len(man.get("history", [])),
                "results": rows, "dangling": dangling}  # fmt: skip

    return Call(["-c", RECORDERS, str(run), str(HERE)], timeout=300, check=check)


@attempt28(8, "Recorder: a model with 10,002 groups (by_neuron), first log")
def _(w, t):
    text = ("import sys, torch, torch.nn.functional as F, hessian_lens as hl\n"
            "m = torch.nn.Linear(1, 10002)\n"
            "data = [(torch.randn(8, 1), torch.randint(0, 10002, (8,)))]\n"
            "try:\n"
            f"    r = hl.Recorder({str(w / 'run')!r}, m, F.cross_entropy, data,\n"
            "                    partition='by_neuron')\n"
            "    r.log(0, train_loss=1.0)\n"
            "except Exception as err:  # what the user's loop sees, as one line\n"
            "    sys.exit(f'{type(err).__name__}: {err}')\n")  # fmt: skip
    return code(text, timeout=300, mem=6 * GiB)


# ---- 9. unclear messages
@attempt28(9, "train CLI: text:/proc/self/pagemap")
def _(w, t):
    return _train_text28(w, "text:/proc/self/pagemap")


@attempt28(9, "train CLI: text:F@²")
def _(w, t):
    (w / "F").write_text("x = 1\n" * 100)
    return _train_text28(w, f"text:{w / 'F'}@²")


@attempt28(9, "analyze CLI: --partition by_module:²")
def _(w, t):
    run = gpt_run28(w / "run", f"text:{w / 'none.txt'}")
    return cli("analyze", str(run), "--partition", "by_module:²", "--no-progress")


@attempt28(9, "Block heterogeneity page: a label with a 5,000-digit head number")
def _(w, t):
    label = "blocks.0.attn.q.head" + "1" * 5000
    run = store_run28(w / "runs" / "digits", [f"g{i}.weight" for i in range(29)] + [label])
    state = f"at.session_state['run_path'] = {str(run)!r}"
    return code(page_code(t, "views/Block_heterogeneity.py", state=state),
                env={"HESSIAN_LENS_RUNS": str(run.parent)})  # fmt: skip


# ---- 10. special files
@attempt28(10, "train CLI: a corpus that is a link to /proc/self/environ")
def _(w, t):
    (w / "notes.txt").symlink_to("/proc/self/environ")

    def check() -> dict:
        man = w / "out" / "run.json"
        corpus = json.loads(man.read_text())["data"].get("corpus", {}) if man.exists() else {}
        return {"recorded_path": corpus.get("path")}

    return _train_text28(w, f"text:{w / 'notes.txt'}@8", check=check)


# ---------------------------------------------------------------------------- runner
def _limits(mem: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _snapshot(root: Path) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for n in dirnames + filenames:
            out.add(os.path.normpath(os.path.join(rel, n)))
    return out


def run_attempt(a: Attempt, tree: Path) -> dict:
    work = Path(tempfile.mkdtemp(prefix="hl-attack-"))
    row: dict = {"item": a.item, "attempt": a.name, "tree": str(tree)}
    call = None
    try:
        (work / "home").mkdir()
        call = a.make(work, tree)
        before = _snapshot(work)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HESSIAN_LENS_", "PYTHON"))}
        env.update(
            PYTHONPATH=str(tree),
            HOME=str(work / "home"),
            HESSIAN_LENS_CACHE=str(work / "cache"),
            OMP_NUM_THREADS="1",
            TORCH_HOME=str(work / "home" / "torch"),
            CUDA_VISIBLE_DEVICES="",
        )
        env.update(call.env)
        out, err = work / ".stdout", work / ".stderr"
        t0 = time.perf_counter()
        with out.open("wb") as fo, err.open("wb") as fe:
            proc = subprocess.Popen(
                [PY, *call.args], cwd=tree, env=env, stdout=fo, stderr=fe,
                stdin=subprocess.DEVNULL, preexec_fn=_limits(call.mem), start_new_session=True,
            )  # fmt: skip
            status, usage, timed_out = _wait(proc.pid, call.timeout)
        seconds = time.perf_counter() - t0
        stderr = err.read_text(errors="replace")
        stdout = out.read_text(errors="replace")
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        rc = None if timed_out else _exit_code(status)
        row.update(
            rc=rc,
            timed_out=timed_out,
            traceback="Traceback (most recent call last)" in stderr,
            stderr_lines=len(lines),
            message=(lines[-1][:300] if lines else ""),
            peak_mb=round(usage.ru_maxrss / 1024),
            seconds=round(seconds, 1),
        )
        page = [ln for ln in stdout.splitlines() if ln.startswith(RESULT)]
        if page:
            facts = json.loads(page[-1][len(RESULT) :])
            shown = facts["exception"] or facts["error"]
            row["message"] = (shown[0] if shown else row["message"])[:300]
            row["page"] = facts
        elif call.args and call.args[0] == "-c" and "AppTest" in call.args[1]:
            row["page"] = None  # the page never finished
        os.unlink(out)
        os.unlink(err)
        after = _snapshot(work) - {".stdout", ".stderr"}
        row["created"] = sorted(after - before)[:12] + [f"-{p}" for p in sorted(before - after)][:6]
        if call.check is not None:
            row["extra"] = call.check()
    except Exception as exc:  # a broken attempt is a row, not a stopped benchmark
        row["setup_error"] = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        if call is not None and call.teardown is not None:
            call.teardown()
        shutil.rmtree(work, ignore_errors=True)
    return row


def _wait(pid: int, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        got, status, usage = os.wait4(pid, os.WNOHANG)
        if got == pid:
            return status, usage, False
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            return status, usage, True
        time.sleep(0.05)


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tree", type=Path, default=HERE, help="checkout to attack (default: this)")
    ap.add_argument("--only", default="", help="items, e.g. 1,13 (default: all)")
    ap.add_argument("--match", default="", help="only attempts whose name holds this text")
    ap.add_argument("--list", action="store_true", help="list the attempts and stop")
    ap.add_argument("--issue", type=int, default=11, help="11 (the first round), 18 or 28")
    ap.add_argument("--before-label", default="fe81ed9", help="the before tree, in the table")
    ap.add_argument(
        "--table",
        nargs=2,
        type=Path,
        metavar=("BEFORE", "AFTER"),
        help="print the markdown table of two JSON-lines outputs and stop",
    )
    args = ap.parse_args(argv)
    if args.table:
        print(table(*args.table, issue=args.issue, label=args.before_label))
        return 0
    items = {int(i) for i in args.only.split(",") if i.strip()}
    chosen = [
        a
        for a in ATTEMPTS
        if a.issue == args.issue
        and (not items or a.item in items)
        and args.match.lower() in a.name.lower()
    ]
    for a in chosen:
        if args.list:
            print(f"{a.item:>2}  {a.name}")
            continue
        print(json.dumps(run_attempt(a, args.tree.resolve())), flush=True)
    if _ANALYSED is not None:
        shutil.rmtree(_ANALYSED, ignore_errors=True)
    return 0


# ---------------------------------------------------------------------------- the table
CLI_TESTS = "test_cli_errors.py::test_bad_input_exits_2_with_one_line_and_creates_nothing"
H = "test_hardening.py::"
PINS = {
    "inspect CLI: 252 KB": f"{CLI_TESTS}[inspect a meta bomb]; test_checkpoint.py::"
    "test_metadata_bombs_are_refused_at_read_time",
    "Inspect page: the bomb": H
    + "test_inspect_page_refuses_a_metadata_bomb_in_the_declared_arguments",
    "inspect CLI: meta nested": "test_checkpoint.py::test_metadata_bombs_are_refused_at_read_time",
    "inspect CLI: 1 MB .pt": "test_checkpoint.py::"
    "test_zip_bomb_is_refused_before_inflating_anything",
    "Inspect page: torch.load": H + "test_inspect_page_parses_an_upload_once",
    "inspect CLI: meta mlp": "test_checkpoint.py::"
    "test_architecture_from_metadata_is_checked_on_meta_before_allocating",
    "Inspect page: kwargs typed": H
    + "test_inspect_page_checks_typed_arguments_on_meta_before_allocating",
    "inspect CLI: a meta-device": "test_checkpoint.py::"
    "test_tensors_that_are_not_dense_real_cpu_tensors_are_refused[meta]",
    "inspect CLI: a sparse": f"{CLI_TESTS}[inspect a sparse tensor]",
    "inspect CLI: meta kwargs": "test_checkpoint.py::test_bad_arguments_get_one_clear_message; "
    f"{CLI_TESTS}[inspect num_classes -1], [inspect kwargs 'ab']",
    "Interactions page: 0.8 MB": H
    + "test_interactions_page_refuses_a_store_blob_bomb_before_inflating",
    "Optimizer page: 44 MB": H + "test_a_large_optimizer_log_is_thinned_and_parsed_once",
    "home page: 500 runs": H + "test_home_page_pages_and_filters_many_runs",
    "home page: a folder holding": H + "test_home_page_leaves_a_foreign_sqlite_file_untouched",
    "home page: runs and cache": H + "test_pages_work_on_a_read_only_mount",
    "Interactions page: runs and cache": H + "test_pages_work_on_a_read_only_mount",
    "Inspect page: data source": H + "test_inspect_data_field_never_creates_a_folder",
    "analyze CLI: a folder": f"{CLI_TESTS}[analyze a missing folder]",
    "analyze CLI: a system": f"{CLI_TESTS}[analyze a system folder]",
    "Inspect page: refused": H + "test_refused_uploads_are_deleted_and_the_cache_is_bounded",
    "Inspect page: 4 uploads": H + "test_refused_uploads_are_deleted_and_the_cache_is_bounded",
    "Inspect page: a corrupt": H + "test_a_corrupt_results_cache_is_moved_aside",
    "home page: 7 bad": H + "test_each_bad_run_folder_gets_its_own_warning",
    "Interactions page: a store whose settings say": H
    + "test_stored_settings_that_are_odd_are_messages[True]",
    "Interactions page: a store whose settings text": H
    + "test_stored_settings_that_are_odd_are_messages[False]",
    "Optimizer page: a malformed": H + "test_a_malformed_optimizer_log_is_a_warning",
    "analyze CLI: epoch = 10**30": H
    + "test_an_absurd_epoch_in_meta_is_stored_as_the_file_name_says",
    "analyze CLI: a FIFO": H + "test_analyze_skips_a_fifo_and_dev_zero_named_like_checkpoints",
    "analyze CLI: epoch_0002.pt ->": H
    + "test_analyze_skips_a_fifo_and_dev_zero_named_like_checkpoints",
    "Inspect page: HESSIAN_LENS_MAX": H + "test_a_bad_upload_limit_is_a_message_on_the_page",
}


H3 = "test_hardening3.py::"
PINS.update(
    {
        "inspect CLI: 854-byte": H3
        + "test_a_pickle_calling_bytearray_is_refused_before_torch_allocates",
        "Inspect page: the same .pt": H3
        + "test_a_pickle_calling_bytearray_is_refused_before_torch_allocates",
        "inspect CLI: .pt2 whose sample_inputs": H3
        + "test_a_pt2_whose_sample_inputs_call_bytearray_is_refused",
        "inspect CLI: 40 kB": H3 + "test_a_pickle_building_millions_of_objects_is_stopped_early",
        "Inspect page: 1.6 kB": H3 + "test_inspect_page_checks_memory_before_values; "
        "test_a_tensor_expanded_from_one_value_is_refused_at_read_time",
        "Interactions page: store listing": H3
        + "test_a_store_listing_100k_labels_does_not_lift_the_array_limit",
        "inspect CLI: 435 kB": H3
        + "test_a_pt2_program_padded_with_millions_of_empty_objects_is_refused",
        "inspect CLI: 95 MB": H3
        + "test_a_safetensors_header_of_millions_of_empty_objects_is_refused",
        "analyze CLI: a 3 MB": H3 + "test_analyze_reads_run_checkpoints_under_the_checkpoint_limit",
        "analyze CLI: 4 MB npz": H3
        + "test_npz_members_are_checked_against_the_data_limit_before_inflating",
        "analyze CLI: an image folder": H3
        + "test_huge_images_are_refused_from_their_header[12000]",
        "analyze CLI: one 200 Mpx": H3 + "test_huge_images_are_refused_from_their_header[14200]",
        "load + one forward": H3
        + "test_a_pt2_graph_allocating_gigabytes_is_refused_before_running",
        "inspect CLI: .pt2 with a symbolic Max": H3
        + "test_a_pt2_with_a_huge_symbolic_max_is_refused_quickly",
        "server: Streamlit's": H3 + "test_the_servers_upload_limit_is_the_apps; "
        "test_inspect_page_caps_the_app_limit_at_the_servers",
        "analyze CLI: analysis.sqlite a symlink": H3
        + "test_analyze_never_writes_a_store_symlinked_outside_the_run",
        "Inspect page: uploads/": H3 + "test_eviction_never_deletes_files_the_cache_did_not_write",
        "analyze CLI: a store whose claims": H3
        + "test_a_store_with_a_trigger_or_view_is_refused_not_run; "
        "test_every_store_query_has_a_time_bound",
        "analyze CLI: a .pt2 as": H3 + "test_analyze_reads_a_pt2_checkpoint_of_a_run",
        "analyze CLI: --lease-seconds": H3 + "test_analyze_with_a_nan_lease_is_one_line",
        "analyze CLI: --data safetensors": H3
        + "test_safetensors_data_with_bfloat16_targets_is_read",
        "analyze CLI: all-zero": H3
        + "test_analyze_of_all_zero_images_is_one_line_and_leaves_no_store",
        "Interactions page: a store with a hot": H3
        + "test_a_hot_journal_is_rolled_back_by_a_writer_and_explained_to_a_viewer",
        "analyze CLI: the same store": H3
        + "test_a_hot_journal_is_rolled_back_by_a_writer_and_explained_to_a_viewer",
        "inspect CLI: .pt2 with a symbol": H3 + "test_torch_logs_nothing_while_a_pt2_is_validated",
        "home page: run.json fields": H3 + "test_home_page_shows_run_json_fields_as_plain_text",
    }
)


H4 = "test_hardening4.py::"
GLOB_TEST = "test_analyze_of_a_run_whose_data_globs_the_file_system_stops_quickly"
PINS.update(
    {
        "Interactions page: (.|.|.)*!": H4
        + "test_a_backtracking_regex_returns_at_once[(.|.|.)*!]; e2e/test_shared_server.py",
        "Interactions page: (a+)+$": H4 + "test_a_backtracking_regex_returns_at_once[(a+)+$]",
        "analyze CLI: run.json data text:/**": H4 + GLOB_TEST + "[text:/**]",
        "analyze CLI: run.json data text:/proc": H4 + GLOB_TEST + "[text:/proc/self/**]",
        "Inspect page: upload a checkpoint whose run": H4
        + "test_inspect_page_reads_the_data_a_file_names_only_after_a_click",
        "inspect CLI: 0.5 MB": H4
        + "test_a_checkpoint_naming_a_huge_builtin_is_refused_from_its_arguments",
        "Interactions page: a store with one": H4
        + "test_a_one_megabyte_label_is_refused_when_read_naming_it; e2e/test_shared_server.py",
        "Interactions page: a legitimate": H4
        + "test_a_legitimate_5000_group_store_draws_in_bounded_memory",
        "train CLI: a 1e9-byte": H4 + "test_a_large_corpus_costs_what_a_small_subset_uses",
        "train CLI: a 100 MB": H4 + "test_a_large_corpus_costs_what_a_small_subset_uses",
        "report CLI: a Recorder run": H4
        + "test_a_run_named_to_break_the_reports_scripts_keeps_every_figure",
        "Recorder: a second": H4 + "test_a_second_recorder_on_a_folder_is_refused_naming_the_first",
        "Recorder: a model with 10,002": H4
        + "test_a_recorder_with_more_groups_than_a_store_holds_is_refused_up_front",
        "train CLI: text:/proc/self/pagemap": H4
        + "test_odd_digits_and_kernel_files_get_one_clear_line",
        "train CLI: text:F@": H4 + "test_odd_digits_and_kernel_files_get_one_clear_line",
        "analyze CLI: --partition by_module": H4
        + "test_odd_digits_and_kernel_files_get_one_clear_line",
        "Block heterogeneity page: a label with": H4
        + "test_a_5000_digit_head_number_is_named_not_a_crash",
        "train CLI: a corpus that is a link": H4 + "test_a_link_to_a_kernel_file_is_not_a_corpus",
    }
)


def _pin(name: str) -> str:
    pinned = next((test for prefix, test in PINS.items() if name.startswith(prefix)), "")
    if pinned.startswith(H4):
        return pinned
    if name.startswith(("train CLI", "analyze CLI: labels")):
        return CLI_TESTS
    return next((test for prefix, test in PINS.items() if name.startswith(prefix)), "")


def outcome(row: dict | None) -> str:
    """One table cell: status, traceback, what was shown, memory, time, files."""
    if row is None:
        return "not run"
    if "setup_error" in row:
        return f"setup failed ({row['setup_error'][:80]})"
    parts = []
    page = row.get("page")
    if row.get("timed_out"):
        parts.append(f"**killed at {row['seconds']:.0f} s** (did not finish)")
    elif "page" in row:
        if page is None:
            parts.append(f"page script died (exit {row['rc']})")
        else:
            shown = page["exception"] or page["error"]
            kind = "exception" if page["exception"] else "error"
            parts.append(f"page {kind}: “{_short(shown[0])}”" if shown else "page drawn")
            if page.get("warning"):
                parts.append(f"{len(page['warning'])} warnings: “{_short(page['warning'][0])}”")
            if page.get("subheaders"):
                parts.append(f"{page['subheaders']} cards")
            if page.get("torch_load_calls") is not None:
                parts.append(f"torch.load × {page['torch_load_calls']}")
            if page.get("images") is not None:
                parts.append(f"{page['images']} markdown images from run.json")
    else:
        parts.append(f"exit {row['rc']}")
        if row["traceback"]:
            parts.append(f"**traceback** ({row['stderr_lines']} lines)")
        elif row["stderr_lines"] > 1:
            parts.append(f"{row['stderr_lines']} stderr lines")
        if row["message"]:
            parts.append(f"“{_short(row['message'].removeprefix('hessian-lens '))}”")
    parts.append(f"{row['peak_mb']:,} MB, {row['seconds']:.1f} s")
    created = [c for c in row.get("created", []) if not c.startswith("cache")]
    if created:
        parts.append("created: " + ", ".join(f"`{c}`" for c in created[:3]))
    if row.get("extra"):
        parts.append(json.dumps(row["extra"]).replace("|", "/"))
    return "; ".join(parts).replace("|", "/")


def _short(text: str, n: int = 90) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def table(before: Path, after: Path, issue: int = 11, label: str = "fe81ed9") -> str:
    rows_b = {json.loads(x)["attempt"]: json.loads(x) for x in before.read_text().splitlines()}
    rows_a = {json.loads(x)["attempt"]: json.loads(x) for x in after.read_text().splitlines()}
    lines = [f"| # | attempt | before ({label}) | after | pinned by |", "|---|---|---|---|---|"]
    for a in (a for a in ATTEMPTS if a.issue == issue):
        b, n = rows_b.get(a.name), rows_a.get(a.name)
        pin = _pin(a.name)
        lines.append(f"| {a.item} | {a.name} | {outcome(b)} | {outcome(n)} | `{pin}` |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
