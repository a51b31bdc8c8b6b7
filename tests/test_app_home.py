"""The home page (run cards) through AppTest: broken folders, filter and pages, 500 runs."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time

import pytest

from hessian_lens.runs import run_folders
from hessian_lens.ui import home
from tests.apptools import (
    cards,
    chart,
    fake_partition,
    make_fake_run,
    no_errors,
    open_page,
)
from tests.conftest import REPO

HOME = "app.py"
#: The runs shipped in checkpoints/, listed first by the home page (sorted by folder name).
SHIPPED = [p.name for p in run_folders(REPO / "checkpoints")]
NOT_A_STORE = "is not a Hessian Lens store"

#: folder -> (card title, the warning its card shows; None: none)
BROKEN = {
    "b-checkpoints-only": ("b-checkpoints-only", None),
    "c-bad-json": ("c-bad-json", "run.json unreadable: run.json is not valid JSON"),
    "d-list-json": ("d-list-json", "run.json holds a list, not an object"),
    "e-int-name": ("e-int-name", "run.json: 'name' is a int; ignored"),
    "f-no-epoch": ("f", "1 history entries without a numeric epoch were skipped"),
    "g-model-list": ("g-model-list", "run.json: 'model' is a list; ignored"),
    "h-garbage-store": (
        "h",
        f"Part of this run cannot be shown: {{}}/analysis.sqlite {NOT_A_STORE}",
    ),
    "i-foreign-store": (
        "i",
        f"Part of this run cannot be shown: {{}}/analysis.sqlite {NOT_A_STORE}",
    ),
    "j-bad-settings": ("j-bad-settings", None),
    "k-odd-types": ("k", "run.json: 1 history entries without a numeric epoch were skipped"),
    "m-summary-list": ("m", "Part of this run cannot be shown: a stored record's summary is not"),
    "n-text-epoch": ("n", "Part of this run cannot be shown"),
}


def _write(folder, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(text if isinstance(text, str) else json.dumps(text))
    return folder


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A good analysed run among run folders broken in every way seen so far."""
    root = tmp_path_factory.mktemp("zoo")
    part = fake_partition("lenet5")
    make_fake_run(root / "a-good", part)
    (root / "b-checkpoints-only").mkdir()
    (root / "b-checkpoints-only" / "epoch_0000.pt").write_bytes(b"not read by the home page")
    (root / "b-checkpoints-only" / "epoch_0001.pt").write_bytes(b"")
    _write(root / "c-bad-json", "{not json")
    _write(root / "d-list-json", "[1, 2]")
    _write(root / "e-int-name", {"name": 5, "history": [{"epoch": 0, "train_loss": 1.0}]})
    _write(
        root / "f-no-epoch",
        {"name": "f", "history": [{"train_loss": 9.0}, {"epoch": 1, "train_loss": 0.5}]},
    )
    _write(root / "g-model-list", {"model": ["lenet5"], "history": []})
    _write(root / "h-garbage-store", {"name": "h"})
    (root / "h-garbage-store" / "analysis.sqlite").write_bytes(b"garbage" * 100)
    _write(root / "i-foreign-store", {"name": "i"})
    db = sqlite3.connect(root / "i-foreign-store" / "analysis.sqlite")
    db.execute("CREATE TABLE results (x)")
    db.commit()
    db.close()
    make_fake_run(root / "j-bad-settings", part, settings={"samples": "many", "partition": 3})
    _write(
        root / "k-odd-types",
        {
            "name": "k",
            "model": {"name": "lenet5", "kwargs": [1]},
            "data": {"name": ["x"], "train_size": "50000"},
            "optimizer": {"name": {"a": 1}, "lr": [1], "momentum": True},
            "batch_size": {"x": 1},
            "init": 5,
            "history": [{"epoch": 0, "train_loss": "nan", "test_acc": None}, {"epoch": 1e300}],
        },
    )
    for name, column, value in (
        ("m-summary-list", "summary", "[1]"),
        ("n-text-epoch", "epoch", "abc"),
    ):
        run = make_fake_run(root / name, part, epochs=(0,), manifest={"name": name[0]})
        db = sqlite3.connect(run / "analysis.sqlite")
        db.execute(f"UPDATE results SET {column} = ?", (value,))
        db.commit()
        db.close()
    return root


def test_a_broken_run_folder_warns_on_its_own_card_and_every_card_renders(
    app_env, zoo, monkeypatch
):
    monkeypatch.setenv("HESSIAN_LENS_RUNS", str(zoo))
    monkeypatch.setattr(home, "PAGE_SIZE", 100)
    at = open_page(HOME)
    no_errors(at)
    shown = cards(at)
    assert set(shown) == {*SHIPPED, "a-good"} | {title for title, _ in BROKEN.values()}
    for folder, (title, warning) in BROKEN.items():
        warnings = shown[title]["warning"]
        if warning is None:
            assert warnings == [], (folder, warnings)
        else:
            assert len(warnings) == 1 and warning.format(zoo / folder) in warnings[0], (
                folder,
                warnings,
            )
    good = shown["a-good"]
    assert good["warning"] == [] and good["charts"] == [f"curves-{zoo / 'a-good'}"]
    assert any(
        "**Analysed** 3 checkpoints (epochs 0–2): canonical · 64 samples" in m
        for m in good["markdown"]
    )
    curves = chart(at, f"curves-{zoo / 'a-good'}")
    history = json.loads((zoo / "a-good" / "run.json").read_text())["history"]
    assert curves["data"][0]["name"] == "train loss"
    assert curves["data"][0]["y"] == [h["train_loss"] for h in history]
    # what each broken card still says
    assert any("· 2 checkpoints" in m for m in shown["b-checkpoints-only"]["markdown"])
    assert any("Not analysed yet" in i for i in shown["b-checkpoints-only"]["info"])
    assert chart(at, f"curves-{zoo / 'f-no-epoch'}")["data"][0]["y"] == [0.5]
    assert any("many samples" in m for m in shown["j-bad-settings"]["markdown"])
    odd = " ".join(shown["k"]["markdown"])
    assert "**Data** ?" in odd and "**Training** ?" in odd and "[" not in odd
    assert "training images" not in odd and "init" not in odd


def test_broken_stores_and_settings_on_the_interactions_page(app_env, zoo, monkeypatch):
    monkeypatch.setenv("HESSIAN_LENS_RUNS", str(zoo))
    at = open_page("views/Layer_interactions.py", zoo / "h-garbage-store")
    assert not at.exception
    assert [e.value for e in at.error] == [
        f"{zoo / 'h-garbage-store' / 'analysis.sqlite'} {NOT_A_STORE} (an SQLite file of another "
        "program, or not SQLite at all); it was left as it is. Move it away, or analyse into "
        "another folder."
    ]
    at = open_page("views/Layer_interactions.py", zoo / "j-bad-settings")
    no_errors(at)
    assert at.selectbox(key="settings_select").format_func(0) == "3 · many samples · ? · seed 0"
    assert len(at.get("plotly_chart")) == 2


def test_bad_environment_settings_stop_with_one_message(app_env, monkeypatch):
    monkeypatch.setenv("HESSIAN_LENS_CACHE_MB", "lots")
    at = open_page(HOME)
    assert not at.exception
    assert [e.value for e in at.error] == [
        "Settings: HESSIAN_LENS_CACHE_MB='lots' is not a size: give a number of megabytes "
        "between 0 and 1,048,576 (e.g. HESSIAN_LENS_CACHE_MB=2000)."
    ]
    assert not cards(at)


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    for i in range(23):
        _write(
            root / f"run-{i:02d}",
            {"name": f"run-{i:02d}", "history": [{"epoch": 0, "train_loss": 1.0 + i}]},
        )
    return root


def test_filter_and_pages_beyond_ten_runs(app_env, many, monkeypatch):
    monkeypatch.setenv("HESSIAN_LENS_RUNS", str(many))
    at = open_page(HOME)
    no_errors(at)
    everything = SHIPPED + [f"run-{i:02d}" for i in range(23)]
    n, pages = len(everything), -(-len(everything) // 10)
    assert list(cards(at)) == everything[:10]
    assert [c.value for c in at.caption if "runs" in c.value] == [f"{n} of {n} runs"]
    page = at.number_input(key="home-page")
    assert page.label == f"Page (of {pages})" and page.max == pages
    page.set_value(pages).run()
    assert list(cards(at)) == everything[(pages - 1) * 10 :]
    at.text_input(key="home-filter").set_value("RUN-2").run()  # case-insensitive
    no_errors(at)
    assert list(cards(at)) == ["run-20", "run-21", "run-22"]
    assert [c.value for c in at.caption if "runs" in c.value] == [f"3 of {n} runs"]
    assert at.number_input(key="home-page").value == 1  # a new page count starts on page 1
    at.text_input(key="home-filter").set_value(many.name).run()  # the folder matches too
    assert list(cards(at)) == everything[len(SHIPPED) : len(SHIPPED) + 10]
    at.text_input(key="home-filter").set_value("no such run").run()
    assert cards(at) == {} and [c.value for c in at.caption if "runs" in c.value] == [
        f"0 of {n} runs"
    ]
    no_errors(at)


def test_five_hundred_runs_are_paged(app_env, tmp_path, monkeypatch):
    root = tmp_path / "five-hundred"
    first = make_fake_run(root / "run-000", fake_partition("lenet5"), epochs=range(11))
    manifest = json.loads((first / "run.json").read_text())
    for i in range(1, 500):
        shutil.copytree(first, root / f"run-{i:03d}")
        (root / f"run-{i:03d}" / "run.json").write_text(
            json.dumps({**manifest, "name": f"run-{i:03d}"})
        )
    monkeypatch.setenv("HESSIAN_LENS_RUNS", str(root))
    t0 = time.perf_counter()
    at = open_page(HOME)
    cold = time.perf_counter() - t0
    no_errors(at)
    n = len(SHIPPED) + 500
    assert [c.value for c in at.caption if "runs" in c.value] == [f"{n} of {n} runs"]
    assert len(cards(at)) == 10
    t0 = time.perf_counter()
    at.number_input(key="home-page").set_value(-(-n // 10)).run()
    warm = time.perf_counter() - t0
    every = SHIPPED + [f"run-{i:03d}" for i in range(500)]
    assert list(cards(at)) == every[(-(-n // 10) - 1) * 10 :]
    print(f"home page with {n} runs: {cold:.2f} s first render, {warm:.2f} s to the last page")


def test_a_link_names_the_run(app_env):
    run, _ = app_env
    page = "views/Layer_interactions.py"
    at = open_page(page, query={"run": "tiny-run"})
    no_errors(at)
    assert at.selectbox(key="run_select").value == str(run)
    assert any(m.value.startswith("**tiny-run** · 3 analysed") for m in at.markdown)
    at = open_page(page, query={"run": "no-such-run"})  # unknown: the demo run (DEMO_RUN)
    assert (
        at.selectbox(key="run_select").format_func(at.selectbox(key="run_select").value)
        == "lenet5-cifar10"
    )


def test_the_shipped_transformer_cards_read_as_words(app_env, monkeypatch):
    """gpt-text: windows of text, its architecture and portable corpus in words; vit-cifar10:
    its checkpoints kept and analysed counted alike on the card (one analysis per epoch)."""
    monkeypatch.setattr(home, "PAGE_SIZE", 100)
    at = open_page(HOME)
    no_errors(at)
    shown = cards(at)
    gpt = " ".join(shown["gpt-text"]["markdown"])
    assert "**Architecture** gpt · layers 2, heads 4, width 64, context 64" in gpt
    assert "66,610 training windows of 64 tokens" in gpt and "images" not in gpt
    assert "168 files, 4.7 MB (stdlib/*.py, Python 3.11.7)" in gpt
    assert "{" not in gpt and "/root" not in gpt
    assert "**Training** adam (lr 0.002, betas 0.9/0.999) · batch 32" in gpt
    vit = " ".join(shown["vit-cifar10"]["markdown"])
    assert "3 checkpoints kept (13 analysed" in vit and "**Analysed** 13 checkpoints" in vit
