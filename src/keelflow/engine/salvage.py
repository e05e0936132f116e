"""Salvage a workflow whose journal is damaged: keep what is intact, set the rest aside.

A damaged journal is never cut by reading it (see :mod:`keelflow.engine.journal`). When the
user decides to go on, :func:`salvage` makes the workflow resumable from the last intact
record: the records before the damage stay the journal, and everything from the damage on
(the damaged bytes, and the records after them, which cannot be trusted to follow) is kept
beside it, under ``journal.damaged.<time>``, for a person to look at. Steps whose records were
set aside run again on resume. The status index, which vouched for the lost end, is dropped
and rebuilt from the journal.

Every prefix of a journal, cut between two records, is a state the workflow once had (records
are applied one at a time, and a crash can stop a writer between any two), so resuming from
it is sound.
"""

from __future__ import annotations

import time
from typing import Any

from .. import serialization
from ..errors import CorruptCheckpointError, KeelflowError
from ..storage import Storage
from .journal import Journal, wf_key
from .results import load
from .state import WorkflowState

__all__ = ["salvage"]


def salvage(storage: Storage, workflow_id: str) -> dict[str, Any]:
    """Salvage ``workflow_id``'s journal (the caller holds its lease); a report of what was
    kept and set aside. A journal without damage is left as it is (``"damaged": False``)."""
    try:
        load(storage, workflow_id)
    except CorruptCheckpointError as e:
        damage = str(e)
    else:
        return {"workflow_id": workflow_id, "damaged": False}
    journal = Journal(storage, workflow_id)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    aside = f"{journal.root}/journal.damaged.{stamp}"
    if journal.segmented:
        kept, state, set_aside = _salvage_segments(storage, journal, aside)
    else:
        kept, state, set_aside = _salvage_file(storage, journal, aside)
    checkpointed = sum(1 for n in state.nodes if n.done or n.continued is not None)
    return {
        "workflow_id": workflow_id,
        "damaged": True,
        "damage": damage,
        "records_kept": kept,
        "steps_kept": checkpointed,
        "steps": len(state.nodes),
        "set_aside": storage.location(aside) if set_aside else None,
        "status": state.status_name if state.status_name != "RUNNING" else "RESUMABLE",
    }


def _intact(workflow_id: str, chunks: list[bytes], where: list[str]) -> tuple[WorkflowState, list[int]]:
    """The state the intact records build, and how many bytes of each chunk they take."""
    state = WorkflowState(workflow_id)
    used = [0] * len(chunks)
    for i, data in enumerate(chunks):
        scan = serialization.scan_frames(data)
        ends = [*scan.offsets[1:], scan.end][: len(scan.payloads)]
        for payload, end in zip(scan.payloads, ends, strict=True):
            try:
                record = serialization.load_record(payload)
                if not state.nodes and record[0] != "start":
                    raise ValueError("the first record is not a start record")
                state.apply(record)
            except Exception:
                return _some(workflow_id, state, where), used
            used[i] = end
        if not scan.clean:
            break
    return _some(workflow_id, state, where), used


def _some(workflow_id: str, state: WorkflowState, where: list[str]) -> WorkflowState:
    if not state.nodes:
        first = where[0] if where else "the journal"
        raise KeelflowError(
            f"nothing of workflow {workflow_id!r} can be salvaged: its first record ({first}) is missing or "
            "damaged; delete the workflow and run it again"
        )
    return state


def _salvage_file(storage: Storage, journal: Journal, aside: str) -> tuple[int, WorkflowState, bool]:
    data = storage.get(journal.key) or b""
    state, used = _intact(journal.workflow_id, [data], [journal.path])
    end = used[0]
    storage.put(aside, data)  # first: whatever happens next, the damaged bytes are kept
    storage.delete_prefix(wf_key(journal.workflow_id, "status"))
    storage.put(journal.key, data[:end])
    return _count(data[:end]), state, True


def _salvage_segments(storage: Storage, journal: Journal, aside: str) -> tuple[int, WorkflowState, bool]:
    numbers = sorted(int(n) for n in storage.children(journal.key) if n.isdigit())
    chunks: list[bytes] = []
    where: list[str] = []
    for expected, seq in enumerate(numbers):
        if seq != expected:
            break  # a segment is missing: the ones after it cannot be trusted to follow
        key = f"{journal.key}/{seq:012d}"
        chunks.append(storage.get(key) or b"")
        where.append(storage.location(key))
    state, used = _intact(journal.workflow_id, chunks, where)
    # The first segment not wholly intact, and everything after it, go aside.
    first_bad = next((i for i, (d, u) in enumerate(zip(chunks, used, strict=True)) if u < len(d)), len(chunks))
    doomed = [seq for seq in numbers if seq >= first_bad]
    for seq in doomed:
        data = storage.get(f"{journal.key}/{seq:012d}")
        if data is not None:
            storage.put(f"{aside}/{seq:012d}", data)
    storage.delete_prefix(wf_key(journal.workflow_id, "status"))
    for seq in sorted(doomed, reverse=True):  # from the end: never a gap before what stays
        storage.delete_prefix(f"{journal.key}/{seq:012d}")
    if first_bad < len(chunks) and used[first_bad] > 0:
        storage.put(f"{journal.key}/{first_bad:012d}", chunks[first_bad][: used[first_bad]])
    kept = sum(_count(c[:u]) for c, u in zip(chunks, used, strict=True))
    return kept, state, bool(doomed)


def _count(data: bytes) -> int:
    return len(serialization.scan_frames(data).payloads)
