"""Steps for the Ray executor tests, importable by Ray's workers."""

from __future__ import annotations

import os
import time

import keelflow as workflow


def node_id() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


@workflow.step
def where() -> str:
    return node_id()


@workflow.step
def meet(directory: str, name: str, expected: int) -> str:
    """Wait until ``expected`` steps are running at once (a barrier on files): only possible
    if Ray runs them side by side. Returns the node this one ran on."""
    open(os.path.join(directory, name), "w").close()
    deadline = time.monotonic() + 60
    while len(os.listdir(directory)) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(os.listdir(directory))} of {expected} steps ever ran at once")
        time.sleep(0.01)
    return node_id()


@workflow.step
def make_bytes(n: int) -> bytes:
    return os.urandom(n)


@workflow.step
def digest(data: bytes) -> tuple[int, int]:
    return len(data), sum(data[:: max(1, len(data) // 1000)])


@workflow.step
def dies_once(marker: str) -> int:
    """Kills its own worker process on the first attempt: a system failure, not an error."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return os.getpid()


@workflow.step
def sleeps(seconds: float, marker: str) -> str:
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return "woke"
