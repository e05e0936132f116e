"""Read-only views of workflows and actors, as plain JSON-able dicts: what the command line,
the dashboard and the metrics show. Built on the management API's own reads (the state a
running workflow has in this process, else what its journal says), never on storage layout.

A step's ``status`` here is one of:

- ``SUCCESSFUL``: its output is checkpointed;
- ``CONTINUED``: it returned a sub-workflow (``continued_by`` names that sub-workflow's last
  step, whose output becomes this step's);
- ``FAILED``: it failed for good (the workflow is FAILED; ``error`` and ``traceback`` say why);
- ``RUNNING``: its inputs are ready and the workflow is running: it runs or waits for a slot;
- ``PENDING``: it waits for inputs (or the workflow is not running). A step whose worker
  kept dying stopped the last run: it is ``PENDING``, with ``error`` saying what happened.
"""

from __future__ import annotations

from typing import Any

from . import api
from .engine.state import ROOT, WorkflowState

__all__ = ["list_view", "step_rows", "workflow_view"]


def step_rows(
    state: WorkflowState, status: str, started: dict[int, float] | None = None, attempts: dict[int, int] | None = None
) -> list[dict[str, Any]]:
    """One dict per step, in the order steps were added (a continuation after its parent)."""
    started = started or {}
    attempts = attempts or {}
    # The nodes of a continuation share their batch's first index ("base") with its root.
    made_by = {state.nodes[n.continued].base: i for i, n in enumerate(state.nodes) if n.continued is not None}
    rows = []
    for i, node in enumerate(state.nodes):
        entry = state.funcs[node.func]
        if node.done and node.continued is None:
            step_status = "SUCCESSFUL"
        elif node.continued is not None:
            step_status = "CONTINUED"
        elif node.error is not None:
            step_status = "FAILED"
        elif status == "RUNNING" and all(state.nodes[d].done for d in node.deps):
            step_status = "RUNNING"
        else:
            step_status = "PENDING"
        start = node.start if node.start is not None else started.get(i)
        end = node.end if (node.done or node.error is not None or node.continued is not None) else None
        traceback = node.error[1] if node.error is not None else ""
        last = traceback.strip().splitlines()[-1] if traceback.strip() else ""
        if not last and node.halted:  # its system failures stopped the last run (resumable)
            last = node.halted
        rows.append(
            {
                "index": i,
                "name": node.name,
                "function": entry.name,
                "status": step_status,
                "attempts": node.attempts or attempts.get(i, 0),
                "start_time": start,
                "end_time": end,
                "duration": (end - start) if (start is not None and end is not None) else None,
                "deps": list(node.deps),
                "parent": made_by.get(node.base),
                "continued_by": node.continued,
                "root": i == ROOT,
                "error": last,
                "traceback": traceback,
                "kind": entry.kind or "task",
            }
        )
    return rows


def workflow_view(workflow_id: str) -> dict[str, Any]:
    """Status, metadata, timing and every step of one workflow (raises for an unknown id)."""
    meta, state, started, attempts = api.inspect_workflow(workflow_id)
    status = meta["status"]
    steps = step_rows(state, status, started, attempts)
    counts: dict[str, int] = {}
    for row in steps:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    failed = next((row for row in steps if row["status"] == "FAILED"), None)
    return {
        "workflow_id": workflow_id,
        "status": status,
        "user_metadata": meta["user_metadata"],
        "start_time": meta["stats"].get("start_time"),
        "end_time": meta["stats"].get("end_time"),
        "steps": steps,
        "step_counts": counts,
        "error": failed["error"] if failed else "",
        "failed_step": failed["name"] if failed else None,
        "owned_by": state.header.get("owned_by"),
    }


def list_view(status_filter: Any = None) -> list[dict[str, Any]]:
    """Every workflow (optionally filtered by status), newest first."""
    return [
        {
            "workflow_id": wid,
            "status": status.value,
            "start_time": info.get("start_time"),
            "end_time": info.get("end_time"),
            "owned_by": info.get("owned_by"),
            "user_metadata": info.get("user_metadata") or {},
        }
        for wid, status, info in api.listing(status_filter)
    ]
