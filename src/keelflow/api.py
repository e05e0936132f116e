"""The management API (SPEC §5): init, status, outputs, resume, cancel, delete, metadata."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import Any

from . import session
from .engine.journal import Journal
from .engine.results import (
    execution_error,
    load,
    not_found,
    output_value,
    require,
    resolved_node,
    step_output,
    step_value,
)
from .engine.runtime import Runtime, cancel_key, interrupt_hold, lease_key, new_workflow_id, owner_info
from .engine.state import ROOT, WorkflowState
from .engine.status import (
    CANCELED,
    FAILED,
    RESUMABLE,
    RUNNING,
    SUCCESSFUL,
    WorkflowStatus,
    exists,
    status_and_index,
    workflow_status,
)
from .errors import (
    CorruptCheckpointError,
    KeelflowError,
    OutputNotReadyError,
    StepNotFoundError,
    WorkflowCancelledError,
    WorkflowNotFoundError,
    WorkflowRunningError,
)
from .ids import validate_id
from .objects import FutureRef
from .step import Workflow, _check_metadata
from .storage import Storage

__all__ = [
    "CANCELED",
    "FAILED",
    "RESUMABLE",
    "RUNNING",
    "SUCCESSFUL",
    "WorkflowStatus",
    "cancel",
    "delete",
    "get_metadata",
    "get_output",
    "get_output_async",
    "get_status",
    "init",
    "list_all",
    "resume",
    "resume_all",
    "resume_async",
    "run_workflow",
    "salvage",
    "shutdown",
    "submit",
]

log = logging.getLogger("keelflow")


#: ``(storage url, workflow id, error)`` of damage :func:`resume_all` has logged already.
_damage_reported: set[tuple[str, str, str]] = set()


# -- init / shutdown ----------------------------------------------------------------------------
def init(
    storage: str | os.PathLike[str] | Storage | None = None,
    *,
    executor: str | None = None,
    num_cpus: float | None = None,
    resources: dict[str, float] | None = None,
    create: bool = True,
    max_running_workflows: int | None = None,
    max_pending_workflows: int | None = None,
) -> None:
    """Choose storage and executor for this process.

    Args:
        storage: a path, ``file://…``, ``memory://[name]``, or a :class:`~keelflow.storage.Storage`
            of your own; default ``$KEELFLOW_STORAGE``, else ``~/.keelflow/storage``.
        executor: ``"local"`` (worker processes, the default), ``"thread"``, or ``"ray"`` (Ray
            tasks on the running cluster: ``$RAY_ADDRESS``, else ``ray.init(address="auto")``);
            default ``$KEELFLOW_EXECUTOR``.
        num_cpus: CPUs the local executor may use at once (default: all cores).
        resources: custom resources this machine offers, e.g. ``{"GPU": 1, "db": 4}``.
        create: create the storage if there is none yet. With ``False``, storage that does not
            exist (or holds no keelflow data) raises :class:`StorageError` and nothing is
            created: for tools that only look. Opening existing storage never writes to it.
        max_running_workflows, max_pending_workflows: Ray 2.x's workflow queue, which keelflow
            does not have yet: a value other than ``None`` raises :class:`KeelflowError`
            rather than being ignored.

    Calling it again with the same arguments does nothing; with others it raises unless
    :func:`shutdown` was called first.
    """
    for name, value in (
        ("max_running_workflows", max_running_workflows),
        ("max_pending_workflows", max_pending_workflows),
    ):
        if value is not None:
            raise KeelflowError(
                f"workflow.init({name}=...) limits Ray 2.x's workflow queue, which keelflow does not have yet: "
                "every workflow it is given starts at once; leave the argument out"
            )
    session.start(storage, executor=executor, num_cpus=num_cpus, resources=resources, create=create)


def _workflow_metadata(rt: Runtime, wid: str, state: WorkflowState) -> dict[str, Any]:
    status = workflow_status(rt, wid)
    info = rt.read_index(wid) or {}
    stats: dict[str, Any] = {"start_time": state.start_time}
    end = info.get("end_time") if status != WorkflowStatus.RUNNING else None
    if end is None and state.finished:
        end = state.end_time()
    if end is not None and status != WorkflowStatus.RUNNING:
        stats["end_time"] = end
    return {
        "status": status.value,
        "user_metadata": dict(state.header.get("user_metadata") or {}),
        "stats": stats,
    }


def inspect_workflow(workflow_id: str) -> tuple[dict[str, Any], WorkflowState, dict[int, float], dict[int, int]]:
    """For tools: workflow-level metadata, the state it came from (one read of the journal),
    and this process's view of its running steps (their start times and attempts so far)."""
    rt = session.runtime()
    wid = validate_id(workflow_id)
    run = rt.local_run(wid)
    state = run.state if run is not None else require(rt.storage, wid)[0]
    started, attempts = (dict(run.started), dict(run.attempts)) if run is not None else ({}, {})
    return _workflow_metadata(rt, wid, state), state, started, attempts


def initialized() -> bool:
    """Whether :func:`init` has run in this process (and :func:`shutdown` has not since)."""
    return session.initialized()


def owner_alive(workflow_id: str) -> bool:
    """Whether some live process (this one or another) holds the workflow's lease: it runs it,
    or is still stopping it after a cancel."""
    rt = session.runtime()
    return rt.storage.lease_held(lease_key(validate_id(workflow_id)))


def shutdown() -> None:
    """Stop this process's runs (they stay resumable) and forget ``init``."""
    session.stop()


# -- ids and loading ------------------------------------------------------------------------------
# -- running ------------------------------------------------------------------------------------
def run_workflow(
    root: Workflow[Any],
    workflow_id: str | None,
    metadata: dict[str, Any] | None,
    owned_by: dict[str, Any] | None = None,
) -> FutureRef[Any]:
    """Start ``root`` as workflow ``workflow_id`` (or attach to it if it already exists)."""
    rt = session.runtime()
    wid = validate_id(workflow_id) if workflow_id is not None else new_workflow_id()
    meta = _check_metadata(metadata, "workflow metadata") or {}
    run = rt.local_run(wid)
    if run is not None:
        return FutureRef(run.future, wid)
    lease = rt.storage.acquire_lease(lease_key(wid), owner_info())
    if lease is None:
        return session.in_background(_wait_elsewhere, wid, rt, wid)
    try:
        # We hold the lease, so a torn tail left by a dead owner can be cut off here.
        loaded = load(rt.storage, wid, owner=True)
        if loaded is None:
            return FutureRef(rt.create(root, wid, meta, lease, owned_by), wid)
        state, journal, _ = loaded
        if state.finished and state.unacked:
            # Finished, but a crash cut short telling an event listener: do that first.
            return FutureRef(rt.adopt(state, journal, lease), wid)
        if state.finished:
            lease.release()
            return session.done_ref(output_value(state, journal), wid)
        if state.cancelled:
            raise WorkflowCancelledError(workflow_id=wid)
        # Failed or interrupted: running it again resumes it, as Ray Workflows did (both APIs).
        lease.release()
        log.info("workflow %s exists: running it again resumes it", wid, extra={"workflow_id": wid})
        try:
            return resume_async(wid)
        except WorkflowRunningError:  # another process took it up meanwhile
            return session.in_background(_wait_elsewhere, wid, rt, wid)
    except BaseException:
        lease.release()
        raise


def submit(root: Workflow[Any], workflow_id: str | None = None, metadata: dict[str, Any] | None = None) -> str:
    """Store ``root`` as a new workflow for a worker (``keelflow worker``) to run; its id.

    Durable when this returns, so the calling script may exit: the workflow is RESUMABLE
    (no process runs it) until a worker, or ``resume``, takes it.
    """
    if not isinstance(root, Workflow):
        raise TypeError(f"submit needs a workflow node (step.step(...)), got {type(root).__name__}")
    rt = session.runtime()
    wid = validate_id(workflow_id) if workflow_id is not None else new_workflow_id()
    meta = _check_metadata(metadata, "workflow metadata") or {}
    lease = rt.storage.acquire_lease(lease_key(wid), owner_info())
    if lease is None or rt.local_run(wid) is not None:
        if lease is not None:
            lease.release()
        raise WorkflowRunningError(workflow_id=wid)
    try:
        if load(rt.storage, wid) is not None:
            raise KeelflowError(f"workflow {wid!r} already exists; submit a new id", workflow_id=wid)
        rt.record_start(root, wid, meta)
    finally:
        lease.release()
    return wid


def _wait_elsewhere(rt: Runtime, workflow_id: str, name: str | None = None) -> Any:
    """Wait for a workflow owned by another process, by polling storage."""
    delay = 0.01
    while True:
        try:
            status = workflow_status(rt, workflow_id)
        except WorkflowNotFoundError:
            # Its owner holds the lease but has not written the first record yet.
            if not rt.storage.lease_held(lease_key(workflow_id)):
                raise
            status = WorkflowStatus.RUNNING
        if status != WorkflowStatus.RUNNING:
            return _output(rt, workflow_id, name, status)
        if name is not None:
            loaded = load(rt.storage, workflow_id)
            if loaded is not None and name in loaded[0].names:
                state, journal, records = loaded
                index = state.names[name]
                if resolved_node(state, index) is not None:
                    return step_value(state, journal, records, index)
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def resume_async(workflow_id: str) -> FutureRef[Any]:
    """Continue a failed or interrupted workflow from where it stopped; a ref to its output."""
    rt = session.runtime()
    wid = validate_id(workflow_id)
    info = rt.read_index(wid) or {}
    owner = info.get("owned_by") or {}
    if owner.get("actor") is not None and rt.local_run(wid) is None:
        # Run by an actor call: the actor goes on with that call (which resumes this
        # workflow) when touched; resuming it alone would leave the call waiting.
        from .actors import get_actor

        if info.pop("interrupted", None) is not None:
            rt.write_index(wid, info)  # asked for by name: not held back (see resume_all)
        get_actor(owner["actor"])
        return get_output_async(wid)
    return resume_owned(wid)


def resume_owned(wid: str) -> FutureRef[Any]:
    """:func:`resume_async` itself, for the owner of the workflow (an actor's call)."""
    ref, _ = _resume(wid)
    assert ref is not None
    return ref


def _resume(wid: str, include_failed: bool = True) -> tuple[FutureRef[Any] | None, bool]:
    """A ref to the workflow's output, and whether this process now runs it (False: it
    had finished already). Without ``include_failed`` a failed workflow is left alone
    (``(None, False)``)."""
    rt = session.runtime()
    if rt.local_run(wid) is not None:
        raise WorkflowRunningError(workflow_id=wid)
    if not exists(rt, wid):
        raise not_found(rt.storage, wid)  # before taking a lease, which would create its directory
    lease = rt.storage.acquire_lease(lease_key(wid), owner_info())
    if lease is None:
        raise WorkflowRunningError(workflow_id=wid)
    try:
        loaded = load(rt.storage, wid, owner=True)
        if loaded is None:
            raise not_found(rt.storage, wid)
        state, journal, _ = loaded
        if rt.storage.get(cancel_key(wid)) is not None and not state.cancelled and not state.finished:
            # Cancelled while its owner was dying: record what the owner never could.
            _record_cancel(rt, state, journal)
        if state.cancelled:
            raise WorkflowCancelledError(workflow_id=wid)
        if state.finished and not state.unacked:
            rt.update_index(wid, "SUCCESSFUL")
            lease.release()
            return session.done_ref(output_value(state, journal), wid), False
        if state.failed is not None and not include_failed:
            rt.update_index(wid, "FAILED")
            lease.release()
            return None, False
        _report_code_changes(state)
        log.info("resuming workflow %s", wid, extra={"workflow_id": wid})
        return FutureRef(rt.adopt(state, journal, lease), wid), True
    except BaseException:
        lease.release()
        raise


def resume(workflow_id: str) -> Any:
    """Continue a failed or interrupted workflow and return its output."""
    return resume_async(workflow_id).result()


def resume_all(include_failed: bool = False) -> list[tuple[str, FutureRef[Any]]]:
    """Resume every ``RESUMABLE`` (and with ``include_failed``, ``FAILED``) workflow.

    A workflow whose last run was stopped by a step's system failures (its worker kept
    dying) is left alone for a while after it stopped: 10 s, doubled each time that step
    stopped it before, up to an hour; so ``keelflow worker``, which calls this every second,
    does not crash-loop on it. ``resume(id)`` resumes it at once."""
    resumed = []
    rt = session.runtime()
    if rt.storage.children("actors"):
        from .actors import recover_all

        recover_all()  # calls left queued by dead processes (they resume their own workflows)
    # Cheaper than list_all(): the index rules out finished workflows, and taking the lease
    # (which resuming does anyway) is the test of whether a live process runs one.
    skip = {"SUCCESSFUL", "CANCELED"} | (set() if include_failed else {"FAILED"})
    candidates = []
    for wid in rt.storage.children("workflows"):
        info = rt.read_index(wid) or {}
        if info.get("status") in skip or info.get("owned_by") or rt.local_run(wid) is not None:
            continue  # owned_by: run on behalf of an actor call, which resumes it
        if interrupt_hold(info) > 0:
            continue  # stopped by system failures a moment ago: not yet
        candidates.append((-(info.get("start_time") or 0.0), wid))

    def attempt(wid: str) -> FutureRef[Any] | None:
        try:
            ref, adopted = _resume(wid, include_failed)
        except (WorkflowRunningError, WorkflowCancelledError, WorkflowNotFoundError):
            return None  # running elsewhere, cancelled meanwhile, or deleted
        except CorruptCheckpointError as e:
            # One damaged workflow must not stop the others (nor a worker) from going on.
            # Said once per process and damage (a worker calls this every second), then quietly.
            said = (rt.storage.url, wid, str(e)) in _damage_reported
            _damage_reported.add((rt.storage.url, wid, str(e)))
            log.log(
                logging.DEBUG if said else logging.ERROR,
                "cannot resume workflow %s: %s",
                wid,
                e,
                extra={"workflow_id": wid},
            )
            return None
        return ref if adopted else None  # (else it had ended; its index was out of date)

    # Resuming is mostly waiting on storage (leases, reading journals): overlap a few.
    order = [wid for _, wid in sorted(candidates)]
    refs = session.helper_pool().map(attempt, order) if len(order) > 8 else map(attempt, order)
    for wid, ref in zip(order, refs, strict=True):
        if ref is not None:
            resumed.append((wid, ref))
    return resumed


def _report_code_changes(state: WorkflowState) -> None:
    from .serialization import decode

    for entry in state.funcs:
        try:
            func = decode(entry.blob, what=f"step function {entry.name}")
        except Exception as e:
            log.warning("step function %s of workflow %s cannot be loaded: %s", entry.name, state.workflow_id, e)
            continue
        if func.fingerprint != entry.fingerprint:
            log.warning(
                "step function %s changed since workflow %s started; resuming with the current code",
                entry.name,
                state.workflow_id,
                extra={"workflow_id": state.workflow_id},
            )


# -- status and outputs -------------------------------------------------------------------------
def get_status(workflow_id: str) -> WorkflowStatus:
    """The workflow's status (see :class:`WorkflowStatus`)."""
    return workflow_status(session.runtime(), validate_id(workflow_id))


def get_output(
    workflow_id: str, *, name: str | None = None, timeout: float | None = None, task_id: str | None = None
) -> Any:
    """The workflow's output (or step ``name``'s), waiting while it runs. ``task_id`` is Ray
    2.x's spelling of ``name``."""
    return get_output_async(workflow_id, name=_step_name(name, task_id)).result(timeout)


def get_output_async(workflow_id: str, *, name: str | None = None, task_id: str | None = None) -> FutureRef[Any]:
    """A ref to the workflow's output (or step ``name``'s; ``task_id`` is Ray 2.x's spelling)."""
    name = _step_name(name, task_id)
    rt = session.runtime()
    wid = validate_id(workflow_id)
    run = rt.local_run(wid)
    if run is not None and name is None:
        return FutureRef(run.future, wid)
    status = workflow_status(rt, wid)
    if status == WorkflowStatus.RUNNING or run is not None:
        return session.in_background(_wait_running, wid, rt, wid, name)
    return session.done_ref(_output(rt, wid, name, status), wid)


def _step_name(name: str | None, task_id: str | None) -> str | None:
    if task_id is None:
        return name
    if name is not None and name != task_id:
        raise TypeError(f"give the step's name or its task_id (Ray 2.x's spelling), not both: {name!r}, {task_id!r}")
    return task_id


def _wait_running(rt: Runtime, wid: str, name: str | None) -> Any:
    run = rt.local_run(wid)
    if run is None:
        return _wait_elsewhere(rt, wid, name)
    delay = 0.002
    while True:
        state = run.state
        index = state.names.get(name) if name is not None else None
        if index is not None and resolved_node(state, index) is not None:
            loaded = require(rt.storage, wid)
            return step_value(*loaded, loaded[0].names[name])  # type: ignore[index]
        if run.future.done():
            return _output(rt, wid, name, workflow_status(rt, wid))
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


def _output(rt: Runtime, wid: str, name: str | None, status: WorkflowStatus) -> Any:
    state, journal, records = require(rt.storage, wid)
    if name is not None:
        return step_output(state, journal, records, name, status.value)
    if status == WorkflowStatus.SUCCESSFUL or state.finished:
        return output_value(state, journal)
    if status == WorkflowStatus.CANCELED:
        raise WorkflowCancelledError(workflow_id=wid)
    if state.failed is not None:
        raise execution_error(state)
    raise OutputNotReadyError(
        f"workflow {wid!r} is {status.value} and has no output yet; call workflow.resume({wid!r})", workflow_id=wid
    )


# -- listing, cancel, delete, metadata -----------------------------------------------------------
def list_all(
    status_filter: WorkflowStatus | str | Iterable[WorkflowStatus | str] | None = None,
) -> list[tuple[str, WorkflowStatus]]:
    """``[(workflow_id, status), …]``, newest first, optionally filtered by status.

    Virtual actors are listed too, by actor id, as Ray Workflows 1.x listed them (an actor was
    a workflow there): ``RUNNING`` while a live process runs its calls, ``RESUMABLE`` when calls
    wait that no live process runs (``resume_all()`` runs them), else ``SUCCESSFUL``. The
    actors' own API is :func:`~keelflow.list_actors` and :func:`~keelflow.get_actor_metadata`.
    """
    return [(wid, status) for wid, status, _ in listing(status_filter, actors=True)]


def listing(
    status_filter: WorkflowStatus | str | Iterable[WorkflowStatus | str] | None = None,
    *,
    actors: bool = False,
) -> list[tuple[str, WorkflowStatus, dict[str, Any]]]:
    """What :func:`list_all` returns, each with its status index (start and end times, …).
    Workflows only, unless ``actors`` (then an actor's info has ``actor: True``)."""
    rt = session.runtime()
    wanted: set[WorkflowStatus] | None = None
    if status_filter is not None:
        items = [status_filter] if isinstance(status_filter, (str, WorkflowStatus)) else list(status_filter)
        wanted = {WorkflowStatus(s) for s in items}
    found = []
    for wid in rt.storage.children("workflows"):
        try:
            status, info = status_and_index(rt, wid, verify=False)
        except WorkflowNotFoundError:
            continue
        except CorruptCheckpointError as e:
            # No index to go by and a damaged journal: listed (nobody can run it; resuming it
            # names the damage), never hidden.
            log.error("workflow %s: %s", wid, e, extra={"workflow_id": wid})
            status, info = WorkflowStatus.RESUMABLE, {"damaged": str(e)}
        if wanted is None or status in wanted:
            found.append((-(info.get("start_time") or 0.0), wid, status, info))
    actor_statuses = {WorkflowStatus.RUNNING, WorkflowStatus.RESUMABLE, WorkflowStatus.SUCCESSFUL}
    if actors and (wanted is None or wanted & actor_statuses) and rt.storage.children("actors"):
        from .actors import listing as actor_listing

        for actor_id, name, info in actor_listing():
            status = WorkflowStatus(name)
            if wanted is None or status in wanted:
                found.append((-(info.get("start_time") or 0.0), actor_id, status, info))
    found.sort(key=lambda t: (t[0], t[1]))
    return [(wid, status, info) for _, wid, status, info in found]


def cancel(workflow_id: str) -> None:
    """Stop the workflow; running steps are abandoned and its status becomes ``CANCELED``."""
    rt = session.runtime()
    wid = validate_id(workflow_id)
    if rt.cancel_local(wid):
        return
    if not exists(rt, wid):
        raise not_found(rt.storage, wid)
    lease = rt.storage.acquire_lease(lease_key(wid), owner_info())
    if lease is None:
        # Owned by another live process: leave a request it picks up within a second.
        rt.storage.put(cancel_key(wid), owner_info())
        return
    try:
        state, journal, _ = require(rt.storage, wid)
        if not (state.finished or state.cancelled):
            _record_cancel(rt, state, journal)
    finally:
        lease.release()


def _record_cancel(rt: Runtime, state: WorkflowState, journal: Journal) -> None:
    """Cancel a workflow nobody runs (the caller holds its lease)."""
    record = ("cancel", time.time())
    journal.append([record])
    state.apply(record)
    rt.update_index(state.workflow_id, "CANCELED", ended=True, extent=journal.extent())


def delete(workflow_id: str) -> None:
    """Remove all of the workflow's data. Refuses a running workflow."""
    rt = session.runtime()
    wid = validate_id(workflow_id)
    if rt.local_run(wid) is not None:
        raise WorkflowRunningError(f"workflow {wid!r} is running in this process; cancel it first", workflow_id=wid)
    rt.flush_index(wid)  # else an index write still queued would bring part of it back
    if not exists(rt, wid):
        raise not_found(rt.storage, wid)
    lease = rt.storage.acquire_lease(lease_key(wid), owner_info())
    if lease is None:
        raise WorkflowRunningError(f"workflow {wid!r} is running in a live process; cancel it first", workflow_id=wid)
    try:
        # The index first: a reader never finds an index whose journal is gone (damage).
        rt.storage.delete_prefix(f"workflows/{wid}/status")
        rt.storage.delete_prefix(f"workflows/{wid}")
        rt.storage.delete_prefix(cancel_key(wid))
        rt.storage.delete_prefix(f"events/{wid}")  # events sent to it and not received
    finally:
        lease.release()


def salvage(workflow_id: str) -> dict[str, Any]:
    """Make a workflow with a damaged journal resumable from its last intact record.

    The records before the damage stay; the damaged bytes, and everything after them, are kept
    beside the journal (``journal.damaged.<time>``) and never read again; the status index is
    rebuilt. :func:`resume` then runs again the steps whose records were set aside. A journal
    without damage is left alone. Refuses a workflow a live process runs.

    Returns a report: ``damaged`` (False: nothing was done), ``damage`` (what was found),
    ``records_kept``, ``steps_kept`` (checkpointed steps, of ``steps``), ``set_aside`` (where
    the damaged part is kept) and ``status`` (what the workflow is now).
    """
    from .engine.salvage import salvage as salvage_journal

    rt = session.runtime()
    wid = validate_id(workflow_id)
    if rt.local_run(wid) is not None:
        raise WorkflowRunningError(workflow_id=wid)
    if not exists(rt, wid):
        raise not_found(rt.storage, wid)
    rt.flush_index(wid)
    lease = rt.storage.acquire_lease(lease_key(wid), owner_info())
    if lease is None:
        raise WorkflowRunningError(workflow_id=wid)
    try:
        report = salvage_journal(rt.storage, wid)
    finally:
        lease.release()
    if report["damaged"]:
        log.info(
            "salvaged workflow %s: kept %d records (%d of %d steps checkpointed); the damaged part is kept at %s",
            wid,
            report["records_kept"],
            report["steps_kept"],
            report["steps"],
            report["set_aside"],
            extra={"workflow_id": wid},
        )
    return report


def get_metadata(workflow_id: str, name: str | None = None, task_id: str | None = None) -> dict[str, Any]:
    """Workflow-level (status, user_metadata, stats) or step-level metadata. ``task_id`` is
    Ray 2.x's spelling of ``name``."""
    name = _step_name(name, task_id)
    rt = session.runtime()
    wid = validate_id(workflow_id)
    run = rt.local_run(wid)
    state = run.state if run is not None else require(rt.storage, wid)[0]
    if name is None:
        return _workflow_metadata(rt, wid, state)
    index = state.names.get(name)
    if index is None:
        raise StepNotFoundError(workflow_id=wid, step_name=name)
    node = state.nodes[index]
    entry = state.funcs[node.func]
    from .serialization import decode

    try:
        options = decode(entry.options_blob, what=f"the options of step {name}").as_dict()
    except Exception:
        options = dict(entry.plain)
    step_stats: dict[str, Any] = {}
    start = node.start if node.start is not None else (run.started.get(index) if run is not None else None)
    if start is not None:
        step_stats["start_time"] = start
    if (node.done or node.error is not None) and node.end is not None:
        step_stats["end_time"] = node.end
    if node.halted:  # system failures (its worker kept dying) stopped the last run here
        step_stats["interrupted"] = node.halted
    return {
        "name": name,
        "step_options": options,
        "user_metadata": dict(options.get("metadata") or {}),
        "stats": step_stats,
        "status": "SUCCESSFUL" if node.done else ("FAILED" if node.error else "PENDING"),
        "attempts": node.attempts or (run.attempts.get(index, 0) if run is not None else 0),
        "root": index == ROOT,
    }
