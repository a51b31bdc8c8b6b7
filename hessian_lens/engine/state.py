"""The engine's working state: detached copies of the differentiated tensors.

:func:`functional_state` puts the model in the requested mode under the math attention
kernel and yields a :class:`State` whose :meth:`State.forward` runs the model with any
parameter values through ``torch.func.functional_call``; the model comes back exactly as it
came in (its modes, its ``Parameter`` and buffer objects, its attention settings).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call

from hessian_lens.engine.options import Forward, Options
from hessian_lens.partition import Partition

__all__ = ["State", "batch_statistics", "functional_state", "to_state"]


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

    @classmethod
    def of_model(cls, model: nn.Module, part: Partition, device, dtype) -> State:
        """Detached copies of the model's tensors, cast to ``device`` and ``dtype``.

        Raises:
            ValueError: a complex parameter, or a dtype that is not a real floating type.
        """
        params = part.parameters(model)
        _check_real(part.names, params)
        device = torch.device(device) if device is not None else params[0].device
        dtype = dtype if dtype is not None else params[0].dtype
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a real floating point type, got {dtype}")
        covered = set(part.names)
        return cls(
            device=device,
            dtype=dtype,
            params=[p.detach().to(device, dtype).clone().requires_grad_(True) for p in params],
            model=model,
            names=part.names,
            fixed={
                n: _cast(t, device, dtype)
                for n, t in itertools.chain(model.named_parameters(), model.named_buffers())
                if n not in covered
            },
        )

    @classmethod
    def of_tensors(cls, params: Sequence[Tensor]) -> State:
        """The caller's own tensors (an optimizer's parameters): no model, no forward."""
        return cls(device=params[0].device, dtype=params[0].dtype, params=list(params))

    def forward(self, x, params: Sequence[Tensor] | None = None):
        """The model's output on inputs ``x`` with ``params`` (default: the working copies).

        ``x`` is passed as ``model(x)``, ``model(*x)`` (tuple / list) or ``model(**x)``
        (Mapping), or through the caller's ``forward(model, x)``.
        """
        values = dict(zip(self.names, params if params is not None else self.params, strict=True))
        values.update(self.fixed)
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
    with _kept_as_is(model), _math_attention() as attention:
        for m in model.modules():  # not model.train(): torch.export modules refuse it
            m.training = options.train_mode
        try:
            st = State.of_model(model, part, options.device, options.dtype)
            st.call = options.forward
            st.coupled = _samples_coupled(model, options.train_mode)
            if attention and _has_attention(model):
                st.notes.append(attention)
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
