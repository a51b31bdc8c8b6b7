"""Hugging Face save_pretrained folders and zips: the CLI, per-head H̄, tokenised text, and
every hostile folder refused in one line (bounded, nothing written outside the work folder)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
import zipfile
from pathlib import Path

import pytest
import torch

import hessian_lens as hl
from hessian_lens import cli, hf_folders
from hessian_lens.analyze import AnalysisSettings, analysis_batches
from hessian_lens.inspection import Inspection
from hessian_lens.registry import build_model
from hessian_lens.store import ResultStore
from hessian_lens.tokenized import load_tokenized, train_bpe

pytest.importorskip("transformers")

CONFIG = {
    "n_layer": 1,
    "n_head": 2,
    "n_embd": 8,
    "n_positions": 8,
    "vocab_size": 300,
    "bos_token_id": 0,
    "eos_token_id": 0,
}
TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x = 1\n" * 40


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A tiny GPT-2 folder written by save_pretrained, with a BPE tokenizer of its text."""
    root = tmp_path_factory.mktemp("hf")
    (root / "corpus.txt").write_text(TEXT)
    train_bpe(f"text:{root / 'corpus.txt'}", 300, root / "tokenizer.json")
    torch.manual_seed(0)
    model = build_model("hf:gpt2", **CONFIG)
    return hf_folders.save_folder(model, root / "tiny-gpt2", tokenizer=str(root / "tokenizer.json"))


def one_line(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def copy(saved: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "model"))


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_cli_inspects_a_save_pretrained_folder_and_its_weights_file(saved, capsys):
    assert cli.main(["inspect", str(saved)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["architecture"]["name"] == "hf:GPT2LMHeadModel"
    assert out["architecture"]["kwargs"]["n_embd"] == 8
    assert out["parameters"] == sum(
        p.numel() for p in build_model("hf:gpt2", **CONFIG).parameters()
    )
    assert out["meta"]["hf"]["tokenizer"]["sha256"]
    assert cli.main(["inspect", str(saved / "model.safetensors")]) == 0  # the folder's weights
    assert json.loads(capsys.readouterr().out)["sha256"] == out["sha256"]


def test_folder_and_zip_give_per_head_curvature_on_tokenised_text(saved, tmp_path):
    archive = shutil.make_archive(str(tmp_path / "tiny"), "zip", saved.parent, saved.name)
    cache = tmp_path / "cache"
    ins = Inspection.open(archive, max_bytes=10**8, workdir=cache)
    assert os.listdir(cache) == []  # inflated for reading, then deleted
    settings = AnalysisSettings(samples=6, partition="by_head", batch_size=6, loss="next_token")
    spec = f"text:{saved.parent / 'corpus.txt'}@8"
    batches, fingerprint = analysis_batches(None, settings, spec, tokenizer=str(ins.tokenizer))
    store = ResultStore(tmp_path / "inspect.sqlite")
    record = ins.analyze(store, settings, batches, fingerprint)
    assert "transformer.h.0.attn.q.head1" in record.summary["labels"]
    model, _ = Inspection.open(saved).build()
    part = hl.Partition.by_head(model)
    want = hl.pseudo_hessian(model, hl.get_loss("next_token"), batches, partition=part)
    assert torch.allclose(torch.as_tensor(record.arrays["H"]), want.H.double(), rtol=1e-5)


def test_tokenised_text_records_the_tokenizer_and_the_split(saved):
    corpus = saved.parent / "corpus.txt"
    train = load_tokenized(f"text:{corpus}", saved, True, 8)
    test = load_tokenized(f"text:{corpus}", saved / "tokenizer.json", False, 8)
    facts = train.corpus
    assert facts["tokenizer"]["sha256"] == test.corpus["tokenizer"]["sha256"]
    assert facts["split"].startswith("last 10%") and facts["tokens_test"] > 0
    assert 256 < train.vocab_size <= 300 and int(train.windows.max()) < train.vocab_size
    assert facts["tokens_train"] < facts["bytes_train"]  # BPE merged bytes


def test_train_hf_gpt2_on_tokenised_text_and_analyse_it(saved, tmp_path, capsys):
    corpus = saved.parent / "corpus.txt"
    run = tmp_path / "run"
    kwargs = json.dumps(CONFIG)
    argv = ["train", "--model", "hf:gpt2", "--model-kwargs", kwargs, "--data", f"text:{corpus}@8"]
    argv += ["--tokenizer", str(saved), "--loss", "next_token", "--optimizer", "adam"]
    argv += ["--epochs", "1", "--batch-size", "8", "--out", str(run), "--no-progress"]
    assert cli.main(argv) == 0
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["model"]["name"] == "hf:gpt2"
    assert (
        manifest["data"]["corpus"]["tokenizer"]["sha256"]
        == hf_folders._tokenizer_facts(saved / "tokenizer.json", "x")["sha256"]
    )
    analyze = ["analyze", str(run), "--samples", "8", "--partition", "by_head", "--no-progress"]
    assert cli.main(analyze) == 0
    recs = ResultStore(run / "analysis.sqlite").records()
    assert len(recs) == 2 and "transformer.h.0.attn.v.head0" in recs[0].summary["labels"]
    other = tmp_path / "other.json"
    train_bpe(f"text:{corpus}", 280, other)
    err = one_line(capsys, ["analyze", str(run), "--tokenizer", str(other)])
    assert "is not the one the run was trained with" in err


# ---------------------------------------------------------------------------- hostile
def test_huge_config_is_refused_before_anything_is_built(saved, tmp_path, capsys):
    folder = copy(saved, tmp_path)
    edit_config(folder, n_embd=2**20, n_layer=4096)
    t0 = time.perf_counter()
    err = one_line(capsys, ["inspect", str(folder)])
    assert "over the limit" in err and time.perf_counter() - t0 < 10


@pytest.mark.parametrize(
    "changes,words",
    [
        ({"model_type": "evil-net"}, "unknown model_type 'evil-net'"),
        ({"auto_map": {"AutoModel": "modeling_evil.Evil"}}, "custom code (auto_map)"),
        ({"trust_remote_code": True}, "custom code (trust_remote_code)"),
        ({"n_embd": 16}, "does not fit config.json"),
        ({"architectures": ["GPT2DoubleHeadsModel"]}, "unknown Hugging Face model"),
    ],
)
def test_bad_configs_get_one_line(saved, tmp_path, capsys, changes, words):
    folder = copy(saved, tmp_path)
    edit_config(folder, **changes)
    assert words in one_line(capsys, ["inspect", str(folder)])


def test_symlinks_and_pickles_in_the_folder_are_refused(saved, tmp_path, capsys):
    folder = copy(saved, tmp_path)
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.json").symlink_to("/etc/passwd")
    assert "is a symbolic link" in one_line(capsys, ["inspect", str(folder)])
    (folder / "tokenizer.json").unlink()
    os.replace(folder / "model.safetensors", folder / "pytorch_model.bin")
    assert "never unpickled" in one_line(capsys, ["inspect", str(folder)])


def zip_with(path: Path, saved: Path, extra: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name in ("config.json", "model.safetensors"):
            z.write(saved / name, f"m/{name}")
        for info, data in extra:
            z.writestr(info, data)
    return path


def refuse_zip(archive: Path, tmp_path: Path, words: str, max_bytes: int = 10**8) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(hl.CheckpointError, match=words) as err:
        Inspection.open(archive, max_bytes=max_bytes, workdir=cache)
    assert len(str(err.value).splitlines()) == 1
    assert os.listdir(cache) == [] and sorted(p.name for p in tmp_path.iterdir()) == before


def test_zip_entries_with_dotdot_or_links_are_refused(saved, tmp_path):
    refuse_zip(
        zip_with(tmp_path / "a.zip", saved, [("m/../../evil.txt", b"x")]), tmp_path, r"'\.\.'"
    )
    link = zipfile.ZipInfo("m/tokenizer.json")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    refuse_zip(
        zip_with(tmp_path / "b.zip", saved, [(link, b"/etc/passwd")]), tmp_path, "symbolic link"
    )


def test_zip_bombs_are_refused_before_inflating(saved, tmp_path):
    bomb = zip_with(tmp_path / "bomb.zip", saved, [("m/tokenizer.json", b"\0" * 20_000_000)])
    assert bomb.stat().st_size < 200_000
    refuse_zip(bomb, tmp_path, "would inflate to", max_bytes=2_000_000)


def test_a_zip_member_lying_about_its_size_is_never_inflated_beyond_it(saved, tmp_path):
    """The declared size is patched down: reading stops there and the CRC refuses it."""
    archive = zip_with(tmp_path / "liar.zip", saved, [])
    data = bytearray(archive.read_bytes())
    size = (saved / "model.safetensors").stat().st_size
    raw = size.to_bytes(4, "little")
    small = (100).to_bytes(4, "little")
    assert data.count(raw) == 2  # the local header and the central directory
    archive.write_bytes(bytes(data).replace(raw, small))
    refuse_zip(archive, tmp_path, "corrupt|does not fit|truncated")


def test_a_fifo_named_zip_is_never_opened(tmp_path):
    fifo = tmp_path / "model.zip"
    os.mkfifo(fifo)
    with pytest.raises(hl.CheckpointError, match="model.zip is not a regular file"):
        Inspection.open(fifo, workdir=tmp_path / "cache")  # opening it would block
