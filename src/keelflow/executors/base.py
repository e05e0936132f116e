"""The executor seam: where step code runs.

The engine hands an executor opaque tasks and collects opaque outcomes. A task names a
*runner* (an importable ``module:function``), a function blob (pickled bytes, cached per worker
under ``func_key``) and a payload (bytes). The worker calls ``runner(func, payload)`` and
returns the bytes the runner returns. Application errors are the runner's business (it
encodes them in its result); an executor reports only system failures: a worker that died,
or a demand this executor can never satisfy.

The engine runs a step again after a system failure without counting it against the step's
``max_retries`` (it is not the step's exception), up to ``SYSTEM_RETRIES`` times in a row;
the next one stops the workflow RESUMABLE rather than FAILED, with the step's journal record
(``halt``) saying what happened. See ``Runtime._on_outcome``.

The engine calls ``submit``, ``wait`` and ``cancel`` from one thread (its scheduler);
``wake`` may be called from any thread.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

__all__ = ["Demand", "Executor", "Outcome", "Task"]


@dataclass(frozen=True)
class Demand:
    """What one task holds while it runs. ``custom`` is sorted ``(name, amount)`` pairs."""

    cpus: float = 1.0
    gpus: float = 0.0
    custom: tuple[tuple[str, float], ...] = ()


@dataclass
class Task:
    task_id: int
    runner: str
    func_key: str
    func_blob: bytes
    payload: bytes
    demand: Demand = field(default_factory=Demand)
    # A short label for errors and logs (the step name).
    label: str = ""
    # Only for executors with ``reads_storage``: blob keys the payload points at (instead of
    # carrying their bytes), and where the worker stores large outputs itself.
    blobs: tuple[str, ...] = ()
    spill_prefix: str | None = None


@dataclass
class Outcome:
    """The end of a task: ``result`` from the runner, or ``error`` for a system failure."""

    task_id: int
    result: bytes | None = None
    error: str | None = None
    # True when the task never started (e.g. infeasible demand): not an attempt.
    not_started: bool = False


class Executor(abc.ABC):
    """Runs tasks somewhere and reports their outcomes."""

    name: str = "executor"
    #: Its workers open the workflow's (shared) storage themselves: payloads may point at
    #: stored blobs rather than carry them, and large outputs are stored by the worker, so
    #: big values never pass through the scheduler's process.
    reads_storage: bool = False

    @abc.abstractmethod
    def submit(self, task: Task) -> None:
        """Queue a task; never blocks on the task itself."""

    @abc.abstractmethod
    def wait(self, timeout: float | None) -> list[Outcome]:
        """Block until an outcome is ready, ``wake`` is called, or ``timeout`` passes."""

    @abc.abstractmethod
    def wake(self) -> None:
        """Make a concurrent or the next ``wait`` return at once (thread-safe)."""

    @abc.abstractmethod
    def cancel(self, task_ids: list[int]) -> None:
        """Abandon tasks: queued ones are dropped, running ones stopped; no outcome follows."""

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Stop all workers; pending tasks are abandoned."""

    def check_demand(self, demand: Demand) -> str | None:
        """Why ``demand`` can never be met here, or ``None`` if it can."""
        return None
