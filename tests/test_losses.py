"""Losses by name: cross-entropy, mse (one-hot or real targets), nll."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hessian_lens.losses import correct_predictions, get_loss, mse, next_token


def test_mse_one_hot_equals_the_explicit_targets():
    out = torch.randn(5, 3)
    y = torch.tensor([0, 2, 1, 1, 0])
    assert torch.allclose(mse(out, y), F.mse_loss(out, F.one_hot(y, 3).float()))
    real = torch.randn(5, 3)
    assert torch.allclose(mse(out, real), F.mse_loss(out, real))
    assert torch.allclose(mse(out[:, :1], real[:, 0]), F.mse_loss(out[:, 0], real[:, 0]))
    with pytest.raises(ValueError, match="do not match"):
        mse(out, torch.randn(4, 3))


def test_names():
    out, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    assert get_loss("cross_entropy") is F.cross_entropy
    assert torch.allclose(get_loss("nll")(out.log_softmax(1), y), F.cross_entropy(out, y))
    assert get_loss("cross-entropy") is F.cross_entropy
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        get_loss("hinge")


def test_next_token_is_the_mean_cross_entropy_per_token():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=gen)
    targets = torch.randint(0, 5, (2, 3), generator=gen)
    per_token = [
        F.cross_entropy(logits[b, t : t + 1], targets[b, t : t + 1])
        for b in range(2)
        for t in range(3)
    ]
    assert torch.allclose(get_loss("next_token")(logits, targets), torch.stack(per_token).mean())
    with pytest.raises(ValueError, match="next_token needs"):
        next_token(logits[0], targets[0])
    assert correct_predictions(logits, logits.argmax(-1)) == 6
    assert correct_predictions(logits[:, 0], targets[:, 0]) == int(
        (logits[:, 0].argmax(1) == targets[:, 0]).sum()
    )
    assert correct_predictions(logits, torch.randn(2, 3, 5)) == 0
