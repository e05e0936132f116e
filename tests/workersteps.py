"""Steps for the worker tests, importable by worker processes. Each execution of a chain link
is appended to ``$KF_STEP_LOG`` so tests can see what ran, and how often."""

from __future__ import annotations

import os
import time
from typing import Any

import keelflow as workflow


def _log(label: str) -> None:
    with open(os.environ["KF_STEP_LOG"], "a") as f:
        f.write(label + "\n")
        f.flush()
        os.fsync(f.fileno())


@workflow.step
def record(value: Any, *_: Any) -> Any:
    return value


@workflow.step
def link(label: str, seconds: float, n: int) -> int:
    time.sleep(seconds)
    _log(label)
    return n + 1


def chain(length: int, seconds: float, prefix: str = "") -> workflow.Workflow[int]:
    node: Any = 0
    for i in range(length):
        node = link.options(name=f"{prefix}link-{i}").step(f"{prefix}link-{i}", seconds, node)
    return node


@workflow.step(max_retries=2)
def fails_once(marker: str) -> str:
    """Raises on its first attempt (a retry), then succeeds."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt fails")
    return "second attempt"
