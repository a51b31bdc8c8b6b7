"""Models of the paper's experiments (``MODELS``: name -> constructor) and their initialisations.

:mod:`hessian_lens.registry` builds them by name.

Parameter order follows the layers (input to output), so the canonical partition reads
``conv1.weight, conv1.bias, ..., fc3.bias``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
}
VGG11_CONFIG: tuple = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
INITS = ("torch", "paper")
#: sigma_w of the paper's initialisation, by activation: 1 for saturating ones, sqrt(2) else.
PAPER_GAIN: dict[str, float] = {
    "tanh": 1.0,
    "sigmoid": 1.0,
    "relu": math.sqrt(2.0),
    "elu": math.sqrt(2.0),
    "gelu": math.sqrt(2.0),
}


def make_activation(name: str) -> nn.Module:
    """An activation module by name (``tanh``, ``relu``, ``elu``, ``sigmoid``, ``gelu``)."""
    try:
        return ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(
            f"unknown activation '{name}'; choose one of {sorted(ACTIVATIONS)}"
        ) from None


def paper_init(model: nn.Module, gain: float, seed: int | None = None) -> nn.Module:
    """The author's initialisation: ``W ~ N(0, gain^2 / fan_in)``, biases 0.

    Applies to every ``Conv*d`` and ``Linear`` module (``fan_in`` = input channels x kernel
    size, or input features); other modules keep theirs (BatchNorm: weight 1, bias 0).
    ``gain`` is ``sigma_w``: 1 for tanh, sqrt(2) for ReLU / ELU (:data:`PAPER_GAIN`).

    Example:
        >>> net = paper_init(nn.Linear(400, 3), gain=1.0, seed=0)
        >>> round(float(net.weight.detach().std() * 20), 1), float(net.bias.detach().abs().max())
        (1.0, 0.0)
    """
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    with torch.no_grad():
        for m in model.modules():
            if not isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                continue
            fan_in = m.weight[0].numel()
            noise = torch.randn(m.weight.shape, generator=gen, dtype=m.weight.dtype)
            m.weight.copy_(noise * (gain / math.sqrt(fan_in)))
            if m.bias is not None:
                m.bias.zero_()
    return model


def initialize(model: nn.Module, init: str, activation: str = "relu") -> nn.Module:
    """Apply an initialisation scheme to ``model`` and return it.

    ``"torch"`` is PyTorch's default (the model as built); ``"paper"`` is
    :func:`paper_init` with the gain of ``activation``.
    """
    if init == "torch":
        return model
    if init != "paper":
        raise ValueError(f"unknown init '{init}'; choose one of {list(INITS)}")
    return paper_init(model, PAPER_GAIN.get(activation.lower(), math.sqrt(2.0)))


class LeNet5(nn.Module):
    """LeNet-5 for 32 x 32 RGB images (CIFAR-10), tanh by default as in the paper's experiments.

    Layers: conv 3->6 5x5, pool, conv 6->16 5x5, pool, fc 400->120->84->classes.

    Example:
        >>> import torch
        >>> LeNet5()(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_classes: int = 10,
        activation: str = "tanh",
        pool: str = "max",
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if pool not in ("max", "avg"):
            raise ValueError(f"pool must be 'max' or 'avg', got '{pool}'")
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        self.act = make_activation(activation)
        self.activation = activation
        self.input_shape = (in_channels, 32, 32)
        self.pool = nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits of a batch of images ``x`` (N, C, 32, 32)."""
        x = self.pool(self.act(self.conv1(x)))
        x = self.pool(self.act(self.conv2(x)))
        x = x.flatten(1)
        x = self.act(self.fc1(x))
        x = self.act(self.fc2(x))
        return self.fc3(x)


class VGG11Prime(nn.Module):
    """VGG-11': the VGG-11 ("A") convolutions with a single linear head, ELU by default.

    The convolutions are 3x3 with padding 1, without BatchNorm; the head is one
    ``Linear(512, classes)`` instead of three.

    Example:
        >>> import torch
        >>> VGG11Prime(width=0.125)(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """

    def __init__(
        self,
        num_classes: int = 10,
        activation: str = "elu",
        width: float = 1.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in VGG11_CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            out = max(1, round(item * width))
            layers += [nn.Conv2d(channels, out, 3, padding=1), make_activation(activation)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)
        self.activation = activation
        self.input_shape = (in_channels, 32, 32)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits of a batch of images ``x`` (N, C, 32, 32)."""
        return self.classifier(self.features(x).flatten(1))


class MLP(nn.Module):
    """A fully connected network ``sizes[0] -> ... -> sizes[-1]`` (inputs are flattened).

    Example:
        >>> import torch
        >>> MLP([3072, 64, 10])(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self, sizes: Sequence[int] = (3072, 512, 256, 10), activation: str = "tanh"
    ) -> None:
        super().__init__()
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2:
            raise ValueError(f"sizes needs an input and an output size, got {sizes}")
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(make_activation(activation))
        self.layers = nn.Sequential(*layers)
        self.activation = activation
        self.input_features = sizes[0]

    def forward(self, x: Tensor) -> Tensor:
        """Outputs of a batch ``x``, flattened to (N, sizes[0]) first."""
        return self.layers(x.flatten(1))


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused ``[Q; K; V]`` projection ``qkv``.

    ``qkv.weight`` stacks the query, key and value rows (3 x width), head h owning rows
    ``h*d .. (h+1)*d`` of each; ``out_proj``'s columns read the heads in the same order.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, width) -> (B, T, width), each position attending to itself and before."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))

    def head_layout(self, prefix: str):
        """Where the heads live (:class:`hessian_lens.heads.AttentionLayout`)."""
        from hessian_lens.heads import AttentionLayout

        def name(attr: str) -> str:
            return f"{prefix}.{attr}" if prefix else attr

        return AttentionLayout(
            prefix,
            self.heads,
            qkv=(name("qkv.weight"), name("qkv.bias")),
            o=(name("out_proj.weight"),),
        )


class GPTBlock(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(width, mlp_ratio * width))
        self.mlp.add_module("act", nn.GELU())
        self.mlp.add_module("fc2", nn.Linear(mlp_ratio * width, width))

    def forward(self, x: Tensor) -> Tensor:
        """One residual attention step and one residual MLP step."""
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """A small decoder-only transformer on byte tokens (next-token prediction).

    Token and learned position embeddings, ``layers`` pre-LayerNorm blocks (causal
    multi-head attention, GELU MLP of ``mlp_ratio x width``), a final LayerNorm, and
    logits from the token embedding itself (tied input and output embeddings). Default
    initialisation: GPT-2's, N(0, 0.02) for weights and embeddings, biases 0, the
    residual projections (``out_proj``, ``fc2``) scaled by 1 / sqrt(2 layers).

    Example:
        >>> import torch
        >>> GPT(layers=1, heads=2, width=8, context=5)(torch.zeros(3, 5, dtype=torch.long)).shape
        torch.Size([3, 5, 256])
    """

    def __init__(
        self,
        vocab_size: int = 256,
        context: int = 128,
        layers: int = 4,
        heads: int = 4,
        width: int = 128,
        mlp_ratio: int = 4,
    ) -> None:
        super().__init__()
        self.context, self.vocab_size = context, vocab_size
        self.activation = "gelu"
        self.tok_emb = nn.Embedding(vocab_size, width)
        self.pos_emb = nn.Embedding(context, width)
        self.blocks = nn.Sequential(*[GPTBlock(width, heads, mlp_ratio) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(width)
        self._gpt2_init(layers)

    def _gpt2_init(self, layers: int) -> None:
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("bias") or ".ln" in name or name.startswith("ln_f"):
                    continue
                residual = name.endswith(("out_proj.weight", "fc2.weight"))
                p.normal_(0.0, 0.02 / math.sqrt(2 * layers) if residual else 0.02)
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    m.bias.zero_()

    def forward(self, tokens: Tensor) -> Tensor:
        """Next-token logits (B, T, vocab_size) of token ids (B, T), T <= context."""
        if tokens.dim() != 2 or tokens.shape[1] > self.context:
            raise ValueError(
                f"gpt takes token ids (batch, T <= {self.context}), got {tuple(tokens.shape)}"
            )
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.tok_emb(tokens) + self.pos_emb(positions)
        x = self.ln_f(self.blocks(x))
        return x @ self.tok_emb.weight.T


MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet5": LeNet5,
    "vgg11p": VGG11Prime,
    "mlp": MLP,
    "gpt": GPT,
}
