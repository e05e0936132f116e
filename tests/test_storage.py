"""One contract suite for every storage backend (parametrised, not copied)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from keelflow.errors import StorageError
from keelflow.storage import open_storage
from keelflow.storage.file import FileStorage
from keelflow.storage.memory import MemoryStorage
from s3server import new_bucket, s3_url

# Fixtures: the session's S3 server (one per session).


@pytest.fixture(params=["file", "memory", "s3"])
def store(request, tmp_path):
    if request.param == "file":
        s = open_storage(str(tmp_path / "s"))
    elif request.param == "s3":
        request.getfixturevalue("s3_server")
        s = open_storage(s3_url(new_bucket(), "root"))
    else:
        s = open_storage("memory://")
    yield s
    s.close()


def needs_append(store) -> None:
    if not store.can_append:
        pytest.skip(f"{type(store).__name__} cannot append (the journal writes segments instead)")


def test_get_missing_is_none(store):
    assert store.get("a/b") is None


def test_put_get_replace(store):
    store.put("a/b", b"one")
    assert store.get("a/b") == b"one"
    store.put("a/b", b"two", durable=False)
    assert store.get("a/b") == b"two"


def test_size_without_reading(store):
    assert store.size("a/b") is None
    store.put("a/b", b"12345")
    assert store.size("a/b") == 5
    store.put("a/b", b"")
    assert store.size("a/b") == 0
    store.put("a/c/d", b"x")
    assert store.size("a/c") is None  # a prefix holds no bytes of its own


def test_opening_writes_nothing_and_need_not_create(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(StorageError, match="does not exist"):
        open_storage(str(missing), create=False)
    assert not missing.exists()
    existing = tmp_path / "there"
    existing.mkdir()
    open_storage(str(existing), create=False).close()
    open_storage(str(existing)).close()
    assert list(existing.iterdir()) == []


def test_put_if_absent(store):
    assert store.put_if_absent("x/y", b"1") is True
    assert store.put_if_absent("x/y", b"2") is False
    assert store.get("x/y") == b"1"


def test_append_creates_and_extends(store):
    needs_append(store)
    store.append("w/j", b"ab")
    store.append("w/j", b"cd")
    assert store.get("w/j") == b"abcd"


def test_put_replaces_an_appended_key_and_appends_continue(store):
    needs_append(store)
    store.append("w/j", b"abcdef")
    store.put("w/j", b"abc")
    store.append("w/j", b"Z")
    assert store.get("w/j") == b"abcZ"


def test_children_and_delete_prefix(store):
    for key in ("wf/a/j", "wf/a/s", "wf/b/j", "other"):
        store.put(key, b".")
    assert store.children("wf") == ["a", "b"]
    assert store.children("") == ["other", "wf"]
    assert store.children("nothing") == []
    store.delete_prefix("wf/a")
    assert store.children("wf") == ["b"]
    assert store.get("wf/a/j") is None
    store.delete_prefix("never/was")


def test_lease_is_exclusive_until_released(store):
    lease = store.acquire_lease("wf/a/lease", b"me")
    assert lease is not None and lease.held
    assert store.lease_held("wf/a/lease")
    assert store.acquire_lease("wf/a/lease", b"you") is None
    lease.release()
    assert not lease.held
    assert not store.lease_held("wf/a/lease")
    again = store.acquire_lease("wf/a/lease", b"you")
    assert again is not None
    again.release()


def test_concurrent_put_if_absent_has_one_winner(store):
    wins = []

    def race(i: int) -> None:
        if store.put_if_absent("race/key", str(i).encode()):
            wins.append(i)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert store.get("race/key") == str(wins[0]).encode()


def test_memory_named_stores_are_shared_and_anonymous_ones_are_not():
    a, b = open_storage("memory://shared-test"), open_storage("memory://shared-test")
    a.put("k", b"v")
    assert b.get("k") == b"v"
    assert open_storage("memory://").get("k") is None
    assert isinstance(a, MemoryStorage) and not a.shared


def test_file_urls_and_paths(tmp_path):
    by_path = open_storage(str(tmp_path / "p"))
    by_url = open_storage(f"file://{tmp_path / 'p'}")
    assert isinstance(by_path, FileStorage) and by_path.root == by_url.root


@pytest.mark.parametrize("url", ["ftp://host/x", "gopher://x", "redis://localhost"])
def test_unknown_scheme_is_named(url):
    with pytest.raises(StorageError, match="unknown storage scheme"):
        open_storage(url)


def test_unwritable_directory_is_refused(tmp_path):
    if os.geteuid() == 0:
        # root ignores permission bits; a file in the way of the directory fails for everyone.
        blocker = tmp_path / "blocker"
        blocker.write_text("not a directory")
        with pytest.raises(StorageError, match="blocker"):
            open_storage(str(blocker / "store"))
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(StorageError, match="read-only or not writable"):
            open_storage(str(ro))


def test_file_lease_is_released_when_the_holder_is_killed(tmp_path):
    root = str(tmp_path / "s")
    store = FileStorage(root)
    code = (
        "import sys, time\n"
        "from keelflow.storage.file import FileStorage\n"
        "lease = FileStorage(sys.argv[1]).acquire_lease('wf/x/lease', b'child')\n"
        "print('held' if lease else 'refused', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code, root], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "held"
        assert store.lease_held("wf/x/lease")
        assert store.acquire_lease("wf/x/lease", b"parent") is None
    finally:
        child.kill()
        child.wait(10)
        child.stdout.close()
    lease = store.acquire_lease("wf/x/lease", b"parent")
    assert lease is not None
    lease.release()


def test_lease_survives_deletion_race(tmp_path):
    """A lease taken on a file that was deleted meanwhile must not count."""
    store = FileStorage(str(tmp_path / "s"))
    first = store.acquire_lease("wf/x/lease", b"a")
    assert first is not None
    store.delete_prefix("wf/x")
    second = store.acquire_lease("wf/x/lease", b"b")
    assert second is not None  # a new file: the old lock guards a deleted inode
    first.release()
    assert store.lease_held("wf/x/lease")
    second.release()
