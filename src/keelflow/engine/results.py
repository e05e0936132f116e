"""Reading a workflow back from storage: replay, step outputs, objects and errors.

Shared by the scheduler (a finished run's output) and the management API (any workflow,
running here, elsewhere, or not at all).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import serialization
from ..errors import SerializationError, WorkflowExecutionError, WorkflowNotFoundError
from ..objects import FutureRef, ObjectRef
from ..storage import Storage
from .journal import Journal
from .state import ROOT, WorkflowState

__all__ = [
    "execution_error",
    "load",
    "make_ref_resolver",
    "output_value",
    "require",
    "resolved_node",
    "step_value",
]


def load(
    storage: Storage, workflow_id: str, *, repair: bool = False, strict: bool = True
) -> tuple[WorkflowState, Journal, list[tuple[Any, ...]]] | None:
    """Replay a workflow's journal; ``None`` if it does not exist."""
    journal = Journal(storage, workflow_id)
    records = journal.read(repair=repair, strict=strict)
    if not records:
        return None
    state = WorkflowState(workflow_id)
    for record in records:
        state.apply(record)
    return state, journal, records


def require(storage: Storage, workflow_id: str) -> tuple[WorkflowState, Journal, list[tuple[Any, ...]]]:
    """:func:`load`, or :class:`WorkflowNotFoundError`."""
    loaded = load(storage, workflow_id)
    if loaded is None:
        raise WorkflowNotFoundError(workflow_id=workflow_id)
    return loaded


def make_ref_resolver(state: WorkflowState, journal: Journal) -> Callable[[str], ObjectRef[Any]]:
    """Refs to a workflow's stored objects, loaded from storage only when read."""
    built: dict[str, ObjectRef[Any]] = {}

    def resolve(ref_id: str) -> ObjectRef[Any]:
        ref = built.get(ref_id)
        if ref is None:
            data, nested = state.objects[ref_id]
            ref = ObjectRef(ref_id, journal.load(data), {n: resolve(n) for n in nested})
            built[ref_id] = ref
        return ref

    return resolve


def output_value(state: WorkflowState, journal: Journal, index: int = ROOT, *, resolve_top: bool = True) -> Any:
    """A step's (by default the workflow's) output; a ref output is read as its value."""
    node = state.nodes[index]
    data = journal.load(node.output)
    value = serialization.decode(
        data, what=f"the output of step {node.name}", resolve_ref=make_ref_resolver(state, journal)
    )
    if resolve_top and isinstance(value, ObjectRef) and not isinstance(value, FutureRef):
        value = value._get()
    return value


def execution_error(state: WorkflowState) -> WorkflowExecutionError:
    """The error a failed workflow raises: names the step; ``__cause__`` is its exception."""
    assert state.failed is not None
    node = state.nodes[state.failed]
    blob, tb = node.error or (b"", "")
    try:
        cause = serialization.decode(blob, what=f"the error of step {node.name}")
    except SerializationError as e:
        cause = e
    message = f"workflow {state.workflow_id!r} failed in step {node.name}: {type(cause).__name__}: {cause}"
    err = WorkflowExecutionError(message, workflow_id=state.workflow_id, step_name=node.name, traceback=tb)
    err.__cause__ = cause
    return err


def resolved_node(state: WorkflowState, index: int) -> int | None:
    """The node whose ``done`` record holds ``index``'s output (following continuations)."""
    node = state.nodes[index]
    if not node.done:
        return None
    while node.continued is not None:
        index = node.continued
        node = state.nodes[index]
    return index


def step_value(state: WorkflowState, journal: Journal, records: list[tuple[Any, ...]], index: int) -> Any:
    """A finished step's output, re-read from ``records`` if replay released it (memory)."""
    target = resolved_node(state, index)
    if state.nodes[index].output is None:
        for record in records:
            if record[0] == "done" and record[1] == target:
                state.nodes[index].output = record[2]
                break
    return output_value(state, journal, index)
