"""Tests for the process and thread executors: real workers, no mocks."""

from __future__ import annotations

import itertools
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import _executor_runners as r
from conftest import wait_until
from keelflow.executors.base import Demand, Executor, Outcome, Task
from keelflow.executors.local import ProcessExecutor
from keelflow.executors.thread import ThreadExecutor

RUNNER = "_executor_runners:call"
SRC = str(Path(__file__).resolve().parents[1] / "src")
TESTS = str(Path(__file__).resolve().parent)
_ids = itertools.count(1)
ONE_CPU = Demand()


def make_task(func: Any, *args: Any, demand: Demand = ONE_CPU, label: str = "", key: str = "") -> Task:
    key = key or f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', repr(func))}"
    return Task(next(_ids), RUNNER, key, pickle.dumps(func), pickle.dumps(args), demand, label)


def collect(ex: Executor, n: int, timeout: float = 20.0) -> dict[int, Outcome]:
    """Wait for ``n`` outcomes (failing the test after ``timeout``)."""
    got: dict[int, Outcome] = {}
    deadline = time.monotonic() + timeout
    while len(got) < n:
        assert time.monotonic() < deadline, f"only {len(got)} of {n} outcomes arrived"
        for o in ex.wait(0.5):
            assert o.task_id not in got, "two outcomes for one task"
            got[o.task_id] = o
    return got


def value(o: Outcome) -> Any:
    assert o.error is None, o.error
    assert o.result is not None
    return pickle.loads(o.result)


def run_all(ex: Executor, tasks: list[Task]) -> list[Outcome]:
    for t in tasks:
        ex.submit(t)
    got = collect(ex, len(tasks))
    return [got[t.task_id] for t in tasks]


def max_overlap(directory: Path) -> float:
    """Largest total weight of recorded [start, end] windows open at one instant."""
    events = []
    for f in directory.iterdir():
        start, end, _, weight = f.read_text().split()
        events += [(float(start), 1, float(weight)), (float(end), 0, -float(weight))]
    level = peak = 0.0
    for _, _, delta in sorted(events):  # at equal times, ends (0) sort before starts (1)
        level += delta
        peak = max(peak, level)
    return peak


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def read_pid(path: Path) -> int:
    assert wait_until(path.exists), f"{path} never appeared"
    return int(path.read_text())


@pytest.fixture
def made() -> Any:
    executors: list[Executor] = []
    yield executors
    for ex in executors:
        ex.shutdown()


@pytest.fixture(params=["local", "thread"])
def make(request: pytest.FixtureRequest, made: list[Executor]) -> Callable[..., Executor]:
    cls = {"local": ProcessExecutor, "thread": ThreadExecutor}[request.param]

    def factory(**kwargs: Any) -> Executor:
        made.append(ex := cls(**kwargs))
        return ex

    return factory


@pytest.fixture(params=["local", "thread", "ray"])
def make_any(request: pytest.FixtureRequest, made: list[Executor]) -> Callable[..., Executor]:
    """For the parts of the contract that do not depend on capacity, which on Ray is the
    cluster's (``num_cpus`` is not passed to it)."""
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
        from keelflow.executors.ray import RayExecutor

        def ray_factory(**kwargs: Any) -> Executor:
            made.append(ex := RayExecutor(None))
            return ex

        return ray_factory
    cls = {"local": ProcessExecutor, "thread": ThreadExecutor}[request.param]

    def factory(**kwargs: Any) -> Executor:
        made.append(ex := cls(**kwargs))
        return ex

    return factory


@pytest.fixture
def make_process(made: list[Executor]) -> Callable[..., ProcessExecutor]:
    def factory(**kwargs: Any) -> ProcessExecutor:
        made.append(ex := ProcessExecutor(**kwargs))
        return ex

    return factory


# -- the shared contract -------------------------------------------------------------------


def test_results_come_back(make_any: Callable[..., Executor]) -> None:
    ex = make_any(num_cpus=2)
    tasks = [make_task(r.echo, i) for i in range(20)]
    assert [value(o) for o in run_all(ex, tasks)] == list(range(20))


def test_a_flood_of_trivial_tasks_streams(make: Callable[..., Executor]) -> None:
    ex = make(num_cpus=2)
    tasks = [make_task(r.echo, i) for i in range(3000)]
    assert [value(o) for o in run_all(ex, tasks)] == list(range(3000))


def test_large_payloads_and_results(make_any: Callable[..., Executor]) -> None:
    ex = make_any(num_cpus=2)
    big = b"y" * 5_000_000
    (o,) = run_all(ex, [make_task(len, big)])
    assert value(o) == len(big)
    # Many quick tasks with big results: pipelined sends must not deadlock with big replies.
    outcomes = run_all(ex, [make_task(r.blob_of, 1_000_000 + i) for i in range(60)])
    assert [len(value(o)) for o in outcomes] == [1_000_000 + i for i in range(60)]


@pytest.mark.parametrize(
    ("kwargs", "demands", "resource", "limit"),
    [
        ({"num_cpus": 3}, [Demand(cpus=1), Demand(cpus=2)], "cpus", 3),
        ({"num_cpus": 2, "resources": {"db": 1}}, [Demand(cpus=0, custom=(("db", 1),))], "db", 1),
        ({"num_cpus": 2, "num_gpus": 1}, [Demand(cpus=0, gpus=0.5)], "gpus", 1),
    ],
    ids=["cpus", "custom", "gpus"],
)
def test_capacity_is_never_exceeded(
    make: Callable[..., Executor],
    tmp_path: Path,
    kwargs: dict[str, Any],
    demands: list[Demand],
    resource: str,
    limit: float,
) -> None:
    ex = make(**kwargs)
    tasks = []
    for i in range(6):
        d = demands[i % len(demands)]
        weight = {"cpus": d.cpus, "gpus": d.gpus}.get(resource) or dict(d.custom)[resource]
        tasks.append(make_task(r.record, str(tmp_path), f"t{i}", 0.08, weight, demand=d))
    for o in run_all(ex, tasks):
        value(o)
    assert max_overlap(tmp_path) <= limit


def test_zero_cpu_tasks_are_capped(made: list[Executor], tmp_path: Path) -> None:
    # The accounting is shared; only the thread executor is used because 33+ worker processes
    # would make this test slow.
    made.append(ex := ThreadExecutor(num_cpus=1))
    tasks = [make_task(r.record, str(tmp_path), f"t{i}", 0.2, demand=Demand(cpus=0)) for i in range(40)]
    for o in run_all(ex, tasks):
        value(o)
    assert max_overlap(tmp_path) <= 32


@pytest.mark.parametrize(
    ("demand", "words"),
    [
        (Demand(cpus=4), ["4 CPUs", "has 2", "num_cpus"]),
        (Demand(cpus=0, gpus=1), ["1 GPU", "has 0", "resources={'GPU'"]),
        (Demand(cpus=1, custom=(("db", 1),)), ["'db'", "resources"]),
    ],
    ids=["cpus", "gpus", "custom"],
)
def test_infeasible_demand_is_an_error_outcome(make: Callable[..., Executor], demand: Demand, words: list[str]) -> None:
    ex = make(num_cpus=2)
    message = ex.check_demand(demand)
    assert message is not None and all(w in message for w in words), message
    assert ex.check_demand(Demand(cpus=2)) is None
    task = make_task(r.echo, 1, demand=demand)
    ex.submit(task)
    (o,) = ex.wait(5)
    assert (o.task_id, o.error, o.not_started, o.result) == (task.task_id, message, True, None)


def test_fifo_order(make: Callable[..., Executor], tmp_path: Path) -> None:
    ex = make(num_cpus=1)
    log = tmp_path / "log"
    for o in run_all(ex, [make_task(r.append_line, str(log), str(i)) for i in range(12)]):
        value(o)
    assert log.read_text().split() == [str(i) for i in range(12)]


def test_a_task_that_does_not_fit_does_not_block_later_ones(make: Callable[..., Executor], tmp_path: Path) -> None:
    ex = make(num_cpus=2)
    marker = str(tmp_path / "c-ran")
    a = make_task(r.wait_for_file, marker, 15.0, demand=Demand(cpus=1))
    b = make_task(r.echo, "b", demand=Demand(cpus=2))  # must wait for a
    c = make_task(r.touch, marker, demand=Demand(cpus=1))  # fits beside a: a only ends after c
    outcomes = run_all(ex, [a, b, c])
    assert [value(o) for o in outcomes] == [True, "b", None]


def test_runner_errors_are_reported(make_any: Callable[..., Executor]) -> None:
    ex = make_any(num_cpus=1)
    broken = make_task(r.echo, 1)
    broken.runner = "_executor_runners:broken_runner"
    bad_blob = make_task(r.echo, 2, key="bad-blob")
    bad_blob.func_blob = b"not a pickle"
    missing = make_task(r.echo, 3)
    missing.runner = "_executor_runners:nope"
    o1, o2, o3, o4 = run_all(ex, [broken, bad_blob, missing, make_task(r.echo, 4)])
    assert o1.error is not None and o1.error.startswith("runner raised") and "runner bug" in o1.error
    assert o2.error is not None and "could not unpickle" in o2.error
    assert o3.error is not None and "could not import runner" in o3.error
    assert value(o4) == 4


def test_function_blob_is_loaded_once_per_worker(make: Callable[..., Executor]) -> None:
    ex = make(num_cpus=2)
    func = r.CountingFunc(uuid.uuid4().hex)
    tasks = [make_task(func, key=func.token) for _ in range(40)]
    results = [value(o) for o in run_all(ex, tasks)]
    assert {loads for _, loads in results} == {1}


def test_cancel_drops_pending_tasks(make: Callable[..., Executor], tmp_path: Path) -> None:
    ex = make(num_cpus=1)
    release = str(tmp_path / "release")
    blocker = make_task(r.wait_for_file, release, 15.0)
    pending = [make_task(r.echo, i) for i in range(5)]
    for t in [blocker, *pending]:
        ex.submit(t)
    ex.cancel([t.task_id for t in pending[1:4]])
    r.touch(release)
    got = collect(ex, 3)
    assert sorted(got) == sorted([blocker.task_id, pending[0].task_id, pending[4].task_id])
    assert ex.wait(0.2) == []


def test_cancel_of_a_running_task_gives_no_outcome(make_any: Callable[..., Executor], tmp_path: Path) -> None:
    ex = make_any(num_cpus=1)
    release = tmp_path / "release"
    started = tmp_path / "started"
    running = make_task(r.wait_for_file, str(release), 15.0)
    ex.submit(make_task(r.touch, str(started)))
    ex.submit(running)
    collect(ex, 1)
    ex.cancel([running.task_id])
    release.touch()
    after = make_task(r.echo, "after")
    ex.submit(after)
    got = collect(ex, 1)
    assert list(got) == [after.task_id]
    assert ex.wait(0.3) == []


def test_wake_unblocks_a_wait(make_any: Callable[..., Executor]) -> None:
    ex = make_any(num_cpus=1)
    ex.wake()
    assert ex.wait(None) == []  # a wake before the wait counts
    returned: list[list[Outcome]] = []
    waiter = threading.Thread(target=lambda: returned.append(ex.wait(None)), daemon=True)
    waiter.start()
    time.sleep(0.1)
    ex.wake()
    waiter.join(10)
    assert returned == [[]]


def test_shutdown_is_idempotent(make_any: Callable[..., Executor]) -> None:
    ex = make_any(num_cpus=1)
    run_all(ex, [make_task(r.echo, 1)])
    ex.shutdown()
    ex.shutdown()
    ex.wake()
    with pytest.raises(RuntimeError):
        ex.submit(make_task(r.echo, 2))


# -- worker processes ----------------------------------------------------------------------


def test_cpu_bound_tasks_run_in_parallel(make_process: Callable[..., ProcessExecutor], tmp_path: Path) -> None:
    ex = make_process(num_cpus=2)
    # Each task spins until it sees the other start: they can only both finish in time if
    # they ran at once.
    tasks = [make_task(r.spin_until_seen, str(tmp_path), f"t{i}", f"t{1 - i}", 10) for i in (0, 1)]
    (pid0, saw0), (pid1, saw1) = [value(o) for o in run_all(ex, tasks)]
    assert saw0 and saw1, "a task waited for the other in vain"
    assert pid0 != pid1 and os.getpid() not in (pid0, pid1)
    (s0, e0), (s1, e1) = (map(float, (tmp_path / f"t{i}").read_text().split()[:2]) for i in (0, 1))
    assert s0 < e1 and s1 < e0


def test_killed_worker_fails_its_task_and_requeues_the_rest(
    make_process: Callable[..., ProcessExecutor], tmp_path: Path
) -> None:
    ex = make_process(num_cpus=1)
    # Teach the executor that this function is quick, so later tasks queue behind each other.
    key = make_task(r.pid_then_sleep).func_key
    for _ in range(50):
        run_all(ex, [make_task(r.pid_then_sleep, "", 0) for _ in range(20)])
        if ex._ewma[key] < 0.001:
            break
    pid_file = tmp_path / "pid"
    doomed = make_task(r.pid_then_sleep, str(pid_file), 30, label="doomed_step")
    queued = [make_task(r.pid_then_sleep, "", 0) for _ in range(3)]
    for t in [doomed, *queued]:
        ex.submit(t)
    pid = read_pid(pid_file)
    assert len(ex._workers[pid].inflight) == 4  # the three are queued on the same worker
    os.kill(pid, signal.SIGKILL)
    got = collect(ex, 4)
    error = got[doomed.task_id].error
    assert error is not None and f"worker process {pid} died" in error and "doomed_step" in error
    assert "exit code -9" in error
    assert all(value(got[t.task_id]) != pid for t in queued)
    assert not got[doomed.task_id].not_started


def test_step_that_exits_the_process(make_process: Callable[..., ProcessExecutor]) -> None:
    ex = make_process(num_cpus=1)
    crash = make_task(r.exit_now, 3, label="crasher")
    o_crash, o_after = run_all(ex, [crash, make_task(r.echo, "still works")])
    assert o_crash.error is not None and "exit code 3" in o_crash.error and "crasher" in o_crash.error
    assert value(o_after) == "still works"


def test_worker_death_is_seen_even_if_its_child_lives_on(make_process: Callable[..., ProcessExecutor]) -> None:
    ex = make_process(num_cpus=1)
    (o,) = run_all(ex, [make_task(r.leave_a_child_and_die, 5)])
    assert o.error is not None and "exit code 5" in o.error


def test_cancel_kills_the_running_worker(make_process: Callable[..., ProcessExecutor], tmp_path: Path) -> None:
    ex = make_process(num_cpus=1)
    pid_file = tmp_path / "pid"
    running = make_task(r.pid_then_sleep, str(pid_file), 30)
    ex.submit(running)
    pid = read_pid(pid_file)
    ex.cancel([running.task_id])
    assert wait_until(lambda: not alive(pid))
    assert ex.wait(0.3) == []
    (o,) = run_all(ex, [make_task(r.echo, "next")])
    assert value(o) == "next"


def test_workers_are_reused_and_stopped_by_shutdown(make_process: Callable[..., ProcessExecutor]) -> None:
    ex = make_process(num_cpus=2)
    pids = {value(o) for o in run_all(ex, [make_task(os.getpid) for _ in range(30)])}
    assert 1 <= len(pids) <= 2
    pids |= {value(o) for o in run_all(ex, [make_task(os.getpid) for _ in range(30)])}
    assert len(pids) <= 2
    ex.shutdown()
    assert wait_until(lambda: not any(alive(p) for p in pids), 5)


def _run_script(code: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, TESTS])}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, stdout=subprocess.DEVNULL, **kwargs)


def test_worker_exits_when_the_parent_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    parent = _run_script(f"""
        import pickle, time
        import _executor_runners as r
        from keelflow.executors.base import Task
        from keelflow.executors.local import ProcessExecutor
        ex = ProcessExecutor(num_cpus=1)
        args = pickle.dumps(({str(pid_file)!r}, 60))
        ex.submit(Task(1, "_executor_runners:call", "k", pickle.dumps(r.pid_then_sleep), args))
        ex.wait(60)
    """)
    try:
        pid = read_pid(pid_file)
        parent.kill()
        parent.wait()
        assert wait_until(lambda: not alive(pid), 5), "worker outlived its parent"
    finally:
        parent.kill()
        parent.wait()
        if "pid" in locals() and alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_script_without_main_guard_works_and_exits(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent("""
        import os, pickle
        from keelflow.executors.base import Task
        from keelflow.executors.local import ProcessExecutor

        ex = ProcessExecutor(num_cpus=2)
        ex.submit(Task(1, "_executor_runners:call", "sq", pickle.dumps(os.getpid), pickle.dumps(())))
        outcomes = []
        while not outcomes:
            outcomes = ex.wait(30)
        print("worker", pickle.loads(outcomes[0].result), "parent", os.getpid(), flush=True)
        # No shutdown: the executor must not keep the interpreter alive or leave workers.
    """)
    )
    proc = subprocess.run(
        [sys.executable, str(script)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([SRC, TESTS])},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _, worker, _, parent = proc.stdout.split()
    assert worker != parent
    assert wait_until(lambda: not alive(int(worker)), 5)


def test_sys_path_and_env_reach_the_worker(
    make_process: Callable[..., ProcessExecutor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"kf_tmp_{uuid.uuid4().hex}"
    (tmp_path / f"{module}.py").write_text("import os\ndef where():\n    return os.getpid(), __file__\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    where = __import__(module).where
    ex = make_process(num_cpus=1, env={"KF_TEST_VAR": "hello"})
    o1, o2 = run_all(ex, [make_task(where), make_task(r.getenv, "KF_TEST_VAR")])
    pid, path = value(o1)
    assert pid != os.getpid() and Path(path).parent == tmp_path
    assert value(o2) == "hello"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_workers_do_not_inherit_file_descriptors(make_process: Callable[..., ProcessExecutor], tmp_path: Path) -> None:
    fd = os.open(tmp_path / "secret", os.O_CREAT | os.O_RDWR)
    try:
        os.set_inheritable(fd, True)
        st = os.fstat(fd)
        ex = make_process(num_cpus=1)
        (o,) = run_all(ex, [make_task(r.open_files)])
        assert (st.st_dev, st.st_ino) not in {tuple(x) for x in value(o)}
    finally:
        os.close(fd)
