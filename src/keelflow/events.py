"""Events (SPEC §7): steps that finish when something happens, and durable timers.

``workflow.wait_for_event(Listener, *args)`` is a step whose output is what the listener's
``poll_for_event(*args)`` returns; ``workflow.sleep(seconds)`` waits for a deadline fixed when
the sleep starts running (as in Ray Workflows 1.x) and checkpointed before it waits, so a
resumed workflow sleeps only the time left;
``workflow.send_event(workflow_id, key, payload)`` stores a message that
``workflow.receive_event(key)`` in that workflow receives, even if it was sent first.
How event steps are awaited and checkpointed is in :mod:`keelflow.engine.events`.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
import time
from typing import Any

from . import serialization, session
from .ids import validate_id
from .objects import current_step, current_workflow
from .step import StepFunction, StepOptions, Workflow, _code_fingerprint

__all__ = [
    "EventListener",
    "ExternalEventListener",
    "TimerListener",
    "receive_event",
    "send_event",
    "sleep",
    "wait_for_event",
]

EVENTS = "events"
_CLAIM = ".claim"
#: How often a listener waiting for an external event looks at storage (events sent from
#: this process wake it at once).
_POLL_MIN, _POLL_MAX = 0.05, 1.0


class EventListener:
    """Waits for one kind of event. Subclass it and implement ``poll_for_event``.

    Listeners are built with no arguments, in the process running the workflow, and awaited
    on its event loop: ``poll_for_event`` must not block (use ``await``).
    """

    def __init__(self) -> None:
        pass

    async def poll_for_event(self, *args: Any, **kwargs: Any) -> Any:
        """Return the event (any serializable value) once it happened."""
        raise NotImplementedError

    async def event_checkpointed(self, event: Any) -> None:
        """Called once the event is durably checkpointed: commit it at its source now."""


class TimerListener(EventListener):
    """Fires at an absolute time (``time.time()`` seconds)."""

    async def poll_for_event(self, timestamp: float) -> None:
        while True:
            # In steps, so a clock that jumps (or a long suspend) is re-read.
            left = float(timestamp) - time.time()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 60.0))


class ExternalEventListener(EventListener):
    """Receives an event sent to this workflow with ``send_event(workflow_id, key, payload)``.

    The step's output is the payload. Events sent with one key are received in the order
    they were sent, each by one wait: the first wait claims it (durably, so after a crash the
    same wait gets the same event again), and the event is deleted once checkpointed.
    """

    def __init__(self) -> None:
        self._claimed: str | None = None

    async def poll_for_event(self, key: str) -> Any:

        validate_id(key, "event key")
        workflow_id = current_workflow.get()
        me = (current_step.get() or "").encode()
        storage = session.runtime().storage
        prefix = f"{EVENTS}/{workflow_id}/{key}"
        delay = _POLL_MIN
        while True:
            signal = _arrival(workflow_id, key)
            names = storage.children(prefix)
            claims = {n[: -len(_CLAIM)] for n in names if n.endswith(_CLAIM)}
            for name in names:
                if name.endswith(_CLAIM):
                    continue
                claim = f"{prefix}/{name}{_CLAIM}"
                if name in claims:
                    if storage.get(claim) != me:
                        continue  # another wait of this workflow has it
                elif not storage.put_if_absent(claim, me):
                    continue
                raw = storage.get(f"{prefix}/{name}")
                if raw is None:
                    continue
                self._claimed = f"{prefix}/{name}"
                return serialization.decode(raw, what=f"event {key!r} of workflow {workflow_id!r}")
            try:
                await asyncio.wait_for(signal.wait(), delay)
            except asyncio.TimeoutError:
                delay = min(delay * 2, _POLL_MAX)

    async def event_checkpointed(self, event: Any) -> None:

        storage = session.runtime().storage
        claimed = self._claimed or _find_claim(storage)
        if claimed is not None:
            storage.delete_prefix(claimed)
            storage.delete_prefix(claimed + _CLAIM)


def _find_claim(storage: Any) -> str | None:
    """The event this step claimed before a restart (its listener object is gone)."""
    workflow_id, me = current_workflow.get(), (current_step.get() or "").encode()
    root = f"{EVENTS}/{workflow_id}"
    for key in storage.children(root):
        for name in storage.children(f"{root}/{key}"):
            if name.endswith(_CLAIM) and storage.get(f"{root}/{key}/{name}") == me:
                return f"{root}/{key}/{name[: -len(_CLAIM)]}"
    return None


# -- waking local listeners -------------------------------------------------------------------------
_arrivals_lock = threading.Lock()
_arrivals: dict[tuple[str | None, str], tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}


def _arrival(workflow_id: str | None, key: str) -> asyncio.Event:
    """An asyncio event set when this process sends (workflow_id, key) an event."""
    loop = asyncio.get_running_loop()
    with _arrivals_lock:
        held = _arrivals.get((workflow_id, key))
        if held is None or held[0] is not loop or held[1].is_set():
            held = _arrivals[(workflow_id, key)] = (loop, asyncio.Event())
        return held[1]


def _wake(workflow_id: str, key: str) -> None:
    with _arrivals_lock:
        held = _arrivals.pop((workflow_id, key), None)
    if held is not None and not held[0].is_closed():
        try:
            held[0].call_soon_threadsafe(held[1].set)
        except RuntimeError:
            pass  # that loop closed meanwhile (keelflow was shut down): nobody waits there


# -- steps ------------------------------------------------------------------------------------------
class EventStep(StepFunction[Any]):
    """The step function of an event: awaited on the scheduler's event loop."""

    kind = "event"

    def __init__(self, listener: type[EventListener]) -> None:
        super().__init__(listener, StepOptions(max_retries=0))
        self._listener = listener
        # A listener with an event_checkpointed of its own is told, and that is recorded;
        # one without (timers) skips that round trip and its journal write.
        hook = getattr(listener, "event_checkpointed", None)
        if hook is not None and hook is not EventListener.event_checkpointed:
            self.kind = "event_ack"  # type: ignore[misc]
        try:
            self._poll_signature: inspect.Signature | None = inspect.signature(listener.poll_for_event)
        except (TypeError, ValueError):
            self._poll_signature = None

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = _code_fingerprint(self._listener.poll_for_event)
        return self._fingerprint

    def step(self, *args: Any, **kwargs: Any) -> Workflow[Any]:
        if self._poll_signature is not None:
            try:
                self._poll_signature.bind(None, *args, **kwargs)
            except TypeError as e:
                raise TypeError(f"bad arguments for {self.default_name}.poll_for_event: {e}") from None
        return Workflow(self, args, kwargs)

    def options(self, **options: Any) -> StepFunction[Any]:
        if set(options) - {"name", "metadata"}:
            raise TypeError("event steps take only the name and metadata options")
        step = EventStep(self._listener)
        step._options = self._options.merge(**options)
        return step

    def __reduce__(self) -> Any:
        return _event_step, (self._listener, self._options)


def _event_step(listener: type[EventListener], options: StepOptions) -> EventStep:
    step = EventStep(listener)
    step._options = options
    return step


def wait_for_event(listener: type[EventListener], *args: Any, **kwargs: Any) -> Workflow[Any]:
    """A step that finishes when ``listener().poll_for_event(*args, **kwargs)`` returns; its
    output is the event."""
    if not (isinstance(listener, type) and inspect.iscoroutinefunction(getattr(listener, "poll_for_event", None))):
        raise TypeError(
            f"wait_for_event needs an EventListener subclass with an async poll_for_event, got {listener!r}"
        )
    return EventStep(listener).step(*args, **kwargs)


class SleepStart(EventListener):
    """The first half of ``workflow.sleep``: its event is the deadline, ``seconds`` from when
    it runs. Checkpointed like any event, so the deadline is durable before the wait begins."""

    async def poll_for_event(self, seconds: float) -> float:
        return time.time() + float(seconds)


#: The step name of the deadline half of ``workflow.sleep`` (the wait is ``TimerListener``'s).
SLEEP_STEP = "keelflow.sleep"
_sleep_start: StepFunction[Any] | None = None


def sleep(seconds: float) -> Workflow[Any]:
    """A step that finishes ``seconds`` after it starts running; its output is ``None``.

    As in Ray Workflows 1.x, the deadline is fixed when the sleep starts (when the workflow
    reaches it, not when this node is built) and checkpointed before the wait begins: a
    workflow resumed after a crash sleeps only the time left (and goes on at once if the
    deadline passed meanwhile), and a sleep that had not started before the crash starts
    afresh. Two event steps: ``keelflow.sleep`` (its output is the deadline, ``time.time()``
    seconds) and ``keelflow.events.TimerListener`` (the wait); both are awaited on the
    scheduler's event loop, so a sleeping workflow holds no thread and no worker.
    """
    global _sleep_start
    if not isinstance(seconds, (int, float)) or seconds != seconds or seconds < 0:
        raise ValueError(f"workflow.sleep needs a number of seconds >= 0, got {seconds!r}")
    if _sleep_start is None:
        _sleep_start = EventStep(SleepStart).options(name=SLEEP_STEP)
    return wait_for_event(TimerListener, _sleep_start.step(float(seconds)))


def receive_event(key: str) -> Workflow[Any]:
    """A step whose output is the payload of the event sent to this workflow with ``key``."""

    validate_id(key, "event key")
    return wait_for_event(ExternalEventListener, key)


_sent = [0]
_sent_lock = threading.Lock()
_token = f"{os.getpid():x}-{os.urandom(4).hex()}"


def send_event(workflow_id: str, key: str, payload: Any = None) -> None:
    """Store an event for workflow ``workflow_id`` (running or not started yet) under ``key``.

    Durable when this returns. ``receive_event(key)`` in that workflow gets ``payload``.
    """

    validate_id(workflow_id)
    validate_id(key, "event key")
    data = serialization.encode(payload, what=f"the payload of event {key!r}", on_ref=_no_refs)
    with _sent_lock:
        now = max(time.time_ns(), _sent[0] + 1)
        _sent[0] = now
    # Names sort in sending order (per process; by time across processes).
    session.runtime().storage.put(f"{EVENTS}/{workflow_id}/{key}/{now:020d}-{_token}", data)
    _wake(workflow_id, key)


def _no_refs(ref: Any) -> str:
    from .errors import SerializationError

    raise SerializationError("an event payload cannot hold object refs; send the value")
