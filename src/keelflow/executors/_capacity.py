"""Resource accounting and the pending-task queue, shared by the local executors."""

from __future__ import annotations

import heapq
import math
import os
from collections import deque
from collections.abc import Callable, Iterable

from .base import Demand, Executor, Outcome, Task

__all__ = ["Capacity", "QueuedExecutor", "TaskQueue", "covers"]

_EPS = 1e-9


def _amount(n: float, unit: str) -> str:
    return f"{n:g} {unit}" + ("" if n == 1 else "s")


class Capacity:
    """Resource accounting shared by the executors: totals, amounts in use, running count."""

    def __init__(self, num_cpus: float | None, num_gpus: float, resources: dict[str, float] | None) -> None:
        self.cpus = float(os.cpu_count() or 1) if num_cpus is None else float(num_cpus)
        self.gpus = float(num_gpus)
        self.custom = {name: float(n) for name, n in (resources or {}).items()}
        if self.cpus < 0 or self.gpus < 0 or any(n < 0 for n in self.custom.values()):
            raise ValueError("resource amounts must not be negative")
        self.used_cpus = 0.0
        self.used_gpus = 0.0
        self.used_custom = dict.fromkeys(self.custom, 0.0)
        # Zero-CPU tasks take no CPU; this still bounds how many run at once.
        self.max_running = max(32, 4 * math.ceil(self.cpus))
        self.running = 0

    def check(self, d: Demand) -> str | None:
        """Why ``d`` can never be met, or ``None``."""
        if d.cpus < 0 or d.gpus < 0 or any(n < 0 for _, n in d.custom):
            return f"invalid resource demand {d}: amounts must not be negative"
        if d.cpus > self.cpus + _EPS:
            return (
                f"needs {_amount(d.cpus, 'CPU')} but this executor has {self.cpus:g}; "
                "declare more with init(num_cpus=...)"
            )
        if d.gpus > self.gpus + _EPS:
            return (
                f"needs {_amount(d.gpus, 'GPU')} but this executor has {self.gpus:g}; "
                "declare them with init(resources={'GPU': ...})"
            )
        for name, n in d.custom:
            have = self.custom.get(name, 0.0)
            if n > have + _EPS:
                return (
                    f"needs {n:g} of resource {name!r} but this executor has {have:g}; "
                    f"declare it with init(resources={{{name!r}: ...}})"
                )
        return None

    def fits(self, d: Demand) -> bool:
        """Whether ``d`` can start now."""
        if self.running >= self.max_running:
            return False
        if self.used_cpus + d.cpus > self.cpus + _EPS or self.used_gpus + d.gpus > self.gpus + _EPS:
            return False
        used, total = self.used_custom, self.custom
        return all(used.get(k, 0.0) + n <= total.get(k, 0.0) + _EPS for k, n in d.custom if n)

    def acquire(self, d: Demand) -> None:
        self.running += 1
        self.used_cpus += d.cpus
        self.used_gpus += d.gpus
        for name, n in d.custom:
            if n:
                self.used_custom[name] += n

    def release(self, d: Demand) -> None:
        self.running -= 1
        self.used_cpus = max(0.0, self.used_cpus - d.cpus)
        self.used_gpus = max(0.0, self.used_gpus - d.gpus)
        for name, n in d.custom:
            if n:
                self.used_custom[name] = max(0.0, self.used_custom[name] - n)


def covers(reservation: Demand, d: Demand) -> bool:
    """Whether a task needing ``d`` may run under ``reservation``."""
    if d.cpus > reservation.cpus + _EPS or d.gpus > reservation.gpus + _EPS:
        return False
    if not d.custom:
        return True
    held = dict(reservation.custom)
    return all(n <= held.get(name, 0.0) + _EPS for name, n in d.custom)


class TaskQueue:
    """Pending tasks, FIFO, where a head that cannot be placed does not block later tasks.

    Tasks are grouped by ``(demand, func_key)``: within a group every task places alike, so
    only group heads need trying, oldest first.
    """

    def __init__(self) -> None:
        self._groups: dict[tuple[Demand, str], deque[tuple[int, Task]]] = {}
        self._group_of: dict[int, tuple[Demand, str]] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._group_of)

    def push(self, task: Task) -> tuple[int, bool]:
        """Append ``task``; return its sequence number and whether it heads its group."""
        self._seq += 1
        key = (task.demand, task.func_key)
        group = self._groups.setdefault(key, deque())
        group.append((self._seq, task))
        self._group_of[task.task_id] = key
        return self._seq, len(group) == 1

    def pop_head(self, task: Task) -> None:
        key = self._group_of.pop(task.task_id)
        group = self._groups[key]
        group.popleft()
        if not group:
            del self._groups[key]

    def requeue(self, entries: Iterable[tuple[int, Task]]) -> None:
        """Put back tasks taken earlier; they are older than anything left in their group."""
        for seq, task in sorted(entries, key=lambda e: e[0], reverse=True):
            key = (task.demand, task.func_key)
            self._groups.setdefault(key, deque()).appendleft((seq, task))
            self._group_of[task.task_id] = key

    def remove(self, task_ids: set[int]) -> None:
        for key in {self._group_of.pop(i) for i in task_ids if i in self._group_of}:
            kept = deque(e for e in self._groups[key] if e[1].task_id not in task_ids)
            if kept:
                self._groups[key] = kept
            else:
                del self._groups[key]

    def dispatch(self, place: Callable[[int, Task], bool]) -> None:
        """Offer heads to ``place`` oldest first; a refused group stays blocked this round
        (placing others only uses capacity up)."""
        heap = [(group[0][0], key) for key, group in self._groups.items()]
        heapq.heapify(heap)
        while heap:
            _, key = heapq.heappop(heap)
            group = self._groups[key]
            seq, task = group[0]
            if not place(seq, task):
                continue
            self.pop_head(task)
            if group:
                heapq.heappush(heap, (group[0][0], key))


class QueuedExecutor(Executor):
    """What the local executors share: capacity checks and the FIFO-with-backfill queue.

    Subclasses set ``_cap``, ``_queue``, ``_ready`` and ``_closed``, and implement ``_place``.
    """

    _cap: Capacity
    _queue: TaskQueue
    _ready: list[Outcome]
    _closed: bool

    def _place(self, seq: int, task: Task) -> bool:
        """Start ``task`` if capacity allows; True if it was consumed."""
        raise NotImplementedError

    def check_demand(self, demand: Demand) -> str | None:
        return self._cap.check(demand)

    def submit(self, task: Task) -> None:
        if self._closed:
            raise RuntimeError("executor is shut down")
        problem = self._cap.check(task.demand)
        if problem is not None:
            self._ready.append(Outcome(task.task_id, error=problem, not_started=True))
            return
        seq, heads_group = self._queue.push(task)
        # Nothing was freed since the last dispatch, so only the new task can have become
        # placeable, and only if no older task of its group is still waiting.
        if heads_group and self._place(seq, task):
            self._queue.pop_head(task)
