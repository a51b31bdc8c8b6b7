"""One comparison for the numerical tests, and the devices they run on.

``assert_close(actual, expected, rtol=, atol=)`` checks every entry:
``|actual - expected| <= atol + rtol * |expected|``. Both tolerances are explicit: no floor
turns a check on small entries (H̄ entries go down to 1e-11 in the tiny models) into an
absolute one. ``EXACT`` is the tolerance of two float64 computations of the same number
(engine vs brute force, batches vs one batch, ranks vs one process): measured errors are
below 3e-12 relative and 1e-16 absolute. ``DEVICES`` parametrises the ``device`` fixtures:
``cpu`` always, ``cuda`` when this machine has one.
"""

from __future__ import annotations

import torch

EXACT = {"rtol": 1e-9, "atol": 1e-15}
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def assert_close(actual, expected, *, rtol: float, atol: float) -> None:
    """Entrywise ``|actual - expected| <= atol + rtol * |expected|``, same shapes."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    assert actual.shape == expected.shape, f"shapes {actual.shape} != {expected.shape}"
    actual = actual.detach().to("cpu", torch.float64)
    expected = expected.detach().to("cpu", torch.float64)
    error = (actual - expected).abs()
    bad = error > atol + rtol * expected.abs()
    worst = float(expected.reshape(-1)[error.argmax()]) if error.numel() else 0.0
    assert not bool(bad.any()), (
        f"{int(bad.sum())} of {bad.numel()} entries differ (rtol={rtol}, atol={atol}): "
        f"max error {float(error.max()):.3e}, where {worst:.3e} was expected"
    )
