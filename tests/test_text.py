"""Text and token data: byte tokens, windows, next-token targets, splits, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from hessian_lens.data import DataError, DataNotFoundError, check_model_fits, load_dataset
from hessian_lens.models import GPT
from hessian_lens.text import held_out


def test_one_file_windows_targets_and_tail_split(tmp_path):
    text = "".join(chr(97 + i % 26) for i in range(1000)) + "é"  # 1002 UTF-8 bytes
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    train = load_dataset(f"text:{tmp_path / 'a.txt'}@9")
    test = load_dataset(f"text:{tmp_path / 'a.txt'}@9", train=False)
    raw = text.encode()
    assert train.corpus["bytes"] == 1002 and train.corpus["bytes_test"] == 100
    assert len(train) == (902 - 1) // 9 and len(test) == (100 - 1) // 9
    x, y = train.prepare(torch.tensor([0, 3]))
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (2, 9)
    assert bytes(x[1].tolist()) == raw[27:36] and bytes(y[1].tolist()) == raw[28:37]
    assert bytes(test.prepare(torch.tensor([len(test) - 1]))[1][0].tolist()) in raw[902:]
    assert train.shape == (9,) and train.vocab_size == 256


def test_folder_split_by_file_is_deterministic_and_skips_non_text(tmp_path):
    names = [f"pkg/m{i}.py" for i in range(40)]
    for i, name in enumerate(names):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(f"x = {i}\n" * 20)
    (tmp_path / "pkg" / "blob.bin").write_bytes(b"\xff\xfe\0\1" * 50)
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ignored\n" * 99)
    train = load_dataset(f"text:{tmp_path}@16")
    corpus = train.corpus
    expect_test = sum(held_out(n) for n in names)
    assert 0 < expect_test < 40
    assert corpus["files_test"] == expect_test and corpus["files_train"] == 40 - expect_test
    assert corpus["files_skipped_not_utf8"] == 1
    globbed = load_dataset(f"text:{tmp_path}/**/*.py@16")
    assert globbed.corpus["files"] == 40 and globbed.corpus["files_skipped_not_utf8"] == 0
    assert torch.equal(globbed.windows, train.windows)
    assert held_out("pkg/m3.py") == held_out("pkg/m3.py")


def test_token_arrays_from_npz_and_safetensors(tmp_path):
    tokens = np.arange(500, dtype=np.int32) % 37
    np.savez(tmp_path / "t.npz", tokens=tokens)
    train = load_dataset(f"npz:{tmp_path / 't.npz'}@7")
    assert train.vocab_size == 37 and len(train) == (450 - 1) // 7
    assert train.prepare(torch.tensor([1]))[0].tolist() == [[(7 + i) % 37 for i in range(7)]]
    save_file(
        {
            "train_tokens": tokens[:300].astype(np.int64),
            "test_tokens": tokens[300:].astype(np.int64),
        },
        str(tmp_path / "t.safetensors"),
    )
    test = load_dataset(f"{tmp_path / 't.safetensors'}@7", train=False)
    assert len(test) == (200 - 1) // 7 and test.corpus["split"] == "train_tokens / test_tokens"


def test_text_batches_subset_and_fingerprint(tmp_path):
    (tmp_path / "a.txt").write_text("hello world. " * 200)
    data = load_dataset(f"text:{tmp_path / 'a.txt'}@8")
    sub = data.subset(10, seed=1)
    assert len(sub) == 10 and sub.fingerprint() == data.subset(10, seed=1).fingerprint()
    seen = torch.cat([x for x, _ in sub.batches(4, shuffle=True, seed=2)])
    assert seen.shape == (10, 8)
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, sub.x.long().tolist()))


def test_text_errors_are_one_clear_line(tmp_path):
    (tmp_path / "latin.txt").write_bytes("café".encode("latin-1") * 100)
    with pytest.raises(DataError, match="not UTF-8 text"):
        load_dataset(f"text:{tmp_path / 'latin.txt'}")
    with pytest.raises(DataNotFoundError, match="no such file or folder"):
        load_dataset(f"text:{tmp_path / 'missing'}")
    (tmp_path / "short.txt").write_text("tiny")
    with pytest.raises(DataError, match="fewer than one window"):
        load_dataset(f"text:{tmp_path / 'short.txt'}@64")
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 3, 4, 4), np.uint8), y=np.zeros(2, np.int64))
    with pytest.raises(DataError, match="only applies to text"):
        load_dataset(f"npz:{tmp_path / 'x.npz'}@8")


def test_model_checks_for_token_windows(tmp_path):
    (tmp_path / "a.txt").write_text("abcdefgh" * 300)
    data = load_dataset(f"text:{tmp_path / 'a.txt'}@16")
    check_model_fits(GPT(context=16, layers=1, heads=2, width=8), data)
    with pytest.raises(DataError, match="context >= 16"):
        check_model_fits(GPT(context=8, layers=1, heads=2, width=8), data)
    with pytest.raises(DataError, match="vocab_size=256"):
        check_model_fits(GPT(vocab_size=100, context=16, layers=1, heads=2, width=8), data)


def test_a_corpus_over_the_data_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("HESSIAN_LENS_MAX_DATA_MB", "0.001")  # 1,048 bytes
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "a.txt").write_text("x = 1\n" * 400)
    for spec in (tmp_path / "big" / "a.txt", tmp_path / "big"):
        with pytest.raises(DataError, match="over the 0 MB data limit"):
            load_dataset(f"text:{spec}")


def _fake_stdlib(root, monkeypatch):
    """A standard library of 12 top-level modules and a package of 12, read as text:stdlib."""
    from hessian_lens import text

    (root / "json").mkdir()
    for i in range(12):
        (root / f"mod{i}.py").write_text(f"x = {i}\n" * 40)
        (root / "json" / f"mod{i}.py").write_text(f"y = {i}\n" * 40)
    (root / "site-packages").mkdir()
    (root / "site-packages" / "other.py").write_text("z = 1\n" * 40)
    monkeypatch.setattr(text, "stdlib_root", lambda: root)
    text._read_corpus.cache_clear()


def test_stdlib_is_the_running_pythons_recorded_relative_to_it(tmp_path, monkeypatch):
    import platform

    _fake_stdlib(tmp_path, monkeypatch)
    data = load_dataset("text:stdlib@8", train=True)
    test = load_dataset("text:stdlib@8", train=False)
    corpus = data.corpus
    assert corpus["path"] == "stdlib/*.py" and corpus["python"] == platform.python_version()
    assert str(tmp_path) not in str(corpus)  # no path of this machine
    assert corpus["files"] == 12  # the top-level modules only: no package, no site-packages
    assert data.source == "text:stdlib:train" and test.source == "text:stdlib:test"
    same = load_dataset(f"text:{tmp_path}/*.py@8", train=True)  # the same files, by their path
    assert data.fingerprint() == same.fingerprint()
    inside = load_dataset("text:stdlib/json/*.py@8", train=True)
    assert inside.corpus["path"] == "stdlib/json/*.py" and inside.corpus["files"] == 12
    everything = load_dataset("text:stdlib/**/*.py@8", train=True)
    assert everything.corpus["files"] == 24  # the installed packages are no part of it


def test_stdlib_globs_stay_inside_the_standard_library(tmp_path, monkeypatch):
    _fake_stdlib(tmp_path, monkeypatch)
    for spec in ("text:stdlib/../*.py", "text:stdlib/json/../../*.py"):
        with pytest.raises(DataError, match="inside the standard library"):
            load_dataset(spec, train=True)


def test_the_shipped_gpt_run_names_its_corpus_portably():
    """gpt-text's run.json names text:stdlib, and it reads back as the run's own corpus."""
    import json
    import platform

    from tests.conftest import REPO

    raw = (REPO / "checkpoints" / "gpt-text" / "run.json").read_text()
    manifest = json.loads(raw)
    assert "/root/" not in raw and "pyenv" not in raw and "/work/" not in raw
    data = manifest["data"]
    assert data["name"] == "text:stdlib@64" and data["corpus"]["path"] == "stdlib/*.py"
    if platform.python_version() != data["corpus"]["python"]:
        pytest.skip(f"the corpus is Python {data['corpus']['python']}'s standard library")
    got = load_dataset(data["name"], train=True)
    assert len(got) == data["train_size"]
    recorded = {k: v for k, v in data["corpus"].items()}
    assert {k: got.corpus[k] for k in recorded} == recorded
