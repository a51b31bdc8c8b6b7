"""The data contract (hessian_lens/batches.py): every case that once gave a wrong number.

Each case is checked against the whole-data oracle (tests/oracle.py: one call on all
samples, the loss's own reduction, the full Hessian in float64) or must raise one clear line.
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hessian_lens as hl
from hessian_lens import batches as B
from hessian_lens.memory import Planner
from tests.compare import EXACT, assert_close
from tests.oracle import oracle, oracle_hvp
from tests.tiny import SeqNet, TinyAttention, perturb

F64 = torch.float64


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return perturb(nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)), seed)


def data(n: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=gen, dtype=F64), torch.randint(0, 3, (n,), generator=gen)


def cut(x, y, sizes) -> list[tuple]:
    out, start = [], 0
    for s in sizes:
        out.append((x[start : start + s], y[start : start + s]))
        start += s
    return out


def whole(model, x, y, loss=F.cross_entropy, **kw):
    return oracle(model, lambda run: loss(run(x), y), **kw)


@pytest.fixture
def micro(monkeypatch):
    """``micro(m)``: the engine cuts every batch into micro-batches of at most m samples."""

    def set_size(m: int) -> None:
        monkeypatch.setattr(Planner, "micro_batch", lambda self, x, y, samples: min(m, samples))

    return set_size


def check(res, H, g, L=None) -> None:
    assert_close(res.H, H, **EXACT)
    assert_close(res.g, g, **EXACT)
    if L is not None:
        assert res.loss == pytest.approx(L, rel=1e-12)


# ---------------------------------------------------------------------------- 1-2: sum losses
@pytest.mark.parametrize(
    "loss",
    [
        nn.CrossEntropyLoss(reduction="sum"),
        functools.partial(F.cross_entropy, reduction="sum"),
        lambda out, y: F.cross_entropy(out, y, reduction="sum"),
    ],
)
def test_sum_loss_exact_whole_in_micro_batches_and_over_batches(micro, loss):
    model, (x, y) = mlp(), data(12)
    H, g, L = whole(model, x, y, loss)
    check(hl.pseudo_hessian(model, loss, (x, y)), H, g, L)
    res = hl.pseudo_hessian(model, loss, cut(x, y, [5, 4, 3]))
    check(res, H, g, L)
    assert res.reduction == "sum" and res.n_samples == 12
    micro(4)  # the memory plan cuts the batch (a smaller machine): same number
    check(hl.pseudo_hessian(model, loss, (x, y)), H, g, L)
    check(hl.pseudo_hessian(model, loss, cut(x, y, [7, 5]), d3_diagonal=True), H, g, L)


def test_sum_loss_under_a_real_memory_budget(monkeypatch):
    model, (x, y) = mlp(), data(64)
    loss = nn.CrossEntropyLoss(reduction="sum")
    free = hl.pseudo_hessian(model, loss, (x, y))
    plan = hl.memory_plan(model, loss, (x, y))
    budget = plan.output_bytes + plan.fixed_bytes + 20.5 * plan.per_sample_bytes
    monkeypatch.setattr("hessian_lens.memory.memory_budget", lambda device: (int(budget), "test"))
    split = hl.pseudo_hessian(model, loss, (x, y))
    assert split.memory.micro_batch < 64
    check(split, free.H, free.g, free.loss)


def test_mean_losses_with_class_weights_and_ignored_targets(micro):
    model, (x, y) = mlp(), data(12)
    y = y.clone()
    y[[1, 5, 6, 7]] = -100  # a micro-batch of 3 below holds only ignored targets
    w = torch.tensor([0.5, 2.0, 1.0], dtype=F64)
    losses = (
        nn.CrossEntropyLoss(weight=w),
        F.cross_entropy,
        functools.partial(F.cross_entropy, weight=w),
        nn.NLLLoss(weight=w),
    )
    micro(3)
    for loss in losses:
        fn = (
            (lambda o, t, f=loss: f(F.log_softmax(o, 1), t))
            if isinstance(loss, nn.NLLLoss)
            else loss
        )
        H, g, L = whole(model, x, y, fn)
        res = hl.pseudo_hessian(
            model, loss if fn is loss else _LogSoftmaxFirst(loss), cut(x, y, [5, 7])
        )
        check(res, H, g, L)
    # the same losses inside plain functions: seen, and weighted by what they divide by
    for fn in (
        lambda o, t: F.cross_entropy(o, t),
        lambda o, t: F.cross_entropy(o, t, weight=w),
        lambda o, t: F.nll_loss(F.log_softmax(o, 1), t, weight=w, ignore_index=-100),
    ):
        H, g, L = whole(model, x, y, fn)
        check(hl.pseudo_hessian(model, fn, cut(x, y, [5, 7])), H, g, L)
    # two weighted means in one value: what it divides by cannot be seen, refused in one line
    two = lambda o, t: F.cross_entropy(o, t) + F.cross_entropy(o, t, weight=w)  # noqa: E731
    with pytest.raises(ValueError, match=r"class-weighted targets .* normalizer=lambda batch"):
        hl.pseudo_hessian(model, two, cut(x, y, [5, 7]))


class _LogSoftmaxFirst(nn.NLLLoss):
    """An NLL module (its weights and ignore_index) on logits."""

    def __init__(self, base: nn.NLLLoss) -> None:
        super().__init__(weight=base.weight, ignore_index=base.ignore_index)

    def forward(self, out, t):
        return super().forward(F.log_softmax(out, 1), t)


# ---------------------------------------------------------------------------- reductions
def test_reduction_verified_declared_or_refused():
    model, (x, y) = mlp(), data(8)
    mean_fn = lambda o, t: F.cross_entropy(o, t)  # noqa: E731 - a plain user function
    assert hl.pseudo_hessian(model, mean_fn, (x, y)).reduction == "mean"
    # declared against the data: one line
    with pytest.raises(ValueError, match="declared as a sum over samples"):
        hl.pseudo_hessian(model, mean_fn, (x, y), reduction="sum")
    # neither a mean nor a sum: refused
    with pytest.raises(ValueError, match="neither a mean nor a sum"):
        hl.pseudo_hessian(model, lambda o, t: F.cross_entropy(o, t) ** 2, (x, y))
    # per-sample losses: reduced as declared, refused otherwise
    none = nn.CrossEntropyLoss(reduction="none")
    with pytest.raises(ValueError, match="returns one loss per sample"):
        hl.pseudo_hessian(model, none, (x, y))
    H, g, L = whole(model, x, y, nn.CrossEntropyLoss(reduction="sum"))
    check(hl.pseudo_hessian(model, none, cut(x, y, [3, 5]), reduction="sum"), H, g, L)
    with pytest.raises(ValueError, match="not a scalar"):
        hl.pseudo_hessian(model, lambda o, t: F.cross_entropy(o, t, reduction="none"), (x, y))
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        hl.pseudo_hessian(model, mean_fn, (bad, y))
    with pytest.raises(ValueError, match="reduction must be"):
        hl.pseudo_hessian(model, F.cross_entropy, (x, y), reduction="batchmean")


def test_single_sample_batches_need_a_declared_or_seen_reduction():
    model, (x, y) = mlp(), data(3)
    batches = cut(x, y, [1, 1, 1])
    scaled = lambda o, t: 2 * F.cross_entropy(o, t, reduction="sum")  # noqa: E731
    with pytest.raises(ValueError, match="declare reduction"):
        hl.pseudo_hessian(model, scaled, batches)  # no halves to compare, no call it returns
    H, g, L = whole(model, x, y, scaled)
    check(hl.pseudo_hessian(model, scaled, batches, reduction="sum"), H, g, L)
    # a loss that returns torch's own sum is seen to be one
    plain = lambda o, t: F.cross_entropy(o, t, reduction="sum")  # noqa: E731
    res = hl.pseudo_hessian(model, plain, batches)
    check(res, *whole(model, x, y, plain))
    assert res.reduction == "sum"


# ---------------------------------------------------------------------------- 3: batch_dim
def test_sequence_first_lstm_with_batch_dim(micro):
    torch.manual_seed(0)
    model = perturb(SeqNet(batch_first=False), scale=0.2)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 5, 3, generator=gen, dtype=F64)  # (T=6, N=5, F=3)
    y = torch.randint(0, 2, (5,), generator=gen)
    H, g, L = whole(model, x, y)
    with pytest.raises(ValueError, match="disagree on the sample count"):
        hl.pseudo_hessian(model, F.cross_entropy, (x, y))
    with pytest.raises(ValueError, match="no batch dimension 1"):
        hl.pseudo_hessian(model, F.cross_entropy, (x, y), batch_dim=1)
    micro(2)
    pieces = [(x[:, :2], y[:2]), (x[:, 2:], y[2:])]
    res = hl.pseudo_hessian(model, F.cross_entropy, pieces, batch_dim=(1, 0))
    check(res, H, g, L)
    assert res.n_samples == 5


# ---------------------------------------------------------------------------- 4: same data
def test_shuffling_loader_is_refused_and_fixed_batches_are_exact():
    model, (x, y) = mlp(), data(32)
    ds = torch.utils.data.TensorDataset(x, y)
    shuffled = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True, drop_last=True)
    with pytest.raises(B.DataChangedError, match="fixed_batches"):
        hl.pseudo_hessian(model, F.cross_entropy, shuffled)
    fixed = hl.fixed_batches(shuffled, 3)
    xs = torch.cat([b[0] for b in fixed])
    ys = torch.cat([b[1] for b in fixed])
    H, g, L = whole(model, xs, ys)
    check(hl.pseudo_hessian(model, F.cross_entropy, fixed), H, g, L)
    with pytest.raises(ValueError, match="fewer than the 9"):
        hl.fixed_batches(shuffled, 9)


class Augmented:
    """A re-iterable whose inputs get fresh noise each time (random augmentation)."""

    def __init__(self, x, y) -> None:
        self.x, self.y = x, y

    def __iter__(self):
        for i in range(0, len(self.x), 4):
            yield self.x[i : i + 4] + 0.01 * torch.randn_like(self.x[i : i + 4]), self.y[i : i + 4]


def test_random_augmentation_and_fewer_batches_are_caught():
    model, (x, y) = mlp(), data(12)
    with pytest.raises(B.DataChangedError, match="batch 1"):
        hl.pseudo_hessian(model, F.cross_entropy, Augmented(x, y))

    class Shrinking:
        calls = 0

        def __iter__(self):
            self.calls += 1
            yield from cut(x, y, [4, 4, 4] if self.calls == 1 else [4, 4])

    with pytest.raises(B.DataChangedError, match="3 batches"):
        hl.pseudo_hessian(model, F.cross_entropy, Shrinking())


# ---------------------------------------------------------------------------- 5: pytrees
class DictNet(nn.Module):
    """A Hugging Face-style model: keyword inputs, an output object with .loss and .logits."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 3)
        self.fc = nn.Linear(3, 7)

    def forward(self, input_ids, attention_mask=None, labels=None):
        h = torch.tanh(self.emb(input_ids))
        if attention_mask is not None:
            h = h * attention_mask.unsqueeze(-1)
        logits = self.fc(h)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return {"loss": loss, "logits": logits}


def token_batch(n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 7, (n, 5), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones(n, 5, dtype=F64), "labels": ids}


def test_dict_batches_and_the_models_own_loss(micro):
    torch.manual_seed(0)
    model = perturb(DictNet())
    batches = [token_batch(3, 0), token_batch(5, 1)]
    joined = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    H, g, L = oracle(model, lambda run: run(**joined)["loss"])
    check(hl.pseudo_hessian(model, None, batches), H, g, L)
    micro(2)
    check(hl.pseudo_hessian(model, None, joined), H, g, L)
    # the same inputs as (dict inputs, targets) with a loss_fn
    pairs = [({k: v for k, v in b.items() if k != "labels"}, b["labels"]) for b in batches]
    loss = lambda out, t: F.cross_entropy(out["logits"].flatten(0, 1), t.flatten())  # noqa: E731
    check(hl.pseudo_hessian(model, loss, pairs), H, g, L)


def test_batch_encoding_like_mapping_and_dataclass_inputs():
    from collections import UserDict

    torch.manual_seed(0)
    model = perturb(DictNet())
    b = token_batch(6, 2)
    H, g, L = oracle(model, lambda run: run(**b)["loss"])
    check(hl.pseudo_hessian(model, None, [UserDict(b)]), H, g, L)

    @dataclasses.dataclass
    class Inputs:
        input_ids: torch.Tensor
        attention_mask: torch.Tensor

    def forward(m, inp: Inputs):
        return m(inp.input_ids, inp.attention_mask)

    loss = lambda out, t: F.cross_entropy(out["logits"].flatten(0, 1), t.flatten())  # noqa: E731
    batches = [
        (Inputs(b["input_ids"][:2], b["attention_mask"][:2]), b["labels"][:2]),
        (Inputs(b["input_ids"][2:], b["attention_mask"][2:]), b["labels"][2:]),
    ]
    check(hl.pseudo_hessian(model, loss, batches, forward=forward), H, g, L)


def test_own_loss_missing_and_targets_that_do_not_fit():
    torch.manual_seed(0)
    model = perturb(DictNet())
    b = token_batch(4, 0)
    del b["labels"]
    with pytest.raises(ValueError, match="has no loss: give the labels"):
        hl.pseudo_hessian(model, None, b)
    mlp_model, (x, y) = mlp(), data(6)
    with pytest.raises(ValueError, match=r"loss_fn\(outputs, targets\) failed"):
        hl.pseudo_hessian(mlp_model, F.cross_entropy, (x, {"label": y}))


def test_complex_parameters_are_refused_in_one_line():
    model = nn.Linear(3, 2).to(torch.complex64)
    x, y = torch.randn(4, 3, dtype=torch.complex64), torch.randn(4, 2)
    with pytest.raises(ValueError, match="are complex"):
        hl.pseudo_hessian(model, lambda o, t: (o.abs() - t).pow(2).mean(), (x, y), dtype=F64)


# ---------------------------------------------------------------------------- 7: the model
class Twice(nn.Module):
    """The paper author's LeNet-5 habit: layers registered twice."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 5), nn.Linear(5, 3)
        self.layers = nn.ModuleList([self.fc1, self.fc2])

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def snapshot(model: nn.Module) -> dict:
    return {
        "params": [
            (n, id(p), p.detach().clone())
            for n, p in model.named_parameters(remove_duplicate=False)
        ],
        "buffers": [(n, id(b), b.clone()) for n, b in model.named_buffers(remove_duplicate=False)],
        "types": [(n, type(getattr(m, "weight", None))) for n, m in model.named_modules()],
        "modes": [m.training for m in model.modules()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "hooks": [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()],
    }


def same(a: dict, b: dict) -> None:
    for (n1, i1, t1), (n2, i2, t2) in zip(
        a["params"] + a["buffers"], b["params"] + b["buffers"], strict=True
    ):
        assert (n1, i1) == (n2, i2) and torch.equal(t1, t2), n1
    assert a["types"] == b["types"] and a["modes"] == b["modes"] and a["hooks"] == b["hooks"]
    for g1, g2 in zip(a["grads"], b["grads"], strict=True):
        assert (g1 is None and g2 is None) or torch.equal(g1, g2)


def test_twice_registered_modules_keep_training_after_an_analysis():
    torch.manual_seed(0)
    model, (x, y) = Twice(), data(64)
    x = x.float()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)  # built before the call
    F.cross_entropy(model(x), y).backward()
    model.fc1.register_forward_hook(lambda m, i, o: None)
    before = snapshot(model)
    for method in ("loop", "vmap"):
        hl.pseudo_hessian(model, F.cross_entropy, cut(x, y, [40, 24]), method=method)
        same(before, snapshot(model))
    assert isinstance(model.fc1.weight, nn.Parameter) and model.fc1.weight is model.layers[0].weight
    start = float(F.cross_entropy(model(x), y))
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert float(F.cross_entropy(model(x), y)) < start - 0.05


def test_tied_weights_parametrizations_and_batchnorm_come_back_as_they_were():
    torch.manual_seed(0)
    emb = nn.Embedding(6, 4)
    head = nn.Linear(4, 6, bias=False)
    head.weight = emb.weight  # tied
    norm = nn.utils.parametrizations.weight_norm(nn.Linear(4, 4))
    model = nn.Sequential(
        emb, nn.Flatten(1), nn.Unflatten(1, (2, 4)), norm, nn.BatchNorm1d(2), head
    ).double()
    ids = torch.randint(0, 6, (8, 2))
    loss = lambda out, t: F.cross_entropy(out.flatten(0, 1), t.flatten())  # noqa: E731
    before = snapshot(model)
    res = hl.pseudo_hessian(model, loss, (ids, ids), train_mode=False)
    same(before, snapshot(model))
    H, g, L = oracle(model.eval(), lambda run: loss(run(ids), ids), partition=res.partition)
    check(res, H, g, L)
    model.train()
    hl.pseudo_hessian(model, loss, (ids, ids), train_mode=True, reduction="mean")
    same(snapshot(model), snapshot(model))
    assert model[0].weight is model[5].weight


# ---------------------------------------------------------------------------- 8: attention
def test_transformer_layer_on_the_math_kernel_and_the_setting_restored():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0, batch_first=True).double()
    x = torch.randn(5, 3, 4, dtype=F64)
    t = torch.randn(5, 3, 4, dtype=F64)
    flags = (
        torch.backends.cuda.flash_sdp_enabled(),
        torch.backends.cuda.math_sdp_enabled(),
        torch.backends.cuda.mem_efficient_sdp_enabled(),
    )
    with pytest.raises(RuntimeError, match="not implemented"):  # what the user hit before
        out = layer(x)
        gr = torch.autograd.grad(F.mse_loss(out, t), list(layer.parameters()), create_graph=True)
        torch.autograd.grad(sum(v.sum() for v in gr), list(layer.parameters()))
    res = hl.pseudo_hessian(layer, F.mse_loss, [(x[:2], t[:2]), (x[2:], t[2:])])
    assert any("math scaled-dot-product kernel" in n for n in res.notes)
    H, g, L = oracle(layer, lambda run: F.mse_loss(run(x), t))
    check(res, H, g, L)
    assert flags == (
        torch.backends.cuda.flash_sdp_enabled(),
        torch.backends.cuda.math_sdp_enabled(),
        torch.backends.cuda.mem_efficient_sdp_enabled(),
    )


class Distances(nn.Module):
    """Logits from distances to learned centres: torch.func has no forward mode of cdist."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.centres = nn.Linear(3, 4), nn.Parameter(torch.randn(2, 4))

    def forward(self, x):
        return -torch.cdist(torch.tanh(self.fc(x)), self.centres)


def test_vmap_runs_multihead_attention_and_falls_back_where_func_cannot():
    """nn.MultiheadAttention runs its differentiable path under vmap (the layer-norm mode
    keeps it off the fused kernel); a model torch.func cannot run falls back to the loop."""
    torch.manual_seed(0)
    model = perturb(TinyAttention(classes=2), scale=0.2)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, 4, generator=gen, dtype=F64), torch.randint(0, 2, (6,), generator=gen)
    res = hl.pseudo_hessian(
        model, F.cross_entropy, cut(x, y, [2, 4]), method="vmap", d3_diagonal=True
    )
    assert res.method == "vmap" and not any("fell back" in n for n in res.notes)
    loop = hl.pseudo_hessian(
        model, F.cross_entropy, cut(x, y, [2, 4]), method="loop", d3_diagonal=True
    )
    H, g, L = whole(model, x, y)
    check(res, H, g, L)
    assert_close(res.d3, loop.d3, **EXACT)
    distances = perturb(Distances()).double()
    x = torch.randn(6, 3, generator=gen, dtype=F64)
    res = hl.pseudo_hessian(distances, F.cross_entropy, cut(x, y, [2, 4]), method="vmap")
    assert res.method == "loop" and any("torch.func cannot run this model" in n for n in res.notes)
    check(res, *whole(distances, x, y))


# ---------------------------------------------------------------------------- units
def test_tree_map_keeps_containers_and_count_names_the_culprits():
    Pair = __import__("collections").namedtuple("Pair", "a b")
    tree = {"x": (torch.ones(3, 2), [torch.zeros(3)]), "p": Pair(torch.ones(3), 5)}
    out = B.tree_map(lambda t: t + 1, tree)
    assert isinstance(out["p"], Pair) and out["p"].b == 5 and float(out["x"][1][0].sum()) == 3
    assert len(B.tree_leaves(tree)) == 3
    dims = B.BatchDims.of(0)
    assert B.count_samples(tree, torch.zeros(3), dims) == 3
    with pytest.raises(ValueError, match=r"3 in inputs .*; 4 in targets"):
        B.count_samples(tree, torch.zeros(4), dims)
    with pytest.raises(ValueError, match="batch_dim must be"):
        B.BatchDims.of((0, 1, 2))


def test_single_batch_or_batches():
    x, y = torch.ones(2, 3), torch.zeros(2)
    assert B.is_single_batch((x, y)) and B.is_single_batch({"input_ids": x})
    assert B.is_single_batch(({"a": x}, y)) and B.is_single_batch((x, {"a": y}))
    assert not B.is_single_batch([(x, y), (x, y)])
    assert not B.is_single_batch([{"a": x}, {"a": x}])
    with pytest.raises(TypeError, match="one-shot iterator"):
        B.as_batches(iter([(x, y)]))
    with pytest.raises(TypeError, match="got Tensor"):
        B.as_batches(x)


def test_fingerprints_see_inputs_and_targets():
    x, y = torch.randn(8, 5), torch.arange(8)
    base = B.fingerprint(x, y, 8)
    assert B.fingerprint(x.clone(), y.clone(), 8) == base
    assert B.fingerprint(x, y.flip(0), 8) != base
    x2 = x.clone()
    x2[3, 2] += 1.0  # inside the strided sample: every element of a small tensor
    assert B.fingerprint(x2, y, 8) != base


def test_the_optimizer_step_takes_the_same_contract():
    torch.manual_seed(0)
    model = perturb(DictNet())
    batches = [token_batch(3, 0), token_batch(5, 1)]
    eta, info = hl.partition_newton_step(model, None, batches, regularization="none")
    joined = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    H, g, _ = oracle(model, lambda run: run(**joined)["loss"])
    assert_close(info["H"], H, **EXACT)
    assert_close(eta, torch.linalg.solve(H, g), rtol=1e-7, atol=1e-12)


class NativeNorm(nn.Module):
    """A layer norm through the aten operation itself, which torch.func gets wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.out = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = torch.native_layer_norm(self.fc(x), (4,), None, None, 1e-5)[0]
        return self.out(torch.tanh(h))


def test_vmap_runs_layer_norm_decomposed_and_falls_back_on_the_aten_operation():
    """torch.func's derivatives of native_layer_norm are wrong (3% on torch 2.14): an
    nn.LayerNorm runs decomposed (exact); a direct call of the aten operation runs the loop."""
    torch.manual_seed(0)
    model = perturb(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, 2)))
    x, y = torch.randn(6, 3, dtype=F64), torch.randint(0, 2, (6,))
    res = hl.pseudo_hessian(model, F.cross_entropy, cut(x, y, [2, 4]), method="vmap")
    assert res.method == "vmap" and not res.notes
    H, g, L = whole(model, x, y)
    check(res, H, g, L)
    native = perturb(NativeNorm())
    res = hl.pseudo_hessian(native, F.cross_entropy, cut(x, y, [2, 4]), method="vmap")
    assert res.method == "loop" and any("layer_norm are wrong" in n for n in res.notes)
    check(res, *whole(native, x, y))
    plain = hl.pseudo_hessian(mlp(), F.cross_entropy, data(6), method="vmap")
    assert plain.method == "vmap" and not plain.notes


# ---------------------------------------------------------------------------- round 2
def bn_net() -> nn.Module:
    torch.manual_seed(5)
    return perturb(nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3)))


def test_batch_statistics_across_batches_are_refused_one_batch_is_exact():
    model, (x, y) = bn_net().double(), data(12)
    with pytest.raises(ValueError, match="depend on how the data are cut into batches"):
        hl.pseudo_hessian(model, F.cross_entropy, cut(x, y, [6, 6]), train_mode=True)
    trained = copy.deepcopy(model).train()  # the whole batch's statistics
    H, g, L = oracle_hvp(trained, lambda run: F.cross_entropy(run(x), y))
    check(hl.pseudo_hessian(model, F.cross_entropy, (x, y), train_mode=True), H, g, L)
    hl.pseudo_hessian(model, F.cross_entropy, cut(x, y, [6, 6]))  # eval mode: any cut


def dropout_net() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Dropout(0.4), nn.Linear(6, 3)).double()


def seeded_oracle(model, batches, seed: int):
    """ḡ and H̄ of the whole data's loss with batch b's masks drawn from seed + b."""
    n = sum(len(b[1]) for b in batches)

    def loss(run):
        total = 0
        for b, (xb, yb) in enumerate(batches):
            with torch.random.fork_rng():
                torch.manual_seed(seed + b)
                total = total + len(yb) * F.cross_entropy(run(xb), yb)
        return total / n

    model.train()
    try:
        return oracle(model, loss)
    finally:
        model.eval()


def test_dropout_in_train_mode_replays_its_recorded_masks_and_leaves_the_rng():
    model, (x, y) = dropout_net(), data(12)
    batches = cut(x, y, [5, 7])
    torch.manual_seed(123)
    state = torch.get_rng_state()
    res = hl.pseudo_hessian(model, F.cross_entropy, batches, train_mode=True, seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator did not move
    H, g, L = seeded_oracle(model, batches, seed=7)
    check(res, H, g, L)  # ḡ = Uᵀg at the very masks H̄ used
    assert any("seeded 7 + b" in n for n in res.notes)
    vmap = hl.pseudo_hessian(
        model, F.cross_entropy, batches, train_mode=True, method="vmap", seed=7
    )
    check(vmap, H, g, L)  # torch.func refuses randomness: the loop ran


def test_the_users_training_is_bit_identical_with_a_train_mode_recorder(tmp_path):
    def train(record: bool) -> torch.Tensor:
        model, (x, y) = dropout_net(), data(12)
        model.train()
        torch.manual_seed(0)
        opt = torch.optim.SGD(model.parameters(), lr=0.3)
        rec = hl.Recorder(tmp_path / str(record), model, F.cross_entropy, cut(x, y, [6, 6]),
                          train_mode=True, save_checkpoints=False)  # fmt: skip
        for epoch in range(3):
            if record:
                rec.log(epoch)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        rec.close()
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    assert torch.equal(train(True), train(False))


class Noisy(nn.Module):
    """A forward that draws random numbers whatever its mode."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x + 0.1 * torch.randn_like(x))


def test_a_random_forward_is_named_not_the_reduction(monkeypatch):
    torch.manual_seed(0)
    model, (x, y) = Noisy().double(), data(12)
    mse = lambda o, t: ((o - F.one_hot(t, 3)) ** 2).mean()  # noqa: E731
    with pytest.raises(ValueError, match="forward is random"):
        hl.pseudo_hessian(model, mse, (x, y))
    res = hl.pseudo_hessian(model, mse, cut(x, y, [5, 7]), reduction="mean", seed=3)
    H, g, L = seeded_oracle_of(model, mse, cut(x, y, [5, 7]), seed=3)
    check(res, H, g, L)
    plan = hl.memory_plan(model, mse, (x, y), reduction="mean")
    budget = plan.output_bytes + plan.fixed_bytes + 3.5 * plan.per_sample_bytes
    monkeypatch.setenv("HESSIAN_LENS_MAX_MEMORY_GB", repr(budget / 2**30))
    with pytest.raises(hl.MemoryGuardError, match="forward is random.*batches of 3 samples"):
        hl.pseudo_hessian(model, mse, (x, y), reduction="mean")


def seeded_oracle_of(model, loss_fn, batches, seed: int):
    n = sum(len(b[1]) for b in batches)

    def loss(run):
        total = 0
        for b, (xb, yb) in enumerate(batches):
            with torch.random.fork_rng():
                torch.manual_seed(seed + b)
                total = total + len(yb) * loss_fn(run(xb), yb)
        return total / n

    return oracle(model, loss)


def test_an_enclosing_autocast_is_turned_off_and_noted():
    model, (x, y) = mlp().float(), data(12)
    x = x.float()
    plain = hl.pseudo_hessian(model, F.cross_entropy, cut(x, y, [5, 7]))
    with torch.autocast("cpu", torch.bfloat16):  # would run the float32 layers in bfloat16
        res = hl.pseudo_hessian(model, F.cross_entropy, cut(x, y, [5, 7]))
        assert torch.is_autocast_enabled("cpu")  # the caller's setting is back
    assert torch.equal(res.H, plain.H) and torch.equal(res.g, plain.g)
    assert any("torch.autocast('cpu', bfloat16) was turned off" in n for n in res.notes)


class Checkpointed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        h = torch.utils.checkpoint.checkpoint(
            lambda t: torch.tanh(self.a(t)), x, use_reentrant=False
        )
        return self.b(h)


def test_fallbacks_and_one_line_refusals():
    x, y = data(8)
    torch.manual_seed(0)
    model = Checkpointed().double()
    res = hl.pseudo_hessian(model, F.cross_entropy, (x, y), method="vmap")
    assert res.method == "loop" and any("saved tensor hooks" in n for n in res.notes)
    check(res, *oracle_hvp(model, lambda run: F.cross_entropy(run(x), y)))
    compiled = torch.compile(mlp())
    res = hl.pseudo_hessian(compiled, F.cross_entropy, (x, y))
    check(res, *whole(compiled._orig_mod, x, y))
    assert any("torch.compile'd" in n for n in res.notes)
    with pytest.raises(ValueError, match=r"no derivative of aten::multi_margin_loss_backward"):
        hl.pseudo_hessian(mlp(), nn.MultiMarginLoss(), (x, y))
    with pytest.raises(ValueError, match="on the meta device"):
        hl.pseudo_hessian(nn.Linear(4, 3, device="meta"), F.cross_entropy, (x.float(), y))


def test_messages_name_the_cause_and_the_fix():
    model, (x, y) = mlp(), data(8)
    canonical = hl.Partition.canonical(model)
    twice = [canonical.names[0], *canonical.names[:-1]]
    with pytest.raises(hl.PartitionError, match=r"lists \['0.weight'\] more than once"):
        hl.Partition(twice, canonical.shapes, list(range(4)), canonical.groups)
    reordered = hl.Partition(canonical.names[::-1], canonical.shapes[::-1], list(range(4)),
                             canonical.groups[::-1])  # fmt: skip
    with pytest.raises(hl.PartitionError, match="in another order than"):
        hl.pseudo_hessian(model, F.cross_entropy, (x, y), partition=reordered)

    class ReadOnce:
        def __init__(self, batches) -> None:
            self.it = iter(batches)

        def __iter__(self):
            return self.it

    with pytest.raises(B.DataChangedError, match="one-shot iterable"):
        hl.pseudo_hessian(model, F.cross_entropy, ReadOnce(cut(x, y, [4, 4])))
    with pytest.raises(ValueError) as err:
        hl.pseudo_hessian(model, lambda o, t: F.cross_entropy(o, t) ** 2, (x, y))
    assert str(err.value).endswith("or reduction='sum'") and "normalizer=" in str(err.value)


def test_the_default_eval_mode_says_so():
    res = hl.pseudo_hessian(dropout_net(), F.cross_entropy, data(6))
    assert any("dropout and BatchNorm ran in eval mode" in n for n in res.notes)
    assert not hl.pseudo_hessian(mlp(), F.cross_entropy, data(6)).notes


def test_an_empty_batch_counts_nothing():
    model, (x, y) = mlp(), data(8)
    H, g, L = whole(model, x, y)
    check(hl.pseudo_hessian(model, F.cross_entropy, [(x[:0], y[:0]), *cut(x, y, [3, 5])]), H, g, L)
    check(
        hl.pseudo_hessian(model, lambda o, t: F.cross_entropy(o, t), [(x[:0], y[:0]), (x, y)]),
        H,
        g,
        L,
    )
