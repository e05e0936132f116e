"""A real two-node Ray cluster on loopback for the tests, started once per test session.

The head node has 2 CPUs; a second node has 1 CPU and a custom resource ``node2`` that only it
offers, so a test can show where a step was placed. Both run from a temp dir of their own, and
every driver gets the address explicitly (``RAY_ADDRESS``): a bare ``ray.init()`` would attach
to whatever cluster an earlier ``ray start`` on this machine left in ``/tmp/ray``.

Nothing in the user's home counts either: the cluster's processes (and the drivers started here)
get a HOME in the temp dir and ``RAY_AUTH_MODE=disabled``. Ray 2.60 turns token authentication on
for a cluster that ``ray start`` starts when it finds a token (``~/.ray/auth_token``,
``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``), and then refuses every driver that has none.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# Ray replaces 127.0.0.1 (and localhost) with the machine's outbound address when it advertises
# a node; any other loopback address is kept, so every connection stays on loopback.
NODE_IP = "127.0.0.2"
START_TIMEOUT = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RayCluster:
    def __init__(self, nodes: int = 2, env: dict[str, str] | None = None) -> None:
        """``env``: settings of the cluster's own (``RAY_AUTH_MODE="token"``, say), over the defaults."""
        self.nodes = nodes
        # Short: Ray puts unix sockets under it, and their paths are limited to 107 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="kfray", dir="/tmp")
        self.home = os.path.join(self.temp_dir, "home")
        os.mkdir(self.home)
        self.port = free_port()
        self.address = f"{NODE_IP}:{self.port}"
        self.env = dict(os.environ)
        for name in [n for n in self.env if n.startswith(("KEELFLOW_", "KF_"))]:
            del self.env[name]  # one test's settings must not become every worker's
        for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
            self.env.pop(name, None)
        self.env.update(
            RAY_USAGE_STATS_ENABLED="0",
            HOME=self.home,  # no ~/.ray of the user's
            RAY_AUTH_MODE="disabled",
            # Ray's workers import keelflow and the tests' step modules by reference.
            PYTHONPATH=os.pathsep.join([str(TESTS.parent / "src"), str(TESTS), self.env.get("PYTHONPATH", "")]),
        )
        self.env.update(env or {})

    def _ray(self, *args: str, timeout: float = START_TIMEOUT) -> None:
        cmd = [sys.executable, "-m", "ray.scripts.scripts", *args]
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"`ray {' '.join(args)}` failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")

    def start(self) -> RayCluster:
        common = [f"--node-ip-address={NODE_IP}", "--disable-usage-stats", "--log-style=record"]
        self._ray(
            "start",
            "--head",
            f"--port={self.port}",
            "--num-cpus=2",
            f"--temp-dir={self.temp_dir}",
            "--include-dashboard=false",
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            "--object-store-memory=300000000",
            *common,
        )
        if self.nodes > 1:
            self._ray(
                "start",
                f"--address={self.address}",
                "--num-cpus=1",
                f"--resources={json.dumps({'node2': 1})}",
                "--object-store-memory=200000000",
                *common,
            )
        self.wait_for_nodes(self.nodes)
        return self

    def wait_for_nodes(self, n: int) -> None:
        """Until the cluster reports ``n`` live nodes (a second node registers asynchronously)."""
        code = (
            "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR');"
            "print(sum(1 for x in ray.nodes() if x['Alive']))"
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            out = subprocess.run(
                [sys.executable, "-c", code, self.address], env=self.env, capture_output=True, text=True, timeout=60
            )
            if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray cluster did not reach {n} nodes: {out.stdout}\n{out.stderr}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Kill every process of this cluster (what `ray stop --force` does, but `ray stop`
        would also stop clusters that this test session did not start)."""
        try:
            for _ in range(100):
                pids = self.pids()
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.1)
        finally:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def pids(self) -> list[int]:
        """Live processes of this cluster: those naming its temp dir on their command line
        (gcs, raylets, monitors), and everything they started (agents, workers: Ray renames
        those, so only their parentage tells)."""
        mark = self.temp_dir.encode()
        parent: dict[int, int] = {}
        marked = set()
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == os.getpid():
                continue
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    cmdline = f.read()
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] in ("Z", "X"):
                continue
            parent[int(name)] = int(fields[1])
            if mark in cmdline:
                marked.add(int(name))
        found = set(marked)
        grew = True
        while grew:
            kids = {pid for pid, pp in parent.items() if pp in found} - found
            found |= kids
            grew = bool(kids)
        return sorted(found)
