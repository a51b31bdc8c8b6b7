"""Tiny Hugging Face models built from configs (no download) and padded token batches.

The causal language model's own loss (transformers' ``ForCausalLMLoss``) casts the logits
to float32 before its cross-entropy, so a float64 analysis of it carries float32 rounding;
:func:`float64_causal_loss` is the same loss (labels shifted by one, -100 ignored, a mean
over the valid tokens) without that cast, for comparisons at 1e-9.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

transformers = __import__("pytest").importorskip("transformers")

VOCAB, SEQ, CLASSES = 11, 6, 3
F64 = torch.float64


def float64_causal_loss(logits, labels, vocab_size, **kwargs):
    """transformers' causal LM loss (shift, ignore -100, token mean) in the logits' dtype."""
    shifted = F.pad(labels, (0, 1), value=-100)[..., 1:]
    return F.cross_entropy(logits.reshape(-1, vocab_size), shifted.reshape(-1))


def gpt2(exact: bool = True, seed: int = 0):
    """A 1-layer width-8 GPT-2 LM head in float64 (``exact``: the float64 twin of its loss)."""
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=SEQ,
        n_embd=8,
        n_layer=1,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config).double()
    if exact:
        model.loss_function = float64_causal_loss
    return model


def _bert_config(**kw):
    return transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
        max_position_embeddings=SEQ,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=CLASSES,
        **kw,
    )


def bert_tokens(seed: int = 0):
    """A 1-layer width-8 ``BertForTokenClassification`` in float64 (3 labels per token)."""
    torch.manual_seed(seed)
    return transformers.BertForTokenClassification(_bert_config()).double()


def bert_sequences(seed: int = 0):
    """A 1-layer width-8 ``BertForSequenceClassification`` in float64 (3 classes)."""
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(_bert_config()).double()


MODELS = {"causal": gpt2, "tokens": bert_tokens, "sequences": bert_sequences}


def padded(kind: str, lengths: list[int], seed: int) -> dict[str, torch.Tensor]:
    """A batch of ``len(lengths)`` sequences of those lengths, right-padded to SEQ.

    Labels are -100 on padding (and, for the causal model, the inputs themselves); a
    sequence classifier gets one class per sequence.
    """
    gen = torch.Generator().manual_seed(seed)
    n = len(lengths)
    ids = torch.randint(1, VOCAB, (n, SEQ), generator=gen)
    mask = (torch.arange(SEQ) < torch.tensor(lengths).unsqueeze(1)).long()
    ids = ids * mask
    if kind == "sequences":
        labels = torch.randint(0, CLASSES, (n,), generator=gen)
    elif kind == "tokens":
        labels = torch.randint(0, CLASSES, (n, SEQ), generator=gen).masked_fill(mask == 0, -100)
    else:
        labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def joined(batches: list[dict]) -> dict[str, torch.Tensor]:
    """One batch holding every sample of ``batches``."""
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
