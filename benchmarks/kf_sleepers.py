"""Many sleeping workflows in one worker: time, memory and threads.

``n`` workflows are submitted to storage; each runs a step that returns ``workflow.sleep(s)``
(so the deadline is set when the worker runs it, not at submission). One ``keelflow worker``
process runs them all. Printed: submission cost per workflow, the time from the worker's
start until every workflow is SUCCESSFUL (the floor is ``s``), the worker's peak resident
memory, and its thread count at rest and at most (sampled every 20 ms from /proc).

    python benchmarks/kf_sleepers.py [--n 1000] [--seconds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import keelflow as workflow


@workflow.step
def nap(seconds: float) -> workflow.Workflow:
    return workflow.sleep(seconds)


def _proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.split(":", 1) for line in f if ":" in line)


def run(n: int, seconds: float) -> dict[str, float]:
    storage = tempfile.mkdtemp(prefix="kf-sleepers-")
    workflow.init(storage, executor="thread")
    t0 = time.perf_counter()
    ids = [workflow.submit(nap.step(seconds)) for _ in range(n)]
    submit_s = time.perf_counter() - t0
    workflow.shutdown()

    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "keelflow.cli", "worker", "--storage", storage, "--executor", "thread"]
    start = time.perf_counter()
    worker = subprocess.Popen([*cmd, "--no-http", "--poll", "0.5"], env=env, stderr=subprocess.DEVNULL)
    threads: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                threads.append(int(_proc_status(worker.pid)["Threads"]))
            except (OSError, KeyError, ValueError):
                pass
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    # Done when every workflow's status index says SUCCESSFUL (read without keelflow's API,
    # so this process takes no leases and runs nothing).
    pending = set(ids)
    while pending:
        time.sleep(0.2)  # each look reads every pending index: keep this process's share small
        for wid in list(pending):
            try:
                with open(os.path.join(storage, "workflows", wid, "status")) as f:
                    if '"SUCCESSFUL"' in f.read():
                        pending.discard(wid)
            except OSError:
                pass
    elapsed = time.perf_counter() - start
    peak_kib = int(_proc_status(worker.pid)["VmHWM"].split()[0])
    stop.set()
    sampler.join()
    worker.terminate()
    worker.wait(30)
    return {
        "n": n,
        "seconds": seconds,
        "submit_ms_per_workflow": submit_s / n * 1000,
        "all_done_s": elapsed,
        "peak_rss_mib": peak_kib / 1024,
        "threads_first": threads[0] if threads else 0,
        "threads_max": max(threads) if threads else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    args = parser.parse_args()
    r = run(args.n, args.seconds)
    if args.json:
        print(json.dumps(r))
        return
    print(f"{r['n']} workflows sleeping {r['seconds']:g} s in one worker")
    print(f"  submit: {r['submit_ms_per_workflow']:.3f} ms per workflow")
    print(
        f"  all done {r['all_done_s']:.2f} s after the worker started ({r['all_done_s'] / r['seconds']:.2f}x the sleep)"
    )
    threads = f"threads {r['threads_first']} at start, {r['threads_max']} at most"
    print(f"  worker peak RSS {r['peak_rss_mib']:.0f} MiB; {threads}")


if __name__ == "__main__":
    main()
