"""How big an architecture is from its arguments, known before anything is built.

Arguments can come from a file's metadata (``{"name": "gpt", "kwargs": {"layers": 100000}}``)
and each one may be within its own bound while the model they make is not: a hundred
thousand GPT blocks are 20 billion parameters and a million ``nn.Module`` objects, minutes
and gigabytes even on the ``meta`` device. Two checks keep every build bounded:

* :func:`builtin_size` counts the parameters and modules of the built-in architectures
  (and torchvision's ``VisionTransformer`` class) in closed form from their arguments, so
  :func:`check_size` refuses an oversized one before its constructor runs;
* :func:`size_guard` counts modules, parameter tensors and parameters *while* any
  constructor runs (global registration hooks, active only in the thread that entered the
  guard) and stops it past the limits: torchvision builders and the user's own models are
  bounded too. Modules are counted when registered on a parent, parameter tensors when
  registered on their module (a list of a million layers is stopped while it is made).

Limits: :data:`MAX_PARAMETERS` (1e9, 4 GB of float32; torchvision's largest classifier,
RegNetY-128GF, has 645 M) and :data:`MAX_MODULES` (20,000; its deepest, EfficientNet-V2-L,
has 1,409).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from torch import nn
from torch.nn.modules import module as torch_module

from hessian_lens.models import VGG11_CONFIG

MAX_PARAMETERS = 1_000_000_000
MAX_MODULES = 20_000
#: Parameter tensors a constructor may register (about two per module).
MAX_TENSORS = 2 * MAX_MODULES


class ModelTooLargeError(ValueError):
    """An architecture whose arguments make more parameters or modules than allowed."""


def too_large(key: str, params: int, modules: int) -> str | None:
    """The refusal for a model of this size, or None when it is within the limits."""
    if params <= MAX_PARAMETERS and modules <= MAX_MODULES:
        return None
    return (
        f"{key}: these arguments make a model of {params:,} parameters and {modules:,} "
        f"modules, over the {MAX_PARAMETERS:,} parameters and {MAX_MODULES:,} modules "
        "Hessian Lens builds; use smaller sizes"
    )


def check_size(key: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse a built-in architecture whose arguments make it too large, before building.

    Raises:
        ModelTooLargeError: over :data:`MAX_PARAMETERS` or :data:`MAX_MODULES`.

    Example:
        >>> check_size("gpt", {"layers": 2})
        >>> check_size("gpt", {"layers": 100000})
        Traceback (most recent call last):
        ...
        hessian_lens.modelsize.ModelTooLargeError: gpt: these arguments make a model of 19,827,249,408 parameters and 1,000,005 modules, over the 1,000,000,000 parameters and 20,000 modules Hessian Lens builds; use smaller sizes
    """  # noqa: E501
    size = builtin_size(key, kwargs)
    problem = too_large(key, *size) if size is not None else None
    if problem:
        raise ModelTooLargeError(problem)


def builtin_size(key: str, kwargs: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(parameters, modules)`` of a built-in architecture with these (checked) arguments.

    None for architectures without a closed form here (torchvision builders, user models).
    The counts are those of the built model: ``sum(p.numel() for p in m.parameters())`` and
    ``len(list(m.modules()))`` (tests/test_modelsize.py compares them for many arguments).
    """
    counter = _COUNTS.get(key)
    if counter is None:
        return None
    try:
        return counter(**kwargs)
    except (TypeError, ValueError, ZeroDivisionError):  # the constructor will say what
        return None


def _linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def _lenet5(num_classes=10, activation="tanh", pool="max", in_channels=3) -> tuple[int, int]:
    convs = (in_channels * 25 + 1) * 6 + (6 * 25 + 1) * 16
    return convs + _linear(400, 120) + _linear(120, 84) + _linear(84, num_classes), 8


def _vgg11p(num_classes=10, activation="elu", width=1.0, in_channels=3) -> tuple[int, int]:
    params, channels, modules = 0, in_channels, 3  # the model, features, classifier
    for item in VGG11_CONFIG:
        modules += 1 if item == "M" else 2  # a pool, or a convolution and its activation
        if item != "M":
            out = max(1, round(item * width))
            params, channels = params + channels * out * 9 + out, out
    return params + _linear(channels, num_classes), modules


def _mlp(sizes=(3072, 512, 256, 10), activation="tanh") -> tuple[int, int]:
    sizes = [int(s) for s in sizes]
    params = sum(_linear(a, b) for a, b in itertools.pairwise(sizes))
    return params, 2 + 2 * (len(sizes) - 1) - 1  # model, layers, linears, activations


def _gpt(vocab_size=256, context=128, layers=4, heads=4, width=128, mlp_ratio=4):
    w, hidden = width, mlp_ratio * width
    block = 4 * w + _linear(w, 3 * w) + _linear(w, w) + _linear(w, hidden) + _linear(hidden, w)
    return (vocab_size + context) * w + layers * block + 2 * w, 5 + 10 * layers


def _vit(
    image_size,
    patch_size,
    num_layers,
    num_heads,
    hidden_dim,
    mlp_dim,
    dropout=0.0,
    attention_dropout=0.0,
    num_classes=1000,
    representation_size=None,
    norm_layer=None,
    conv_stem_configs=None,
) -> tuple[int, int]:
    """The ``VisionTransformer`` class of torchvision (a conv stem: counted while built)."""
    if conv_stem_configs is not None:
        raise TypeError("no closed form")
    h, tokens = hidden_dim, (image_size // patch_size) ** 2 + 1
    layer = 4 * h + _linear(h, 3 * h) + _linear(h, h) + _linear(h, mlp_dim) + _linear(mlp_dim, h)
    head = _linear(h, num_classes)
    head_modules = 2
    if representation_size:
        head = _linear(h, representation_size) + _linear(representation_size, num_classes)
        head_modules = 4
    stem = h * 3 * patch_size**2 + h
    params = stem + h + tokens * h + num_layers * layer + 2 * h + head
    # model, conv_proj, encoder, its dropout, layers, ln; per layer: the layer, ln_1,
    # self_attention, its out_proj, dropout, ln_2, the mlp and its 5 modules; heads
    return params, 6 + num_layers * 12 + head_modules


_COUNTS = {
    "lenet5": _lenet5,
    "vgg11p": _vgg11p,
    "mlp": _mlp,
    "gpt": _gpt,
    "torchvision:VisionTransformer": _vit,
}


# ---------------------------------------------------------------------------- the guard
_STATE = threading.local()
_HOOKS: list = []
_HOOKS_LOCK = threading.Lock()


@contextlib.contextmanager
def size_guard(key: str) -> Iterator[None]:
    """Stop any model construction inside the block past the limits.

    Counts every module and parameter registered on a module (``self.x = nn.Linear(...)``,
    ``add_module``, ``register_parameter``) by this thread while the block runs, and raises
    :class:`ModelTooLargeError` at the first one over :data:`MAX_MODULES` or
    :data:`MAX_PARAMETERS`. Other threads (other sessions of a server) are not counted.
    Nested guards count into the outermost.
    """
    _install_hooks()
    if getattr(_STATE, "budget", None) is not None:
        yield
        return
    _STATE.budget = {"key": key, "modules": 1, "params": 0, "tensors": 0}
    try:
        yield
    finally:
        _STATE.budget = None


def _install_hooks() -> None:
    with _HOOKS_LOCK:
        if not _HOOKS:
            _HOOKS.append(torch_module.register_module_module_registration_hook(_on_module))
            _HOOKS.append(torch_module.register_module_parameter_registration_hook(_on_param))


def _on_module(parent: nn.Module, name: str, child: nn.Module | None):
    budget = getattr(_STATE, "budget", None)
    if budget is not None and child is not None:
        budget["modules"] += 1
        _check(budget)


def _on_param(parent: nn.Module, name: str, param):
    budget = getattr(_STATE, "budget", None)
    if budget is not None and param is not None:
        budget["params"] += param.numel()
        budget["tensors"] += 1
        _check(budget)


def _check(budget: dict) -> None:
    problem = too_large(budget["key"], budget["params"], budget["modules"])
    if problem:
        raise ModelTooLargeError(problem.replace("make a model of", "make a model of over"))
    if budget["tensors"] > MAX_TENSORS:
        raise ModelTooLargeError(
            f"{budget['key']}: these arguments make over {MAX_TENSORS:,} parameter tensors "
            f"(about {MAX_MODULES:,} modules, the most Hessian Lens builds); use smaller sizes"
        )
