"""Architectures by name, from four sources behind one :func:`build_model`.

* built-in: ``lenet5``, ``vgg11p``, ``mlp`` (:mod:`hessian_lens.models`; aliases such as
  ``VGG-11'`` and ``LeNet``);
* ``torchvision:<builder>``: every classification builder of ``torchvision.models``
  (``torchvision:resnet18``, ``torchvision:vit_b_16``, ...), never with pretrained weights;
  and the classes of :data:`TORCHVISION_CLASSES` with all their shape arguments
  (``torchvision:VisionTransformer`` with ``image_size=32, patch_size=4, num_layers=4,
  num_heads=4, hidden_dim=128, mlp_dim=256``: the ``vit_*`` builders fix depth and width);
* ``hf:<model_type>`` (its causal LM, e.g. ``hf:gpt2``) or ``hf:<Class>``
  (``hf:BertForSequenceClassification``): a Hugging Face ``transformers`` model built from
  config keyword arguments (:mod:`hessian_lens.hf`; never downloaded, never custom code);
* the user's own code: ``@register_model("name")`` on a builder function or class, in a
  file loaded by :func:`load_model_files` (``--models FILE.py``, ``$HESSIAN_LENS_MODELS``).
  That is the operator's trusted code; code inside checkpoint files never runs;
* code-free ``.pt2`` exports need no name at all (:mod:`hessian_lens.io.pt2`).

Every build can happen on the ``meta`` device first (:func:`build_on_meta`): shapes and
parameter counts are known before a byte of weights is allocated. :func:`infer_kwargs` reads
the shape arguments (``num_classes``, ViT ``image_size``, ``aux_logits``, MLP ``sizes``, ...)
of an architecture back from a state_dict.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import math
import os
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from hessian_lens import modelsize
from hessian_lens.errors import ArchitectureError
from hessian_lens.models import ACTIVATIONS, MODELS, VGG11_CONFIG, initialize

TORCHVISION_PREFIX = "torchvision:"
#: ``user:<class name>``: what a Recorder records of a model class nobody registered.
USER_PREFIX = "user:"
HF_PREFIX = "hf:"
#: torchvision model classes built directly by name (their builders fix the sizes).
TORCHVISION_CLASSES = ("VisionTransformer",)
MODELS_ENV = "HESSIAN_LENS_MODELS"
ALIASES = {"vgg11": "vgg11p", "lenet": "lenet5"}
VGG11_LAST_CHANNELS = [c for c in VGG11_CONFIG if c != "M"][-1]
_USER: dict[str, Callable[..., nn.Module]] = {}
_META = threading.local()  # set while build_on_meta runs (its builds are counted already)


class TooLargeError(ArchitectureError):
    """Arguments that make a model over the size limits (:mod:`hessian_lens.modelsize`)."""


# ---------------------------------------------------------------------------- user models
def register_model(name: str) -> Callable:
    """Decorator registering a builder (function or ``nn.Module`` class) under ``name``.

    Example:
        >>> @register_model("tiny-doc")
        ... def tiny(num_classes: int = 3):
        ...     return nn.Linear(4, num_classes)
        >>> build_model("tiny-doc", num_classes=2).out_features
        2
    """
    key = str(name).strip()
    if not key or key.startswith((TORCHVISION_PREFIX, HF_PREFIX)) or _builtin_key(key) in MODELS:
        raise ArchitectureError(f"cannot register '{name}': empty or taken by a built-in name")

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _USER[key] = builder
        return builder

    return decorate


def unregister_model(name: str) -> None:
    """Forget a name registered with :func:`register_model` (no error when absent)."""
    _USER.pop(str(name).strip(), None)


def user_model_names() -> list[str]:
    """The names registered by the user's own code, sorted."""
    return sorted(_USER)


def load_model_files(paths: str | os.PathLike | list) -> list[str]:
    """Import the user's model files and return the names they registered.

    ``paths`` is one ``FILE.py``, several joined by ``os.pathsep``, or a list.

    Raises:
        ArchitectureError: a missing file, or one that fails to import (with its error).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [p for p in str(paths).split(os.pathsep) if p.strip()]
    before = set(_USER)
    for raw in paths:
        path = Path(raw).expanduser().resolve()
        if not path.is_file():
            raise ArchitectureError(f"--models {raw}: no such Python file.")
        name = f"hessian_lens_user_models_{abs(hash(str(path)))}"
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            del sys.modules[name]
            raise ArchitectureError(
                f"{path.name} failed to import: {type(err).__name__}: {err}"
            ) from None
    return sorted(set(_USER) - before)


def load_env_models() -> list[str]:
    """Import the files named by ``$HESSIAN_LENS_MODELS`` (once); the names registered."""
    value = os.environ.get(MODELS_ENV, "")
    return load_model_files(value) if value.strip() else []


# ---------------------------------------------------------------------------- names
def torchvision_builders() -> list[str]:
    """Classification builders of torchvision.models (``resnet18``, ``vit_b_16``, ...)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def model_names(torchvision: bool = True) -> list[str]:
    """Every name :func:`build_model` accepts (built-in, user, ``torchvision:*``)."""
    names = sorted(MODELS) + sorted(_USER)
    if torchvision:
        names += [TORCHVISION_PREFIX + b for b in (*torchvision_builders(), *TORCHVISION_CLASSES)]
    return names


def resolve(name: str) -> tuple[str, Callable[..., nn.Module]]:
    """The canonical name and constructor of an architecture name.

    Raises:
        ArchitectureError: unknown name, listing the families known.
    """
    name = str(name).strip()
    if name in _USER:
        return name, _USER[name]
    if name.startswith(USER_PREFIX):
        return _user_class(name)
    if name.startswith(HF_PREFIX):
        from hessian_lens import hf

        hf.resolve(name)
        return name, functools.partial(hf.build, name)
    if name.startswith(TORCHVISION_PREFIX):
        builder = name[len(TORCHVISION_PREFIX) :]
        if builder in TORCHVISION_CLASSES:
            import torchvision

            return name, getattr(torchvision.models, builder)
        if builder not in torchvision_builders():
            raise ArchitectureError(
                f"unknown architecture '{name}': torchvision has no classification builder "
                f"'{builder}' (e.g. torchvision:resnet18, torchvision:vgg11), and the classes "
                f"built by name are {list(TORCHVISION_CLASSES)}."
            )
        import torchvision

        return name, torchvision.models.get_model_builder(builder)
    key = _builtin_key(name)
    if key in MODELS:
        return key, MODELS[key]
    known = sorted(MODELS) + sorted(_USER)
    raise ArchitectureError(
        f"unknown architecture '{name}'; known: {known}, or torchvision:<builder> "
        "(e.g. torchvision:resnet18), or register your own with @hl.register_model "
        "and --models FILE.py."
    )


def _user_class(name: str) -> tuple[str, Callable[..., nn.Module]]:
    """The model registered as ``Net`` for ``user:Net``.

    ``hl.Recorder`` records ``user:Net`` for a model of class ``Net`` it could not name.

    Raises:
        ArchitectureError: ``Net`` is not registered, saying how to register it.
    """
    cls = name[len(USER_PREFIX) :].strip()
    if cls in _USER:
        return cls, _USER[cls]
    raise ArchitectureError(
        f"'{name}' is a model of class {cls} from the training script, which this process "
        f"cannot import: register it under the name '{cls}' in a Python file "
        f'(@hessian_lens.register_model("{cls}") above the class or a function building it) '
        "and give that file with --models FILE.py (the dashboard: $HESSIAN_LENS_MODELS=FILE.py)"
    )


def _is_class(key: str) -> bool:
    return key.removeprefix(TORCHVISION_PREFIX) in TORCHVISION_CLASSES


def _builtin_key(name: str) -> str:
    key = name.lower().replace("-", "").replace("_", "").replace("'", "p")
    return ALIASES.get(key, key)


# ---------------------------------------------------------------------------- building
def build_model(name: str, init: str = "torch", **kwargs) -> nn.Module:
    """Build an architecture by name with its keyword arguments.

    ``init="paper"`` applies the author's initialisation after the constructor
    (:func:`hessian_lens.models.initialize`; sigma_w from the model's activation, sqrt(2)
    when it has none), drawing from the global generator.

    Raises:
        ArchitectureError: unknown name, or arguments of the wrong name, type or value.

    Example:
        >>> build_model("lenet5", activation="relu").act
        ReLU()
    """
    key, ctor = resolve(name)
    check_kwargs(key, kwargs)
    if key.startswith(TORCHVISION_PREFIX) and not _is_class(key):
        kwargs = {"weights": None, **kwargs}
        if kwargs["weights"] is not None:
            raise ArchitectureError("pretrained weights are never downloaded: load a state_dict")
        if not getattr(_META, "active", False):  # counted on meta before allocating
            build_on_meta(name, **kwargs)
    try:
        with modelsize.size_guard(key):
            model = ctor(**kwargs)
    except modelsize.ModelTooLargeError as err:
        raise TooLargeError(str(err)) from None
    except Exception as err:  # any constructor error is a bad argument to report, not a crash
        raise ArchitectureError(
            f"bad arguments for '{key}': {type(err).__name__}: {err}"[:400]
        ) from None
    if not isinstance(model, nn.Module):
        raise ArchitectureError(f"'{key}' built a {type(model).__name__}, not an nn.Module")
    return initialize(model, init, getattr(model, "activation", "relu"))


def build_on_meta(name: str, **kwargs) -> nn.Module:
    """The architecture on the ``meta`` device: shapes without memory.

    Builders that compute plain numbers with tensors before their modules exist (RegNet's
    widths call ``.tolist()``) cannot run wholly on ``meta``; for them only the tensors
    created inside ``nn.Module.__init__`` go to ``meta``. A builder that still needs the
    values of its parameters' tensors is refused rather than built for real.

    Raises:
        ArchitectureError: unknown name, bad arguments, or not buildable on ``meta``.
    """
    check_kwargs(name, kwargs)
    was, _META.active = getattr(_META, "active", False), True
    try:
        return _build_on_meta(name, kwargs)
    finally:
        _META.active = was


def _build_on_meta(name: str, kwargs: dict) -> nn.Module:
    try:
        with torch.device("meta"):
            return build_model(name, **kwargs)
    except ArchitectureError as err:
        first = err
    if isinstance(first, TooLargeError):  # the size, not the device: no second try
        raise first
    try:
        with _ModulesOnMeta():
            model = build_model(name, **kwargs)
    except ArchitectureError:
        raise first from None
    if any(t.device.type != "meta" for t in (*model.parameters(), *model.buffers())):
        raise ArchitectureError(f"'{name}' cannot be built on the meta device: {first}")
    return model


class _ModulesOnMeta(TorchFunctionMode):
    """Tensor factories called inside an ``nn.Module.__init__`` create ``meta`` tensors.

    Those of the builder's own arithmetic stay on the CPU (thread-local, like every mode).
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if kwargs.get("device") is None and func in _factories() and _inside_module_init():
            kwargs["device"] = torch.device("meta")
        return func(*args, **kwargs)


@functools.cache
def _factories() -> frozenset:
    from torch.utils._device import _device_constructors

    return frozenset(_device_constructors())


def _inside_module_init() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == "__init__" and isinstance(frame.f_locals.get("self"), nn.Module):
            return True
        frame = frame.f_back
    return False


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of a (possibly meta) model's parameters and buffers."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


# ---------------------------------------------------------------------------- inference
DEFAULT_TORCHVISION_CLASSES = 1000


def infer_kwargs(name: str, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The shape arguments of architecture ``name`` that a state_dict's shapes reveal.

    * built-in: ``num_classes``, ``in_channels``; ``width`` (VGG-11'); ``sizes`` (MLP);
    * ``torchvision:*``: ``num_classes`` from the classifier head (the last tensor whose
      first dimension is 1000 in the default build); ViT ``image_size`` from the
      positional embedding (``(image_size / patch)^2 + 1`` tokens); GoogLeNet / Inception
      ``aux_logits`` from the presence of the auxiliary heads' keys;
    * user models: nothing (their arguments must be given).

    Only shapes are read, so meta tensors work. An argument whose keys are absent or odd is
    left out; building then reports the mismatch.

    Example:
        >>> from hessian_lens.models import LeNet5
        >>> infer_kwargs("lenet5", LeNet5(num_classes=7).state_dict())
        {'num_classes': 7, 'in_channels': 3}
    """
    key, _ = resolve(name)
    shapes = {k: tuple(v.shape) for k, v in state_dict.items() if hasattr(v, "shape")}
    if key.startswith(TORCHVISION_PREFIX):
        return _torchvision_kwargs(key, shapes)
    if key.startswith(HF_PREFIX):  # the sizes come with the config
        return {}
    reader = _BUILTIN_READERS.get(key)
    return _safely(reader, shapes) if reader else {}


def _safely(reader: Callable[[dict], dict], shapes: dict) -> dict[str, Any]:
    try:
        return reader(shapes)
    except (KeyError, IndexError, ValueError, TypeError, ZeroDivisionError):
        return {}


def _lenet_kwargs(shapes: dict) -> dict[str, Any]:
    return {"num_classes": shapes["fc3.weight"][0], "in_channels": shapes["conv1.weight"][1]}


def _vgg11p_kwargs(shapes: dict) -> dict[str, Any]:
    out, channels = shapes["classifier.weight"]
    width = channels / VGG11_LAST_CHANNELS
    return {
        "num_classes": out,
        "in_channels": shapes["features.0.weight"][1],
        **({} if width == 1 else {"width": width}),
    }


def _mlp_kwargs(shapes: dict) -> dict[str, Any]:
    weights = [(int(k.split(".")[1]), s) for k, s in shapes.items() if _mlp_weight(k)]
    weights = [s for _, s in sorted(weights)]
    return {"sizes": [weights[0][1]] + [s[0] for s in weights]}


def _mlp_weight(key: str) -> bool:
    parts = key.split(".")
    return len(parts) == 3 and parts[0] == "layers" and parts[1].isdigit() and parts[2] == "weight"


def _torchvision_kwargs(key: str, shapes: dict) -> dict[str, Any]:
    if _is_class(key):
        return _safely(_vit_class_kwargs, shapes)
    kwargs: dict[str, Any] = {}
    head = _head_key(key, shapes)
    if head is not None and shapes[head]:
        kwargs["num_classes"] = shapes[head][0]
    kwargs.update(_safely(_vit_kwargs, shapes))
    prefix = _AUX_PREFIXES.get(key.removeprefix(TORCHVISION_PREFIX))
    if prefix:
        kwargs["aux_logits"] = any(k.startswith(prefix) for k in shapes)
    return kwargs


def _head_key(key: str, shapes: dict) -> str | None:
    """The classifier head: the last entry of the default build with 1000 rows."""
    rows = (DEFAULT_TORCHVISION_CLASSES,)
    heads = [k for k, s in _default_shapes(key) if s[:1] == rows and k in shapes]
    return heads[-1] if heads else None


_AUX_PREFIXES = {"googlenet": "aux1.", "inception_v3": "AuxLogits."}


def _vit_kwargs(shapes: dict) -> dict[str, Any]:
    tokens = shapes["encoder.pos_embedding"][1] - 1
    patch = shapes["conv_proj.weight"][-1]
    side = math.isqrt(tokens)
    return {"image_size": side * patch} if side * side == tokens and side else {}


def _vit_class_kwargs(shapes: dict) -> dict[str, Any]:
    """VisionTransformer's shape arguments but ``num_heads`` (the weights do not show it)."""
    layers = {k.split(".")[2] for k in shapes if k.startswith("encoder.layers.")}
    first = "encoder.layers.encoder_layer_0"
    return {
        **_vit_kwargs(shapes),
        "patch_size": shapes["conv_proj.weight"][-1],
        "num_layers": len(layers),
        "hidden_dim": shapes["conv_proj.weight"][0],
        "mlp_dim": shapes[f"{first}.mlp.0.weight"][0],
        "num_classes": shapes["heads.head.weight"][0],
    }


def _gpt_kwargs(shapes: dict) -> dict[str, Any]:
    """The built-in GPT's arguments but ``heads`` (the weights do not show it)."""
    vocab, width = shapes["tok_emb.weight"]
    blocks = {k.split(".")[1] for k in shapes if k.startswith("blocks.")}
    return {
        "vocab_size": vocab,
        "context": shapes["pos_emb.weight"][0],
        "layers": len(blocks),
        "width": width,
        "mlp_ratio": shapes["blocks.0.mlp.fc1.weight"][0] // width,
    }


@functools.lru_cache(maxsize=16)
def _default_shapes(key: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(name, shape) of every state_dict entry of a torchvision default build, in order."""
    return tuple((k, tuple(v.shape)) for k, v in build_on_meta(key).state_dict().items())


_BUILTIN_READERS: dict[str, Callable[[dict], dict]] = {
    "lenet5": _lenet_kwargs,
    "vgg11p": _vgg11p_kwargs,
    "mlp": _mlp_kwargs,
    "gpt": _gpt_kwargs,
}


# ---------------------------------------------------------------------------- arguments
_INT_ARGS = (
    "num_classes",
    "in_channels",
    "patch_size",
    "num_layers",
    "num_heads",
    "hidden_dim",
    "mlp_dim",
    "vocab_size",
    "context",
    "layers",
    "heads",
    "mlp_ratio",
)


def check_kwargs(name: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse arguments of the wrong name, type or value before anything is built.

    A built-in architecture whose arguments make it larger than
    :data:`hessian_lens.modelsize.MAX_PARAMETERS` or ``MAX_MODULES`` is refused here too
    (counted in closed form); every other build is counted while it runs
    (:func:`hessian_lens.modelsize.size_guard`).

    Raises:
        ArchitectureError: one message naming the argument and what it must be.

    Example:
        >>> check_kwargs("lenet5", {"num_classes": -1})
        Traceback (most recent call last):
        ...
        hessian_lens.errors.ArchitectureError: lenet5: num_classes must be an integer >= 1, got -1
    """
    if not isinstance(kwargs, Mapping):
        raise ArchitectureError(f"{name}: arguments must be a JSON object / dict")
    key, ctor = resolve(name)
    if key.startswith(HF_PREFIX):
        from hessian_lens import hf

        hf.check_config(key, kwargs)
        return
    _check_names(key, ctor, kwargs)
    for arg, value in kwargs.items():
        problem = _argument_problem(arg, value, key)
        if problem:
            raise ArchitectureError(f"{key}: {arg} must be {problem}, got {value!r}"[:300])
    try:
        modelsize.check_size(key, kwargs)
    except modelsize.ModelTooLargeError as err:
        raise TooLargeError(str(err)) from None


def _check_names(key: str, ctor: Callable, kwargs: Mapping[str, Any]) -> None:
    try:
        params = inspect.signature(ctor).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        takes = [p for p in params if p != "self"]
        raise ArchitectureError(f"bad arguments for '{key}': unknown {unknown}; it takes {takes}")


def _argument_problem(arg: str, value: Any, key: str = "") -> str | None:
    """What a known argument must be when ``value`` is not that, else None."""
    integer = arg in _INT_ARGS or (arg == "width" and key == "gpt")
    if integer and not (_int(value) and 1 <= value <= 1_000_000):
        return "an integer >= 1"
    if arg == "activation" and not (isinstance(value, str) and value.lower() in ACTIVATIONS):
        return f"one of {sorted(ACTIVATIONS)}"
    if arg == "image_size" and not (_int(value) and 1 <= value <= 100_000):
        return "an integer >= 1 (pixels)"
    if arg == "aux_logits" and not isinstance(value, bool):
        return "true or false"
    if arg == "width" and key != "gpt" and not (_real(value) and 0 < value <= 16):
        return "a number in (0, 16]"
    if arg == "pool" and value not in ("max", "avg"):
        return "'max' or 'avg'"
    if arg == "sizes" and not (
        isinstance(value, (list, tuple))
        and 2 <= len(value) <= 1000
        and all(_int(v) and 1 <= v <= 10**7 for v in value)
    ):
        return "a list of 2 or more integers >= 1"
    return None


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
