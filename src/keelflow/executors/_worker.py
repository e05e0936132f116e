"""The worker process behind :class:`~keelflow.executors.local.ProcessExecutor`.

Started as ``python -c "from keelflow.executors._worker import main; main(fd)"`` with one end
of a socket pair on ``fd``. Protocol (pickled tuples, one per framed message):

- parent -> worker, once: ``(sys_path, env)``; the worker answers ``b"ready"``;
- parent -> worker, per task: ``(task_id, runner, func_key, func_blob_or_None, payload)``;
- worker -> parent, per task: ``(task_id, result_or_None, error_or_None, seconds)``.

Tasks run one after another in the order received. The helpers here are shared with the
thread executor so both report the same errors.
"""

from __future__ import annotations

import importlib
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

Runner = Callable[[Any, bytes], bytes]

_PARENT_CHECK_INTERVAL = 0.5


def resolve_runner(name: str, cache: dict[str, Runner]) -> Runner:
    """Import ``module:function`` (``function`` may be dotted), once per name."""
    runner = cache.get(name)
    if runner is None:
        module_name, sep, attr = name.partition(":")
        if not sep or not attr:
            raise ValueError(f"runner {name!r} is not of the form 'module:function'")
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
        runner = cache[name] = obj
    return runner


def call_runner(runner: Runner, func: Any, payload: bytes) -> tuple[bytes | None, str | None]:
    """Run one task: ``(result, None)``, or ``(None, error)`` if the runner itself failed."""
    try:
        result = runner(func, payload)
    except BaseException:  # even SystemExit from a step must not take the worker down
        return None, "runner raised: " + traceback.format_exc()
    if not isinstance(result, bytes):
        if isinstance(result, (bytearray, memoryview)):
            return bytes(result), None
        return None, f"runner returned {type(result).__name__}, not bytes"
    return result, None


def prepare(
    runners: dict[str, Runner],
    funcs: dict[str, Any],
    blobs: dict[str, bytes],
    runner_name: str,
    func_key: str,
) -> tuple[Runner, Any] | str:
    """The runner and the function (from ``funcs``, else unpickled from ``blobs``), or an
    error message."""
    try:
        runner = resolve_runner(runner_name, runners)
    except BaseException:
        return f"could not import runner {runner_name!r}: " + traceback.format_exc()
    try:
        return runner, funcs[func_key]
    except KeyError:
        pass
    blob = blobs.get(func_key)
    if blob is None:
        return f"function {func_key!r} was never sent to this worker"
    try:
        func = pickle.loads(blob)
    except BaseException:
        # The blob is kept, so later tasks of this function get the same clear error.
        return "could not unpickle the step function: " + traceback.format_exc()
    funcs[func_key] = func
    del blobs[func_key]
    return runner, func


def run_task(
    runners: dict[str, Runner],
    funcs: dict[str, Any],
    blobs: dict[str, bytes],
    runner_name: str,
    func_key: str,
    payload: bytes,
) -> tuple[bytes | None, str | None]:
    """Run one task: ``(result, None)`` or ``(None, error)``."""
    prepared = prepare(runners, funcs, blobs, runner_name, func_key)
    if isinstance(prepared, str):
        return None, prepared
    return call_runner(prepared[0], prepared[1], payload)


def _watch_parent(ppid: int) -> None:
    """Exit as soon as the parent is gone, even while a long step is running."""

    def loop() -> None:
        while True:
            time.sleep(_PARENT_CHECK_INTERVAL)
            if os.getppid() != ppid:
                os._exit(1)

    threading.Thread(target=loop, name="keelflow-parent-watch", daemon=True).start()


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass


def main(fd: int) -> None:
    """Serve tasks on the connection ``fd`` until EOF, then exit."""
    ppid = os.getppid()
    # Ctrl-C goes to the whole foreground process group; the parent decides what to stop.
    # A no-op handler (not SIG_IGN) so that processes started by steps get the default back.
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    # pass_fds made it inheritable; a process a step starts must not keep it open, or the
    # parent would not see EOF when this worker dies.
    os.set_inheritable(fd, False)
    conn = Connection(fd)
    try:
        sys_path, env = pickle.loads(conn.recv_bytes())
        sys.path[:] = sys_path
        os.environ.update(env)
        _watch_parent(ppid)
        conn.send_bytes(b"ready")
    except (EOFError, OSError):
        os._exit(0)

    runners: dict[str, Runner] = {}
    funcs: dict[str, Any] = {}
    blobs: dict[str, bytes] = {}
    recv, send = conn.recv_bytes, conn.send_bytes
    loads, dumps, clock = pickle.loads, pickle.dumps, time.perf_counter
    protocol = pickle.HIGHEST_PROTOCOL
    while True:
        try:
            message = recv()
        except (EOFError, OSError):
            break
        task_id, runner_name, func_key, blob, payload = loads(message)
        del message
        if blob is not None:
            # A blob is only sent to a worker that lacks it; if one comes again, it wins.
            blobs[func_key] = blob
            funcs.pop(func_key, None)
        start = clock()
        result, error = run_task(runners, funcs, blobs, runner_name, func_key, payload)
        elapsed = clock() - start
        del payload
        _flush()
        try:
            send(dumps((task_id, result, error, elapsed), protocol))
        except OSError:
            break
    _flush()
    # Skip interpreter teardown: it would join threads that user code may have left running.
    os._exit(0)
