"""The Hugging Face callback: a real Trainer on a tiny GPT-2 built from a config (no download)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import hessian_lens as hl
from hessian_lens.store import ResultStore

transformers = pytest.importorskip("transformers")
from hessian_lens.integrations.huggingface import HessianLensCallback  # noqa: E402

SEQ = 8


def tiny_gpt2():
    config = transformers.GPT2Config(
        vocab_size=40,
        n_positions=SEQ,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


def token_batches(n: int, seed: int) -> list[dict]:
    ids = torch.randint(0, 40, (n, SEQ), generator=torch.Generator().manual_seed(seed))
    return [{"input_ids": row, "labels": row.clone()} for row in ids]


def train(tmp_path, epochs=2, **kwargs):
    model = tiny_gpt2()
    rows = token_batches(6, seed=1)
    analysis = [
        {
            "input_ids": torch.stack([r["input_ids"] for r in rows[:4]]),
            "labels": torch.stack([r["labels"] for r in rows[:4]]),
        }
    ]
    cb = HessianLensCallback(tmp_path / "run", analysis, **kwargs)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        per_device_train_batch_size=3,
        num_train_epochs=epochs,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        max_grad_norm=0.0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, callbacks=[cb])
    trainer.train()
    return model, analysis, tmp_path / "run"


def test_trainer_writes_the_recorder_run_folder_with_the_models_own_loss(tmp_path):
    model, analysis, run = train(tmp_path)
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["loss"] == "model" and manifest["model"]["name"] == "user:GPT2LMHeadModel"
    assert [h["epoch"] for h in manifest["history"]] == [0, 1, 2]
    assert "train_loss" in manifest["history"][-1]
    recs = ResultStore(run / "analysis.sqlite").records()
    assert [r.epoch for r in recs] == [0, 1, 2]
    want = hl.pseudo_hessian(model, None, analysis)  # the final weights
    np.testing.assert_allclose(recs[-1].arrays["H"], want.H.double().numpy(), rtol=1e-4, atol=1e-8)
    assert recs[-1].summary["loss"] == pytest.approx(want.loss, rel=1e-6)


class Snapshots(transformers.TrainerCallback):
    """The gradient before each optimizer step and the weights after it."""

    def __init__(self) -> None:
        self.grads, self.states = {}, {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        params = [p for p in model.parameters() if p.requires_grad]
        self.grads[state.global_step + 1] = [p.grad.detach().clone() for p in params]

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.states[state.global_step] = {k: v.clone() for k, v in model.state_dict().items()}


def test_every_n_steps_with_the_step_gradient_opens_on_every_page(tmp_path, monkeypatch):
    import streamlit as st

    from tests.apptools import chart_keys, no_errors, open_page
    from tests.test_lightning import PAGES

    snaps = Snapshots()
    original = transformers.Trainer.__init__

    def with_snapshots(self, *a, callbacks=None, **kw):
        original(self, *a, callbacks=[*callbacks, snaps], **kw)

    monkeypatch.setattr(transformers.Trainer, "__init__", with_snapshots)
    model, analysis, run = train(tmp_path, epochs=1, every_n_steps=1, step_gradient=True)
    recs = ResultStore(run / "analysis.sqlite").records()
    assert [r.epoch for r in recs] == [0.5, 1] and recs[0].settings["direction"] == "given"
    model.load_state_dict(snaps.states[1])  # after step 1, u = step 1's gradient
    want = hl.pseudo_hessian(model, None, analysis, direction=snaps.grads[1])
    np.testing.assert_allclose(recs[0].arrays["H"], want.H.double().numpy(), rtol=1e-4, atol=1e-8)

    monkeypatch.setenv("HESSIAN_LENS_RUNS", str(run))
    monkeypatch.setenv("HESSIAN_LENS_CACHE", str(tmp_path / "cache"))
    st.cache_data.clear()
    for page in PAGES:
        at = open_page(page, run)
        no_errors(at)
        if page == "views/Layer_interactions.py":
            assert "interactions-H" in chart_keys(at)


# ---------------------------------------------------------------------------- README recipe
def readme_recipe(name: str) -> str:
    """The python block after ``<!-- recipe: NAME ... -->`` in the README."""
    from tests.conftest import REPO

    text = (REPO / "README.md").read_text()
    start = text.index(f"<!-- recipe: {name}")
    start = text.index("```python\n", start) + len("```python\n")
    return text[start : text.index("```", start)]


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[PAD]", "[UNK]", "the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]"
    )


def test_the_readme_token_level_recipes_run_and_are_exact(tmp_path, monkeypatch):
    from tests.hf_tiny import bert_tokens, gpt2
    from tests.oracle import oracle_hvp

    monkeypatch.chdir(tmp_path)
    tokenizer = tiny_tokenizer()
    sentences = ["the cat sat on the mat", "a dog ran", "the dog sat", "a cat ran far"]
    tags = torch.randint(0, 3, (4, 6), generator=torch.Generator().manual_seed(0))
    enc = tokenizer(sentences, padding=True, return_tensors="pt")
    rows = [
        {"input_ids": i, "attention_mask": m, "labels": t.masked_fill(m == 0, -100)}
        for i, m, t in zip(enc["input_ids"], enc["attention_mask"], tags, strict=True)
    ]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), per_device_train_batch_size=2, num_train_epochs=1,
        learning_rate=1e-2, save_strategy="no", report_to=[], use_cpu=True,
        disable_tqdm=True,
    )  # fmt: skip
    tagger, lm = bert_tokens().float(), gpt2()
    space = {"tokenizer": tokenizer, "sentences": sentences, "tags": tags, "tagger": tagger,
             "args": args, "train_rows": rows, "texts": sentences, "lm": lm}  # fmt: skip
    exec(readme_recipe("hugging-face"), space)
    # the tagger trained, and its run holds the exact analysis of every valid token
    recs = ResultStore(tmp_path / "runs" / "tagger" / "analysis.sqlite").records()
    assert [r.epoch for r in recs] == [0, 1]
    batch = space["analysis"][0]
    H, g, _ = oracle_hvp(tagger.double(), lambda run: run(**batch).loss)
    np.testing.assert_allclose(recs[-1].arrays["H"], H.numpy(), rtol=2e-4, atol=1e-7)
    # the language model: its own loss, and the function with ignore_index, both exact
    lm_batch = space["lm_batch"]
    H, g, _ = oracle_hvp(lm, lambda run: run(**lm_batch).loss)
    for res in (space["res"], space["res_own"]):
        np.testing.assert_allclose(res.H.numpy(), H.numpy(), rtol=1e-9, atol=1e-13)
        np.testing.assert_allclose(res.g.numpy(), g.numpy(), rtol=1e-9, atol=1e-13)


def test_an_analysis_error_never_stops_the_trainer(tmp_path, caplog):
    """Analysis batches without labels: no loss to analyse; the trainer trains on."""
    model = tiny_gpt2()
    rows = token_batches(6, seed=1)
    analysis = [{"input_ids": torch.stack([r["input_ids"] for r in rows[:4]])}]
    cb = HessianLensCallback(tmp_path / "run", analysis)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), per_device_train_batch_size=3, num_train_epochs=1,
        save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, callbacks=[cb])
    with caplog.at_level("ERROR", logger="hessian_lens"):
        trainer.train()
    assert trainer.state.global_step == 2
    assert len([r for r in caplog.records if "has no loss" in r.getMessage()]) == 1
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["state"] == "analysis failed" and "has no loss" in manifest["error"]
    assert [h["epoch"] for h in manifest["history"]] == [0, 1]
