"""Event steps: listeners awaited on one asyncio loop per process.

An event step is a node like any other, but its "function" is an event listener class: the
scheduler hands it here instead of to the executor, and the listener's ``poll_for_event`` is
awaited on this module's loop, so a thousand workflows waiting for timers or messages cost
a thousand coroutines, not a thousand threads. The event a listener returns becomes the
step's output through the usual outcome path, so it is checkpointed (one flushed append)
before anything that depends on it runs. Only then is ``event_checkpointed`` awaited, and
its completion is recorded too: after a crash, an event that was checkpointed is not polled
again, and one whose acknowledgement was not recorded is acknowledged again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import serialization
from ..executors.base import Outcome
from ..objects import current_step, current_workflow
from ..step import StepFunction
from .task import decode_inputs, encode_error, encode_result

__all__ = ["EventLoop"]

log = logging.getLogger("keelflow")


class EventLoop:
    """A daemon thread running an asyncio loop for this process's event steps."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._tasks: dict[int, concurrent.futures.Future[Any]] = {}
        # Listener and event of polls whose outcome is not yet checkpointed, by task id.
        self._pending_acks: dict[int, tuple[Any, Any]] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="keelflow-events", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def poll(self, task_id: int, func: StepFunction[Any], payload: bytes, deliver: Callable[[Outcome], None]) -> None:
        """Await the listener of an event step; ``deliver`` gets its outcome (any thread)."""
        future = asyncio.run_coroutine_threadsafe(self._poll(task_id, func, payload, deliver), self._loop)
        with self._lock:
            self._tasks[task_id] = future

    async def _poll(
        self, task_id: int, func: StepFunction[Any], payload: bytes, deliver: Callable[[Outcome], None]
    ) -> None:
        workflow_id, step_name, args_data, deps, objects = serialization.load_record(payload)
        # Each poll runs as its own asyncio task, so these are its own context.
        current_workflow.set(workflow_id)
        current_step.set(step_name)
        start = time.time()
        try:
            args, kwargs = decode_inputs(step_name, args_data, deps, objects)
            listener = func._func()
            event = await listener.poll_for_event(*args, **kwargs)
            result = encode_result(func, step_name, event, start)
            with self._lock:
                self._pending_acks[task_id] = (listener, event)
        except asyncio.CancelledError:
            return  # the run was cancelled or stopped: nobody wants the outcome
        except Exception as exc:
            result = encode_error(func, exc, start)
        finally:
            with self._lock:
                self._tasks.pop(task_id, None)
        deliver(Outcome(task_id, result=result))

    def acknowledge(
        self,
        task_id: int | None,
        func: StepFunction[Any],
        output: bytes | None,
        where: tuple[str, str],
        done: Callable[[BaseException | None], None],
    ) -> None:
        """Await ``event_checkpointed`` for a checkpointed event, then call ``done``.

        ``task_id`` names a poll of this process; without one (after a restart) a fresh
        listener is given the event decoded from ``output``.
        """
        with self._lock:
            held = self._pending_acks.pop(task_id, None) if task_id is not None else None
        asyncio.run_coroutine_threadsafe(self._acknowledge(held, func, output, where, done), self._loop)

    async def _acknowledge(
        self,
        held: tuple[Any, Any] | None,
        func: StepFunction[Any],
        output: bytes | None,
        where: tuple[str, str],
        done: Callable[[BaseException | None], None],
    ) -> None:
        current_workflow.set(where[0])  # (workflow id, step name), as while it polled
        current_step.set(where[1])
        try:
            if held is None:
                listener = func._func()
                event = serialization.decode(output or b"", what="a checkpointed event")
            else:
                listener, event = held
            hook = getattr(listener, "event_checkpointed", None)
            if hook is not None:
                await hook(event)
        except Exception as e:
            log.exception("event_checkpointed of %s failed", func.default_name)
            done(e)
            return
        done(None)

    @property
    def waiting(self) -> int:
        """Event steps awaited now."""
        return len(self._tasks)

    def cancel(self, task_ids: list[int]) -> None:
        with self._lock:
            futures = [self._tasks.pop(t) for t in task_ids if t in self._tasks]
            for t in task_ids:
                self._pending_acks.pop(t, None)
        for future in futures:
            future.cancel()

    def stop(self) -> None:
        """Cancel every poll and acknowledgement still pending, and close the loop."""
        with self._lock:
            self._tasks.clear()
            self._pending_acks.clear()
        if self._loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(_cancel_all(), self._loop).result(5)
        except Exception:
            log.debug("event loop did not wind down cleanly", exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()


async def _cancel_all() -> None:
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
