"""One checkpoint file, inspected: read once, built, looked up, analysed.

The workflow behind the dashboard's Inspect page and ``hessian-lens inspect``::

    ins = Inspection.open(path, display_name="model.pt")   # reads and validates once
    ins.meta                                                # what the file says
    model = ins.build("torchvision:resnet18")               # no second read of the file
    record = ins.stored(store, settings, fingerprint)       # instant when analysed before
    record = ins.analyze(store, settings, batches, fingerprint, progress)

``.pt2`` exports carry their own graph: they build without an architecture. A Hugging Face
``save_pretrained`` folder (or a ``.zip`` of one) carries its architecture in its
``config.json`` (:mod:`hessian_lens.hf`); its ``tokenizer`` (when it has one) is the folder
or archive itself, ready for ``--tokenizer``.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from hessian_lens.analyze import AnalysisSettings, ProgressFn, compute_record
from hessian_lens.checkpoint import DEFAULT_MAX_BYTES, build_from_state, read_checkpoint
from hessian_lens.io.files import file_sha256
from hessian_lens.store import Record, ResultStore

EXPORT_SUFFIX = ".pt2"
ZIP_SUFFIX = ".zip"


@dataclass
class Inspection:
    """A checkpoint file read once: its state (or exported module), meta and sha256."""

    path: Path
    display_name: str
    sha: str
    meta: dict[str, Any]
    state: Mapping[str, Tensor] | None = None
    exported: nn.Module | None = None
    tokenizer: Path | None = None
    _built: dict = field(default_factory=dict, repr=False)

    @classmethod
    def open(
        cls,
        path: str | Path,
        display_name: str | None = None,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        workdir: str | Path | None = None,
    ) -> Inspection:
        """Read and validate the file (no model is built yet).

        Args:
            path: a checkpoint file, a ``save_pretrained`` folder or a ``.zip`` of one.
            display_name: the name to use in messages (default: the file's name).
            max_bytes: refuse larger files (also once inflated).
            workdir: where a ``.zip`` is inflated for reading (then deleted); default: the
                system's temporary folder (the page passes its upload cache).

        Raises:
            CheckpointError: every way a file can be unusable, naming ``display_name``.
        """
        path = Path(path)
        name = display_name or path.name
        if path.name == "model.safetensors" and (path.parent / "config.json").is_file():
            path, name = path.parent, display_name or path.parent.name  # the whole folder
        if path.suffix.lower() == ZIP_SUFFIX or path.is_dir():
            return cls._open_hf(path, name, max_bytes, workdir)
        if path.suffix == EXPORT_SUFFIX:
            from hessian_lens.io.pt2 import load_exported

            module, meta = load_exported(path, max_bytes=max_bytes, display_name=name)
            return cls(path, name, file_sha256(path), dict(meta), exported=module)
        state, meta = read_checkpoint(path, max_bytes, name)
        return cls(path, name, file_sha256(path), dict(meta), state=state)

    @classmethod
    def _open_hf(cls, path: Path, name: str, max_bytes: int | None, workdir) -> Inspection:
        from hessian_lens import hf, hf_folders

        if path.is_dir():
            state, meta = hf_folders.read_folder(path, max_bytes, name)
            sha = hashlib.sha256(
                "".join(file_sha256(path / m) for m in (hf.CONFIG, hf.WEIGHTS)).encode()
            ).hexdigest()
        else:
            state, meta = hf_folders.read_zip(
                path, max_bytes, workdir or tempfile.gettempdir(), name
            )
            sha = file_sha256(path)
        has_tokenizer = (meta.get("hf") or {}).get("tokenizer") is not None
        return cls(path, name, sha, meta, state=state, tokenizer=path if has_tokenizer else None)

    @property
    def declared(self) -> dict[str, Any] | None:
        """The architecture the file declares (``{"name", "kwargs"}``), or None."""
        model = self.meta.get("model")
        return model if isinstance(model, dict) and isinstance(model.get("name"), str) else None

    def build(
        self, architecture: str | None = None, kwargs: Mapping[str, Any] | None = None
    ) -> tuple[nn.Module, dict[str, Any]]:
        """The model and its meta (cached per architecture and arguments).

        Raises:
            CheckpointError: the architecture does not fit the weights (first differences).
        """
        if self.exported is not None:
            return self.exported, self.meta
        key = (architecture, repr(sorted((kwargs or {}).items())))
        if key not in self._built:
            self._built[key] = build_from_state(
                self.state, self.meta, architecture, kwargs, self.display_name
            )
        return self._built[key]

    def stored(
        self, store: ResultStore, settings: AnalysisSettings, fingerprint: str
    ) -> Record | None:
        """The analysis already in ``store`` for these settings and data, or None."""
        return store.get(self.sha, settings.key(fingerprint))

    def analyze(
        self,
        store: ResultStore,
        settings: AnalysisSettings,
        batches,
        fingerprint: str,
        architecture: str | None = None,
        kwargs: Mapping[str, Any] | None = None,
        progress: ProgressFn | None = None,
        device=None,
    ) -> Record:
        """Compute (unless stored) and store the analysis; returns the record."""
        found = self.stored(store, settings, fingerprint)
        if found is not None:
            return found
        model, meta = self.build(architecture, kwargs)
        record = compute_record(
            model,
            meta,
            self.display_name,
            self.sha,
            batches,
            settings,
            fingerprint,
            device,
            progress,
        )
        store.put(record)
        return store.get(self.sha, settings.key(fingerprint)) or record
