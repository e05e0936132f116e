"""keelflow workloads on its Ray executor, one per process; ``ray_cluster.py`` starts them.

    python benchmarks/kf_ray_workloads.py WORKLOAD --n N --address HOST:PORT --storage DIR
        [--repeats R] [--iterations I] [--out result.json]

The same shapes as ``compare/ray_workloads.py`` runs on Ray Workflows, on a running Ray cluster
(``keelflow.init(DIR, executor="ray")`` with ``RAY_ADDRESS`` set to ``--address``):

- chain N: ``x = inc.step(x)`` N times from 0;
- fanout N: ``gather.step([one.step(i) for i in range(N)])`` (N + 1 steps);
- cpu K: K steps of pure-Python CPU work (``--iterations``) gathered by one step, placed three
  ways: by Ray; half on each node through the custom resources ``head`` and ``node2`` that only
  one node each offers (``.options(resources={"node2": 1})``); all on ``node2``. Each step
  returns its Ray node id, pid and CPU seconds.

The steps are defined here, in ``__main__``, so they travel to Ray's workers by value, as the Ray
Workflows script's tasks do. Storage is keelflow's file storage (fsync'd appends) in ``DIR``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _bench_util import cpu_modes, rusage_report, summarize, write_result

_t = time.perf_counter()
import keelflow as workflow  # noqa: E402

IMPORT_S = time.perf_counter() - _t

#: Custom resources that only the cluster's head node / second node offers (see ray_cluster.py).
HEAD, PIN = {"head": 1}, {"node2": 1}


@workflow.step
def inc(x: int) -> int:
    return x + 1


@workflow.step
def one(i: int) -> int:
    return 1


@workflow.step
def gather(xs: list[int]) -> int:
    return sum(xs)


def _burn(iterations: int) -> int:
    """Pure-Python CPU work, the same loop as ``_bench_util.burn``."""
    acc = 0
    for i in range(iterations):
        acc = (acc * 31 + i) & 0xFFFFFFFF
    return acc


@workflow.step
def burn_step(iterations: int) -> tuple[str, int, float]:
    """CPU work; where it ran (Ray node id, pid) and the CPU seconds it took."""
    import ray

    t = time.thread_time()
    _burn(iterations)
    return ray.get_runtime_context().get_node_id(), os.getpid(), time.thread_time() - t


@workflow.step
def collect(xs: list[tuple[str, int, float]]) -> list[tuple[str, int, float]]:
    return list(xs)


def chain(n: int, tag: str) -> float:
    t = time.perf_counter()
    x = 0
    for _ in range(n):
        x = inc.step(x)
    out = x.run(workflow_id=f"chain-{n}-{tag}")
    dt = time.perf_counter() - t
    assert out == n, out
    return dt


def fanout(n: int, tag: str) -> float:
    t = time.perf_counter()
    out = gather.step([one.step(i) for i in range(n)]).run(workflow_id=f"fanout-{n}-{tag}")
    dt = time.perf_counter() - t
    assert out == n, out
    return dt


def _placed(i: int, mode: str) -> Any:
    if mode == "spread":
        return burn_step
    return burn_step.options(resources=PIN if mode == "pinned" or i % 2 else HEAD)


def cpu_run(k: int, iterations: int, tag: str, mode: str) -> dict:
    t = time.perf_counter()
    out = collect.step([_placed(i, mode).step(iterations) for i in range(k)]).run(workflow_id=f"cpu-{tag}")
    dt = time.perf_counter() - t
    assert len(out) == k, out
    cpu = sum(x[2] for x in out)
    return {"wall_s": dt, "step_cpu_s": cpu, "placements": [[x[0], x[1]] for x in out]}


def cpu_workload(k: int, iterations: int, repeats: int) -> dict:
    return cpu_modes(cpu_run, k, iterations, repeats)


def warm_up(iterations: int) -> None:
    """Untimed: start this job's workers on both nodes (Ray starts workers per node per job)."""
    assert gather.step([one.step(i) for i in range(4)]).run(workflow_id="warmup-fan") == 4
    if iterations:
        small = max(1, iterations // 10)
        collect.step([burn_step.step(small) for _ in range(4)]).run(workflow_id="warmup-cpu")
        collect.step([burn_step.options(resources=r).step(small) for r in (HEAD, PIN)]).run(workflow_id="warmup-pin")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("workload", choices=["chain", "fanout", "cpu"])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument(
        "--budget-s", type=float, default=float("inf"), help="stop repeating once the repeats so far took this long"
    )
    p.add_argument("--storage", required=True)
    p.add_argument("--address", help="the Ray cluster (default: $RAY_ADDRESS)")
    p.add_argument("--iterations", type=int, default=0, help="cpu: burn iterations per step")
    p.add_argument("--out")
    a = p.parse_args()
    if a.address:
        os.environ["RAY_ADDRESS"] = a.address

    t = time.perf_counter()
    workflow.init(a.storage, executor="ray")
    init_s = time.perf_counter() - t
    t = time.perf_counter()
    warm_up(a.iterations if a.workload == "cpu" else 0)
    result: dict = {
        "system": "keelflow",
        "executor": "ray",
        "keelflow_version": workflow.__version__,
        "workload": a.workload,
        "n": a.n,
        "import_s": round(IMPORT_S, 4),
        "init_s": round(init_s, 4),
        "warmup_s": round(time.perf_counter() - t, 4),
    }
    import ray

    result["ray_version"] = ray.__version__
    if a.workload == "cpu":
        result.update(cpu_workload(a.n, a.iterations, a.repeats))
    else:
        fn = {"chain": chain, "fanout": fanout}[a.workload]
        steps = {"chain": a.n, "fanout": a.n + 1}[a.workload]
        times = []
        for r in range(a.repeats):
            times.append(fn(a.n, str(r)))
            if sum(times) > a.budget_s:
                break
        result.update(summarize(times, steps))
    workflow.shutdown()
    result.update(rusage_report())
    write_result(a.out, result)


if __name__ == "__main__":
    main()
