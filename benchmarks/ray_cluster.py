#!/usr/bin/env python3
"""keelflow's Ray executor against Ray Workflows 2.47.1, on the same local two-node Ray cluster.

    python benchmarks/ray_cluster.py            # chain 200, fan-out 500, CPU-bound 8 x 0.5 s; 3 repeats
    python benchmarks/ray_cluster.py --quick    # chain 50, fan-out 100, CPU-bound 4 x 0.5 s; 1 repeat
    python benchmarks/ray_cluster.py --systems ray --json out.json

For each system in turn it starts a Ray cluster on this machine from that system's own Ray (2.60
for keelflow, the interpreter running this script; 2.47.1 from ``benchmarks/.venvs/ray`` for Ray
Workflows, whose driver must match the cluster's version): a head node with 1 CPU and the custom
resource ``head``, and a second node with 1 CPU and the custom resource ``node2``, both on a
loopback address, in a temp dir of their own. Every workload then runs in a fresh driver
process given the cluster's address explicitly (``RAY_ADDRESS`` and ``--address``); the
cluster is stopped before the next system's starts, also on a failure or Ctrl-C. Only the
processes this script started are stopped (found by their session id and temp dir): ``ray
stop`` would stop every Ray on the machine.

Workloads (``kf_ray_workloads.py`` for keelflow, ``compare/ray_workloads.py`` for Ray Workflows):
a chain of N steps, a fan-out of N trivial steps gathered by one, and a fan-out of CPU-bound
steps placed three ways (by Ray; half on each node through the custom resources; all on
``node2``, one at a time), each step reporting the node and process it ran in. Figures are
printed, never judged; the exit code is 1 only if a workload failed to run. See
benchmarks/README.md ("Ray cluster").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run as bench  # noqa: E402
from _bench_util import CPU_MODES, calibrate_burn  # noqa: E402

KF_SCRIPT = os.path.join(HERE, "kf_ray_workloads.py")
RAY_SCRIPT = os.path.join(HERE, "compare", "ray_workloads.py")
START_TIMEOUT = 120.0
#: Ray rewrites 127.0.0.1 and "localhost" to the machine's outbound interface address (and a
#: second node cannot join a head pinned to 127.0.0.1), so the cluster uses another loopback
#: address: all its traffic stays on the loopback interface.
DEFAULT_NODE_IP = "127.0.0.2"
#: Per node; workloads move small values only (Ray's default is 30% of RAM per node).
OBJECT_STORE_BYTES = 300_000_000

# Lists the cluster's live nodes as JSON; run with the cluster's own Ray version.
NODES_CODE = """\
import json, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(json.dumps([{"id": n["NodeID"], "resources": n["Resources"]} for n in ray.nodes() if n["Alive"]]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_session(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[3])
    except (OSError, ValueError, IndexError):
        return None


def _proc_cpu_ticks(pid: int) -> int:
    """CPU clock ticks of a process and of the children it has reaped (Ray's workers are the
    raylet's children)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    except (OSError, ValueError, IndexError):
        return 0


def _proc_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class LocalCluster:
    """A head node (1 CPU + resource ``head``) and a second node (1 CPU + resource ``node2``)
    started with one Python's Ray, on one loopback address, in a temp dir of their own. The
    custom resources let a step ask for one node."""

    def __init__(self, python: str, node_ip: str, storage: str | None, log: Any) -> None:
        self.python = python
        self.node_ip = node_ip
        self.storage = storage  # Ray Workflows' cluster-wide storage (``ray start --storage``)
        self.log = log
        # Short: Ray puts unix sockets under it, and their paths are limited to 107 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="kfrc", dir="/tmp" if os.path.isdir("/tmp") else None)
        self.port = free_port()
        self.address = f"{node_ip}:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env["RAY_USAGE_STATS_ENABLED"] = "0"
        self.sessions: list[int] = []  # each `ray start` runs in a session of its own
        self.nodes: list[dict[str, Any]] = []
        self.start_s = 0.0
        self.keep_temp = False

    def _ray_start(self, *args: str) -> None:
        common = [
            f"--node-ip-address={self.node_ip}",
            "--num-cpus=1",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            "--disable-usage-stats",
            "--log-style=record",
            # Ports of our own: other Ray clusters on this machine may hold the defaults.
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
        ]
        if self.storage:
            common.append(f"--storage={self.storage}")
        cmd = [self.python, "-m", "ray.scripts.scripts", "start", *args, *common]
        proc = subprocess.Popen(
            cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        self.sessions.append(proc.pid)
        try:
            out, _ = proc.communicate(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            raise RuntimeError(
                f"`ray start {' '.join(args)}` did not finish in {START_TIMEOUT:.0f} s:\n{out[-3000:]}"
            ) from None
        if proc.returncode != 0:
            raise RuntimeError(f"`ray start {' '.join(args)}` failed (exit {proc.returncode}):\n{out[-3000:]}")

    def start(self) -> LocalCluster:
        t = time.perf_counter()
        head = ["--head", f"--port={self.port}", f"--temp-dir={self.temp_dir}", "--include-dashboard=false"]
        head.append(f"--resources={json.dumps({'head': 1})}")
        try:
            # A Ray with its client installed would start the client server on 10001, which
            # another cluster on this machine may hold; a Ray without it refuses the flag.
            self._ray_start(*head, f"--ray-client-server-port={free_port()}")
        except RuntimeError as e:
            if "ray[client]" not in str(e):
                raise
            self._ray_start(*head)
        self._ray_start(f"--address={self.address}", f"--resources={json.dumps({'node2': 1})}")
        self._wait_for_nodes(2)
        self.start_s = time.perf_counter() - t
        return self

    def _wait_for_nodes(self, n: int) -> None:
        """Until the cluster reports ``n`` live nodes (a second node registers asynchronously)."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            out = subprocess.run(
                [self.python, "-c", NODES_CODE, self.address], env=self.env, capture_output=True, text=True, timeout=90
            )
            if out.returncode == 0:
                try:
                    nodes = json.loads(out.stdout.strip().splitlines()[-1])
                except (ValueError, IndexError):
                    nodes = []
                if len(nodes) == n:
                    self.nodes = nodes
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray cluster did not reach {n} live nodes:\n{out.stdout}\n{out.stderr[-3000:]}")
            time.sleep(0.5)

    def label(self, node_id: str) -> str:
        """``head`` or ``node2`` for a node id of this cluster."""
        for n in self.nodes:
            if n["id"] == node_id:
                return "node2" if "node2" in n["resources"] else "head" if "head" in n["resources"] else n["id"][:8]
        return node_id[:8]

    def _ours(self, seen: dict[int, bool] | None = None) -> list[int]:
        """Live processes this cluster consists of: in a session a `ray start` of ours opened
        (its daemons and their workers), or naming our temp dir on their command line.
        ``seen`` caches the answer per pid across calls."""
        me = os.getpid()
        found = []
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == me:
                continue
            pid = int(d)
            mine = None if seen is None else seen.get(pid)
            if mine is None:
                mine = _proc_session(pid) in self.sessions or self.temp_dir in _proc_cmdline(pid)
                if seen is not None:
                    seen[pid] = mine
            if mine:
                found.append(pid)
        return found

    def cpu_ticks(self, seen: dict[int, bool] | None = None) -> dict[int, int]:
        """CPU clock ticks each live process of this cluster has used so far."""
        return {pid: _proc_cpu_ticks(pid) for pid in self._ours(seen)}

    def stop(self) -> None:
        """TERM, then KILL after 10 s, every process of this cluster (by pid); the temp dir goes."""
        pids = self._ours()
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            deadline = time.monotonic() + wait
            while pids and time.monotonic() < deadline:
                time.sleep(0.1)
                pids = self._ours()
            if not pids:
                break
        if pids:
            self.log(f"  (could not stop Ray processes {pids})")
        if not self.keep_temp:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


class ClusterCpu:
    """CPU seconds a cluster's processes use between ``start`` and ``stop``, sampled every
    ``interval`` s: a worker that exits is reaped without its time being added to its parent's,
    so its last sample counts (it can miss up to ``interval`` s of its CPU)."""

    def __init__(self, cluster: LocalCluster, interval: float = 0.2) -> None:
        self.cluster = cluster
        self.interval = interval
        self._first: dict[int, int] = {}
        self._last: dict[int, int] = {}
        self._seen: dict[int, bool] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cluster-cpu", daemon=True)
        self.total = 0.0

    def _sample(self) -> None:
        started = bool(self._last)
        for pid, ticks in self.cluster.cpu_ticks(self._seen).items():
            self._first.setdefault(pid, 0 if started else ticks)  # a process started since: all of it
            self._last[pid] = ticks

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> ClusterCpu:
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> float:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self._sample()
        self.total = sum(self._last[p] - self._first[p] for p in self._last) / bench._HZ
        return self.total


def run_driver(cmd: list[str], env: dict[str, str], timeout: float, cluster: LocalCluster) -> tuple[bench.Proc, float]:
    """Run one workload process to its end (see ``run.run_proc``); also the CPU seconds the
    cluster's processes used meanwhile, which do not count as other load."""
    sampler = ClusterCpu(cluster)
    proc = bench.run_proc(cmd, timeout, env, inherit_env=False, known=sampler)
    return proc, sampler.total


def wait_quiet(cluster: LocalCluster, limit: float, log: Any) -> float:
    """Wait up to ``limit`` seconds until processes other than this cluster's use less than
    0.3 of a core (another test suite on the machine skews every figure); that load."""

    def sample(seconds: float) -> float:
        b, own, t = bench._busy_jiffies(), time.process_time(), time.perf_counter()
        sampler = ClusterCpu(cluster).start()
        time.sleep(seconds)
        ours = sampler.stop() + time.process_time() - own
        return max(0.0, ((bench._busy_jiffies() - b) / bench._HZ - ours) / (time.perf_counter() - t))

    if not limit:
        return 0.0
    t = time.monotonic()
    load = sample(0.5)
    while load > 0.3 and time.monotonic() - t < limit:
        load = sample(1.0)
    if load > 0.3:
        log(f"  (machine still busy: other processes use {load:.1f} cores; running anyway)")
    return load


def _ray_version(python: str) -> str:
    out = subprocess.run([python, "-c", "import ray; print(ray.__version__)"], capture_output=True, text=True)
    return out.stdout.strip() or "?"


#: key -> label, workload script
SYSTEMS = {"keelflow": ("keelflow (Ray executor)", KF_SCRIPT), "ray": ("Ray Workflows 2.47.1", RAY_SCRIPT)}

# Makes keelflow's Ray executor connect, as the workloads will (RAY_ADDRESS is set).
KF_PROBE = """\
import sys, keelflow
keelflow.init(sys.argv[1], executor="ray")
keelflow.shutdown()
"""


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.base, self.mount = bench.pick_storage_base(args.storage_dir)
        self.info = bench.machine_info(self.base, self.mount)
        self.failures: list[dict[str, Any]] = []
        self.results: dict[str, dict[str, Any]] = {}
        self.clusters: dict[str, dict[str, Any]] = {}
        self._dirs: list[str] = []

    def log(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def fresh_dir(self, tag: str) -> str:
        d = tempfile.mkdtemp(prefix=f"kfbench-rc-{tag}-", dir=self.base)
        self._dirs.append(d)
        return d

    def cleanup(self) -> None:
        if not self.args.keep_storage:
            for d in self._dirs:
                shutil.rmtree(d, ignore_errors=True)

    def fail(self, system: str, what: str, status: str, tail: str) -> None:
        self.failures.append({"system": system, "workload": what, "status": status, "stderr_tail": tail})
        self.log(f"  !! {system} {what}: {status}; stderr tail:\n{tail}")

    def plan(self) -> list[tuple[str, int, int]]:
        a = self.args
        return [("chain", a.chain, a.repeats), ("fanout", a.fanout, a.repeats), ("cpu", a.cpu_steps, a.cpu_repeats)]

    def run_system(self, system: str, python: str, iterations: int) -> None:
        script = SYSTEMS[system][1]
        self.results[system] = {}
        storage = self.fresh_dir(f"{system}-cluster-storage") if system == "ray" else None
        cluster = LocalCluster(python, self.args.node_ip, storage, self.log)
        meta: dict[str, Any] = {"ray_version": _ray_version(python), "python": python}
        if system == "ray":
            from compare import venvs

            meta["pyarrow"] = venvs.installed_versions("ray").get("pyarrow")
        self.clusters[system] = meta
        self.log(f"[{system}] starting a two-node Ray {meta['ray_version']} cluster at {cluster.address} ...")
        try:
            try:
                cluster.start()
            except (RuntimeError, subprocess.SubprocessError) as e:
                self.fail(system, "cluster start", "failed", str(e))
                return
            meta.update(address=cluster.address, start_s=round(cluster.start_s, 1), nodes=cluster.nodes)
            self.log(
                f"  cluster up in {cluster.start_s:.1f} s: nodes {[cluster.label(n['id']) for n in cluster.nodes]}"
            )
            env = {**cluster.env, "RAY_ADDRESS": cluster.address}
            if system == "keelflow":
                probe, _ = run_driver([python, "-c", KF_PROBE, self.fresh_dir("kf-probe")], env, 300, cluster)
                if probe.returncode != 0:
                    tail = "\n".join((probe.stderr or probe.stdout).strip().splitlines()[-30:])
                    self.fail(system, "keelflow.init(executor='ray')", bench._status(probe.returncode), tail)
                    return
            for workload, n, reps in self.plan():
                self.run_workload(system, python, script, cluster, env, workload, n, reps, iterations)
        finally:
            if any(f["system"] == system for f in self.failures):
                cluster.keep_temp = True
                self.log(f"  (Ray's logs kept in {cluster.temp_dir})")
            self.log(f"[{system}] stopping the cluster ...")
            cluster.stop()

    @staticmethod
    def by_node(cluster: LocalCluster, placements: list[list[Any]]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node_id, _pid in placements:
            lab = cluster.label(node_id)
            counts[lab] = counts.get(lab, 0) + 1
        return dict(sorted(counts.items()))

    def run_workload(
        self,
        system: str,
        python: str,
        script: str,
        cluster: LocalCluster,
        env: dict[str, str],
        workload: str,
        n: int,
        reps: int,
        iterations: int,
    ) -> None:
        out = os.path.join(self.fresh_dir(f"{system}-{workload}-out"), "result.json")
        argv = [workload, "--n", str(n), "--repeats", str(reps), "--address", cluster.address, "--out", out]
        argv += ["--budget-s", str(self.args.budget)]
        if system == "keelflow":
            argv += ["--storage", self.fresh_dir(f"{system}-{workload}")]
        if workload == "cpu":
            argv += ["--iterations", str(iterations)]
        wait_quiet(cluster, self.args.wait_idle, self.log)
        self.log(f"  running {system} {workload} {n} ...")
        proc, cluster_cpu = run_driver([python, script, *argv], env, self.args.timeout, cluster)
        if proc.returncode != 0 or not os.path.exists(out):
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-40:])
            self.fail(system, workload, bench._status(proc.returncode), tail)
            return
        with open(out) as f:
            res = json.load(f)
        res.update(
            process_wall_s=round(proc.wall_s, 3),
            driver_cpu_s=round(proc.cpu_s, 2),
            cluster_cpu_s=round(cluster_cpu, 2),
            other_cores=round(proc.other_cores, 2),
        )
        if workload == "cpu":
            for mode in CPU_MODES:
                r = res[mode]
                r["by_node"] = self.by_node(cluster, r["placements"])
                r["by_node_per_run"] = [self.by_node(cluster, x) for x in r["placements_per_run"]]
                r["pids_by_node"] = {}
                for node_id, pid in r["placements"]:
                    pids = r["pids_by_node"].setdefault(cluster.label(node_id), [])
                    if pid not in pids:
                        pids.append(pid)
            res["speedup"] = round(res["pinned"]["total_s"] / res["spread"]["total_s"], 2)
            res["speedup_split"] = round(res["pinned"]["total_s"] / res["split"]["total_s"], 2)
            self.log(
                f"  {system} cpu: placed by Ray {res['spread']['total_s']:.2f} s {res['spread']['by_node']}, "
                f"split {res['split']['total_s']:.2f} s {res['split']['by_node']}, "
                f"node2 only {res['pinned']['total_s']:.2f} s"
            )
        else:
            self.log(f"  {system} {workload}: {res['per_step_ms']:.3f} ms/step")
        self.results[system][workload] = res


def print_report(b: Bench, systems: list[str], iterations: int) -> None:
    a, info = b.args, b.info
    print()
    print(
        f"Ray cluster side by side, {info['date']}: {info['cpus']} cores ({info['cpu_model']}), "
        f"Python {info['python']}, storage on {info['storage_fs']}"
    )
    print(
        f"Each system on its own local Ray cluster of the same shape: a head node (1 CPU + resource head) and a "
        f"second node (1 CPU + resource node2), both on {a.node_ip}, started from that system's Ray."
    )
    for s in systems:
        m = b.clusters.get(s, {})
        extra = f", cluster up in {m['start_s']} s" if "start_s" in m else ""
        name = f"keelflow {info['keelflow']}" if s == "keelflow" else "Ray Workflows"
        if s == "ray" and m.get("pyarrow"):
            extra += f" (pyarrow {m['pyarrow']})"
        print(f"  {name} on ray {m.get('ray_version', '?')}{extra}")
    print()
    labels = {"keelflow": "keelflow", "ray": "Ray-WF 2.47.1"}
    res = b.results

    def get(s: str, *path: str) -> Any:
        v: Any = res.get(s, {})
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        return v

    k, secs = a.cpu_steps, a.cpu_seconds
    rows = [
        (f"chain {a.chain:,} (ms/step)", ("chain", "per_step_ms"), True),
        (f"fan-out {a.fanout:,} + gather (ms/step)", ("fanout", "per_step_ms"), True),
        (f"cpu {k} x {secs:g} s, placed by Ray (s)", ("cpu", "spread", "total_s"), True),
        (f"cpu {k} x {secs:g} s, half on each node (s)", ("cpu", "split", "total_s"), True),
        (f"cpu {k} x {secs:g} s, all on node2 (s)", ("cpu", "pinned", "total_s"), True),
        ("cpu speed-up, placed by Ray (node2 only / it)", ("cpu", "speedup"), False),
        ("cpu speed-up, half on each node", ("cpu", "speedup_split"), False),
        ("cpu parallelism, placed by Ray (CPU s / wall s)", ("cpu", "spread", "parallelism"), False),
        ("cpu parallelism, half on each node", ("cpu", "split", "parallelism"), False),
        ("cpu parallelism, all on node2", ("cpu", "pinned", "parallelism"), False),
    ]
    headers = ["workload", *[labels[s] for s in systems]]
    ratio = "keelflow" in systems and "ray" in systems
    if ratio:
        headers.append("Ray-WF / keelflow")
    table = []
    for title, path, is_cost in rows:
        vals = [get(s, *path) for s in systems]
        row = [title, *[bench._fmt(v, ".3f" if is_cost else ".2f") for v in vals]]
        if ratio:
            kf, rw = get("keelflow", *path), get("ray", *path)
            ok = is_cost and isinstance(kf, (int, float)) and isinstance(rw, (int, float)) and kf
            row.append(f"{rw / kf:.1f}x" if ok else "")
        table.append(row)
    bench.print_table(table, headers)
    print()
    for s in systems:
        cpu = get(s, "cpu")
        if not cpu:
            continue
        for mode, what in (("spread", "placed by Ray"), ("split", "half on each node"), ("pinned", "all on node2")):
            r = cpu[mode]
            spread = ", ".join(
                f"{node} {count} (pid{'s' if len(r['pids_by_node'][node]) > 1 else ''} "
                f"{', '.join(map(str, r['pids_by_node'][node]))})"
                for node, count in r["by_node"].items()
            )
            runs = " / ".join(" ".join(f"{node} {count}" for node, count in x.items()) for x in r["by_node_per_run"])
            print(
                f"{labels[s]} cpu steps {what}: median run {spread}; steps got {r['step_cpu_s']:.2f} CPU s; "
                f"walls {r['times_s']}; per run: {runs}"
            )
    print()
    reps = {s: {w: v.get("repeats") for w, v in res.get(s, {}).items() if w != "cpu"} for s in systems}
    print("repeats (median taken): " + "; ".join(f"{s}: {r}" for s, r in reps.items()))
    loads = {s: [v["other_cores"] for v in res.get(s, {}).values() if "other_cores" in v] for s in systems}
    print(
        "other load (cores used meanwhile by processes other than the driver and its cluster; 0 = quiet): "
        + "; ".join(f"{s} {statistics.mean(v):.2f} (most {max(v):.2f})" for s, v in loads.items() if v)
    )
    print(
        f"ms/step = median repeat / steps (chain N steps, fan-out N + 1); cpu steps burn ~{secs:g} s each "
        f"({iterations:,} iterations, calibrated here); speed-up = the all-on-node2 run's wall (one step at a "
        "time) / this run's; parallelism = CPU s the steps got / wall s (the VM's speed per process varies)."
    )
    print(
        "keelflow: fresh file storage per workload, fsync'd appends; Ray Workflows: one storage dir per cluster "
        "(`ray start --storage`), checkpoints written without fsync."
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="chain 50, fan-out 100, cpu 4 x 0.5 s, 1 repeat")
    p.add_argument("--systems", default="keelflow,ray", help="keelflow, ray or both (default), in that order")
    p.add_argument("--chain", type=int, help="chain length (default 200)")
    p.add_argument("--fanout", type=int, help="fan-out width (default 500)")
    p.add_argument("--cpu-steps", type=int, help="CPU-bound steps (default 8)")
    p.add_argument("--cpu-seconds", type=float, help="CPU seconds per CPU-bound step (default 0.5)")
    p.add_argument("--repeats", type=int, help="repeats of chain and fan-out (default 3)")
    p.add_argument("--cpu-repeats", type=int, help="repeats of each CPU-bound run (default 3)")
    p.add_argument("--budget", type=float, default=60.0, help="stop repeating once a workload ran this many s")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per workload process")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=None,
        metavar="S",
        help="before each workload wait up to S s for other processes to use < 0.3 cores (default 30, 0 with --quick)",
    )
    p.add_argument("--node-ip", default=DEFAULT_NODE_IP, help=f"loopback address of both nodes ({DEFAULT_NODE_IP})")
    p.add_argument("--storage-dir", help="base directory for storage (default: a temp dir on the repo's disk)")
    p.add_argument("--keep-storage", action="store_true")
    p.add_argument("--json", metavar="OUT", help="also write every figure to this JSON file")
    a = p.parse_args()
    # CPU-bound steps much shorter than 0.5 s tend to queue on one node: Ray reuses a worker it
    # holds sooner than it places a task on another node.
    quick = {"chain": 50, "fanout": 100, "cpu_steps": 4, "cpu_seconds": 0.5, "repeats": 1, "cpu_repeats": 1}
    full = {"chain": 200, "fanout": 500, "cpu_steps": 8, "cpu_seconds": 0.5, "repeats": 3, "cpu_repeats": 3}
    if a.wait_idle is None:
        a.wait_idle = 0.0 if a.quick else 30.0
    for key, value in (quick if a.quick else full).items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    for s in systems:
        if s not in SYSTEMS:
            p.error(f"unknown system {s!r}; choose from {', '.join(SYSTEMS)}")

    def _terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop clusters

    signal.signal(signal.SIGTERM, _terminate)
    b = Bench(a)
    t0 = time.perf_counter()
    iterations = calibrate_burn(a.cpu_seconds)
    try:
        for s in systems:
            if s == "ray":
                from compare import venvs

                try:
                    python = venvs.ensure("ray", log=b.log)
                except Exception as e:
                    b.fail(s, "virtualenv", "install failed", str(e))
                    continue
            else:
                python = sys.executable
            b.run_system(s, python, iterations)
    finally:
        b.cleanup()
    print_report(b, systems, iterations)
    elapsed = round(time.perf_counter() - t0, 1)
    if b.failures:
        print()
        print(f"{len(b.failures)} workload(s) failed:")
        for f in b.failures:
            print(f"--- {f['system']} {f['workload']} ({f['status']})")
            print(f["stderr_tail"])
    print(f"\n(benchmark run took {elapsed} s)")
    if a.json:
        report = {
            "machine": b.info,
            "args": vars(a),
            "iterations": iterations,
            "clusters": b.clusters,
            "results": b.results,
            "failures": b.failures,
            "elapsed_s": elapsed,
        }
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
        print(f"figures written to {a.json}")
    # Figures only: the exit code says whether every workload ran, not how fast.
    sys.exit(1 if b.failures else 0)


if __name__ == "__main__":
    main()
