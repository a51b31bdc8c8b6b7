"""Inspect a checkpoint: upload, compute H̄ with a progress bar, browse the same views."""

import streamlit as st

from hessian_lens import ui
from hessian_lens.analyze import AnalysisSettings, analyze_file
from hessian_lens.checkpoint import load_checkpoint, read_checkpoint
from hessian_lens.store import ResultStore

ui.page("Inspect a checkpoint", "🔍")
st.title("Inspect a checkpoint")
st.caption(
    "A run checkpoint or a bare state_dict (.pt / .pth / .safetensors). Files are read "
    "weights-only: no code in them ever runs. Results are stored, so the same file and "
    "settings come back instantly."
)

with ui.guard():
    limit = ui.upload_limit_bytes()
    upload = st.file_uploader(
        "Checkpoint", type=["pt", "pth", "safetensors"], help=f"Up to {limit / 2**20:,.0f} MB"
    )
    if upload is None:
        st.info("Upload a checkpoint, e.g. `checkpoints/lenet5-cifar10/epoch_0021.pt`.")
        st.stop()
    path, sha = ui.save_upload(upload, limit)
    _, meta = read_checkpoint(path, max_bytes=limit)
    architecture, kwargs = ui.architecture_picker(meta)
    model, meta = load_checkpoint(path, architecture, kwargs, max_bytes=limit)
    n_params = sum(p.numel() for p in model.parameters())
    st.success(
        f"**{upload.name}**: `{meta['model']['name']}` {meta['model']['kwargs'] or ''}"
        f" · {n_params:,} parameters" + (f" · epoch {meta['epoch']}" if "epoch" in meta else "")
    )

    c1, c2, c3, c4 = st.columns([3, 1, 1, 1])
    source = c1.text_input(
        "Data (CIFAR-10 .npz file or torchvision root)",
        ui.default_data_source(ui.all_runs()),
        key="data-source",
    )
    samples = c2.number_input("Samples", 100, 50000, 1000, step=500, key="samples")
    partition = c3.selectbox("Partition", ["canonical", "by_layer", "by_kind"], key="partition")
    order3 = c4.checkbox("D³ diagonal", key="order3")
    settings = AnalysisSettings(
        samples=int(samples), partition=partition, order3=order3, batch_size=500
    )
    batches, fingerprint = ui.analysis_data(
        source, settings.samples, settings.seed, settings.batch_size
    )
    store = ResultStore(ui.cache_dir() / "inspect.sqlite")
    record = store.get(sha, settings.key(fingerprint))
    if record is None:
        if not st.button("Compute H̄", type="primary", key="compute"):
            st.stop()
        bar = st.progress(0.0, text="starting")
        record, _ = analyze_file(
            path,
            batches,
            settings,
            fingerprint,
            store,
            progress=lambda f, msg: bar.progress(min(f, 1.0), text=msg),
            architecture=architecture,
            model_kwargs=kwargs,
            max_bytes=limit,
        )
        bar.progress(1.0, text=f"done in {record.seconds:.1f} s")
    else:
        st.caption(f"From the store (computed in {record.seconds:.1f} s).")
    rec = ui.as_dict(record)
    tab1, tab2 = st.tabs(["Layer interactions", "Block-diagonal vs full"])
    with tab1:
        ui.render_interactions([rec], key="inspect")
    with tab2:
        ui.render_block_diagonal([rec], key="inspect-bd")
