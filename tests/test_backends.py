"""The engine's contract, run against every kind of storage backend (parametrised, not copied).

Besides the file, memory and S3 backends, two variants that cannot append stand in for object
stores without a server: the engine then writes one journal segment per append with
put-if-absent, as it does on S3.
"""

from __future__ import annotations

import threading

import pytest

import keelflow as workflow
from keelflow.engine.journal import Journal
from keelflow.storage import open_storage
from keelflow.storage.file import FileStorage
from keelflow.storage.memory import MemoryStorage
from s3server import new_bucket, s3_url

# Fixtures: the session's S3 server (one per session).


class SegmentedFile(FileStorage):
    can_append = False


class SegmentedMemory(MemoryStorage):
    can_append = False


def _make(kind: str, tmp_path, request):
    if kind == "file":
        return FileStorage(tmp_path / "s")
    if kind == "memory":
        return MemoryStorage()
    if kind == "segmented-file":
        return SegmentedFile(tmp_path / "s")
    if kind == "s3":
        request.getfixturevalue("s3_server")
        return open_storage(s3_url(new_bucket(), "kf"))
    return SegmentedMemory()


@pytest.fixture(params=["file", "memory", "segmented-file", "segmented-memory", "s3"])
def backend(request, tmp_path):
    store = _make(request.param, tmp_path, request)
    workflow.init(store, executor="thread")
    yield store
    workflow.shutdown()


@workflow.step
def inc(x):
    return x + 1


@workflow.step
def add(a, b):
    return a + b


@workflow.step
def fib(n):
    if n <= 1:
        return n
    return add.step(fib.step(n - 1), fib.step(n - 2))


@workflow.step
def words():
    return [workflow.put("hello"), workflow.put("world")]


@workflow.step
def concat(refs):
    return " ".join(workflow.get(r) for r in refs)


FLAGS: dict[str, bool] = {}


@workflow.step(max_retries=0)
def gate(x):
    if not FLAGS.get("open"):
        raise RuntimeError("gate closed")
    return x


@workflow.step
def wait_for(event_name):
    EVENTS[event_name].wait(30)
    return "released"


EVENTS: dict[str, threading.Event] = {}


def test_chain_fanout_and_dynamic(backend):
    x = inc.step(0)
    for _ in range(29):
        x = inc.step(x)
    assert x.run(workflow_id="chain") == 30
    assert add.step(inc.step(1), add.step(2, 3)).run(workflow_id="dag") == 7
    assert fib.step(8).run(workflow_id="fib") == 21
    assert concat.step(words.step()).run(workflow_id="objects") == "hello world"
    statuses = dict(workflow.list_all())
    assert set(statuses) == {"chain", "dag", "fib", "objects"}
    assert set(statuses.values()) == {workflow.WorkflowStatus.SUCCESSFUL}
    assert workflow.get_output("fib") == 21


def test_outputs_metadata_and_rerun(backend):
    assert inc.options(name="first").step(1).run(workflow_id="w", metadata={"team": "a"}) == 2
    assert workflow.get_output("w", name="first") == 2
    meta = workflow.get_metadata("w")
    assert meta["status"] == "SUCCESSFUL" and meta["user_metadata"] == {"team": "a"}
    assert workflow.get_metadata("w", name="first")["stats"]["end_time"] >= meta["stats"]["start_time"]
    assert inc.options(name="first").step(1).run(workflow_id="w") == 2  # stored, not re-run


def test_failure_then_resume_appends_after_what_is_stored(backend):
    FLAGS["open"] = False
    with pytest.raises(workflow.WorkflowExecutionError):
        gate.step(inc.step(41)).run(workflow_id="g")
    assert workflow.get_status("g") == workflow.WorkflowStatus.FAILED
    FLAGS["open"] = True
    assert workflow.resume("g") == 42
    assert workflow.get_status("g") == workflow.WorkflowStatus.SUCCESSFUL
    records = Journal(backend, "g").read()
    kinds = [r[0] for r in records]
    assert kinds[0] == "start" and "fail" in kinds and "resume" in kinds and kinds[-1] == "done"


def test_cancel_and_delete(backend):
    EVENTS["c"] = threading.Event()
    ref = wait_for.step("c").run_async(workflow_id="c")
    workflow.cancel("c")
    assert workflow.get_status("c") == workflow.WorkflowStatus.CANCELED
    with pytest.raises(workflow.WorkflowCancelledError):
        workflow.get(ref)
    EVENTS["c"].set()
    workflow.delete("c")
    with pytest.raises(workflow.WorkflowNotFoundError):
        workflow.get_status("c")


def test_segments_fence_off_a_second_writer(tmp_path):
    store = SegmentedMemory()
    workflow.init(store, executor="thread")
    assert inc.step(1).run(workflow_id="w") == 2
    mine = Journal(store, "w")
    mine.read()
    other = Journal(store, "w")
    other.read()
    other.append([("cancel", 0.0)])
    with pytest.raises(workflow.StorageError, match="two runners"):
        mine.append([("cancel", 0.0)])
