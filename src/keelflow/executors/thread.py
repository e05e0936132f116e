"""An in-process executor: tasks run on threads, with the same resource accounting as the
process pool. Meant for tests and for functions that cannot leave the process.

It has no workers to lose: a step that kills its process kills the scheduler with it, and
the workflow is RESUMABLE as after any crash of the process running it."""

from __future__ import annotations

import queue
import threading
import time
import weakref
from typing import Any

from keelflow.executors._capacity import Capacity, QueuedExecutor, TaskQueue
from keelflow.executors._worker import Runner, call_runner, prepare
from keelflow.executors.base import Demand, Outcome, Task

__all__ = ["ThreadExecutor"]

# An item on the outcome queue: a finished task, or None for a wake-up.
_Done = tuple[Task, bytes | None, str | None] | None


class _Loader:
    """Runner and function caches shared by all threads; each blob is unpickled once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runners: dict[str, Runner] = {}
        self._funcs: dict[str, Any] = {}

    def run(self, task: Task) -> tuple[bytes | None, str | None]:
        key = task.func_key
        args = (self._runners, self._funcs, {key: task.func_blob}, task.runner, key)
        if key in self._funcs:
            prepared = prepare(*args)
        else:
            with self._lock:  # so that two threads never unpickle one key
                prepared = prepare(*args)
        if isinstance(prepared, str):
            return None, prepared
        return call_runner(prepared[0], prepared[1], task.payload)


def _serve(jobs: queue.SimpleQueue[Task | None], done: queue.SimpleQueue[_Done], loader: _Loader) -> None:
    while (task := jobs.get()) is not None:
        result, error = loader.run(task)
        done.put((task, result, error))
        del task


def _stop_threads(jobs: queue.SimpleQueue[Task | None], threads: list[threading.Thread]) -> None:
    for _ in threads:
        jobs.put(None)
    threads.clear()


class ThreadExecutor(QueuedExecutor):
    """Runs tasks on a lazily grown set of daemon threads, within declared resources.

    ``sys_path`` and ``env`` are accepted for signature compatibility and ignored.
    """

    name = "thread"

    def __init__(
        self,
        num_cpus: float | None = None,
        num_gpus: float = 0,
        resources: dict[str, float] | None = None,
        sys_path: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self._cap = Capacity(num_cpus, num_gpus, resources)
        self._queue = TaskQueue()
        self._ready: list[Outcome] = []
        self._jobs: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[_Done] = queue.SimpleQueue()
        self._loader = _Loader()
        self._threads: list[threading.Thread] = []
        self._running: dict[int, Demand] = {}
        self._discard: set[int] = set()  # cancelled while running: drop their results
        self._closed = False
        # Threads are daemons (a hung step must not block exit); this just lets idle ones end.
        self._finalizer = weakref.finalize(self, _stop_threads, self._jobs, self._threads)

    def wait(self, timeout: float | None) -> list[Outcome]:
        if self._closed:
            return []
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            items: list[_Done] = []
            try:
                if self._ready:
                    items.append(self._done.get_nowait())
                else:
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    items.append(self._done.get(timeout=left))
                while True:
                    items.append(self._done.get_nowait())
            except queue.Empty:
                pass
            woken = not items or None in items  # empty: timed out
            for item in items:
                if item is None:
                    continue
                task, result, error = item
                self._cap.release(self._running.pop(task.task_id))
                if task.task_id in self._discard:  # cancelled while running
                    self._discard.discard(task.task_id)
                else:
                    self._ready.append(Outcome(task.task_id, result=result, error=error))
            self._queue.dispatch(self._place)
            if self._ready or woken:
                break
        out, self._ready = self._ready, []
        return out

    def wake(self) -> None:
        self._done.put(None)

    def cancel(self, task_ids: list[int]) -> None:
        ids = set(task_ids)
        self._queue.remove(ids)
        self._discard.update(i for i in ids if i in self._running)
        self._ready = [o for o in self._ready if o.task_id not in ids]

    def shutdown(self) -> None:
        self._closed = True
        self._finalizer()

    def _place(self, seq: int, task: Task) -> bool:
        if not self._cap.fits(task.demand):
            return False
        self._cap.acquire(task.demand)
        self._running[task.task_id] = task.demand
        if len(self._running) > len(self._threads):
            thread = threading.Thread(
                target=_serve,
                args=(self._jobs, self._done, self._loader),
                name=f"keelflow-step-{len(self._threads)}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        self._jobs.put(task)
        return True
