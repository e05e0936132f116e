"""Prometheus metrics: what this process's scheduler did, and what storage says.

The scheduler counts into plain integers here (cheap, and the core never imports
prometheus-client for it); :func:`exposition` turns them into Prometheus' text format on a
scrape, with workflows by status read from storage at that moment. The worker and the
dashboard serve it at ``/metrics``.

- ``keelflow_steps_started_total``, ``keelflow_steps_succeeded_total``,
  ``keelflow_steps_failed_total`` (failed for good), ``keelflow_steps_retried_total``: counters;
- ``keelflow_step_duration_seconds``: a histogram of step attempts that finished, by outcome;
- ``keelflow_workflows``: workflows in storage by status (a gauge);
- ``keelflow_events_waiting``: event steps (timers, listeners) this process is waiting on.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["BUCKETS", "exposition", "observe_step", "snapshot", "step_retried", "step_started"]

#: Upper bounds of the step duration histogram, in seconds.
BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 3600.0)

_lock = threading.Lock()
_counts = {"started": 0, "succeeded": 0, "failed": 0, "retried": 0}
# outcome -> (per-bucket counts with +Inf last, sum of seconds)
_hist: dict[str, tuple[list[int], list[float]]] = {}
#: Set by the runtime: how many event steps this process waits on.
events_waiting: Callable[[], int] = lambda: 0  # noqa: E731


def step_started() -> None:
    with _lock:
        _counts["started"] += 1


def step_retried() -> None:
    with _lock:
        _counts["retried"] += 1


def observe_step(outcome: str, seconds: float | None) -> None:
    """A step attempt ended: ``succeeded`` or ``failed`` (for good), ``retried`` or ``errored``
    attempts count only in the histogram."""
    with _lock:
        if outcome in ("succeeded", "failed"):
            _counts[outcome] += 1
        if seconds is None or seconds < 0:
            return
        buckets, total = _hist.setdefault(outcome, ([0] * (len(BUCKETS) + 1), [0.0]))
        buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        total[0] += seconds


def snapshot() -> dict[str, Any]:
    """The counters and histograms as plain values (for tests and the dashboard)."""
    with _lock:
        return {
            **_counts,
            "durations": {k: (list(b), t[0]) for k, (b, t) in _hist.items()},
        }


def _families(statuses: dict[str, int] | None) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    snap = snapshot()
    for name, doc in (
        ("started", "Step attempts started by this process"),
        ("succeeded", "Steps whose output this process checkpointed"),
        ("failed", "Steps that failed for good in this process"),
        ("retried", "Step attempts that failed and were retried"),
    ):
        yield CounterMetricFamily(f"keelflow_steps_{name}", doc, value=snap[name])
    hist = HistogramMetricFamily(
        "keelflow_step_duration_seconds", "Duration of step attempts, by outcome", labels=["outcome"]
    )
    for outcome, (counts, total) in sorted(snap["durations"].items()):
        running = 0
        cumulative = []
        for bound, count in zip([*map(str, BUCKETS), "+Inf"], counts, strict=True):
            running += count
            cumulative.append((bound, running))
        hist.add_metric([outcome], cumulative, total)
    yield hist
    if statuses is not None:
        gauge = GaugeMetricFamily("keelflow_workflows", "Workflows in storage, by status", labels=["status"])
        for status, count in sorted(statuses.items()):
            gauge.add_metric([status], count)
        yield gauge
    yield GaugeMetricFamily(
        "keelflow_events_waiting", "Event steps (timers, listeners) this process waits on", value=events_waiting()
    )


def exposition() -> tuple[bytes, str]:
    """``(body, content type)`` of a ``/metrics`` answer. Needs prometheus-client."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    from . import api
    from .api import WorkflowStatus

    statuses = {s.value: 0 for s in WorkflowStatus}
    for _, status, _info in api.listing():  # workflows only (list_all lists actors too)
        statuses[status.value] += 1

    class _Collector:
        def collect(self) -> Iterator[Any]:
            return _families(statuses)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())  # type: ignore[arg-type]
    return generate_latest(registry), CONTENT_TYPE_LATEST
