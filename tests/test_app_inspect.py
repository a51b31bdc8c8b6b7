"""The Inspect page through AppTest: every kind of file, every refusal, the upload cache."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hessian_lens as hl
from hessian_lens.analyze import AnalysisSettings, analysis_batches, derived
from hessian_lens.checkpoint import save_checkpoint
from hessian_lens.partition import Partition
from hessian_lens.registry import build_model, unregister_model
from hessian_lens.store import Record, ResultStore
from tests.apptools import (
    USER_MODELS,
    chart,
    export_stranger,
    heatmap_z,
    metadata_bomb,
    no_errors,
    open_page,
    user_net,
)

INSPECT = "views/Inspect_checkpoint.py"
SAMPLES = 10  # the smallest the page accepts: the analyses stay fast


def upload(at, name: str, data: bytes):
    at.file_uploader(key="upload").set_value((name, data, "application/octet-stream"))
    return at.run()


def inspect(name: str, data: bytes, samples: int | None = SAMPLES):
    at = upload(open_page(INSPECT), name, data)
    if samples is not None and not at.error and at.get("number_input"):
        at.number_input(key="samples").set_value(samples).run()
    return at


def uploads_dir(tmp_path):
    return tmp_path / "cache" / "uploads"


def independent_H(model, npz, samples=SAMPLES, curvature="hessian") -> np.ndarray:
    """H̄ (or Ḡ) of ``model`` on the page's data, computed here without the page."""
    batches, _ = analysis_batches(str(npz), AnalysisSettings(samples=samples, batch_size=500))
    res = hl.pseudo_hessian(model.eval(), F.cross_entropy, batches, curvature=curvature)
    return res.H.numpy()


def test_run_checkpoint_computes_then_comes_from_the_store(app_env):
    run, npz = app_env
    data = (run / "epoch_0001.pt").read_bytes()
    at = inspect("epoch_0001.pt", data)
    no_errors(at)
    assert [s.value for s in at.success] == [
        "**epoch_0001.pt**: `lenet5` · 62,006 parameters · epoch 1"
    ]
    assert at.button(key="compute").label == "Compute H̄"
    at.button(key="compute").click().run()
    no_errors(at)
    model, _ = hl.load_checkpoint(run / "epoch_0001.pt")
    H = independent_H(model, npz)
    assert chart(at, "inspect-bd-side")["layout"]["annotations"][0]["text"] == "H̄⁻¹ (full)"
    at.radio(key="inspect-view").set_value("full").run()
    np.testing.assert_allclose(heatmap_z(chart(at, "inspect-H")), H, rtol=1e-4, atol=1e-7)
    again = inspect("copy.pt", data)  # same bytes, another name: from the store
    no_errors(again)
    # the data this file names (its run's) is read after a click, then comes the stored result
    assert any("is read when you press Compute" in c.value for c in again.caption)
    again.button(key="compute").click().run()
    assert any("From the store" in c.value for c in again.caption)
    again.radio(key="inspect-view").set_value("full").run()
    np.testing.assert_array_equal(
        heatmap_z(chart(again, "inspect-H")), heatmap_z(chart(at, "inspect-H"))
    )


def _bad_files(tmp_path, stranger_pt2: bytes) -> dict[str, tuple[bytes, str]]:
    torch.manual_seed(0)
    good = build_model("lenet5")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    files = {}
    files["text.pt"] = (b"hello, not a checkpoint", "not a checkpoint")
    files["evil.pt"] = (pickle.dumps({"state_dict": Evil()}, protocol=2), "pickled Python objects")
    path = tmp_path / "arch.pt"
    save_checkpoint(path, good, {"model": {"name": "transformer", "kwargs": {}}})
    files["arch.pt"] = (path.read_bytes(), "unknown architecture 'transformer'")
    path = tmp_path / "shape.pt"
    save_checkpoint(
        path, build_model("lenet5", num_classes=4), {"model": {"name": "lenet5", "kwargs": {}}}
    )
    files["shape.pt"] = (path.read_bytes(), "shape mismatch for fc3.weight")
    nan = build_model("lenet5")
    with torch.no_grad():
        nan.fc2.weight[0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_checkpoint(path, nan, {"model": {"name": "lenet5", "kwargs": {}}})
    files["nan.safetensors"] = (path.read_bytes(), "non-finite weights: fc2.weight")
    path = tmp_path / "good.pt"
    save_checkpoint(path, good, {"model": {"name": "lenet5", "kwargs": {}}})
    files["truncated.pt"] = (path.read_bytes()[:5000], "corrupt or truncated")
    files["bomb.pt"] = (metadata_bomb(), "its metadata is larger than 1 MB as JSON")
    files["notes.txt.pt2"] = (b"plain text", "is not a torch.export archive")
    files["cut.pt2"] = (stranger_pt2[: len(stranger_pt2) // 2], "maybe truncated")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"x": 1}))
    files["other.pt2"] = (buf.getvalue(), "holds an unexpected member 'data.pkl'")
    return files


def test_bad_files_each_get_their_error_naming_the_file_and_are_deleted(
    app_env, tmp_path, stranger
):
    for name, (data, message) in _bad_files(tmp_path, stranger["pt2"]).items():
        at = inspect(name, data, samples=None)
        assert not at.exception, (name, at.exception)
        errors = [e.value for e in at.error]
        assert len(errors) == 1 and message in errors[0], (name, errors)
        assert name in errors[0], (name, errors)
        hashed = hashlib.sha256(data).hexdigest()[:16]
        assert hashed not in errors[0] and "uploads" not in errors[0], (name, errors)
        assert "Traceback" not in errors[0]
        left = sorted(p.name for p in uploads_dir(tmp_path).glob("*"))
        if "unknown architecture" in message or "shape mismatch" in message:
            assert left  # a readable file: kept, another architecture may fit it
            for p in uploads_dir(tmp_path).glob("*"):
                p.unlink()
        else:
            assert left == [], (name, left)  # refused: deleted at once


def test_size_limit_and_a_data_source_that_is_not_there(app_env, tmp_path, monkeypatch):
    run, _ = app_env
    data = (run / "epoch_0000.pt").read_bytes()
    monkeypatch.setenv("HESSIAN_LENS_MAX_UPLOAD_MB", "0.1")
    at = inspect("big.pt", data, samples=None)
    assert [e.value for e in at.error] == [
        f"big.pt is {len(data) / 2**20:,.1f} MB, over the 0.1 MB limit; set "
        "HESSIAN_LENS_MAX_UPLOAD_MB to accept larger files."
    ]
    assert not uploads_dir(tmp_path).exists() or not list(uploads_dir(tmp_path).iterdir())
    monkeypatch.delenv("HESSIAN_LENS_MAX_UPLOAD_MB")
    nowhere = tmp_path / "nowhere"
    cases = [
        ("cifar10", str(nowhere / "deeper" / "cifar10.npz")),
        ("cifar10", str(nowhere / "torchvision-root")),
        ("mnist", str(nowhere / "mnist-root")),
        (f"imagefolder:{nowhere / 'images'}", ""),
        (f"npz:{nowhere / 'data.npz'}", ""),
    ]
    at = inspect("ok.pt", data)
    for spec, source in cases:
        at.text_input(key="data-spec").set_value(spec)
        at.text_input(key="data-source").set_value(source).run()
        assert not at.exception, spec
        errors = [e.value for e in at.error]
        assert len(errors) == 1 and str(nowhere) in errors[0], (spec, source, errors)
        assert not nowhere.exists(), (spec, source)  # nothing created, nothing downloaded


def test_lru_limit_of_the_upload_cache(app_env, tmp_path, monkeypatch):
    files = {}
    for seed, name in enumerate(("a.pt", "b.pt", "c.pt")):
        torch.manual_seed(seed)
        buf = io.BytesIO()
        torch.save(build_model("lenet5").state_dict(), buf)
        files[name] = buf.getvalue()
    size = len(files["a.pt"])
    monkeypatch.setenv("HESSIAN_LENS_CACHE_MB", str(2.5 * size / 2**20))  # two files fit
    hashed = {n: hashlib.sha256(d).hexdigest()[:16] + ".pt" for n, d in files.items()}

    def cached():
        return sorted(p.name for p in uploads_dir(tmp_path).iterdir())

    for step, name in enumerate(("a.pt", "b.pt", "a.pt", "c.pt")):  # a used after b: b oldest
        at = inspect(name, files[name], samples=None)
        assert not at.exception and not at.error
        last_use = (1_700_000_000 + step) * 10**9  # one second apart, whatever the clock's grain
        os.utime(uploads_dir(tmp_path) / hashed[name], ns=(last_use, last_use))
    assert cached() == sorted([hashed["a.pt"], hashed["c.pt"]])
    assert any("Upload cache: 2 files" in c.value for c in at.caption)


def test_a_corrupt_results_cache_is_moved_aside_and_recreated(app_env, tmp_path):
    run, _ = app_env
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "inspect.sqlite").write_bytes(b"this is not SQLite" * 50)
    at = inspect("epoch_0002.pt", (run / "epoch_0002.pt").read_bytes())
    assert not at.exception and not at.error
    aside = list(cache.glob("inspect.sqlite.broken-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b"this is not SQLite" * 50
    assert [w.value for w in at.warning] == [
        f"the results cache was unreadable and was moved to {aside[0]}"
    ]
    assert len(ResultStore.reader(cache / "inspect.sqlite")) == 0  # a new, empty store
    at.button(key="compute").click().run()
    no_errors(at)
    assert len(ResultStore.reader(cache / "inspect.sqlite")) == 1


# ---------------------------------------------------------------------------- architectures
def test_bare_state_dict_with_a_built_in_architecture_chosen(app_env, tmp_path):
    mlp = build_model("mlp", sizes=[3072, 16, 10])
    buf = io.BytesIO()
    torch.save(mlp.state_dict(), buf)
    at = inspect("bare.pt", buf.getvalue(), samples=None)
    assert [e.value[:40] for e in at.error] == ["bare.pt is a bare state_dict and its arc"]
    at.selectbox(key="arch-name").set_value("mlp").run()  # the sizes are read from the weights
    no_errors(at)
    assert [s.value for s in at.success] == [
        "**bare.pt**: `mlp` {'sizes': [3072, 16, 10]} · 49,338 parameters"
    ]


def test_torchvision_resnet18_state_dict_num_classes_inferred(app_env, tmp_path):
    _, npz = app_env
    resnet = build_model("torchvision:resnet18", num_classes=10)
    buf = io.BytesIO()
    torch.save(resnet.state_dict(), buf)
    data = buf.getvalue()
    at = inspect("resnet18.pt", data, samples=None)
    assert "bare state_dict" in at.error[0].value
    at.selectbox(key="arch-name").set_value("torchvision:resnet18").run()
    no_errors(at)
    assert [s.value for s in at.success] == [
        "**resnet18.pt**: `torchvision:resnet18` {'num_classes': 10} · 11,181,642 parameters"
    ]
    assert at.button(key="compute").label == "Compute H̄"
    # H̄ of ResNet-18 takes ~40 s on 2 cores (the browser test computes it): store a record
    # for this file and these settings, and check the page draws it
    part = Partition.canonical(resnet)
    settings = AnalysisSettings(samples=SAMPLES, batch_size=500)
    _, fingerprint = analysis_batches(str(npz), settings)
    gen = torch.Generator().manual_seed(1)
    A = torch.randn(62, 62, generator=gen, dtype=torch.float64)
    arrays, summary = derived(
        A @ A.T / 62 + 0.1 * torch.eye(62, dtype=torch.float64),
        torch.ones(62, dtype=torch.float64),
        part,
    )
    sha = hashlib.sha256(data).hexdigest()
    ResultStore(tmp_path / "cache" / "inspect.sqlite").put(
        Record(
            sha,
            settings.key(fingerprint),
            "resnet18.pt",
            18.0,  # what analyze.checkpoint_epoch reads from the name "resnet18.pt"
            summary,
            {k: np.asarray(v) for k, v in arrays.items()},
        )
    )
    at.number_input(key="samples").set_value(SAMPLES).run()
    no_errors(at)
    assert any("From the store" in c.value for c in at.caption)
    spec = chart(at, "inspect-Hinv")
    np.testing.assert_array_equal(heatmap_z(spec), np.asarray(arrays["Hinv"]))
    blocks = [f"layer{m}.{b}" for m in range(1, 5) for b in (0, 1)]
    assert spec["layout"]["yaxis"]["ticktext"] == ["conv1", *blocks, "fc"]  # a tick per block
    titles = [m.value for m in at.markdown if m.value.startswith("**H̄")]
    assert titles == ["**H̄ (pseudo-Hessian)**", "**H̄⁻¹ (inverse)**"]  # no "epoch 18"


@pytest.fixture(scope="session")
def stranger(tmp_path_factory):
    """A Stranger and its torch.export archive (dynamic batch)."""
    path = tmp_path_factory.mktemp("export") / "stranger.pt2"
    return {"model": export_stranger(path), "pt2": path.read_bytes()}


def test_exported_program_of_a_model_never_seen_needs_no_architecture(app_env, stranger):
    _, npz = app_env
    at = inspect("stranger.pt2", stranger["pt2"])
    no_errors(at)
    assert "A torch.export program: its graph is the architecture." in [c.value for c in at.caption]
    assert not at.get("selectbox") or "arch-name" not in [s.key for s in at.selectbox]
    assert [s.value for s in at.success] == ["**stranger.pt2**: `export` · 9,130 parameters"]
    at.button(key="compute").click().run()
    no_errors(at)
    at.radio(key="inspect-view").set_value("full").run()
    spec = chart(at, "inspect-H")
    assert spec["layout"]["yaxis"]["ticktext"] == [
        "stem.weight",
        "stem.bias",
        "norm.weight",
        "norm.bias",
        "head.1.weight",
        "head.1.bias",
    ]
    np.testing.assert_allclose(
        heatmap_z(spec), independent_H(stranger["model"], npz), rtol=1e-4, atol=1e-7
    )


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    path = tmp_path / "my_models.py"
    path.write_text(USER_MODELS)
    monkeypatch.setenv("HESSIAN_LENS_MODELS", str(path))
    yield path
    unregister_model("tiny-user-net")


def test_checkpoint_of_a_user_registered_model(app_env, user_models, tmp_path):
    _, npz = app_env
    model = user_net()
    path = tmp_path / "user.pt"
    save_checkpoint(
        path, model, {"model": {"name": "tiny-user-net", "kwargs": {"width": 6}}, "epoch": 4}
    )
    at = inspect("user.pt", path.read_bytes())
    no_errors(at)
    assert [s.value for s in at.success] == [
        "**user.pt**: `tiny-user-net` {'width': 6} · 18,508 parameters · epoch 4"
    ]
    at.button(key="compute").click().run()
    no_errors(at)
    at.radio(key="inspect-view").set_value("full").run()
    spec = chart(at, "inspect-H")
    assert spec["layout"]["yaxis"]["ticktext"] == ["1.weight", "1.bias", "3.weight", "3.bias"]
    assert "**H̄ (pseudo-Hessian)** — epoch 4" in [m.value for m in at.markdown]
    np.testing.assert_allclose(heatmap_z(spec), independent_H(model, npz), rtol=1e-4, atol=1e-7)
    # a bare state_dict of it: the picker offers the user's name
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    at = inspect("user-bare.pt", buf.getvalue(), samples=None)
    assert "tiny-user-net" in at.selectbox(key="arch-name").options
    at.selectbox(key="arch-name").set_value("tiny-user-net")
    at.text_input(key="arch-kwargs").set_value('{"width": 6}').run()
    no_errors(at)
    assert at.success[0].value.startswith("**user-bare.pt**: `tiny-user-net`")


def test_a_missing_model_file_is_a_warning_not_a_stop(app_env, tmp_path, monkeypatch):
    run, _ = app_env
    monkeypatch.setenv("HESSIAN_LENS_MODELS", str(tmp_path / "gone.py"))
    at = inspect("epoch_0001.pt", (run / "epoch_0001.pt").read_bytes())
    assert not at.exception and not at.error
    assert [w.value for w in at.warning] == [
        f"HESSIAN_LENS_MODELS: --models {tmp_path / 'gone.py'}: no such Python file."
    ]
    assert at.success[0].value.startswith("**epoch_0001.pt**: `lenet5`")


def test_a_gpt_checkpoint_defaults_to_its_runs_text_and_loss_and_splits_heads(app_env, tmp_path):
    """The shipped gpt-text's last checkpoint: next_token by default, by_head exact."""
    from hessian_lens.losses import next_token
    from tests.conftest import REPO

    ckpt = REPO / "checkpoints" / "gpt-text" / "epoch_0006.safetensors"  # float16
    at = inspect(ckpt.name, ckpt.read_bytes())
    no_errors(at)
    from hessian_lens.runs import load_run

    manifest = load_run(ckpt.parent).manifest
    assert at.text_input(key="data-spec").value == manifest.data["name"]  # the run's corpus
    assert at.selectbox(key="loss").value == "next_token"
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):  # the split is by file: both sides need some
        (corpus / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i} + 1\n" * 20)
    spec = f"text:{corpus}@64"
    at.text_input(key="data-spec").set_value(spec).run()
    at.selectbox(key="partition").set_value("by_head").run()
    at.button(key="compute").click().run()
    no_errors(at)
    model, _ = hl.load_checkpoint(ckpt)
    batches, _ = analysis_batches(None, AnalysisSettings(samples=SAMPLES, batch_size=500), spec)
    part = Partition.by_head(model)
    want = hl.pseudo_hessian(model.eval(), next_token, batches, partition=part).H.numpy()
    assert want.shape == (54, 54)
    got = heatmap_z(chart(at, "inspect-H"))
    order = hl.hierarchy.order(part.labels)
    np.testing.assert_allclose(got, want[np.ix_(order, order)], rtol=1e-5, atol=1e-9)


def test_run_defaults_come_from_the_run_that_wrote_the_checkpoint(tiny_npz):
    from types import SimpleNamespace

    from hessian_lens.ui.inspect import run_defaults

    def run(name, data, loss):
        return SimpleNamespace(name=name, manifest=SimpleNamespace(data=data, loss=loss))

    runs = [
        run("other", {"name": "mnist", "source": "/elsewhere"}, "mse"),
        run("mine", {"name": f"npz:{tiny_npz}", "source": str(tiny_npz)}, "nll"),
    ]
    got = run_defaults({"run": "mine"}, runs)
    assert got == {
        "spec": f"npz:{tiny_npz}",
        "source": str(tiny_npz),
        "loss": "nll",
        "tokenizer": "",
        "run": "mine",
    }
    text = run_defaults({"run": "gpt"}, [run("gpt", {"name": "text:/c@8"}, None)])
    assert text["spec"] == "text:/c@8" and text["loss"] == "next_token"
    unknown = run_defaults({"run": "nobody"}, runs)
    assert unknown["spec"] == "cifar10" and unknown["loss"] == "cross_entropy"
    # a Hugging Face folder: the run that trained with its tokenizer, and the folder's own
    tok = {"tokenizer": {"sha256": "abc"}}
    lm = run("lm", {"name": "text:/c@64", "tokenizer": "tokenizer.json", "corpus": tok}, None)
    lm.path = Path("/runs/lm")
    hf_meta = {"format": "huggingface", "loss": "next_token", "hf": tok}
    got = run_defaults(hf_meta, [*runs, lm], "/cache/x.zip")
    assert (got["spec"], got["loss"], got["tokenizer"]) == (
        "text:/c@64",
        "next_token",
        "/cache/x.zip",
    )
    assert run_defaults(hf_meta, [*runs, lm])["tokenizer"] == "/runs/lm/tokenizer.json"
    stranger = run_defaults({**hf_meta, "hf": {"tokenizer": {"sha256": "zzz"}}}, runs)
    assert stranger["loss"] == "next_token" and stranger["tokenizer"] == ""


def test_the_shipped_hf_folder_zipped_computes_per_head_curvature(app_env, tmp_path):
    """hf-gpt2-text's save_pretrained folder, zipped: by_head and next_token by default, with
    the upload's own tokenizer; H̄ equals the library's on the same tokens."""
    import shutil

    from hessian_lens.inspection import Inspection
    from hessian_lens.losses import next_token
    from tests.conftest import REPO

    folder = REPO / "checkpoints" / "hf-gpt2-text" / "save_pretrained"
    archive = Path(
        shutil.make_archive(str(tmp_path / "hf-gpt2"), "zip", folder.parent, folder.name)
    )
    at = inspect(archive.name, archive.read_bytes())
    no_errors(at)
    assert at.success[0].value.startswith("**hf-gpt2.zip**: `hf:GPT2LMHeadModel`")
    assert at.selectbox(key="partition").value == "by_head"
    assert at.selectbox(key="loss").value == "next_token"
    assert at.text_input(key="tokenizer").value.endswith(".zip")  # the upload's own
    corpus = tmp_path / "corpus.py"
    corpus.write_text("def f(x):\n    return x * 2 + 1\n" * 300)
    spec = f"text:{corpus}@64"
    at.text_input(key="data-spec").set_value(spec).run()
    at.button(key="compute").click().run()
    no_errors(at)
    model, _ = Inspection.open(folder).build()
    settings = AnalysisSettings(samples=SAMPLES, batch_size=500)
    batches, _ = analysis_batches(None, settings, spec, tokenizer=str(folder))
    part = Partition.by_head(model)
    want = hl.pseudo_hessian(model, next_token, batches, partition=part).H.numpy()
    assert want.shape == (54, 54)
    order = hl.hierarchy.order(part.labels)
    got = heatmap_z(chart(at, "inspect-H"))
    np.testing.assert_allclose(got, want[np.ix_(order, order)], rtol=1e-5, atol=1e-9)


def test_the_gauss_newton_is_offered_and_computed(app_env):
    """Curvature 'Gauss-Newton G': the page draws G_bar = U^T G U of the library."""
    run, npz = app_env
    at = inspect("epoch_0001.pt", (run / "epoch_0001.pt").read_bytes())
    at.selectbox(key="curvature").set_value("ggn").run()
    assert not [c for c in at.checkbox if c.key == "order3"]  # no D³ for the GGN
    at.button(key="compute").click().run()
    no_errors(at)
    at.radio(key="inspect-view").set_value("full").run()
    model, _ = hl.load_checkpoint(run / "epoch_0001.pt")
    G = independent_H(model, npz, curvature="ggn")
    np.testing.assert_allclose(heatmap_z(chart(at, "inspect-H")), G, rtol=1e-4, atol=1e-7)
    assert np.linalg.eigvalsh(G).min() > -1e-6 * np.abs(G).max()  # PSD, unlike H̄ here
