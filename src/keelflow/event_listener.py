"""Event listeners, as ``workflow.event_listener.TimerListener`` and friends (SPEC §7)."""

from .events import EventListener, ExternalEventListener, TimerListener

__all__ = ["EventListener", "ExternalEventListener", "TimerListener"]
