"""The Inspect page: upload a checkpoint, analyse it, browse the same views.

Pick the architecture when the file does not say, compute H̄ with a progress bar. Every bad
file gets a message; refused uploads are deleted; the cache is bounded; nothing is created
from the data field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import streamlit as st

from hessian_lens import uploads
from hessian_lens.losses import LOSSES
from hessian_lens.partition import SCHEMES
from hessian_lens.runfolder import RECORDER_DATA
from hessian_lens.runs import Run
from hessian_lens.settings import (
    MODELS_ENV,
    UPLOAD_LIMIT_ENV,
    cache_dir,
    cache_limit_bytes,
    data_source,
    upload_limit_bytes,
)
from hessian_lens.ui.blockdiag import render_block_diagonal
from hessian_lens.ui.common import plain, scoped
from hessian_lens.ui.interactions import render_interactions
from hessian_lens.ui.reads import as_dict

CURVATURES = {"hessian": "Hessian H", "ggn": "Gauss-Newton G"}
PARTITIONS = (*SCHEMES[:3], "by_module:2", "by_kind", "by_head", "adam_mini", "by_neuron")
BATCH_SIZE = 500
AUTO = "auto-detect"
TASK_NAMES = {
    "causal_lm": "a causal LM",
    "sequence_classification": "a sequence classifier",
    "image_classification": "an image classifier",
}


def render_inspect(runs: list[Run], selected: Run | None = None) -> None:
    """The whole page below its title (``selected``: the sidebar's run)."""
    _user_models()
    limit = upload_limit()
    cache = cache_dir()
    upload = st.file_uploader(
        "Checkpoint",
        type=["pt", "pth", "safetensors", "pt2", "zip"],
        key="upload",
        help=f"Up to {limit / 2**20:,.0f} MB. Uploads are kept in {cache / uploads.UPLOADS}; "
        f"the least recently used go beyond {cache_limit_bytes() / 2**20:,.0f} MB.",
    )
    if upload is None:
        st.info(
            "Upload a checkpoint: a run's `epoch_0021.pt`, a bare `state_dict` of a "
            "torchvision model, a `.pt2` from `torch.export.save` (no architecture needed), "
            "or a `.zip` of a Hugging Face `save_pretrained` folder (`config.json`, "
            "`model.safetensors`, optional `tokenizer.json`)."
        )
        return
    ins = _open(upload, limit, cache)
    count, used = uploads.usage(cache)
    st.caption(f"Upload cache: {count} files, {used / 2**20:,.1f} MB in {cache / uploads.UPLOADS}.")
    architecture, kwargs = architecture_picker(ins)
    model, meta = ins.build(architecture, kwargs)
    n_params = sum(p.numel() for p in model.parameters())
    kwargs_shown = meta["model"].get("kwargs")
    st.success(
        f"**{upload.name}**: `{meta['model']['name']}`"
        + (f" {kwargs_shown}" if kwargs_shown else "")
        + f" · {n_params:,} parameters"
        + (f" · epoch {meta['epoch']}" if isinstance(meta.get("epoch"), (int, float)) else "")
    )
    _analysis(ins, runs, architecture, kwargs, selected)


def upload_limit() -> int:
    """The app's upload limit, capped at the server's (``server.maxUploadSize``), with a warning.

    Streamlit buffers a whole upload before the app sees it; its own limit is the one that
    bounds the server's memory, so the app never promises more.
    """
    limit = upload_limit_bytes()
    server = int(st.get_option("server.maxUploadSize")) * 2**20
    if limit > server:
        st.warning(
            f"{UPLOAD_LIMIT_ENV} allows {limit / 2**20:,.0f} MB but the server accepts "
            f"{server / 2**20:,.0f} MB (server.maxUploadSize); uploads are limited to that. "
            f"Start the dashboard with `--server.maxUploadSize {-(-limit // 2**20)}` to "
            "accept larger files."
        )
    return min(limit, server)


def _open(upload, limit: int, cache: Path):
    """Save the upload (bounded cache) and read it once per session; refused files go."""
    from hessian_lens.inspection import Inspection
    from hessian_lens.io.torchfiles import CheckpointError, check_finite

    data = upload.getvalue()
    path, sha = uploads.save_upload(cache_dir(create=True), upload.name, data, limit)
    opened = st.session_state.setdefault("inspections", {})
    key = (sha, upload.name)
    if key not in opened:
        opened.clear()  # one file at a time in memory
        try:
            ins = Inspection.open(
                path, display_name=upload.name, max_bytes=limit, workdir=path.parent
            )
            if ins.state is not None:  # unusable whatever the architecture: refused too
                check_finite(ins.state, upload.name)
        except BaseException as err:  # any file that cannot be opened is refused: deleted
            uploads.discard(path)
            if isinstance(err, (CheckpointError, MemoryError, KeyboardInterrupt)):
                raise
            raise CheckpointError(
                f"{upload.name} cannot be read ({type(err).__name__}: {str(err)[:200]})."
            ) from None
        opened[key] = ins
    uploads.evict(cache, cache_limit_bytes(), keep=path)  # only for a file kept
    return opened[key]


def architecture_picker(ins) -> tuple[str | None, dict | None]:
    """The architecture to build: the file's own, or one chosen from the registry."""
    if ins.exported is not None:
        st.caption("A torch.export program: its graph is the architecture.")
        return None, None
    if ins.meta.get("format") == "huggingface":
        hf = ins.meta.get("hf") or {}
        st.caption(
            f"A Hugging Face folder: `{ins.declared['name']}` built from its config.json "
            f"({TASK_NAMES.get(hf.get('task'), '?')}"
            + (", with its tokenizer.json)" if ins.tokenizer is not None else ")")
        )
        return None, None
    declared = ins.declared
    if declared is not None:
        st.caption(
            f"Architecture from the file: `{declared['name']}` {declared.get('kwargs') or ''}"
        )
        if not st.checkbox("Use another architecture", key="arch-override"):
            return None, None
    c1, c2 = st.columns([1, 2])
    name = c1.selectbox(
        "Architecture",
        [AUTO, *_names()],
        key="arch-name",
        help="auto-detect matches the built-in default models; torchvision:<builder> infers "
        "num_classes and other shapes from the weights",
    )
    text = c2.text_input(
        "Arguments (JSON)",
        "{}",
        key="arch-kwargs",
        help='e.g. {"activation": "relu"}, {"sizes": [3072, 512, 10]}, {"num_classes": 10}',
    )
    return (None, None) if name == AUTO else (name, _kwargs(text))


def _user_models() -> None:
    """Register the operator's models (``$HESSIAN_LENS_MODELS``, imported once).

    Done before any file is read, since a file may name one; a broken model file is a
    warning, not a stop.
    """
    from hessian_lens.registry import ArchitectureError, load_env_models

    try:
        load_env_models()
    except ArchitectureError as err:
        st.warning(f"{MODELS_ENV}: {err}")


def _names() -> list[str]:
    from hessian_lens.registry import user_model_names

    return _names_with(tuple(user_model_names()))


@st.cache_data(show_spinner=False)
def _names_with(user: tuple[str, ...]) -> list[str]:
    """Every architecture name, cached per set of user models.

    The torchvision list is slow to build.
    """
    from hessian_lens.registry import model_names

    return model_names()


def _kwargs(text: str) -> dict[str, Any]:
    try:
        kwargs = json.loads(text or "{}")
    except json.JSONDecodeError as err:
        raise ValueError(f"architecture arguments are not valid JSON ({err})") from None
    if not isinstance(kwargs, dict):
        raise ValueError('architecture arguments must be a JSON object, e.g. {"width": 0.5}')
    return kwargs


def default_data_source(runs: list[Run]) -> str:
    """``$HESSIAN_LENS_DATA``, else the data source of the first run that names one."""
    if data_source():
        return data_source()
    return next(
        (
            str(r.manifest.data["source"])
            for r in runs
            if isinstance(r.manifest.data.get("source"), str)
        ),
        "",
    )


def run_defaults(
    meta: dict,
    runs: list[Run],
    selected: Run | None = None,
    architecture: str | None = None,
    tokenizer: str | None = None,
) -> dict[str, Any]:
    """Data set, source, loss and tokenizer to analyse a checkpoint with.

    Those of the run that wrote it (its ``meta["run"]``; a checkpoint of ``gpt-text`` is
    analysed on that run's corpus with ``next_token``). A Hugging Face folder: its task's
    loss, and the data of the run whose tokenizer has the sha256 of the folder's (its own
    tokenizer, ``tokenizer``, by default). A file that names no known run takes those of
    the sidebar's run (``selected``) when that run trained the same architecture
    (``architecture``, else the file's own). Else CIFAR-10 with cross-entropy (and the data
    source of :func:`default_data_source`).
    """
    found = next((r for r in runs if r.name == meta.get("run") and meta.get("run")), None)
    own_tok = ((meta.get("hf") or {}).get("tokenizer") or {}).get("sha256")
    if found is None and own_tok:
        found = next((r for r in runs if _tokenizer_sha(r) == own_tok), None)
    declared = meta.get("model") if isinstance(meta.get("model"), dict) else {}
    arch = architecture or declared.get("name")
    if found is None and selected is not None and arch and selected.manifest.model["name"] == arch:
        found = selected
    data = found.manifest.data if found is not None else {}
    spec = data.get("name") if isinstance(data.get("name"), str) else "cifar10"
    if spec == RECORDER_DATA:  # batches a Recorder was given: nothing to load by name
        spec = "cifar10"
    source = data.get("source") if isinstance(data.get("source"), str) else None
    loss = found.manifest.loss if found is not None else meta.get("loss")
    if loss not in LOSSES:
        loss = "next_token" if spec.startswith("text:") else "cross_entropy"
    if tokenizer is None and found is not None and _tokenizer_sha(found):
        recorded = data.get("tokenizer")
        path = Path(recorded) if isinstance(recorded, str) else None
        tokenizer = str(path if path is None or path.is_absolute() else found.path / path)
    out = {
        "spec": spec,
        "source": source or default_data_source(runs),
        "loss": loss,
        "tokenizer": tokenizer or "",
    }
    return {**out, "run": found.name} if found is not None else out


def _tokenizer_sha(run: Run) -> str | None:
    corpus = run.manifest.data.get("corpus")
    tok = corpus.get("tokenizer") if isinstance(corpus, dict) else None
    return tok.get("sha256") if isinstance(tok, dict) else None


@st.cache_resource(show_spinner="Loading data…", max_entries=4)
def analysis_data(
    spec: str, source: str, samples: int, seed: int, batch_size: int, tokenizer: str = ""
):
    """The analysis subset and its fingerprint (loaded once per server; never downloads)."""
    from hessian_lens.analyze import AnalysisSettings, analysis_batches

    settings = AnalysisSettings(samples=samples, seed=seed, batch_size=batch_size)
    return analysis_batches(source or None, settings, spec, tokenizer=tokenizer or None)


def batch_plan(meta: dict, samples: int) -> tuple[int, int]:
    """``(batch size, samples)`` of an analysis of a file with this meta.

    A ``.pt2`` exported with a fixed batch size gets batches of exactly that size (the
    samples rounded down to a multiple of it).

    Example:
        >>> batch_plan({"static_batch_size": 8}, 1000), batch_plan({}, 1000)
        ((8, 1000), (500, 1000))
        >>> batch_plan({"static_batch_size": 300}, 1000)
        (300, 900)
    """
    fixed = meta.get("static_batch_size")
    if isinstance(fixed, int) and fixed > 0:
        return fixed, max(fixed, samples - samples % fixed)
    return BATCH_SIZE, samples


def data_click(defaults: dict, spec: str, source: str) -> bool | None:
    """Whether the data may be loaded now: False (yes), True (yes, Compute was clicked), None.

    Data named by the uploaded file (the run its metadata names: a ``run.json`` may say
    ``text:/**``) is loaded only after a click on Compute, once per data set and session;
    data typed into the fields, or the page's default, is loaded at once.
    """
    if "run" not in defaults or (spec, source) != (defaults["spec"], defaults["source"]):
        return False
    confirmed = st.session_state.setdefault("data-confirmed", set())
    if (spec, source) in confirmed:
        return False
    st.caption(
        f"This file names run {plain(defaults['run'])}; its data, {plain(spec)}, is read "
        "when you press Compute H̄."
    )
    if not st.button("Compute H̄", type="primary", key="compute"):
        return None
    confirmed.add((spec, source))
    return True


def _analysis(ins, runs: list[Run], architecture, kwargs, selected: Run | None) -> None:
    from hessian_lens.analyze import AnalysisSettings

    own = str(ins.tokenizer) if getattr(ins, "tokenizer", None) is not None else None
    defaults = run_defaults(ins.meta, runs, selected, architecture, own)
    c0, c1, c2, c3, c4, c5 = st.columns([1.2, 2.2, 0.9, 1.1, 1.1, 0.8])
    spec = c0.text_input(
        "Data set",
        defaults["spec"],
        key=scoped("data-spec"),
        help="cifar10, mnist, ..., imagefolder:DIR, npz:PATH, PATH.safetensors, "
        "text:PATH[@context] (default: the data of the run that wrote the file)",
    )
    source = c1.text_input(
        "Data source (npz file or torchvision folder)",
        defaults["source"],
        key=scoped("data-source"),
        help="Read only: nothing is created or downloaded from here.",
    )
    samples = c2.number_input("Samples", 10, 50000, 1000, step=500, key="samples")
    heads_first = ins.meta.get("format") == "huggingface"  # transformers: per head by default
    partition = c3.selectbox(
        "Partition",
        PARTITIONS,
        index=PARTITIONS.index("by_head") if heads_first else 0,
        key="partition",
    )
    loss = c4.selectbox(
        "Loss", LOSSES, index=list(LOSSES).index(defaults["loss"]), key=scoped("loss")
    )
    curvature = c5.selectbox(
        "Curvature",
        CURVATURES,
        format_func=CURVATURES.get,
        key="curvature",
        help="H̄ = UᵀHU (the Hessian), or Ḡ = UᵀJᵀH_ℓJU (the Gauss-Newton matrix: "
        "positive semi-definite for a convex loss; no D³)",
    )
    order3 = curvature == "hessian" and st.checkbox("D³ diagonal", key="order3")
    tokenizer = ""
    if spec.strip().lower().startswith("text:"):
        tokenizer = st.text_input(
            "Tokenizer (text data; empty: bytes)",
            defaults["tokenizer"],
            key="tokenizer",
            help="a tokenizer.json, a folder holding one, or a .zip of a save_pretrained "
            "folder (default: the upload's own, or the tokenizer of the run that wrote it); "
            "read offline by the tokenizers library",
        )
        if own is not None and tokenizer == own:
            st.caption("Tokenised by the upload's own tokenizer.json.")
    batch_size, samples = batch_plan(ins.meta, int(samples))
    if batch_size != BATCH_SIZE:
        st.caption(f"This export fixes its batch size: batches of {batch_size}, {samples} samples.")
    settings = AnalysisSettings(
        samples=samples,
        partition=partition,
        order3=order3,
        batch_size=batch_size,
        loss=loss,
        curvature=curvature,
    )
    store, note = uploads.inspect_store(cache_dir(create=True))
    if note:  # kept for the session: the next rerun would hide it at once
        st.session_state["inspect-store-note"] = note
    if st.session_state.get("inspect-store-note"):
        st.warning(st.session_state["inspect-store-note"])
    clicked = data_click(defaults, spec, source)
    if clicked is None:
        return
    batches, fingerprint = analysis_data(
        spec, source, settings.samples, settings.seed, settings.batch_size, tokenizer.strip()
    )
    record = ins.stored(store, settings, fingerprint)
    if record is None:
        if not clicked and not st.button("Compute H̄", type="primary", key="compute"):
            return
        bar = st.progress(0.0, text="starting")
        record = ins.analyze(
            store,
            settings,
            batches,
            fingerprint,
            architecture,
            kwargs,
            progress=lambda f, msg: bar.progress(min(f, 1.0), text=msg),
        )
        bar.progress(1.0, text=f"done in {record.seconds:.1f} s")
    else:
        st.caption(f"From the store (computed in {record.seconds:.1f} s).")
    rec = as_dict(record)
    # the epoch the file says, never one read from its name ("resnet18.pt" is no epoch 18)
    epoch = ins.meta.get("epoch")
    ok = isinstance(epoch, (int, float)) and not isinstance(epoch, bool) and epoch >= 0
    rec["epoch"] = epoch if ok else None
    tab1, tab2 = st.tabs(["Layer interactions", "Block-diagonal vs full"])
    with tab1:
        render_interactions([rec], key="inspect")
    with tab2:
        render_block_diagonal([rec], key="inspect-bd")
