"""Hugging Face ``save_pretrained`` folders and their ``.zip``: read as data, never as code.

A folder holds ``config.json`` and ``model.safetensors`` (``tokenizer.json`` optional). The
config is read as bounded JSON and checked (:func:`hessian_lens.hf.check_config`: custom
code refused by name, unknown model types, sizes bounded before anything is built); the
model is built on ``meta`` and compared with the safetensors header before a tensor is
read; ``pytorch_model.bin`` is never unpickled. A zip is inflated member by member into a
work folder (names, links, declared and real sizes checked) and deleted after reading.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from hessian_lens.errors import ArchitectureError, CheckpointError
from hessian_lens.hf import (
    CONFIG,
    MAX_CONFIG_BYTES,
    MAX_ENTRIES,
    MAX_TOKENIZER_BYTES,
    MEMBERS,
    TOKENIZER,
    WEIGHTS,
    FolderError,
    config_architecture,
    default_loss,
    task_of,
    tied_aliases,
)
from hessian_lens.io.files import UnsafeFileError, file_sha256, loads_bounded
from hessian_lens.io.torchfiles import check_safetensors_sizes, read_checkpoint, safetensors_header
from hessian_lens.registry import build_on_meta


# ---------------------------------------------------------------------------- folders
def read_folder(
    folder: str | os.PathLike, max_bytes: int | None, display_name: str | None = None
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The weights and meta of a ``save_pretrained`` folder, validated before reading tensors.

    The meta is a checkpoint's: ``model`` (``{"name": "hf:<Class>", "kwargs": config}``),
    ``loss`` (of the task), ``hf`` (model type, task, config keys left out, tokenizer's
    sha256). Tied names missing from the file (GPT-2's ``lm_head.weight``) are filled in
    as the tensor they share.

    Raises:
        FolderError: a missing or non-regular member, a symbolic link in the folder, a
            config asking for code or of an unknown model type, a model over the limits,
            weights that do not fit the config (the first differing names and shapes).
    """
    folder = Path(folder)
    name = display_name or folder.name
    _check_entries(folder, name)
    config = _read_config(folder / CONFIG, name)
    arch, kwargs, ignored = config_architecture(config, name)
    skeleton = _skeleton(arch, kwargs, name)
    header_shapes = _weights_header(folder / WEIGHTS, max_bytes, name)
    aliases = tied_aliases(skeleton)
    _check_names(skeleton, header_shapes, aliases, name)
    state = _read_weights(folder / WEIGHTS, max_bytes, name)
    for alias, source in aliases.items():
        if alias not in state and source in state:
            state[alias] = state[source]
    meta = {
        "format": "huggingface",
        "model": {"name": arch, "kwargs": kwargs},
        "loss": default_loss(arch),
        "hf": {
            "model_type": config.get("model_type"),
            "task": task_of(arch),
            "config_keys_ignored": ignored,
            "tokenizer": _tokenizer_facts(folder / TOKENIZER, name),
        },
    }
    return state, meta


def _check_entries(folder: Path, name: str) -> None:
    """A real folder with at most :data:`MAX_ENTRIES` entries, none a symbolic link."""
    if folder.is_symlink() or not folder.is_dir():
        raise FolderError(f"{name} is not a model folder (a save_pretrained directory).")
    try:
        with os.scandir(folder) as entries:
            for count, entry in enumerate(entries, start=1):
                if count > MAX_ENTRIES:
                    raise FolderError(
                        f"{name} has more than {MAX_ENTRIES} entries; not a model folder."
                    )
                if entry.is_symlink():
                    raise FolderError(
                        f"{name}: {entry.name[:80]} is a symbolic link; a model folder must "
                        "hold its own files (copy them in)."
                    )
    except OSError as err:
        raise FolderError(f"{name} cannot be listed ({err.strerror or err}).") from None
    for member in (CONFIG, WEIGHTS):
        path = folder / member
        if not path.exists():
            other = (
                " (pytorch_model.bin is never unpickled: re-save with safetensors)"
                if (member == WEIGHTS and (folder / "pytorch_model.bin").exists())
                else ""
            )
            sharded = (folder / f"{WEIGHTS}.index.json").exists()
            raise FolderError(
                f"{name} has no {member}{other}"
                + (
                    "; sharded weights are not read: save with a larger max_shard_size"
                    if sharded
                    else ""
                )
                + "; a model folder holds config.json and model.safetensors (save_pretrained)."
            )
        if not stat.S_ISREG(path.lstat().st_mode):
            raise FolderError(f"{name}: {member} is not a regular file.")


def _read_config(path: Path, name: str) -> dict[str, Any]:

    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise FolderError(f"{name}: {CONFIG} is over {MAX_CONFIG_BYTES // 2**20} MB; not a config.")
    try:
        config = loads_bounded(path.read_bytes(), f"{name}/{CONFIG}")
    except UnsafeFileError as err:
        raise FolderError(str(err)) from None
    if not isinstance(config, dict):
        raise FolderError(f"{name}: {CONFIG} is not a JSON object.")
    return config


def _skeleton(arch: str, kwargs: dict, name: str) -> nn.Module:
    try:
        return build_on_meta(arch, **kwargs)
    except ArchitectureError as err:
        raise FolderError(f"{name}: cannot build the model of {CONFIG}: {err}") from None


def _weights_header(path: Path, max_bytes: int | None, name: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes the safetensors header declares (checked against the file's size)."""
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise FolderError(
            f"{name}/{WEIGHTS} is {size / 2**20:,.1f} MB, over the {max_bytes / 2**20:,.0f} MB "
            "limit; raise the limit if you trust the file's size."
        )
    try:
        header, data_bytes = safetensors_header(path, size, f"{name}/{WEIGHTS}")
        check_safetensors_sizes(header, data_bytes, max_bytes, f"{name}/{WEIGHTS}")
    except CheckpointError as err:
        raise FolderError(str(err)) from None
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def _check_names(
    skeleton: nn.Module, shapes: Mapping[str, tuple[int, ...]], aliases: dict, name: str
) -> None:
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    missing = [k for k in expected if k not in shapes and aliases.get(k) not in shapes]
    extra = [k for k in shapes if k not in expected]
    wrong = [
        f"{k}: file {shapes[k]} vs config {v}"
        for k, v in expected.items()
        if k in shapes and shapes[k] != v
    ]
    if missing or extra or wrong:
        what = (
            f"missing {missing[:4]}"
            if missing
            else f"unexpected {extra[:4]}"
            if extra
            else "; ".join(wrong[:3])
        )
        raise FolderError(
            f"{name}: {WEIGHTS} does not fit {CONFIG} ({type(skeleton).__name__}): {what}. "
            "Save the weights and the config of the same model."
        )


def _read_weights(path: Path, max_bytes: int | None, name: str) -> dict[str, Tensor]:
    try:
        state, _ = read_checkpoint(path, max_bytes, f"{name}/{WEIGHTS}")
    except CheckpointError as err:
        raise FolderError(str(err)) from None
    return state


def _tokenizer_facts(path: Path, name: str) -> dict[str, Any] | None:
    if not path.exists():
        return None

    if not stat.S_ISREG(path.lstat().st_mode) or path.stat().st_size > MAX_TOKENIZER_BYTES:
        raise FolderError(
            f"{name}: {TOKENIZER} is not a regular file under {MAX_TOKENIZER_BYTES // 2**20} MB."
        )
    return {"file": TOKENIZER, "sha256": file_sha256(path)}


# ---------------------------------------------------------------------------- archives
def read_zip(
    archive: str | os.PathLike,
    max_bytes: int | None,
    workdir: str | os.PathLike,
    display_name: str | None = None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """:func:`read_folder` of a ``.zip`` of a ``save_pretrained`` folder.

    Only ``config.json``, ``model.safetensors`` and ``tokenizer.json`` are read (at the top
    or in one folder), after every entry is checked: no ``..`` or absolute names, no
    symbolic links, at most :data:`MAX_ENTRIES` entries, declared sizes within
    ``max_bytes``; they are inflated (never beyond their declared sizes) into a temporary
    folder under ``workdir`` (the upload cache), deleted before returning.

    Raises:
        FolderError: each of those, in one line naming the entry.
    """
    name = display_name or Path(archive).name
    members = zip_members(archive, max_bytes, name)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".hf-", dir=workdir))
    try:
        with zipfile.ZipFile(archive) as z:
            for member, info in members.items():
                _inflate(z, info, tmp / member, name)
        return read_folder(tmp, max_bytes, name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def zip_members(
    archive: str | os.PathLike, max_bytes: int | None, name: str
) -> dict[str, zipfile.ZipInfo]:
    """``{member: entry}`` of the model files in an archive, every entry checked first."""
    try:
        st = os.stat(archive)
    except OSError:
        raise FolderError(f"{name}: no such file.") from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block or never end
        raise FolderError(f"{name} is not a regular file; give a .zip of a model folder.")
    if max_bytes is not None and st.st_size > max_bytes:
        raise FolderError(
            f"{name} is {st.st_size / 2**20:,.1f} MB, over the {max_bytes / 2**20:,.0f} MB limit."
        )
    try:
        with zipfile.ZipFile(archive) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as err:
        raise FolderError(f"{name} is not a readable zip archive ({str(err)[:120]}).") from None
    if len(infos) > MAX_ENTRIES:
        raise FolderError(
            f"{name} has {len(infos):,} entries, over {MAX_ENTRIES}; not a model folder."
        )
    for info in infos:
        _check_entry(info, name)
    files = [i for i in infos if not i.is_dir()]
    declared = sum(i.file_size for i in files)
    if max_bytes is not None and declared > max_bytes:
        raise FolderError(
            f"{name} would inflate to {declared / 2**20:,.1f} MB (the sizes its entries declare), "
            f"over the {max_bytes / 2**20:,.0f} MB limit; refusing it before inflating anything."
        )
    found: dict[str, zipfile.ZipInfo] = {}
    for info in files:
        parts = info.filename.split("/")
        if parts[-1] in MEMBERS and len(parts) <= 2:
            if parts[-1] in found:
                raise FolderError(f"{name} holds two {parts[-1]}; zip one model folder.")
            found[parts[-1]] = info
    if CONFIG not in found or WEIGHTS not in found:
        raise FolderError(
            f"{name} holds no {CONFIG} and {WEIGHTS} (at its top or in one folder); zip the "
            "folder save_pretrained wrote."
        )
    return found


def _check_entry(info: zipfile.ZipInfo, name: str) -> None:
    entry = info.filename
    parts = entry.replace("\\", "/").split("/")
    if entry.startswith(("/", "\\")) or ".." in parts or ":" in parts[0] or "\\" in entry:
        raise FolderError(
            f"{name}: entry {entry[:80]!r} points outside the archive's folder ('..' or an "
            "absolute name); refusing the archive."
        )
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise FolderError(f"{name}: entry {entry[:80]!r} is a symbolic link; refusing the archive.")


def _inflate(z: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, name: str) -> None:
    """Copy one entry, never more bytes than it declares (a lying size is refused)."""
    left = info.file_size
    try:
        with z.open(info) as src, target.open("xb") as dst:
            while True:
                chunk = src.read(min(2**20, left + 1))
                if not chunk:
                    break
                left -= len(chunk)
                if left < 0:
                    raise FolderError(
                        f"{name}: entry {info.filename[:80]!r} inflates beyond its declared size."
                    )
                dst.write(chunk)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
        if isinstance(err, FolderError):
            raise
        raise FolderError(
            f"{name}: entry {info.filename[:80]!r} is corrupt ({str(err)[:120]})."
        ) from None


def zip_tokenizer(archive: str | os.PathLike, name: str | None = None) -> str | None:
    """The text of the ``tokenizer.json`` an archive holds (bounded), or None."""
    name = name or Path(archive).name
    members = zip_members(archive, None, name)
    info = members.get(TOKENIZER)
    if info is None:
        return None
    if info.file_size > MAX_TOKENIZER_BYTES:
        raise FolderError(f"{name}: {TOKENIZER} is over {MAX_TOKENIZER_BYTES // 2**20} MB.")
    with zipfile.ZipFile(archive) as z, z.open(info) as f:
        data = f.read(MAX_TOKENIZER_BYTES + 1)
    return data.decode("utf-8", errors="replace")


def is_model_folder(path: str | os.PathLike) -> bool:
    """Whether a path is a folder holding a ``config.json`` (a ``save_pretrained`` folder)."""
    path = Path(path)
    return path.is_dir() and (path / CONFIG).exists()


# ---------------------------------------------------------------------------- writing
def save_folder(model: nn.Module, folder: str | os.PathLike, tokenizer: str | None = None) -> Path:
    """``save_pretrained`` of a model built by :func:`build` (safetensors), atomically.

    Args:
        model: a Hugging Face model.
        folder: the folder to write (replaced as a whole once complete).
        tokenizer: a ``tokenizer.json`` file to copy beside the weights.
    """
    folder = Path(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        model.config.architectures = [type(model).__name__]
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            shutil.copyfile(tokenizer, tmp / TOKENIZER)
        mask = os.umask(0)
        os.umask(mask)
        for path in (tmp, *tmp.iterdir()):  # mkdtemp's 0700: readable as any folder is
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
