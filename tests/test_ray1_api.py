"""Ray Workflows 1.x's API on keelflow: ``workflow.wait``, the status constants, ``WorkflowRef``
and ``Workflow.step_id``, steps made of partials, callable objects and builtins, step functions
that refuse to be called directly, and errors that are what Ray raised.

Several tests are Ray 1.x documentation and test examples, written as Ray users wrote them
(with ``from keelflow import workflow``). Steps that must wait are held by gates (crash
points of ``crashsteps``, opened by the test), not by sleeps; durability is tested by killing
driver processes with SIGKILL and resuming in fresh ones.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import crashsteps as cs
import ray1apisteps as rs
from conftest import TESTS, wait_until
from keelflow import workflow

ENV_PATH = os.pathsep.join([str(TESTS.parent / "src"), str(TESTS)])


class Gates:
    """Crash points the steps of ``ray1apisteps`` block at, and their execution log."""

    def __init__(self, root: Path) -> None:
        self.ctrl = root / "ctrl"
        self.ctrl.mkdir(parents=True, exist_ok=True)
        self.log = root / "executions.log"

    def env(self) -> dict[str, str]:
        return {cs.CTRL_ENV: str(self.ctrl), cs.LOG_ENV: str(self.log)}

    def hold(self, *keys: str) -> None:
        for key in keys:
            (self.ctrl / f"block-{key}").touch()

    def open(self, *keys: str) -> None:
        for key in keys:
            (self.ctrl / f"block-{key}").unlink(missing_ok=True)

    def open_all(self) -> None:
        for path in self.ctrl.glob("block-*"):
            path.unlink(missing_ok=True)

    def reached(self, key: str) -> int | None:
        path = self.ctrl / f"reached-{key}"
        return int(path.read_text()) if path.exists() else None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for label, _ in cs.read_log(str(self.log)):
            out[label] = out.get(label, 0) + 1
        return out


@pytest.fixture
def gates(tmp_path, monkeypatch):
    g = Gates(tmp_path)
    for name, value in g.env().items():
        monkeypatch.setenv(name, value)  # before init: worker processes inherit it
    yield g
    g.open_all()  # never leave a step blocked (a thread executor's thread, say)


@pytest.fixture
def kw(storage, executor, gates):
    """keelflow on each executor, with gates; room for steps held at their gates."""
    if executor == "ray":
        workflow.init(storage, executor="ray")
    else:
        workflow.init(storage, executor=executor, num_cpus=8)
    yield workflow
    gates.open_all()
    workflow.shutdown()


# ==================================================================================================
# workflow.wait
# ==================================================================================================


def test_wait_gives_the_first_ready_in_input_order_and_refs_to_the_rest(kw, gates):
    gates.hold("slow")
    tasks = [rs.gate("slow", "s"), rs.identity.step(1), rs.identity.step(2)]
    wait_step = workflow.wait(tasks, num_returns=2)
    assert isinstance(wait_step, workflow.Workflow)
    ready, remaining = wait_step.run(workflow_id="w")
    assert ready == [1, 2]
    assert len(remaining) == 1 and isinstance(remaining[0], workflow.Workflow)
    assert remaining[0].step_id == "slow" and remaining[0].workflow_ref == workflow.WorkflowRef("slow", "w")
    # Checkpointed as a step of its own (Ray named it "workflow.wait" too).
    stored_ready, stored_remaining = workflow.get_output("w", name="workflow.wait")
    assert stored_ready == [1, 2] and [r.step_id for r in stored_remaining] == ["slow"]
    assert workflow.get_status("w") == workflow.SUCCESSFUL
    # The workflow ended without the step it no longer needed; that step was stopped.
    with pytest.raises(workflow.OutputNotReadyError):
        workflow.get_output("w", name="slow")


def test_ray_example_wait_basics(kw, gates):
    # Ray 1.x's test_wait_basics, with gates for its long sleeps: a wait inside a step, seen
    # alike by every step using it, and its remaining workflows resolved by a later step.
    gates.hold("ten", "twelve")

    @workflow.step
    def wait_multiple_steps():
        ws = [
            rs.identity.step(1),
            rs.identity.step(3),
            rs.gate("ten", 10),
            rs.identity.step(2),
            rs.gate("twelve", 12),
        ]
        return workflow.wait(ws, num_returns=4, timeout=2)

    @workflow.step
    def return_ready(wait_results):
        ready, _unready = wait_results
        return ready

    @workflow.step
    def join(a, b):
        return a, b

    wait_result = wait_multiple_steps.step()
    a = return_ready.step(wait_result)
    b = return_ready.step(wait_result)
    ready1, ready2 = join.step(a, b).run()
    assert ready1 == ready2 == [1, 3, 2]

    @workflow.step
    def composite():
        w = wait_multiple_steps.step()
        return rs.filter_all.step(w)

    ref = composite.step().run_async(workflow_id="composite")
    wait_until(lambda: _step_status("composite", "workflow.wait") == "SUCCESSFUL", what="the wait to end")
    gates.open("ten", "twelve")
    ready, unready = workflow.get(ref, timeout=60)
    assert ready == [1, 3, 2]
    assert unready == [10, 12]

    with pytest.raises(TypeError):
        workflow.wait([1, 2])


def _step_status(wid: str, name: str) -> str | None:
    """A step's status (SUCCESSFUL once its output is checkpointed); None if not recorded yet."""
    try:
        return workflow.get_metadata(wid, name=name)["status"]  # type: ignore[no-any-return]
    except workflow.StepNotFoundError:
        return None


def test_ray_example_wait_basics_2(kw, gates):
    # Ray 1.x's test_wait_basics_2: a wait at the top of the DAG, or run directly.
    gates.hold("five")
    ws = [rs.identity.step(1), rs.gate("five", 5), rs.identity.step(2)]
    w = workflow.wait(ws, num_returns=2, timeout=30)
    ready, remaining = rs.identity.step(w).run()
    assert ready == [1, 2]
    assert [r.step_id for r in remaining] == ["five"]

    ws = [rs.identity.step(2), rs.gate("five", 5), rs.identity.step(1)]
    w = workflow.wait(ws, num_returns=2, timeout=30)
    ready, remaining = w.run()
    assert ready == [2, 1]


def test_waiting_again_for_what_a_wait_left_gets_outputs_in_the_order_steps_end(kw, gates):
    # Ray 1.x's test_wait_recursive: the remaining workflows are waited for again, inside
    # sub-workflows. The gates open one at a time, each once the wait after the one before
    # is recorded (a wait that finds several done takes them in input order).
    gates.hold("g1", "g2", "g3")
    ref = rs.one_by_one.step([1, 2, 3]).run_async(workflow_id="turns")
    for label in ("g2", "g3", "g1"):
        wait_until(lambda label=label: gates.reached(label), what=f"step {label} to start")
    waits = ["workflow.wait", "workflow.wait_1", "workflow.wait_2"]
    for turn, label in enumerate(("g2", "g3", "g1")):
        assert _step_status("turns", waits[turn]) == "PENDING"
        gates.open(label)
        wait_until(lambda turn=turn: _step_status("turns", waits[turn]) == "SUCCESSFUL", what="the wait to end")
        if turn < 2:
            wait_until(lambda turn=turn: _step_status("turns", waits[turn + 1]), what="the next wait")
    assert workflow.get(ref, timeout=60) == [2, 3, 1]
    names = [n for n in _step_names("turns") if n.startswith("workflow.wait")]
    assert names == ["workflow.wait", "workflow.wait_1", "workflow.wait_2"]


def _step_names(wid: str) -> list[str]:
    from keelflow.views import workflow_view

    return [row["name"] for row in workflow_view(wid)["steps"]]


def test_wait_timeout_returns_what_is_ready_by_then(kw, gates):
    gates.hold("never")
    begin = time.monotonic()
    ready, remaining = workflow.wait([rs.identity.step(1), rs.gate("never", 0)], num_returns=2, timeout=0.5).run()
    took = time.monotonic() - begin
    assert ready == [1] and [r.step_id for r in remaining] == ["never"]
    assert 0.5 <= took < 30, took


def test_wait_checks_its_arguments_as_ray_did(kf):
    node = rs.identity.step(1)
    with pytest.raises(TypeError):
        workflow.wait([1, 2])  # Ray's own example
    with pytest.raises(TypeError):
        workflow.wait(node)  # a node, not a list
    with pytest.raises(TypeError, match="not both"):
        workflow.wait([node, workflow.put(1)])
    with pytest.raises(ValueError, match="unique"):
        workflow.wait([node, node])
    with pytest.raises(ValueError, match="unique"):
        workflow.wait([workflow.WorkflowRef("a"), workflow.WorkflowRef("a")])
    with pytest.raises(ValueError, match="greater than"):
        workflow.wait([node], num_returns=2)
    with pytest.raises(ValueError, match="number of workflows to return"):
        workflow.wait([node], num_returns=0)
    with pytest.raises(ValueError, match="timeout"):
        workflow.wait([node], timeout=-1)
    with pytest.raises(TypeError):
        workflow.wait([node], num_returns=1.5)
    assert workflow.wait([]).run() == ([], [])  # as ray.wait([]) gives


def test_wait_on_refs_at_top_level_is_ray_wait(kw, gates):
    gates.hold("slow")
    slow = rs.gate("slow", 1).run_async(workflow_id="slow")
    fast = rs.identity.step(2).run_async(workflow_id="fast")
    stored = workflow.put(3)  # a stored object is ready at once
    ready, remaining = workflow.wait([slow, fast], num_returns=1, timeout=60)
    assert ready == [fast] and remaining == [slow]
    assert workflow.get(ready) == [2]
    begin = time.monotonic()
    ready, remaining = workflow.wait([slow, fast, stored], num_returns=3, timeout=0.3)
    assert time.monotonic() - begin >= 0.3
    assert ready == [fast, stored] and remaining == [slow]
    gates.open("slow")
    ready, remaining = workflow.wait([slow, fast], num_returns=2)
    assert ready == [slow, fast] and remaining == []
    assert workflow.get(ready) == [1, 2]


# -- durability -------------------------------------------------------------------------------------
class Drivers:
    """Driver processes on one storage, killed with SIGKILL and resumed in fresh processes."""

    def __init__(self, root: Path, executor: str, gates: Gates) -> None:
        self.root = root
        self.executor = executor
        self.gates = gates
        self.storage = str(root / "storage")
        self.procs: list[subprocess.Popen] = []

    def start(self, code: str, *args: str) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=ENV_PATH, **self.gates.env())
        env.pop("KEELFLOW_EXECUTOR", None)
        out = open(self.root / f"driver-{len(self.procs)}.out", "w+")  # noqa: SIM115 - closed in cleanup
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.root,
        )
        proc.out = out  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def scenario(self, mode: str, name: str, wid: str) -> subprocess.Popen:
        code = "import ray1apisteps; ray1apisteps.main()"
        return self.start(code, mode, name, self.storage, self.executor, wid)

    def result(self, proc: subprocess.Popen, timeout: float = 120.0) -> dict:
        proc.wait(timeout)
        proc.out.seek(0)  # type: ignore[attr-defined]
        text = proc.out.read()  # type: ignore[attr-defined]
        for line in text.splitlines():
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT ") :])
        raise AssertionError(f"driver exited {proc.returncode} without a result:\n{text}")

    def reached(self, key: str, proc: subprocess.Popen, timeout: float = 120.0) -> int:
        def there() -> int | None:
            if proc.poll() is not None:
                proc.out.seek(0)  # type: ignore[attr-defined]
                raise AssertionError(f"driver exited early:\n{proc.out.read()}")  # type: ignore[attr-defined]
            return self.gates.reached(key)

        return wait_until(there, timeout, f"step {key} to start")

    def kill(self, proc: subprocess.Popen, blocked: int | None = None) -> None:
        """SIGKILL the driver and wait until it and its worker processes are gone; on Ray,
        until the step that was blocked (a Ray worker's) is gone too."""
        kids = cs.descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        cs.wait_gone(kids, 30)
        if self.executor == "ray" and blocked is not None:
            cs.wait_gone([blocked], 60)

    def cleanup(self) -> None:
        self.gates.open_all()
        for proc in self.procs:
            if proc.poll() is None:
                for pid in [proc.pid, *cs.descendants(proc.pid)]:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                proc.wait(30)
            proc.out.close()  # type: ignore[attr-defined]


@pytest.fixture
def drivers(tmp_path, executor, gates):
    d = Drivers(tmp_path, executor, gates)
    try:
        yield d
    finally:
        d.cleanup()


def test_a_checkpointed_wait_is_not_recomputed_on_resume(drivers, gates):
    # Ray's test_wait_failure_recovery_1, with a real crash: the step using the wait's output
    # dies with its process; the wait is not evaluated again on resume (it would now give [2]:
    # with both done, the first in input order), and its remaining step is run to the end.
    gates.hold("b", "filter")
    proc = drivers.scenario("run", "checkpointed", "wf")
    blocked = drivers.reached("filter", proc)  # the wait's output is durable before it starts
    drivers.kill(proc, blocked)
    gates.open("b", "filter")
    r = drivers.result(drivers.scenario("resume", "checkpointed", "wf"))
    assert r["status"] == "RESUMABLE", r
    assert r["ok"] == [[1], [2]], r  # get_all got the remaining step's output
    assert r["wait"] == [[1], ["ref:b"]], r
    counts = gates.counts()
    assert counts["a"] == 1, counts  # checkpointed before the crash: not run again
    assert counts["filter"] >= 2, counts  # killed while it ran: run again


def test_an_unfinished_wait_is_evaluated_on_resume(drivers, gates):
    # Ray's test_wait_failure_recovery_2, with a real crash: the wait had not ended, so the
    # resumed run waits again, with what was checkpointed before the crash counted.
    gates.hold("b", "c")
    proc = drivers.scenario("run", "unfinished", "wf")
    drivers.reached("b", proc)
    blocked = drivers.reached("c", proc)
    workflow.init(drivers.storage, executor="thread")
    assert workflow.get_output("wf", name="a", timeout=60) == 1  # checkpointed; the wait is not over
    assert _step_status("wf", "workflow.wait") == "PENDING"
    workflow.shutdown()
    drivers.kill(proc, blocked)
    gates.open("b")  # c stays held: the resumed wait ends with a and b
    r = drivers.result(drivers.scenario("resume", "unfinished", "wf"))
    gates.open("c")
    assert r["status"] == "RESUMABLE", r
    assert r["ok"] == [[1, 2], ["c"]], r
    assert gates.counts()["a"] == 1  # not run again


def test_a_workflow_ref_to_another_workflow_is_read_once_and_checkpointed(drivers, gates, executor):
    workflow.init(drivers.storage, executor="thread")
    assert rs.gate("p", 41).run(workflow_id="producer") == 41
    gates.hold("after")
    proc = drivers.scenario("run", "reader", "consumer")
    blocked = drivers.reached("after", proc)
    assert workflow.get_output("consumer", name="p@producer", timeout=60) == 41  # the copy
    drivers.kill(proc, blocked)
    workflow.delete("producer")  # resuming must not need it any more
    workflow.shutdown()
    gates.open("after")
    r = drivers.result(drivers.scenario("resume", "reader", "consumer"))
    assert r["ok"] == [41, 2], r


def test_steps_of_partials_callables_and_builtins_survive_a_resume_elsewhere(drivers, gates):
    # Defined in the driver's __main__ and nowhere else: stored by value, loaded by a process
    # that never saw them.
    gates.hold("hold")
    proc = drivers.start(
        """
        import functools, math, sys
        import ray1apisteps as rs
        from keelflow import workflow

        def scale(k, x):
            return k * x

        class Offset:
            def __init__(self, by):
                self.by = by

            def __call__(self, x):
                return x + self.by

        workflow.init(sys.argv[1], executor=sys.argv[2])
        held = rs.gate("hold", 4)
        node = rs.join.step(
            workflow.step(functools.partial(scale, 10)).step(held),
            workflow.step(Offset(100)).step(held),
            workflow.step(math.sqrt).step(16.0),
            workflow.step(len).step([held, held]),
        )
        print(node.run(workflow_id="wf"))
        """,
        drivers.storage,
        drivers.executor,
    )
    blocked = drivers.reached("hold", proc)
    drivers.kill(proc, blocked)
    gates.open("hold")
    proc = drivers.start(
        """
        import sys
        from keelflow import workflow

        workflow.init(sys.argv[1], executor=sys.argv[2])
        print("RESULT", __import__("json").dumps(workflow.resume("wf")))
        names = [workflow.get_metadata("wf", name=n)["name"] for n in ("__main__.scale", "__main__.Offset")]
        print("RESULT", __import__("json").dumps(names))
        """,
        drivers.storage,
        drivers.executor,
    )
    proc.wait(120)
    proc.out.seek(0)  # type: ignore[attr-defined]
    text = proc.out.read()  # type: ignore[attr-defined]
    lines = [json.loads(line[len("RESULT ") :]) for line in text.splitlines() if line.startswith("RESULT ")]
    assert lines == [[40, 104, 4.0, 2], ["__main__.scale", "__main__.Offset"]], text


# ==================================================================================================
# Status constants
# ==================================================================================================


def test_ray_example_status_constants(kw):
    # From Ray 1.x's API docs: get_status and list_all, with the module's status constants.
    workflow_step = rs.identity.step("trip")
    workflow_step.run(workflow_id="trip")
    assert workflow.SUCCESSFUL == workflow.get_status("trip")  # noqa: SIM300 - Ray's docs' spelling
    assert workflow.list_all(workflow.SUCCESSFUL) == [("trip", workflow.SUCCESSFUL)]
    assert workflow.list_all({workflow.RUNNING}) == []
    for name, status in workflow.WorkflowStatus.__members__.items():
        assert getattr(workflow, name) is status
        assert name in workflow.__all__ and name in dir(workflow)
    assert {workflow.RUNNING, workflow.FAILED, workflow.RESUMABLE, workflow.CANCELED} < set(workflow.WorkflowStatus)


# ==================================================================================================
# WorkflowRef and Workflow.step_id
# ==================================================================================================


def test_step_ids_are_the_unique_step_names_once_recorded(kw):
    a = rs.identity.step(1)
    b = rs.identity.step(2)
    named = rs.identity.options(name="named").step(3)
    root = rs.join.step(a, b, named)
    with pytest.raises(workflow.KeelflowError, match="no step id yet"):
        _ = a.step_id
    assert a.workflow_ref is None
    assert root.run(workflow_id="ids") == (1, 2, 3)
    assert root.step_id == "ray1apisteps.join"
    assert {a.step_id, b.step_id} == {"ray1apisteps.identity", "ray1apisteps.identity_1"}
    assert named.step_id == "named"
    for node in (a, b, named, root):
        assert workflow.get_output("ids", name=node.step_id) == workflow.get_output(
            node.workflow_ref.workflow_id, name=node.workflow_ref.step_id
        )
    assert workflow.get_output("ids", name=a.step_id) == 1


def test_a_workflow_ref_inside_a_workflow_takes_an_earlier_steps_output(kw):
    root = rs.refers_back.step(rs.identity.options(name="first").step(5), "first")
    assert root.run(workflow_id="back") == (5, 5)


def test_a_workflow_ref_to_another_workflows_step_waits_for_it(kw, gates):
    gates.hold("p")
    producer = rs.identity.step(rs.gate("p", 41))
    producer_ref = producer.run_async(workflow_id="producer")
    consumer = rs.join.step(workflow.WorkflowRef("p", workflow_id="producer"), 1).run_async(workflow_id="consumer")
    time.sleep(0.3)
    assert not consumer.done() and workflow.get_status("consumer") == workflow.RUNNING
    gates.open("p")
    assert workflow.get(consumer, timeout=60) == (41, 1)
    assert workflow.get(producer_ref, timeout=60) == 41
    # Its whole output too, by the root step's id.
    assert rs.identity.step(workflow.WorkflowRef(producer.step_id, "producer")).run() == 41


def test_workflow_refs_that_cannot_be_resolved_are_clear_errors(kw):
    with pytest.raises(workflow.StepNotFoundError, match="WorkflowRef"):
        rs.identity.step(workflow.WorkflowRef("first")).run(workflow_id="top")
    with pytest.raises(workflow.WorkflowNotFoundError):
        workflow.get_status("top")  # nothing stored
    with pytest.raises(workflow.WorkflowExecutionError) as info:
        rs.identity.step(workflow.WorkflowRef("x", workflow_id="no-such-workflow")).run(workflow_id="r1")
    assert isinstance(info.value.__cause__, workflow.WorkflowNotFoundError)
    rs.identity.step(0).run(workflow_id="done")
    with pytest.raises(workflow.WorkflowExecutionError) as info:
        rs.identity.step(workflow.WorkflowRef("nope", workflow_id="done")).run(workflow_id="r2")
    assert isinstance(info.value.__cause__, workflow.StepNotFoundError)
    with pytest.raises(workflow.WorkflowExecutionError) as info:
        rs.refers_back.step(1, "nope").run(workflow_id="r3")
    assert isinstance(info.value.__cause__, workflow.StepNotFoundError)
    assert "nope" in str(info.value.__cause__)
    with pytest.raises(workflow.WorkflowExecutionError, match="never be ready"):
        rs.refers_to_itself.options(name="loop").step().run(workflow_id="r4")


def test_workflow_refs_are_plain_data_outside_arguments(kw):
    ref = workflow.WorkflowRef("s", workflow_id="w")
    assert pickle.loads(pickle.dumps(ref)) == ref and hash(ref) == hash(workflow.WorkflowRef("s", "w"))
    node = workflow.Workflow.from_ref(ref)
    back = pickle.loads(pickle.dumps(node))
    assert isinstance(back, workflow.Workflow) and back.step_id == "s" and back.workflow_ref == ref
    assert rs.returns_ref.step("s").run() == {"ref": workflow.WorkflowRef("s", workflow_id="elsewhere")}
    assert workflow.get(workflow.put([ref])) == [ref]
    with pytest.raises(TypeError, match="get_output"):
        node.run()
    with pytest.raises(TypeError):
        workflow.WorkflowRef("")


# ==================================================================================================
# Partials, callable objects and builtins as steps
# ==================================================================================================


def test_partials_callable_objects_and_builtins_are_steps(kw):
    add10 = workflow.step(functools.partial(rs.add, 10))
    triple = workflow.step(rs.Multiplier(3))
    length = workflow.step(len)
    sqrt = workflow.step(math.sqrt)
    assert add10.default_name == "ray1apisteps.add" and add10.__name__ == "add"
    assert triple.default_name == "ray1apisteps.Multiplier" and triple.__name__ == "Multiplier"
    assert length.default_name == "builtins.len" and sqrt.default_name == "math.sqrt"
    assert rs.join.step(add10.step(5), triple.step(4), length.step([1, 2, 3]), sqrt.step(16.0)).run(
        workflow_id="mixed"
    ) == (15, 12, 3, 4.0)
    assert workflow.get_output("mixed", name="builtins.len") == 3
    with pytest.raises(TypeError, match=r"builtins\.len"):
        length.step([1], [2])  # the signature is checked, builtins' too
    with pytest.raises(TypeError, match=r"ray1apisteps\.add"):
        add10.step(1, 2)
    # The object's own attributes never clobber the step function's.
    clash = rs.Multiplier(2)
    clash._options = "not options"  # type: ignore[attr-defined]
    assert workflow.step(clash).options(max_retries=1).step(5).run() == 10


# ==================================================================================================
# Calling a step function directly
# ==================================================================================================


def test_calling_a_step_directly_is_a_type_error_as_in_ray(kw):
    @workflow.step
    def book_flight(origin: str, dest: str) -> str:
        return f"{origin}->{dest}"

    with pytest.raises(TypeError, match=r"book_flight.*cannot be called directly.*book_flight\.step\(") as info:
        book_flight("OAK", "SAN")
    assert "book_flight.func(" in str(info.value)
    with pytest.raises(TypeError, match="cannot be called directly"):
        book_flight.options(max_retries=1)("OAK", "SAN")
    assert book_flight.func("OAK", "SAN") == "OAK->SAN"  # the plain function, on purpose
    assert book_flight.__wrapped__("OAK", "SAN") == "OAK->SAN"
    assert book_flight.step("OAK", "SAN").run() == "OAK->SAN"
    assert workflow.list_all() != []  # (only the run above stored anything)


# ==================================================================================================
# Errors: also what Ray Workflows 1.x raised
# ==================================================================================================


def test_errors_are_also_what_ray_raised(kw, gates):
    for call in (
        lambda: workflow.get_output("nope"),
        lambda: workflow.resume("nope"),
        lambda: workflow.get_metadata("nope"),
    ):
        with pytest.raises(ValueError):  # Ray 1.x: ValueError (no such workflow)
            call()
    with pytest.raises(workflow.WorkflowNotFoundError):
        workflow.get_status("nope")
    rs.identity.step(1).run(workflow_id="done")
    with pytest.raises(ValueError):
        workflow.get_metadata("done", name="no-such-step")
    with pytest.raises(ValueError):
        workflow.get_output("done", name="no-such-step")

    gates.hold("held")
    ref = rs.identity.step(rs.gate("held", 1)).run_async(workflow_id="running")
    wait_until(lambda: gates.reached("held"), what="the step to start")
    with pytest.raises(RuntimeError):  # Ray 1.x: RuntimeError, the workflow is running
        workflow.resume("running")
    with pytest.raises(RuntimeError):
        workflow.delete("running")
    workflow.cancel("running")
    with pytest.raises(ValueError):  # Ray 1.x: ValueError, the workflow is canceled
        workflow.get_output("running")
    with pytest.raises(workflow.WorkflowCancelledError):
        workflow.get(ref, timeout=60)

    workflow.submit(rs.identity.step(1), workflow_id="stored")  # RESUMABLE until resumed
    with pytest.raises(ValueError, match="resume"):  # Ray 1.x: ValueError, please resume it
        workflow.get_output("stored")
    with pytest.raises(workflow.OutputNotReadyError):
        workflow.get_output("stored")
    with pytest.raises(KeyError):  # Ray 1.x: its storage's KeyNotFoundError
        workflow.get_actor("no-such-actor")


@pytest.mark.parametrize("url", ["c:\\ray", "C:/ray", "s3:bucket/prefix", "ftp://host/flows", "s3://"])
def test_storage_urls_ray_refused_are_value_errors_and_create_nothing(tmp_path, monkeypatch, url):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as info:  # Ray 1.x: ValueError("Invalid url: ...")
        workflow.init(url)
    assert isinstance(info.value, workflow.StorageURLError) and isinstance(info.value, workflow.StorageError)
    assert os.listdir(tmp_path) == []


def test_a_directory_named_like_a_url_is_still_reachable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    workflow.init("./c:\\ray", executor="thread")
    assert rs.identity.step(1).run(workflow_id="x") == 1
    assert os.listdir(tmp_path) == ["c:\\ray"]
