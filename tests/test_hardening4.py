"""Issue 28: no regex, label, path or model config can freeze or bloat a shared server.

One test (or more) per numbered item of the issue. Memory cases run in a fresh interpreter
whose address space is capped a little above its size after its imports (:func:`capped`),
and report the growth of its peak resident memory; hangs run in a subprocess killed after a
time limit; "nothing written" is checked by listing folders before and after.
benchmarks/attacks.py (``--issue 28``) measures the same attempts at the issue's sizes
(docs/hardening.md).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hessian_lens.checkpoint import save_checkpoint
from hessian_lens.data import DataError, load_dataset
from hessian_lens.models import GPT
from hessian_lens.runfolder import write_manifest
from hessian_lens.store import Record, ResultStore
from tests.conftest import REPO

GPT_TEXT = REPO / "checkpoints" / "gpt-text"
INTERACTIONS = "views/Layer_interactions.py"
HETEROGENEITY = "views/Block_heterogeneity.py"

CAPPED = r"""
import json, resource, sys, time
import torch, hessian_lens.checkpoint, hessian_lens.data, hessian_lens.store
import streamlit.testing.v1

def vm():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024

cap = vm() + {headroom}
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.monotonic()
out = {{}}
try:
    exec({code!r})
    error = None
except BaseException as err:
    error = type(err).__name__ + ": " + str(err)[:500]
out.update(error=error, seconds=time.monotonic() - t0,
           growth_mb=(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
print("@@" + json.dumps(out, default=str))
"""


def capped(code: str, headroom_gib: float = 1.5, timeout: float = 120, env=None) -> dict:
    """Run ``code`` in a fresh interpreter capped at its post-import size + ``headroom_gib``.

    ``code`` may fill the dict ``out``. Returns it with ``error``, ``seconds`` and
    ``growth_mb`` (peak RSS growth after the imports); a run past ``timeout`` is killed and
    reported as ``{"error": "timed out"}``.
    """
    script = CAPPED.format(headroom=int(headroom_gib * 2**30), code=code)
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            env=full_env,
        )
    except subprocess.TimeoutExpired:
        return {"error": "timed out", "seconds": timeout, "growth_mb": None}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@")]
    assert lines, proc.stderr[-3000:]
    return json.loads(lines[-1][2:])


PAGE = """
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({app!r}, default_timeout=600)
at.switch_page({page!r})
at.session_state["run_path"] = {run!r}
at.run()
{act}
out.update(
    errors=[str(e.value) for e in at.error],
    exceptions=[str(e.value) for e in at.exception],
    infos=[str(i.value) for i in at.info],
    warnings=[str(w.value) for w in at.warning],
    charts=len(at.get("plotly_chart")),
)
"""


def page(name: str, run: Path, cache: Path, act: str = "", **kw) -> dict:
    """A dashboard page on ``run`` in a capped, killable interpreter (see :func:`capped`)."""
    code = PAGE.format(app=str(REPO / "app.py"), page=name, run=str(run), act=act)
    env = {"HESSIAN_LENS_RUNS": str(run.parent), "HESSIAN_LENS_CACHE": str(cache)}
    return capped(code, env=env, **kw)


def cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HESSIAN_LENS_")}
    env.update(PYTHONPATH=str(REPO), HOME=str(cwd / "home"), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "hessian_lens", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_exit_2(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[0]


def listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def store_run(folder: Path, labels: list[str], arrays: bool = True) -> Path:
    """A run folder whose store holds one record with these group labels (cheap arrays)."""
    folder.mkdir(parents=True)
    write_manifest(
        folder,
        {"name": folder.name, "model": {"name": "mlp", "kwargs": {}}, "data": {"name": "x"}},
    )
    S = len(labels)
    rng = np.random.default_rng(0)
    H = rng.standard_normal((S, S)) if arrays else np.eye(S)
    H = H + H.T
    summary = {
        "labels": labels,
        "kinds": ["weight"] * S,
        "layers": [x.rsplit(".", 1)[0] for x in labels],
        "sizes": [1] * S,
        "inverse": {"status": "positive definite", "condition": 10.0},
    }
    record = Record("sha0", {"samples": 8}, "epoch_0001.pt", 1, summary, {"H": H, "Hinv": H})
    record.arrays["g"] = rng.standard_normal(S)
    ResultStore(folder / "analysis.sqlite").put(record)
    return folder


# ---------------------------------------------------------------------------- item 1
@pytest.mark.parametrize("pattern", ["(.|.|.)*!", "(a+)+$"])
def test_a_backtracking_regex_returns_at_once(tmp_path, pattern):
    """Python's re took exponential time on these inside one C call (killed at 40-150 s):
    ``(.|.|.)*!`` on the shipped gpt-text run, ``(a+)+$`` on labels ending in many a's."""
    run = GPT_TEXT
    if pattern == "(a+)+$":
        labels = [f"g{i}." + "a" * 40 + "!" for i in range(30)]
        run = store_run(tmp_path / "runs" / "many-a", labels)
    act = f'at.text_input(key="interactions-regex").set_value({pattern!r}).run()'
    out = page(INTERACTIONS, run, tmp_path / "cache", act, timeout=120)
    assert out["error"] is None, out
    assert out["exceptions"] == [] and out["errors"] == [], out
    assert any("No group left" in i for i in out["infos"]), out  # no label matches either
    assert out["seconds"] < 60, out


def test_regex_matching_is_linear_and_refuses_backtracking_constructs():
    from hessian_lens.matching import PatternError, label_matcher

    started = time.monotonic()
    matches = label_matcher("(a+)+$")
    assert not matches("a" * 200_000 + "!") and matches("x.aaa")
    assert not label_matcher("(.|.|.)*!")("blocks.0.attn.q.head0" * 1000)
    assert time.monotonic() - started < 2
    for bad in (r"(a)\1", "(?=a)", "x" * 201, "("):
        with pytest.raises(PatternError):
            label_matcher(bad)


# ---------------------------------------------------------------------------- item 2
def gpt_run(folder: Path, data: str) -> Path:
    """A run folder naming ``data`` in run.json, with one tiny GPT checkpoint."""
    folder.mkdir(parents=True)
    kwargs = {"layers": 1, "heads": 1, "width": 4, "context": 8}
    torch.manual_seed(0)
    save_checkpoint(
        folder / "epoch_0001.pt",
        GPT(**kwargs),
        {"model": {"name": "gpt", "kwargs": kwargs}, "epoch": 1, "run": folder.name},
    )
    write_manifest(
        folder,
        {
            "name": folder.name,
            "model": {"name": "gpt", "kwargs": kwargs},
            "data": {"name": data},
            "loss": "next_token",
        },
    )
    return folder


@pytest.mark.parametrize("spec", ["text:/proc/self/**", "text:/**"])
def test_analyze_of_a_run_whose_data_globs_the_file_system_stops_quickly(tmp_path, spec):
    """``text:/proc/self/**`` walked /proc/self/root/... (and /** the whole disk): killed."""
    run = gpt_run(tmp_path / "run", spec)
    before = listing(tmp_path)
    started = time.monotonic()
    try:
        done = cli("analyze", str(run), "--samples", "4", "--no-progress", cwd=tmp_path, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail(f"analyze with {spec} still running after 90 s")
    line = one_line_exit_2(done)
    assert "text:" in line and time.monotonic() - started < 60, line
    assert listing(tmp_path) - before <= {"home"}, listing(tmp_path) - before


def test_a_glob_is_searched_with_bounds_on_entries_and_depth(tmp_path, monkeypatch):
    monkeypatch.setattr("hessian_lens.textfiles.MAX_ENTRIES", 50)
    for i in range(60):
        (tmp_path / f"f{i}.py").write_text("x = 1\n" * 50)
    with pytest.raises(DataError, match="more than 50 files and folders"):
        load_dataset(f"text:{tmp_path}/**/*.py")
    deep = tmp_path / "deep"
    (deep / Path(*["d"] * 6)).mkdir(parents=True)
    (deep / Path(*["d"] * 6) / "a.py").write_text("x = 1\n" * 50)
    monkeypatch.setattr("hessian_lens.textfiles.MAX_DEPTH", 4)
    with pytest.raises(DataError, match="more than 4 folders deep"):
        load_dataset(f"text:{deep}/**/*.py")


def test_a_glob_finds_what_glob_glob_finds(tmp_path):
    """The bounded search is the standard library's glob (recursive) on an ordinary tree."""
    import glob

    from hessian_lens.textfiles import expand

    for rel in ("a.py", "b.txt", ".hid.py", "p/c.py", "p/.q/d.py", "p/r/s/e.py", "t/f.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    (tmp_path / "p" / "link.py").symlink_to(tmp_path / "a.py")
    for pattern in ("*.py", "**/*.py", "p/**", "*/*.py", "p/**/s/*", "[ab].*", "?/c.py"):
        want = sorted(
            Path(p)
            for p in glob.glob(str(tmp_path / pattern), recursive=True)
            if Path(p).is_file() and not Path(p).is_symlink()
        )
        assert expand(str(tmp_path / pattern))[1] == want, pattern


def test_inspect_page_reads_the_data_a_file_names_only_after_a_click(tmp_path, monkeypatch):
    """Uploading a checkpoint whose run says ``text:/**`` started the walk at once."""
    from streamlit.testing.v1 import AppTest

    import hessian_lens.text as text

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i}\n" * 20)
    run = gpt_run(tmp_path / "runs" / "named", f"text:{corpus}/**@8")
    reads = []
    real = text.load_text
    monkeypatch.setattr(text, "load_text", lambda *a, **k: reads.append(a) or real(*a, **k))
    monkeypatch.setenv("HESSIAN_LENS_RUNS", str(run.parent))
    monkeypatch.setenv("HESSIAN_LENS_CACHE", str(tmp_path / "cache"))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    at.switch_page("views/Inspect_checkpoint.py")
    at.run()
    data = (run / "epoch_0001.pt").read_bytes()
    at.file_uploader(key="upload").set_value(("epoch_0001.pt", data, "application/octet-stream"))
    at.run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    assert at.text_input(key="data-spec").value == f"text:{corpus}/**@8"
    assert reads == []  # nothing read on upload
    assert any("is read when you press Compute" in c.value for c in at.caption)
    at.button(key="compute").click().run()
    assert reads and not at.exception, [e.value for e in at.exception]


# ---------------------------------------------------------------------------- item 3
def test_a_checkpoint_naming_a_huge_builtin_is_refused_from_its_arguments(tmp_path):
    """gpt with layers 100000: 148 s and 4.48 GB on the meta device before a refusal."""
    path = tmp_path / "deep.pt"
    small = {"layers": 1, "heads": 1, "width": 4, "context": 8}
    meta = {"model": {"name": "gpt", "kwargs": {**small, "layers": 100_000}}}
    save_checkpoint(path, GPT(**small), meta)
    assert path.stat().st_size < 600_000
    out = capped(f"hessian_lens.checkpoint.load_checkpoint({str(path)!r})", timeout=90)
    assert out["error"] and out["error"].startswith("CheckpointError"), out
    assert "1,000,005 modules" in out["error"] and "parameters" in out["error"], out
    assert out["seconds"] < 10 and out["growth_mb"] < 100, out


def test_any_constructor_is_stopped_past_the_module_limit(monkeypatch):
    """A registered builder (or a torchvision one) is counted while it runs."""
    from hessian_lens.registry import ArchitectureError, build_on_meta, register_model

    @register_model("deep-doc-net")
    def deep(depth: int = 2, grow: bool = False):
        if not grow:  # a million layers made first, then put in a Sequential
            return nn.Sequential(*[nn.Linear(2, 2) for _ in range(depth)])
        net = nn.Sequential()
        for i in range(depth):  # ... or added one by one
            net.add_module(str(i), nn.ReLU())
        return net

    try:
        assert len(build_on_meta("deep-doc-net", depth=3)) == 3
        for grow in (False, True):
            started = time.monotonic()
            with pytest.raises(ArchitectureError, match="20,000 modules"):
                build_on_meta("deep-doc-net", depth=1_000_000, grow=grow)
            assert time.monotonic() - started < 20
    finally:
        from hessian_lens.registry import unregister_model

        unregister_model("deep-doc-net")


# ---------------------------------------------------------------------------- item 4
def test_a_one_megabyte_label_is_refused_when_read_naming_it(tmp_path):
    """A 1 MB label asked for 22.8 GiB of hover text (S² copies)."""
    run = store_run(tmp_path / "runs" / "long", [f"g{i}.weight" for i in range(29)] + ["x" * 2**20])
    out = page(INTERACTIONS, run, tmp_path / "cache", timeout=120)
    assert out["error"] is None and out["exceptions"] == [], out
    assert any("1,048,576 characters" in e for e in out["errors"]), out
    assert out["growth_mb"] < 400, out


def test_a_legitimate_5000_group_store_draws_in_bounded_memory(tmp_path):
    """The hover text alone was 5000² strings (3.6 GiB as one numpy array)."""
    labels = [f"layers.{i // 100}.neuron{i % 100}" for i in range(5000)]
    run = store_run(tmp_path / "runs" / "wide", labels)
    out = page(INTERACTIONS, run, tmp_path / "cache", headroom_gib=3.0, timeout=300)
    assert out["error"] is None, out
    assert out["errors"] == [] and out["exceptions"] == [] and out["charts"] == 2, out
    assert out["growth_mb"] < 2000, out  # the record's arrays alone are 400 MB


# ---------------------------------------------------------------------------- item 5
@pytest.mark.parametrize(("size", "context", "headroom"), [(10**9, 128, 1.5), (10**8, 1, 0.5)])
def test_a_large_corpus_costs_what_a_small_subset_uses(tmp_path, size, context, headroom):
    """A 1e9-byte file peaked at 2.8 GB for 8 samples; 100 MB at context 1 at 1.4 GB."""
    corpus = tmp_path / "big.txt"
    with corpus.open("wb") as f:  # sparse: valid UTF-8 (NUL bytes), nothing on disk
        f.truncate(size)
    code = f"""
d = hessian_lens.data.load_dataset("text:{corpus}@{context}").subset(8, 0)
x, y = next(iter(d.batches(8)))
out["shape"] = list(x.shape)
out["fingerprint"] = d.fingerprint()
"""
    out = capped(code, headroom_gib=headroom, timeout=120)  # the mapping counts: 1e9 bytes
    assert out["error"] is None and out["shape"] == [8, context], out
    assert out["growth_mb"] < 200, out


def test_a_subset_is_the_same_windows_as_before_and_a_view_of_the_file(tmp_path):
    """Stored analyses keep their keys: the subset of a corpus is unchanged."""
    path = tmp_path / "a.txt"
    path.write_bytes(bytes(range(32, 127)) * 400)
    data = load_dataset(f"text:{path}@16")
    gen = torch.Generator().manual_seed(3)
    want = torch.randperm(len(data), generator=gen)[:50].sort().values  # the old rule
    assert torch.equal(data.subset(50, seed=3).windows, data.windows[want])
    assert not data.windows.is_contiguous()  # windows over the mapped bytes, not a copy


# ---------------------------------------------------------------------------- item 6
def test_a_run_named_to_break_the_reports_scripts_keeps_every_figure(tmp_path):
    """``x<!--<script>`` (a legal folder name) emptied the report: 0 of 4 figures."""
    from hessian_lens.report import build_html
    from hessian_lens.runs import load_run
    from tests.recorded import make_recorder_run

    run = make_recorder_run(tmp_path / "x<!--<script>", epochs=2)
    text = build_html(load_run(run))
    scripts = re.findall(r"<script>(.*?)</script>", text, flags=re.S)
    assert len(scripts) == 1 + 4  # plotly.js, then curves, H, Hinv, trends
    for body in scripts:
        assert not re.search(r"<!--|<script|</script", body, flags=re.I), body[:200]
    assert "Plotly.newPlot" in scripts[-1] and "<table><tr><th>epoch" in text
    assert "x&lt;!--&lt;script&gt;" in text  # the name is still shown, as text


# ---------------------------------------------------------------------------- item 7
HOLDER = """
import sys, time, torch, torch.nn.functional as F
import hessian_lens as hl
from tests.recorded import tiny_data, tiny_net
rec = hl.Recorder(sys.argv[1], tiny_net(), F.cross_entropy, tiny_data(), name="A")
rec.log(0, train_loss=1.0)
print("ready", flush=True)
time.sleep(120)
"""


def test_a_second_recorder_on_a_folder_is_refused_naming_the_first(tmp_path):
    """Two Recorders mixed their runs in one folder silently."""
    import hessian_lens as hl
    from tests.recorded import tiny_data, tiny_net

    folder = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        with pytest.raises(RuntimeError, match=f"process {holder.pid} ") as err:
            hl.Recorder(folder, tiny_net(), F.cross_entropy, tiny_data(), name="B")
        assert len(str(err.value).splitlines()) == 1
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    finally:
        holder.kill()
        holder.wait()
    with hl.Recorder(folder, tiny_net(), F.cross_entropy, tiny_data()) as rec:  # freed
        rec.log(1, train_loss=0.5)
    with hl.Recorder(folder, tiny_net(), F.cross_entropy, tiny_data()) as rec:  # closed: free
        rec.log(2, train_loss=0.4)


# ---------------------------------------------------------------------------- item 8
def test_a_recorder_with_more_groups_than_a_store_holds_is_refused_up_front(tmp_path):
    """10,002 groups failed after 137 s with a raw "can't allocate memory"."""
    import hessian_lens as hl

    model = nn.Linear(1, 10_002)
    data = [(torch.randn(4, 1), torch.randint(0, 10_002, (4,)))]
    started = time.monotonic()
    with pytest.raises(ValueError, match="S = 10,002 groups, more than the 5,000") as err:
        hl.Recorder(tmp_path / "run", model, F.cross_entropy, data, partition="by_neuron")
    assert len(str(err.value).splitlines()) == 1 and time.monotonic() - started < 10
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- item 9
def test_odd_digits_and_kernel_files_get_one_clear_line(tmp_path):
    npz = tmp_path / "none.npz"
    cases = {
        ("train", "--data", "text:/proc/self/pagemap"): "a file of the kernel",
        ("train", "--data", "text:F@²"): "digits 0-9",
        ("train", "--data", "text:/dev/zero"): "a device, FIFO or socket",
    }
    for args, expected in cases.items():
        line = one_line_exit_2(cli(*args, "--out", str(tmp_path / "out"), cwd=tmp_path))
        assert expected in line and "Errno" not in line and "literal" not in line, line
    run = gpt_run(tmp_path / "run", f"npz:{npz}")
    line = one_line_exit_2(cli("analyze", str(run), "--partition", "by_module:²", cwd=tmp_path))
    assert "unknown partition 'by_module:²'" in line, line
    assert not (tmp_path / "out").exists()


def test_a_5000_digit_head_number_is_named_not_a_crash(tmp_path):
    """int() of 5,000 digits raised "Exceeds the limit (4300 digits)" on pages 1 and 6."""
    from hessian_lens import hierarchy
    from hessian_lens.heads import head_of

    label = "blocks.0.attn.q.head" + "1" * 5000
    assert head_of(label) is None and head_of("blocks.0.attn.q.head7") == 7
    assert hierarchy.units([label, "blocks.0.attn.k.head0"], "head")[0][0] == label
    run = store_run(tmp_path / "runs" / "digits", [f"g{i}.weight" for i in range(29)] + [label])
    for name in (INTERACTIONS, HETEROGENEITY):
        out = page(name, run, tmp_path / "cache", timeout=120)
        assert out["error"] is None and out["exceptions"] == [], (name, out)
        text = " ".join(out["errors"] + out["warnings"])
        assert "blocks.0.attn.q.head1111" in text and "4300" not in text, (name, out)


# ---------------------------------------------------------------------------- item 10
def test_a_link_to_a_kernel_file_is_not_a_corpus(tmp_path):
    """A symlink to /proc/self/environ trained, and run.json recorded /proc/<pid>/environ."""
    link = tmp_path / "notes.txt"
    link.symlink_to("/proc/self/environ")
    before = listing(tmp_path)
    done = cli(
        "train",
        "--model",
        "gpt",
        "--model-kwargs",
        '{"layers": 1, "heads": 1, "width": 4, "context": 8}',
        "--loss",
        "next_token",
        "--data",
        f"text:{link}@8",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
        cwd=tmp_path,
    )
    line = one_line_exit_2(done)
    assert "a file of the kernel (/proc)" in line, line
    assert listing(tmp_path) - before <= {"home"}, listing(tmp_path) - before
    for special in ("/dev/zero", "/proc/self/status"):
        with pytest.raises(DataError, match="not a text file"):
            load_dataset(f"text:{special}")
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "ok.py").write_text("x = 1\n" * 100)
    os.mkfifo(folder / "fifo.py")  # never opened: it would block
    (folder / "env.py").symlink_to("/proc/self/environ")
    with pytest.raises(DataError, match="both splits"):  # only ok.py is read: one split
        load_dataset(f"text:{folder}")


# ---------------------------------------------------------------------------- left open
def test_token_and_safetensors_data_are_checked_against_the_data_limit(tmp_path, monkeypatch):
    """Round 3 left safetensors data (and npz token arrays) without a data limit."""
    from safetensors.numpy import save_file

    np.savez_compressed(tmp_path / "t.npz", tokens=np.zeros(2**20, np.int64))  # 8 MB, 10 kB
    save_file({"tokens": np.zeros(2**18, np.int64)}, str(tmp_path / "t.safetensors"))
    images = np.random.default_rng(0).integers(0, 255, (600, 3, 32, 32), dtype=np.uint8)
    targets = np.zeros(600, np.int64)
    save_file({"inputs": images, "targets": targets}, str(tmp_path / "i.safetensors"))
    for spec in (f"npz:{tmp_path / 't.npz'}@8", f"{tmp_path / 't.safetensors'}@8"):
        assert len(load_dataset(spec)) > 0
    assert len(load_dataset(str(tmp_path / "i.safetensors"))) == 600
    monkeypatch.setenv("HESSIAN_LENS_MAX_DATA_MB", "1")
    for spec, size in (
        (f"npz:{tmp_path / 't.npz'}@8", "8 MB once decompressed"),
        (f"{tmp_path / 't.safetensors'}@8", "2 MB as their header declares"),
        (str(tmp_path / "i.safetensors"), "2 MB as their header declares"),
    ):
        with pytest.raises(DataError, match=f"{size}, over the 1 MB limit"):
            load_dataset(spec)
