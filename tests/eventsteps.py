"""Listeners and steps for the event tests, importable by their subprocesses.

``Logged`` appends each poll and acknowledgement to the file named by ``$KF_EVENT_LOG``, and
can block (forever) the first time it polls or acknowledges, so a test can SIGKILL the
process at that point.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import keelflow as workflow


def log(line: str) -> None:
    with open(os.environ["KF_EVENT_LOG"], "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def entries() -> list[str]:
    try:
        with open(os.environ["KF_EVENT_LOG"]) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


async def _block_once(marker: str | None) -> None:
    """Block forever the first time ``marker`` is passed (the marker file says it happened)."""
    if marker and not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write("hit")
        await asyncio.sleep(3600)


class Logged(workflow.EventListener):
    async def poll_for_event(self, value: Any, block_poll: str | None = None, block_ack: str | None = None) -> Any:
        log(f"poll:{value}")
        await _block_once(block_poll)
        return {"value": value, "block_ack": block_ack}

    async def event_checkpointed(self, event: Any) -> None:
        log(f"ack-start:{event['value']}")
        await _block_once(event["block_ack"])
        log(f"ack-done:{event['value']}")


@workflow.step
def unwrap(event: Any) -> Any:
    return event["value"] if isinstance(event, dict) else event


@workflow.step
def gather(*args: Any) -> tuple:
    return args


@workflow.step
def after_sleep(_: Any, start: float) -> float:
    import time

    return time.time() - start
