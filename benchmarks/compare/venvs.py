"""Virtualenvs for the side-by-side mode: one per compared system, under ``benchmarks/.venvs/``.

Made only on request (``python benchmarks/run.py --compare`` or ``--setup-only``); never by the
tests. Each venv is built with the same interpreter that runs the benchmark (so every system
runs on the same Python), from the package registry through plain ``pip``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
VENVS = os.path.join(os.path.dirname(HERE), ".venvs")

#: name -> (pip requirements, import check run inside the venv)
SYSTEMS: dict[str, tuple[list[str], str]] = {
    # DBOS Transact, latest 3.x (3.4.0 on 2026-11-21), on SQLite: no server needed.
    "dbos": (["dbos>=3,<4"], "import dbos; print(dbos.__version__ if hasattr(dbos, '__version__') else '')"),
    # Ray 2.47.1 is the last release with ray.workflow (removed in 2.48); workflows' storage
    # layer needs pyarrow. ray_cluster.py also starts its Ray cluster from this venv: a driver
    # must run the cluster's own Ray version.
    "ray": (["ray[default]==2.47.1", "pyarrow"], "import ray, ray.workflow; print(ray.__version__)"),
}


def venv_python(name: str) -> str:
    return os.path.join(VENVS, name, "bin", "python")


def _marker(name: str) -> str:
    return os.path.join(VENVS, name, ".keelflow-bench-ok")


def ready(name: str) -> bool:
    return os.path.exists(_marker(name)) and os.path.exists(venv_python(name))


def installed_versions(name: str) -> dict[str, str]:
    try:
        with open(_marker(name)) as f:
            return json.load(f).get("versions", {})
    except (OSError, ValueError):
        return {}


def ensure(name: str, log=print) -> str:
    """Create the venv ``name`` if missing; its python. Raises ``RuntimeError`` with pip's
    output if the install fails."""
    if ready(name):
        return venv_python(name)
    requirements, check = SYSTEMS[name]
    root = os.path.join(VENVS, name)
    os.makedirs(VENVS, exist_ok=True)
    t0 = time.monotonic()
    log(f"[compare] creating virtualenv {root} with: {' '.join(requirements)} (this takes minutes)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", root], check=True)
    py = venv_python(name)
    cmd = [py, "-m", "pip", "install", "--disable-pip-version-check", *requirements]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    logfile = os.path.join(root, "pip-install.log")
    with open(logfile, "w") as f:
        f.write(proc.stdout)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-40:])
        raise RuntimeError(
            f"pip install {' '.join(requirements)} into {root} failed (exit {proc.returncode}); "
            f"full log: {logfile}\n{tail}"
        )
    probe = subprocess.run([py, "-c", check], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if probe.returncode != 0:
        raise RuntimeError(f"{name} installed but does not import:\n{probe.stdout}")
    freeze = subprocess.run([py, "-m", "pip", "freeze"], stdout=subprocess.PIPE, text=True).stdout
    versions = {}
    for line in freeze.splitlines():
        if "==" in line:
            k, v = line.split("==", 1)
            versions[k.lower()] = v
    with open(_marker(name), "w") as f:
        json.dump({"requirements": requirements, "versions": versions, "python": sys.version.split()[0]}, f)
    log(f"[compare] {name} venv ready in {time.monotonic() - t0:.0f} s")
    return py


if __name__ == "__main__":
    for n in sys.argv[1:] or list(SYSTEMS):
        print(ensure(n))
