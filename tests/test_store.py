"""The SQLite results store: keys, first write wins, listing."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from hessian_lens.store import Record, ResultStore, StoreError, settings_key


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


def foreign_sqlite(path):
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("CREATE TABLE users (name TEXT)")
    db.execute("INSERT INTO users VALUES ('alice')")
    db.commit()
    db.close()
    return path


def test_a_foreign_sqlite_file_is_refused_and_left_untouched(tmp_path):
    import sqlite3

    path = foreign_sqlite(tmp_path / "analysis.sqlite")
    before = path.read_bytes()
    for opener in (ResultStore.reader, ResultStore):
        with pytest.raises(StoreError, match="not a Hessian Lens store"):
            opener(path)
    assert path.read_bytes() == before
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master")]
    assert tables == ["users"]
    (tmp_path / "garbage.sqlite").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(StoreError):
        ResultStore.reader(tmp_path / "garbage.sqlite")


def test_reader_never_writes(tmp_path):
    path = tmp_path / "analysis.sqlite"
    ResultStore(path).put(
        Record("s", {"a": 1}, "epoch_0001.pt", 1, {"labels": ["x"]}, {"H": np.eye(1)})
    )
    assert {p.name for p in tmp_path.iterdir()} == {"analysis.sqlite"}  # no journal left
    before = path.read_bytes()
    reader = ResultStore.reader(path)
    assert reader.records()[0].arrays["H"].shape == (1, 1)
    with pytest.raises(StoreError, match="read-only"):
        reader.put(Record("t", {"a": 1}, "x.pt", 2, {}, {}))
    assert path.read_bytes() == before
    assert {p.name for p in tmp_path.iterdir()} == {"analysis.sqlite"}  # no -wal, no -shm


def test_a_wal_store_of_an_earlier_version_is_switched_back_by_a_writer(tmp_path):
    path = tmp_path / "analysis.sqlite"
    ResultStore(path).put(Record("s", {"a": 1}, "e1.pt", 1, {"labels": ["x"]}, {"H": np.eye(1)}))
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"
    ResultStore(path).put(Record("t", {"a": 1}, "e2.pt", 2, {"labels": ["x"]}, {"H": np.eye(1)}))
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert [r.epoch for r in ResultStore.reader(path).records(arrays=False)] == [1, 2]


@pytest.fixture
def readonly_mount(tmp_path):
    """A read-only bind mount of a folder (root can mount here and in CI)."""
    import subprocess

    src, dst = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    dst.mkdir()
    ok = subprocess.run(["mount", "--bind", str(src), str(dst)], capture_output=True).returncode
    if ok != 0:
        pytest.skip("cannot bind-mount here (needs root, as in CI)")
    subprocess.run(["mount", "-o", "remount,bind,ro", str(dst)], check=True)
    yield src, dst
    subprocess.run(["umount", str(dst)], check=True)


def test_reading_a_wal_store_on_a_read_only_mount(readonly_mount):
    src, dst = readonly_mount
    store = ResultStore(src / "analysis.sqlite")
    store.put(Record("s", {"a": 1}, "epoch_0001.pt", 1, {"labels": ["x", "y"]}, {"H": np.eye(2)}))
    with sqlite3.connect(src / "analysis.sqlite") as db:  # as an earlier version left it
        db.execute("PRAGMA journal_mode = WAL")
    for extra in ("-wal", "-shm"):
        (src / f"analysis.sqlite{extra}").unlink(missing_ok=True)
    with pytest.raises(OSError):
        (dst / "probe").write_text("x")  # really read-only
    reader = ResultStore.reader(dst / "analysis.sqlite")
    assert [r.epoch for r in reader.records()] == [1] and reader.settings() == [{"a": 1}]


def test_blobs_are_checked_before_inflating(tmp_path):
    import io
    import sqlite3

    path = tmp_path / "analysis.sqlite"
    store = ResultStore(path)
    store.put(Record("s", {"a": 1}, "epoch_0001.pt", 1, {"labels": ["x", "y"]}, {"H": np.eye(2)}))
    buf = io.BytesIO()
    np.savez_compressed(buf, H=np.zeros(10**7))  # 80 MB inflated, ~80 kB stored
    with sqlite3.connect(path) as db:
        db.execute("UPDATE results SET arrays=?", (buf.getvalue(),))
    with pytest.raises(StoreError, match="larger than S = 2 groups can need"):
        ResultStore.reader(path).records()
    assert ResultStore.reader(path).records(arrays=False)[0].epoch == 1
    with sqlite3.connect(path) as db:
        db.execute("UPDATE results SET summary=?", ("[" * 50_000 + "]" * 50_000,))
    with pytest.raises(StoreError, match="nested"):
        ResultStore.reader(path).records(arrays=False)


def test_huge_epochs_are_stored_as_unknown(tmp_path):
    store = ResultStore(tmp_path / "s.sqlite")
    assert store.put(Record("s", {"a": 1}, "epoch.pt", 10**30, {}, {}))
    assert store.records()[0].epoch is None


def test_claims_lease_expiry_and_release(tmp_path):
    store = ResultStore(tmp_path / "s.sqlite")
    key = {"samples": 1}
    assert store.claim("c1", key, "A", ttl=60) == "taken"
    assert store.claim("c1", key, "B", ttl=60) == "busy"
    assert store.claim("c1", key, "A", ttl=60) == "taken"  # the owner renews
    store.renew("c1", key, "A", ttl=-1)  # expired lease (a crashed owner)
    assert store.claim("c1", key, "B", ttl=60) == "taken"
    store.put(Record("c1", key, "epoch_0001.pt", 1, {}, {}), owner="B")
    assert store.claims() == []
    assert store.claim("c1", key, "C", ttl=60) == "done"
    assert store.claim("c2", key, "C", ttl=60) == "taken"
    store.release("c2", key, "C")
    assert store.claim("c2", key, "D", ttl=60) == "taken"
