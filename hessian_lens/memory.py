"""Memory of the engine: how much it may use, how much a computation needs, how to split it.

The budget is what the device has free (CPU: the smaller of ``/proc/meminfo``'s
MemAvailable and the cgroup's limit minus its usage; CUDA: ``torch.cuda.mem_get_info``
plus what PyTorch's allocator holds unused), times :data:`MEMORY_HEADROOM`, shared by the
ranks of one host on the CPU. ``HESSIAN_LENS_MAX_MEMORY_GB`` overrides it. When free memory
cannot be read the budget is :data:`FALLBACK_BUDGET_BYTES`, with a warning: never "unlimited".

The need is measured, not guessed: the engine runs a truncated copy of its own work (the
widest chain of derivative passes, or one vmap chunk) on probe batches of
:data:`PROBE_SAMPLES` samples and records the peak of the memory it allocates (CPU: live
tensor storages seen by a dispatch mode; CUDA: ``torch.cuda.max_memory_allocated``). A
straight line through the two probes gives ``peak(m) = fixed + m * per_sample``; with the
S^d outputs on top, the largest micro-batch ``m`` that fits the budget is what the engine
uses. Splitting a batch into micro-batches is exact: every summary is sample-weighted.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from hessian_lens import batches

GIB = 2**30
MIB = 2**20
MAX_MEMORY_ENV = "HESSIAN_LENS_MAX_MEMORY_GB"  # in GiB (2**30 bytes); overrides the budget
MEMORY_HEADROOM = 0.8  # share of the free memory the engine plans to use
FALLBACK_BUDGET_BYTES = 2 * GIB  # budget when free memory cannot be read
PROBE_SAMPLES = (2, 4)  # probe batch sizes; batches of at most the larger are never split
OUTPUT_COPIES = 3  # running sum, one batch's contribution, the symmetrised result
# Per-sample bytes the probe cannot see, as a factor on what it sees. CPU: scratch inside
# kernels (im2col, ...) and allocator overhead; measured 1.1-2.5 (resident set peak over
# tensor bytes) on LeNet-5, VGG-11' and a tiny CNN, orders 2-3, both back ends; 1.5-1.8
# on the per-head ViT and GPT (benchmarks/bench_memory.py: predicted vs measured). CUDA: the
# allocator's peak already holds kernel workspaces; the margin covers rounding and
# fragmentation (not yet measured: benchmarks/gpu_check.sh prints predicted vs measured).
PER_SAMPLE_OVERHEAD = {"cpu": 2.0, "cuda": 1.25}
ROWS_MAX = 64  # loop back end: most rows of H̄ per vectorised backward pass
VMAP_MIN_MICRO_BATCH = 32  # vmap: fewer directions at once before micro-batches this small
UNBOUNDED = 2**62  # micro-batch size when a sample costs no measurable memory
CGROUP_UNLIMITED = 2**60  # cgroup v1 writes "no limit" as a number near 2**63
PROC_MEMINFO = Path("/proc/meminfo")
PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")


class MemoryGuardError(MemoryError):
    """The requested summary would not fit in the memory of the device.

    The message says what would fit.
    """


@dataclass
class MemoryPlan:
    """How a computation fits its memory budget (all sizes in bytes).

    The predicted peak of a micro-batch of ``m`` samples is
    ``output_bytes + fixed_bytes + m * per_sample_bytes``.

    Attributes:
        budget: the bytes the engine may use.
        source: where the budget comes from (environment, free memory, fallback).
        output_bytes: the summaries (``OUTPUT_COPIES`` copies of every S^k tensor) and
            the direction with its running gradient sum.
        fixed_bytes: the batch-independent part of the probe's peak.
        per_sample_bytes: the per-sample part of the probe's peak.
        micro_batch: samples per micro-batch; ``None`` when no probe ran (every batch whole).
        chunk_size: directions per vectorised call (vmap back end), ``None`` for all.
        level_peaks: probe peaks per derivative order at the larger probe size (loop).
        rows: loop back end, H̄ alone: rows per vectorised backward pass (``None``: one).
        row_fixed_bytes: the batch-independent bytes of each further row in one pass.
        row_per_sample_bytes: the per-sample bytes of each further row in one pass.
    """

    budget: int
    source: str
    output_bytes: int
    fixed_bytes: int = 0
    per_sample_bytes: int = 0
    micro_batch: int | None = None
    chunk_size: int | None = None
    level_peaks: list[int] = field(default_factory=list)
    rows: int | None = None
    row_fixed_bytes: int = 0
    row_per_sample_bytes: int = 0

    def peak(self, samples: int) -> int:
        """Predicted peak bytes of one micro-batch of ``samples`` samples.

        ``outputs + fixed + n per_sample + (rows - 1) (row_fixed + n row_per_sample)``.
        """
        more = max((self.rows or 1) - 1, 0) * self.row_bytes(samples)
        return self.output_bytes + self.fixed_bytes + samples * self.per_sample_bytes + more

    def row_bytes(self, samples: int) -> int:
        """Bytes of one more row in a vectorised pass over ``samples`` samples."""
        return self.row_fixed_bytes + samples * self.row_per_sample_bytes

    def describe(self, samples: int) -> str:
        """One line: predicted peak for ``samples``, micro-batch, chunk and budget."""
        chunk = f", chunk {self.chunk_size}" if self.chunk_size else ""
        chunk += f", {self.rows} rows per pass" if self.rows and self.rows > 1 else ""
        return (
            f"peak {size(self.peak(samples))} for {samples} samples (micro-batch "
            f"{min(self.micro_batch or samples, samples)}{chunk}); budget {size(self.budget)} "
            f"({self.source})"
        )


# ---------------------------------------------------------------------------- budget
def memory_budget(device: torch.device) -> tuple[int, str]:
    """The bytes the engine may use on ``device`` and where that figure comes from.

    ``HESSIAN_LENS_MAX_MEMORY_GB`` (GiB) wins; otherwise
    ``MEMORY_HEADROOM * free / (ranks on this host)`` (CPU ranks share the host's memory).
    Unreadable free memory gives ``FALLBACK_BUDGET_BYTES`` and a warning.
    """
    override = os.environ.get(MAX_MEMORY_ENV)
    if override:
        try:
            gib = float(override)
        except ValueError as err:
            raise ValueError(f"{MAX_MEMORY_ENV}={override!r} is not a number of GiB") from err
        if not gib > 0:
            raise ValueError(f"{MAX_MEMORY_ENV} must be > 0, got {override!r}")
        return int(gib * GIB), f"{MAX_MEMORY_ENV}={override}"
    free = free_memory(device)
    if free is None:
        warnings.warn(
            f"cannot read the free memory of {device}: planning with "
            f"{FALLBACK_BUDGET_BYTES / GIB:g} GiB; set {MAX_MEMORY_ENV} to the GiB it may use",
            RuntimeWarning,
            stacklevel=3,
        )
        return FALLBACK_BUDGET_BYTES, "fallback (free memory unreadable)"
    sharers = 1 if device.type == "cuda" else _ranks_on_host()
    share = f" / {sharers} ranks" if sharers > 1 else ""
    return int(MEMORY_HEADROOM * free / sharers), (
        f"{MEMORY_HEADROOM:.0%} of {free / GIB:,.1f} GiB free{share}"
    )


def free_memory(device: torch.device) -> int | None:
    """Free bytes on ``device``; ``None`` when no reader works.

    CPU: the smaller of MemAvailable and the cgroup's ``limit - (usage - inactive file
    cache)`` (v1 and v2, the process's cgroup and its ancestors). CUDA: the device's free
    memory plus what PyTorch's caching allocator reserved but does not use.
    """
    if device.type == "cuda":
        return _cuda_free(device)
    readings = [r for r in (_meminfo_available(), _cgroup_available()) if r is not None]
    return min(readings) if readings else None


def _cuda_free(device: torch.device) -> int | None:
    try:
        free = torch.cuda.mem_get_info(device)[0]
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    except (RuntimeError, AssertionError):
        return None
    return int(free + max(cached, 0))


def _meminfo_available() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes, or ``None``."""
    try:
        for line in PROC_MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    """Bytes left under the tightest cgroup memory limit of this process, or ``None``.

    ``None`` when no limit is set or readable (v2 ``memory.max``, v1
    ``memory.limit_in_bytes``).
    """
    found = []
    for directory, limit_file, usage_file, inactive_key in _cgroup_dirs(PROC_CGROUP, CGROUP_ROOT):
        for level in (directory, *directory.parents):
            if not level.is_relative_to(CGROUP_ROOT):
                break
            left = _cgroup_left(level, limit_file, usage_file, inactive_key)
            if left is not None:
                found.append(left)
    return min(found) if found else None


@functools.lru_cache(maxsize=8)
def _cgroup_dirs(proc_cgroup: Path, root: Path) -> tuple[tuple[Path, str, str, str], ...]:
    """The memory cgroup directories of this process (v2 unified, v1 memory controller).

    Read from ``/proc/self/cgroup`` once: a process does not change cgroup.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return ()
    out = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        rel = parts[2].lstrip("/")
        if parts[0] == "0" and parts[1] == "":
            out.append((root / rel, "memory.max", "memory.current", "inactive_file"))
        elif "memory" in parts[1].split(","):
            out.append(
                (
                    root / "memory" / rel,
                    "memory.limit_in_bytes",
                    "memory.usage_in_bytes",
                    "total_inactive_file",
                )
            )
    return tuple(out)


def _cgroup_left(level: Path, limit_file: str, usage_file: str, inactive_key: str) -> int | None:
    try:
        raw = (level / limit_file).read_text().strip()
        if raw == "max" or int(raw) >= CGROUP_UNLIMITED:
            return None
        usage = int((level / usage_file).read_text().strip())
    except (OSError, ValueError):
        return None
    inactive = 0
    try:
        for line in (level / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == inactive_key:
                inactive = int(value)
    except (OSError, ValueError):
        pass
    return max(int(raw) - (usage - inactive), 0)


def _ranks_on_host() -> int:
    try:
        return max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


# ---------------------------------------------------------------------------- measuring
class _LiveBytes(TorchDispatchMode):
    """Live bytes of the tensor storages created while active, and their peak (CPU)."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """Never compiled: no ``torch._disable_dynamo`` wrapper.

        That wrapper's first call imports torch._dynamo (about 2 s).
        """
        return False

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t.untyped_storage())
        return out

    def _track(self, storage) -> None:
        try:
            key, size = storage.data_ptr(), storage.nbytes()
        except RuntimeError:  # functorch wrappers have no storage of their own
            return
        if size == 0 or key in self._sizes:
            return
        self._sizes[key] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)


class PeakMeter:
    """Peak extra memory allocated inside a ``with`` block; :meth:`peak` reads it so far.

    On CUDA it resets the device's peak statistics (``torch.cuda.reset_peak_memory_stats``):
    a caller measuring its own peak across an engine call that probes (the first call per
    model, batch shape and orders) sees the peak from the probe on.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._mode: _LiveBytes | None = None
        self._base = 0

    def __enter__(self) -> PeakMeter:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._mode = _LiveBytes()
            self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._mode is not None:
            self._mode.__exit__(*exc)

    def peak(self) -> int:
        """Peak bytes allocated since entering, beyond what was allocated before."""
        if self._mode is not None:
            return self._mode.peak
        return max(torch.cuda.max_memory_allocated(self.device) - self._base, 0)


# ---------------------------------------------------------------------------- planning
Probe = Callable[[int, int | None], list[int]]  # (samples, chunk) -> peaks per level


def output_bytes(S: int, *, full: int, diag: int, item: int, numel: int) -> int:
    """The bytes of the summaries of orders up to ``full`` (then diagonals up to ``diag``).

    ``OUTPUT_COPIES * item * (sum_{k<=full} S^k + (diag - full) S)`` plus the direction
    (``item * P``, ``P = numel``).
    """
    entries = sum(S**k for k in range(1, full + 1)) + max(diag - full, 0) * S
    return OUTPUT_COPIES * item * entries + item * numel


def check_outputs(
    S: int, *, full: int, diag: int, item: int, numel: int, budget: int, source: str, dtype
) -> list[int]:
    """The bytes of the outputs at orders 1..top (full orders, then diagonals).

    Raises:
        MemoryGuardError: the outputs exceed ``budget`` (the message names the largest
            order, partition size and diagonal that would fit).
    """
    per_order = [
        output_bytes(S, full=min(k, full), diag=k if k > full else 0, item=item, numel=numel)
        for k in range(1, max(full, diag) + 1)
    ]
    need = per_order[-1]
    if need <= budget:
        return per_order
    top = max(full, diag)

    def fits(s: int, d: int) -> bool:
        return output_bytes(s, full=d, diag=0, item=item, numel=numel) <= budget

    order = max((d for d in range(1, top + 1) if fits(S, d)), default=0)
    groups = max((s for s in _candidates(S) if fits(s, full)), default=0)
    diag_need = output_bytes(S, full=1, diag=top, item=item, numel=numel)
    raise MemoryGuardError(
        f"D^({full}) over S = {S} groups needs about {size(need)} "
        f"({S}^{full} entries in {dtype}, plus work space) but the budget is "
        f"{size(budget)} ({source}). Would fit: "
        + _or(
            [f"order <= {order} at S = {S}"] * (order >= 1)
            + [f"a coarser partition, S <= {groups} groups at order {full}"] * (groups >= 1)
            + [f"diagonal=True ({size(diag_need)})"] * (diag_need <= budget)
        )
    )


def _candidates(S: int) -> list[int]:
    return sorted({max(S >> i, 1) for i in range(S.bit_length() + 1)})


def _or(options: list[str]) -> str:
    return " or ".join(options) if options else f"nothing at all: raise {MAX_MEMORY_ENV}"


def fit_line(peaks: Sequence[int], samples: Sequence[int]) -> tuple[int, int]:
    """``(fixed, per_sample)`` of the straight line through two probe peaks.

    The per-sample slope is never negative; when it is zero, the proportional share
    ``peak / samples`` of the larger probe is used instead.
    """
    (n0, n1), (p0, p1) = samples, peaks
    per_sample = max((p1 - p0) / (n1 - n0), 0.0)
    if per_sample == 0.0:
        per_sample = p1 / n1
    fixed = max(p1 - per_sample * n1, 0.0)
    return int(fixed), math.ceil(per_sample)


def plan_micro_batch(
    *,
    probe: Probe,
    chunks: Sequence[int | None],
    batch: int,
    budget: int,
    source: str,
    outputs: Sequence[int],
    min_micro_batch: int,
    overhead: float = 1.0,
) -> MemoryPlan:
    """The plan of the first chunk size whose micro-batch is large enough.

    Chunks are tried largest first; the first whose micro-batch reaches
    ``min(batch, min_micro_batch)`` samples wins, else the last one that fits a single sample.

    Args:
        probe: ``probe(n, chunk)``, the peaks per order on ``n`` samples.
        chunks: the chunk sizes to try, largest first (``None``: all directions at once).
        batch: the number of samples in the batch.
        budget: the bytes the engine may use.
        source: where the budget comes from (shown in the plan and in error messages).
        outputs: the output bytes at orders 1, 2, .. (the last: the order asked for).
        min_micro_batch: a micro-batch this large (capped at ``batch``) stops the search;
            below it, the next smaller chunk is tried.
        overhead: factor on the per-sample slope (:data:`PER_SAMPLE_OVERHEAD`).

    Raises:
        MemoryGuardError: not even one sample fits with the smallest chunk (the message
            names the lower orders that would fit, and their micro-batches).
    """
    best = None
    for chunk in chunks:
        levels = [probe(n, chunk) for n in PROBE_SAMPLES]
        common = {"chunk": chunk, "budget": budget, "source": source, "overhead": overhead}
        plan = _line_plan(levels, -1, outputs=outputs[-1], **common)
        if plan.micro_batch >= 1:
            best = plan
            if plan.micro_batch >= min(batch, min_micro_batch):
                break
    if best is None:
        lower = [
            (k, _line_plan(levels, k - 1, outputs=outputs[k - 1], **common))
            for k in range(len(levels[-1]) - 1, 0, -1)
        ]
        raise MemoryGuardError(_one_sample_message(plan, lower, several_chunks=len(chunks) > 1))
    return best


def _line_plan(
    levels: list[list[int]],
    level: int,
    *,
    chunk: int | None,
    budget: int,
    source: str,
    outputs: int,
    overhead: float,
) -> MemoryPlan:
    """The plan from the line through the two probes' peaks at ``level``."""
    fixed, per_sample = fit_line([peaks[level] for peaks in levels], PROBE_SAMPLES)
    per_sample = math.ceil(per_sample * overhead)
    return MemoryPlan(
        budget=budget,
        source=source,
        output_bytes=outputs,
        fixed_bytes=fixed,
        per_sample_bytes=per_sample,
        micro_batch=_fitting(budget - outputs - fixed, per_sample),
        chunk_size=chunk,
        level_peaks=levels[-1],
    )


def _fitting(room: float, per_sample: int) -> int:
    """Samples that fit in ``room`` bytes (``UNBOUNDED`` when a sample costs nothing)."""
    if room <= 0:
        return 0
    return int(room // per_sample) if per_sample > 0 else UNBOUNDED


def _one_sample_message(
    plan: MemoryPlan, lower: list[tuple[int, MemoryPlan]], *, several_chunks: bool
) -> str:
    chunk = f" with chunk_size={plan.chunk_size}" if several_chunks else ""
    fits = [
        f"order {k} (micro-batches of {p.micro_batch} samples)"
        for k, p in lower
        if p.micro_batch >= 1
    ]
    hint = _or(fits) if fits else "a smaller model input, float32, or more memory"
    return (
        f"one sample{chunk} needs about {size(plan.peak(1))} (summaries "
        f"{size(plan.output_bytes)} + {size(plan.fixed_bytes)} + "
        f"{size(plan.per_sample_bytes)} per sample, measured on probes of "
        f"{' and '.join(map(str, PROBE_SAMPLES))} samples) but the budget is "
        f"{size(plan.budget)} ({plan.source}). Would fit: {hint}"
    )


def size(nbytes: float) -> str:
    """``nbytes`` in B, KiB, MiB or GiB.

    Example:
        >>> size(512), size(3 * 2**20), size(2.5 * 2**30)
        ('512 B', '3.0 MiB', '2.5 GiB')
    """
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:,.1f} {unit}"
    return f"{int(nbytes)} B"


# ---------------------------------------------------------------------------- memo
MEMO_KEYS_PER_MODEL = 16  # remembered results per model object (least recently used dropped)


class ModelMemo:
    """Results remembered per model object (held weakly) and key, the newest few per model.

    A key is what the result depends on besides the model object: :func:`model_signature`
    (structure, shapes, dtypes, devices) is added to every key, so a model changed in place
    (a layer added, a dtype cast) misses and its stale entries age out. Objects in a key
    that must not be kept alive (a loss function, which may hold the model) enter through
    :func:`identity`.
    """

    def __init__(self, keys_per_model: int = MEMO_KEYS_PER_MODEL) -> None:
        self.keys_per_model = keys_per_model
        self._memo: weakref.WeakKeyDictionary[torch.nn.Module, dict] = weakref.WeakKeyDictionary()

    def get(self, model: torch.nn.Module, key: tuple, compute: Callable[[], object]):
        """The remembered result for ``(model, key)``, else ``compute()`` remembered."""
        entries = self._memo.setdefault(model, {})
        full = (model_signature(model), *key)
        if full in entries:
            entries[full] = entries.pop(full)  # most recently used last
            return entries[full]
        value = compute()
        entries[full] = value
        while len(entries) > self.keys_per_model:
            entries.pop(next(iter(entries)))
        return value


def model_signature(model: torch.nn.Module) -> tuple:
    """What a model's memory use depends on besides its values.

    Names, shapes, dtypes, devices and ``requires_grad`` of its parameters and buffers, and
    the types of its modules, with their train/eval modes.
    """
    tensors = itertools.chain(model.named_parameters(), model.named_buffers())
    return (
        tuple((n, tuple(t.shape), t.dtype, t.device, t.requires_grad) for n, t in tensors),
        tuple((type(m).__qualname__, m.training) for m in model.modules()),
    )


class _Identity:
    """An object's identity in a memo key without keeping it alive (when it allows)."""

    __slots__ = ("_id", "_ref")

    def __init__(self, obj: object) -> None:
        self._id = id(obj)
        try:
            self._ref = weakref.ref(obj)
        except TypeError:  # not weakly referenceable: never equal to anything but itself
            self._ref = None

    def __hash__(self) -> int:
        return self._id

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Identity) or self._id != other._id:
            return False
        if self is other:
            return True
        if self._ref is None or other._ref is None:
            return False
        mine = self._ref()
        return mine is not None and mine is other._ref()


def identity(obj: object) -> _Identity | None:
    """``obj`` by identity in a memo key, held weakly (a reused ``id`` never matches)."""
    return None if obj is None else _Identity(obj)


PROBES = ModelMemo()  # probe peaks: a probe costs a few metered passes on tiny batches


# ---------------------------------------------------------------------------- planner
class Planner:
    """Micro-batch and chunk sizes that fit the memory budget.

    They are probed on the first batch of more than ``PROBE_SAMPLES[-1]`` samples (smaller
    batches are never split).

    Args:
        state: the engine's working copies (``device``, ``dtype``, ``params``, ``model``).
        partition: the groups (S).
        spec: the orders (``full``, ``diag``).
        back_end: what computes: ``name``, ``loss_fn``, ``chunk_size`` (set here),
            ``screen(state, x)`` (what it decides from the model before it is planned:
            the vmap back end falls back to the loop there), ``chunks(S)`` (chunk sizes to
            try, largest first) and ``probe(state, partition, spec, x, y, chunk=, meter=)``
            (peaks per order).
        splittable: ``False`` when samples are coupled (BatchNorm batch statistics).
        head: ``head(x, y, n)``: the first ``n`` samples of a batch (along its batch
            dimension); ``None``: along dimension 0 of a tensor or a tuple of tensors.
    """

    def __init__(self, *, state, partition, spec, back_end, splittable: bool, head=None) -> None:
        self.state, self.partition, self.spec = state, partition, spec
        self.back_end, self.splittable = back_end, splittable
        self.head = head if head is not None else _head
        self.budget, self.source = memory_budget(state.device)
        self.outputs: list[int] | None = None
        self.plan: MemoryPlan | None = None

    def check_outputs(self) -> list[int]:
        """The bytes of the S^k outputs at orders 1..top (computed once).

        Raises:
            MemoryGuardError: they cannot fit the budget.
        """
        if self.outputs is None:
            self.outputs = check_outputs(
                len(self.partition),
                full=self.spec.full,
                diag=self.spec.diag,
                item=torch.empty((), dtype=self.state.dtype).element_size(),
                numel=sum(p.numel() for p in self.state.params),
                budget=self.budget,
                source=self.source,
                dtype=self.state.dtype,
            )
        return self.outputs

    def micro_batch(self, x, y, samples: int) -> int:
        """Samples per micro-batch for this batch (``samples``: no split)."""
        if samples <= PROBE_SAMPLES[-1]:
            return samples
        plan = self.plan if self.plan is not None else self.probe(x, y, samples)
        if plan.micro_batch >= samples:
            return samples
        if not self.splittable:
            raise MemoryGuardError(
                f"a batch of {samples} samples needs about {size(plan.peak(samples))} but the "
                f"budget is {size(plan.budget)} ({plan.source}), and "
                "BatchNorm with batch statistics couples its samples: the engine cannot split "
                f"it. Would fit: batches of {plan.micro_batch} samples, or eval mode "
                "(train_mode=False)"
            )
        return plan.micro_batch

    def probe(self, x, y, samples: int) -> MemoryPlan:
        """Measure the back end on the first samples of this batch; set the chunk size."""
        self.back_end.screen(self.state, self.head(x, y, PROBE_SAMPLES[0])[0])
        self.plan = plan_micro_batch(
            probe=lambda n, chunk: self._measure(*self.head(x, y, n), chunk),
            chunks=self.back_end.chunks(len(self.partition)),
            batch=samples,
            budget=self.budget,
            source=self.source,
            outputs=self.check_outputs(),
            min_micro_batch=VMAP_MIN_MICRO_BATCH,
            overhead=PER_SAMPLE_OVERHEAD.get(self.state.device.type, 1.0),
        )
        self.back_end.chunk_size = self.plan.chunk_size
        rows = getattr(self.back_end, "rows", None)
        most = rows(self.spec, self.partition) if rows is not None else 1
        if self.plan.chunk_size is None and most > 1:
            self._plan_rows(x, y, samples, most)
        return self.plan

    def _plan_rows(self, x, y, samples: int, most: int) -> None:
        """Rows of H̄ per vectorised pass: as many as fit beside one micro-batch's peak.

        Each further row costs ``row_fixed + n row_per_sample`` bytes, the line through
        the probes' peak of two rows in one pass minus one row's (times the per-sample
        overhead).
        """
        plan = self.plan
        two = [self._measure(*self.head(x, y, n), 2) for n in PROBE_SAMPLES]
        fixed, per_sample = fit_line([p[-1] - p[-2] for p in two], PROBE_SAMPLES)
        overhead = PER_SAMPLE_OVERHEAD.get(self.state.device.type, 1.0)
        plan.row_fixed_bytes = fixed
        plan.row_per_sample_bytes = math.ceil(per_sample * overhead)
        n = min(plan.micro_batch or samples, samples)
        room = plan.budget - plan.peak(n)
        per_row = max(plan.row_bytes(n), 1)
        plan.rows = max(1, min(most, 1 + int(room // per_row)))
        self.back_end.chunk_size = plan.rows

    def _measure(self, x, y, chunk: int | None) -> list[int]:
        """Probe peaks per order on the batch ``(x, y)``, remembered per model (:data:`PROBES`).

        A second call with the same model structure, options, partition, loss and sample
        shapes probes nothing.
        """
        return PROBES.get(
            self.state.model, self._probe_key(x, y, chunk), lambda: self._run(x, y, chunk)
        )

    def _run(self, x, y, chunk: int | None) -> list[int]:
        device = self.state.device
        rng_devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=rng_devices), PeakMeter(device) as meter:
            return self.back_end.probe(
                state=self.state,
                partition=self.partition,
                spec=self.spec,
                x=x,
                y=y,
                chunk=chunk,
                meter=meter,
            )

    def _probe_key(self, x, y, chunk: int | None) -> tuple:
        """What a probe's peaks depend on (not the parameter values).

        Back end, chunk, orders, partition, loss (the function by identity, its
        reduction), device, dtype, mode and the shapes of the probe batch.
        """
        part, loss = self.partition, self.back_end.loss_fn
        return (
            self.back_end.name,
            chunk,
            self.spec,
            (part.scheme, tuple(part.names), tuple(part.labels)),
            (identity(getattr(loss, "fn", loss)), getattr(loss, "reduction", None)),
            self.state.device,
            self.state.dtype,
            self.state.model.training,
            tuple((tuple(t.shape), t.dtype) for t in batches.tree_leaves((x, y))),
        )

    def report(self) -> MemoryPlan:
        """The plan used (unprobed: budget and outputs only, no micro-batch limit)."""
        if self.plan is not None:
            return self.plan
        outputs = self.outputs[-1] if self.outputs else 0
        return MemoryPlan(budget=self.budget, source=self.source, output_bytes=outputs)


def _head(x, y, n: int) -> tuple:
    """The first ``n`` samples along dimension 0 of every tensor of ``(x, y)``."""
    return batches.tree_map(lambda t: t[:n], (x, y))
