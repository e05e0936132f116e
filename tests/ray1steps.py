"""Steps and an actor for tests/test_ray1_semantics.py, importable by worker processes, Ray
workers and the drivers those tests start (so they are pickled by reference).

Attempts are counted in files (one line each, flushed), so a count survives the SIGKILL that
some of these steps send to their own process.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import keelflow as workflow


def bump(path: str) -> int:
    """Append a line to ``path``; how many lines it has now (this attempt's number)."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())
    return count(path)


def count(path: str) -> int:
    try:
        with open(path) as f:
            return len(f.read().split())
    except FileNotFoundError:
        return 0


def die() -> None:
    """What the OOM killer does to a worker process."""
    os.kill(os.getpid(), signal.SIGKILL)


def wait_for_file(path: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)


@workflow.step
def counted(path: str) -> int:
    return bump(path)


@workflow.step(max_retries=0)
def dies_once(path: str) -> int:
    """SIGKILLs its own process on the first attempt; returns the pid of the second."""
    if bump(path) == 1:
        die()
    return os.getpid()


@workflow.step(max_retries=5)
def dies_until_fixed(path: str, fixed: str) -> str:
    """SIGKILLs its own process on every attempt until ``fixed`` exists."""
    n = bump(path)
    if not os.path.exists(fixed):
        die()
    return f"fixed at attempt {n}"


@workflow.step(max_retries=1)
def raises_then_dies_then_works(path: str) -> str:
    """Attempt 1 raises (spends the one retry), attempt 2 dies (spends none), 3 returns."""
    n = bump(path)
    if n == 1:
        raise ValueError("attempt 1 failed")
    if n == 2:
        die()
    return f"ok at attempt {n}"


@workflow.step(max_retries=2)
def always_raises(path: str, how: str) -> None:
    """The step's own failure on every attempt: an exception, or ``sys.exit``."""
    n = bump(path)
    if how == "exit":
        sys.exit(3)
    raise ValueError(f"attempt {n} failed")


@workflow.step
def pair(a: object, b: object) -> tuple[object, object]:
    return (a, b)


@workflow.step
def stamp(_slept: object) -> float:
    """When the step after a sleep ran."""
    return time.time()


@workflow.virtual_actor
class Tally:
    def __init__(self, start: int) -> None:
        self.n = start

    def add(self, k: int) -> int:
        self.n += k
        return self.n

    def add_when(self, started: str, flag: str, k: int) -> int:
        """Announce the call in ``started``, then wait for ``flag`` before adding."""
        open(started, "w").close()
        wait_for_file(flag)
        self.n += k
        return self.n

    def ship(self, path: str, fixed: str) -> workflow.Workflow[str]:
        """A call that runs a workflow whose step dies until ``fixed`` exists."""
        return dies_until_fixed.step(path, fixed)

    @workflow.virtual_actor.readonly
    def value(self) -> int:
        return self.n
