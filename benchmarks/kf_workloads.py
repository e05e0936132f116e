"""One keelflow workload, run in this (fresh) process; ``run.py`` starts one process each.

    python benchmarks/kf_workloads.py WORKLOAD --n N [--repeats R] --storage DIR
        [--executor local|thread] [--num-cpus C] [--out result.json]

Prints (or writes to ``--out``) a JSON object. Timed regions cover building the DAG and
``.run()`` until the output is back; storage is the directory given (durable, fsync'd:
keelflow's default file storage).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

_T_PROCESS = time.perf_counter()  # as early as this script can see

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _bench_util import (  # noqa: E402
    RssSampler,
    fib_steps,
    fib_value,
    rusage_report,
    summarize,
    write_result,
)

_t = time.perf_counter()
import keelflow as workflow  # noqa: E402

IMPORT_S = time.perf_counter() - _t

import kf_steps as s  # noqa: E402


def _count_nodes(workflow_id: str) -> int | None:
    """Steps keelflow recorded for a finished workflow (a cross-check; internal API)."""
    try:
        from keelflow.api import _runtime, load

        loaded = load(_runtime().storage, workflow_id)
        return None if loaded is None else len(loaded[0].nodes)
    except Exception:
        return None


def _warm_up(tag: str) -> None:
    """Start the executor's workers and import the step module in them (untimed)."""
    k = max(2, os.cpu_count() or 1)
    s.gather.step([s.one.step(i) for i in range(2 * k)]).run(workflow_id=f"warmup-{tag}")


def chain(n: int, tag: str) -> float:
    t = time.perf_counter()
    x = 0
    for _ in range(n):
        x = s.inc.step(x)
    out = x.run(workflow_id=f"chain-{n}-{tag}")
    dt = time.perf_counter() - t
    assert out == n, out
    return dt


def fanout(n: int, tag: str) -> float:
    t = time.perf_counter()
    out = s.gather.step([s.one.step(i) for i in range(n)]).run(workflow_id=f"fanout-{n}-{tag}")
    dt = time.perf_counter() - t
    assert out == n, out
    return dt


def fib(n: int, tag: str) -> float:
    t = time.perf_counter()
    out = s.fib.step(n).run(workflow_id=f"fib-{n}-{tag}")
    dt = time.perf_counter() - t
    assert out == fib_value(n), out
    return dt


def onestep(n: int, tag: str) -> float:
    t = time.perf_counter()
    out = s.inc.step(1).run(workflow_id=f"one-{tag}")
    dt = time.perf_counter() - t
    assert out == 2
    return dt


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("workload", choices=["chain", "fanout", "fib", "onestep", "resume-kill", "resume", "cpu"])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument(
        "--budget-s", type=float, default=float("inf"), help="stop repeating once the repeats so far took this long"
    )
    p.add_argument("--storage", required=True)
    p.add_argument("--executor", default="local")
    p.add_argument("--num-cpus", type=float, default=None)
    p.add_argument("--iterations", type=int, default=0, help="cpu: burn iterations per step")
    p.add_argument("--sample-rss", action="store_true", help="sample driver+worker RSS every 0.1 s")
    p.add_argument("--out")
    a = p.parse_args()

    sampler = RssSampler().start() if a.sample_rss else None
    result: dict = {"workload": a.workload, "n": a.n, "executor": a.executor, "import_s": round(IMPORT_S, 4)}

    if a.workload == "resume":
        # A fresh process continues the killed chain: time resume() alone.
        t = time.perf_counter()
        workflow.init(a.storage, executor=a.executor, num_cpus=a.num_cpus)
        t_init = time.perf_counter() - t
        t = time.perf_counter()
        out = workflow.resume("resume-chain")
        dt = time.perf_counter() - t
        assert out == a.n, out
        result.update(
            resume_s=round(dt, 4),
            init_s=round(t_init, 4),
            process_to_result_s=round(time.perf_counter() - _T_PROCESS, 4),
            status=str(workflow.get_status("resume-chain")),
        )
    elif a.workload == "resume-kill":
        os.environ["KF_BENCH_KILL_AT"] = str(a.n - 1)
        os.environ["KF_BENCH_DRIVER_PID"] = str(os.getpid())
        workflow.init(a.storage, executor=a.executor, num_cpus=a.num_cpus)
        x = 0
        for _ in range(a.n):
            x = s.inc_or_die.step(x)
        t = time.perf_counter()
        x.run(workflow_id="resume-chain")
        # Only reached if the kill did not happen.
        result.update(error=f"step {a.n - 1} did not kill the driver", total_s=time.perf_counter() - t)
    else:
        workflow.init(a.storage, executor=a.executor, num_cpus=a.num_cpus)
        t = time.perf_counter()
        _warm_up("0")
        result["warmup_s"] = round(time.perf_counter() - t, 4)
        if a.workload == "cpu":
            t = time.perf_counter()
            cpu = s.total.step([s.burn_step.step(a.iterations) for _ in range(a.n)]).run(workflow_id="cpu")
            dt = time.perf_counter() - t
            # Effective parallelism: CPU seconds the steps got / wall seconds. Robust to the
            # steps' own speed, which varies on a shared VM.
            result.update(
                summarize([dt], a.n), iterations=a.iterations, step_cpu_s=round(cpu, 3), parallelism=round(cpu / dt, 2)
            )
        elif a.workload == "onestep":
            for i in range(10):  # warm the one-step path itself
                onestep(1, f"w{i}")
            times = [onestep(1, str(i)) for i in range(a.n)]
            result.update(summarize(times, 1))
            result.update(
                count=a.n,
                mean_ms=round(statistics.mean(times) * 1e3, 4),
                p90_ms=round(sorted(times)[int(0.9 * len(times))] * 1e3, 4),
            )
        else:
            fn = {"chain": chain, "fanout": fanout, "fib": fib}[a.workload]
            steps = {"chain": a.n, "fanout": a.n + 1, "fib": fib_steps(a.n)}[a.workload]
            times = []
            for r in range(a.repeats):
                times.append(fn(a.n, str(r)))
                if sum(times) > a.budget_s:
                    break
            result.update(summarize(times, steps))
            recorded = _count_nodes(f"{a.workload}-{a.n}-0")
            if recorded is not None:
                result["steps_recorded"] = recorded
    workflow.shutdown()
    if sampler is not None:
        result.update(sampler.stop())
    result.update(rusage_report())
    write_result(a.out, result)


if __name__ == "__main__":
    main()
