"""Inspect a checkpoint: upload, compute H̄ with a progress bar, browse the same views."""

import streamlit as st

from hessian_lens.ui import common
from hessian_lens.ui.inspect import render_inspect

common.page("Inspect a checkpoint", "🔍")
st.title("Inspect a checkpoint")
st.caption(
    "A run checkpoint, a bare state_dict (.pt / .pth / .safetensors), a torch.export "
    "program (.pt2) or a .zip of a Hugging Face save_pretrained folder. Files are read "
    "weights-only and checked member by member: no code in them ever runs. Results are "
    "stored, so the same file and settings come back instantly."
)

with common.guard():
    runs = common.all_runs()
    render_inspect(runs, common.select_run(runs, hint=False))
