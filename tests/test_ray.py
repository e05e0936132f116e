"""What is particular to the Ray executor, on a real two-node Ray cluster (see raycluster.py).

The rest of the suite runs on Ray too, through the ``executor`` fixture's ``ray`` variant.
"""

from __future__ import annotations

import os
import time

import cloudpickle
import pytest

import crashsteps
import keelflow as workflow
import raysteps
from conftest import run_python
from keelflow import serialization
from keelflow.engine.task import RUNNER, make_payload
from keelflow.executors.base import Demand, Outcome, Task
from raycluster import free_port

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray


@pytest.fixture
def kf_ray(ray_cluster, storage):
    workflow.init(storage, executor="ray")
    yield workflow
    workflow.shutdown()


def blob_files(storage: str) -> list[str]:
    return [os.path.join(d, f) for d, _, files in os.walk(storage) if d.endswith("blobs") for f in files]


def node_with(resource: str) -> str:
    return next(n["NodeID"] for n in ray.nodes() if n["Alive"] and resource in n["Resources"])


def test_a_custom_resource_places_the_step_on_the_node_that_has_it(kf_ray):
    assert raysteps.where.options(resources={"node2": 1}).step().run() == node_with("node2")


def test_a_demand_no_node_can_meet_is_a_clear_error_not_a_hang(kf_ray):
    with pytest.raises(workflow.WorkflowExecutionError, match=r"no node of the Ray cluster offers.*tpu"):
        raysteps.where.options(resources={"tpu": 1}).step().run()
    with pytest.raises(workflow.WorkflowExecutionError, match="CPU"):
        raysteps.where.options(num_cpus=16).step().run()


def test_a_fan_out_runs_side_by_side_across_both_nodes(kf_ray, tmp_path):
    # Three steps that each wait until all three run at once: the head node has 2 CPUs, so
    # this finishes only if Ray places one on the second node.
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    nodes = [raysteps.meet.step(str(barrier), f"s{i}", 3) for i in range(3)]
    placed = workflow.get([n.run_async() for n in nodes])
    assert len(set(placed)) == 2


def test_a_large_output_is_stored_once_by_the_worker(kf_ray, storage):
    n = 3_000_000  # above the blob threshold
    assert raysteps.digest.step(raysteps.make_bytes.step(n)).run(workflow_id="big")[0] == n
    files = blob_files(storage)
    assert len(files) == 1 and os.path.getsize(files[0]) >= n
    # Read back from storage in a fresh driver view.
    out = workflow.get_output("big", name="raysteps.make_bytes")
    assert len(out) == n


def test_large_values_travel_through_the_object_store_not_the_driver(ray_cluster, tmp_path):
    """At the executor's level: the driver receives a pointer; the next task gets the bytes
    from Ray's object store even after the stored copy is removed."""
    from keelflow.executors.ray import RayExecutor

    store = str(tmp_path / "s")
    os.makedirs(store)
    ex = RayExecutor(store)
    try:
        make = raysteps.make_bytes
        args = serialization.encode(((2_500_000,), {}), what="args", on_ref=lambda r: r.id)
        payload = make_payload("w", "make", args, {}, {})
        ex.submit(Task(1, RUNNER, "make", cloudpickle.dumps(make), payload, Demand(), "make", (), "w/blobs/"))
        first = wait_one(ex)
        assert first.error is None and len(first.result) < 10_000, "the driver got the bytes themselves"
        kind, pointer = serialization.load_record(first.result)[:2]
        assert kind == "ok" and pointer[0] == "blob"
        stored = os.path.join(store, pointer[1])
        assert os.path.getsize(stored) > 2_500_000
        os.unlink(stored)  # from here on only the object store has them

        node = raysteps.make_bytes.step(1)  # any node: its output is dependency #0
        args = serialization.encode(((node,), {}), what="args", on_ref=lambda r: r.id, on_node=lambda n: 0)
        payload = make_payload("w", "digest", args, {0: pointer}, {})
        task = Task(2, RUNNER, "digest", cloudpickle.dumps(raysteps.digest), payload, Demand(), "digest", (pointer[1],))
        ex.submit(task)
        second = wait_one(ex)
        kind, data = serialization.load_record(second.result)[:2]
        assert kind == "ok", serialization.load_record(second.result)
        assert serialization.decode(data, what="digest")[0] == 2_500_000
    finally:
        ex.shutdown()


def wait_one(ex, timeout: float = 60.0) -> Outcome:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = ex.wait(1.0)
        if got:
            assert len(got) == 1
            return got[0]
    raise AssertionError("no outcome arrived")


def test_a_ray_ref_returned_twice_is_stored_once(kf_ray, storage):
    @workflow.step
    def produce():
        return ray.put(os.urandom(2_000_000))

    @workflow.step
    def forward(ref):
        assert isinstance(ref, ray.ObjectRef) and isinstance(ref, workflow.ObjectRef)
        return ref

    @workflow.step
    def size(ref):
        return len(ray.get(ref))

    assert size.step(forward.step(produce.step())).run() == 2_000_000
    assert len(blob_files(storage)) == 1


def test_put_in_the_driver_gives_a_ray_ref(kf_ray):
    ref = workflow.put([1, 2])
    assert isinstance(ref, ray.ObjectRef)
    assert workflow.get(ref) == ray.get(ref) == [1, 2]

    @workflow.step
    def total(r):
        return sum(ray.get(r))

    assert total.step(ref).run() == 3


def test_a_worker_that_dies_is_a_system_failure_and_retried(kf_ray, tmp_path):
    marker = tmp_path / "died"
    pid = raysteps.dies_once.step(str(marker)).run(workflow_id="dies")
    assert marker.exists() and pid != os.getpid()
    assert workflow.get_status("dies") == workflow.WorkflowStatus.SUCCESSFUL


def test_a_worker_that_always_dies_fails_after_max_retries(kf_ray, tmp_path):
    @workflow.step(max_retries=1)
    def always_dies():
        os._exit(3)

    with pytest.raises(workflow.WorkflowExecutionError, match="did not finish"):
        always_dies.step().run(workflow_id="doomed")
    assert workflow.get_status("doomed") == workflow.WorkflowStatus.FAILED


def test_cancel_stops_the_running_ray_task(kf_ray, tmp_path):
    marker = tmp_path / "pid"
    ref = raysteps.sleeps.step(120, str(marker)).run_async(workflow_id="long")
    deadline = time.monotonic() + 60
    while not (marker.exists() and marker.read_text()):
        assert time.monotonic() < deadline, "the step never started"
        time.sleep(0.05)
    pid = int(marker.read_text())
    workflow.cancel("long")
    assert workflow.get_status("long") == workflow.WorkflowStatus.CANCELED
    with pytest.raises(workflow.WorkflowCancelledError):
        workflow.get(ref)
    crashsteps.wait_gone([pid], 60.0)  # the cancelled step's worker was stopped


def test_no_cluster_is_a_clear_error(tmp_path):
    code = (
        "import keelflow as w\n"
        "try:\n"
        f"    w.init({str(tmp_path / 's')!r}, executor='ray')\n"
        "except w.KeelflowError as e:\n"
        "    print('ERR', e)\n"
    )
    out = run_python(code, env={"RAY_ADDRESS": f"127.0.0.1:{free_port()}"}, timeout=120)
    assert "ERR the Ray executor found no Ray cluster" in out.stdout, out.stdout + out.stderr


def test_the_core_never_imports_ray():
    out = run_python(
        "import sys, keelflow as w\n"
        "w.init('memory://')\n"
        "assert w.step(lambda: 1).step().run() == 1\n"
        "print('ray' in sys.modules)"
    )
    assert out.stdout.strip() == "False", out.stderr


def test_a_step_may_use_ray_actors_and_tasks_inside_it(kf_ray):
    @ray.remote
    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def add(self, k: int) -> int:
            self.n += k
            return self.n

    @ray.remote
    def square(x: int) -> int:
        return x * x

    @workflow.step
    def use_ray(xs: list) -> int:
        counter = Counter.remote()
        for ref in [square.remote(x) for x in xs]:
            counter.add.remote(ray.get(ref))
        return ray.get(counter.add.remote(0))

    assert use_ray.step([1, 2, 3]).run(workflow_id="ray-inside") == 14
    assert workflow.get_output("ray-inside") == 14
