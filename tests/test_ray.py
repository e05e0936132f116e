"""What is particular to the Ray executor, on a real two-node Ray cluster (see raycluster.py).

The rest of the suite runs on Ray too, through the ``executor`` fixture's ``ray`` variant.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import cloudpickle
import pytest

import crashsteps
import keelflow as workflow
import raysteps
from conftest import TESTS, run_python
from keelflow import serialization
from keelflow.engine.task import RUNNER, make_payload
from keelflow.executors.base import Demand, Outcome, Task
from raycluster import NODE_IP, RayCluster, free_port

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


def test_a_worker_that_always_dies_leaves_the_workflow_resumable(kf_ray, tmp_path):
    @workflow.step(max_retries=1)
    def always_dies():
        os._exit(3)

    # A system failure, not the step's exception: retried without spending max_retries, then
    # the workflow stops RESUMABLE, as Ray Workflows 1.x left it (test_ray1_semantics.py).
    with pytest.raises(workflow.KeelflowError, match="RESUMABLE") as caught:
        always_dies.step().run(workflow_id="doomed")
    assert not isinstance(caught.value, workflow.WorkflowExecutionError)
    assert workflow.get_status("doomed") == workflow.WorkflowStatus.RESUMABLE


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
    address = f"127.0.0.1:{free_port()}"
    out, took = run_driver(tmp_path, {"RAY_ADDRESS": address})
    assert f"ERR the Ray executor found no Ray cluster at {address!r} (from RAY_ADDRESS" in out, out
    assert "nothing listens there" in out and "CAUSE ConnectionRefusedError" in out, out
    assert took < 20, out


# -- connection errors: what keelflow says when the cluster is missing or refuses ------------------

# A driver that reports how init(executor="ray") went: ERR and CAUSE lines, or a step's RESULT.
DRIVER = """
import keelflow as w
try:
    w.init({storage!r}, executor="ray")
except w.KeelflowError as e:
    print("ERR", e)
    print("CAUSE", type(e.__cause__).__name__)
else:
    print("RESULT", w.step(lambda: 41).step().run())
"""


def run_driver(
    tmp_path, env: dict[str, str], code: str = DRIVER, own_pids: bool = False, timeout: float = 90
) -> tuple[str, float]:
    """Run a driver in a fresh interpreter, bounded in time (a hang fails the test): its output,
    and how long it took. Its HOME is empty and no RAY_ADDRESS or RAY_AUTH_* comes from here, so
    only ``env`` says where the cluster is and how to authenticate. ``own_pids``: in a PID
    namespace of its own, where Ray's lookup of the Ray nodes running on this machine finds none."""
    home = tmp_path / "driver-home"
    home.mkdir(exist_ok=True)
    full = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("RAY_AUTH_")}
    full.update(HOME=str(home), PYTHONPATH=os.pathsep.join([str(TESTS.parent / "src"), str(TESTS)]))
    full.update(env)
    cmd = [sys.executable, "-c", code.format(storage=str(tmp_path / "s"))]
    if own_pids:
        cmd = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *cmd]
    start = time.monotonic()
    try:
        out = subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"the driver hung for {timeout} s: {e.stdout!r} {e.stderr!r}") from None
    return out.stdout + out.stderr, time.monotonic() - start


def pid_namespaces() -> bool:
    cmd = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "true"]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def test_a_stale_ray_current_cluster_file_is_a_clear_error_not_a_hang(tmp_path):
    """A killed `ray start` leaves its address in <temp dir>/ray/ray_current_cluster, which
    "auto" follows. Ray reads that file under $RAY_TMPDIR, so a temp dir stands in for /tmp."""
    from ray._private import services

    stale = f"127.0.0.1:{free_port()}"  # nothing listens there
    record = tmp_path / "raytmp" / "ray" / "ray_current_cluster"
    record.parent.mkdir(parents=True)
    record.write_text(stale)
    # Ray's "auto" prefers a Ray node running on this machine (this session's cluster, say) to
    # the file: the driver runs where it sees no other process.
    own_pids = pid_namespaces()
    if not own_pids and services.find_gcs_addresses():
        pytest.skip("a Ray node runs on this machine and no PID namespace hides it (`unshare` fails)")
    # Checked against Ray's own lookup, in the same driver.
    code = (
        "from ray._private import services\n"
        "from keelflow.executors.ray import resolve_address\n"
        "print('RAY', services.get_ray_address_from_environment('auto', None))\n"
        "print('KEELFLOW', resolve_address()[0])\n" + DRIVER
    )
    out, took = run_driver(tmp_path, {"RAY_TMPDIR": str(tmp_path / "raytmp")}, code, own_pids=own_pids)
    assert f"RAY {stale}\nKEELFLOW {stale}\n" in out, out
    assert f"ERR the Ray executor found no Ray cluster at {stale!r} (from the file {record}" in out, out
    assert "nothing listens there" in out and "delete that file" in out, out
    assert "CAUSE ConnectionRefusedError" in out, out
    assert took < 20, out


def test_auto_resolves_as_ray_does(tmp_path, monkeypatch, ray_cluster):
    """keelflow's resolve_address and Ray's own lookup agree, here, with this session's cluster
    running, for a given address, RAY_ADDRESS, and "auto" (the file, or a node running here)."""
    from ray._private import services

    from keelflow.executors.ray import resolve_address

    record = tmp_path / "ray" / "ray_current_cluster"
    record.parent.mkdir(parents=True)
    record.write_text(f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    for address, env in [("10.1.2.3:6379", None), (None, "10.1.2.3:6379"), (None, None), (None, "auto")]:
        if env is None:
            monkeypatch.delenv("RAY_ADDRESS", raising=False)
        else:
            monkeypatch.setenv("RAY_ADDRESS", env)
        ray_says = services.get_ray_address_from_environment(address or "auto", None)
        assert resolve_address(address)[0] == ray_says
    assert ray_says in services.find_gcs_addresses() or ray_says == record.read_text()


def test_something_else_at_the_address_is_a_clear_error_not_a_hang(tmp_path):
    """A server that is not Ray's (here: one that answers HTTP/1) would keep Ray retrying for
    many minutes."""
    server = socket.create_server((NODE_IP, 0))  # Ray dials 127.0.0.1 as this machine's own address
    address = f"{NODE_IP}:{server.getsockname()[1]}"

    def answer() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\nnot ray\r\n")

    threading.Thread(target=answer, daemon=True).start()
    try:
        out, took = run_driver(tmp_path, {"RAY_ADDRESS": address})
    finally:
        server.close()
    assert f"ERR the Ray executor found no Ray cluster at {address!r} (from RAY_ADDRESS)" in out, out
    assert "something listens there but it is not a Ray cluster (it answered b'HTTP/1.0 400" in out, out
    assert took < 20, out


def test_a_cluster_that_refuses_the_connection_is_an_error_that_says_what_ray_said(tmp_path):
    """A real cluster with Ray's token authentication on, and a driver without the token."""
    token = "kf0test0token0" + "ab" * 16
    cluster = RayCluster(nodes=1, env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
    try:
        cluster.start()
        out, took = run_driver(tmp_path, {"RAY_ADDRESS": cluster.address})
        assert (
            f"ERR the Ray executor could not connect to the Ray cluster at {cluster.address!r} (from RAY_ADDRESS): "
            "a cluster there refused or failed the connection: ConnectionError: " in out
        ), out
        assert "ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken" in out, out
        assert "found no Ray cluster" not in out and "CAUSE ConnectionError" in out, out
        assert took < 90, out  # Ray retries for about 20 s
        # The same driver with the token is welcome: it was the token, not the cluster.
        out, _ = run_driver(
            tmp_path, {"RAY_ADDRESS": cluster.address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
        )
        assert "RESULT 41" in out, out
    finally:
        cluster.stop()


def test_the_test_cluster_does_not_depend_on_the_users_home(tmp_path, monkeypatch):
    """With a token in ~/.ray/auth_token, Ray 2.60's `ray start` turns token authentication on,
    and a driver given the address (as every driver in these tests is) has no token to show."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("kf0stray0token0" + "cd" * 16)
    monkeypatch.setenv("HOME", str(home))
    cluster = RayCluster(nodes=1)
    try:
        cluster.start()
        out, _ = run_driver(tmp_path, {"RAY_ADDRESS": cluster.address, "HOME": str(home)})
        assert "RESULT 41" in out, out
    finally:
        cluster.stop()


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
