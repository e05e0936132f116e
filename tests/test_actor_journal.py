"""The actor journal: generations (compaction), damage, storage without append, contention."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import keelflow as workflow
from conftest import TESTS
from keelflow.engine import actor as actor_engine
from keelflow.serialization import frame
from test_backends import SegmentedFile, SegmentedMemory


@workflow.virtual_actor
class Log:
    def __init__(self):
        self.items = []

    def add(self, x):
        self.items.append(x)
        return len(self.items)

    def fail(self):
        self.items.append("never stored")
        raise ValueError("refused")

    @workflow.virtual_actor.readonly
    def read(self):
        return self.items


def _generations(storage: str, actor_id: str) -> list[str]:
    gen_dir = os.path.join(storage, "actors", actor_id, "gen")
    return sorted(os.listdir(gen_dir)) if os.path.isdir(gen_dir) else []


def test_generations_bound_the_journal_and_keep_every_call(storage, monkeypatch):
    monkeypatch.setattr(actor_engine, "ROTATE_BYTES", 4000)
    workflow.init(storage, executor="thread")
    log = Log.get_or_create("log")
    for i in range(150):
        assert log.add.run(i) == i + 1
    refs = [log.add.run_async(i) for i in range(150, 300)]
    assert workflow.get(refs[-1]) == 300
    with pytest.raises(workflow.WorkflowExecutionError):
        log.fail.run()
    assert log.read.run() == list(range(300))
    gens = _generations(storage, "log")
    assert len(gens) == 2, gens  # the newest and the one before it; older ones dropped
    assert not os.path.exists(os.path.join(storage, "actors", "log", "journal"))
    meta = workflow.get_actor_metadata("log")
    assert meta["stats"]["calls"] == 301
    assert meta["stats"]["failed"] == 1
    assert meta["state"] == {"items": list(range(300))}
    calls = workflow.list_actor_calls("log")
    assert calls and calls[-1]["seq"] == 300 and calls[-1]["status"] == "FAILED"
    assert [c["seq"] for c in calls] == sorted(c["seq"] for c in calls)
    workflow.shutdown()

    # A fresh process starts from the newest generation's snapshot and goes on.
    code = textwrap.dedent(
        f"""
        import keelflow as workflow
        from keelflow.engine import actor
        actor.ROTATE_BYTES = 4000
        workflow.init({storage!r}, executor="thread")
        log = workflow.get_actor("log")
        print(log.add.run("next"), len(log.read.run()))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=TESTS)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["301", "301"]


_CONTENDER = textwrap.dedent(
    """
    import sys
    import keelflow as workflow
    from keelflow.engine import actor
    actor.ROTATE_BYTES = 3000
    from actorjournal import Counter
    workflow.init(sys.argv[1], executor="thread")
    c = Counter.get_or_create("shared")
    role, n = sys.argv[2], int(sys.argv[3])
    if role == "writer":
        for _ in range(n):
            c.incr.run(1)
    else:
        seen = []
        while True:
            v = c.value.run()
            seen.append(v)
            if v >= n:
                break
        print(int(all(a <= b for a, b in zip(seen, seen[1:]))), len(seen))
    """
)


def test_two_writers_and_a_reader_across_generations(storage):
    """Each process sees a consistent, growing counter while the owner changes hands and the
    journal changes generation many times; no increment is lost."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent / "src"), str(TESTS)]))
    workflow.init(storage, executor="thread")
    from actorjournal import Counter

    Counter.get_or_create("shared")
    workflow.shutdown()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONTENDER, storage, role, n],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for role, n in (("writer", "150"), ("writer", "150"), ("reader", "300"))
    ]
    try:
        outs = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:  # never leave a spinning reader behind a failed run
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    monotonic, reads = outs[2][0].split()
    assert monotonic == "1" and int(reads) >= 1
    workflow.init(storage, executor="thread")
    assert workflow.get_actor("shared").value.run() == 300
    assert len(_generations(storage, "shared")) == 2


def test_torn_tail_is_cut_off_by_the_next_owner(storage):
    workflow.init(storage, executor="thread")
    log = Log.get_or_create("torn")
    for i in range(3):
        log.add.run(i)
    workflow.shutdown()
    path = os.path.join(storage, "actors", "torn", "journal")
    with open(path, "ab") as f:
        f.write(frame(b"x" * 64)[:20])  # a record cut off mid-write (its header promises more)
    workflow.init(storage, executor="thread")
    log = workflow.get_actor("torn")
    assert log.add.run(3) == 4
    assert log.read.run() == [0, 1, 2, 3]
    workflow.shutdown()
    workflow.init(storage, executor="thread")
    assert workflow.get_actor("torn").read.run() == [0, 1, 2, 3]


def test_damage_before_the_tail_is_named(storage):
    workflow.init(storage, executor="thread")
    log = Log.get_or_create("damaged")
    for i in range(5):
        log.add.run(i)
    workflow.shutdown()
    path = os.path.join(storage, "actors", "damaged", "journal")
    with open(path, "rb") as f:
        data = bytearray(f.read())
    data[len(data) // 3] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(data))
    workflow.init(storage, executor="thread")
    with pytest.raises(workflow.CorruptCheckpointError) as info:
        workflow.get_actor("damaged").add.run(5)
    assert info.value.path == path
    # Other actors in the same storage are unaffected.
    assert Log.get_or_create("healthy").add.run("ok") == 1


@pytest.mark.parametrize("backend", [SegmentedFile, SegmentedMemory], ids=["segmented-file", "segmented-memory"])
def test_storage_without_append(tmp_path, backend, monkeypatch):
    monkeypatch.setattr(actor_engine, "ROTATE_BYTES", 2000)
    store = backend(str(tmp_path / "s")) if backend is SegmentedFile else backend("actors-segmented")
    workflow.init(store, executor="thread")
    log = Log.get_or_create("seg")
    refs = [log.add.run_async(i) for i in range(60)]
    assert workflow.get(refs[-1]) == 60
    with pytest.raises(workflow.WorkflowExecutionError):
        log.fail.run()
    assert log.read.run() == list(range(60))
    assert workflow.get_actor_metadata("seg")["stats"]["calls"] == 61


def test_metadata_is_plain_json(storage):
    workflow.init(storage, executor="thread")
    Log.get_or_create("plain").add.run({"k": [1, 2]})
    json.dumps(workflow.get_actor_metadata("plain"))
    json.dumps(workflow.list_actor_calls("plain"))
