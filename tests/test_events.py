"""Events and durable timers (SPEC §7): seed examples, exactly-once delivery across SIGKILL,
timers that keep their deadline across a crash, and external events. (When a sleep's deadline
is fixed, Ray Workflows 1.x's rule, is tested in test_ray1_semantics.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import eventsteps
import keelflow as workflow
from conftest import TESTS

ENV_PATH = os.pathsep.join([str(TESTS.parent / "src"), str(TESTS)])


# -- seeds ----------------------------------------------------------------------------------------
def test_book_example_8_16_timers_gate_a_step(kf):
    # Example 8-16 with the deadlines shortened from 60 s and 30 s.
    start = time.time()
    event1_step = workflow.wait_for_event(workflow.event_listener.TimerListener, time.time() + 1.0)
    event2_step = workflow.wait_for_event(workflow.event_listener.TimerListener, time.time() + 0.5)

    @workflow.step
    def gather(*args):
        return args

    assert gather.step(event1_step, event2_step).run() == (None, None)
    assert time.time() - start >= 1.0  # the step waited for both events


def test_book_example_8_17_custom_listener(kf):
    class EventListener(workflow.EventListener):
        def __init__(self):
            """Optional constructor. Only the constructor with no arguments will be called."""
            self.built = True

        async def poll_for_event(self, *args, **kwargs):
            """Should return only when the event is received."""
            return {"args": list(args), "kwargs": kwargs, "built": self.built}

        async def event_checkpointed(self, event):
            """Optional. Called after an event has been checkpointed."""

    (out,) = eventsteps.gather.step(workflow.wait_for_event(EventListener, 1, 2, k="v")).run()
    assert out == {"args": [1, 2], "kwargs": {"k": "v"}, "built": True}
    assert workflow.EventListener is workflow.event_listener.EventListener


def test_sleep_is_a_step_and_its_output_feeds_others(kf):
    start = time.time()
    waited = eventsteps.after_sleep.step(workflow.sleep(0.3), start).run(workflow_id="napper")
    assert waited >= 0.3
    assert (
        "keelflow.events.TimerListener" in workflow.get_metadata("napper", name="keelflow.events.TimerListener")["name"]
    )


def test_many_sleepers_share_one_event_thread(storage):
    before = set(threading.enumerate())  # earlier tests may leave pools of their own
    workflow.init(storage, executor="thread")
    refs = [workflow.sleep(0.5).run_async(workflow_id=f"sleeper-{i}") for i in range(400)]
    time.sleep(0.2)
    names = [t.name for t in threading.enumerate() if t not in before]
    assert [workflow.get(r) for r in refs] == [None] * 400
    # 400 sleepers are 400 coroutines on one event loop; the other threads are fixed pools
    # (the scheduler, up to 8 journal flushers, one status index writer).
    fixed = ("keelflow-scheduler", "keelflow-events", "keelflow-flush", "keelflow-index")
    assert all(n.startswith(fixed) for n in names), names
    assert len(names) <= 11, names


# -- external events ------------------------------------------------------------------------------
def test_an_event_sent_before_the_wait_is_received(kf):
    workflow.send_event("early", "go", {"n": 1})  # the workflow does not exist yet
    assert eventsteps.gather.step(workflow.receive_event("go")).run(workflow_id="early") == ({"n": 1},)
    # Delivered once: the stored event is gone after it was checkpointed.
    assert kf.list_all() and not _stored_events(kf, "early")


def test_events_with_one_key_arrive_in_order_once_each(kf):
    for i in range(3):
        workflow.send_event("orders", "item", i)
    node = eventsteps.gather.step(workflow.receive_event("item"), workflow.receive_event("item"))
    first, second = node.run(workflow_id="orders")
    assert sorted([first, second]) == [0, 1]
    ref = eventsteps.unwrap.step(workflow.receive_event("item")).run_async(workflow_id="orders-2")
    workflow.send_event("orders-2", "item", "late")  # sent while it waits
    assert workflow.get(ref, timeout=30) == "late"


def test_bad_event_input_is_refused(kf):
    with pytest.raises(TypeError, match="EventListener"):
        workflow.wait_for_event(object)
    with pytest.raises(ValueError, match="seconds"):
        workflow.sleep(-1)
    with pytest.raises(workflow.InvalidIdError):
        workflow.send_event("a/b", "k", 1)
    with pytest.raises(workflow.InvalidIdError):
        workflow.receive_event("")
    with pytest.raises(workflow.SerializationError, match="payload"):
        workflow.send_event("w", "k", threading.Lock())
    with pytest.raises(TypeError, match="poll_for_event"):
        workflow.wait_for_event(workflow.event_listener.TimerListener, 1, 2)


def _stored_events(kf, workflow_id: str) -> list[str]:
    from keelflow import session

    store = session.runtime().storage
    found = []
    for key in store.children(f"events/{workflow_id}"):
        found.extend(store.children(f"events/{workflow_id}/{key}"))
    return found


# -- across SIGKILL -------------------------------------------------------------------------------
def _start(code: str, storage: str, log: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=ENV_PATH, KF_EVENT_LOG=log)
    full = "import keelflow as workflow, eventsteps, time, sys\n" + textwrap.dedent(code)
    return subprocess.Popen([sys.executable, "-c", full, storage], env=env)


def _wait_for(path: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, "the driver ended early"
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def _resume(storage: str, log: str, wid: str) -> object:
    os.environ["KF_EVENT_LOG"] = log
    workflow.init(storage, executor="thread")
    return workflow.resume(wid)


@pytest.fixture
def log(tmp_path, monkeypatch):
    path = str(tmp_path / "events.log")
    monkeypatch.setenv("KF_EVENT_LOG", path)
    return path


def test_killed_while_polling_polls_again_and_acknowledges_once(storage, tmp_path, log):
    marker = str(tmp_path / "poll-blocked")
    proc = _start(
        f"""
        workflow.init(sys.argv[1], executor="thread")
        node = eventsteps.unwrap.step(workflow.wait_for_event(eventsteps.Logged, 7, block_poll={marker!r}))
        node.run(workflow_id="w")
        """,
        storage,
        log,
    )
    _wait_for(marker, proc)
    _kill(proc)
    assert eventsteps.entries() == ["poll:7"]
    assert _resume(storage, log, "w") == 7
    workflow.shutdown()
    # Not checkpointed before the kill, so polled again; acknowledged once, after the checkpoint.
    assert eventsteps.entries() == ["poll:7", "poll:7", "ack-start:7", "ack-done:7"]


def test_killed_after_the_checkpoint_is_not_polled_again(storage, tmp_path, log):
    marker = str(tmp_path / "ack-blocked")
    proc = _start(
        f"""
        workflow.init(sys.argv[1], executor="thread")
        node = eventsteps.unwrap.step(workflow.wait_for_event(eventsteps.Logged, 8, block_ack={marker!r}))
        node.run(workflow_id="w")
        """,
        storage,
        log,
    )
    _wait_for(marker, proc)  # the event is checkpointed: event_checkpointed has started
    _kill(proc)
    assert eventsteps.entries() == ["poll:8", "ack-start:8"]
    assert _resume(storage, log, "w") == 8
    workflow.shutdown()
    # The checkpointed event is not polled again; its acknowledgement, cut short, is redone.
    assert eventsteps.entries() == ["poll:8", "ack-start:8", "ack-start:8", "ack-done:8"]
    workflow.init(storage, executor="thread")
    assert workflow.resume("w") == 8  # finished: nothing runs again
    workflow.shutdown()
    assert eventsteps.entries().count("ack-done:8") == 1


def test_a_sleep_resumed_after_a_crash_sleeps_only_the_time_left(storage, tmp_path, log):
    started = str(tmp_path / "started")
    # The deadline is fixed when the sleep starts and checkpointed (as the output of the
    # "keelflow.sleep" step) before the wait: the driver announces it once it is durable.
    proc = _start(
        f"""
        workflow.init(sys.argv[1], executor="thread")
        ref = workflow.sleep(6).run_async(workflow_id="nap")
        deadline = workflow.get_output("nap", name="keelflow.sleep")
        open({started!r}, "w").write(repr(deadline - 6))
        ref.result()
        """,
        storage,
        log,
    )
    _wait_for(started, proc)
    time.sleep(2)
    _kill(proc)
    with open(started) as f:
        first_start = float(f.read())
    _resume(storage, log, "nap")
    finished = time.time()
    # About 6 s after the sleep first started (its deadline was stored), not 2 + 6 = 8.
    assert 5.9 <= finished - first_start < 7.5, finished - first_start


def test_a_deadline_that_passed_while_nothing_ran_fires_at_once(storage, tmp_path, log):
    started = str(tmp_path / "started")
    proc = _start(
        f"""
        workflow.init(sys.argv[1], executor="thread")
        ref = workflow.sleep(2).run_async(workflow_id="nap")
        workflow.get_output("nap", name="keelflow.sleep")  # the deadline is durable
        open({started!r}, "w").write("x")
        ref.result()
        """,
        storage,
        log,
    )
    _wait_for(started, proc)
    _kill(proc)
    time.sleep(2.2)
    begin = time.time()
    _resume(storage, log, "nap")
    assert time.time() - begin < 1.5


def test_an_external_event_reaches_a_workflow_resumed_after_a_crash(storage, tmp_path, log):
    waiting = str(tmp_path / "waiting")
    proc = _start(
        f"""
        workflow.init(sys.argv[1], executor="thread")
        ref = eventsteps.gather.step(workflow.receive_event("approval")).run_async(workflow_id="order")
        open({waiting!r}, "w").write("x")
        ref.result()
        """,
        storage,
        log,
    )
    _wait_for(waiting, proc)
    _kill(proc)
    workflow.init(storage, executor="thread")
    workflow.send_event("order", "approval", {"by": "ada"})
    assert workflow.resume("order") == ({"by": "ada"},)
    assert not _stored_events(workflow, "order")
