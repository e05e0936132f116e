"""The default executor: steps run in a pool of worker processes, so CPU-bound steps use
every core.

Workers are plain ``python -c`` subprocesses talking over a socket pair (see ``_worker``);
multiprocessing's start methods are avoided on purpose: spawn re-imports the user's
``__main__`` and fork copies the parent's locks and threads.

A worker that dies while running a task (the OOM killer, SIGKILL, a crash in native code,
``os._exit`` in a step) is reported as a system failure of that task, naming the pid and the
signal; tasks queued behind it go to other workers. The engine reruns the step without
counting it against ``max_retries``, and after repeated deaths in a row leaves the workflow
RESUMABLE (see ``Runtime._on_outcome``). An exception the step raises, ``SystemExit``
included, never kills the worker: it is the step's own failure.
"""

from __future__ import annotations

import math
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections import deque
from multiprocessing.connection import Connection

from ._capacity import Capacity, QueuedExecutor, TaskQueue, covers
from .base import Demand, Outcome, Task

__all__ = ["ProcessExecutor"]

# Tasks of a function whose mean run time is below this may queue behind each other on one
# worker, so that a flood of tiny tasks streams without a round trip between each.
_FAST_SECONDS = 0.002
_MAX_QUEUED = 8
_EWMA_ALPHA = 0.2
# Pipelined messages must fit in the socket buffer: otherwise the parent could block sending
# to a worker that is itself blocked sending a result back (a deadlock).
_PIPELINE_BYTES = 64 * 1024
_SOCKET_BUFFER = 512 * 1024
_SHUTDOWN_GRACE = 0.5
# The directory holding the keelflow package, so a worker can import it before the handshake.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Entry:
    """A task sent to a worker."""

    __slots__ = ("fast", "seq", "size", "task")

    def __init__(self, seq: int, task: Task, size: int, fast: bool) -> None:
        self.seq, self.task, self.size, self.fast = seq, task, size, fast


class _Worker:
    __slots__ = (
        "conn",
        "failed_send",
        "inflight",
        "keys",
        "pid",
        "poller",
        "proc",
        "queued_bytes",
        "reservation",
        "slow",
        "started",
    )  # fmt: skip

    def __init__(self, proc: subprocess.Popen[bytes], conn: Connection) -> None:
        self.proc, self.conn, self.pid = proc, conn, proc.pid
        self.inflight: deque[_Entry] = deque()
        self.reservation = Demand()
        self.keys: set[str] = set()  # func keys whose blob this worker has been sent
        self.slow = 0  # inflight tasks not known to be fast: nothing may queue behind them
        self.queued_bytes = 0
        self.started = False  # handshake answered
        self.failed_send: int | None = None  # task id whose send failed: worker is dead
        self.poller = select.poll()
        self.poller.register(conn.fileno(), select.POLLIN)

    def fileno(self) -> int:
        return self.conn.fileno()


def _reap(proc: subprocess.Popen[bytes], timeout: float = 1.0) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _stop_workers(workers: dict[int, _Worker], wake: tuple[socket.socket, ...]) -> None:
    """Stop every worker: idle ones see EOF and exit; busy ones are killed (their tasks are
    abandoned anyway). Also the ``weakref.finalize`` hook, so it must not touch the executor."""
    stopping = list(workers.values())
    workers.clear()
    for w in stopping:
        if w.inflight:
            w.proc.kill()
        w.conn.close()
    deadline = time.monotonic() + _SHUTDOWN_GRACE
    for w in stopping:
        _reap(w.proc, max(0.0, deadline - time.monotonic()))
    for s in wake:
        s.close()


class ProcessExecutor(QueuedExecutor):
    """Runs tasks in a lazily grown pool of worker processes, within declared resources."""

    name = "local"

    def __init__(
        self,
        num_cpus: float | None = None,
        num_gpus: float = 0,
        resources: dict[str, float] | None = None,
        sys_path: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self._cap = Capacity(num_cpus, num_gpus, resources)
        self._sys_path = list(sys_path) if sys_path is not None else None
        self._env = dict(env or {})
        self._queue = TaskQueue()
        self._ready: list[Outcome] = []
        self._workers: dict[int, _Worker] = {}  # by pid
        self._idle: list[_Worker] = []
        self._busy: dict[int, _Worker] = {}
        self._worker_of: dict[int, _Worker] = {}  # by task id
        self._ewma: dict[str, float] = {}  # func key -> mean run time in seconds
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # What multiprocessing.connection.wait does, but kept across calls: building a
        # selector per call costs more than the rest of a task's round trip.
        self._poller = select.poll()
        self._poller.register(self._wake_r.fileno(), select.POLLIN)
        self._by_fd: dict[int, _Worker] = {}
        self._closed = False
        self._finalizer = weakref.finalize(self, _stop_workers, self._workers, (self._wake_r, self._wake_w))

    def wait(self, timeout: float | None) -> list[Outcome]:
        if self._closed:
            return []
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        wake_fd = self._wake_r.fileno()
        while True:
            if self._ready:
                ms: float | None = 0.0
            elif deadline is None:
                ms = None
            else:
                ms = max(0.0, deadline - time.monotonic()) * 1000.0
            woken = False
            for fd, _ in self._poller.poll(ms):
                w = self._by_fd.get(fd)
                if w is not None:
                    self._drain(w)
                elif fd == wake_fd:
                    self._drain_wake()
                    woken = True
            self._queue.dispatch(self._place)
            # Messages that were no outcome (a worker's handshake) must not end the wait early.
            if self._ready or woken or ms == 0.0:
                break
        out, self._ready = self._ready, []
        return out

    def wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # buffer full (a wake is already pending) or shut down
            pass

    def cancel(self, task_ids: list[int]) -> None:
        ids = set(task_ids)
        for w in {self._worker_of[i] for i in ids if i in self._worker_of}:
            self._drain(w)  # keep results that are already done
            if w.pid in self._workers and any(e.task.task_id in ids for e in w.inflight):
                w.proc.kill()
                _reap(w.proc)
                self._queue.requeue((e.seq, e.task) for e in self._retire(w) if e.task.task_id not in ids)
        self._queue.remove(ids)
        self._ready = [o for o in self._ready if o.task_id not in ids]
        self._queue.dispatch(self._place)

    def shutdown(self) -> None:
        self._closed = True
        self._finalizer()
        self._idle.clear()
        self._busy.clear()
        self._by_fd.clear()
        self._worker_of.clear()

    # -- placement -------------------------------------------------------------------------

    def _place(self, seq: int, task: Task) -> bool:
        """Send ``task`` to a worker if capacity allows; True if it was consumed."""
        d = task.demand
        fast = self._ewma.get(task.func_key, math.inf) < _FAST_SECONDS
        if self._cap.fits(d):
            if self._idle:
                w = self._idle.pop()
            else:
                try:
                    w = self._spawn()
                except OSError as e:
                    error = f"could not start a worker process: {e}"
                    self._ready.append(Outcome(task.task_id, error=error, not_started=True))
                    return True
            self._cap.acquire(d)
            w.reservation = d
            self._busy[w.pid] = w
            self._send(w, seq, task, fast)
            return True
        if not fast:
            return False
        best: _Worker | None = None
        for w in self._busy.values():
            if w.slow or w.failed_send is not None or len(w.inflight) > _MAX_QUEUED:
                continue
            size = len(task.payload) + (0 if task.func_key in w.keys else len(task.func_blob))
            if w.queued_bytes + size > _PIPELINE_BYTES or not covers(w.reservation, d):
                continue
            if best is None or len(w.inflight) < len(best.inflight):
                best = w
        if best is None:
            return False
        self._send(best, seq, task, fast)
        return True

    def _send(self, w: _Worker, seq: int, task: Task, fast: bool) -> None:
        blob = None if task.func_key in w.keys else task.func_blob
        message = pickle.dumps(
            (task.task_id, task.runner, task.func_key, blob, task.payload),
            pickle.HIGHEST_PROTOCOL,
        )
        w.keys.add(task.func_key)
        w.inflight.append(_Entry(seq, task, len(message), fast))
        w.queued_bytes += len(message)
        w.slow += not fast
        self._worker_of[task.task_id] = w
        try:
            w.conn.send_bytes(message)
        except OSError:
            # The worker is dead; its EOF shows up in the next wait, which sorts out its tasks.
            if w.failed_send is None:
                w.failed_send = task.task_id

    def _spawn(self) -> _Worker:
        parent_end, child_end = socket.socketpair()
        try:
            for s in (parent_end, child_end):
                for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                    s.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
            fd = child_end.fileno()
            # The worker gets this process's import path up front, so it can skip ``site``
            # (-S): on machines with many .pth files that halves its start-up, and the path
            # it would have computed is replaced by ours at the handshake anyway.
            path = [_PACKAGE_ROOT, *(self._sys_path if self._sys_path is not None else sys.path)]
            code = f"import sys; sys.path[:0] = {path!r}; from keelflow.executors._worker import main; main({fd})"
            flags = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]  # -O, -X, -W...
            args = [sys.executable, "-S", *flags, "-c", code]
            proc = subprocess.Popen(args, pass_fds=(fd,), close_fds=True, stdin=subprocess.DEVNULL)
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        w = _Worker(proc, Connection(parent_end.detach()))
        self._workers[w.pid] = w
        self._by_fd[w.fileno()] = w
        self._poller.register(w.fileno(), select.POLLIN)
        sys_path = self._sys_path if self._sys_path is not None else list(sys.path)
        try:
            w.conn.send_bytes(pickle.dumps((sys_path, self._env), pickle.HIGHEST_PROTOCOL))
        except OSError:
            pass  # it died at once: its EOF is handled like any other worker death
        return w

    # -- results ---------------------------------------------------------------------------

    def _drain(self, w: _Worker) -> None:
        """Handle every message ``w`` has already sent, without blocking."""
        try:
            # A kept poll object rather than Connection.poll(), which builds a selector per call.
            while w.poller.poll(0):
                data = w.conn.recv_bytes()
                if w.started:
                    self._on_result(w, data)
                elif data == b"ready":
                    w.started = True
        except (EOFError, OSError):
            self._on_exit(w)

    def _on_result(self, w: _Worker, data: bytes) -> None:
        task_id, result, error, elapsed = pickle.loads(data)
        entry = w.inflight.popleft()
        assert entry.task.task_id == task_id, "worker answered out of order"
        w.queued_bytes -= entry.size
        w.slow -= not entry.fast
        key = entry.task.func_key
        mean = self._ewma.get(key)
        self._ewma[key] = elapsed if mean is None else mean + _EWMA_ALPHA * (elapsed - mean)
        del self._worker_of[task_id]
        self._ready.append(Outcome(task_id, result=result, error=error))
        if not w.inflight:
            self._cap.release(w.reservation)
            del self._busy[w.pid]
            self._idle.append(w)

    def _on_exit(self, w: _Worker) -> None:
        """``w`` died: fail the task it was running, requeue the ones queued behind it."""
        code = _reap(w.proc)
        started, failed_send = w.started, w.failed_send
        entries = self._retire(w)
        if not entries:
            return
        first = entries[0]
        if started and first.task.task_id == failed_send:  # it never got the task
            self._queue.requeue((e.seq, e.task) for e in entries)
            return
        status = f"exit code {code}"
        if code < 0:
            try:
                status += f", {signal.Signals(-code).name}"
            except ValueError:
                pass
        task = first.task
        if started:
            label = task.label or f"task {task.task_id}"
            error = f"worker process {w.pid} died ({status}) while running {label}"
        else:
            error = f"worker process {w.pid} failed to start ({status}); see its stderr"
        self._ready.append(Outcome(task.task_id, error=error, not_started=not started))
        self._queue.requeue((e.seq, e.task) for e in entries[1:])

    def _retire(self, w: _Worker) -> list[_Entry]:
        """Forget a dead worker, free its reservation and return the tasks it held."""
        self._workers.pop(w.pid, None)
        fd = w.fileno()
        if self._by_fd.pop(fd, None) is not None:
            self._poller.unregister(fd)
        if self._busy.pop(w.pid, None) is not None:
            self._cap.release(w.reservation)
        if w in self._idle:
            self._idle.remove(w)
        w.conn.close()
        entries = list(w.inflight)
        w.inflight.clear()
        for e in entries:
            self._worker_of.pop(e.task.task_id, None)
        return entries

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:  # BlockingIOError: drained
            pass
