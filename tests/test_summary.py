"""The engine against its brute-force twin (float64, tiny perturbed models)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hessian_lens as hl
from hessian_lens.reference import full_derivative, reference_summary
from tests.compare import DEVICES, EXACT, assert_close
from tests.tiny import MODELS, data_for, loss_fn, mlp

F64 = torch.float64
PARTITIONS = {
    "canonical": hl.Partition.canonical,
    "by_layer": hl.Partition.by_layer,
    "by_kind": hl.Partition.by_kind,
    "trivial": hl.Partition.trivial,
    "discrete": hl.Partition.discrete,
    "custom": lambda m: hl.Partition.from_groups(m, {r"0\..*": "first", r"(?!0\.).*": "rest"}),
}


@pytest.mark.parametrize("method", ["loop", "vmap"])
@pytest.mark.parametrize("part_name", list(PARTITIONS))
@pytest.mark.parametrize("model_name", list(MODELS))
def test_pseudo_hessian_matches_brute_force(model_name, part_name, method):
    model = MODELS[model_name]()
    if part_name == "custom" and model_name == "cnn":
        part = hl.Partition.from_groups(model, {"conv.*": "conv", "fc.*": "fc"})
    else:
        part = PARTITIONS[part_name](model)
    data = data_for(model_name)
    res = hl.pseudo_hessian(model, loss_fn, data, partition=part, method=method)
    assert_close(res.H, reference_summary(model, loss_fn, data, 2, part), **EXACT)
    assert_close(res.g, reference_summary(model, loss_fn, data, 1, part), **EXACT)
    assert res.labels == part.labels and res.n_samples == len(data[1])
    assert res.loss == pytest.approx(float(loss_fn(model.eval()(data[0]), data[1])), rel=1e-12)


@pytest.mark.parametrize("method", ["loop", "vmap"])
@pytest.mark.parametrize("model_name", ["mlp", "cnn", "bn_dropout"])
def test_order3_full_and_diagonal_match_brute_force(model_name, method):
    model = MODELS[model_name]()
    data = data_for(model_name, n=6)
    part = hl.Partition.canonical(model)
    ref = reference_summary(model, loss_fn, data, 3, part)
    d3 = hl.summary_tensor(model, loss_fn, data, 3, method=method)
    assert_close(d3, ref, **EXACT)
    diag = hl.summary_tensor(model, loss_fn, data, 3, method=method, diagonal=True)
    assert_close(diag, torch.stack([ref[s, s, s] for s in range(len(part))]), **EXACT)
    res = hl.pseudo_hessian(model, loss_fn, data, method=method, d3_diagonal=True)
    assert_close(res.d3, diag, **EXACT)


@pytest.mark.parametrize("method", ["loop", "vmap"])
def test_order4_and_by_layer_order3(method):
    model = mlp()
    data = data_for("mlp", n=5)
    part = hl.Partition.by_layer(model)
    d4 = hl.summary_tensor(model, loss_fn, data, 4, partition=part, method=method)
    assert d4.shape == (3, 3, 3, 3)
    for perm in itertools.permutations(range(4)):
        assert_close(d4.permute(perm), d4, **EXACT)
    u = torch.cat([t.reshape(-1) for t in full_gradient_list(model, data)])
    taylor = hl.taylor_terms(model, loss_fn, data, split_like(u, model), max_order=4)
    assert_close(d4.sum(), taylor[3], **EXACT)
    assert_close(
        hl.summary_tensor(model, loss_fn, data, 3, partition=part, method=method),
        reference_summary(model, loss_fn, data, 3, part),
        **EXACT,
    )


def full_gradient_list(model, data):
    return torch.autograd.grad(
        loss_fn(model.eval()(data[0]), data[1]), [p for p in model.parameters() if p.requires_grad]
    )


def split_like(flat, model):
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        t.reshape(p.shape)
        for t, p in zip(flat.split([p.numel() for p in params]), params, strict=True)
    ]


@pytest.mark.parametrize("method", ["loop", "vmap"])
def test_batches_equal_one_big_batch(method):
    model = MODELS["cnn"]()
    x, y = data_for("cnn", n=15)
    pieces = [(x[:4], y[:4]), (x[4:11], y[4:11]), (x[11:], y[11:])]
    whole = hl.pseudo_hessian(model, loss_fn, (x, y), method=method, d3_diagonal=True)
    split = hl.pseudo_hessian(model, loss_fn, pieces, method=method, d3_diagonal=True)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    loaded = hl.pseudo_hessian(model, loss_fn, loader, method=method)
    for other in (split, loaded):
        assert_close(other.H, whole.H, **EXACT)
        assert_close(other.g, whole.g, **EXACT)
        assert other.n_samples == 15
        assert other.loss == pytest.approx(whole.loss, rel=1e-12)
    assert_close(split.d3, whole.d3, **EXACT)
    # each batch's own gradient as direction is a different (mini-batch) quantity
    per_batch = sum(len(b[1]) * hl.pseudo_hessian(model, loss_fn, b).H for b in pieces) / 15
    assert float((per_batch - whole.H).abs().max()) > 1e-6


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("model_name", ["mlp", "cnn", "frozen"])
def test_sum_of_entries_is_taylor_term(model_name, order):
    model = MODELS[model_name]()
    data = data_for(model_name)
    gen = torch.Generator().manual_seed(7)
    u = [
        torch.randn(p.shape, generator=gen, dtype=F64)
        for p in model.parameters()
        if p.requires_grad
    ]
    taylor = hl.taylor_terms(model, loss_fn, data, u, max_order=3)
    for make in (hl.Partition.canonical, hl.Partition.by_kind):
        d = hl.summary_tensor(model, loss_fn, data, order, partition=make(model), direction=u)
        assert_close(d.sum(), taylor[order - 1], **EXACT)


def test_trivial_partition_is_gT_H_g():
    model = MODELS["bn_dropout"]()
    data = data_for("bn_dropout")
    g = full_derivative(model, loss_fn, data, 1)
    H = full_derivative(model, loss_fn, data, 2)
    res = hl.pseudo_hessian(model, loss_fn, data, partition=hl.Partition.trivial(model))
    assert_close(res.H, (g @ H @ g).reshape(1, 1), **EXACT)
    assert_close(res.g, (g @ g).reshape(1), **EXACT)


def test_order3_matches_finite_differences_of_H_bar():
    model = MODELS["cnn"]()
    data = data_for("cnn")
    part = hl.Partition.canonical(model)
    u = [t.detach().clone() for t in full_gradient_list(model, data)]
    d3 = hl.summary_tensor(model, loss_fn, data, 3, direction=u)
    eps = 1e-5
    for r in range(len(part)):
        shifted = []
        for sign in (1, -1):
            moved = perturbed_copy(model, u, r, sign * eps)
            shifted.append(hl.pseudo_hessian(moved, loss_fn, data, direction=u).H)
        assert_close((shifted[0] - shifted[1]) / (2 * eps), d3[:, :, r], rtol=1e-6, atol=1e-9)


def perturbed_copy(model, u, group, eps):
    import copy

    moved = copy.deepcopy(model)
    with torch.no_grad():
        list(moved.parameters())[group].add_(eps * u[group])
    return moved


@pytest.mark.parametrize("method", ["loop", "vmap"])
def test_linear_regression_closed_form(method):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(20, 3, generator=gen, dtype=F64)
    t = torch.randn(20, 1, generator=gen, dtype=F64)
    model = nn.Linear(3, 1).double()
    part = hl.Partition.discrete(model)
    ones = [torch.ones_like(p) for p in model.parameters()]
    res = hl.pseudo_hessian(
        model, F.mse_loss, (X, t), partition=part, direction=ones, method=method
    )
    Xb = torch.cat([X, torch.ones(20, 1, dtype=F64)], dim=1)
    assert_close(res.H, 2 * Xb.T @ Xb / 20, **EXACT)
    # u = g: H_bar = G H G with G = Diag(g), g = 2 Xb^T (Xb w - t) / N
    w = torch.cat([model.weight.detach().reshape(-1), model.bias.detach()])
    g = 2 * Xb.T @ (Xb @ w - t.reshape(-1)) / 20
    res = hl.pseudo_hessian(model, F.mse_loss, (X, t), partition=part, method=method)
    assert_close(res.H, torch.diag(g) @ (2 * Xb.T @ Xb / 20) @ torch.diag(g), **EXACT)
    assert_close(res.g, g**2, **EXACT)
    assert float(hl.summary_tensor(model, F.mse_loss, (X, t), 3).abs().max()) == 0.0


def test_model_state_untouched():
    model = MODELS["bn_dropout"]()
    model[1].train()
    model[3].eval()
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    data = data_for("bn_dropout")
    hl.pseudo_hessian(model, loss_fn, data, d3_diagonal=True)
    hl.summary_tensor(model, loss_fn, data, 3)
    hl.pseudo_hessian(model, loss_fn, data, train_mode=True)
    with pytest.raises(ValueError, match="BatchNorm in train mode has no 3rd-order"):
        hl.summary_tensor(model, loss_fn, data, 3, train_mode=True)
    hl.pseudo_hessian(model, loss_fn, data, method="vmap", dtype=torch.float32)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(v.dtype == F64 for v in after.values() if v.is_floating_point())
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(p.grad, torch.full_like(p, 3.0)) for p in model.parameters())


def test_eval_mode_by_default_and_train_mode_on_request():
    model = MODELS["bn_dropout"]()
    model.train()
    data = data_for("bn_dropout")
    evaluated = hl.pseudo_hessian(model, loss_fn, data)
    reference = reference_summary(model, loss_fn, data, 2)  # the reference runs in eval mode
    assert_close(evaluated.H, reference, **EXACT)
    torch.manual_seed(0)
    trained = hl.pseudo_hessian(model, loss_fn, data, train_mode=True)
    assert float((trained.H - evaluated.H).abs().max()) > 1e-6


def test_batch_statistics_in_train_mode_match_brute_force():
    torch.manual_seed(5)
    from tests.tiny import perturb

    model = perturb(
        nn.Sequential(
            nn.Linear(4, 5),
            nn.BatchNorm1d(5, track_running_stats=False),
            nn.Tanh(),
            nn.Linear(5, 3),
        )
    )
    data = data_for("mlp")
    res = hl.pseudo_hessian(model, loss_fn, data, train_mode=True)
    assert_close(res.H, reference_summary(model, loss_fn, data, 2, train_mode=True), **EXACT)
    assert torch.equal(res.H, res.H.T)


def test_float32_default_close_to_float64():
    model = MODELS["cnn"]().float()
    x, y = data_for("cnn")
    res = hl.pseudo_hessian(model, loss_fn, (x.float(), y))
    assert res.H.dtype == torch.float32
    ref = hl.pseudo_hessian(model, loss_fn, (x, y), dtype=F64)
    assert ref.H.dtype == F64
    assert_close(res.H, ref.H, rtol=1e-4, atol=1e-7 * float(ref.H.abs().max()))


def test_explicit_cpu_device_and_dict_direction():
    model = mlp()
    data = data_for("mlp")
    grads = dict(
        zip([n for n, _ in model.named_parameters()], full_gradient_list(model, data), strict=True)
    )
    a = hl.pseudo_hessian(model, loss_fn, data, device="cpu", direction=grads)
    b = hl.pseudo_hessian(model, loss_fn, data)
    assert_close(a.H, b.H, **EXACT)
    assert a.H.device.type == "cpu"


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Every device of this machine: ``cpu`` always, ``cuda`` when available."""
    return torch.device(request.param)


@pytest.mark.parametrize("method", ["loop", "vmap"])
def test_every_device_matches_brute_force(device, method):
    model = MODELS["cnn"]()
    data = data_for("cnn", n=16)  # more than the probe's 4 samples: the memory plan runs
    res = hl.pseudo_hessian(model, loss_fn, data, device=device, method=method, d3_diagonal=True)
    assert res.H.device.type == device.type and res.d3.device.type == device.type
    assert_close(res.H, reference_summary(model, loss_fn, data, 2), **EXACT)
    assert_close(res.g, reference_summary(model, loss_fn, data, 1), **EXACT)
    d3 = hl.summary_tensor(model, loss_fn, data, 3, diagonal=True)  # CPU loop: checked above
    assert_close(res.d3, d3, **EXACT)


def assert_ticks(seen: list[tuple[float, int]], total: int) -> None:
    """Ticks ``(done, total)``: every batch ends, in order (H̄'s rows may tick fractions)."""
    done = [d for d, _ in seen]
    assert {t for _, t in seen} == {total} and done == sorted(done) and done[-1] == total
    assert set(range(1, total + 1)) <= set(done)


def test_progress_callback_counts_batches(capsys):
    model = mlp()
    x, y = data_for("mlp", n=12)
    batches = [(x[i : i + 4], y[i : i + 4]) for i in range(0, 12, 4)]
    seen = []
    hl.pseudo_hessian(
        model, loss_fn, batches, progress=lambda done, total: seen.append((done, total))
    )
    assert_ticks(seen, 6)  # 3 batches, 2 passes
    direction, first = list(model.parameters()), len(seen)
    hl.summary_tensor(
        model, loss_fn, batches, 2, direction=direction, progress=lambda *a: seen.append(a)
    )
    assert_ticks(seen[first:], 3)  # a given direction: pass 2 only
    capsys.readouterr()
    hl.pseudo_hessian(model, loss_fn, batches, progress=True)
    bar = capsys.readouterr().err
    assert "H̄ batches" in bar and "6/6" in bar, bar


def test_bad_inputs_have_clear_errors():
    model = mlp()
    data = data_for("mlp")
    with pytest.raises(TypeError, match="one-shot iterator"):
        hl.pseudo_hessian(model, loss_fn, iter([data]))
    with pytest.raises(TypeError, match="iterable"):
        hl.pseudo_hessian(model, loss_fn, data[0])
    with pytest.raises(ValueError, match="shape"):
        hl.pseudo_hessian(model, loss_fn, data, direction=[torch.zeros(1)] * 6)
    with pytest.raises(ValueError, match="6 parameters"):
        hl.pseudo_hessian(model, loss_fn, data, direction=[torch.zeros(1)])
    with pytest.raises(ValueError, match="method"):
        hl.pseudo_hessian(model, loss_fn, data, method="magic")
    with pytest.raises(ValueError, match="order"):
        hl.summary_tensor(model, loss_fn, data, 0)
    with pytest.raises(ValueError, match="no sample"):
        hl.pseudo_hessian(model, loss_fn, [], direction=list(model.parameters()))
    with pytest.raises(hl.PartitionError, match="does not match"):
        hl.pseudo_hessian(model, loss_fn, data, partition=hl.Partition.canonical(nn.Linear(2, 2)))


def test_memory_guard_names_the_size(monkeypatch):
    model = mlp()
    monkeypatch.setenv("HESSIAN_LENS_MAX_MEMORY_GB", str(4_000 / 2**30))  # 4,000 bytes
    with pytest.raises(hl.MemoryGuardError, match=r"D\^\(3\) over S = 6 groups needs") as err:
        hl.summary_tensor(model, loss_fn, data_for("mlp"), 3)
    # 3 copies of 6 + 36 + 216 float64 entries and the direction do not fit 4,000 bytes;
    # order 2 (3 x 8 x 42 + 8 x 69 = 1,560 bytes) and the diagonal do
    assert "order <= 2 at S = 6" in str(err.value) and "diagonal=True" in str(err.value)
    assert "HESSIAN_LENS_MAX_MEMORY_GB" in str(err.value)


def test_vmap_refuses_batch_statistics():
    model = MODELS["bn_dropout"]()
    with pytest.raises(ValueError, match="forward mode gives a wrong Hessian"):
        hl.pseudo_hessian(model, loss_fn, data_for("bn_dropout"), method="vmap", train_mode=True)
