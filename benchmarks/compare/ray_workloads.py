"""The benchmark workloads on Ray Workflows (Ray 2.47.1, its last release; its own virtualenv).

    benchmarks/.venvs/ray/bin/python benchmarks/compare/ray_workloads.py WORKLOAD --n N
        [--repeats R] --storage DIR [--out result.json]
    ... WORKLOAD --n N --address HOST:PORT [--iterations I] [--out result.json]   # on a cluster

The same shapes as keelflow's workloads, in Ray Workflows' 2.x idiom (``@ray.remote`` tasks,
``.bind()`` DAGs, ``workflow.run(dag, workflow_id=...)``):

- chain N: ``x = inc.bind(x)`` N times;
- fan-out N + gather: ``gather.bind(*[one.bind(i) for i in range(N)])``;
- fib(n): ``fib`` returns ``workflow.continuation(add.bind(fib.bind(n-1), fib.bind(n-2)))``;
  3 F(n+1) - 2 tasks, counted like keelflow's;
- onestep: a one-task workflow, repeated in a warm process;
- cpu K (on a cluster, ``--address``): K tasks of pure-Python CPU work (``--iterations``) gathered
  by one task, placed three ways: by Ray; half on each node through the custom resources
  ``head`` and ``node2`` that only one node each offers; all on ``node2``. Each task returns
  its node id, pid and CPU seconds (see ray_cluster.py).

Storage: ``ray.init(storage=DIR)`` (a local directory on the same disk; Ray Workflows writes its
checkpoints through pyarrow's filesystem, without fsync). Ray starts its own processes (GCS,
raylet, workers); ``ray.init`` is part of the one-step cold figure only. :data:`RAY_INIT` is
what every run passes: no dashboard (Ray Workflows does not need it, and on this machine it
adds ~12 s to ``ray.init``), the node on 127.0.0.1, and ``run.py`` sets
``RAY_USAGE_STATS_ENABLED=0`` (nothing leaves the machine).

With ``--address`` the script joins a running cluster instead (``ray_cluster.py`` starts it);
storage is then the cluster's, given to ``ray start --storage`` (Ray 2.47 refuses ``storage=``
from a driver that connects to a cluster), and ``--storage`` is not used.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _bench_util import RssSampler, cpu_modes, fib_steps, fib_value, rusage_report, summarize, write_result

_t = time.perf_counter()
import ray  # noqa: E402
from ray import workflow  # noqa: E402

IMPORT_S = time.perf_counter() - _t


@ray.remote
def inc(x: int) -> int:
    return x + 1


@ray.remote
def one(i: int) -> int:
    return 1


@ray.remote
def gather(*xs: int) -> int:
    return sum(xs)


@ray.remote
def add(a: int, b: int) -> int:
    return a + b


def _burn(iterations: int) -> int:
    """Pure-Python CPU work, the same loop as ``_bench_util.burn`` (defined here so it travels
    with the task by value)."""
    acc = 0
    for i in range(iterations):
        acc = (acc * 31 + i) & 0xFFFFFFFF
    return acc


@ray.remote
def burn_step(iterations: int) -> tuple[str, int, float]:
    """CPU work; where it ran (node id, pid) and the CPU seconds it took."""
    t = time.thread_time()
    _burn(iterations)
    return ray.get_runtime_context().get_node_id(), os.getpid(), time.thread_time() - t


@ray.remote
def collect(*xs: tuple[str, int, float]) -> list[tuple[str, int, float]]:
    return list(xs)


@ray.remote
def fib(n: int):  # type: ignore[no-untyped-def]
    if n < 2:
        return n
    return workflow.continuation(add.bind(fib.bind(n - 1), fib.bind(n - 2)))


#: Keyword arguments of every ``ray.init`` here (the cold one-step run in run.py uses the same).
RAY_INIT = {"include_dashboard": False, "_node_ip_address": "127.0.0.1", "log_to_driver": False}


def chain_dag(n: int):  # type: ignore[no-untyped-def]
    x = 0
    for _ in range(n):
        x = inc.bind(x)
    return x


#: Custom resources that only the cluster's head node / second node offers (see ray_cluster.py).
HEAD, PIN = {"head": 1}, {"node2": 1}
#: Appended to workflow ids on a cluster, where every process shares the cluster's storage
#: (a finished workflow's id would return its stored output instead of running again).
_RUN = ""


def _placed(i: int, mode: str):  # type: ignore[no-untyped-def]
    if mode == "spread":
        return burn_step
    return burn_step.options(resources=PIN if mode == "pinned" or i % 2 else HEAD)


def cpu_run(k: int, iterations: int, tag: str, mode: str) -> dict:
    t = time.perf_counter()
    steps = [_placed(i, mode).bind(iterations) for i in range(k)]
    out = workflow.run(collect.bind(*steps), workflow_id=f"cpu-{tag}{_RUN}")
    dt = time.perf_counter() - t
    assert len(out) == k, out
    cpu = sum(x[2] for x in out)
    return {"wall_s": dt, "step_cpu_s": cpu, "placements": [[x[0], x[1]] for x in out]}


def cpu_workload(k: int, iterations: int, repeats: int) -> dict:
    return cpu_modes(cpu_run, k, iterations, repeats)


def cluster_warm_up(iterations: int) -> None:
    """Untimed: start this job's workers on both nodes (a worker per node per job)."""
    assert workflow.run(gather.bind(*[one.bind(i) for i in range(4)]), workflow_id=f"warmup-fan{_RUN}") == 4
    if iterations:
        small = max(1, iterations // 10)
        workflow.run(collect.bind(*[burn_step.bind(small) for _ in range(4)]), workflow_id=f"warmup-cpu{_RUN}")
        pinned = [burn_step.options(resources=r).bind(small) for r in (HEAD, PIN)]
        workflow.run(collect.bind(*pinned), workflow_id=f"warmup-pin{_RUN}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("workload", choices=["chain", "fanout", "fib", "onestep", "cpu"])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument(
        "--budget-s", type=float, default=float("inf"), help="stop repeating once the repeats so far took this long"
    )
    p.add_argument("--storage", help="the storage directory (local mode; a cluster has its own)")
    p.add_argument("--address", help="join this running Ray cluster instead of starting Ray in-process")
    p.add_argument("--iterations", type=int, default=0, help="cpu: burn iterations per task")
    p.add_argument("--sample-rss", action="store_true")
    p.add_argument("--out")
    a = p.parse_args()
    if not a.address and not a.storage:
        p.error("--storage is required without --address")
    if a.workload == "cpu" and not a.address:
        p.error("cpu runs on a cluster: give --address")
    # Ray's DAG code walks a chain recursively: 1,000 deep needs more than Python's default.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20 * a.n + 1000))

    sampler = RssSampler(interval=0.5).start() if a.sample_rss else None
    global _RUN
    t = time.perf_counter()
    if a.address:
        _RUN = f"-{os.getpid()}"
        ray.init(address=a.address, log_to_driver=False)
    else:
        ray.init(storage=os.path.abspath(a.storage), **RAY_INIT)
    init_s = time.perf_counter() - t
    if a.address:
        cluster_warm_up(a.iterations if a.workload == "cpu" else 0)
    else:
        assert workflow.run(inc.bind(0), workflow_id="warmup") == 1  # warm-up (untimed)

    result: dict = {
        "system": "ray-workflows",
        "ray_version": ray.__version__,
        "workload": a.workload,
        "n": a.n,
        "import_s": round(IMPORT_S, 4),
        "ray_init_s": round(init_s, 4),
    }
    times = []
    if a.workload == "onestep":
        for i in range(10):
            workflow.run(inc.bind(1), workflow_id=f"one-w{i}")
        for i in range(a.n):
            t = time.perf_counter()
            assert workflow.run(inc.bind(1), workflow_id=f"one-{i}") == 2
            times.append(time.perf_counter() - t)
        result.update(summarize(times, 1), count=a.n)
    elif a.workload == "cpu":
        result.update(cpu_workload(a.n, a.iterations, a.repeats))
    else:
        build, want, steps = {
            "chain": (chain_dag, a.n, a.n),
            "fanout": (lambda n: gather.bind(*[one.bind(i) for i in range(n)]), a.n, a.n + 1),
            "fib": (lambda n: fib.bind(n), fib_value(a.n), fib_steps(a.n)),
        }[a.workload]
        for r in range(a.repeats):
            t = time.perf_counter()
            out = workflow.run(build(a.n), workflow_id=f"{a.workload}-{a.n}-{r}{_RUN}")
            times.append(time.perf_counter() - t)
            assert out == want, out
            if sum(times) > a.budget_s:
                break
        result.update(summarize(times, steps))
    if sampler is not None:
        result.update(sampler.stop())
    ray.shutdown()
    result.update(rusage_report())
    write_result(a.out, result)


if __name__ == "__main__":
    main()
