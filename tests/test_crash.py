"""Crash recovery with real processes and SIGKILL (SPEC §2 dynamic workflows, §4, §5).

A driver subprocess runs a workflow of steps from ``crashsteps``; a step blocks at a chosen
crash point, the test SIGKILLs the driver (its worker processes must go too), and a fresh
process resumes. Every step execution is logged, so the tests check exactly which steps ran
again: a step whose outcome was checkpointed before the kill never does; the step that was
running may run twice (at-least-once), and every step runs exactly once after the resume.
"""

from __future__ import annotations

import os
import time

import pytest

import crashsteps as cs
import keelflow as workflow
from keelflow.serialization import frame, scan_frames

WID = "wf"


def chain(n: int = 5) -> dict:
    ids = [chr(ord("a") + i) for i in range(n)]
    nodes = [{"id": ids[0], "kind": "combine", "inputs": []}]
    nodes += [{"id": ids[i], "kind": "combine", "inputs": [ids[i - 1]]} for i in range(1, n)]
    return {"nodes": nodes, "root": ids[-1]}


def spec(*nodes: tuple, root: str | None = None) -> dict:
    """``spec(("a", "combine", []), ("x", "expand", ["a"], {"k": 3}), …)``"""
    out = []
    for n in nodes:
        entry = {"id": n[0], "kind": n[1], "inputs": list(n[2])}
        if len(n) > 3:
            entry.update(n[3])
        out.append(entry)
    return {"nodes": out, "root": root or out[-1]["id"]}


@pytest.fixture
def h(tmp_path, executor):
    harness = cs.Harness(str(tmp_path / "crash"), executor)
    try:
        yield harness
    finally:
        harness.cleanup()


@pytest.fixture
def h_thread(tmp_path):
    harness = cs.Harness(str(tmp_path / "crash"), "thread")
    try:
        yield harness
    finally:
        harness.cleanup()


def crash_at(h: cs.Harness, s: dict, key: str, wid: str = WID, before_kill=None) -> int:
    """Run ``s`` in a driver until crash point ``key``, SIGKILL it; the log position at the kill."""
    h.block(key)
    proc = h.start("run", wid, s)
    blocked = h.wait_reached(key, proc)
    if before_kill is not None:
        before_kill()
    kids = cs.descendants(proc.pid)
    if h.executor == "local":
        assert blocked != proc.pid and blocked in kids, "local executor: steps run in worker processes"
    elif h.executor == "ray":
        assert blocked != proc.pid and blocked not in kids, "ray executor: steps run in Ray's workers"
    else:
        assert blocked == proc.pid, "thread executor: steps run in the driver process"
    killed = h.crash(proc)  # also waits until every worker process is gone
    assert set(kids) <= set(killed) and not any(cs.alive(p) for p in killed)
    if h.executor == "ray":
        # Ray ends a dead driver's tasks itself: the step must not go on after the release.
        cs.wait_gone([blocked], 60.0)
    h.release(key)
    return len(h.executions())


def resume_and_check(h: cs.Harness, s: dict, cut: int, wid: str = WID) -> tuple[dict, dict, dict, set]:
    """Resume in a fresh process; check status, output and the generic exactly-once rules."""
    r = h.run("resume", wid, s)
    assert r.get("status") == "RESUMABLE", r
    assert "error" not in r, r
    assert r["ok"] == cs.evaluate(s)
    assert r["final_status"] == "SUCCESSFUL"
    before, after = cs.split_counts(h.executions(), cut)
    done = cs.checkpointed(s, r["probe"])
    values = cs.step_values(s)
    for label, p in r["probe"].items():
        if p["state"] == "done":
            assert p["value"] == values[label], f"checkpointed output of {label} is wrong"
    flaky = {n["id"] for n in s["nodes"] if n["kind"] == "flaky"}
    for label in cs.labels(s):
        if label not in flaky:
            assert before.get(label, 0) <= 1, f"{label} ran {before[label]} times before the kill"
        if label in done:
            assert after.get(label, 0) == 0, f"{label} was checkpointed before the kill but ran again after resume"
        else:
            assert after.get(label, 0) == 1, f"{label} ran {after.get(label, 0)} times after resume (want 1)"
    return r, before, after, done


# -- crash points -------------------------------------------------------------------------------
def test_kill_mid_step_in_chain(h):
    s = chain()
    cut = crash_at(h, s, "c")
    _, before, after, done = resume_and_check(h, s, cut)
    assert done == {"a", "b"}
    assert before == {"a": 1, "b": 1, "c": 1}
    assert after == {"c": 1, "d": 1, "e": 1}  # c was running at the kill: at-least-once


def test_kill_between_steps(h):
    """Killed right after c's output was checkpointed (d is dispatched only then): c never reruns."""
    s = chain()
    cut = crash_at(h, s, "d:start")
    r, before, after, done = resume_and_check(h, s, cut)
    assert done == {"a", "b", "c"}
    assert r["probe"]["c"]["value"] == cs.step_values(s)["c"]
    assert before == {"a": 1, "b": 1, "c": 1}
    assert after == {"d": 1, "e": 1}


def test_kill_during_dynamic_continuation(h):
    """x returns a sub-DAG x.0 -> x.1 -> x.2; killed while x.1 runs: x and x.0 never rerun."""
    s = spec(("a", "combine", []), ("x", "expand", ["a"], {"k": 3}), ("e", "combine", ["x"]))
    cut = crash_at(h, s, "x.1")
    r, before, after, done = resume_and_check(h, s, cut)
    assert {"a", "x", "x.0"} <= done
    assert r["probe"]["x"]["state"] == "pending"  # continued, not finished
    assert before == {"a": 1, "x": 1, "x.0": 1, "x.1": 1}
    assert after == {"x.1": 1, "x.2": 1, "e": 1}


def test_kill_inside_dynamic_parent(h):
    """Killed before the parent returned its sub-DAG: nothing was checkpointed for it, so it
    runs again (at-least-once) and its sub-steps run once."""
    s = spec(("a", "combine", []), ("x", "expand", ["a"], {"k": 2}), ("e", "combine", ["x"]))
    cut = crash_at(h, s, "x")
    _, before, after, done = resume_and_check(h, s, cut)
    assert done == {"a"}
    assert before == {"a": 1, "x": 1}
    assert after == {"x": 1, "x.0": 1, "x.1": 1, "e": 1}


def test_kill_during_recursive_continuation(h):
    """cd@5 -> cd@4 -> … -> cd@0, each continued by the next; killed in cd@2."""
    s = spec(("a", "combine", []), ("cd", "countdown", ["a"], {"n": 5}), ("z", "combine", ["cd"]))
    cut = crash_at(h, s, "cd@2")
    _, before, after, done = resume_and_check(h, s, cut)
    assert {"a", "cd@5", "cd@4", "cd@3"} <= done
    assert before == {"a": 1, "cd@5": 1, "cd@4": 1, "cd@3": 1, "cd@2": 1}
    assert after == {"cd@2": 1, "cd@1": 1, "cd@0": 1, "z": 1}


def test_kill_with_completed_fanout_branches(h):
    """b0..b5 fan out from a; all but b3 are checkpointed when the driver is killed in b3."""
    branches = [f"b{i}" for i in range(6)]
    s = spec(("a", "combine", []), *[(b, "combine", ["a"]) for b in branches], ("g", "combine", branches))
    others = [b for b in branches if b != "b3"]

    def wait_for_others() -> None:
        # Another process reads the running workflow's checkpoints (get_output waits for them).
        workflow.init(h.storage, executor="thread")
        for b in others:
            assert workflow.get_output(WID, name=b, timeout=60) == cs.step_values(s)[b]

    cut = crash_at(h, s, "b3", before_kill=wait_for_others)
    _, before, after, done = resume_and_check(h, s, cut)
    assert {"a", *others} <= done
    assert before == {"a": 1, **dict.fromkeys(branches, 1)}
    assert after == {"b3": 1, "g": 1}


def test_kill_during_retry(h):
    """f fails twice; the driver is killed during its second retry (attempt 3)."""
    s = spec(("a", "combine", []), ("f", "flaky", ["a"], {"fails": 2}), ("c", "combine", ["f"]))
    cut = crash_at(h, s, "f#3")
    _, before, after, done = resume_and_check(h, s, cut)
    assert done == {"a"}
    assert before == {"a": 1, "f": 3}
    assert after == {"f": 1, "c": 1}


# -- a live owner -------------------------------------------------------------------------------
def test_second_process_refused_while_owner_alive(h):
    s = chain()
    h.block("c")
    first = h.start("run", WID, s)
    h.wait_reached("c", first)

    workflow.init(h.storage, executor=h.executor)
    assert workflow.get_status(WID) == workflow.WorkflowStatus.RUNNING
    with pytest.raises(workflow.WorkflowRunningError):
        workflow.resume(WID)
    assert (WID, workflow.WorkflowStatus.RUNNING) in workflow.list_all()
    # Refused in yet another fresh process too.
    r = h.run("resume", WID, s)
    assert r["status"] == "RUNNING" and r.get("error") == "WorkflowRunningError", r

    # run(workflow_id=same) from a second process waits for the owner and returns its output.
    second = h.start("waitrun", WID, s)
    marker = os.path.join(h.ctrl, f"running-{WID}")
    deadline = time.monotonic() + 60
    while not os.path.exists(marker):  # it is about to call run(); the owner is still blocked
        assert second.poll() is None and time.monotonic() < deadline, h.output_of(second)
        time.sleep(0.01)
    h.release("c")
    r1 = h.finish(first)
    r2 = h.finish(second)
    expected = cs.evaluate(s)
    assert r1.get("ok") == expected, r1
    assert r2.get("ok") == expected, r2
    assert r2["status"] == "RUNNING" and r2["final_status"] == "SUCCESSFUL", r2
    assert h.counts() == dict.fromkeys("abcde", 1), "the waiting process must not run a second copy"
    assert workflow.get_status(WID) == workflow.WorkflowStatus.SUCCESSFUL
    assert workflow.get_output(WID) == expected


def test_owner_killed_then_status_resumable_and_run_resumes(h):
    """After the kill: RESUMABLE; run(same id) resumes it, as Ray did: no second copy, and
    the step checkpointed before the kill does not run again."""
    s = chain(3)
    crash_at(h, s, "b")
    workflow.init(h.storage, executor=h.executor)
    assert workflow.get_status(WID) == workflow.WorkflowStatus.RESUMABLE
    assert (WID, workflow.WorkflowStatus.RESUMABLE) in workflow.list_all(workflow.WorkflowStatus.RESUMABLE)
    r = h.run("run", WID, s)
    assert r.get("ok") == cs.evaluate(s), r
    assert h.counts() == {"a": 1, "b": 2, "c": 1}
    assert workflow.get_status(WID) == workflow.WorkflowStatus.SUCCESSFUL
    assert workflow.resume(WID) == cs.evaluate(s)  # finished: its output, nothing runs
    assert h.counts() == {"a": 1, "b": 2, "c": 1}


# -- damaged journals ---------------------------------------------------------------------------
def journal_path(h: cs.Harness, wid: str = WID) -> str:
    return os.path.join(h.storage, "workflows", wid, "journal")


def frames(data: bytes) -> list[tuple[int, int]]:
    """``[(offset, payload length), …]`` of the journal's frames."""
    scan = scan_frames(data)
    assert scan.clean, "the journal after a kill holds whole frames only"
    return [(offset, len(payload)) for offset, payload in zip(scan.offsets, scan.payloads, strict=True)]


HEADER = 12  # bytes before a frame's payload


@pytest.mark.parametrize(
    "tail",
    [frame(b"x" * 1000)[: HEADER + 10], frame(b"x" * 1000)[:7]],
    ids=["frame-announcing-1000-bytes", "partial-header"],
)
def test_torn_journal_tail_is_ignored(h_thread, tail):
    h = h_thread
    s = chain()
    cut = crash_at(h, s, "c")
    path = journal_path(h)
    with open(path, "rb") as f:
        frames(f.read())
    with open(path, "ab") as f:
        f.write(tail)
    _, before, after, done = resume_and_check(h, s, cut)
    assert done == {"a", "b"}
    assert before == {"a": 1, "b": 1, "c": 1}
    assert after == {"c": 1, "d": 1, "e": 1}
    # What the resumed run appended is readable later: the torn bytes did not stay in the middle.
    r = h.run("output", WID, s)
    assert r.get("ok") == cs.evaluate(s) and r.get("status") == "SUCCESSFUL", r
    with open(path, "rb") as f:
        frames(f.read())


def test_damaged_middle_record_is_reported_by_path(h_thread):
    h = h_thread
    other = chain(3)
    assert h.run("run", "other", other).get("ok") == cs.evaluate(other)
    s = chain()
    crash_at(h, s, "d")
    path = journal_path(h)
    with open(path, "rb") as f:
        data = bytearray(f.read())
    found = frames(bytes(data))
    assert len(found) >= 3, found
    offset, length = found[len(found) // 2]  # neither the first nor the last record
    data[offset + HEADER + length // 2] ^= 0xFF
    with open(path, "wb") as f:
        f.write(data)

    workflow.init(h.storage, executor="thread")
    for _ in range(2):  # a failed resume releases the workflow: the second attempt says the same
        with pytest.raises(workflow.CorruptCheckpointError) as info:
            workflow.resume(WID)
        assert isinstance(info.value, workflow.StorageError)
        assert info.value.path and os.path.samefile(info.value.path, path), info.value.path
        assert path in str(info.value) or os.path.realpath(path) in str(info.value)
    with open(path, "rb") as f:
        assert f.read() == bytes(data), "resume must not rewrite a damaged journal"
    # The rest of the storage still reads back.
    assert workflow.get_output("other") == cs.evaluate(other)
    assert workflow.get_status("other") == workflow.WorkflowStatus.SUCCESSFUL
    assert workflow.get_output("other", name="b") == cs.step_values(other)["b"]
