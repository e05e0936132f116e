#!/usr/bin/env python3
"""keelflow benchmarks: per-step cost, resume, start-up, memory, CPU speed-up and virtual actors.

    python benchmarks/run.py                  # every keelflow workload (a few minutes)
    python benchmarks/run.py --quick          # smaller sizes, a smoke run (< 30 s)
    python benchmarks/run.py --only chain,fib # some workloads (groups or row names)
    python benchmarks/run.py --only actor     # the virtual-actor workloads alone
    python benchmarks/run.py --executor thread
    python benchmarks/run.py --json out.json
    python benchmarks/run.py --compare        # side by side with DBOS and Ray Workflows 2.47.1
    python benchmarks/run.py --only raycluster  # keelflow's Ray executor vs Ray Workflows on a Ray cluster

Each workload runs in a fresh subprocess (``kf_workloads.py``), on a fresh storage directory on
the same disk as the repository (not tmpfs), so warm-up, memory and durability are measured
honestly. Figures are printed, never judged: nothing here passes or fails on wall time.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from _bench_util import calibrate_burn, fdatasync_ms  # noqa: E402

KF_WORKLOADS = os.path.join(HERE, "kf_workloads.py")
COMPARE = os.path.join(HERE, "compare")

# -- targets (from the issue), printed beside the figures, never asserted ------------------------
T_CHAIN = "<= 0.5 ms/step"
T_FANOUT = "<= 0.2 ms/step"
T_FIB = "<= 0.5 ms/step"
T_MEMORY = "<= 0.2 ms/step, RSS < 1 GiB"
T_RESUME = "< 1 s"
T_WARM = "<= 2 ms"
T_COLD = "<= 0.5 s"
T_ACTOR_SEQ = ">= 300 calls/s"
T_ACTOR_PIPE = ">= 1,000 calls/s"
T_ACTOR_READ = ">= 5,000 calls/s"
T_SLEEPERS = "< 5 s, < 300 MiB, threads flat"

# -- one-step cold: a whole `python -c` run per system ------------------------------------------
COLD_CODE = {
    "keelflow": """\
import sys
import keelflow as workflow

@workflow.step
def inc(x):
    return x + 1

workflow.init(sys.argv[1], executor=sys.argv[2])
assert inc.step(1).run(workflow_id="one") == 2
""",
    "dbos": """\
import os, sys
from dbos import DBOS
if sys.argv[2] == "wal":
    import sqlalchemy as sa

    @sa.event.listens_for(sa.engine.Engine, "connect")
    def _wal(dbapi_conn, record):
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=FULL")

url = "sqlite:///" + os.path.join(sys.argv[1], "dbos.sqlite")
DBOS(config={"name": "cold", "system_database_url": url, "log_level": "WARNING"})

@DBOS.step()
def inc(x):
    return x + 1

@DBOS.workflow()
def one(x):
    return inc(x)

DBOS.launch()
assert one(1) == 2
DBOS.destroy()
""",
    "ray": """\
import sys
import ray
from ray import workflow

ray.init(storage=sys.argv[1], include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)

@ray.remote
def inc(x):
    return x + 1

assert workflow.run(inc.bind(1), workflow_id="one") == 2
ray.shutdown()
""",
}


# -- machine and storage --------------------------------------------------------------------------
def _mount_of(path: str) -> dict[str, str]:
    """The mount holding ``path``: mount point, filesystem type, source device."""
    path = os.path.realpath(path)
    best = {"mount": "/", "fstype": "?", "source": "?"}
    best_len = -1
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split()
                mount = fields[4].replace("\\040", " ")
                if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) > best_len:
                    fstype, source = [*right.split(), "?", "?"][:2]
                    best, best_len = {"mount": mount, "fstype": fstype, "source": source}, len(mount)
    except OSError:
        pass
    return best


_VOLATILE = {"tmpfs", "ramfs", "devtmpfs"}


def pick_storage_base(explicit: str | None) -> tuple[str, dict[str, str]]:
    """A directory for workload storage on the repository's disk, never tmpfs."""
    if explicit:
        os.makedirs(explicit, exist_ok=True)
        return explicit, _mount_of(explicit)
    repo_dev = os.stat(REPO).st_dev
    for candidate in (tempfile.gettempdir(), os.path.join(HERE, ".scratch")):
        try:
            os.makedirs(candidate, exist_ok=True)
        except OSError:
            continue
        mount = _mount_of(candidate)
        if os.stat(candidate).st_dev == repo_dev and mount["fstype"] not in _VOLATILE:
            return candidate, mount
    fallback = os.path.join(HERE, ".scratch")
    os.makedirs(fallback, exist_ok=True)
    return fallback, _mount_of(fallback)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _git(*args: str) -> str:
    try:  # read-only queries
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info(storage_base: str, mount: dict[str, str]) -> dict[str, Any]:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in _read("/proc/cpuinfo").splitlines() if ln.startswith("model name")),
        platform.processor(),
    )
    mem = next((ln.split()[1] for ln in _read("/proc/meminfo").splitlines() if ln.startswith("MemTotal")), "0")
    try:
        import keelflow

        kf_version = keelflow.__version__
    except Exception as e:
        kf_version = f"import failed: {e}"
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(int(mem) / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "keelflow": kf_version,
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty_files": len(_git("status", "--porcelain").splitlines()),
        "storage_base": storage_base,
        "storage_fs": f"{mount['fstype']} on {mount['source']} (mounted at {mount['mount']})",
        # The disk's floor under any durable step: one small append + fdatasync there.
        "fdatasync_ms": fdatasync_ms(storage_base),
    }


# -- running one subprocess ------------------------------------------------------------------------
@dataclasses.dataclass
class Proc:
    returncode: int
    wall_s: float
    stdout: str
    stderr: str
    cpu_s: float = 0.0  # CPU of the process and of its reaped descendants (its workers)
    other_cores: float = 0.0  # CPU used meanwhile by everything else on the machine, in cores


_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_jiffies() -> int:
    """Machine-wide busy CPU time (user, nice, system, irq, softirq, steal) in clock ticks."""
    fields = _read("/proc/stat").split("\n", 1)[0].split()[1:]
    v = [int(x) for x in fields[:8]] + [0] * (8 - len(fields[:8]))
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]


def other_load(seconds: float = 1.0) -> float:
    """Cores' worth of CPU that other processes use right now (sampled over ``seconds``)."""
    b, t = _busy_jiffies(), time.perf_counter()
    time.sleep(seconds)
    return (_busy_jiffies() - b) / _HZ / (time.perf_counter() - t)


def run_proc(
    cmd: list[str], timeout: float, env: dict[str, str] | None = None, *, inherit_env: bool = True, known: Any = None
) -> Proc:
    """Run ``cmd`` to its end (killed with its process group on timeout or interruption); wall
    time, output, its CPU, and how busy the rest of the machine was meanwhile (other benchmarks
    or test suites skew every figure). ``known`` is a sampler (``start()``, ``stop()`` -> CPU
    seconds) of processes that work for the command, e.g. a Ray cluster: not "other" load."""
    full_env = {**os.environ, **(env or {})} if inherit_env else dict(env or {})
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        busy0, own0 = _busy_jiffies(), time.process_time()
        if known is not None:
            known.start()
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=full_env, start_new_session=True)
        timed_out = threading.Event()

        def _kill() -> None:
            timed_out.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass

        watchdog = threading.Timer(timeout, _kill)
        watchdog.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # blocking: exact wall time, no polling CPU
        except BaseException:  # Ctrl-C: the command goes too
            _kill()
            proc.wait()
            if known is not None:
                known.stop()
            raise
        finally:
            watchdog.cancel()
        wall = time.perf_counter() - t
        helpers = known.stop() if known is not None else 0.0
        busy = (_busy_jiffies() - busy0) / _HZ
        own = time.process_time() - own0 if known is not None else 0.0  # the sampling's own cost
        proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from reaping again
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    cpu = usage.ru_utime + usage.ru_stime
    code = -999 if timed_out.is_set() else proc.returncode
    if timed_out.is_set():
        stderr += f"\n[timed out after {timeout:.0f} s]"
    other = max(0.0, (busy - cpu - helpers - own) / wall) if wall > 0 else 0.0
    return Proc(code, wall, stdout, stderr, cpu, other)


def _status(code: int) -> str:
    if code == -999:
        return "timed out"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Runner:
    """Runs workloads, collects rows and failures."""

    def __init__(self, args: argparse.Namespace, storage_base: str) -> None:
        self.args = args
        self.storage_base = storage_base
        self.rows: list[dict[str, Any]] = []
        self.last_other = 0.0
        self.failures: list[dict[str, Any]] = []
        self._dirs: list[str] = []

    def wait_quiet(self) -> None:
        """Before a workload: wait (up to --wait-idle seconds) until other processes use less
        than 0.3 of a core, so another test suite running on the machine skews less."""
        limit = self.args.wait_idle
        if not limit:
            return
        t = time.monotonic()
        load = other_load(0.5)
        while load > 0.3 and time.monotonic() - t < limit:
            load = other_load(1.0)
        if load > 0.3:
            self.log(f"  (machine still busy: other processes use {load:.1f} cores; running anyway)")

    def fresh_dir(self, tag: str) -> str:
        d = tempfile.mkdtemp(prefix=f"kfbench-{tag}-", dir=self.storage_base)
        self._dirs.append(d)
        return d

    def cleanup(self) -> None:
        if self.args.keep_storage:
            return
        for d in self._dirs:
            shutil.rmtree(d, ignore_errors=True)
        self._dirs.clear()

    def log(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def fail(self, name: str, what: str, proc: Proc) -> None:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-40:])
        self.failures.append({"workload": name, "what": what, "status": _status(proc.returncode), "stderr_tail": tail})
        self.rows.append({"name": name, "error": f"{what}: {_status(proc.returncode)}"})
        self.log(f"  !! {name}: {what} failed ({_status(proc.returncode)}); stderr tail:\n{tail}")

    def json_workload(
        self, python: str, script: str, name: str, argv: list[str], timeout: float, env: dict[str, str] | None = None
    ) -> tuple[dict[str, Any] | None, Proc]:
        out = os.path.join(self.fresh_dir(name + "-out"), "result.json")
        self.wait_quiet()
        proc = run_proc([python, script, *argv, "--out", out], timeout, env)
        if proc.returncode != 0 or not os.path.exists(out):
            return None, proc
        with open(out) as f:
            result = json.load(f)
        result.update(
            process_wall_s=round(proc.wall_s, 4),
            process_cpu_s=round(proc.cpu_s, 3),
            other_cores=round(proc.other_cores, 2),
        )
        return result, proc

    def kf(
        self, name: str, workload: str, n: int, repeats: int = 1, extra: list[str] | None = None, timeout: float = 1800
    ) -> dict[str, Any] | None:
        storage = self.fresh_dir(name)
        argv = [
            workload,
            "--n",
            str(n),
            "--repeats",
            str(repeats),
            "--storage",
            storage,
            "--executor",
            self.args.executor,
            "--sample-rss",
            *(extra or []),
        ]
        self.log(f"  running {name} ...")
        result, proc = self.json_workload(sys.executable, KF_WORKLOADS, name, argv, timeout)
        if result is None:
            self.fail(name, f"kf_workloads.py {' '.join(argv[:2])}", proc)
            return None
        return result

    def add(self, name: str, result: dict[str, Any], target: str = "", note: str = "", **extra: Any) -> None:
        row = {"name": name, "target": target, "note": note, **result, **extra}
        self.rows.append(row)
        per = row.get("per_step_ms")
        if isinstance(row.get("calls_per_s"), (int, float)):
            self.log(f"  {name}: {row['calls_per_s']:,.0f} calls/s ({row['ms_per_call']:.3f} ms/call)")
            return
        shown = (
            f"{per:.3f} ms/step"
            if isinstance(per, (int, float)) and row.get("steps", 0) > 1
            else (f"{row['total_s']:.4f} s" if isinstance(row.get("total_s"), (int, float)) else row.get("note", ""))
        )
        self.log(f"  {name}: {shown}")


# -- the keelflow workloads --------------------------------------------------------------------------
GROUPS = ["import", "cold", "warm", "chain", "fanout", "fib", "resume", "memory", "cpu", "actor", "sleepers"]


def sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "chain": [(1000, 2)],
            "fanout": [(1000, 2)],
            "fib": [(12, 2)],
            "resume": 1000,
            "memory": [5000],
            "warm": 50,
            "cold": 3,
            "import": 3,
            "cpu": (4, 0.25),
            "actor": {"seq": (300, 1), "pipe": (1000, 1), "read": (1000, 2, 300), "contend": (200, 1)},
        }
    return {
        "chain": [(1000, 5), (10000, 3)],
        "fanout": [(1000, 5), (10000, 3)],
        "fib": [(15, 5), (20, 1)],
        "resume": 10000,
        "memory": [100000],
        "warm": 200,
        "cold": 5,
        "import": 5,
        "cpu": (8, 0.5),
        # (calls, repeats[, mutating calls made before the reads])
        "actor": {"seq": (2000, 3), "pipe": (5000, 3), "read": (5000, 5, 2000), "contend": (1000, 3)},
    }


def wanted(only: list[str] | None, group: str, name: str | None = None) -> bool:
    if not only:
        return True
    return any(o == group or (name is not None and o == name) for o in only)


def hyperfine(
    runner: Runner, cmd_for: Any, count: int, timeout: float = 300, env: dict[str, str] | None = None
) -> tuple[list[float], Proc | None]:
    """Whole-process wall times of ``count`` runs after one untimed warm-up run; each run gets a
    fresh storage directory. Returns the times, or the failing process."""
    times = []
    other = []
    runner.wait_quiet()
    for i in range(count + 1):
        proc = run_proc(cmd_for(runner.fresh_dir("cold")), timeout, env)
        if proc.returncode != 0:
            return times, proc
        if i > 0:
            times.append(proc.wall_s)
            other.append(proc.other_cores)
    runner.last_other = statistics.mean(other) if other else 0.0
    return times, None


def _times_result(times: list[float], other: float | None = None) -> dict[str, Any]:
    res = {
        "steps": 1,
        "repeats": len(times),
        "times_s": [round(t, 4) for t in times],
        "total_s": round(statistics.median(times), 4),
        "min_s": round(min(times), 4),
    }
    if other is not None:
        res["other_cores"] = round(other, 2)
    return res


def bench_import(r: Runner, count: int) -> None:
    r.log("  running import ...")
    py = sys.executable
    code = "import time; t = time.perf_counter(); import keelflow; print(time.perf_counter() - t)"
    base, bad = hyperfine(r, lambda d: [py, "-c", "pass"], count)
    full, bad2 = hyperfine(r, lambda d: [py, "-c", "import keelflow"], count)
    inproc = []
    for _ in range(count):
        p = run_proc([py, "-c", code], 60)
        if p.returncode == 0:
            inproc.append(float(p.stdout.strip()))
    if bad or bad2 or not inproc:
        r.fail("import", "python -c 'import keelflow'", bad or bad2 or p)
        return
    res = _times_result(full, r.last_other)
    res.update(
        python_startup_s=round(statistics.median(base), 4), import_in_process_s=round(statistics.median(inproc), 4)
    )
    r.add(
        "import keelflow (python -c)",
        res,
        "light",
        note=(
            f"import alone {res['import_in_process_s'] * 1e3:.0f} ms in-process; bare `python -c pass` "
            f"{res['python_startup_s'] * 1e3:.0f} ms"
        ),
    )


def bench_cold(r: Runner, count: int) -> None:
    r.log("  running one-step cold ...")
    ex = r.args.executor
    times, bad = hyperfine(r, lambda d: [sys.executable, "-c", COLD_CODE["keelflow"], d, ex], count)
    if bad:
        r.fail("one-step cold", "python -c one-step run", bad)
        return
    r.add(
        "one-step cold (python -c)",
        _times_result(times, r.last_other),
        T_COLD,
        note=f"whole process, median of {count} after 1 warm-up",
    )


def bench_resume(r: Runner, n: int) -> None:
    name = f"resume-{n}"
    storage = r.fresh_dir(name)
    ex = r.args.executor
    r.log(f"  running {name}: a {n}-step chain whose step {n - 1} SIGKILLs its driver ...")
    r.wait_quiet()
    killed = run_proc(
        [sys.executable, KF_WORKLOADS, "resume-kill", "--n", str(n), "--storage", storage, "--executor", ex], 1800
    )
    if killed.returncode != -signal.SIGKILL:
        r.fail(name, f"killing the driver at step {n - 1} (expected SIGKILL)", killed)
        return
    time.sleep(1.0)  # orphaned workers notice their parent is gone within 0.5 s and exit
    out = os.path.join(r.fresh_dir(name + "-out"), "result.json")
    r.wait_quiet()
    proc = run_proc(
        [sys.executable, KF_WORKLOADS, "resume", "--n", str(n), "--storage", storage, "--executor", ex, "--out", out],
        600,
    )
    if proc.returncode != 0 or not os.path.exists(out):
        r.fail(name, "workflow.resume() in a fresh process", proc)
        return
    with open(out) as f:
        res = json.load(f)
    res["other_cores"] = round(proc.other_cores, 2)
    r.add(
        f"resume-{n} killed at {n - 1}: resume()",
        {**res, "steps": 2, "total_s": res["resume_s"]},
        T_RESUME,
        note=f"killed run took {killed.wall_s:.1f} s to reach step {n - 1}",
    )
    r.add(
        f"resume-{n}: whole process",
        {
            "total_s": round(proc.wall_s, 4),
            "other_cores": res["other_cores"],
            "driver_peak_rss_mib": res.get("driver_peak_rss_mib"),
        },
        "",
        note=f"python start + import + init ({res['init_s'] * 1e3:.0f} ms) + resume + exit",
    )


def bench_cpu(r: Runner, steps: int, seconds: float) -> None:
    iters = calibrate_burn(seconds)
    extra = ["--iterations", str(iters)]
    name = f"cpu-{steps}x{seconds:g}s"
    all_cores = r.kf(name, "cpu", steps, extra=extra)
    one_cpu = r.kf(name + "-1cpu", "cpu", steps, extra=[*extra, "--num-cpus", "1"])
    if all_cores is None or one_cpu is None:
        return
    speedup = one_cpu["total_s"] / all_cores["total_s"]
    r.add(
        f"{name} init() all cores",
        all_cores,
        "",
        note=f"{os.cpu_count()} cores; steps got {all_cores['step_cpu_s']:.2f} CPU s: "
        f"parallelism {all_cores['parallelism']:.2f}",
    )
    r.add(
        f"{name} init(num_cpus=1)",
        one_cpu,
        "",
        note=f"steps got {one_cpu['step_cpu_s']:.2f} CPU s: parallelism {one_cpu['parallelism']:.2f}",
    )
    r.add(
        f"{name} speed-up",
        {
            "total_s": None,
            "speedup": round(speedup, 2),
            "parallelism_ratio": round(all_cores["parallelism"] / one_cpu["parallelism"], 2),
        },
        f"~{os.cpu_count()}x expected",
        note=f"wall {speedup:.2f}x; parallelism {all_cores['parallelism'] / one_cpu['parallelism']:.2f}x "
        f"({r.args.executor} executor)",
    )
    if r.args.executor == "local":
        saved, r.args.executor = r.args.executor, "thread"
        try:
            th = r.kf(name + "-thread", "cpu", steps, extra=extra)
        finally:
            r.args.executor = saved
        if th is not None:
            r.add(
                f"{name} thread executor (for contrast)",
                th,
                "",
                note=f"GIL-bound: steps got {th['step_cpu_s']:.2f} CPU s: parallelism {th['parallelism']:.2f}",
            )


_CALL_FIGURES = ("calls", "repeats", "times_s", "total_s", "ms_per_call", "calls_per_s", "best_calls_per_s")


def bench_actor(r: Runner, sz: dict[str, Any]) -> None:
    """One virtual actor (``kf_actors.Counter``) on durable file storage, a fresh process and
    storage directory per workload; per-call costs, not per-step ones."""
    only = r.args.only

    def run(name: str, workload: str, n: int, reps: int, extra: list[str] | None = None) -> dict[str, Any] | None:
        res = r.kf(name, workload, n, reps, extra=extra)
        if res is None:
            r.rows[-1]["kind"] = "actor"
        return res

    def sync_note(res: dict[str, Any]) -> str:
        probes = res.get("fdatasync_ms_before_after")
        if not probes:
            return ""
        f = statistics.mean(probes)
        return f"{res['ms_per_call'] / f:.1f}x an fdatasync ({probes[0]:.3f} ms before, {probes[1]:.3f} after)"

    n, reps = sz["seq"]
    name = f"actor-seq-{n}"
    if wanted(only, "actor", name):
        res = run(name, "actor-seq", n, reps)
        if res:
            r.add(f"{name}: run() in a loop", res, T_ACTOR_SEQ, note=sync_note(res), kind="actor", key="seq")
    n, reps = sz["pipe"]
    name = f"actor-pipe-{n}"
    if wanted(only, "actor", name):
        res = run(name, "actor-pipe", n, reps)
        if res:
            r.add(
                f"{name}: run_async() x {n:,}, wait for the last",
                res,
                T_ACTOR_PIPE,
                note=f"submitting took {res['submit_s']:.3f} s ({res['submit_ms_per_call']:.3f} ms/call, "
                f"each durable); {sync_note(res)}",
                kind="actor",
                key="pipe",
            )
    n, reps, mutating = sz["read"]
    name = f"actor-read-{n}"
    if wanted(only, "actor", name):
        res = run(name, "actor-read", n, reps, extra=["--mutating", str(mutating)])
        if res:
            common = {k: res.get(k) for k in ("other_cores", "driver_peak_rss_mib", "fdatasync_ms_before_after")}
            r.add(
                f"{name}: readonly run(), same process",
                {**res["same"], **common},
                T_ACTOR_READ,
                note=f"right after {res['mutating_calls']:,} run() calls in this process "
                f"({res['mutating_calls_per_s']:,.0f} calls/s)",
                kind="actor",
                key="read-same",
            )
            other = res["other"]
            r.add(
                f"{name}: readonly run(), second process",
                {**{k: other[k] for k in _CALL_FIGURES}, "other_cores": res.get("other_cores")},
                T_ACTOR_READ,
                note=f"a process that only reads, never holding the lease (actor {other.get('status_seen')})",
                kind="actor",
                key="read-other",
            )
    n, reps = sz["contend"]
    name = f"actor-contend-2x{n}"
    if wanted(only, "actor", name):
        res = run(name, "actor-contend", n, reps)
        if res:
            rounds = res["rounds"]
            per = "; ".join(" + ".join(f"{c:,.0f}" for c in x["per_process_calls_per_s"]) for x in rounds)
            r.add(
                f"{name}: 2 processes x {n:,} run(), total",
                res,
                "",
                note=f"each process's own calls/s per round: {per}; median call "
                f"{statistics.median(ms for x in rounds for ms in x['median_call_ms']):.3f} ms, slowest "
                f"{max(ms for x in rounds for ms in x['max_call_ms']):.1f} ms",
                kind="actor",
                key="contend",
            )


def actor_ratios(rows: list[dict[str, Any]]) -> list[str]:
    """The actor figures against each other (ratios of calls/s)."""
    by = {x["key"]: x for x in rows if x.get("kind") == "actor" and isinstance(x.get("calls_per_s"), (int, float))}
    pairs = [
        ("pipelined / sequential calls/s", "pipe", "seq"),
        ("two processes contending / one process sequential", "contend", "seq"),
        ("readonly in a second process / in the same process", "read-other", "read-same"),
        ("readonly (same process) / sequential mutating", "read-same", "seq"),
    ]
    return [
        f"{label}: {by[a]['calls_per_s'] / by[b]['calls_per_s']:.2f}x" for label, a, b in pairs if a in by and b in by
    ]


def run_keelflow(r: Runner) -> None:
    s = sizes(r.args.quick)
    only = r.args.only
    if wanted(only, "import"):
        bench_import(r, s["import"])
    if wanted(only, "cold"):
        bench_cold(r, s["cold"])
    if wanted(only, "warm"):
        res = r.kf("one-step warm", "onestep", s["warm"])
        if res:
            r.add("one-step warm", res, T_WARM, note=f"median of {s['warm']} one-step workflows in one process")
    for group, target in (("chain", T_CHAIN), ("fanout", T_FANOUT), ("fib", T_FIB)):
        for n, reps in s[group]:
            name = f"{group}-{n}"
            if not wanted(only, group, name):
                continue
            res = r.kf(name, group, n, reps)
            if res:
                note = ""
                if group == "fib":
                    note = f"{res['steps']} steps (3F(n+1)-2)"
                    if res.get("steps_recorded") not in (None, res["steps"]):
                        note += f"; keelflow recorded {res['steps_recorded']}"
                r.add(name, res, target, note=note)
    if wanted(only, "resume"):
        bench_resume(r, s["resume"])
    if wanted(only, "memory"):
        for n in s["memory"]:
            res = r.kf(f"fanout-{n}", "fanout", n, 1)
            if res:
                r.add(
                    f"fanout-{n}",
                    res,
                    T_MEMORY,
                    note=f"peak RSS driver+workers {res.get('peak_total_rss_mib', '?')} MiB",
                )
    if wanted(only, "cpu"):
        bench_cpu(r, *s["cpu"])
    if wanted(only, "actor") or any(o.startswith("actor-") for o in only or []):
        bench_actor(r, s["actor"])
    if wanted(only, "sleepers"):
        bench_sleepers(r, 200 if r.args.quick else 1000)


def bench_sleepers(r: Runner, n: int) -> None:
    """``n`` workflows each sleeping 1 s in one ``keelflow worker`` (see kf_sleepers.py)."""
    here = os.path.dirname(os.path.abspath(__file__))
    cmd = [sys.executable, os.path.join(here, "kf_sleepers.py"), "--n", str(n), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        r.log(f"  sleepers-{n}: failed: {done.stderr.strip()[-500:]}")
        return
    res = json.loads(done.stdout.strip().splitlines()[-1])
    note = (
        f"all done {res['all_done_s']:.2f} s after the worker started; worker peak RSS "
        f"{res['peak_rss_mib']:.0f} MiB; threads {res['threads_first']} at start, {res['threads_max']} at most; "
        f"submit {res['submit_ms_per_workflow']:.2f} ms per workflow"
    )
    r.add(f"sleepers-{n}", {"total_s": res["all_done_s"], "sleepers": res}, T_SLEEPERS, note=note)


def flatness(rows: list[dict[str, Any]]) -> list[str]:
    """Per-step cost by size, for each shape run at several sizes."""
    lines = []
    for shape, extra in (("chain", 0), ("fanout", 1)):
        pts = sorted(
            (r["steps"] - extra, r["per_step_ms"])
            for r in rows
            if r.get("name", "").startswith(shape + "-") and isinstance(r.get("per_step_ms"), (int, float))
        )
        if len(pts) >= 2:
            parts = ", ".join(f"{n:,}: {ms:.3f}" for n, ms in pts)
            ratio = pts[-1][1] / pts[0][1]
            lines.append(f"{shape} per-step ms by size: {parts}  (largest / smallest size = {ratio:.2f}x)")
    return lines


# -- printing -------------------------------------------------------------------------------------
def _fmt(v: Any, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def print_table(rows: list[dict[str, Any]], headers: list[str], out: Any = sys.stdout) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line, file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)


def print_keelflow(rows: list[dict[str, Any]], info: dict[str, Any], executor: str) -> None:
    print()
    print(f"keelflow {info['keelflow']} benchmarks, executor {executor!r}, {info['date']}")
    print(
        f"machine: {info['cpus']} cores ({info['cpu_model']}), {info['memory_gib']} GiB, Python {info['python']}, "
        f"Linux {info['kernel']}"
    )
    print(
        f"storage: fresh directories under {info['storage_base']} ({info['storage_fs']}); "
        f"keelflow file storage, fsync'd appends; one append + fdatasync there: {info['fdatasync_ms']} ms (median)"
    )
    actors = [r for r in rows if r.get("kind") == "actor"]
    rows = [r for r in rows if r.get("kind") != "actor"]
    if rows:
        print_steps(rows)
    if actors:
        print_actors(actors)
    print("Targets are printed for reading, not checked.")


def print_steps(rows: list[dict[str, Any]]) -> None:
    print()
    table = []
    for r in rows:
        if "error" in r:
            table.append([r["name"], "-", "-", "-", "-", "", "-", "-", "-", "ERROR " + r["error"]])
            continue
        steps = r.get("steps")
        per = r.get("per_step_ms") if (steps or 0) > 1 else None
        if r.get("name", "").startswith("one-step warm"):
            per = r.get("per_step_ms")
        table.append(
            [
                r["name"],
                f"{steps:,}" if isinstance(steps, int) and steps > 1 else "-",
                _fmt(r.get("total_s"), ".3f"),
                _fmt(per, ".3f"),
                str(r.get("repeats", "-")),
                r.get("target", ""),
                _fmt(r.get("driver_peak_rss_mib"), ".0f"),
                _fmt(r.get("peak_children_rss_sum_mib"), ".0f"),
                _fmt(r.get("other_cores"), ".2f"),
                r.get("note", ""),
            ]
        )
    print_table(
        table,
        [
            "workload",
            "steps",
            "total s",
            "ms/step",
            "reps",
            "target",
            "driver MiB",
            "workers MiB",
            "other load",
            "note",
        ],
    )
    flat = flatness(rows)
    if flat:
        print()
        print("\n".join(flat))
    print()
    print("total s = median over reps (per-step ms = that / steps); driver MiB = the driver's peak RSS;")
    print("workers MiB = peak of the summed RSS of its worker processes (sampled every 0.1 s);")
    print("other load = cores' worth of CPU that other processes on the machine used meanwhile (0 = quiet).")


def print_actors(rows: list[dict[str, Any]]) -> None:
    print()
    print("Virtual actors: one Counter actor, durable file storage (a call's record is fdatasync'd before it returns)")
    print()
    table = []
    for r in rows:
        if "error" in r:
            table.append([r["name"], "-", "-", "-", "-", "-", "", "-", "ERROR " + r["error"]])
            continue
        table.append(
            [
                r["name"],
                f"{r['calls']:,}",
                _fmt(r.get("total_s"), ".3f"),
                _fmt(r.get("ms_per_call"), ".3f"),
                _fmt(r.get("calls_per_s"), ",.0f"),
                str(r.get("repeats", "-")),
                r.get("target", ""),
                _fmt(r.get("other_cores"), ".2f"),
                r.get("note", ""),
            ]
        )
    print_table(table, ["workload", "calls", "total s", "ms/call", "calls/s", "reps", "target", "other load", "note"])
    ratios = actor_ratios(rows)
    if ratios:
        print()
        print("\n".join(ratios))
    print()
    print("total s = median over reps of the timed loop (calls/s = calls / that); the contending row times")
    print("from the first process's first call to the last process's last call.")


# -- side-by-side ---------------------------------------------------------------------------------
COMPARE_SYSTEMS = {
    # key: (label, venv, script, extra argv, cold-code key, cold argv tail)
    "dbos": ("DBOS/SQLite", "dbos", "dbos_workloads.py", ["--sqlite-journal", "default"], "dbos", ["default"]),
    "dbos-wal": ("DBOS/SQLite-WAL", "dbos", "dbos_workloads.py", ["--sqlite-journal", "wal"], "dbos", ["wal"]),
    "ray": ("Ray-WF 2.47.1", "ray", "ray_workloads.py", [], "ray", []),
}
SYSTEM_ENV = {"ray": {"RAY_USAGE_STATS_ENABLED": "0"}, "dbos": {}}


def run_compare(r: Runner, info: dict[str, Any]) -> dict[str, Any]:
    from compare import venvs

    systems = [s for s in r.args.systems.split(",") if s]
    for s in systems:
        if s not in COMPARE_SYSTEMS:
            raise SystemExit(f"unknown system {s!r}; choose from {', '.join(COMPARE_SYSTEMS)}")
    pythons: dict[str, str] = {}
    install_errors: dict[str, str] = {}
    for venv in sorted({COMPARE_SYSTEMS[s][1] for s in systems}):
        try:
            pythons[venv] = venvs.ensure(venv, log=r.log)
        except Exception as e:
            install_errors[venv] = str(e)
            r.log(f"[compare] could not set up {venv}: {e}")
    versions = {v: venvs.installed_versions(v) for v in pythons}
    reps = r.args.compare_repeats
    n_chain, n_fan, n_fib = (200, 200, 10) if r.args.quick else (1000, 1000, 15)
    cold_count = 3 if r.args.quick else 5
    warm_count = 20 if r.args.quick else 100
    plan = [("chain", n_chain), ("fanout", n_fan), ("fib", n_fib), ("onestep", warm_count)]

    results: dict[str, dict[str, Any]] = {"keelflow": {}}
    r.log(f"[compare] keelflow ({r.args.executor} executor)")
    for workload, n in plan:
        res = r.kf(
            f"cmp-kf-{workload}",
            workload,
            n,
            reps if workload != "onestep" else 1,
            extra=["--budget-s", str(r.args.budget)],
        )
        if res:
            results["keelflow"][workload] = res
    times, bad = hyperfine(r, lambda d: [sys.executable, "-c", COLD_CODE["keelflow"], d, r.args.executor], cold_count)
    if bad:
        r.fail("cmp-kf-cold", "keelflow one-step cold", bad)
    else:
        results["keelflow"]["cold"] = _times_result(times, r.last_other)

    for s in systems:
        label, venv, script, extra, cold_key, cold_tail = COMPARE_SYSTEMS[s]
        results[s] = {}
        if venv not in pythons:
            continue
        py = pythons[venv]
        env = SYSTEM_ENV.get(venv, {})
        r.log(f"[compare] {label}")
        for workload, n in plan:
            storage = r.fresh_dir(f"cmp-{s}-{workload}")
            argv = [
                workload,
                "--n",
                str(n),
                "--repeats",
                str(reps if workload != "onestep" else 1),
                "--storage",
                storage,
                "--budget-s",
                str(r.args.budget),
                *extra,
            ]
            r.log(f"  running {s} {workload} {n} ...")
            res, proc = r.json_workload(
                py, os.path.join(COMPARE, script), f"cmp-{s}-{workload}", argv, r.args.compare_timeout, env
            )
            if res is None:
                r.fail(f"{s} {workload}", f"{script} {workload}", proc)
                continue
            results[s][workload] = res
            r.log(f"  {s} {workload}: {res.get('per_step_ms')} ms/step")
        r.log(f"  running {s} one-step cold ...")
        code = COLD_CODE[cold_key]
        times, bad = hyperfine(
            r,
            lambda d, py=py, code=code, tail=cold_tail: [py, "-c", code, d, *tail],
            cold_count,
            timeout=r.args.compare_timeout,
            env=env,
        )
        if bad:
            r.fail(f"{s} cold", "one-step cold", bad)
        else:
            results[s]["cold"] = _times_result(times, r.last_other)
            r.log(f"  {s} cold: {results[s]['cold']['total_s']} s")
    print_compare(results, systems, info, versions, install_errors, r.args.executor, (n_chain, n_fan, n_fib))
    return {"results": results, "versions": versions, "install_errors": install_errors}


def print_compare(
    results: dict[str, dict[str, Any]],
    systems: list[str],
    info: dict[str, Any],
    versions: dict[str, dict[str, str]],
    install_errors: dict[str, str],
    executor: str,
    ns: tuple[int, int, int],
) -> None:
    n_chain, n_fan, n_fib = ns
    print()
    print(
        f"Side by side, one run, {info['date']}: {info['cpus']} cores ({info['cpu_model']}), "
        f"Python {info['python']}, storage on {info['storage_fs']}"
    )
    ver = []
    if "dbos" in versions:
        ver.append(f"dbos {versions['dbos'].get('dbos', '?')} (SQLAlchemy {versions['dbos'].get('sqlalchemy', '?')})")
    if "ray" in versions:
        ver.append(f"ray {versions['ray'].get('ray', '?')} (pyarrow {versions['ray'].get('pyarrow', '?')})")
    print(f"keelflow {info['keelflow']} ({executor} executor); " + "; ".join(ver))
    for venv, err in install_errors.items():
        print(f"INSTALL FAILED for {venv}: {err.splitlines()[0]}")
    print()
    rows_spec = [
        ("chain", f"chain {n_chain:,} (ms/step)", "per_step_ms", 1.0),
        ("fanout", f"fan-out {n_fan:,} + gather (ms/step)", "per_step_ms", 1.0),
        ("fib", f"fib({n_fib}) dynamic (ms/step)", "per_step_ms", 1.0),
        ("onestep", "one-step warm (ms/workflow)", "per_step_ms", 1.0),
        ("cold", "one-step cold, python -c (s)", "total_s", 1.0),
    ]
    labels = [COMPARE_SYSTEMS[s][0] for s in systems]
    headers = ["workload", "keelflow", *labels, *[f"{lab.split()[0]} vs kf" for lab in labels]]
    table = []
    for key, title, field, _ in rows_spec:
        kf = results["keelflow"].get(key, {}).get(field)
        row = [title, _fmt(kf, ".3f")]
        vals = [results.get(s, {}).get(key, {}).get(field) for s in systems]
        row += [_fmt(v, ".3f") for v in vals]
        row += [
            (f"{v / kf:.1f}x" if isinstance(v, (int, float)) and isinstance(kf, (int, float)) and kf else "-")
            for v in vals
        ]
        table.append(row)
    print_table(table, headers)
    print()
    reps = {s: {k: v.get("repeats") for k, v in results.get(s, {}).items()} for s in ["keelflow", *systems]}
    print(
        "repeats (median taken): "
        + "; ".join(f"{s}: " + ", ".join(f"{k} {v}" for k, v in rr.items()) for s, rr in reps.items())
    )
    loads = {
        s: [v.get("other_cores") for v in results.get(s, {}).values() if v.get("other_cores") is not None]
        for s in ["keelflow", *systems]
    }
    print(
        "mean other load (cores used by other processes meanwhile): "
        + "; ".join(f"{s} {statistics.mean(v):.2f}" for s, v in loads.items() if v)
    )
    print("'X vs kf' = X's figure / keelflow's: > 1 means keelflow is faster by that factor.")
    print(
        "DBOS/SQLite: SQLite as DBOS opens it (rollback journal, synchronous=FULL); DBOS/SQLite-WAL: "
        "journal_mode=WAL, synchronous=FULL (still fsync'd per commit)."
    )
    print(
        "Ray-WF: ray.init(storage=dir, include_dashboard=False, _node_ip_address=127.0.0.1); its checkpoints "
        "are not fsync'd. Ray's own daemons' CPU shows up as other load."
    )


# -- main ----------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run (< 30 s)")
    p.add_argument(
        "--only",
        help=f"comma-separated groups ({', '.join(GROUPS)}) or row names (e.g. chain-10000); "
        "or raycluster alone (ray_cluster.py)",
    )
    p.add_argument("--executor", choices=["local", "thread"], default="local")
    p.add_argument("--json", metavar="OUT", help="also write every figure to this JSON file")
    p.add_argument("--storage-dir", help="base directory for workload storage (default: a temp dir on the repo's disk)")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=None,
        metavar="S",
        help="before each workload wait up to S seconds for other processes to use < 0.3 cores "
        "(default 15, 0 with --quick)",
    )
    p.add_argument("--keep-storage", action="store_true", help="keep the workloads' storage directories")
    p.add_argument(
        "--compare",
        action="store_true",
        help="side by side with DBOS and Ray Workflows 2.47.1 (installs venvs in benchmarks/.venvs)",
    )
    p.add_argument("--systems", default="dbos,dbos-wal,ray", help="--compare: which systems (dbos, dbos-wal, ray)")
    p.add_argument("--compare-repeats", type=int, default=3, help="--compare: repeats per workload (default 3)")
    p.add_argument(
        "--budget",
        type=float,
        default=60.0,
        help="--compare: stop repeating a workload once it has run this many seconds (default 60)",
    )
    p.add_argument("--compare-timeout", type=float, default=1800.0, help="--compare: seconds per subprocess")
    p.add_argument("--setup-only", action="store_true", help="--compare: only create the virtualenvs")
    args = p.parse_args()
    if args.wait_idle is None:
        args.wait_idle = 0.0 if args.quick else 15.0
    args.only = [o.strip() for o in args.only.split(",") if o.strip()] if args.only else None
    if args.only and "raycluster" in args.only:
        # A driver of its own (ray_cluster.py): it starts and stops local Ray clusters.
        if len(args.only) > 1 or args.compare:
            p.error("--only raycluster runs alone")
        cmd = [sys.executable, os.path.join(HERE, "ray_cluster.py"), *(["--quick"] if args.quick else [])]
        cmd += [*(["--json", args.json] if args.json else []), *(["--keep-storage"] if args.keep_storage else [])]
        cmd += ["--storage-dir", args.storage_dir] if args.storage_dir else []
        sys.exit(subprocess.call(cmd))
    for o in args.only or []:
        if o not in GROUPS and o.split("-", 1)[0] not in GROUPS:
            p.error(f"--only {o!r}: not a group ({', '.join(GROUPS)}) nor a row name such as chain-10000")

    if args.setup_only:
        from compare import venvs

        for name in venvs.SYSTEMS:
            print(venvs.ensure(name))
        return

    base, mount = pick_storage_base(args.storage_dir)
    info = machine_info(base, mount)
    runner = Runner(args, base)
    report: dict[str, Any] = {"machine": info, "executor": args.executor, "quick": args.quick}
    t0 = time.perf_counter()
    try:
        if args.compare:
            report["compare"] = run_compare(runner, info)
        else:
            run_keelflow(runner)
            print_keelflow(runner.rows, info, args.executor)
            flat = flatness(runner.rows)
            if flat:
                report["flatness"] = flat
            ratios = actor_ratios(runner.rows)
            if ratios:
                report["actor_ratios"] = ratios
        report["rows"] = runner.rows
    finally:
        runner.cleanup()
    report["failures"] = runner.failures
    report["elapsed_s"] = round(time.perf_counter() - t0, 1)
    if runner.failures:
        print()
        print(f"{len(runner.failures)} workload(s) failed:")
        for f in runner.failures:
            print(f"--- {f['workload']}: {f['what']} ({f['status']})")
            print(f["stderr_tail"])
    print(f"\n(benchmark run took {report['elapsed_s']} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
        print(f"figures written to {args.json}")
    # Figures only: the exit code says whether every workload ran, not how fast.
    sys.exit(1 if runner.failures else 0)


if __name__ == "__main__":
    main()
