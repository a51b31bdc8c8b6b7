"""Helpers for the dashboard tests: a tiny analysed run and plotly specs from AppTest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from streamlit.testing.v1 import AppTest

from hessian_lens.analyze import AnalysisSettings, analyze_run
from hessian_lens.train import TrainConfig, train
from tests.conftest import REPO, write_tiny_npz

APP_SETTINGS = AnalysisSettings(samples=64, batch_size=32)


def make_run(out: Path, npz: Path, **overrides) -> Path:
    """A small LeNet-5 run on a synthetic npz (2 epochs of 64 images unless overridden)."""
    fields = {
        "out": str(out),
        "data_source": str(npz),
        "train_size": 64,
        "test_size": 32,
        "epochs": 2,
        "batch_size": 32,
        "lr": 0.05,
        "seed": 2,
        **overrides,
    }
    return train(TrainConfig(**fields), progress=False)


def make_pn_run(out: Path, npz: Path) -> Path:
    """A 1-epoch PartitionNewton run recomputing its rates at every step (a rate per step)."""
    return make_run(
        out,
        npz,
        epochs=1,
        batch_size=16,
        optimizer="partition-newton",
        lr=0.3,
        optimizer_kwargs={"period": 1, "average": 1},
    )


def make_analysed_run(root: Path) -> tuple[Path, Path]:
    """A 2-epoch LeNet-5 run on synthetic data, analysed; returns (run folder, npz)."""
    root.mkdir(parents=True, exist_ok=True)
    npz = write_tiny_npz(root / "tiny.npz")
    run = make_run(root / "runs" / "tiny-run", npz)
    analyze_run(run, APP_SETTINGS, progress=False)
    return run, npz


def plotly_specs(at) -> list[dict]:
    """The figures an AppTest page drew, as plotly JSON dicts."""
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def heatmap_z(spec: dict, trace: int = 0) -> np.ndarray:
    """The z matrix of a heatmap trace in a plotly spec (decoding typed arrays)."""
    z = spec["data"][trace]["z"]
    if isinstance(z, dict) and "bdata" in z:
        import base64

        arr = np.frombuffer(base64.b64decode(z["bdata"]), dtype=np.dtype(z["dtype"]))
        shape = z.get("shape")
        if isinstance(shape, str):  # plotly writes "rows, cols"
            shape = tuple(int(n) for n in shape.split(","))
        return arr.reshape(shape) if shape else arr
    return np.asarray(z, dtype=float)


def fake_partition(architecture: str, **kwargs):
    """The canonical partition of a registry architecture, built on the meta device."""
    from hessian_lens.partition import Partition
    from hessian_lens.registry import build_on_meta

    return Partition.canonical(build_on_meta(architecture, **kwargs))


def make_fake_run(
    folder: Path,
    part,
    epochs=(0, 1, 2),
    model: str | dict = "lenet5",
    seed: int = 0,
    settings: dict | None = None,
    manifest: dict | None = None,
    overrides: dict | None = None,
    gradient_norms: bool = False,
) -> Path:
    """An analysed run folder written without training: run.json and analysis.sqlite whose
    records hold a random SPD H̄ (and everything derived from it) per epoch.

    ``part`` gives the labels / kinds / layers (:func:`fake_partition`); ``overrides`` maps
    an epoch to arrays replacing the derived ones (e.g. a stored ``Hinv_bd_layer``);
    ``gradient_norms``: g_bar >= 0, as when the direction is the gradient (g_bar[s] =
    ||U^s||^2, which the heterogeneity view divides by).
    """
    import torch

    from hessian_lens.analyze import derived
    from hessian_lens.runfolder import write_manifest
    from hessian_lens.store import Record, ResultStore

    folder.mkdir(parents=True, exist_ok=True)
    model = {"name": model, "kwargs": {}} if isinstance(model, str) else model
    history = [
        {"epoch": e, "train_loss": 2.3 / (1 + e), "test_acc": 0.1 + 0.02 * e} for e in epochs
    ]
    write_manifest(
        folder,
        {
            "format": "hessian-lens-run/1",
            "name": folder.name,
            "model": model,
            "data": {"name": "cifar10", "train_size": 64},
            "optimizer": {"name": "sgd", "lr": 0.01},
            "batch_size": 32,
            "history": history,
            **(manifest or {}),
        },
    )
    settings = settings or {"samples": 64, "partition": "canonical", "dtype": "float64"}
    store = ResultStore(folder / "analysis.sqlite")
    gen = torch.Generator().manual_seed(seed)
    S = len(part.labels)
    for e in epochs:
        A = torch.randn(S, S, generator=gen, dtype=torch.float64)
        H = A @ A.T / S + 0.05 * torch.eye(S, dtype=torch.float64)
        g = torch.randn(S, generator=gen, dtype=torch.float64)
        g = g.abs() if gradient_norms else g
        arrays, summary = derived(H, g, part)
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        arrays.update((overrides or {}).get(e, {}))
        summary["model"] = model
        store.put(
            Record(f"sha-{folder.name}-{e}", settings, f"epoch_{e:04d}.pt", e, summary, arrays)
        )
    return folder


# ---------------------------------------------------------------------------- AppTest
def open_page(
    name: str, run: Path | None = None, query: dict | None = None, timeout: float = 120
) -> AppTest:
    """Run a page of the dashboard through its page list (``app.py``, or ``views/...``
    reached by ``st.navigation``), on ``run`` if given, with URL query parameters ``query``."""
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=timeout)
    if name != "app.py":
        at.switch_page(name)
    if run is not None:
        at.session_state["run_path"] = str(run)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    return at.run()


def no_errors(at) -> None:
    """No exception and no st.error on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def chart(at, key: str) -> dict:
    """The plotly figure (JSON) of the chart drawn with ``key``."""
    found = [el for el in at.get("plotly_chart") if el.proto.id.endswith(f"-{key}")]
    keys = [el.proto.id.split("-", 2)[-1] for el in at.get("plotly_chart")]
    assert len(found) == 1, f"no single chart {key!r} among {keys}"
    return json.loads(found[0].proto.spec)


def chart_keys(at) -> list[str]:
    """The keys of every chart on the page, in order."""
    return [el.proto.id.split("-", 2)[-1] for el in at.get("plotly_chart")]


def leaves(node):
    """Every element under an AppTest node, depth first."""
    for child in getattr(node, "children", {}).values():
        yield child
        yield from leaves(child)


def cards(at) -> dict[str, dict[str, list]]:
    """The home page's run cards by title: their warnings, infos, markdown and chart keys."""
    out = {}
    for block in at.main.children.values():
        items = list(leaves(block))
        heads = [i for i in items if getattr(i, "type", "") == "subheader"]
        if len(heads) != 1:
            continue
        title = heads[0].value.removeprefix("▶ ")
        assert title not in out, f"two cards titled {title!r}"
        out[title] = {
            kind: [i.value for i in items if getattr(i, "type", "") == kind]
            for kind in ("warning", "info", "markdown")
        } | {
            "charts": [
                i.proto.id.split("-", 2)[-1]
                for i in items
                if getattr(i, "type", "") == "plotly_chart"
            ]
        }
    return out


def axis_values(axis: dict | list) -> list:
    """Tick values / x data of a plotly spec, decoding typed arrays."""
    if isinstance(axis, dict) and "bdata" in axis:
        return heatmap_z({"data": [{"z": axis}]}).tolist()
    return list(axis)


class Downloads:
    """What the page's download buttons hold: ``{file name: bytes}`` of the last run."""

    def __init__(self, monkeypatch) -> None:
        from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

        self.files: dict[str, bytes] = {}
        original = MemoryMediaFileStorage.load_and_get_id
        files = self.files

        def record(storage, path_or_data, mimetype, kind, filename=None):
            if filename is not None and isinstance(path_or_data, bytes):
                files[filename] = path_or_data
            return original(storage, path_or_data, mimetype, kind, filename)

        monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", record)


# ---------------------------------------------------------------------------- files to upload
class Stranger(torch.nn.Module):
    """A model the project has never seen (conv, group norm, tanh, linear)."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Conv2d(3, 4, 3, stride=2)
        self.norm = nn.GroupNorm(2, 4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 15 * 15, 10))

    def forward(self, x):
        return self.head(torch.tanh(self.norm(self.stem(x))))


def export_stranger(path: Path) -> torch.nn.Module:
    """Write a Stranger's torch.export archive (any batch size) to ``path``; the model."""
    torch.manual_seed(0)
    model = Stranger().eval()
    program = torch.export.export(
        model, (torch.randn(2, 3, 32, 32),), dynamic_shapes={"x": {0: torch.export.Dim("batch")}}
    )
    torch.export.save(program, path)
    return model


#: The operator's model file ($HESSIAN_LENS_MODELS) of the user-model tests.
USER_MODELS = """
from torch import nn

import hessian_lens


@hessian_lens.register_model("tiny-user-net")
def tiny_user_net(num_classes: int = 10, width: int = 6):
    return nn.Sequential(
        nn.Flatten(), nn.Linear(3 * 32 * 32, width), nn.Tanh(), nn.Linear(width, num_classes)
    )
"""


def user_net() -> torch.nn.Module:
    """A "tiny-user-net" (width 6) with fixed weights, built without the registry."""
    nn = torch.nn
    torch.manual_seed(3)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 6), nn.Tanh(), nn.Linear(6, 10))


def metadata_bomb() -> bytes:
    """A ~250 KB .pt whose meta is 10^12 lists (12 levels of [x] * 10, memo-shared)."""
    import io

    from hessian_lens.registry import build_model

    meta = [0]
    for _ in range(12):
        meta = [meta] * 10
    buf = io.BytesIO()
    torch.save({"state_dict": build_model("lenet5").state_dict(), "meta": meta}, buf)
    return buf.getvalue()
