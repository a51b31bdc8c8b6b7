"""What a batch's loss divides by (hessian_lens/normalizers.py): token losses, own losses.

Every case is checked against the whole-data oracle (tests/oracle.py: one call on all the
samples, the loss's own reduction) in float64, or must raise one line. The Hugging Face
models are tiny, built from configs (tests/hf_tiny.py).
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hessian_lens as hl
from hessian_lens import normalizers as N
from hessian_lens.losses import next_token
from tests.compare import EXACT, assert_close
from tests.oracle import oracle, oracle_hvp

F64 = torch.float64
V, T = 7, 5


class TokenNet(nn.Module):
    """Logits (N, T, V) for token ids (N, T): an embedding, a causal running mean, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, 4)
        self.head = nn.Linear(4, V)

    def forward(self, ids, labels=None):
        h = torch.tanh(self.emb(ids))
        h = h.cumsum(1) / torch.arange(1, ids.shape[1] + 1, dtype=h.dtype).view(1, -1, 1)
        logits = self.head(h)
        if labels is None:
            return logits
        return {"loss": F.cross_entropy(logits.flatten(0, 1), labels.flatten()), "logits": logits}


def token_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TokenNet().double()


def tokens(lengths: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids (N, T) and next-token targets, -100 beyond each sequence's length."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (len(lengths), T), generator=gen)
    keep = torch.arange(T) < torch.tensor(lengths).unsqueeze(1)
    return ids, torch.randint(0, V, ids.shape, generator=gen).masked_fill(~keep, -100)


def cut(x, y, sizes):
    out, start = [], 0
    for s in sizes:
        out.append((x[start : start + s], y[start : start + s]))
        start += s
    return out


def check(res, H, g, L=None, **tol) -> None:
    tol = tol or EXACT
    assert_close(res.H, H, **tol)
    assert_close(res.g, g, **tol)
    if L is not None:
        assert res.loss == pytest.approx(L, rel=tol["rtol"])


FLAT = lambda out, t: F.cross_entropy(out.flatten(0, 1), t.flatten())  # noqa: E731


# ---------------------------------------------------------------------------- the rule
def test_observe_sees_the_call_and_what_it_divides_by():
    logits, t = torch.randn(6, 3), torch.tensor([0, 2, -100, 1, 1, -100])
    w = torch.tensor([1.0, 2.0, 4.0])
    seen = N.observe(lambda: nn.CrossEntropyLoss(weight=w)(logits, t))
    assert seen.explained.weight == 1 + 4 + 2 + 2 and seen.explained.uneven
    seen = N.observe(lambda: F.nll_loss(F.log_softmax(logits, 1), t, reduction="sum"))
    assert seen.explained.reduction == "sum"
    seen = N.observe(lambda: F.cross_entropy(logits, t, size_average=False))  # legacy flags
    assert seen.explained.reduction == "sum"
    probs = torch.softmax(torch.randn(6, 3), 1)
    assert N.observe(lambda: F.cross_entropy(logits, probs)).explained.weight == 6
    twice = N.observe(lambda: 0.5 * F.cross_entropy(logits, t))
    assert twice.explained is None and twice.single_mean.weight == 4
    assert N.observe(lambda: F.mse_loss(logits, logits)).calls == []


def test_the_hugging_face_label_rule():
    from tests.hf_tiny import bert_sequences, bert_tokens, gpt2

    assert N.hugging_face_model(gpt2()) and not N.hugging_face_model(token_net())
    assert N.causal_lm(gpt2()) and not N.causal_lm(bert_tokens())
    assert not N.causal_lm(bert_sequences())
    labels = torch.tensor([[3, 4, -100], [-100, 5, 6]])
    assert N.label_weight({"labels": labels}, 2, shift=False) == 4
    assert N.label_weight({"labels": labels}, 2, shift=True) == 3
    assert N.label_weight({"labels": torch.ones(2, 3)}, 2, shift=True) == 2  # regression


# ---------------------------------------------------------------------------- token losses
@pytest.mark.parametrize("form", ["lambda", "next_token", "own", "weighted", "module"])
def test_token_losses_with_padding_across_batches_and_micro_batches(form, monkeypatch):
    """A lambda, next_token, a model's own loss: the mean over all valid tokens, exactly."""
    model = token_net()
    ids, t = tokens([5, 5, 4, 2, 5, 1, 3, 0, 2], seed=0)
    w = torch.tensor([0.5, 1.0, 2.0, 1.0, 3.0, 1.0, 0.25], dtype=F64)
    loss, pairs = {
        "lambda": (FLAT, True),
        "next_token": (next_token, True),
        "own": (None, False),
        "weighted": (lambda o, y: F.cross_entropy(o.flatten(0, 1), y.flatten(), weight=w), True),
        "module": (lambda o, y: nn.CrossEntropyLoss()(o.transpose(1, 2), y), True),
    }[form]
    if pairs:
        data = cut(ids, t, [4, 3, 2])
        H, g, L = oracle(model, lambda run: loss(run(ids), t))
    else:
        data = [{"ids": a, "labels": b} for a, b in cut(ids, t, [4, 3, 2])]
        H, g, L = oracle(model, lambda run: run(ids, t)["loss"])
    for method in ("loop", "vmap"):
        check(hl.pseudo_hessian(model, loss, data, method=method), H, g, L)
    from hessian_lens.memory import Planner

    monkeypatch.setattr(Planner, "micro_batch", lambda self, x, y, n: min(2, n))
    res = hl.pseudo_hessian(model, loss, data, reduction="mean")  # declared: still weighted
    check(res, H, g, L)
    assert res.reduction == "mean" and res.n_samples == 9


def test_equal_valid_tokens_in_the_first_batchs_halves_fool_nothing():
    """The first batch's halves hold 4 valid tokens each; later batches differ."""
    model = token_net()
    ids, t = tokens([2, 2, 3, 1, 5, 5, 1], seed=3)
    data = cut(ids, t, [4, 3])
    H, g, L = oracle(model, lambda run: FLAT(run(ids), t))
    check(hl.pseudo_hessian(model, FLAT, data), H, g, L)


def test_a_mean_that_hides_its_ignored_targets_is_refused_or_declared(monkeypatch):
    model = token_net()
    ids, t = tokens([5, 3, 4, 1, 5, 2], seed=1)
    manual = lambda o, y: (  # noqa: E731 - a sum over a count the engine cannot see
        F.cross_entropy(o.flatten(0, 1), y.flatten(), reduction="sum") / (y != -100).sum()
    )
    with pytest.raises(ValueError, match=r"ignored or class-weighted targets .* normalizer="):
        hl.pseudo_hessian(model, manual, cut(ids, t, [3, 3]))
    H, g, L = oracle(model, lambda run: manual(run(ids), t))
    valid = lambda batch: (batch[1] != -100).sum()  # noqa: E731
    check(hl.pseudo_hessian(model, manual, cut(ids, t, [3, 3]), normalizer=valid), H, g, L)
    with pytest.raises(ValueError, match="normalizer= says what a mean divides by"):
        hl.pseudo_hessian(model, manual, cut(ids, t, [3, 3]), normalizer=valid, reduction="sum")
    with pytest.raises(ValueError, match="a number >= 0, got -1"):
        hl.pseudo_hessian(model, manual, (ids, t), normalizer=lambda batch: -1)


def test_a_micro_batch_of_only_ignored_targets_counts_nothing(monkeypatch):
    """Valid data is never refused by the memory budget: the empty half weighs 0."""
    from hessian_lens.memory import Planner

    model = token_net()
    ids, t = tokens([0, 5, 4, 0, 3, 2], seed=2)
    H, g, L = oracle(model, lambda run: FLAT(run(ids), t))
    for size in (2, 3, 6):
        monkeypatch.setattr(Planner, "micro_batch", lambda self, x, y, n, m=size: min(m, n))
        check(hl.pseudo_hessian(model, FLAT, (ids, t)), H, g, L)


def test_the_recorder_stores_the_exact_next_token_analysis(tmp_path):
    model = token_net()
    ids, t = tokens([5, 2, 4, 1, 3], seed=4)
    H, g, _ = oracle(model, lambda run: next_token(run(ids), t))
    with hl.Recorder(tmp_path / "run", model, "next_token", cut(ids, t, [2, 3])) as rec:
        record = rec.log(0)
    assert_close(torch.as_tensor(record.arrays["H"]), H, **EXACT)
    assert_close(torch.as_tensor(record.arrays["g"]), g, **EXACT)


# ---------------------------------------------------------------------------- Hugging Face
def test_gpt2_own_loss_over_batches_of_26_10_and_3_valid_tokens():
    """The issue's case: three batches; loop, vmap, declared mean, one whole batch."""
    from tests.hf_tiny import gpt2, joined, padded

    model = gpt2()
    batches = [
        padded("causal", [6, 6, 6, 6, 5, 3], 0),  # shifted by one: 26 valid tokens
        padded("causal", [4, 4, 3, 3], 1),
        padded("causal", [2, 3], 2),
    ]
    whole = joined(batches)
    H, g, L = oracle_hvp(model, lambda run: run(**whole).loss)
    check(hl.pseudo_hessian(model, None, batches), H, g, L)
    check(hl.pseudo_hessian(model, None, batches, method="vmap"), H, g, L)
    check(hl.pseudo_hessian(model, None, batches, reduction="mean"), H, g, L)
    check(hl.pseudo_hessian(model, None, whole), H, g, L)  # one batch holding every sample


def test_gpt2_real_loss_is_exact_to_its_float32_rounding_and_says_so():
    from tests.hf_tiny import gpt2, joined, padded

    model = gpt2(exact=False)
    batches = [padded("causal", [6, 5, 2], 0), padded("causal", [3, 1], 1)]
    whole = joined(batches)
    H, g, L = oracle_hvp(model, lambda run: run(**whole).loss)
    res = hl.pseudo_hessian(model, None, batches)
    check(res, H, g, L, rtol=1e-6, atol=1e-10)
    assert any("computed in float32" in n for n in res.notes)


@pytest.mark.parametrize("kind", ["tokens", "sequences"])
def test_bert_own_losses_token_and_sequence_classification(kind):
    from tests.hf_tiny import MODELS, joined, padded

    model = MODELS[kind]()
    batches = [padded(kind, [6, 2, 4], 0), padded(kind, [1, 6], 1), padded(kind, [3], 2)]
    whole = joined(batches)
    H, g, L = oracle_hvp(model, lambda run: run(**whole).loss)
    check(hl.pseudo_hessian(model, None, batches), H, g, L)


def test_a_hugging_face_model_whose_loss_breaks_the_label_rule_is_observed():
    """loss_type says causal, the loss is not shifted: the first call's check sees it."""
    from tests.hf_tiny import bert_tokens, joined, padded

    model = bert_tokens()
    model.loss_type = None  # transformers' fallback: the causal rule
    batches = [padded("tokens", [6, 2, 4], 0), padded("tokens", [1, 5], 1)]
    whole = joined(batches)
    H, g, L = oracle_hvp(model, lambda run: run(**whole).loss)
    check(hl.pseudo_hessian(model, None, batches), H, g, L)


# ---------------------------------------------------------------------------- cost
class Counted(TokenNet):
    def __init__(self) -> None:
        super().__init__()
        self.double()
        self.sizes: list[int] = []

    def forward(self, ids, labels=None):
        self.sizes.append(int(ids.shape[0]))
        return super().forward(ids, labels)


@pytest.mark.parametrize(
    "form", ["next_token", "normalizer", "ignore_index", "hugging_face"], ids=str
)
def test_a_known_weight_brings_no_forward_pass_of_its_own(form):
    """Issue 30: a second identical call makes only the summary's passes (1 per batch/pass)."""
    ids, t = tokens([5, 2, 4, 1, 3, 5], seed=5)
    data = cut(ids, t, [3, 3])
    if form == "hugging_face":
        from tests.hf_tiny import gpt2, padded

        model = gpt2()
        calls = []
        model.register_forward_pre_hook(lambda m, a, k: calls.append(1), with_kwargs=True)
        data = [padded("causal", [6, 2, 4], 0), padded("causal", [1, 5, 3], 1)]
        hl.pseudo_hessian(model, None, data)
        calls.clear()
        hl.pseudo_hessian(model, None, data)
        assert len(calls) == 4
        return
    model = Counted()
    loss = {
        "next_token": (next_token, {}),
        "normalizer": (FLAT, {"normalizer": lambda b: (b[1] != -100).sum()}),
        "ignore_index": (
            functools.partial(F.cross_entropy, ignore_index=-100),
            {"batch_dim": 0},
        ),
    }[form]
    fn, kw = loss
    if form == "ignore_index":
        data = [(a, b[:, 0]) for a, b in data]  # (N,) targets: logits of the last position
        model.forward = lambda ids, labels=None, m=model: Counted.forward(m, ids)[:, -1]
    hl.pseudo_hessian(model, fn, data, **kw)
    model.sizes.clear()
    hl.pseudo_hessian(model, fn, data, **kw)
    assert model.sizes == [3, 3, 3, 3]
