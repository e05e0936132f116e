"""Helpers shared by every benchmark script, keelflow's and the compared systems' alike.

Standard library only: the DBOS and Ray workload scripts import this from their own
virtualenvs.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import threading
import time
from typing import Any


def kib_to_mib(kib: float) -> float:
    return round(kib / 1024.0, 1)


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(p) for p in f.read().split())
        except OSError:
            pass
    return out


class RssSampler:
    """Samples the RSS of this process and of all its descendants every ``interval`` seconds.

    ``peak_total_mib`` is the largest sum seen at one instant (driver + workers), which is what
    a machine has to hold; ``peak_children_mib`` the largest sum of descendants alone.
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peak_total = 0
        self.peak_children = 0
        self.peak_count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def sample(self) -> None:
        me = os.getpid()
        seen, stack = set(), _children(me)
        kids = 0
        while stack:
            pid = stack.pop()
            if pid in seen:
                continue
            seen.add(pid)
            kids += _rss_kib(pid)
            stack.extend(_children(pid))
        total = _rss_kib(me) + kids
        self.peak_total = max(self.peak_total, total)
        self.peak_children = max(self.peak_children, kids)
        self.peak_count = max(self.peak_count, len(seen))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        self.sample()
        return {
            "peak_total_rss_mib": kib_to_mib(self.peak_total),
            "peak_children_rss_sum_mib": kib_to_mib(self.peak_children),
            "max_descendants": self.peak_count,
        }


def rusage_report() -> dict[str, Any]:
    """Peak RSS of this process (the driver) and of the largest reaped child (a worker)."""
    return {
        "driver_peak_rss_mib": kib_to_mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
        "children_peak_rss_mib": kib_to_mib(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss),
    }


def summarize(times: list[float], steps: int) -> dict[str, Any]:
    """Total seconds per repeat -> the figures every workload reports."""
    med = statistics.median(times)
    return {
        "steps": steps,
        "repeats": len(times),
        "times_s": [round(t, 6) for t in times],
        "total_s": round(med, 6),
        "per_step_ms": round(med / steps * 1e3, 4) if steps else None,
        "min_per_step_ms": round(min(times) / steps * 1e3, 4) if steps else None,
    }


def fib_steps(n: int) -> int:
    """Steps a dynamic fib(n) executes: one per fib call (2F(n+1)-1) plus one add per inner
    call (F(n+1)-1)."""
    a, b = 0, 1  # F(0), F(1)
    for _ in range(n + 1):
        a, b = b, a + b
    f_n1 = a  # F(n+1)
    return 3 * f_n1 - 2


def fib_value(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def burn(iterations: int) -> int:
    """Pure-Python CPU work (holds the GIL throughout)."""
    acc = 0
    for i in range(iterations):
        acc = (acc * 31 + i) & 0xFFFFFFFF
    return acc


def calibrate_burn(seconds: float) -> int:
    """Iterations of :func:`burn` that take about ``seconds`` of CPU here. Measured in this
    thread's CPU time (best of 3), so other processes competing for the cores do not skew it."""
    n = 200_000
    while True:
        t = time.thread_time()
        burn(n)
        if time.thread_time() - t > 0.1:
            break
        n *= 2
    best = float("inf")
    for _ in range(3):
        t = time.thread_time()
        burn(n)
        best = min(best, time.thread_time() - t)
    return max(1, int(n * seconds / best))


def fdatasync_ms(directory: str, count: int = 200) -> float:
    """Median ms of a small append + ``fdatasync`` in ``directory``: the disk's floor under
    any durable call there."""
    path = os.path.join(directory, "fdatasync-probe")
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        sync = getattr(os, "fdatasync", os.fsync)
        for _ in range(count):
            t = time.perf_counter()
            os.write(fd, b"x" * 64)
            sync(fd)
            times.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        os.unlink(path)
    return round(statistics.median(times) * 1e3, 4)


def write_result(path: str | None, result: dict[str, Any]) -> None:
    text = json.dumps(result, indent=1, sort_keys=True)
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    else:
        sys.stdout.write(text + "\n")


#: How the Ray-cluster comparison places its CPU-bound steps: by Ray (spread), half on each
#: node by their resources (split), all on the second node, one at a time (pinned).
CPU_MODES = ("spread", "split", "pinned")


def cpu_modes(cpu_run: Any, k: int, iterations: int, repeats: int) -> dict:
    """The CPU-bound fan-out of the Ray-cluster comparison in each placement mode (see
    ray_cluster.py): ``cpu_run(k, iterations, tag, mode)`` runs it once. The median repeat's
    wall time, the CPU seconds its steps used, and where they ran."""
    res: dict = {"steps": k + 1, "iterations": iterations}
    for mode in CPU_MODES:
        runs = [cpu_run(k, iterations, f"{mode}-{r}", mode) for r in range(repeats)]
        walls = [x["wall_s"] for x in runs]
        mid = sorted(runs, key=lambda x: x["wall_s"])[len(runs) // 2]
        res[mode] = {
            "times_s": [round(w, 4) for w in walls],
            "total_s": round(mid["wall_s"], 4),
            "step_cpu_s": round(mid["step_cpu_s"], 3),
            "parallelism": round(mid["step_cpu_s"] / mid["wall_s"], 2),
            "placements": mid["placements"],
            "placements_per_run": [x["placements"] for x in runs],
        }
    return res
