"""Hugging Face ``transformers`` models, first-class: heads, models from configs, folders.

* **Head layouts** (:func:`attention_layout`, looked up by :mod:`hessian_lens.heads`):
  GPT-2's fused ``Conv1D`` ``c_attn`` (stored in x out: Q, K, V are column blocks, and
  the rows of ``c_proj`` read the heads); BERT / RoBERTa's ``self.query`` / ``key`` /
  ``value`` and ``output.dense``; the ``q_proj`` / ``k_proj`` / ``v_proj`` / ``o_proj``
  family (Llama, Mistral, Qwen, Hugging Face's ViT) with grouped-query attention.
* **Models by name** (``hf:<model_type>`` for its causal LM, e.g. ``hf:gpt2``, or
  ``hf:<Class>``, e.g. ``hf:BertForSequenceClassification``), built from config keyword
  arguments by the registry: :func:`build`. A built model returns its ``logits`` tensor
  (a forward hook), so the project's losses, training loop and data checks take it as
  they take any model; its parameter names stay Hugging Face's.
* **Folders** written by ``save_pretrained`` (``config.json`` + ``model.safetensors``,
  ``tokenizer.json`` optional), or a ``.zip`` of one: :func:`read_folder`,
  :func:`read_zip`. The config is checked (no custom code, a known ``model_type``, a
  bounded size), the model built on the ``meta`` device and compared with the
  safetensors header before any tensor is read.

``transformers`` is imported only when a model is built or a folder read; the layouts and
labels need nothing but torch.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from hessian_lens.errors import ArchitectureError, CheckpointError
from hessian_lens.heads import AttentionLayout

PREFIX = "hf:"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
MEMBERS = (CONFIG, WEIGHTS, TOKENIZER)
MAX_CONFIG_BYTES = 2**20
MAX_TOKENIZER_BYTES = 64 * 2**20
MAX_ENTRIES = 256
MAX_LAYERS = 1024
#: Parameters a model built from a config may have (float32: 4 GB).
MAX_PARAMETERS = 10**9
#: Config keys that ask to run code shipped with the model: always refused.
CODE_KEYS = ("auto_map", "trust_remote_code", "custom_pipelines", "code_revision")
#: Keys of a saved config.json that describe the file, not the model.
BOOKKEEPING = (
    "architectures",
    "model_type",
    "transformers_version",
    "_name_or_path",
    "dtype",
    "torch_dtype",
)
TASKS = ("causal_lm", "sequence_classification", "image_classification")
LOSS_OF_TASK = {
    "causal_lm": "next_token",
    "sequence_classification": "cross_entropy",
    "image_classification": "cross_entropy",
}
#: Block types of Hugging Face names the generic rules of :func:`heads.block_of` miss.
BLOCK_PATTERNS = (
    (re.compile(r"(?:^|\.)attention\.output\.dense(?:\.|$)"), "o"),
    (re.compile(r"(?:^|\.)attn\.c_proj(?:\.|$)"), "o"),
    (re.compile(r"(?:^|\.)intermediate\.dense(?:\.|$)"), "mlp"),
    (re.compile(r"(?:^|\.)layer\.\d+\.output\.dense(?:\.|$)"), "mlp"),
)


class FolderError(CheckpointError):
    """A model folder or archive that cannot be used; the message says why and what to do."""


# ---------------------------------------------------------------------------- layouts
def attention_layout(prefix: str, module: nn.Module) -> AttentionLayout | None:
    """The head layout of a Hugging Face attention module, or None when it is not one.

    Recognised by structure (the tensors and the head counts the module holds), so the
    families' relatives (RoBERTa, Electra, Mistral, Qwen, ...) are found too.
    """
    for finder in (_gpt2_layout, _bert_layout, _proj_layout):
        layout = finder(prefix, module)
        if layout is not None:
            return layout
    return None


def is_transposed(module: nn.Module) -> bool:
    """Whether ``module`` is ``transformers``' ``Conv1D`` (a Linear with its weight in x out)."""
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers.")


def _name(prefix: str, *parts: str) -> str:
    return ".".join(p for p in (prefix, *parts) if p)


def _tensors(prefix: str, linear: nn.Module, *path: str) -> tuple[str, ...]:
    """The weight (and bias when it has one) names of a Linear-like module."""
    names = [_name(prefix, *path, "weight")]
    if getattr(linear, "bias", None) is not None:
        names.append(_name(prefix, *path, "bias"))
    return tuple(names)


def _gpt2_layout(prefix: str, m: nn.Module) -> AttentionLayout | None:
    """GPT-2: ``c_attn`` (in x 3 out: Q | K | V column blocks) and ``c_proj`` (heads x out)."""
    c_attn, c_proj = getattr(m, "c_attn", None), getattr(m, "c_proj", None)
    heads = getattr(m, "num_heads", None)
    if not (is_transposed(c_attn) and is_transposed(c_proj) and isinstance(heads, int)):
        return None
    if getattr(m, "is_cross_attention", False):  # c_attn holds K, V only: not a layout here
        return None
    qkv = _tensors(prefix, c_attn, "c_attn")
    o = (_name(prefix, "c_proj", "weight"),)
    return AttentionLayout(prefix, heads, qkv=qkv, o=o, transposed=(qkv[0], o[0]))


def _bert_layout(prefix: str, m: nn.Module) -> AttentionLayout | None:
    """BERT-like: a child with ``query`` / ``key`` / ``value`` and ``output.dense``."""
    output = getattr(getattr(m, "output", None), "dense", None)
    if not isinstance(output, nn.Linear):
        return None
    for child_name, child in m.named_children():
        parts = [getattr(child, r, None) for r in ("query", "key", "value")]
        heads = getattr(child, "num_attention_heads", None)
        if all(isinstance(p, nn.Linear) for p in parts) and isinstance(heads, int):
            q, k, v = (
                _tensors(prefix, p, child_name, r)
                for p, r in zip(parts, ("query", "key", "value"), strict=True)
            )
            o = (_name(prefix, "output", "dense", "weight"),)
            return AttentionLayout(prefix, heads, q=q, k=k, v=v, o=o)
    return None


def _proj_layout(prefix: str, m: nn.Module) -> AttentionLayout | None:
    """Llama-like: ``q_proj`` / ``k_proj`` / ``v_proj`` / ``o_proj``, K / V maybe grouped."""
    parts = [getattr(m, f"{r}_proj", None) for r in "qkvo"]
    if not all(isinstance(p, nn.Linear) for p in parts):
        return None
    q, k, v, o = parts
    head_dim = getattr(m, "head_dim", None)
    if not isinstance(head_dim, int):
        config = getattr(m, "config", None)
        heads = getattr(m, "num_heads", None) or getattr(config, "num_attention_heads", None)
        if not isinstance(heads, int) or heads < 1 or q.out_features % heads:
            return None
        head_dim = q.out_features // heads
    if head_dim < 1 or q.out_features % head_dim or k.out_features % head_dim:
        return None
    if k.out_features != v.out_features or o.in_features != q.out_features:
        return None
    heads, kv = q.out_features // head_dim, k.out_features // head_dim
    if kv < 1 or heads % kv:
        return None
    return AttentionLayout(
        prefix,
        heads,
        q=_tensors(prefix, q, "q_proj"),
        k=_tensors(prefix, k, "k_proj"),
        v=_tensors(prefix, v, "v_proj"),
        o=(_name(prefix, "o_proj", "weight"),),
        num_kv_heads=kv if kv != heads else None,
    )


# ---------------------------------------------------------------------------- logits
def _logits_hook(module: nn.Module, args: Any, output: Any) -> Any:
    logits = getattr(output, "logits", None)
    return logits if isinstance(logits, Tensor) else output


def logits_only(model: nn.Module) -> nn.Module:
    """Make ``model(x)`` return its ``logits`` tensor (a forward hook; names unchanged).

    The project's losses (``next_token``, ``cross_entropy``), training loop and data checks
    take ``model(x)`` as a tensor; a Hugging Face model returns a ``ModelOutput``.
    """
    if not getattr(model, "_hessian_lens_logits", False):
        model.register_forward_hook(_logits_hook)
        model._hessian_lens_logits = True
    return model


# ---------------------------------------------------------------------------- names
@functools.cache
def _task_mappings() -> dict[str, dict[str, tuple[str, ...]]]:
    """``{task: {model_type: class names}}`` of the auto classes (names only, nothing built)."""
    from transformers.models.auto import modeling_auto as auto

    mappings = {
        "causal_lm": auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        "sequence_classification": auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
        "image_classification": auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    }
    return {
        task: {t: (c,) if isinstance(c, str) else tuple(c) for t, c in mapping.items()}
        for task, mapping in mappings.items()
    }


def _model_types() -> frozenset[str]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return frozenset(CONFIG_MAPPING_NAMES)


def _type_of_class(class_name: str, task: str) -> str | None:
    """The model type of a class: the one whose config is named like it (GPT2Config ...)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    types = [t for t, cs in _task_mappings()[task].items() if class_name in cs]
    for t in types:
        if class_name.startswith(CONFIG_MAPPING_NAMES.get(t, "?").removesuffix("Config")):
            return t
    return types[0] if types else None


def resolve(name: str, model_type: str | None = None) -> tuple[str, str, str]:
    """``(class name, model_type, task)`` of ``hf:<model_type>`` or ``hf:<Class>``.

    Args:
        name: the name, with or without ``hf:``.
        model_type: the model type a saved config declares (a class may serve several).

    Raises:
        ArchitectureError: an unknown model type or class, or one of no supported task.

    Example:
        >>> resolve("hf:gpt2")
        ('GPT2LMHeadModel', 'gpt2', 'causal_lm')
    """
    key = str(name).removeprefix(PREFIX).strip()
    for task in TASKS:
        found = _type_of_class(key, task)
        if found is not None:
            serves = (
                model_type in _task_mappings()[task] and key in _task_mappings()[task][model_type]
            )
            return key, model_type if serves else found, task
    if key in _model_types():
        causal = _task_mappings()["causal_lm"].get(key)
        if causal:
            return causal[0], key, "causal_lm"
        raise ArchitectureError(
            f"'{PREFIX}{key}': model type {key} has no causal language model; name the "
            f"class, e.g. {PREFIX}{_example(key)}"
        )
    raise ArchitectureError(
        f"unknown Hugging Face model '{PREFIX}{key[:80]}': give a model type with a causal "
        f"LM ({PREFIX}gpt2, {PREFIX}llama, ...) or a class of a causal LM, a sequence or an "
        f"image classifier ({PREFIX}BertForSequenceClassification, "
        f"{PREFIX}ViTForImageClassification)"
    )


def _example(model_type: str) -> str:
    for task in ("sequence_classification", "image_classification"):
        found = _task_mappings()[task].get(model_type)
        if found:
            return found[0]
    return "GPT2LMHeadModel"


def task_of(name: str) -> str:
    """The task of a ``hf:`` name (``causal_lm``, ``sequence_classification``, ...)."""
    return resolve(name)[2]


def default_loss(name: str) -> str:
    """The loss of a ``hf:`` model's task: ``next_token`` for a causal LM, else cross-entropy."""
    return LOSS_OF_TASK[task_of(name)]


# ---------------------------------------------------------------------------- configs
@functools.cache
def _known_keys(config_class: type) -> frozenset[str]:
    keys: set[str] = {"num_labels"}
    for cls in config_class.__mro__:
        init = vars(cls).get("__init__")
        if init is not None:
            params = inspect.signature(init).parameters.values()
            keys |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    keys |= set(getattr(config_class, "attribute_map", {}))
    return frozenset(keys - {"self"})


def _config_class(model_type: str) -> type:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return CONFIG_MAPPING[model_type]


def check_config(name: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse config arguments that ask for code, are unknown, or build too large a model.

    Raises:
        ArchitectureError: one line naming the key (or the size) and what to do.
    """
    _, model_type, _ = resolve(name)
    code = [k for k in CODE_KEYS if k in kwargs]
    if code:
        raise ArchitectureError(
            f"{PREFIX}{model_type}: the config asks for custom code ({code[0]}); Hessian Lens "
            "never runs code shipped with a model: remove the key and use a model type "
            "transformers knows"
        )
    unknown = sorted(set(kwargs) - _known_keys(_config_class(model_type)))
    if unknown:
        raise ArchitectureError(
            f"{PREFIX}{model_type}: unknown config keys {[k[:40] for k in unknown[:6]]} for "
            f"{_config_class(model_type).__name__}"
        )
    config = make_config(name, kwargs)
    count = estimate_parameters(config)
    layers = _first_int(config, "num_hidden_layers", "n_layer", "num_layers") or 0
    if layers > MAX_LAYERS or count > MAX_PARAMETERS:
        raise ArchitectureError(
            f"{PREFIX}{model_type}: the config builds about {count:,} parameters in {layers:,} "
            f"layers, over the limit of {MAX_PARAMETERS:,} parameters and {MAX_LAYERS} "
            "layers; refusing it before building anything"
        )


def make_config(name: str, kwargs: Mapping[str, Any]) -> Any:
    """The ``transformers`` config of a ``hf:`` name and keyword arguments (nothing built).

    Raises:
        ArchitectureError: the config class refuses the arguments.
    """
    _, model_type, _ = resolve(name)
    try:
        return _config_class(model_type)(**dict(kwargs))
    except Exception as err:  # any refusal of the config class is a bad argument
        raise ArchitectureError(
            f"bad config for {PREFIX}{model_type}: {type(err).__name__}: {err}"[:300]
        ) from None


def _first_int(config: Any, *names: str) -> int | None:
    for n in names:
        value = getattr(config, n, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def estimate_parameters(config: Any) -> int:
    """An upper estimate of the parameters a config builds, read from its sizes alone.

    ``L (4 d^2 + 3 d f + 16 d) + 2 (V + P + patches) d``: L layers of width d with an MLP
    of width f (``intermediate_size``, default 4 d), V tokens, P positions, untied input
    and output embeddings. Unknown sizes count as 0.
    """
    d = _first_int(config, "hidden_size", "n_embd", "d_model") or 0
    layers = _first_int(config, "num_hidden_layers", "n_layer", "num_layers") or 0
    f = _first_int(config, "intermediate_size", "n_inner", "ffn_dim") or 4 * d
    vocab = _first_int(config, "vocab_size") or 0
    positions = _first_int(config, "max_position_embeddings", "n_positions") or 0
    image = _first_int(config, "image_size") or 0
    patch = max(_first_int(config, "patch_size") or 1, 1)
    channels = _first_int(config, "num_channels") or 3
    patches = (image // patch) ** 2 + channels * patch * patch
    labels = _first_int(config, "num_labels") or 0
    per_layer = 4 * d * d + 3 * d * f + 16 * d
    return layers * per_layer + 2 * (vocab + positions + patches + labels) * d


# ---------------------------------------------------------------------------- building
def build(name: str, **kwargs: Any) -> nn.Module:
    """A Hugging Face model of a ``hf:`` name from config arguments, returning its logits.

    Eager attention (plain matrix products: the derivatives of every order exist), no
    key/value cache, the global random generator for the initialisation; on the current
    default device (``meta`` under ``torch.device("meta")``).

    Raises:
        ArchitectureError: code keys, unknown keys, too large, or refused by transformers.
    """
    import transformers

    check_config(name, kwargs)
    class_name, _, _ = resolve(name)
    config = make_config(name, kwargs)
    config._attn_implementation = "eager"
    if hasattr(config, "use_cache"):
        config.use_cache = False
    cls = getattr(transformers, class_name)
    return logits_only(cls(config))


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """``{name: the first name of the same tensor}`` for every tied parameter name."""
    first: dict[int, str] = {}
    aliases = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def config_architecture(config: Mapping[str, Any], name: str) -> tuple[str, dict, list[str]]:
    """``(hf:<Class>, config arguments, keys left out)`` of a saved ``config.json``.

    Raises:
        FolderError: custom code asked for, no or an unknown ``model_type``, an architecture
            of no supported task.
    """
    code = [k for k in CODE_KEYS if k in config]
    if code:
        raise FolderError(
            f"{name}: {CONFIG} asks for custom code ({code[0]}); Hessian Lens never runs "
            "code shipped with a model (no trust_remote_code). Use a model type that "
            "transformers itself implements."
        )
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in _model_types():
        shown = model_type[:40] if isinstance(model_type, str) else model_type
        raise FolderError(
            f"{name}: {CONFIG} has an unknown model_type {shown!r}; the installed transformers "
            "does not implement it (and custom code is never run)."
        )
    archs = config.get("architectures") or []
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    try:
        cls, found_type, _ = resolve(arch or model_type, model_type)
    except ArchitectureError as err:
        raise FolderError(f"{name}: {err}") from None
    if _config_class(found_type) is not _config_class(model_type):
        raise FolderError(f"{name}: {CONFIG} names {arch} but model_type {model_type!r}.")
    known = _known_keys(_config_class(model_type))
    defaults = defaults_of(model_type)
    kwargs = {
        k: v
        for k, v in config.items()
        if k in known and k not in BOOKKEEPING and (k not in defaults or defaults[k] != v)
    }
    ignored = sorted(k for k in config if k not in known and k not in BOOKKEEPING)
    return PREFIX + cls, kwargs, ignored


@functools.cache
def defaults_of(model_type: str) -> dict[str, Any]:
    """The JSON form of a model type's default config (what a saved config repeats)."""
    return json.loads(_config_class(model_type)().to_json_string(use_diff=False))
