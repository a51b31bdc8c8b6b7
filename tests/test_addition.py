"""Ormaniec et al.'s addition task: the data add up, the model starts as theirs does."""

from __future__ import annotations

import math

import pytest
import torch

from hessian_lens.addition import (
    ANSWER,
    CONTEXT,
    EQUALS,
    PLUS,
    AdditionTransformer,
    addition_batch,
    addition_data,
    answer_loss,
)
from hessian_lens.losses import next_token


def _number(digits) -> int:
    return int("".join(str(int(d)) for d in digits))


def test_every_sequence_is_a_correct_sum():
    tokens = torch.cat([addition_batch(200, seed=s) for s in range(10)])
    assert tokens.shape == (2000, CONTEXT)
    assert (tokens[:, 5] == PLUS).all() and (tokens[:, 11] == EQUALS).all()
    for row in tokens[:300]:
        assert _number(row[:5]) + _number(row[6:11]) == _number(row[12:])
    assert int(tokens[:, 12].max()) == 1  # a carry into the sixth digit happens
    # one batch in five has a fifth of its digit pairs rewritten to sum to 9
    nines = [
        float(((t[:, :5] + t[:, 6:11]) == 9).float().mean())
        for t in (addition_batch(500, seed=s) for s in range(40))
    ]
    assert sum(n > 0.2 for n in nines) >= 3 and sum(n < 0.15 for n in nines) >= 20


def test_data_are_seeded_and_targets_are_the_answer():
    ((x, y),) = addition_data(8, seed=3)
    assert torch.equal(x, addition_data(8, seed=3)[0][0]) and not torch.equal(
        x, addition_data(8, seed=4)[0][0]
    )
    assert torch.equal(y, x[:, -ANSWER:])


def test_initialisation_is_theirs():
    """GPT-2's N(0, 0.8^2 / width) for every weight, N(0, sigma^2) for the two embeddings
    only (not the unembedding), zero biases."""
    width, sigma = 64, 3.0
    net = AdditionTransformer(width=width, layers=2, sigma=sigma, seed=0)
    for name, p in net.named_parameters():
        if name.endswith("bias"):
            assert float(p.detach().abs().max()) == 0, name
        elif name in ("tok_emb.weight", "pos_emb.weight"):
            assert float(p.detach().std()) == pytest.approx(sigma, rel=0.15), name
        else:
            assert float(p.detach().std()) == pytest.approx(0.8 / math.sqrt(width), rel=0.1), name
    net.set_sigma(0.5, seed=1)
    assert float(net.tok_emb.weight.detach().std()) == pytest.approx(0.5, rel=0.3)
    assert float(net.unembed.weight.detach().std()) == pytest.approx(
        0.8 / math.sqrt(width), rel=0.1
    )


def test_logits_are_causal_and_the_loss_is_their_mean_cross_entropy():
    net = AdditionTransformer(width=16, sigma=1.0, seed=0).double()
    ((x, y),) = addition_data(5, seed=0)
    out = net(x)
    assert out.shape == (5, ANSWER, 12)
    changed = x.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 10  # the last token is predicted, never read
    assert torch.equal(net(changed), out)
    assert float(answer_loss(out, y)) == pytest.approx(float(next_token(out, y)), rel=1e-12)
    with pytest.raises(ValueError, match="norm must be"):
        AdditionTransformer(norm="post")
