"""The SQLite results store: keys, first write wins, listing."""

from __future__ import annotations

import numpy as np

from hessian_lens.store import Record, ResultStore, settings_key


def test_store_keys_and_listing(tmp_path):
    store = ResultStore(tmp_path / "s.sqlite")
    a = {"samples": 10, "partition": "canonical"}
    b = {"partition": "canonical", "samples": 10}
    assert settings_key(a) == settings_key(b)
    assert store.put(Record("sha1", a, "epoch_0002.pt", 2, {"x": 1}, {"H": np.eye(2)}))
    assert store.put(Record("sha0", a, "epoch_0001.pt", 1, {"x": 0}, {"H": np.eye(2)}))
    assert not store.put(Record("sha1", b, "epoch_0002.pt", 2, {"x": 9}, {"H": np.eye(3)}))
    assert store.get("sha1", a).summary == {"x": 1}  # first write kept
    assert store.put(Record("sha1", {"samples": 20}, "epoch_0002.pt", 2, {}, {}))
    assert [r.epoch for r in store.records(a)] == [1, 2]
    assert len(store) == 3 and store.settings()[0] == a
    assert store.get("nope", a) is None
    assert store.records(a, arrays=False)[0].arrays == {}
