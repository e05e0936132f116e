"""Ray 2.x's HTTP events on keelflow's worker: ``HTTPListener``.

Ray 2.x code waits for an event posted over HTTP with::

    from keelflow import workflow                            # was: from ray import workflow
    from keelflow.http_event_provider import HTTPListener    # was: ray.workflow.http_event_provider

    event = workflow.wait_for_event(HTTPListener, event_key="approval")

and a client posts ``{"event_key": "approval", "event_payload": ...}`` to
``/event/send_event/<workflow_id>``. In Ray that path was served by a Ray Serve deployment
(``HTTPEventProvider``, port 8000); here ``keelflow worker`` serves it (port 8765 unless
``--port`` says otherwise), and the same event can be sent with
``workflow.send_event(workflow_id, key, payload)``. The wait's output is Ray's pair
``(event_key, event_payload)``.

Differences from Ray, on purpose: the event is stored durably when the worker answers (200),
so it may be sent before the workflow waits for it (Ray refused such an event with 404) and
survives a crash of either side; Ray answered only after the workflow had checkpointed it. An
event key may not be empty (it names a place in storage).
"""

from __future__ import annotations

from typing import Any

from .events import ExternalEventListener
from .objects import current_step

__all__ = ["HTTPListener"]


class HTTPListener(ExternalEventListener):
    """Waits for the event posted for this workflow with ``event_key`` (by default, the
    name of the waiting step, as Ray 2.x defaulted to its task id)."""

    async def poll_for_event(self, event_key: str | None = None) -> tuple[str, Any]:  # type: ignore[override]
        key = event_key if event_key is not None else (current_step.get() or "")
        payload = await super().poll_for_event(key)
        return key, payload
