"""The documents say what the shipped files say, and the shipped run folders hold what they list.

``benchmarks/doc_numbers.py`` recomputes every number docs/reproduction.md and
docs/optimizer.md quote from ``checkpoints/`` and ``benchmarks/results/``; a changed number,
a changed table, a number left unmarked or a marker with no number each fail. The VGG-11'
folder ships its last checkpoint only (float16): ``analyze`` must find that file's record,
whose loss and ḡ recompute from the file, within float16's reach of the original's record.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hessian_lens.analyze import AnalysisSettings, run_data
from hessian_lens.checkpoint import load_checkpoint
from hessian_lens.cli import main
from hessian_lens.io.files import file_sha256
from hessian_lens.runfolder import list_checkpoints, read_manifest
from hessian_lens.store import ResultStore
from tests.conftest import REPO

VGG = REPO / "checkpoints" / "vgg11p-cifar10"
FLOAT16_TOL = 4 * 2.0**-11  # four units of float16's rounding, relative to the largest entry


@pytest.fixture(scope="module")
def doc_numbers():
    """benchmarks/doc_numbers.py as a module (its functions, without running main)."""
    spec = importlib.util.spec_from_file_location("doc_numbers", REPO / "benchmarks/doc_numbers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["doc_numbers"] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("doc_numbers", None)


@pytest.fixture(scope="module")
def computed(doc_numbers):
    return doc_numbers.compute()


def test_the_docs_quote_what_the_shipped_files_give():
    out = subprocess.run(
        [sys.executable, "benchmarks/doc_numbers.py", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and out.stdout == "", out.stdout + out.stderr


def test_every_kind_of_drift_is_caught(doc_numbers, computed):
    for doc, numbers in computed.items():
        text = (REPO / doc).read_text()
        assert doc_numbers.differences(text, numbers) == []
        assert len(numbers.values) >= 20 and len(numbers.blocks) >= 5
        key, (_, said) = next(iter(numbers.values.items()))
        marker = f"{said}<!--n:{key}-->"
        wrong = text.replace(marker, f"1{said}<!--n:{key}-->", 1)
        assert [p for p in doc_numbers.differences(wrong, numbers) if key in p]
        assert doc_numbers.rewrite(wrong, numbers) == text
        unmarked = text.replace(f"<!--n:{key}-->", "")
        assert f"{doc}: number {key} is not quoted" in doc_numbers.differences(unmarked, numbers)
        unknown = text + "\n7%<!--n:no.such.key-->\n"
        assert f"{doc}: unknown number key no.such.key" in doc_numbers.differences(unknown, numbers)
        name, markdown = next(iter(numbers.blocks.items()))
        cell = re.search(r"\| ([0-9][^|]*?) \|", markdown).group(1)
        edited = text.replace(markdown, markdown.replace(f"| {cell} |", "| 999 |", 1), 1)
        assert f"{doc}: table {name} differs from the files" in doc_numbers.differences(
            edited, numbers
        )
        assert doc_numbers.rewrite(edited, numbers) == text


def test_a_number_is_rounded_once(doc_numbers):
    numbers = doc_numbers.Numbers("doc")
    numbers.add("share", 0.452535, ".1%")  # LeNet-5's H̄⁻¹ raw off-block share at epoch 21
    assert numbers.values["share"] == (0.452535, "45.3%")
    assert f"{round(0.452535, 4):.1%}" == "45.2%"  # what rounding first, then formatting, gave


def test_shipped_runs_list_only_the_checkpoints_they_hold():
    """Every history entry names a file that is there; every record's checkpoint is there
    with its sha256, or listed as not shipped with that sha256 (and, if re-created here,
    is that very file)."""
    runs = [p for p in sorted((REPO / "checkpoints").iterdir()) if p.is_dir()]
    assert len(runs) >= 7
    for folder in runs:
        manifest = read_manifest(folder)
        present = {p.name: file_sha256(p) for p in list_checkpoints(folder)}
        absent = manifest.raw.get("checkpoints_not_shipped", {}).get("sha256", {})
        for name in set(absent) & set(present):  # re-created here (remake_init.py)
            assert present[name] == absent[name], (folder.name, name)
        for h in manifest.history:
            assert "checkpoint" not in h or h["checkpoint"] in present, (folder.name, h)
        if not (folder / "analysis.sqlite").exists():  # shipped before its analysis
            continue
        for r in ResultStore.reader(folder / "analysis.sqlite").records(arrays=False):
            where = present if r.checkpoint in present else absent
            assert where.get(r.checkpoint) == r.checkpoint_sha, (folder.name, r.checkpoint)


def _vgg_records():
    """The shipped float16 checkpoint's record and the original's, and epoch 7's."""
    sha = file_sha256(VGG / "epoch_0008.safetensors")
    recs = ResultStore.reader(VGG / "analysis.sqlite").records()
    shipped = next(r for r in recs if r.checkpoint_sha == sha)
    original = next(r for r in recs if r.checkpoint == "epoch_0008.pt")
    seven = next(r for r in recs if r.epoch == 7)
    assert shipped.settings == original.settings == seven.settings
    return shipped, original, seven


def test_the_float16_record_is_within_float16_reach_of_the_original():
    shipped, original, seven = _vgg_records()
    assert shipped.epoch == original.epoch == 8
    for name in ("H", "g", "Hinv"):
        diff = np.abs(shipped.arrays[name] - original.arrays[name]).max()
        assert 0 < diff <= FLOAT16_TOL * np.abs(original.arrays[name]).max(), name
    assert shipped.summary["loss"] == pytest.approx(original.summary["loss"], rel=2.0**-11)
    # the tolerance is tight: a neighbouring checkpoint is far outside it
    far = np.abs(seven.arrays["H"] - original.arrays["H"]).max()
    assert far > 100 * FLOAT16_TOL * np.abs(original.arrays["H"]).max()


@pytest.mark.slow
def test_analyze_finds_the_shipped_record_and_its_loss_and_g_recompute(cifar_npz, tmp_path, capsys):
    """~20 s: ``analyze`` on the shipped folder computes nothing (the float16 file's record
    is keyed by its sha256, the settings and the data subset), and one gradient pass of the
    float16 model on the same 1,000 samples gives the record's loss and ḡ_s = |g_s|²."""
    run = tmp_path / "vgg"
    shutil.copytree(VGG, run)
    before = (run / "analysis.sqlite").read_bytes()
    args = ["--samples", "1000", "--batch-size", "500", "--data-root", str(cifar_npz)]
    assert main(["analyze", str(run), *args, "--device", "cpu", "--no-progress"]) == 0
    assert "0 checkpoints analysed, 1 already in" in capsys.readouterr().out
    assert (run / "analysis.sqlite").read_bytes() == before
    settings = AnalysisSettings(samples=1000, batch_size=500)
    subset = run_data(run, settings, None, str(cifar_npz))
    path = run / "epoch_0008.safetensors"
    rec = ResultStore.reader(run / "analysis.sqlite").get(
        file_sha256(path), settings.key(subset.fingerprint())
    )
    assert rec is not None
    model, _ = load_checkpoint(path)
    model.eval()
    params = list(model.parameters())
    total, grads = 0.0, [torch.zeros_like(p) for p in params]
    for x, y in subset.batches(500):
        loss = F.cross_entropy(model(x), y, reduction="sum")
        grads = [a + b for a, b in zip(grads, torch.autograd.grad(loss, params), strict=True)]
        total += float(loss.detach())
    assert total / 1000 == pytest.approx(rec.summary["loss"], rel=1e-5)
    g_bar = np.array([float((t.double() / 1000).pow(2).sum()) for t in grads])
    assert np.abs(g_bar - rec.arrays["g"]).max() <= 1e-5 * np.abs(rec.arrays["g"]).max()
