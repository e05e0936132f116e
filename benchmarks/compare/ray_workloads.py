"""The benchmark workloads on Ray Workflows (Ray 2.47.1, its last release; its own virtualenv).

    benchmarks/.venvs/ray/bin/python benchmarks/compare/ray_workloads.py WORKLOAD --n N
        [--repeats R] --storage DIR [--out result.json]

The same shapes as keelflow's workloads, in Ray Workflows' 2.x idiom (``@ray.remote`` tasks,
``.bind()`` DAGs, ``workflow.run(dag, workflow_id=...)``):

- chain N: ``x = inc.bind(x)`` N times;
- fan-out N + gather: ``gather.bind(*[one.bind(i) for i in range(N)])``;
- fib(n): ``fib`` returns ``workflow.continuation(add.bind(fib.bind(n-1), fib.bind(n-2)))``;
  3 F(n+1) - 2 tasks, counted like keelflow's;
- onestep: a one-task workflow, repeated in a warm process.

Storage: ``ray.init(storage=DIR)`` (a local directory on the same disk; Ray Workflows writes its
checkpoints through pyarrow's filesystem, without fsync). Ray starts its own processes (GCS,
raylet, workers); ``ray.init`` is part of the one-step cold figure only. :data:`RAY_INIT` is
what every run passes: no dashboard (Ray Workflows does not need it, and on this machine it
adds ~12 s to ``ray.init``), the node on 127.0.0.1, and ``run.py`` sets
``RAY_USAGE_STATS_ENABLED=0`` (nothing leaves the machine).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _bench_util import RssSampler, fib_steps, fib_value, rusage_report, summarize, write_result

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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("workload", choices=["chain", "fanout", "fib", "onestep"])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument(
        "--budget-s", type=float, default=float("inf"), help="stop repeating once the repeats so far took this long"
    )
    p.add_argument("--storage", required=True)
    p.add_argument("--sample-rss", action="store_true")
    p.add_argument("--out")
    a = p.parse_args()
    # Ray's DAG code walks a chain recursively: 1,000 deep needs more than Python's default.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20 * a.n + 1000))

    sampler = RssSampler(interval=0.5).start() if a.sample_rss else None
    t = time.perf_counter()
    ray.init(storage=os.path.abspath(a.storage), **RAY_INIT)
    init_s = time.perf_counter() - t
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
    else:
        build, want, steps = {
            "chain": (chain_dag, a.n, a.n),
            "fanout": (lambda n: gather.bind(*[one.bind(i) for i in range(n)]), a.n, a.n + 1),
            "fib": (lambda n: fib.bind(n), fib_value(a.n), fib_steps(a.n)),
        }[a.workload]
        for r in range(a.repeats):
            t = time.perf_counter()
            out = workflow.run(build(a.n), workflow_id=f"{a.workload}-{a.n}-{r}")
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
