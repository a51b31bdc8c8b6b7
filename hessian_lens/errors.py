"""The package's own errors that several layers raise (kept at the bottom: no imports)."""

from __future__ import annotations

__all__ = [
    "ArchitectureError",
    "CheckpointError",
    "DataError",
    "DataNotFoundError",
    "PartitionError",
]


class PartitionError(ValueError):
    """A partition that does not cover every trainable parameter exactly once."""


class ArchitectureError(ValueError):
    """An architecture name or arguments that cannot build a model; says what to change."""


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint; the message says what is wrong and what to do."""


class DataNotFoundError(FileNotFoundError):
    """The data set is neither on disk nor downloadable; the message says what to do."""


class DataError(ValueError):
    """Data that cannot be used as it is (labels, shapes, keys); the message says why."""
