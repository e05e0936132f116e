"""One keelflow workload, run in this (fresh) process; ``run.py`` starts one process each.

    python benchmarks/kf_workloads.py WORKLOAD --n N [--repeats R] --storage DIR
        [--executor local|thread] [--num-cpus C] [--out result.json]

Prints (or writes to ``--out``) a JSON object. Timed regions cover building the DAG and
``.run()`` until the output is back; storage is the directory given (durable, fsync'd:
keelflow's default file storage).

The ``actor-*`` workloads time calls on one virtual actor (``kf_actors.Counter``); the
``*-child`` ones are the second processes those start, not meant to be run by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

_T_PROCESS = time.perf_counter()  # as early as this script can see

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _bench_util import (  # noqa: E402
    RssSampler,
    fdatasync_ms,
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
from kf_actors import Counter  # noqa: E402


def _count_nodes(workflow_id: str) -> int | None:
    """Steps keelflow recorded for a finished workflow (a cross-check; internal API)."""
    try:
        from keelflow.engine.results import load
        from keelflow.session import runtime

        loaded = load(runtime().storage, workflow_id)
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


# -- virtual actors -------------------------------------------------------------------------------
ACTOR_WORKLOADS = ["actor-seq", "actor-pipe", "actor-read", "actor-contend"]
ACTOR_CHILDREN = ["actor-read-child", "actor-contend-child"]
#: Untimed calls before each timed loop: the actor's files exist, the code paths are warm.
_ACTOR_WARM = 20


def _per_call(times: list[float], calls: int) -> dict:
    """summarize() for calls: median repeat, ms per call and calls per second."""
    res = summarize(times, calls)
    res.update(
        calls=calls,
        ms_per_call=res["per_step_ms"],
        calls_per_s=round(calls / res["total_s"], 1),
        best_calls_per_s=round(calls / min(times), 1),
    )
    return res


def _fresh_counter(actor_id: str) -> tuple:
    h = Counter.get_or_create(actor_id)
    for _ in range(_ACTOR_WARM):
        h.incr.run(1)
    return h, h.value.run()


def actor_seq(n: int, repeats: int) -> dict:
    """``handle.incr.run(1)`` n times: each call durable before the next starts."""
    times = []
    for r in range(repeats):
        h, base = _fresh_counter(f"seq-{r}")
        t = time.perf_counter()
        for _ in range(n):
            out = h.incr.run(1)
        times.append(time.perf_counter() - t)
        assert out == base + n, (out, base, n)
    return _per_call(times, n)


def actor_pipe(n: int, repeats: int) -> dict:
    """n ``run_async(1)`` (each queued durably before it returns), then wait for the last."""
    times, submits = [], []
    for r in range(repeats):
        h, base = _fresh_counter(f"pipe-{r}")
        t = time.perf_counter()
        refs = [h.incr.run_async(1) for _ in range(n)]
        submits.append(time.perf_counter() - t)
        out = workflow.get(refs[-1])
        times.append(time.perf_counter() - t)
        assert out == base + n, (out, base, n)
    res = _per_call(times, n)
    sub = statistics.median(submits)
    res.update(submit_s=round(sub, 4), submit_ms_per_call=round(sub / n * 1e3, 4))
    return res


def _read_loop(h, n: int, repeats: int, expect: int) -> dict:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            out = h.value.run()
        times.append(time.perf_counter() - t)
        assert out == expect, (out, expect)
    return _per_call(times, n)


def _child(workload: str, a: argparse.Namespace, **kw) -> subprocess.Popen:
    argv = [sys.executable, os.path.abspath(__file__), workload, "--storage", a.storage, "--executor", a.executor]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _child_result(proc: subprocess.Popen, what: str) -> dict:
    out, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} exited with {proc.returncode} (its stderr is above)")
    return json.loads(out)


def actor_read(a: argparse.Namespace) -> dict:
    """Readonly calls: in this process right after mutating calls, then from a second process
    that only reads (it never takes the lease)."""
    h, base = _fresh_counter("read")
    mutating = a.mutating
    t = time.perf_counter()
    for _ in range(mutating):
        h.incr.run(1)
    mut_s = time.perf_counter() - t
    expect = base + mutating
    same = _read_loop(h, a.n, a.repeats, expect)
    other = _child_result(
        _child("actor-read-child", a, n=a.n, repeats=a.repeats, actor_id="read", expect=expect),
        "the reading process",
    )
    return {
        "same": same,
        "other": other,
        "mutating_calls": mutating,
        "mutating_calls_per_s": round(mutating / mut_s, 1),
        "calls": a.n,
        "repeats": a.repeats,
    }


def actor_read_child(a: argparse.Namespace) -> dict:
    h = workflow.get_actor(a.actor_id)
    for _ in range(_ACTOR_WARM):
        h.value.run()
    res = _read_loop(h, a.n, a.repeats, a.expect)
    res["status_seen"] = workflow.get_actor_metadata(a.actor_id)["status"]
    return res


def actor_contend(a: argparse.Namespace) -> dict:
    """Two processes make n sequential ``run`` calls each on one actor, started together."""
    rounds = []
    for r in range(a.repeats):
        actor_id = f"contend-{r}"
        h, base = _fresh_counter(actor_id)
        kids = [_child("actor-contend-child", a, n=a.n, actor_id=actor_id) for _ in range(2)]
        for k in kids:  # each has imported, initialised and made its warm-up calls
            line = k.stdout.readline()
            if line.strip() != "ready":
                k.kill()
                raise RuntimeError(f"a contending process did not get ready: {line!r}")
        for k in kids:
            k.stdin.write("go\n")
            k.stdin.flush()
        res = [_child_result(k, "a contending process") for k in kids]
        wall = max(x["end"] for x in res) - min(x["start"] for x in res)
        final = h.value.run()
        assert final == base + 2 * (a.n + _ACTOR_WARM), (final, base, a.n)
        rounds.append(
            {
                "wall_s": wall,
                "per_process_calls_per_s": [round(a.n / (x["end"] - x["start"]), 1) for x in res],
                "overlap_s": round(min(x["end"] for x in res) - max(x["start"] for x in res), 4),
                "median_call_ms": [x["median_call_ms"] for x in res],
                "p90_call_ms": [x["p90_call_ms"] for x in res],
                "max_call_ms": [x["max_call_ms"] for x in res],
            }
        )
    res = _per_call([x["wall_s"] for x in rounds], 2 * a.n)
    res["rounds"] = rounds
    return res


def actor_contend_child(a: argparse.Namespace) -> dict:
    h = workflow.get_actor(a.actor_id)
    for _ in range(_ACTOR_WARM):
        h.incr.run(1)
    print("ready", flush=True)
    sys.stdin.readline()
    lat = []
    # CLOCK_MONOTONIC is machine-wide on Linux: the parent compares both processes' stamps.
    start = time.monotonic()
    for _ in range(a.n):
        t = time.perf_counter()
        h.incr.run(1)
        lat.append(time.perf_counter() - t)
    end = time.monotonic()
    lat.sort()
    return {
        "start": start,
        "end": end,
        "median_call_ms": round(lat[len(lat) // 2] * 1e3, 4),
        "p90_call_ms": round(lat[int(0.9 * len(lat))] * 1e3, 4),
        "max_call_ms": round(lat[-1] * 1e3, 4),
    }


def run_actor(a: argparse.Namespace, result: dict) -> None:
    # The disk's floor for a durable call, probed before and after: on a shared VM it can move.
    sync_before = fdatasync_ms(a.storage) if a.workload in ACTOR_WORKLOADS else None
    workflow.init(a.storage, executor=a.executor, num_cpus=a.num_cpus)
    if a.workload == "actor-seq":
        result.update(actor_seq(a.n, a.repeats))
    elif a.workload == "actor-pipe":
        result.update(actor_pipe(a.n, a.repeats))
    elif a.workload == "actor-read":
        result.update(actor_read(a))
    elif a.workload == "actor-contend":
        result.update(actor_contend(a))
    elif a.workload == "actor-read-child":
        result.update(actor_read_child(a))
    elif a.workload == "actor-contend-child":
        result.update(actor_contend_child(a))
    if sync_before is not None:
        result["fdatasync_ms_before_after"] = [sync_before, fdatasync_ms(a.storage)]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument(
        "workload",
        choices=[
            "chain",
            "fanout",
            "fib",
            "onestep",
            "resume-kill",
            "resume",
            "cpu",
            *ACTOR_WORKLOADS,
            *ACTOR_CHILDREN,
        ],
    )
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument(
        "--budget-s", type=float, default=float("inf"), help="stop repeating once the repeats so far took this long"
    )
    p.add_argument("--storage", required=True)
    p.add_argument("--executor", default="local")
    p.add_argument("--num-cpus", type=float, default=None)
    p.add_argument("--iterations", type=int, default=0, help="cpu: burn iterations per step")
    p.add_argument("--mutating", type=int, default=2000, help="actor-read: mutating calls made before the reads")
    p.add_argument("--actor-id", help="actor children: the actor to call")
    p.add_argument("--expect", type=int, default=0, help="actor-read-child: the value the reads must see")
    p.add_argument("--sample-rss", action="store_true", help="sample driver+worker RSS every 0.1 s")
    p.add_argument("--out")
    a = p.parse_args()

    sampler = RssSampler().start() if a.sample_rss else None
    result: dict = {"workload": a.workload, "n": a.n, "executor": a.executor, "import_s": round(IMPORT_S, 4)}

    if a.workload.startswith("actor-"):
        run_actor(a, result)
    elif a.workload == "resume":
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
