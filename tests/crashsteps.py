"""Step functions and a driver for the crash-recovery tests (test_crash.py, test_property.py).

The steps are importable (so workers load them by import path) and controlled through the
environment, so the same code serves the process that crashes and the one that resumes:

- ``KF_EXEC_LOG``: every step execution appends one line ``label<TAB>pid<TAB>args`` to this
  file (``O_APPEND``, one ``write``), so execution counts are exact.
- ``KF_CRASH_DIR``: crash points. A step reaching crash point ``key`` while the file
  ``<dir>/block-<key>`` exists writes ``<dir>/reached-<key>`` (holding its pid) and blocks
  until the block file is removed (or a safety limit passes, then raises).

Workflows are described by a JSON-able *spec* so a test, the driver subprocess and a pure
Python reference evaluator agree on the DAG::

    {"nodes": [{"id": "a", "kind": "combine", "inputs": []},
               {"id": "x", "kind": "expand", "k": 3, "inputs": ["a"]},   # dynamic: a chain x.0..x.2
               {"id": "c", "kind": "countdown", "n": 4, "inputs": ["x"]},# recursive: c@4 .. c@0
               {"id": "f", "kind": "flaky", "fails": 2, "inputs": ["c"]}],# raises on attempts 1..fails
     "root": "f"}

Every step node is named after its label (``options(name=label)``), so ``get_output(wid,
name=label)`` finds it.

Driver: ``python -c "import crashsteps; crashsteps.main()" MODE STORAGE EXECUTOR WID SPEC_FILE``
prints one line ``RESULT <json>`` on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time
import zlib
from typing import Any

import keelflow as workflow

LOG_ENV = "KF_EXEC_LOG"
CTRL_ENV = "KF_CRASH_DIR"
BLOCK_LIMIT = 120.0  # a blocked step gives up after this long (tests never wait that long)
_MOD = (1 << 61) - 1


# -- bookkeeping -------------------------------------------------------------------------------
def record_execution(label: str, args: Any = ()) -> None:
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    line = f"{label}\t{os.getpid()}\t{args!r}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_log(path: str) -> list[tuple[str, int]]:
    """``[(label, pid), …]`` in execution order."""
    try:
        with open(path, "rb") as f:
            data = f.read().decode()
    except FileNotFoundError:
        return []
    out = []
    for line in data.splitlines():
        if line:
            label, pid, _ = line.split("\t", 2)
            out.append((label, int(pid)))
    return out


def executions_of(label: str) -> int:
    path = os.environ.get(LOG_ENV)
    return sum(1 for lab, _ in read_log(path) if lab == label) if path else 0


def crash_point(key: str) -> None:
    """Block here if the test asked for a crash at ``key``."""
    ctrl = os.environ.get(CTRL_ENV)
    if not ctrl:
        return
    block = os.path.join(ctrl, f"block-{key}")
    if not os.path.exists(block):
        return
    marker = os.path.join(ctrl, f"reached-{key}")
    tmp = f"{marker}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, marker)
    deadline = time.monotonic() + BLOCK_LIMIT
    while os.path.exists(block):
        if time.monotonic() > deadline:
            raise RuntimeError(f"crash point {key} was never released")
        time.sleep(0.01)


def combine_value(label: str, inputs: Any) -> int:
    """The deterministic value of step ``label`` on ``inputs``."""
    h = zlib.crc32(label.encode())
    for x in inputs:
        h = (h * 1000003 + int(x) + 1) % _MOD
    return h


def node(fn: workflow.StepFunction[Any], label: str, *args: Any) -> workflow.Workflow[Any]:
    return fn.options(name=label).step(*args)


# -- steps -------------------------------------------------------------------------------------
@workflow.step
def combine(label: str, *inputs: int) -> int:
    crash_point(f"{label}:start")
    record_execution(label, inputs)
    value = combine_value(label, inputs)
    crash_point(label)
    return value


@workflow.step
def expand(label: str, k: int, *inputs: int) -> Any:
    """Dynamic: continued by a chain ``label.0 -> … -> label.{k-1}``."""
    crash_point(f"{label}:start")
    record_execution(label, (k, *inputs))
    crash_point(label)
    sub: Any = node(combine, f"{label}.0", f"{label}.0", *inputs)
    for j in range(1, k):
        sub = node(combine, f"{label}.{j}", f"{label}.{j}", sub)
    return sub


@workflow.step
def countdown(base: str, n: int, *inputs: int) -> Any:
    """Recursive dynamic step: ``base@n`` is continued by ``base@{n-1}`` … ``base@0``."""
    label = f"{base}@{n}"
    crash_point(f"{label}:start")
    record_execution(label, (n, *inputs))
    crash_point(label)
    acc = combine_value(label, inputs)
    if n == 0:
        return acc
    return node(countdown, f"{base}@{n - 1}", base, n - 1, acc)


@workflow.step
def flaky(label: str, fails: int, *inputs: int) -> int:
    """Raises on its first ``fails`` executions (counted in the execution log, so across
    processes); crash point ``label#<attempt>``."""
    attempt = executions_of(label) + 1
    record_execution(label, (fails, *inputs))
    crash_point(f"{label}#{attempt}")
    if attempt <= fails:
        raise ValueError(f"{label} fails on attempt {attempt}")
    return combine_value(label, inputs)


# -- specs -------------------------------------------------------------------------------------
def build(spec: dict[str, Any]) -> workflow.Workflow[Any]:
    made: dict[str, Any] = {}
    for n in spec["nodes"]:
        ins = [made[i] for i in n["inputs"]]
        kind, nid = n["kind"], n["id"]
        if kind == "combine":
            made[nid] = node(combine, nid, nid, *ins)
        elif kind == "expand":
            made[nid] = node(expand, nid, nid, n["k"], *ins)
        elif kind == "countdown":
            made[nid] = node(countdown, f"{nid}@{n['n']}", nid, n["n"], *ins)
        elif kind == "flaky":
            made[nid] = node(flaky, nid, nid, n["fails"], *ins)
        else:
            raise ValueError(kind)
    return made[spec["root"]]


def evaluate(spec: dict[str, Any]) -> int:
    """The workflow's output, computed directly."""
    return step_values(spec)[spec["root"]]


def step_values(spec: dict[str, Any]) -> dict[str, int]:
    """The output of every labelled step (a dynamic step outputs its continuation's output)."""
    values: dict[str, int] = {}
    for n in spec["nodes"]:
        ins = [values[i] for i in n["inputs"]]
        kind, nid = n["kind"], n["id"]
        if kind in ("combine", "flaky"):
            values[nid] = combine_value(nid, ins)
        elif kind == "expand":
            v = combine_value(f"{nid}.0", ins)
            values[f"{nid}.0"] = v
            for j in range(1, n["k"]):
                v = values[f"{nid}.{j}"] = combine_value(f"{nid}.{j}", [v])
            values[nid] = v
        elif kind == "countdown":
            accs = [combine_value(f"{nid}@{n['n']}", ins)]
            for m in range(n["n"] - 1, -1, -1):
                accs.append(combine_value(f"{nid}@{m}", [accs[-1]]))
            final = accs[-1]
            for m in range(n["n"], -1, -1):
                values[f"{nid}@{m}"] = final
            values[nid] = final
    return values


def labels(spec: dict[str, Any]) -> list[str]:
    """Every step label the workflow executes (dynamic sub-steps included)."""
    out = []
    for n in spec["nodes"]:
        kind, nid = n["kind"], n["id"]
        if kind in ("combine", "flaky"):
            out.append(nid)
        elif kind == "expand":
            out.append(nid)
            out.extend(f"{nid}.{j}" for j in range(n["k"]))
        elif kind == "countdown":
            out.extend(f"{nid}@{m}" for m in range(n["n"], -1, -1))
    return out


def continuations(spec: dict[str, Any]) -> dict[str, str]:
    """Dynamic step label -> the label of the first step of its continuation."""
    out = {}
    for n in spec["nodes"]:
        if n["kind"] == "expand":
            out[n["id"]] = f"{n['id']}.0"
        elif n["kind"] == "countdown":
            for m in range(n["n"], 0, -1):
                out[f"{n['id']}@{m}"] = f"{n['id']}@{m - 1}"
    return out


def checkpointed(spec: dict[str, Any], probe: dict[str, Any]) -> set[str]:
    """Steps whose outcome is in the journal: output recorded, or (dynamic) continuation
    recorded. ``probe`` is what :func:`probe_steps` returned."""
    done = {lab for lab, p in probe.items() if p["state"] == "done"}
    for parent, first in continuations(spec).items():
        if probe.get(first, {}).get("state", "absent") != "absent":
            done.add(parent)
    return done


# -- driver ------------------------------------------------------------------------------------
def probe_steps(wid: str, names: list[str]) -> dict[str, Any]:
    """For each step name: ``done`` (with its value), ``pending`` (known, no output) or
    ``absent`` (not in the journal). Only for a workflow that is not running."""
    out: dict[str, Any] = {}
    for name in names:
        try:
            out[name] = {"state": "done", "value": workflow.get_output(wid, name=name, timeout=10)}
        except workflow.StepNotFoundError:
            out[name] = {"state": "absent"}
        except workflow.KeelflowError as e:
            out[name] = {"state": "pending", "error": f"{type(e).__name__}: {e}"}
    return out


def _error(e: BaseException) -> dict[str, Any]:
    return {"error": type(e).__name__, "message": str(e), "path": getattr(e, "path", None)}


def drive(mode: str, storage: str, executor: str, wid: str, spec: dict[str, Any]) -> dict[str, Any]:
    workflow.init(storage, executor=executor)
    result: dict[str, Any] = {}
    if mode in ("resume", "probe", "waitrun", "output"):
        try:
            result["status"] = workflow.get_status(wid).value
        except workflow.KeelflowError as e:
            result["status_error"] = _error(e)
    if mode in ("resume", "probe") and result.get("status") not in (None, "RUNNING"):
        result["probe"] = probe_steps(wid, labels(spec))
    try:
        if mode in ("run", "waitrun"):
            wf = build(spec)
            if mode == "waitrun" and os.environ.get(CTRL_ENV):
                open(os.path.join(os.environ[CTRL_ENV], f"running-{wid}"), "w").close()
            result["ok"] = wf.run(workflow_id=wid)
        elif mode == "resume":
            result["ok"] = workflow.resume(wid)
        elif mode == "output":
            result["ok"] = workflow.get_output(wid, timeout=30)
        if mode in ("run", "waitrun", "resume", "output"):
            result["final_status"] = workflow.get_status(wid).value
    except workflow.KeelflowError as e:
        result.update(_error(e))
    return result


def main() -> None:
    mode, storage, executor, wid, spec_file = sys.argv[1:6]
    with open(spec_file) as f:
        spec = json.load(f)
    result = drive(mode, storage, executor, wid, spec)
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
    workflow.shutdown()


if __name__ == "__main__":
    main()


# -- test harness: driver processes, crash points, SIGKILL -------------------------------------
class Harness:
    """One test's storage, crash-point directory and execution log, and its driver processes."""

    def __init__(self, root: str, executor: str) -> None:
        import subprocess  # noqa: F401 - imported here so steps' workers never need it

        self.root = root
        self.executor = executor
        self.storage = os.path.join(root, "storage")
        self.ctrl = os.path.join(root, "ctrl")
        self.log = os.path.join(root, "executions.log")
        os.makedirs(self.ctrl, exist_ok=True)
        self.procs: list[Any] = []
        self._n = 0

    # environment and files
    def env(self) -> dict[str, str]:
        here = os.path.dirname(os.path.abspath(__file__))
        src = os.path.join(os.path.dirname(here), "src")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, here, env.get("PYTHONPATH", "")) if p)
        env[LOG_ENV] = self.log
        env[CTRL_ENV] = self.ctrl
        env["KEELFLOW_STORAGE"] = self.storage
        env.pop("KEELFLOW_EXECUTOR", None)
        return env

    def block(self, key: str) -> None:
        open(os.path.join(self.ctrl, f"block-{key}"), "w").close()

    def release(self, key: str) -> None:
        try:
            os.unlink(os.path.join(self.ctrl, f"block-{key}"))
        except FileNotFoundError:
            pass

    def release_all(self) -> None:
        for name in os.listdir(self.ctrl):
            if name.startswith("block-"):
                self.release(name[len("block-") :])

    def executions(self) -> list[tuple[str, int]]:
        return read_log(self.log)

    def counts(self) -> dict[str, int]:
        import collections

        return dict(collections.Counter(label for label, _ in self.executions()))

    #: What a driver process runs (its arguments: mode, storage, executor, workflow id, spec file).
    driver = "import crashsteps; crashsteps.main()"

    # processes
    def start(self, mode: str, wid: str, spec: Any = None) -> Any:
        import subprocess

        self._n += 1
        spec_file = os.path.join(self.root, f"spec-{self._n}.json")
        with open(spec_file, "w") as f:
            json.dump(spec, f)
        # Files, not pipes: a chatty driver never blocks on a full pipe. Closed in cleanup().
        out = open(os.path.join(self.root, f"driver-{self._n}.out"), "w+")  # noqa: SIM115
        err = open(os.path.join(self.root, f"driver-{self._n}.err"), "w+")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                self.driver,
                mode,
                self.storage,
                self.executor,
                wid,
                spec_file,
            ],
            env=self.env(),
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=self.root,
        )
        proc.out_file, proc.err_file = out, err  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    @staticmethod
    def output_of(proc: Any) -> tuple[str, str]:
        proc.out_file.seek(0)
        proc.err_file.seek(0)
        return proc.out_file.read(), proc.err_file.read()

    def finish(self, proc: Any, timeout: float = 60.0) -> dict[str, Any]:
        import subprocess

        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_tree(proc)
            out, err = self.output_of(proc)
            raise AssertionError(f"driver did not finish within {timeout}s\nstdout:\n{out}\nstderr:\n{err}") from None
        out, err = self.output_of(proc)
        for line in out.splitlines():
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT ") :])
        raise AssertionError(f"driver exited {proc.returncode} without a result\nstdout:\n{out}\nstderr:\n{err}")

    def run(self, mode: str, wid: str, spec: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        return self.finish(self.start(mode, wid, spec), timeout)

    def wait_reached(self, key: str, proc: Any, timeout: float = 60.0) -> int:
        """Wait until crash point ``key`` is reached; the pid of the process blocked there."""
        marker = os.path.join(self.ctrl, f"reached-{key}")
        deadline = time.monotonic() + timeout
        while not os.path.exists(marker):
            if proc.poll() is not None:
                out, err = self.output_of(proc)
                raise AssertionError(
                    f"driver exited ({proc.returncode}) before crash point {key}\nstdout:\n{out}\nstderr:\n{err}"
                )
            if time.monotonic() > deadline:
                out, err = self.output_of(proc)
                raise AssertionError(f"crash point {key} not reached in {timeout}s\nstdout:\n{out}\nstderr:\n{err}")
            time.sleep(0.01)
        with open(marker) as f:
            return int(f.read())

    def crash(self, proc: Any, timeout: float = 30.0) -> list[int]:
        """SIGKILL the driver; wait until it and every process it started are gone. Returns
        the pids of those descendants."""
        import signal

        kids = descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout)
        wait_gone(kids, timeout)
        return kids

    def kill_tree(self, proc: Any) -> None:
        import signal

        if proc.poll() is None:
            kids = descendants(proc.pid)
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for pid in kids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(10)
            except Exception:
                pass

    def cleanup(self) -> None:
        self.release_all()
        for proc in self.procs:
            self.kill_tree(proc)
            for f in (proc.out_file, proc.err_file):
                f.close()
        self.procs.clear()


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``."""
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            pp = _ppid(int(name))
            if pp is not None:
                parents.setdefault(pp, []).append(int(name))
    out, stack = [], [pid]
    while stack:
        for child in parents.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return [p for p in out if alive(p)]


def wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if alive(p)]
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"processes {left} still alive {timeout}s after their parent was killed")
        time.sleep(0.02)


def split_counts(executions: list[tuple[str, int]], cut: int) -> tuple[dict[str, int], dict[str, int]]:
    """Execution counts before and after position ``cut`` of the log."""
    import collections

    before = collections.Counter(label for label, _ in executions[:cut])
    after = collections.Counter(label for label, _ in executions[cut:])
    return dict(before), dict(after)
