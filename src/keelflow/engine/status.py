"""A workflow's status, from this process's runs, its status index, its lease and its journal."""

from __future__ import annotations

import enum
from typing import Any

from .journal import Journal
from .results import ENDED, load, not_found
from .runtime import Runtime, cancel_key, lease_key

__all__ = [
    "CANCELED",
    "FAILED",
    "RESUMABLE",
    "RUNNING",
    "SUCCESSFUL",
    "WorkflowStatus",
    "exists",
    "status_and_index",
    "workflow_status",
]


class WorkflowStatus(str, enum.Enum):
    """Where a workflow stands. ``RESUMABLE``: its owner died; ``FAILED``: a step failed."""

    RUNNING = "RUNNING"
    FAILED = "FAILED"
    RESUMABLE = "RESUMABLE"
    CANCELED = "CANCELED"
    SUCCESSFUL = "SUCCESSFUL"

    def __str__(self) -> str:
        return self.value


# Ray Workflows' names for the statuses: ``workflow.SUCCESSFUL`` and so on.
RUNNING = WorkflowStatus.RUNNING
FAILED = WorkflowStatus.FAILED
RESUMABLE = WorkflowStatus.RESUMABLE
CANCELED = WorkflowStatus.CANCELED
SUCCESSFUL = WorkflowStatus.SUCCESSFUL


def workflow_status(rt: Runtime, wid: str) -> WorkflowStatus:
    """The workflow's status (raises for an unknown id, or for damage the index shows)."""
    return status_and_index(rt, wid)[0]


def status_and_index(rt: Runtime, wid: str, *, verify: bool = True) -> tuple[WorkflowStatus, dict[str, Any]]:
    """The status, and the status index it came from (empty if there was none). With
    ``verify``, an ended workflow's journal is checked to still hold its end (one stat)."""
    if rt.local_run(wid) is not None:
        return WorkflowStatus.RUNNING, rt.read_index(wid) or {}
    info = rt.read_index(wid)
    return _status_from(rt, wid, info, verify), info or {}


def _status_from(rt: Runtime, wid: str, info: dict[str, Any] | None, verify: bool = True) -> WorkflowStatus:
    if info is None:
        loaded = load(rt.storage, wid)
        if loaded is None:
            raise not_found(rt.storage, wid)
        name = loaded[0].status_name
    else:
        name = info.get("status", "RUNNING")
    if name in ENDED:
        if verify and info is not None:
            _verify_end(rt, wid, info)
        return WorkflowStatus(name)
    if rt.storage.get(cancel_key(wid)) is not None:
        return WorkflowStatus.CANCELED
    if rt.storage.lease_held(lease_key(wid)):
        return WorkflowStatus.RUNNING
    loaded = load(rt.storage, wid)
    if loaded is None:
        raise not_found(rt.storage, wid)
    if loaded[0].status_name != "RUNNING":
        return WorkflowStatus(loaded[0].status_name)
    return WorkflowStatus.RESUMABLE


def _verify_end(rt: Runtime, wid: str, info: dict[str, Any]) -> None:
    """:class:`CorruptCheckpointError` if the journal no longer holds the end the index
    records: it is missing, or shorter than it was when the workflow ended."""
    journal = Journal(rt.storage, wid)
    extent = info.get("journal_extent")
    journal.check_extent(extent if isinstance(extent, int) and extent > 0 else 1)


def exists(rt: Runtime, wid: str) -> bool:
    """Whether anything of the workflow is stored: its journal, or its status index (which a
    damaged journal leaves behind; :func:`load` then names the damage)."""
    return rt.storage.size(f"workflows/{wid}/status") is not None or Journal(rt.storage, wid).exists()
