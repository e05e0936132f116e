"""Ray Workflows 1.x semantics that keelflow keeps: when a sleep's deadline is fixed, what a
worker process killed under a step does to its workflow, and how virtual actors show up.

Real processes throughout: worker processes that SIGKILL themselves, drivers killed with
SIGKILL and workflows resumed in fresh processes. Waits poll with deadlines; timings are
asserted only as generous bounds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import keelflow as workflow
import ray1steps as rs
from conftest import TESTS, run_python, wait_until
from keelflow import session
from keelflow.engine import runtime
from keelflow.engine.runtime import SYSTEM_RETRIES

S = workflow.WorkflowStatus
ENV_PATH = os.pathsep.join([str(TESTS.parent / "src"), str(TESTS)])


@pytest.fixture(params=["local", "ray"])
def dying(request, storage):
    """keelflow on an executor whose steps run in processes that can die: worker processes
    (local) or Ray workers (ray). The thread executor has none: a step that kills its
    process kills the scheduler too, which is a crash of the driver (tested elsewhere)."""
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
    workflow.init(storage, executor=request.param)
    yield request.param
    workflow.shutdown()


def start_driver(code: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=ENV_PATH)
    full = "import sys, time, keelflow as workflow, ray1steps as rs\n" + textwrap.dedent(code)
    return subprocess.Popen([sys.executable, "-c", full, *args], env=env)


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the driver exited early ({proc.returncode})"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def sigkill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


def in_new_process(code: str, storage: str, timeout: float = 120) -> str:
    """Run ``code`` in a fresh interpreter (``storage`` is ``sys.argv[1]``); its stdout."""
    full = "import sys, time, keelflow as workflow, ray1steps as rs\n" + textwrap.dedent(code)
    done = run_python(full, storage, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout


# -- 1. workflow.sleep: the deadline is fixed when the sleep starts -------------------------------
def test_a_sleep_built_before_run_still_sleeps_from_its_start(kf):
    node = rs.stamp.step(workflow.sleep(2))
    time.sleep(2)  # the point of the test: the node is built well before it runs
    started = time.time()
    finished = node.run(workflow_id="late-start")
    # Ray 1.x fixed the deadline when the sleep step ran: the full 2 s after run(), not 0.
    assert finished - started >= 1.8, finished - started
    deadline = workflow.get_output("late-start", name="keelflow.sleep")  # stored before the wait
    assert deadline >= started + 1.8
    assert finished >= deadline


def test_a_sleep_that_never_started_starts_afresh_when_resumed(storage, tmp_path):
    # Stored by a process that then exits: the sleep has not started, only been built.
    in_new_process('workflow.init(sys.argv[1]); workflow.submit(rs.stamp.step(workflow.sleep(2)), "later")', storage)
    time.sleep(2)
    out = in_new_process(
        """
        workflow.init(sys.argv[1])
        begin = time.time()
        finished = workflow.resume("later")
        print(finished - begin)
        """,
        storage,
    )
    assert float(out) >= 1.8, out  # a fresh 2 s: nothing was stored for it before


def test_a_started_sleep_resumed_in_a_new_process_sleeps_only_what_is_left(storage, tmp_path):
    announced = tmp_path / "deadline"
    proc = start_driver(
        f"""
        workflow.init(sys.argv[1])
        ref = rs.stamp.step(workflow.sleep(4)).run_async(workflow_id="nap")
        deadline = workflow.get_output("nap", name="keelflow.sleep")  # durable once this returns
        open({str(announced)!r} + ".tmp", "w").write(repr(deadline))
        import os; os.replace({str(announced)!r} + ".tmp", {str(announced)!r})
        ref.result()
        """,
        storage,
    )
    wait_for_file(announced, proc)
    deadline = float(announced.read_text())
    wait_until(lambda: time.time() >= deadline - 2.5, what="1.5 s of the sleep to pass")
    sigkill(proc)
    out = in_new_process(
        """
        workflow.init(sys.argv[1])
        begin = time.time()
        finished = workflow.resume("nap")
        print(begin, finished)
        """,
        storage,
    )
    begin, finished = map(float, out.split())
    assert finished >= deadline - 0.01  # the stored deadline held...
    assert finished - begin < 3.6, finished - begin  # ...so not another full 4 s


def test_sleeping_workflows_hold_no_worker_process_and_no_thread_each(storage):
    # Local executor: worker processes are started only for steps that run on it.
    workflow.init(storage, executor="local")
    before = set(threading.enumerate())
    refs = [workflow.sleep(1).run_async(workflow_id=f"s{i}") for i in range(200)]
    wait_until(lambda: workflow.get_output("s199", name="keelflow.sleep"), what="the sleeps to start")
    threads = [t.name for t in threading.enumerate() if t not in before]
    workers = _worker_processes()
    assert [workflow.get(r, timeout=60) for r in refs] == [None] * 200
    # Fixed pools (scheduler, events, flushers, index, a waiter): none per sleeping workflow.
    assert len(threads) <= 16 and all(n.startswith("keelflow-") for n in threads), threads
    assert workers == [], "a sleep took a worker process"


def _worker_processes() -> list[int]:
    """This process's children that are keelflow worker processes."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == os.getpid() and b"keelflow.executors._worker" in Path(f"/proc/{name}/cmdline").read_bytes():
                found.append(int(name))
        except (OSError, ValueError, IndexError):
            continue
    return found


# -- 2. a worker process that dies is a system failure, not the step's exception ------------------
def test_a_worker_killed_once_is_run_again_without_spending_max_retries(dying, tmp_path):
    attempts = str(tmp_path / "attempts")
    pid = rs.dies_once.step(attempts).run(workflow_id="once")  # max_retries=0
    assert rs.count(attempts) == 2 and pid != os.getpid()
    assert workflow.get_status("once") == S.SUCCESSFUL
    assert workflow.get_metadata("once", name="ray1steps.dies_once")["attempts"] == 2


def test_deaths_between_exceptions_do_not_count_against_max_retries(dying, tmp_path):
    attempts = str(tmp_path / "attempts")
    # max_retries=1: one exception, one death, then success. Were the death a retry, the
    # workflow would have failed at attempt 2.
    assert rs.raises_then_dies_then_works.step(attempts).run(workflow_id="mixed") == "ok at attempt 3"
    assert workflow.get_status("mixed") == S.SUCCESSFUL


def test_a_worker_that_keeps_dying_stops_the_workflow_resumable(dying, storage, tmp_path):
    before, attempts, fixed = str(tmp_path / "before"), str(tmp_path / "attempts"), str(tmp_path / "fixed")
    node = rs.pair.step(rs.counted.step(before), rs.dies_until_fixed.step(attempts, fixed))
    with pytest.raises(workflow.KeelflowError) as caught:
        node.run(workflow_id="doomed")
    err = caught.value
    # Not a step failure: no WorkflowExecutionError, and the workflow is not FAILED.
    assert not isinstance(err, workflow.WorkflowExecutionError)
    assert "RESUMABLE" in str(err) and err.step_name == "ray1steps.dies_until_fixed"
    assert workflow.get_status("doomed") == S.RESUMABLE
    assert ("doomed", S.RESUMABLE) in workflow.list_all()
    # The first try and SYSTEM_RETRIES more, whatever max_retries (5) says.
    assert rs.count(attempts) == SYSTEM_RETRIES + 1
    # The step's record says what happened.
    meta = workflow.get_metadata("doomed", name="ray1steps.dies_until_fixed")
    assert meta["status"] == "PENDING" and meta["attempts"] == SYSTEM_RETRIES + 1
    said = meta["stats"]["interrupted"]
    assert f"{SYSTEM_RETRIES + 1} system failures in a row" in said
    if dying == "local":
        assert "died (exit code -9, SIGKILL)" in said
    from keelflow.views import workflow_view

    row = next(r for r in workflow_view("doomed")["steps"] if r["name"] == "ray1steps.dies_until_fixed")
    assert row["status"] == "PENDING" and "system failures in a row" in row["error"]
    with pytest.raises(workflow.KeelflowError, match="RESUMABLE"):
        workflow.get_output("doomed")
    # resume_all() (which keelflow worker calls every second) holds it back a while...
    assert workflow.resume_all() == [] and rs.count(attempts) == SYSTEM_RETRIES + 1
    index = session.runtime().read_index("doomed")
    assert index["interrupted"]["stops"] == 1 and runtime.interrupt_hold(index) > 5
    # ...resume(id) does not; stopped again, the hold doubles.
    with pytest.raises(workflow.KeelflowError, match="RESUMABLE"):
        workflow.resume("doomed")
    assert rs.count(attempts) == 2 * (SYSTEM_RETRIES + 1)
    index = session.runtime().read_index("doomed")
    assert index["interrupted"]["stops"] == 2 and runtime.interrupt_hold(index) > runtime.INTERRUPT_HOLD

    Path(fixed).touch()
    if dying == "local":
        # Durable: a fresh process resumes it, and runs the step again.
        workflow.shutdown()
        out = in_new_process("workflow.init(sys.argv[1]); print(workflow.resume('doomed'))", storage)
        assert out.strip() == "(1, 'fixed at attempt 9')"
        workflow.init(storage, executor=dying)
    else:
        assert workflow.resume("doomed") == (1, "fixed at attempt 9")
    assert workflow.get_status("doomed") == S.SUCCESSFUL
    assert rs.count(before) == 1  # checkpointed before the deaths: not run again
    assert "interrupted" not in workflow.get_metadata("doomed", name="ray1steps.dies_until_fixed")["stats"]


def test_catch_exceptions_does_not_catch_a_dead_worker(storage, tmp_path):
    workflow.init(storage, executor="local")
    step = rs.dies_until_fixed.options(catch_exceptions=True, max_retries=0)
    with pytest.raises(workflow.KeelflowError, match="RESUMABLE"):
        step.step(str(tmp_path / "n"), str(tmp_path / "fixed")).run(workflow_id="caught")
    assert workflow.get_status("caught") == S.RESUMABLE
    Path(tmp_path / "fixed").touch()
    assert workflow.resume("caught") == (f"fixed at attempt {SYSTEM_RETRIES + 2}", None)


@pytest.mark.parametrize("how", ["raise", "exit"])
def test_the_steps_own_exception_still_spends_max_retries_and_fails(kf, executor, tmp_path, how):
    attempts = str(tmp_path / "attempts")
    with pytest.raises(workflow.WorkflowExecutionError) as caught:
        rs.always_raises.step(attempts, how).run(workflow_id="bad")  # max_retries=2
    # sys.exit in a step is the step's own exception (as in Ray 1.x), not a dead worker.
    assert isinstance(caught.value.__cause__, ValueError if how == "raise" else SystemExit)
    assert rs.count(attempts) == 3  # the first try and 2 retries
    assert workflow.get_status("bad") == S.FAILED
    assert "interrupted" not in workflow.get_metadata("bad", name="ray1steps.always_raises")["stats"]
    if executor == "local":  # one worker ran all three attempts: none of them killed it
        assert len(set(Path(attempts).read_text().split())) == 1


def test_an_actor_call_whose_workflow_keeps_dying_stays_queued_until_resumed(storage, tmp_path):
    workflow.init(storage, executor="local")
    attempts, fixed = str(tmp_path / "attempts"), str(tmp_path / "fixed")
    tally = rs.Tally.get_or_create("shipper", 0)
    call = tally.ship.run_async(attempts, fixed)
    behind = tally.add.run_async(5)
    with pytest.raises(workflow.KeelflowError, match="RESUMABLE"):
        workflow.get(call, timeout=120)
    with pytest.raises(workflow.KeelflowError, match="stays queued"):
        workflow.get(behind, timeout=60)
    assert workflow.get_status("shipper.ship.0") == S.RESUMABLE
    # Neither call has a result: the actor's queue stopped at the interrupted one (once this
    # process's host of the actor has let it go, a moment after the callers were told).
    wait_until(
        lambda: [c["status"] for c in workflow.list_actor_calls("shipper")] == ["QUEUED", "QUEUED"],
        what="both calls to show QUEUED",
    )
    assert workflow.get_actor_metadata("shipper")["status"] == "QUEUED"
    assert dict(workflow.list_all())["shipper"] == S.RESUMABLE
    # Recovering the actor's calls at once is held back, as resume_all holds a workflow back.
    assert workflow.resume_all() == []
    wait_until(lambda: workflow.get_actor_metadata("shipper")["status"] == "QUEUED", what="the recovery to stop")
    assert rs.count(attempts) == SYSTEM_RETRIES + 1

    Path(fixed).touch()
    workflow.shutdown()
    # A fresh process's resume_all runs the actor's calls, which resume the workflow.
    in_new_process(
        """
        from keelflow.engine import runtime
        runtime.INTERRUPT_HOLD = 0  # (a worker would wait the hold out)
        workflow.init(sys.argv[1])
        assert workflow.resume_all() == []  # the actor-owned workflow is its call's to resume
        deadline = time.monotonic() + 60
        while any(c["status"] != "SUCCESSFUL" for c in workflow.list_actor_calls("shipper")):
            assert time.monotonic() < deadline, workflow.list_actor_calls("shipper")
            time.sleep(0.02)
        """,
        storage,
    )
    workflow.init(storage, executor="local")
    assert workflow.get_status("shipper.ship.0") == S.SUCCESSFUL
    assert rs.Tally.get_or_create("shipper", 0).value.run() == 5


def test_the_hold_after_a_stop_doubles_per_stop_up_to_an_hour():
    now = time.time()
    hold = runtime.interrupt_hold
    assert hold({}) == 0 and hold({"interrupted": "junk"}) == 0
    assert 9 < hold({"interrupted": {"time": now, "stops": 1}}) <= 10
    assert 39 < hold({"interrupted": {"time": now, "stops": 3}}) <= 40
    assert 3599 < hold({"interrupted": {"time": now, "stops": 50}}) <= 3600
    assert hold({"interrupted": {"time": now - 11, "stops": 1}}) == 0


# -- 3. virtual actors --------------------------------------------------------------------------------
def test_ready_resolves_once_the_actor_exists(kf, executor):
    # Ray 1.x: a ref that resolves once __init__ has run; keelflow's get_or_create runs it
    # before returning, so the ref is resolved already.
    tally = rs.Tally.get_or_create("ready-tally", 3)
    assert workflow.get(tally.ready()) is None
    assert workflow.get(workflow.get_actor("ready-tally").ready()) is None
    if executor == "ray":
        import ray

        assert ray.get(tally.ready()) is None  # Ray 1.x code did this
    workflow.delete_actor("ready-tally")
    with pytest.raises(workflow.ActorNotFoundError):
        tally.ready()


def test_a_class_with_only_one_of_getstate_and_setstate_is_refused(kf):
    with pytest.raises(ValueError, match="The class does not have '__setstate__' method"):

        @workflow.virtual_actor
        class OnlyGet:
            def __getstate__(self):
                return 1

    with pytest.raises(ValueError, match="The class does not have '__getstate__' method"):

        @workflow.virtual_actor
        class OnlySet:
            def __setstate__(self, state):
                pass

    class Base:
        def __getstate__(self):
            return self.x

        def __setstate__(self, state):
            self.x = state

    @workflow.virtual_actor
    class Inherits(Base):  # both, from its base: fine
        def __init__(self):
            self.x = {1, 2}  # not JSON: kept by __getstate__

        @workflow.virtual_actor.readonly
        def get(self):
            return self.x

    assert Inherits.get_or_create("inherits").get.run() == {1, 2}


def test_actors_are_listed_with_workflows_running_then_successful(kf, tmp_path):
    rs.counted.step(str(tmp_path / "n")).run(workflow_id="a-workflow")
    tally = rs.Tally.get_or_create("listed", 0)
    assert dict(workflow.list_all()) == {"a-workflow": S.SUCCESSFUL, "listed": S.SUCCESSFUL}
    assert workflow.list_all()[0] == ("listed", S.SUCCESSFUL)  # newest first
    assert workflow.list_actors() == ["listed"]

    started, flag = tmp_path / "started", tmp_path / "flag"
    ref = tally.add_when.run_async(str(started), str(flag), 2)
    wait_until(started.exists, what="the call to start")
    assert ("listed", S.RUNNING) in workflow.list_all(S.RUNNING)  # a live process runs it
    assert workflow.list_all(S.FAILED) == []
    flag.touch()
    assert workflow.get(ref, timeout=60) == 2
    wait_until(lambda: dict(workflow.list_all())["listed"] == S.SUCCESSFUL, what="the actor to be idle")
    # Not workflows: the workflow API's own listing (command line, dashboard, metrics) has none.
    assert [row[0] for row in workflow.api.listing()] == ["a-workflow"]


def test_an_actor_left_with_queued_calls_is_resumable_and_resume_all_runs_them(storage, tmp_path):
    started, flag, queued = tmp_path / "started", tmp_path / "flag", tmp_path / "queued"
    proc = start_driver(
        f"""
        workflow.init(sys.argv[1])
        tally = rs.Tally.get_or_create("orphan", 0)
        tally.add_when.run_async({str(started)!r}, {str(flag)!r}, 1)
        tally.add.run_async(10)  # durably queued behind it when this returns
        open({str(queued)!r}, "w").close()
        time.sleep(120)
        """,
        storage,
    )
    wait_for_file(started, proc)
    wait_for_file(queued, proc)
    sigkill(proc)  # mid-call, a second call queued

    workflow.init(storage, executor="local")
    assert dict(workflow.list_all()) == {"orphan": S.RESUMABLE}
    assert workflow.list_all(S.RESUMABLE) == [("orphan", S.RESUMABLE)]
    flag.touch()
    assert workflow.resume_all() == []  # no workflow to resume; the actor's calls run
    assert not (Path(storage) / "workflows" / "orphan").exists()  # never taken for a workflow
    wait_until(lambda: dict(workflow.list_all())["orphan"] == S.SUCCESSFUL, what="the calls to run")
    assert rs.Tally.get_or_create("orphan", 0).value.run() == 11
    assert [c["status"] for c in workflow.list_actor_calls("orphan")] == ["SUCCESSFUL"] * 2


@pytest.mark.parametrize("workflows", [3, 30])
def test_listing_actors_costs_the_same_however_many_workflows(storage, tmp_path, workflows):
    workflow.init(storage, executor="thread")
    for i in range(workflows):
        rs.counted.step(str(tmp_path / "n")).run(workflow_id=f"w{i}")
    tally = rs.Tally.get_or_create("cost", 0)
    for k in range(50):
        tally.add.run(k)
    wait_until(lambda: dict(workflow.list_all())["cost"] == S.SUCCESSFUL, what="the actor to be idle")
    store = session.runtime().storage
    calls: list[tuple[str, str]] = []
    read: list[int] = []

    def counting(name):
        real = getattr(store, name)

        def wrapper(key, *args, **kwargs):
            result = real(key, *args, **kwargs)
            if key.startswith("actors"):
                calls.append((name, key))
                if name == "read_from" and result:
                    read.append(len(result))
            return result

        return wrapper

    # A fresh listing process: nothing followed yet.
    from keelflow import actors

    actors._watches.clear()
    for name in ("get", "read_from", "children", "size", "lease_held"):
        setattr(store, name, counting(name))
    try:
        assert dict(workflow.list_all())["cost"] == S.SUCCESSFUL
        first, first_read = len(calls), sum(read)
        calls.clear()
        read.clear()
        assert dict(workflow.list_all())["cost"] == S.SUCCESSFUL
    finally:
        for name in ("get", "read_from", "children", "size", "lease_held"):
            delattr(store, name)
    assert first_read > 0 and sum(read) == 0  # the journal is read once, then followed
    assert first <= 8 and len(calls) <= 8, calls  # a few reads per actor, none per workflow
