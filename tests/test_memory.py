"""The memory plan: the budget, the predicted peak, micro-batches, and what would fit."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import hessian_lens as hl
from hessian_lens import memory
from tests.compare import DEVICES, EXACT, assert_close
from tests.conftest import REPO
from tests.tiny import cnn, data_for, loss_fn, perturb

GIB_ENV = memory.MAX_MEMORY_ENV


def set_budget(monkeypatch, nbytes: float) -> None:
    monkeypatch.setenv(GIB_ENV, repr(nbytes / memory.GIB))


class Counted(nn.Module):
    """The tiny CNN, recording the batch size of every forward call."""

    def __init__(self) -> None:
        super().__init__()
        self.net = cnn()
        self.sizes: list[int] = []

    def forward(self, x):
        self.sizes.append(int(x.shape[0]))
        return self.net(x)


PEAK_SCRIPT = """
import json, sys, threading, time
import torch, torch.nn.functional as F
import hessian_lens as hl
from hessian_lens.models import LeNet5

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

torch.manual_seed(0)
model, batch = LeNet5(), int(sys.argv[1])
x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
hl.pseudo_hessian(model, F.cross_entropy, (x[:4], y[:4]))  # load the kernels' code
estimate = hl.memory_plan(model, F.cross_entropy, (x, y)).peak(batch)
base = status("VmRSS:")
try:  # reset the resident set's high-water mark (Linux >= 4.0)
    open("/proc/self/clear_refs", "w").write("5")
    peak = None
except OSError:
    peak, stop = [base], threading.Event()
    def poll():
        while not stop.is_set():
            peak[0] = max(peak[0], status("VmRSS:"))
            time.sleep(0.0005)
    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
hl.pseudo_hessian(model, F.cross_entropy, (x, y))
if peak is None:
    measured = status("VmHWM:") - base
else:
    stop.set(), thread.join()
    measured = peak[0] - base
print(json.dumps({"estimate": estimate, "measured": measured}))
"""


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Every device of this machine: ``cpu`` always, ``cuda`` when available."""
    return torch.device(request.param)


def measured_cpu_peak(batch: int) -> dict[str, int]:
    """Predicted and measured peak of LeNet-5's H̄ in a fresh process (resident set)."""
    out = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(batch)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def measured_cuda_peak(batch: int) -> dict[str, int]:
    """Predicted and measured peak of LeNet-5's H̄ on the GPU (allocator's peak)."""
    from hessian_lens.models import LeNet5

    model, device = LeNet5().cuda(), torch.device("cuda")
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    hl.pseudo_hessian(model, loss_fn, (x[:4], y[:4]))
    estimate = hl.memory_plan(model, loss_fn, (x, y)).peak(batch)
    with memory.PeakMeter(device) as meter:
        hl.pseudo_hessian(model, loss_fn, (x, y))
    return {"estimate": estimate, "measured": meter.peak()}


def test_predicted_peak_within_a_factor_two_of_the_measured_one(device):
    if device.type == "cpu" and not sys.platform.startswith("linux"):
        pytest.skip("the CPU measure reads /proc/self/status")
    sizes = (measured_cuda_peak if device.type == "cuda" else measured_cpu_peak)(256)
    ratio = sizes["estimate"] / sizes["measured"]
    assert sizes["measured"] > 10 * 2**20, sizes  # LeNet-5 at 256 samples: ~50 MiB on CPU
    assert 0.5 <= ratio <= 2.0, sizes


@pytest.mark.parametrize("method", ["loop", "vmap"])
def test_tiny_budget_splits_batches_and_keeps_the_result(monkeypatch, method):
    model = Counted()
    x, y = data_for("cnn", n=40)
    kwargs = {"method": method, "d3_diagonal": True, "chunk_size": 4 if method == "vmap" else None}
    whole = hl.pseudo_hessian(model, loss_fn, (x, y), **kwargs)
    plan = hl.memory_plan(model, loss_fn, (x, y), **kwargs)
    assert whole.memory.micro_batch >= 40 and plan.micro_batch >= 40
    set_budget(monkeypatch, plan.output_bytes + plan.fixed_bytes + 6.5 * plan.per_sample_bytes)
    model.sizes.clear()
    split = hl.pseudo_hessian(model, loss_fn, (x, y), **kwargs)
    assert split.memory.micro_batch == 6 and max(model.sizes) <= 6
    assert model.sizes.count(6) >= 2 * 6  # 40 = 6 x 6 + 4 in pass 1 and in pass 2
    for got, want in ((split.H, whole.H), (split.g, whole.g), (split.d3, whole.d3)):
        assert_close(got, want, **EXACT)
    assert split.loss == pytest.approx(whole.loss, rel=1e-13) and split.n_samples == 40
    if method == "vmap":  # free to choose: fewer directions at once, larger micro-batches
        free = hl.pseudo_hessian(model, loss_fn, (x, y), method=method, d3_diagonal=True)
        assert free.memory.chunk_size < 4 and free.memory.micro_batch > 6
        assert_close(free.H, whole.H, **EXACT)


class AtenLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` through ``torch.native_layer_norm`` (vmap's derivatives are wrong)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.native_layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)[
            0
        ]


def test_vmap_that_falls_back_to_the_loop_is_planned_as_the_loop(monkeypatch):
    """The aten layer norm makes method='vmap' run the loop: the plan is the loop's.

    Planned as vmap, the budget below (the loop's 40 samples and a half) would fit only
    40 / (S + 1) = 5 samples of the vmap plan: the run would split its batch for nothing.
    (``nn.LayerNorm`` runs decomposed under vmap; a direct call of the aten operation is
    what still falls back.)
    """
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), AtenLayerNorm(6), nn.Tanh(), nn.Linear(6, 3))
    counted = Counted()
    counted.net = model
    x, y = data_for("mlp", n=40)
    loop = hl.memory_plan(counted, loss_fn, (x, y), method="loop")
    vmap = hl.memory_plan(counted, loss_fn, (x, y), method="vmap")
    assert (vmap.fixed_bytes, vmap.per_sample_bytes) == (loop.fixed_bytes, loop.per_sample_bytes)
    assert vmap.chunk_size is None
    set_budget(monkeypatch, loop.output_bytes + loop.fixed_bytes + 40.5 * loop.per_sample_bytes)
    counted.sizes.clear()
    want = hl.pseudo_hessian(counted, loss_fn, (x, y), method="loop")
    loop_calls, counted.sizes = counted.sizes, []
    res = hl.pseudo_hessian(counted, loss_fn, (x, y), method="vmap")
    assert res.method == "loop" and any("fell back to the loop" in n for n in res.notes)
    assert res.memory.micro_batch >= 40
    # beyond the screen and the probes (2 and 4 samples), one forward of the whole batch
    # (the reduction was checked by the loop's call): no split of the 40 samples
    assert 40 in loop_calls and [n for n in counted.sizes if n > 4] == [40], counted.sizes
    assert_close(res.H, want.H, **EXACT)


def test_tiny_budget_with_batches_and_order_three(monkeypatch):
    model = Counted()
    x, y = data_for("cnn", n=35)
    batches = [(x[:20], y[:20]), (x[20:], y[20:])]
    whole = hl.summary_tensor(model, loss_fn, batches, 3)
    plan = hl.memory_plan(model, loss_fn, batches[0], order=3)
    set_budget(monkeypatch, plan.output_bytes + plan.fixed_bytes + 7.5 * plan.per_sample_bytes)
    model.sizes.clear()
    assert_close(hl.summary_tensor(model, loss_fn, batches, 3), whole, **EXACT)
    assert max(model.sizes) <= 7


def test_impossible_budget_says_what_would_fit(monkeypatch):
    model = cnn()
    data = data_for("cnn", n=20)
    plan = hl.memory_plan(model, loss_fn, data, order=3)
    set_budget(monkeypatch, plan.output_bytes + plan.fixed_bytes + 0.5 * plan.per_sample_bytes)
    with pytest.raises(hl.MemoryGuardError, match="one sample needs about") as err:
        hl.summary_tensor(model, loss_fn, data, 3)
    assert "Would fit: order 2 (micro-batches of" in str(err.value)
    assert GIB_ENV in str(err.value)  # where the budget came from


def test_batch_statistics_cannot_be_split(monkeypatch):
    torch.manual_seed(5)
    model = perturb(nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3)))
    data = data_for("mlp", n=30)
    plan = hl.memory_plan(model, loss_fn, data, train_mode=True)
    set_budget(monkeypatch, plan.output_bytes + plan.fixed_bytes + 10.5 * plan.per_sample_bytes)
    with pytest.raises(hl.MemoryGuardError, match="cannot split it. Would fit: batches of 10"):
        hl.pseudo_hessian(model, loss_fn, data, train_mode=True)
    hl.pseudo_hessian(model, loss_fn, data)  # eval mode: split, fine


def test_unreadable_free_memory_warns_and_plans_conservatively(monkeypatch):
    monkeypatch.delenv(GIB_ENV, raising=False)
    monkeypatch.setattr(memory, "_meminfo_available", lambda: None)
    monkeypatch.setattr(memory, "_cgroup_available", lambda: None)
    monkeypatch.setattr(memory, "_cuda_free", lambda device: None)
    for device in ("cpu", "cuda"):
        with pytest.warns(RuntimeWarning, match="cannot read the free memory"):
            budget, source = memory.memory_budget(torch.device(device))
        assert budget == memory.FALLBACK_BUDGET_BYTES < 2**40 and "fallback" in source
    with pytest.warns(RuntimeWarning, match=GIB_ENV):
        res = hl.pseudo_hessian(cnn(), loss_fn, data_for("cnn", n=20))
    assert res.memory.budget == memory.FALLBACK_BUDGET_BYTES


def test_budget_is_the_smallest_reading_and_the_override_wins(monkeypatch):
    monkeypatch.delenv(GIB_ENV, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(memory, "_meminfo_available", lambda: 10 * memory.GIB)
    monkeypatch.setattr(memory, "_cgroup_available", lambda: 5 * memory.GIB)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        budget, source = memory.memory_budget(torch.device("cpu"))
    assert budget == int(memory.MEMORY_HEADROOM * 5 * memory.GIB) and "5.0 GiB free" in source
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two ranks share this host's memory
    assert memory.memory_budget(torch.device("cpu"))[0] == budget // 2
    monkeypatch.setenv(GIB_ENV, "0.5")
    assert memory.memory_budget(torch.device("cpu")) == (2**29, f"{GIB_ENV}=0.5")
    monkeypatch.setenv(GIB_ENV, "lots")
    with pytest.raises(ValueError, match="not a number of GiB"):
        memory.memory_budget(torch.device("cpu"))


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_cgroup_limit_minus_usage_plus_inactive_file_cache(tmp_path, monkeypatch, version):
    root = tmp_path / "cgroup"
    if version == "v2":
        line, leaf = "0::/job/task\n", root / "job" / "task"
        files = ("memory.max", "memory.current", "inactive_file")
        (root / "job").mkdir(parents=True)
        (root / "job" / "memory.max").write_text("max\n")  # an unlimited ancestor
    else:
        line, leaf = "4:memory:/job\n", root / "memory" / "job"
        files = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        (root / "memory").mkdir(parents=True)
        (root / "memory" / files[0]).write_text(f"{2**63 - 4096}\n")  # v1's "no limit"
    leaf.mkdir(parents=True)
    (leaf / files[0]).write_text(f"{8 * memory.GIB}\n")
    (leaf / files[1]).write_text(f"{6 * memory.GIB}\n")
    (leaf / "memory.stat").write_text(f"anon 1\n{files[2]} {memory.GIB}\n")
    (tmp_path / "cgroup_file").write_text(line)
    monkeypatch.setattr(memory, "CGROUP_ROOT", root)
    monkeypatch.setattr(memory, "PROC_CGROUP", tmp_path / "cgroup_file")
    assert memory._cgroup_available() == 3 * memory.GIB  # 8 - (6 - 1)
    (leaf / files[0]).write_text("max\n" if version == "v2" else f"{2**63 - 4096}\n")
    assert memory._cgroup_available() is None


# ---------------------------------------------------------------------------- the plan cache
def test_a_second_identical_call_runs_only_the_summarys_own_forwards():
    """Issue 30: the probes and the reduction check run once per model, shapes and options.

    The second call of a single batch taken whole makes one forward (a partition of whole
    tensors: the gradient and H̄ from one graph); over two batches, one per batch and
    pass. On bf6b511..e800975 the probe cache missed (it was keyed on a fresh loss
    contract) and the reduction was checked again: 6 calls.
    """
    torch.manual_seed(0)
    model, (x, y) = Counted(), data_for("cnn", n=12)
    hl.pseudo_hessian(model, loss_fn, (x, y))
    assert len(model.sizes) > 1  # probes (2, 4 samples) and the check of the reduction
    model.sizes.clear()
    first = hl.pseudo_hessian(model, loss_fn, (x, y))
    assert model.sizes == [12]
    batches = [(x[:6], y[:6]), (x[6:], y[6:])]
    hl.pseudo_hessian(model, loss_fn, batches)
    model.sizes.clear()
    split = hl.pseudo_hessian(model, loss_fn, batches)
    assert model.sizes == [6, 6, 6, 6]  # pass 1 and pass 2, nothing else
    assert_close(split.H, first.H, rtol=1e-5, atol=1e-7)


def test_the_plan_cache_misses_when_the_model_or_the_options_change():
    """Another dtype, mode, shape, partition or a layer changed in place: probed again."""
    torch.manual_seed(0)
    model, (x, y) = Counted(), data_for("cnn", n=12)
    hl.pseudo_hessian(model, loss_fn, (x, y))

    def probed(**kw) -> bool:
        model.sizes.clear()
        hl.pseudo_hessian(model, loss_fn, (kw.pop("x", x), y), **kw)
        return any(n < 12 for n in model.sizes)

    assert not probed()
    assert probed(dtype=torch.float32) and not probed(dtype=torch.float32)
    assert probed(partition=hl.Partition.by_layer(model))
    assert probed(train_mode=True)
    model.net.conv = nn.Conv2d(1, 2, 3, bias=False).double()  # a parameter less
    assert probed() and not probed()


def test_probe_shapes_and_losses_key_the_cache():
    """A loss is keyed by identity, weakly: a new lambda probes; the model is not kept."""
    import gc
    import weakref

    torch.manual_seed(0)
    model, (x, y) = Counted(), data_for("cnn", n=12)
    hl.pseudo_hessian(model, loss_fn, (x, y))
    model.sizes.clear()
    hl.pseudo_hessian(model, lambda out, t: loss_fn(out, t), (x, y), reduction="mean")
    assert any(n < 12 for n in model.sizes)
    captured = Counted()
    ref = weakref.ref(captured)
    with_model = lambda out, t, m=captured: loss_fn(out, t) + 0 * m.net.fc.bias.sum()  # noqa: E731
    hl.pseudo_hessian(captured, with_model, (x, y), reduction="mean")
    del with_model
    del captured
    gc.collect()
    assert ref() is None  # neither the probe cache nor the check's cache keeps the model


def test_identity_keys_never_match_a_reused_id():
    class Thing:
        pass

    a = Thing()
    key = memory.identity(a)
    assert key == memory.identity(a) and hash(key) == hash(memory.identity(a))
    assert memory.identity(None) is None
    b = Thing()
    forged = memory.identity(b)
    forged._id = key._id  # as if b had been given a's id after a died
    assert forged != key
    assert memory.identity(3) != memory.identity(3)  # not weakly referenceable: never shared
