"""Step functions of the keelflow benchmarks.

They live in an importable module (not ``__main__``) so keelflow pickles them by reference,
as a real application's steps would be.
"""

from __future__ import annotations

import os
import signal
import time

from _bench_util import burn

import keelflow as workflow


@workflow.step
def inc(x: int) -> int:
    return x + 1


@workflow.step
def one(i: int) -> int:
    return 1


@workflow.step
def gather(xs: list[int]) -> int:
    return sum(xs)


@workflow.step
def add(a: int, b: int) -> int:
    return a + b


@workflow.step
def fib(n: int):  # type: ignore[no-untyped-def]
    """Dynamic: returns a sub-workflow (a continuation) for n >= 2."""
    if n < 2:
        return n
    return add.step(fib.step(n - 1), fib.step(n - 2))


@workflow.step
def inc_or_die(x: int) -> int:
    """``inc``; the step producing ``$KF_BENCH_KILL_AT`` SIGKILLs the driver process
    (``$KF_BENCH_DRIVER_PID``): its parent under the local executor, itself under the
    thread executor. The variable is set only in the run that is to be killed."""
    kill_at = os.environ.get("KF_BENCH_KILL_AT")
    if kill_at is not None and x + 1 == int(kill_at):
        os.kill(int(os.environ["KF_BENCH_DRIVER_PID"]), signal.SIGKILL)
        signal.pause()  # never returns a result: the driver is gone (the worker exits after it)
    return x + 1


@workflow.step
def burn_step(iterations: int) -> float:
    """Pure-Python CPU work; returns the CPU seconds it took (this thread's)."""
    t = time.thread_time()
    burn(iterations)
    return time.thread_time() - t


@workflow.step
def total(xs: list[float]) -> float:
    return float(sum(xs))
