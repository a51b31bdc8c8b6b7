"""The grammar of group labels: which layer a label belongs to (no model needed).

Labels are dotted parameter names with group suffixes (``blocks.0.attn.q.head2``,
``layer1.0.conv1.weight``): the tree of :mod:`hessian_lens.hierarchy`, the figures' layer
lines and ticks and the loggers' pictures all read layers the same way, here.
"""

from __future__ import annotations

import re

__all__ = ["layer_of"]

_NUMBERED = re.compile(r"^(\d+|.*_\d+)$")
_HEAD_TOKEN = re.compile(r"^head[0-9]{1,9}$")  # as heads.head_of reads a head


def layer_of(label: str) -> str:
    """The layer a group belongs to: the label up to its first numbered token.

    ``blocks.0.attn.q.head2`` -> ``blocks.0``; ``encoder.layers.encoder_layer_3.mlp.0.weight``
    -> ``encoder.layers.encoder_layer_3``. A label without a numbered token belongs to
    its module (the label without its last token: ``conv_proj.weight`` -> ``conv_proj``),
    a one-token label to itself (``class_token``).

    Example:
        >>> [layer_of(x) for x in ("blocks.1.ln1.weight", "layer1.0.conv1.weight",
        ...  "encoder.ln.bias", "class_token")]
        ['blocks.1', 'layer1.0', 'encoder.ln', 'class_token']
    """
    tokens = str(label).split(".")
    for i, token in enumerate(tokens):
        if _NUMBERED.match(token) and not _HEAD_TOKEN.match(token):
            return ".".join(tokens[: i + 1])
    return ".".join(tokens[:-1]) if len(tokens) > 1 else tokens[0]
