"""Ormaniec, Dangel and Singh's 5-digit addition task and their GPT-2-style transformer.

The setup of "What Does It Mean to Be a Transformer? Insights from a Theoretical Hessian
Analysis" (ICLR 2025; code dalab/transformer-hessian, ``Transformer_Hessian.ipynb``),
rebuilt here from its description:

* **Data** (generated): sequences ``a1..a5 + b1..b5 = c1..c6`` of 18 tokens over a
  vocabulary of 12 (digits 0-9, ``+`` = 10, ``=`` = 11), most significant digit first; the
  six answer digits are the sum, with its carry as the first digit. As in their generator
  (after Quirke and Barez), a fifth of the batches have a fifth of their digit pairs
  rewritten to sum to 9 (the rare "use sum 9" case).
* **Loss:** the mean over the batch and the six answer positions of the cross-entropy of
  the next token (position ``i`` predicts token ``i + 1``): :func:`answer_targets` and
  :func:`hessian_lens.losses.next_token` on the model's six answer logits.
* **Model** (:class:`AdditionTransformer`): token and position embeddings, ``layers``
  blocks of causal softmax self-attention (one head of width ``width`` by default, scores
  divided by sqrt(head width)) and a ReLU MLP of width ``4 width``, each added to the
  residual stream, no LayerNorm (their ``normalization_type=None``; ``norm="pre"`` adds
  pre-LayerNorms), and an unembedding with bias. Every weight matrix starts at
  ``N(0, (0.8 / sqrt(width))^2)`` (GPT-2's initialisation as TransformerLens applies it),
  biases at 0, and the two embeddings at ``N(0, sigma^2)``: ``sigma`` is the scale their
  figure sweeps.

Parameter names follow the library's block types (``blocks.0.attn.q.weight`` is a query
block, :func:`hessian_lens.heads.block_of`), so the canonical partition has the Q-Q and
V-V blocks of their figure as the groups ``blocks.L.attn.q.weight`` and
``blocks.L.attn.v.weight`` (weights only, as their ``W_Q`` and ``W_V``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DIGITS = 5
PLUS, EQUALS = 10, 11
VOCAB = 12
ANSWER = DIGITS + 1  # adding two 5-digit numbers gives at most 6 digits
CONTEXT = 3 * DIGITS + 3  # a1..a5 + b1..b5 = c1..c6
SUM9_BATCHES = 5  # one batch in 5 gets more digit pairs summing to 9
SUM9_SHARE = 0.2  # ... a fifth of its digit pairs
EMBEDDINGS = ("tok_emb.weight", "pos_emb.weight")  # drawn at N(0, sigma^2)


def addition_batch(batch: int, seed: int, digits: int = DIGITS) -> Tensor:
    """``batch`` sequences ``a + b = c`` as (batch, 3 digits + 3) int64 tokens.

    Example:
        >>> t = addition_batch(4, seed=0)
        >>> a = sum(int(d) * 10 ** (4 - i) for i, d in enumerate(t[0, :5]))
        >>> b = sum(int(d) * 10 ** (4 - i) for i, d in enumerate(t[0, 6:11]))
        >>> c = sum(int(d) * 10 ** (5 - i) for i, d in enumerate(t[0, 12:]))
        >>> t.shape, int(t[0, 5]), int(t[0, 11]), a + b == c
        (torch.Size([4, 18]), 10, 11, True)
    """
    if batch < 1 or digits < 1:
        raise ValueError(f"batch and digits must be >= 1, got {batch} and {digits}")
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 10, (batch, digits), generator=gen)
    b = torch.randint(0, 10, (batch, digits), generator=gen)
    if int(torch.randint(0, SUM9_BATCHES, (1,), generator=gen)) == 0:
        pick = torch.randperm(a.numel(), generator=gen)[: int(SUM9_SHARE * a.numel())]
        first = bool(torch.randint(0, 2, (1,), generator=gen))
        src, dst = (b, a) if first else (a, b)
        dst.view(-1)[pick] = 9 - src.view(-1)[pick]
    return torch.cat(
        [
            a,
            torch.full((batch, 1), PLUS),
            b,
            torch.full((batch, 1), EQUALS),
            _sum_digits(a, b),
        ],
        dim=1,
    )


def _sum_digits(a: Tensor, b: Tensor) -> Tensor:
    """The digits of ``a + b`` (most significant first, one more digit than the inputs)."""
    digits = a.shape[1]
    out = torch.zeros(a.shape[0], digits + 1, dtype=torch.int64)
    carry = torch.zeros(a.shape[0], dtype=torch.int64)
    for i in range(digits - 1, -1, -1):
        total = a[:, i] + b[:, i] + carry
        out[:, i + 1] = total % 10
        carry = total // 10
    out[:, 0] = carry
    return out


def answer_targets(tokens: Tensor) -> Tensor:
    """The answer digits a model is scored on: the last ``ANSWER`` tokens."""
    return tokens[:, -ANSWER:]


def addition_data(samples: int, seed: int, batch: int | None = None) -> list[tuple[Tensor, Tensor]]:
    """``(tokens, answer digits)`` batches of :func:`addition_batch` (one batch by default)."""
    batch = batch or samples
    out = []
    for i, start in enumerate(range(0, samples, batch)):
        tokens = addition_batch(min(batch, samples - start), seed * 1_000_003 + i)
        out.append((tokens, answer_targets(tokens)))
    return out


class _Attention(nn.Module):
    """Causal softmax self-attention with separate Q, K, V, O projections (with biases)."""

    def __init__(self, width: int, heads: int, head_width: int) -> None:
        super().__init__()
        self.heads, self.head_width = heads, head_width
        inner = heads * head_width
        self.q, self.k, self.v = (nn.Linear(width, inner) for _ in range(3))
        self.o = nn.Linear(inner, width)

    def forward(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape

        def split(t: Tensor) -> Tensor:
            return t.view(B, T, self.heads, self.head_width).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_width)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        return self.o((pattern @ v).transpose(1, 2).reshape(B, T, -1))


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, head_width: int, mlp: int, norm: bool) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width) if norm else nn.Identity()
        self.attn = _Attention(width, heads, head_width)
        self.ln2 = nn.LayerNorm(width) if norm else nn.Identity()
        self.mlp = nn.Sequential(nn.Linear(width, mlp), nn.ReLU(), nn.Linear(mlp, width))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class AdditionTransformer(nn.Module):
    """Ormaniec et al.'s GPT-2-style transformer; returns the six answer positions' logits.

    Args:
        width: the residual width (their ``d_model``, 128 in their growth figures).
        layers: transformer blocks.
        heads: attention heads (their figures: 1, of width ``width``).
        sigma: the standard deviation of both embeddings (the figure's x axis).
        norm: ``"none"`` (their default) or ``"pre"`` (pre-LayerNorm, and a final one).
        seed: the initialisation's seed.

    Example:
        >>> net = AdditionTransformer(width=16, seed=0)
        >>> tokens = addition_batch(3, seed=0)
        >>> tuple(net(tokens).shape)
        (3, 6, 12)
    """

    def __init__(
        self,
        width: int = 128,
        layers: int = 1,
        heads: int = 1,
        sigma: float = 1.0,
        norm: str = "none",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if norm not in ("none", "pre"):
            raise ValueError(f"norm must be 'none' or 'pre', got {norm!r}")
        if width < 1 or layers < 1 or heads < 1 or width % heads:
            raise ValueError(f"width {width} must be a positive multiple of heads {heads}")
        self.tok_emb = nn.Embedding(VOCAB, width)
        self.pos_emb = nn.Embedding(CONTEXT, width)
        self.blocks = nn.ModuleList(
            _Block(width, heads, width // heads, 4 * width, norm == "pre") for _ in range(layers)
        )
        self.ln_f = nn.LayerNorm(width) if norm == "pre" else nn.Identity()
        self.unembed = nn.Linear(width, VOCAB)
        self._initialise(width, sigma, seed)

    def _initialise(self, width: int, sigma: float, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("bias") and "ln" not in name:
                    p.zero_()
                elif p.dim() == 2:
                    std = sigma if name in EMBEDDINGS else 0.8 / math.sqrt(width)
                    p.copy_(torch.randn(p.shape, generator=gen) * std)

    def set_sigma(self, sigma: float, seed: int) -> None:
        """Redraw both embeddings at ``N(0, sigma^2)`` (their sweep keeps the other weights)."""
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for emb in (self.tok_emb, self.pos_emb):
                emb.weight.copy_(torch.randn(emb.weight.shape, generator=gen) * sigma)

    def forward(self, tokens: Tensor) -> Tensor:
        """The logits of the six answer positions (B, 6, 12) of (B, 18) tokens."""
        T = tokens.shape[1]
        x = self.tok_emb(tokens) + self.pos_emb(torch.arange(T, device=tokens.device))
        for block in self.blocks:
            x = block(x)
        logits = self.unembed(self.ln_f(x))
        return logits[:, -(ANSWER + 1) : -1]


def answer_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Their loss: mean cross-entropy of the answer digits (logits (B, 6, V), targets (B, 6))."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
