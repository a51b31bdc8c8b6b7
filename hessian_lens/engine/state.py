"""The engine's working state: detached copies of the differentiated tensors.

:func:`functional_state` puts the model in the requested mode under the math attention
kernel and yields a :class:`State` whose :meth:`State.forward` runs the model with any
parameter values through ``torch.func.functional_call``; the model comes back exactly as it
came in (its modes, its ``Parameter`` and buffer objects, its attention settings).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode

from hessian_lens.batches import tree_leaves
from hessian_lens.engine.options import Forward, Options
from hessian_lens.memory import ModelMemo
from hessian_lens.partition import Partition

__all__ = ["State", "batch_statistics", "functional_state", "random_forward", "to_state"]

COMPILED_PREFIX = "_orig_mod."  # torch.compile's OptimizedModule holds the eager module here
RANDOM_SCREENS = ModelMemo()  # whether a model's forward runs a random operation


@dataclass
class State:
    """Working copies of the differentiated tensors (device, dtype) and of the rest.

    The rest is the model's other parameters and buffers, for :meth:`forward`.
    """

    device: torch.device
    dtype: torch.dtype
    params: list[Tensor]
    model: nn.Module | None = None
    names: list[str] = field(default_factory=list)
    fixed: dict[str, Tensor] = field(default_factory=dict)
    call: Forward | None = None
    coupled: bool = False
    notes: list[str] = field(default_factory=list)
    train_mode: bool = False
    seed: int = 0
    batch: int = 0

    @classmethod
    def of_model(cls, model: nn.Module, part: Partition, device, dtype) -> State:
        """Detached copies of the model's tensors, cast to ``device`` and ``dtype``.

        A ``torch.compile``d model runs its eager module (the compiled graphs have no
        second derivative).

        Raises:
            ValueError: a complex parameter, a model on the ``meta`` device, or a dtype
                that is not a real floating type.
        """
        params = part.parameters(model)
        _check_real(part.names, params)
        _check_values(model)
        eager, prefix = _eager(model)
        device = torch.device(device) if device is not None else params[0].device
        dtype = dtype if dtype is not None else params[0].dtype
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a real floating point type, got {dtype}")
        covered = set(part.names)
        return cls(
            device=device,
            dtype=dtype,
            params=[p.detach().to(device, dtype).clone().requires_grad_(True) for p in params],
            model=eager,
            names=[n.removeprefix(prefix) for n in part.names],
            fixed={
                n.removeprefix(prefix): _cast(t, device, dtype)
                for n, t in itertools.chain(model.named_parameters(), model.named_buffers())
                if n not in covered
            },
            notes=[COMPILED_NOTE] if prefix else [],
        )

    @classmethod
    def of_tensors(cls, params: Sequence[Tensor]) -> State:
        """The caller's own tensors (an optimizer's parameters): no model, no forward."""
        return cls(device=params[0].device, dtype=params[0].dtype, params=list(params))

    def forward(self, x, params: Sequence[Tensor] | None = None):
        """The model's output on inputs ``x`` with ``params`` (default: the working copies).

        ``x`` is passed as ``model(x)``, ``model(*x)`` (tuple / list) or ``model(**x)``
        (Mapping), or through the caller's ``forward(model, x)``. The random generators
        are seeded ``seed + batch`` for the call and restored after it, so every pass over
        a batch draws the same dropout masks and the caller's generators do not move.
        """
        values = dict(zip(self.names, params if params is not None else self.params, strict=True))
        values.update(self.fixed)
        with seeded(self.device, self.seed + self.batch):
            if self.call is not None:
                caller = _Caller(self.model, self.call)
                return functional_call(caller, {f"model.{k}": v for k, v in values.items()}, (x,))
            if isinstance(x, Mapping):
                return functional_call(self.model, values, (), dict(x))
            args = tuple(x) if isinstance(x, (tuple, list)) else (x,)
            return functional_call(self.model, values, args)


class _Caller(nn.Module):
    """The model called through the user's ``forward(model, inputs)``."""

    def __init__(self, model: nn.Module, call: Forward) -> None:
        super().__init__()
        self.model, self.call = model, call

    def forward(self, inputs):
        """``call(model, inputs)``."""
        return self.call(self.model, inputs)


@contextmanager
def seeded(device: torch.device, seed: int) -> Iterator[None]:
    """The CPU generator (and ``device``'s, on CUDA) seeded ``seed``, restored after."""
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            index = device.index if device.index is not None else torch.cuda.current_device()
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


COMPILED_NOTE = (
    "the model is torch.compile'd: the engine ran its eager module (model._orig_mod), as "
    "the compiled graphs have no second derivative"
)


def _eager(model: nn.Module) -> tuple[nn.Module, str]:
    """The module to run and the prefix its parameter names lose (a compiled model's)."""
    inner = getattr(model, "_orig_mod", None)
    if type(model).__name__ == "OptimizedModule" and isinstance(inner, nn.Module):
        return inner, COMPILED_PREFIX
    return model, ""


def _check_values(model: nn.Module) -> None:
    tensors = itertools.chain(model.named_parameters(), model.named_buffers())
    meta = [n for n, t in tensors if t.is_meta]
    if meta:
        raise ValueError(
            f"the model's tensors {meta[:3]} are on the meta device: they hold no values to "
            "differentiate. Load its weights first (model.to_empty(device='cpu') then "
            "load_state_dict, or hl.load_checkpoint)"
        )


def _check_real(names: Sequence[str], params: Sequence[Tensor]) -> None:
    complex_ = [n for n, p in zip(names, params, strict=True) if p.is_complex()]
    if complex_:
        raise ValueError(
            f"parameters {complex_[:3]} are complex: Hessian Lens analyses real parameters "
            "only. Store a complex weight as two real tensors (real and imaginary parts), or "
            "leave it out of the partition (requires_grad_(False))"
        )


@contextmanager
def functional_state(model: nn.Module, part: Partition, options: Options):
    """Working copies in the requested mode, under the math attention kernel.

    ``options`` gives the device, dtype, train mode and ``forward`` of the copies.

    The model comes back as it came in: its modes, and the very ``Parameter`` and buffer
    objects of every module (:func:`_kept_as_is`).
    """
    modes = [(m, m.training) for m in model.modules()]
    with _kept_as_is(model), _math_attention() as attention, _no_autocast() as autocast:
        for m in model.modules():  # not model.train(): torch.export modules refuse it
            m.training = options.train_mode
        try:
            st = State.of_model(model, part, options.device, options.dtype)
            st.call, st.train_mode, st.seed = options.forward, options.train_mode, options.seed
            st.coupled = _samples_coupled(model, options.train_mode)
            if attention and _has_attention(model):
                st.notes.append(attention)
            st.notes += [n for n in (autocast, _mode_note(model, options.train_mode)) if n]
            yield st
        finally:
            for m, was_training in modes:
                m.training = was_training


@contextmanager
def _kept_as_is(model: nn.Module):
    """Put back every module's own ``Parameter`` and buffer objects after the block.

    ``functional_call`` swaps tensors into modules and back; for a module registered under
    two names (``self.layers = nn.ModuleList([self.fc1, ...])``) it put back plain tensors,
    so an optimizer built before the call updated tensors the model no longer used.
    """
    saved = [(m, dict(m._parameters), dict(m._buffers)) for m in model.modules()]
    try:
        yield
    finally:
        for m, params, buffers in saved:
            _restore(m, "_parameters", params)
            _restore(m, "_buffers", buffers)


def _restore(module: nn.Module, slot: str, saved: dict) -> None:
    current = getattr(module, slot)
    for name in saved:
        module.__dict__.pop(name, None)  # a plain attribute shadowing the registered one
    if current.keys() != saved.keys() or any(current[k] is not v for k, v in saved.items()):
        current.clear()
        current.update(saved)


@contextmanager
def _math_attention():
    """Scaled dot-product attention on its math kernel: the fused ones have no 2nd derivative.

    Yields the note recorded in results (``""`` where torch has no kernel choice); the
    caller's kernel setting is restored after.
    """
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - torch < 2.3
        yield ""
        return
    with sdpa_kernel(SDPBackend.MATH):
        yield (
            "attention ran on the math scaled-dot-product kernel (the fused kernels have no "
            "second derivative)"
        )


@contextmanager
def _no_autocast() -> Iterator[str]:
    """Turn off an enclosing ``torch.autocast`` for the block; yield the note (or ``""``).

    Under autocast the engine's float64 would silently become bfloat16 or float16.
    """
    enclosing = [d for d in ("cpu", "cuda") if torch.is_autocast_enabled(d)]
    with ExitStack() as stack:
        for d in enclosing:
            stack.enter_context(torch.autocast(d, enabled=False))
        yield ", ".join(
            f"an enclosing torch.autocast('{d}', {str(torch.get_autocast_dtype(d))[6:]}) was "
            "turned off inside the engine, which computed in its own dtype"
            for d in enclosing
        )


def _mode_note(model: nn.Module, train_mode: bool) -> str:
    """The note of the default eval mode when the model has dropout or BatchNorm."""
    kinds = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    if train_mode or not any(isinstance(m, kinds) for m in model.modules()):
        return ""
    return (
        "dropout and BatchNorm ran in eval mode (no dropout, running statistics); "
        "train_mode=True analyses the training loss"
    )


def random_forward(st: State, x) -> bool:
    """Whether the model's forward on ``x`` runs a random operation (dropout, ``randn``).

    Screened once per model structure and input shapes: one forward under a dispatch mode
    that looks for aten operations tagged ``nondeterministic_seeded``.
    """
    shapes = tuple((tuple(t.shape), t.dtype) for t in tree_leaves(x))
    key = ("random", st.device, st.dtype, st.train_mode, shapes)

    def screen() -> bool:
        with torch.no_grad(), _RandomOps() as seen:
            st.forward(x)
        return seen.found

    return RANDOM_SCREENS.get(st.model, key, screen)


class _RandomOps(TorchDispatchMode):
    """Whether an aten operation drawing random numbers ran while active."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False  # never compiled: no torch._dynamo import (2 s)

    def __init__(self) -> None:
        super().__init__()
        self.found = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.found = self.found or torch.Tag.nondeterministic_seeded in func.tags
        return func(*args, **(kwargs or {}))


def _has_attention(model: nn.Module) -> bool:
    return any("attention" in type(m).__name__.lower() for m in model.modules())


def _samples_coupled(model: nn.Module, train_mode: bool) -> bool:
    """Whether a batch's loss is not a function of its samples alone (train-mode noise)."""
    noisy = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    return train_mode and any(isinstance(m, noisy) for m in model.modules())


def _cast(t: Tensor, device, dtype) -> Tensor:
    t = t.detach().to(device)
    return t.to(dtype).clone() if t.is_floating_point() else t.clone()


def to_state(t: Tensor, st: State) -> Tensor:
    """``t`` on the state's device; floating tensors also in its dtype."""
    return t.to(st.device, st.dtype) if t.is_floating_point() else t.to(st.device)


def batch_statistics(model: nn.Module, train_mode: bool) -> bool:
    """Whether some BatchNorm layer normalises with the batch's own statistics."""
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and (train_mode or m.running_mean is None)
        for m in model.modules()
    )
