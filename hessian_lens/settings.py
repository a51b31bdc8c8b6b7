"""Environment settings and limits, defined and validated in one place (torch-free).

- ``HESSIAN_LENS_RUNS``: more folders holding runs (separated by ``:`` or ``,``).
- ``HESSIAN_LENS_DATA``: the data set source (an npz file or a torchvision root).
- ``HESSIAN_LENS_CACHE``: uploads and their results (default ``~/.cache/hessian_lens``).
- ``HESSIAN_LENS_MAX_UPLOAD_MB``: the largest checkpoint accepted (default 500).
- ``HESSIAN_LENS_CACHE_MB``: the upload cache's size before LRU eviction (default 2000).
- ``HESSIAN_LENS_MODELS``: the operator's model files (``@register_model``), ``:``-separated.
- ``HESSIAN_LENS_MAX_CHECKPOINT_MB``: the largest checkpoint ``analyze`` and ``inspect`` read,
  also once inflated (default 500).
- ``HESSIAN_LENS_MAX_DATA_MB``: the most bytes one data split may hold once decoded (an npz
  member, a folder of images; default 1024).

A bad value is a :class:`SettingsError` naming the variable, raised when the setting is
read (the dashboard shows it on its first page; the CLI prints it as one line).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

RUNS_ENV = "HESSIAN_LENS_RUNS"
DATA_ENV = "HESSIAN_LENS_DATA"
CACHE_ENV = "HESSIAN_LENS_CACHE"
UPLOAD_LIMIT_ENV = "HESSIAN_LENS_MAX_UPLOAD_MB"
CACHE_LIMIT_ENV = "HESSIAN_LENS_CACHE_MB"
MODELS_ENV = "HESSIAN_LENS_MODELS"
CHECKPOINT_LIMIT_ENV = "HESSIAN_LENS_MAX_CHECKPOINT_MB"
DATA_LIMIT_ENV = "HESSIAN_LENS_MAX_DATA_MB"
CHROMIUM_ENV = "HESSIAN_LENS_CHROMIUM"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
DEFAULT_UPLOAD_MB = 500.0
DEFAULT_CACHE_MB = 2000.0
DEFAULT_CHECKPOINT_MB = 500.0
DEFAULT_DATA_MB = 1024.0
MAX_MEGABYTES = 1024.0 * 1024.0  # 1 TB: beyond is a typo, not a setting
MB = 2**20


class SettingsError(ValueError):
    """An environment variable with a value that cannot be used."""


def megabytes(name: str, default: float) -> int:
    """A size in MB from the environment, as bytes.

    Raises:
        SettingsError: not a number, not finite, negative, or above 1 TB.

    Example:
        >>> os.environ["HL_DOC_MB"] = "1.5"; megabytes("HL_DOC_MB", 10)
        1572864
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return int(default * MB)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0 or value > MAX_MEGABYTES:
        raise SettingsError(
            f"{name}={text!r} is not a size: give a number of megabytes between 0 and "
            f"{MAX_MEGABYTES:,.0f} (e.g. {name}={default:g})."
        )
    return int(value * MB)


def upload_limit_bytes() -> int:
    """Largest checkpoint accepted (``$HESSIAN_LENS_MAX_UPLOAD_MB``, default 500 MB)."""
    return megabytes(UPLOAD_LIMIT_ENV, DEFAULT_UPLOAD_MB)


def checkpoint_limit_bytes() -> int:
    """Largest run checkpoint read by ``analyze`` / ``inspect``, also once inflated."""
    return megabytes(CHECKPOINT_LIMIT_ENV, DEFAULT_CHECKPOINT_MB)


def data_limit_bytes() -> int:
    """Most bytes one data split may hold once decoded (``$HESSIAN_LENS_MAX_DATA_MB``)."""
    return megabytes(DATA_LIMIT_ENV, DEFAULT_DATA_MB)


def cache_limit_bytes() -> int:
    """Size of the upload cache before the least recently used files go."""
    return megabytes(CACHE_LIMIT_ENV, DEFAULT_CACHE_MB)


def cache_dir(create: bool = False) -> Path:
    """Where uploads and their results go (``$HESSIAN_LENS_CACHE``, ~/.cache/hessian_lens).

    Created only when ``create`` (a writer asks); viewers never create it.
    """
    path = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "hessian_lens").expanduser()
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SettingsError(
                f"the cache folder {path} cannot be created ({err.strerror}); set {CACHE_ENV} "
                "to a writable folder."
            ) from None
    return path


def chromium_path() -> str:
    """The browser static figure export draws with (never a downloaded one).

    Debian's Chromium (``/usr/bin/chromium``), or ``$HESSIAN_LENS_CHROMIUM``.
    """
    return os.environ.get(CHROMIUM_ENV, DEFAULT_CHROMIUM)


def data_source() -> str | None:
    """``$HESSIAN_LENS_DATA`` or None."""
    return os.environ.get(DATA_ENV) or None


def check_all() -> None:
    """Read every setting once, so a bad one is reported at startup.

    Raises:
        SettingsError: the first bad value.
    """
    upload_limit_bytes()
    cache_limit_bytes()
    checkpoint_limit_bytes()
    data_limit_bytes()
