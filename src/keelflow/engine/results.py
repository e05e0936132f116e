"""Reading a workflow back from storage: replay, step outputs, objects and errors.

Shared by the scheduler (a finished run's output) and the management API (any workflow,
running here, elsewhere, or not at all).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .. import serialization
from ..errors import (
    CorruptCheckpointError,
    OutputNotReadyError,
    SerializationError,
    StepNotFoundError,
    WorkflowExecutionError,
    WorkflowNotFoundError,
)
from ..objects import FutureRef, ObjectRef
from ..storage import Storage
from .journal import Journal, describe, wf_key
from .state import ROOT, WorkflowState

__all__ = [
    "ENDED",
    "execution_error",
    "load",
    "make_ref_resolver",
    "not_found",
    "output_value",
    "require",
    "resolved_node",
    "restore_output",
    "step_output",
    "step_value",
]


#: Statuses a workflow ends with.
ENDED = ("SUCCESSFUL", "FAILED", "CANCELED")


def load(
    storage: Storage, workflow_id: str, *, owner: bool = False
) -> tuple[WorkflowState, Journal, list[tuple[Any, ...]]] | None:
    """Replay a workflow's journal; ``None`` if no such workflow was ever started.

    The status index is checked against the journal: an index that says the workflow exists,
    or that it ended, over a journal that is missing, empty, cut short or short of that end
    is :class:`CorruptCheckpointError`, never "no workflow". With ``owner`` (the caller holds
    the lease) a torn tail, the last append of a crashed writer, is cut off; only then.
    """
    journal = Journal(storage, workflow_id)
    records = journal.read()
    raw_index = storage.get(wf_key(workflow_id, "status"))
    if not records:
        if raw_index is None:
            if owner:
                journal.cut_torn_tail()  # a start record torn by a crash: it never started
            return None
        raise CorruptCheckpointError(
            f"journal of workflow {workflow_id!r} at {journal.path} is {_lack(storage, journal)}, but its status "
            f"index {storage.location(wf_key(workflow_id, 'status'))} says it {_claim(raw_index)}: its records "
            "are lost or damaged",
            path=journal.path,
            offset=journal.torn[0] if journal.torn else 0,
        )
    state = WorkflowState(workflow_id)
    for number, record in enumerate(records):
        try:
            state.apply(record)
        except Exception as e:
            raise CorruptCheckpointError(
                f"journal record #{number} of workflow {workflow_id!r} at {journal.path} does not fit the records "
                f"before it ({type(e).__name__}: {e})",
                path=journal.path,
            ) from e
    _check_index(storage, workflow_id, journal, state, raw_index)
    if owner:
        journal.cut_torn_tail()
    return state, journal, records


def _lack(storage: Storage, journal: Journal) -> str:
    size = journal.extent()
    if journal.torn is not None:
        return f"cut short inside its first record ({journal.torn[1]} bytes)"
    if journal.segmented:
        return "missing" if size == 0 else "empty"
    return "missing" if storage.size(journal.key) is None else "empty"


def _claim(raw_index: bytes) -> str:
    status = _index(raw_index).get("status")
    return f"is {status}" if status else "exists"


def _index(raw_index: bytes | None) -> dict[str, Any]:
    try:
        info = json.loads(raw_index or b"")
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _check_index(
    storage: Storage, workflow_id: str, journal: Journal, state: WorkflowState, raw_index: bytes | None
) -> None:
    """An index may lag the journal (it is written after it, without a flush), never lead it:
    an end it records that the journal does not hold means the journal lost records."""
    info = _index(raw_index)
    claimed = info.get("status")
    held = state.status_name
    extent = info.get("journal_extent")
    if isinstance(extent, int) and extent > journal.read_end:
        unit = "segments" if journal.segmented else "bytes"
        raise CorruptCheckpointError(
            f"journal of workflow {workflow_id!r} at {journal.path} is damaged: it held {extent} {unit} of whole "
            f"records when the workflow ended, and holds {journal.read_end} now{_tail(journal)}; records it had "
            "are lost",
            path=journal.path,
            offset=journal.read_end if not journal.segmented else None,
        )
    if claimed == "FAILED":
        lost = not state.ever_failed  # a failed workflow may have been resumed since
    else:
        lost = claimed in ENDED and claimed != held
    if lost:
        raise CorruptCheckpointError(
            f"journal of workflow {workflow_id!r} at {journal.path} is damaged: its status index says {claimed}, but "
            f"the journal's records end with the workflow {held}{_tail(journal)}; records it had are lost",
            path=journal.path,
            offset=journal.torn[0] if journal.torn else None,
        )


def _tail(journal: Journal) -> str:
    if journal.torn is None:
        return ""
    end, size = journal.torn
    return f" (the last {size - end} bytes, from byte {end}, are a partial record)"


def require(storage: Storage, workflow_id: str) -> tuple[WorkflowState, Journal, list[tuple[Any, ...]]]:
    """:func:`load`, or :class:`WorkflowNotFoundError` naming the storage searched."""
    loaded = load(storage, workflow_id)
    if loaded is None:
        raise not_found(storage, workflow_id)
    return loaded


def not_found(storage: Storage, workflow_id: str) -> WorkflowNotFoundError:
    where = describe(storage)
    return WorkflowNotFoundError(
        f"no workflow with id {workflow_id!r} in {where}", workflow_id=workflow_id, storage=where
    )


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
    if node.output is None:
        raise CorruptCheckpointError(
            f"journal of workflow {state.workflow_id!r} at {journal.path} holds no output for step {node.name}",
            path=journal.path,
        )
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


def restore_output(state: WorkflowState, index: int, records: list[tuple[Any, ...]]) -> None:
    """Put back, from ``records``, a finished step's output that was released (memory)."""
    if state.nodes[index].output is None:
        target = resolved_node(state, index)
        for record in records:
            if record[0] == "done" and record[1] == target:
                state.nodes[index].output = record[2]
                break


def step_value(state: WorkflowState, journal: Journal, records: list[tuple[Any, ...]], index: int) -> Any:
    """A finished step's output, re-read from ``records`` if replay released it (memory)."""
    restore_output(state, index, records)
    return output_value(state, journal, index)


def step_output(state: WorkflowState, journal: Journal, records: list[tuple[Any, ...]], name: str, status: str) -> Any:
    """Step ``name``'s output, or the error that says why it has none (the workflow being
    ``status``)."""
    wid = state.workflow_id
    index = state.names.get(name)
    if index is None:
        raise StepNotFoundError(workflow_id=wid, step_name=name)
    if resolved_node(state, index) is not None:
        return step_value(state, journal, records, index)
    if state.failed == index:
        raise execution_error(state)
    raise OutputNotReadyError(
        f"step {name!r} of workflow {wid!r} has no output: the workflow is {status}", workflow_id=wid, step_name=name
    )
