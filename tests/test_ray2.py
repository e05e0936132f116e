"""Ray 2.x's DAG API runs unchanged on keelflow (``keelflow.raydag``).

Ray Workflows 2.x's documentation examples, written as it wrote them: ``@ray.remote`` functions,
Ray's own ``.bind()``, ``workflow.run(dag)``, with ``from keelflow import workflow`` for ``from
ray import workflow``. Each runs on every executor: embedded (``local``, ``thread``), where no
Ray cluster runs and keelflow never calls ``ray.init()`` (a subprocess checks that no Ray node
starts), and ``ray``, the session's two-node Ray cluster. A driver killed with SIGKILL mid-run
is resumed by a new process without running finished tasks again.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest

ray = pytest.importorskip("ray")

from ray.dag import InputNode  # noqa: E402

import crashsteps as cs  # noqa: E402
import ray2steps as r2  # noqa: E402
from conftest import TESTS  # noqa: E402
from keelflow import workflow  # noqa: E402


def ref_kind(executor: str) -> str:
    """What a DAG node inside another argument arrives as: a ref to its output, as in Ray."""
    return "ray ref" if executor == "ray" else "keelflow ref"


def attempts(path) -> int:
    return len(path.read_text().split()) if path.exists() else 0


# -- Ray 2.x's documentation examples ------------------------------------------------------------------
def test_a_linear_dag_runs_one_step_per_ray_task(kf):
    dag = r2.add.bind(r2.add.bind(r2.one.bind(), 2), 10)
    assert workflow.run(dag, workflow_id="linear") == 13
    assert workflow.get_status("linear") == workflow.SUCCESSFUL
    assert workflow.get_output("linear") == 13
    # Task ids as Ray 2.x made them: <module>.<qualname>, repeats numbered.
    assert workflow.get_output("linear", task_id="ray2steps.one") == 1
    assert workflow.get_output("linear", task_id="ray2steps.add_1") == 3
    assert workflow.get_output("linear", task_id="ray2steps.add") == 13


def test_the_trip_booking_example(kf):
    flight1 = r2.book_flight.bind("OAK", "SAN")
    flight2 = r2.book_flight.bind("SAN", "OAK")
    hotel = r2.book_hotel.bind("SAN")
    trip = r2.finalize_trip.bind([flight1, flight2, hotel])
    assert workflow.run(trip) == "Flight: OAK->SAN | Flight: SAN->OAK | Hotel: SAN"


def test_a_diamond_runs_its_shared_task_once(kf, tmp_path):
    log = tmp_path / "top"
    top = r2.counted.bind(str(log), 5)
    dag = r2.add.bind(r2.add.bind(top, 1), r2.mult.bind(top, 2))
    assert workflow.run(dag) == 16
    assert attempts(log) == 1


def test_nodes_inside_lists_and_dicts_arrive_as_refs_as_in_ray(kf, executor):
    two = r2.add.bind(1, 1)
    out = workflow.run(r2.kinds.bind(two, [two, 3], {"k": r2.one.bind()}, key=(two,)))
    assert out[0] == ("int", 2)  # an argument itself: its output
    assert out[1] == [(ref_kind(executor), 2), ("int", 3)]  # inside a value: a ref to it
    assert out[2] == {"k": (ref_kind(executor), 1)}
    assert out["key"] == [(ref_kind(executor), 2)]


def test_object_refs_resolve_as_a_ray_tasks_arguments_do(kf, executor):
    five = workflow.put(5)  # a Ray ObjectRef on the Ray executor
    out = workflow.run(r2.kinds.bind(five, [five]))
    assert out[0] == ("int", 5)
    assert out[1] == [(ref_kind(executor), 5)]


def test_an_input_node_takes_runs_arguments(kf):
    with InputNode() as inp:
        dag = r2.add.bind(inp[0], r2.mult.bind(inp.x, inp["y"]))
    assert workflow.run(dag, 1, x=2, y=5) == 11
    with InputNode() as inp:
        whole = r2.kinds.bind(inp)
    kind, data = workflow.run(whole, 7, k="v")[0]
    assert (kind, data[0], data["k"]) == ("DAGInputData", 7, "v")


def test_ray_2x_queue_limits_are_refused_not_ignored(storage):
    for name in ("max_running_workflows", "max_pending_workflows"):
        with pytest.raises(workflow.KeelflowError, match=name):
            workflow.init(storage, **{name: 2})
        assert not workflow.api.initialized()
    workflow.init(storage, max_running_workflows=None, max_pending_workflows=None)


def test_ray_1_12_create_makes_a_node_of_a_dag(kf):
    """Ray 1.12's ``workflow.create(dag, *args)``: a workflow node to run, or to pass on."""
    with InputNode() as inp:
        dag = r2.add.bind(inp[0], r2.mult.bind(inp[1], 3))
    node = workflow.create(dag, 1, 2)
    assert isinstance(node, workflow.Workflow)
    assert node.run(workflow_id="created") == 7
    assert workflow.get_output("created") == 7
    with pytest.raises(TypeError, match="needs a Ray DAG"):
        workflow.create(lambda: 1)


def test_dynamic_workflows_continue_a_task_with_the_dag_it_returns(kf):
    assert workflow.run(r2.fib.bind(10), workflow_id="fib") == 55
    assert workflow.get_output("fib", task_id="ray2steps.fib") == 55
    assert workflow.get_metadata("fib", task_id="ray2steps.fib_1")["status"] == "SUCCESSFUL"
    assert workflow.run(r2.factorial.bind(5)) == 120  # returns a bare DAG, which Ray 2.x took too


def test_catch_exceptions_in_both_spellings(kf):
    def run(node):
        return workflow.run(r2.handle.bind(node))

    assert run(r2.fails.options(**workflow.options(catch_exceptions=True)).bind("boom")) == "caught ValueError: boom"
    assert run(r2.caught_above.bind("above")) == "caught ValueError: above"
    assert run(r2.caught_below.bind("below")) == "caught ValueError: below"
    assert run(r2.echo.options(**workflow.options(catch_exceptions=True)).bind(4)) == "ok 4"
    # A failure inside the continuation of a catching task is caught by it.
    assert run(r2.fails_inside.bind("deep")) == "caught ValueError: deep"
    # .options(**workflow.options(...)) goes over the decorator's options key by key.
    renamed = r2.caught_above.options(**workflow.options(task_id="renamed")).bind("merged")
    assert workflow.run(r2.handle.bind(renamed), workflow_id="merged") == "caught ValueError: merged"
    value, error = workflow.get_output("merged", task_id="renamed")
    assert value is None and isinstance(error, ValueError)


def test_max_retries_and_retry_exceptions_as_in_ray_2x(kf, tmp_path):
    retried = tmp_path / "retried"
    assert workflow.run(r2.flaky.options(max_retries=2, retry_exceptions=True).bind(str(retried), 2)) == 3
    assert attempts(retried) == 3
    # As in Ray 2.x, an exception is retried only with retry_exceptions (a dead worker always is).
    once = tmp_path / "once"
    with pytest.raises(workflow.WorkflowExecutionError) as info:
        workflow.run(r2.flaky.options(max_retries=2).bind(str(once), 1), workflow_id="no-retry")
    assert isinstance(info.value.__cause__, ValueError)
    assert attempts(once) == 1
    meta = workflow.get_metadata("no-retry", task_id="ray2steps.flaky")
    assert (meta["attempts"], meta["step_options"]["max_retries"], meta["step_options"]["retry_exceptions"]) == (
        1,
        2,
        False,
    )
    # retry_exceptions may name the exceptions worth retrying.
    other = tmp_path / "other"
    with pytest.raises(workflow.WorkflowExecutionError):
        workflow.run(r2.flaky.options(max_retries=2, retry_exceptions=[KeyError]).bind(str(other), 1))
    assert attempts(other) == 1
    # max_retries=-1 ("forever" to Ray) never retried a Ray Workflows 2.x task.
    never = tmp_path / "never"
    with pytest.raises(workflow.WorkflowExecutionError):
        workflow.run(r2.flaky.options(max_retries=-1, retry_exceptions=True).bind(str(never), 1))
    assert attempts(never) == 1


def test_task_ids_name_steps_for_get_output(kf):
    trip = r2.one.options(**workflow.options(task_id="trip")).bind()
    res1 = workflow.run_async(trip, workflow_id="trip1")
    assert workflow.get(res1) == 1
    assert workflow.get_output("trip1") == 1
    assert workflow.get(workflow.get_output_async("trip1", task_id="trip")) == 1
    assert workflow.get_output("trip1", name="trip") == 1  # keelflow's spelling
    with pytest.raises(TypeError, match="not both"):
        workflow.get_output("trip1", name="trip", task_id="other")
    with pytest.raises(workflow.StepNotFoundError):
        workflow.get_output("trip1", task_id="nope")
    # A repeated task id gets _1, _2, ..., counted from the DAG's output back.
    inner = r2.one.options(**workflow.options(task_id="step")).bind()
    outer = r2.add.options(**workflow.options(task_id="step")).bind(inner, 10)
    assert workflow.run(outer, workflow_id="dup") == 11
    assert workflow.get_output("dup", task_id="step") == 11
    assert workflow.get_output("dup", task_id="step_1") == 1


def test_get_metadata_as_in_ray_2x_docs(kf):
    task = r2.one.options(**workflow.options(task_id="trip", metadata={"k1": "v1"})).bind()
    workflow.run(task, workflow_id="trip1", metadata={"k2": "v2"})
    meta = workflow.get_metadata("trip1")
    assert (meta["status"], meta["user_metadata"]) == ("SUCCESSFUL", {"k2": "v2"})
    assert meta["stats"]["end_time"] >= meta["stats"]["start_time"]
    task_meta = workflow.get_metadata("trip1", "trip")
    assert task_meta["user_metadata"] == {"k1": "v1"}
    assert task_meta["stats"]["end_time"] >= task_meta["stats"]["start_time"]
    assert workflow.get_metadata("trip1", task_id="trip")["user_metadata"] == {"k1": "v1"}


def test_sleep_and_wait_for_event_are_dag_nodes(kf, executor):
    assert workflow.run(r2.echo.bind(workflow.wait_for_event(r2.Signal, "go"))) == {"signal": "go"}
    assert workflow.run(workflow.wait_for_event(r2.Signal, "now")) == {"signal": "now"}
    assert workflow.run(workflow.sleep(0)) is None
    out = workflow.run(r2.kinds.bind(workflow.sleep(0.05), [workflow.wait_for_event(r2.Signal, "in")]))
    assert out[0] == ("NoneType", None)
    assert out[1] == [(ref_kind(executor), {"signal": "in"})]


def test_a_keelflow_node_pickles_for_binds_scan_but_cannot_be_loaded_outside_keelflow():
    # Ray's .bind() pickles its arguments to look for DAG nodes in them; a keelflow node must
    # pass (so f.bind(workflow.sleep(1)) works), and what it writes is no usable copy.
    data = pickle.dumps(workflow.sleep(1))
    with pytest.raises(workflow.SerializationError, match="pickled on its own, outside keelflow"):
        pickle.loads(data)


def test_current_workflow_and_task_ids_inside_a_task(kf):
    assert workflow.run(r2.whoami.options(**workflow.options(task_id="me")).bind(), workflow_id="who") == ("who", "me")
    assert workflow.run(r2.whoami.bind(), workflow_id="who2") == ("who2", "ray2steps.whoami")
    with pytest.raises(workflow.KeelflowError, match="in a workflow step"):
        workflow.get_current_workflow_id()
    with pytest.raises(workflow.KeelflowError, match="in a workflow step"):
        workflow.get_current_task_id()


def test_ray_task_options_become_the_steps_resources_and_retries(storage, executor):
    if executor == "ray":
        resource = "node2"  # only the test cluster's second node has it
        workflow.init(storage, executor="ray")
    else:
        resource = "db"
        workflow.init(storage, executor=executor, resources={"db": 1})
    workflow.run(r2.placed.options(resources={resource: 1}).bind(), workflow_id="placed")
    options = workflow.get_metadata("placed", task_id="ray2steps.placed")["step_options"]
    assert (options["num_cpus"], options["num_gpus"], options["resources"]) == (0.5, 0, {resource: 1})
    assert (options["max_retries"], options["retry_exceptions"]) == (5, (KeyError,))
    with pytest.raises(workflow.WorkflowExecutionError, match="tpu"):
        workflow.run(r2.placed.options(resources={"tpu": 1}).bind())


def test_what_keelflow_refuses_it_says_before_anything_runs(kf, caplog):
    with pytest.raises(ValueError, match="invalid option"):
        workflow.options(max_retries=3)
    with pytest.raises(TypeError, match="catch_exceptions"):
        workflow.options(catch_exceptions="yes")
    with pytest.raises(ValueError, match="decorates"):
        workflow.options(task_id="x")(42)
    with pytest.raises(workflow.KeelflowError, match=r"checkpoint=False.*does not support"):
        workflow.run(r2.one.options(**workflow.options(checkpoint=False)).bind())
    with pytest.raises(ValueError, match="returns one value"):
        workflow.run(r2.one.options(num_returns=2).bind())

    @ray.remote
    class Box:
        def get(self) -> int:
            return 1

    with pytest.raises(TypeError, match=r"ClassMethodNode.*not supported"):
        workflow.run(Box.bind().get.bind())
    with pytest.raises(TypeError, match=r"ClassNode.*not supported"):
        workflow.run(r2.echo.bind(Box.bind()))
    with pytest.raises(TypeError, match="Ray DAG"):
        workflow.run(42)
    with InputNode() as inp:
        needs_input = r2.echo.bind(inp.missing)
    with pytest.raises(TypeError, match="'missing'"):
        workflow.run(needs_input, 1)
    assert workflow.list_all() == []  # nothing was stored

    # Ray options keelflow has no use for are named (once per function), and the task runs.
    @ray.remote(scheduling_strategy="SPREAD")
    def spread(x: int) -> int:
        return x

    assert workflow.run(spread.bind(1)) == 1
    assert "scheduling_strategy of test_ray2.test_what_keelflow_refuses_it_says_before_anything_runs.locals.spread" in (
        caplog.text
    )


def test_ray_2x_exception_and_status_names(kf):
    assert workflow.WorkflowError is workflow.KeelflowError
    assert workflow.WorkflowCancellationError is workflow.WorkflowCancelledError
    with pytest.raises(workflow.WorkflowError) as info:
        workflow.run(r2.fails.bind("nope"), workflow_id="failing")
    assert isinstance(info.value, workflow.WorkflowExecutionError)
    assert isinstance(info.value.__cause__, ValueError)
    assert workflow.get_status("failing") == workflow.FAILED
    ref = workflow.run_async(r2.echo.bind(workflow.sleep(60)), workflow_id="sleeper")
    workflow.cancel("sleeper")
    with pytest.raises(workflow.WorkflowCancellationError):
        workflow.get(ref)
    assert workflow.list_all(workflow.CANCELED) == [("sleeper", workflow.CANCELED)]


def test_running_an_existing_workflow_again_resumes_it_as_in_ray_2x(kf, tmp_path):
    path = tmp_path / "flaky"
    dag = r2.flaky.options(max_retries=0).bind(str(path), 1)
    with pytest.raises(workflow.WorkflowExecutionError):
        workflow.run(dag, workflow_id="again")
    assert workflow.get_status("again") == workflow.FAILED
    assert workflow.run(dag, workflow_id="again") == 2  # resumed: the failed task ran again
    assert workflow.get_status("again") == workflow.SUCCESSFUL
    assert workflow.run(dag, workflow_id="again") == 2  # finished: its stored output
    assert workflow.resume("again") == 2
    assert attempts(path) == 2


# -- embedded: no Ray cluster, Ray never initialised --------------------------------------------------
EMBEDDED = """
import json, os, sys
import ray
from ray.dag import InputNode
from keelflow import workflow
import crashsteps, ray2steps as r2

@ray.remote
def shout(word: str) -> str:  # defined in __main__: pickled by value for the worker processes
    return word.upper() + "!"

workflow.init(sys.argv[1])  # the default executor: local worker processes
assert workflow.run(r2.add.bind(r2.one.bind(), 2)) == 3
trip = r2.finalize_trip.bind([r2.book_flight.bind("OAK", "SAN"), r2.book_hotel.bind("SAN")])
assert workflow.run(trip) == "Flight: OAK->SAN | Hotel: SAN"
assert workflow.run(r2.fib.bind(8)) == 21
assert workflow.run(shout.bind(r2.echo.bind("hi"))) == "HI!"
with InputNode() as inp:
    dag = r2.add.bind(inp[0], inp.y)
assert workflow.run(dag, 1, y=2) == 3
assert workflow.run(r2.echo.bind(workflow.wait_for_event(r2.Signal, "go"))) == {"signal": "go"}
assert workflow.run(r2.kinds.bind(workflow.sleep(0.01)))[0] == ("NoneType", None)
# Outside a workflow, continuation runs the DAG (Ray 2.x ran it on Ray): here as a workflow.
assert workflow.continuation(r2.add.bind(2, 3)) == 5
assert r2.fib._function(6) == 8
ray_procs = []
for pid in crashsteps.descendants(os.getpid()):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\\0", b" ").decode()
    except OSError:
        continue
    if "raylet" in cmd or "gcs_server" in cmd or "ray::" in cmd:
        ray_procs.append(cmd)
print("RESULT " + json.dumps({"initialized": ray.is_initialized(), "ray_processes": ray_procs}))
"""


def test_ray_dags_run_embedded_without_a_ray_cluster(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "KEELFLOW_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent / "src"), str(TESTS), env.get("PYTHONPATH", "")])
    # Had anything called ray.init(), with no RAY_ADDRESS it would start a Ray node here.
    out = subprocess.run(
        [sys.executable, "-c", EMBEDDED, str(tmp_path / "store")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.split("RESULT ", 1)[1])
    assert result == {"initialized": False, "ray_processes": []}


def test_ray_is_imported_only_for_a_ray_dag_and_its_absence_is_explained(tmp_path):
    code = """
import sys
import keelflow as workflow
workflow.init("memory://", executor="thread")

@workflow.options(task_id="t")
def plain() -> int:
    return 1

assert workflow.run(workflow.step(lambda: 2).step()) == 2
assert workflow.continuation(workflow.step(lambda: 3).step()) == 3
print("imported ray:", "ray" in sys.modules)
sys.modules["ray"] = None  # as if Ray were not installed
try:
    workflow.run(object())
except workflow.KeelflowError as e:
    print("error:", e)
"""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent / "src"), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "imported ray: False" in out.stdout
    assert "pip install 'keelflow[ray]'" in out.stdout


# -- on the Ray executor ---------------------------------------------------------------------------------
@pytest.fixture
def kf_ray(ray_cluster, storage):
    workflow.init(storage, executor="ray")
    yield workflow
    workflow.shutdown()


@pytest.mark.ray
def test_the_trip_example_runs_verbatim_on_ray_with_ray_get(kf_ray):
    trip = r2.finalize_trip_with_ray_get.bind([r2.book_flight.bind("OAK", "SAN"), r2.book_hotel.bind("SAN")])
    assert workflow.run(trip) == "Flight: OAK->SAN | Hotel: SAN"


@pytest.mark.ray
def test_a_ray_resource_places_the_task_on_the_node_that_has_it(kf_ray):
    node2 = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "node2" in n["Resources"])
    assert workflow.run(r2.node_id.options(resources={"node2": 1}).bind()) == node2


@pytest.mark.ray
def test_a_task_with_workflow_options_is_still_a_plain_ray_task(kf_ray):
    # Ray gets an empty _labels dict: the options mean something only to a workflow.
    assert ray.get(r2.one.options(**workflow.options(task_id="t", metadata={"k": 1})).remote()) == 1
    with pytest.raises(ValueError, match="plain"):
        ray.get(r2.caught_above.remote("plain"))


@pytest.mark.ray
def test_continuation_outside_a_workflow_runs_the_dag_on_ray_as_ray_2x_did(kf_ray):
    assert ray.get(r2.fib.remote(4)) == 3  # a plain Ray task, not a workflow step
    assert workflow.continuation(r2.add.bind(1, 2)) == 3  # in this driver, connected to Ray
    assert workflow.list_all() == []  # neither made a workflow


# -- crash recovery ----------------------------------------------------------------------------------------
class Ray2Harness(cs.Harness):
    """crashsteps' harness, with drivers that run ray2steps' DAG."""

    driver = "import ray2steps; ray2steps.main()"


@pytest.fixture
def harness(tmp_path, executor):
    h = Ray2Harness(str(tmp_path / "crash"), executor)
    try:
        yield h
    finally:
        h.cleanup()


def test_a_killed_dag_workflow_resumes_in_a_new_process_without_rerunning_finished_tasks(harness):
    h = harness
    h.block("c")
    proc = h.start("run", "wf")
    blocked = h.wait_reached("c", proc)
    h.crash(proc)  # SIGKILL; waits until the driver and every process it started are gone
    if h.executor == "ray":
        cs.wait_gone([blocked], 60.0)  # Ray ends a dead driver's tasks itself
    h.release("c")
    cut = len(h.executions())
    r = h.run("rerun", "wf", None)  # Ray 2.x resumed with workflow.run(dag, workflow_id=...) again
    values = r2.crash_values()
    assert r["status"] == "RESUMABLE", r
    assert r["done_before"] == {k: values[k] for k in ("a", "b", "x.0", "x.1", "x")}
    assert (r.get("ok"), r.get("final_status")) == (values["d"], "SUCCESSFUL"), r
    before, after = cs.split_counts(h.executions(), cut)
    assert before == {"a": 1, "b": 1, "x": 1, "x.0": 1, "x.1": 1, "c": 1}
    assert after == {"c": 1, "d": 1}  # c was running at the kill: it runs again, and only it
