"""Group labels matched by a pattern typed on a page, in time linear in the text.

Python's :mod:`re` backtracks: ``(.|.|.)*!`` or ``(a+)+$`` typed into the dashboard's
filter take exponential time on a long label, inside one C call that holds the
interpreter's lock, so every session of the server stops (its health check too). The
patterns here are compiled by RE2 (``google-re2``), whose matching is linear in the text
and never backtracks; constructs that need backtracking (back-references, look-around)
are refused with a message. A pattern is at most :data:`MAX_PATTERN` characters and its
compiled program at most :data:`MAX_PROGRAM_BYTES`, so with labels of at most
:data:`hessian_lens.store.MAX_LABEL_CHARS` characters a filter over the 5,000 groups a
store may hold is bounded (a few milliseconds).
"""

from __future__ import annotations

from collections.abc import Callable

MAX_PATTERN = 200
MAX_PROGRAM_BYTES = 2 * 2**20


class PatternError(ValueError):
    """A pattern that cannot be used; the message says why."""


def label_matcher(pattern: str) -> Callable[[str], bool]:
    r"""``matches(label)``: whether ``pattern`` (RE2 syntax, searched anywhere) matches.

    Raises:
        PatternError: too long, not a regular expression, or a construct RE2 refuses.

    Example:
        >>> m = label_matcher(r"attn\.(q|k)\.head[01]$")
        >>> [m(x) for x in ("b.0.attn.q.head1", "b.0.attn.v.head1", "b.0.attn.k.head12")]
        [True, False, False]
        >>> label_matcher("(a+)+$")("a" * 100_000 + "!")  # linear: no backtracking
        False
    """
    import re2

    if len(pattern) > MAX_PATTERN:
        raise PatternError(f"a pattern is at most {MAX_PATTERN} characters, not {len(pattern)}")
    options = re2.Options()
    options.log_errors = False
    options.max_mem = MAX_PROGRAM_BYTES
    try:
        compiled = re2.compile(pattern, options)
    except re2.error as err:
        reason = err.args[0] if err.args else "not accepted"
        if isinstance(reason, bytes):
            reason = reason.decode(errors="replace")
        raise PatternError(
            f"{reason} (patterns use RE2's syntax: no back-references or look-around)"
        ) from None
    return lambda label: compiled.search(label) is not None
