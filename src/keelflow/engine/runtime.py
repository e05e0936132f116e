"""The scheduler: runs workflows by checkpoint-then-continue.

One thread per process owns every run. Each turn of its loop it collects the outcomes the
executor has ready, turns them into journal records, makes them durable with **one append per
workflow** (so steps finishing together share a flush), and only then applies them and
dispatches the steps they made ready. A step's output is therefore durable before anything
that depends on it starts, and a crash at any instant loses at most work that was never
acknowledged.

This module does no I/O of its own beyond the :class:`~keelflow.engine.journal.Journal` and
the storage lease, and knows executors only through their interface.
"""

from __future__ import annotations

import collections
import concurrent.futures
import heapq
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import cloudpickle

from .. import metrics, serialization
from ..errors import KeelflowError, StepNotFoundError, StorageError, WorkflowCancelledError
from ..executors.base import Demand, Executor, Outcome, Task
from ..objects import new_id
from ..step import WorkflowRef
from ..storage import Lease, Storage
from .dag import FuncEntry, SubDag, flatten
from .events import EventLoop
from .journal import Journal, read_status, update_status, wf_key, write_status
from .results import execution_error, output_value, restore_output
from .state import WorkflowState
from .task import CATCHER, RUNNER, make_payload, run_task
from .waits import wait_inputs, wait_output

__all__ = ["Run", "Runtime"]

log = logging.getLogger("keelflow")

CANCELS = "cancels"
_CANCEL_POLL = 0.5
#: How many times in a row a step's attempt may end in a system failure (its worker process
#: died or could not start; on Ray, its Ray worker or node died) and be run again, without
#: counting against its ``max_retries``; the next one stops the workflow RESUMABLE. Ray 1.x
#: retried such a step 3 times (Ray's task retries) and then left the workflow RESUMABLE.
SYSTEM_RETRIES = 3
#: ``resume_all()`` (so ``keelflow worker``) leaves a workflow that a step's system failures
#: stopped alone for this long after it stopped, doubled for each earlier time that step
#: stopped it, up to ``INTERRUPT_HOLD_MAX``: a step that kills its worker every time is not
#: run again every second. ``resume(id)`` is never held back.
INTERRUPT_HOLD = 10.0
INTERRUPT_HOLD_MAX = 3600.0


_HOST = socket.gethostname()


def owner_info() -> bytes:
    return f"{_HOST} pid {os.getpid()} at {time.time():.3f}\n".encode()


class Run:
    """A workflow this process owns and is executing."""

    def __init__(
        self, state: WorkflowState, journal: Journal, lease: Lease, future: concurrent.futures.Future[Any]
    ) -> None:
        self.state = state
        self.journal = journal
        self.lease = lease
        self.future = future
        self.running: dict[int, int] = {}  # node -> task id
        self.started: dict[int, float] = {}
        self.attempts: collections.Counter[int] = collections.Counter()
        # System failures per step: in a row (since its last attempt that ran to an answer),
        # and in all (attempts that do not count against max_retries).
        self.lost: collections.Counter[int] = collections.Counter()
        self.lost_total: collections.Counter[int] = collections.Counter()
        self.halting: KeelflowError | None = None  # stop the run (resumable) once recorded
        self.interrupted: dict[str, Any] = {}  # what the status index says about that stop
        self.records: list[tuple[Any, ...]] = []
        self.failing = False
        self.to_ack: list[tuple[int, int | None]] = []  # (event node, poll task) checkpointed
        self.deferred: list[tuple[Any, ...]] = []  # applied already; written before the next records
        self.acking: set[int] = set()  # event nodes whose listener is being told

    @property
    def workflow_id(self) -> str:
        return self.state.workflow_id


class Runtime:
    """Owns the scheduler thread, the executor, and this process's runs."""

    def __init__(self, storage: Storage, executor: Executor) -> None:
        self.storage = storage
        self.executor = executor
        self._lock = threading.Lock()
        self._runs: dict[str, Run] = {}
        self._tasks: dict[int, tuple[Run, int]] = {}
        self._task_ids = itertools.count(1)
        self._inbox: collections.deque[Callable[[], None]] = collections.deque()
        self._stopped = False
        self._last_cancel_poll = 0.0
        self._demands: dict[str, tuple[Demand, str | None]] = {}
        # Inline and event steps run in this process; their outcomes queue here.
        self._inline_done: collections.deque[Outcome] = collections.deque()
        # workflow.wait timeouts: (monotonic deadline, sequence, run, wait node), a heap.
        self._deadlines: list[tuple[float, int, Run, int]] = []
        self._deadline_seq = itertools.count()
        self._local_funcs: dict[str, Any] = {}
        self._events: EventLoop | None = None
        self._io_pool: concurrent.futures.ThreadPoolExecutor | None = None
        # Status index writes, off the scheduler thread and in order (one writer): an index
        # write replaces a file, which ext4 flushes on rename (~0.5 ms each).
        self._index_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="keelflow-index")
        self._index_pending: dict[str, concurrent.futures.Future[None]] = {}
        self._thread = threading.Thread(target=self._loop, name="keelflow-scheduler", daemon=True)
        self._thread.start()
        metrics.events_waiting = lambda: self._events.waiting if self._events is not None else 0

    # -- called from user threads ---------------------------------------------------------------
    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the scheduler thread."""
        self._inbox.append(fn)
        self.executor.wake()

    def write_index(self, workflow_id: str, info: dict[str, Any]) -> None:
        """Update a workflow's status index soon (readers in this process wait for it)."""
        future = self._index_pool.submit(self._write_index, workflow_id, info)
        with self._lock:
            self._index_pending[workflow_id] = future
        future.add_done_callback(lambda f: self._forget_index(workflow_id, f))

    def _forget_index(self, workflow_id: str, future: concurrent.futures.Future[None]) -> None:
        with self._lock:
            if self._index_pending.get(workflow_id) is future:
                del self._index_pending[workflow_id]

    def _write_index(self, workflow_id: str, info: dict[str, Any]) -> None:
        try:
            write_status(self.storage, workflow_id, info)
        except Exception as e:  # an index is rebuilt from the journal when missing
            log.warning("could not update the status index of workflow %s: %s", workflow_id, e)

    def flush_index(self, workflow_id: str) -> None:
        """Wait until this process's index writes for ``workflow_id`` are done."""
        with self._lock:
            future = self._index_pending.get(workflow_id)
        if future is not None:
            future.result()

    def read_index(self, workflow_id: str) -> dict[str, Any] | None:
        self.flush_index(workflow_id)
        return read_status(self.storage, workflow_id)

    def update_index(self, workflow_id: str, status: str, *, ended: bool = False, extent: int | None = None) -> None:
        """Set the status in the index now (after this process's pending writes)."""
        self.flush_index(workflow_id)
        update_status(self.storage, workflow_id, status, ended=ended, extent=extent)

    def local_run(self, workflow_id: str) -> Run | None:
        with self._lock:
            return self._runs.get(workflow_id)

    def create(
        self,
        root: Any,
        workflow_id: str,
        metadata: dict[str, Any],
        lease: Lease,
        owned_by: dict[str, Any] | None = None,
    ) -> concurrent.futures.Future[Any]:
        """Start a new workflow; the caller holds its lease and checked it does not exist.

        ``owned_by`` marks a workflow run on behalf of something else (an actor call), which
        is then the one to resume it.
        """
        state, journal = self.record_start(root, workflow_id, metadata, owned_by)
        return self._adopt(state, journal, lease)

    def record_start(
        self, root: Any, workflow_id: str, metadata: dict[str, Any], owned_by: dict[str, Any] | None = None
    ) -> tuple[WorkflowState, Journal]:
        """Store a new workflow's first record (durably) without running it."""
        order: list[Any] = []
        dag = flatten(root, what=f"workflow {workflow_id!r}", workflow_id=workflow_id, order=order)
        named = sorted({name for spec in dag.nodes for name in spec.ext})
        if named:
            raise StepNotFoundError(
                f"workflow {workflow_id!r} is new, so it has no step {named[0]!r}: a WorkflowRef without "
                "workflow_id names a step recorded before in the workflow it is used in",
                workflow_id=workflow_id,
                step_name=named[0],
            )
        now = time.time()
        header = {
            "format": serialization.FORMAT_VERSION,
            "codec": serialization.VALUE_CODEC,
            "workflow_id": workflow_id,
            "user_metadata": metadata,
            "code": _code_info(),
        }
        if owned_by:
            header["owned_by"] = owned_by
        journal = Journal(self.storage, workflow_id)
        dag.objects = {k: (journal.spill(d), n) for k, (d, n) in dag.objects.items()}
        record = ("start", header, dag.to_record(), now)
        journal.append([record])
        state = WorkflowState(workflow_id)
        state.apply(record)
        for i, node in enumerate(order):  # the user's nodes now know their step ids
            node._recorded, node._recorded_in = state.nodes[i].name, workflow_id
        self.write_index(workflow_id, _status_info(state, "RUNNING"))
        log.info("workflow %s started", workflow_id, extra={"workflow_id": workflow_id})
        return state, journal

    def adopt(self, state: WorkflowState, journal: Journal, lease: Lease) -> concurrent.futures.Future[Any]:
        """Continue a replayed workflow (resume); the caller holds its lease."""
        record = ("resume", time.time(), {"code": _code_info(), "owner": owner_info().decode().strip()})
        state.apply(record)
        self.write_index(state.workflow_id, _status_info(state, "RUNNING"))
        log.info("workflow %s resumed", state.workflow_id, extra={"workflow_id": state.workflow_id})
        # Written with the run's first outcome rather than flushed on its own: it only notes
        # who took over, and the lease, not this record, is what makes the takeover safe.
        return self._adopt(state, journal, lease, [record])

    def _adopt(
        self, state: WorkflowState, journal: Journal, lease: Lease, deferred: list[tuple[Any, ...]] | None = None
    ) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        run = Run(state, journal, lease, future)
        run.deferred = deferred or []
        with self._lock:
            self._runs[state.workflow_id] = run
        self.call(lambda: self._start(run))
        return future

    def cancel_local(self, workflow_id: str) -> bool:
        """Cancel a run of this process; False if there is none."""
        run = self.local_run(workflow_id)
        if run is None:
            return False
        done = threading.Event()

        def do() -> None:
            try:
                if self._runs.get(workflow_id) is run:
                    self._cancel(run)
            finally:
                done.set()

        self.call(do)
        done.wait()
        return True

    def shutdown(self) -> None:
        """Stop every run (each stays resumable) and the executor."""
        if self._stopped:
            return
        metrics.events_waiting = lambda: 0
        stopped = threading.Event()

        def do() -> None:
            for run in list(self._runs.values()):
                self._abandon(
                    run,
                    KeelflowError(
                        f"keelflow was shut down while workflow {run.workflow_id!r} ran; it can be resumed",
                        workflow_id=run.workflow_id,
                    ),
                )
            self._stopped = True
            stopped.set()

        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self.call(do)
            stopped.wait(30)
            self._thread.join(5)
        self._stopped = True
        self.executor.shutdown()
        if self._events is not None:
            self._events.stop()
        if self._io_pool is not None:
            self._io_pool.shutdown(wait=True)
        self._index_pool.shutdown(wait=True)

    # -- the scheduler thread -------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopped:
            timeout = _CANCEL_POLL if self._runs else None
            if self._deadlines:  # a workflow.wait's timeout comes sooner
                timeout = max(0.0, min(timeout or _CANCEL_POLL, self._deadlines[0][0] - time.monotonic()))
            try:
                outcomes = self.executor.wait(timeout)
            except Exception:  # pragma: no cover - an executor bug must not kill the loop silently
                log.exception("executor wait failed")
                outcomes = []
            while self._inline_done:
                outcomes.append(self._inline_done.popleft())
            while self._inbox:
                try:
                    self._inbox.popleft()()
                except Exception:
                    log.exception("keelflow scheduler command failed")
            touched: dict[str, Run] = {}
            for outcome in outcomes:
                entry = self._tasks.pop(outcome.task_id, None)
                if entry is None:
                    continue  # abandoned (cancelled or failed run)
                run, node = entry
                if run.running.get(node) != outcome.task_id:
                    continue
                del run.running[node]
                try:
                    self._on_outcome(run, node, outcome)
                except Exception as e:
                    log.exception("keelflow could not record the outcome of step %s", run.state.step_name(node))
                    self._abandon(run, e)
                    continue
                touched[run.workflow_id] = run
            if self._deadlines:
                self._expire_waits(touched)
            flushed = self._flush_many([r for r in touched.values() if r.records])
            for run in touched.values():
                try:
                    self._commit(run, flushed.get(run.workflow_id))
                except Exception as e:
                    # A bug or an unexpected storage failure: stop this run (it stays
                    # resumable) rather than the scheduler that serves every run.
                    log.exception("keelflow stopped workflow %s", run.workflow_id)
                    self._abandon(run, e)
            if self._runs and time.monotonic() - self._last_cancel_poll > _CANCEL_POLL:
                self._poll_cancels()

    def _start(self, run: Run) -> None:
        try:
            if run.state.unacked and not run.state.cancelled:
                # Events checkpointed before a crash whose listeners were never told.
                run.to_ack.extend((index, None) for index in run.state.unacked)
                self._acknowledge(run)
            if run.state.cancelled:
                self._finish(run)
            else:
                self._dispatch(run)  # finishes a finished run once its acknowledgements are in
        except Exception as e:
            log.exception("keelflow could not start workflow %s", run.workflow_id)
            self._abandon(run, e)

    def _commit(self, run: Run, flushed: BaseException | bool | None = None) -> None:
        """Make the run's new records durable, then act on them. ``flushed``: what
        :meth:`_flush_many` did for this run already (True: written; an error: it failed)."""
        if self._runs.get(run.workflow_id) is not run:
            return
        if isinstance(flushed, BaseException):
            log.error("cannot write the journal of workflow %s: %s", run.workflow_id, flushed)
            self._abandon(run, flushed)
            return
        if run.records:
            try:
                if flushed is not True:
                    self._append(run)
                self._apply(run)
            except Exception as e:
                log.error("cannot write the journal of workflow %s: %s", run.workflow_id, e)
                self._abandon(run, e)
                return
        if run.to_ack:
            self._acknowledge(run)
        self._dispatch(run)

    def _flush_many(self, runs: list[Run]) -> dict[str, BaseException | bool]:
        """Append the records of several runs at once: each run has a journal of its own,
        and their flushes overlap on the device instead of queueing behind each other."""
        if len(runs) < 2:
            return {}
        if self._io_pool is None:
            self._io_pool = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="keelflow-flush")

        def one(run: Run) -> BaseException | bool:
            try:
                self._append(run)
                return True
            except Exception as e:
                return e

        return dict(zip((r.workflow_id for r in runs), self._io_pool.map(one, runs), strict=True))

    @staticmethod
    def _append(run: Run) -> None:
        run.journal.append(run.deferred + run.records)
        run.deferred = []

    @staticmethod
    def _apply(run: Run) -> None:
        records, run.records = run.records, []
        for record in records:
            run.state.apply(record)

    @classmethod
    def _write(cls, run: Run) -> None:
        """Append the run's pending records (one durable write), then apply them."""
        cls._append(run)
        cls._apply(run)

    def _dispatch(self, run: Run) -> None:
        state = run.state
        if state.waits:
            self._watch_waits(run)
        if run.halting is not None and state.failed is None and not state.finished:
            # A step's system failures were recorded: stop here, as a crash would, so the
            # workflow is RESUMABLE. Steps still running are stopped and run again on resume.
            self.write_index(run.workflow_id, {**_status_info(state, "RESUMABLE"), "interrupted": run.interrupted})
            self._abandon(run, run.halting)
            return
        if state.finished or (state.failed is not None and not run.running):
            if not run.acking:  # else the last acknowledgement finishes it
                self._finish(run)
            return
        if state.failed is not None or run.failing:
            return
        ready = state.ready
        while ready:
            index = ready.popleft()
            node = state.nodes[index]
            if node.done or node.continued is not None or index in run.running or node.error is not None:
                continue
            self._submit(run, index)
        if run.records:  # a step failed before it could start (e.g. infeasible resources)
            self._commit(run)

    def _submit(self, run: Run, index: int) -> None:
        state = run.state
        node = state.nodes[index]
        entry = state.funcs[node.func]
        if entry.kind == "wait":
            self._complete_wait(run, index)  # enough of its inputs are done
            return
        demand, problem = self._demand(entry)
        if problem is not None:
            self._fail(run, index, KeelflowError(f"step {node.name} cannot run: {problem}"), "", time.time())
            return
        # A worker that reads storage itself is sent pointers to large values, not their bytes.
        remote = entry.kind == "" and self.executor.reads_storage and self.storage.shared
        blobs: list[str] = []

        def value(stored: Any) -> Any:
            if not remote:
                return run.journal.load(stored)
            if isinstance(stored, tuple):
                blobs.append(stored[1])
            return stored

        # Inputs are named by their index in the batch; steps recorded before it (WorkflowRef)
        # by -(k + 1), for the k-th of node.ext.
        deps = {d - node.base: value(self._output_of(run, d)) for d in node.deps if d >= node.base}
        for k, g in enumerate(node.ext):
            deps[-(k + 1)] = value(self._output_of(run, g))
        wanted = list(node.refs)
        for d in node.deps:
            wanted.extend(state.nodes[d].out_refs)
        objects: dict[str, tuple[Any, tuple[str, ...]]] = {}
        while wanted:
            ref_id = wanted.pop()
            if ref_id not in objects:
                data, nested = state.objects[ref_id]
                objects[ref_id] = (value(data), nested)
                wanted.extend(nested)
        task_id = next(self._task_ids)
        payload = make_payload(run.workflow_id, node.name, node.args, deps, objects)
        run.running[index] = task_id
        run.started.setdefault(index, time.time())
        run.attempts[index] += 1
        metrics.step_started()
        self._tasks[task_id] = (run, index)
        if entry.kind == "inline":
            self._run_inline(task_id, entry, payload)
            return
        if entry.kind in ("event", "event_ack"):
            self._event_loop().poll(task_id, self._local_func(entry), payload, self._deliver)
            return
        spill = f"{run.journal.root}/blobs/" if remote else None
        self.executor.submit(
            Task(task_id, RUNNER, entry.key, entry.blob, payload, demand, node.name, tuple(blobs), spill)
        )

    def _output_of(self, run: Run, index: int) -> Any:
        """A done step's output as stored. One released from memory when its consumers were
        done (a WorkflowRef named it since) is read back from the journal."""
        node = run.state.nodes[index]
        if node.output is None and node.done:
            restore_output(run.state, index, Journal(self.storage, run.workflow_id).read())
        return node.output

    # -- workflow.wait ---------------------------------------------------------------------------
    def _watch_waits(self, run: Run) -> None:
        """Start the timeouts of wait nodes new to this run. As in Ray Workflows, a wait's
        timeout counts from when the run reaches it (the run starts, or the step returning it
        ends); a resumed run counts it afresh for a wait that had not finished."""
        state = run.state
        waits, state.waits = state.waits, []
        now, wall = time.monotonic(), time.time()
        for index in waits:
            node = state.nodes[index]
            if node.done:
                continue
            run.started.setdefault(index, wall)  # the wait's start_time in its metadata
            timeout = state.funcs[node.func].plain.get("timeout")
            if timeout is not None:
                heapq.heappush(self._deadlines, (now + float(timeout), next(self._deadline_seq), run, index))

    def _expire_waits(self, touched: dict[str, Run]) -> None:
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, run, index = heapq.heappop(self._deadlines)
            if self._runs.get(run.workflow_id) is not run:
                continue
            state = run.state
            if state.nodes[index].done or state.failed is not None or run.failing or run.halting is not None:
                continue
            self._complete_wait(run, index)
            touched[run.workflow_id] = run

    def _forget_waits(self, run: Run) -> None:
        if any(entry[2] is run for entry in self._deadlines):
            self._deadlines = [entry for entry in self._deadlines if entry[2] is not run]
            heapq.heapify(self._deadlines)

    def _complete_wait(self, run: Run, index: int) -> None:
        """Record a wait node's output: the outputs of the first ``num_returns`` of its inputs
        that are done, in the order given, and references to the others. Built from the stored
        outputs without unpickling them: no user code runs here."""
        state = run.state
        node = state.nodes[index]
        if node.done or any(r[0] == "done" and r[1] == index for r in run.records):
            return
        num_returns = int(state.funcs[node.func].plain.get("num_returns", 1))
        ready: list[int] = []
        remaining: list[int] = []
        for g in wait_inputs(node):
            (ready if state.nodes[g].done and len(ready) < num_returns else remaining).append(g)
        output = wait_output(
            [run.journal.load(self._output_of(run, g)) for g in ready],
            [WorkflowRef(state.nodes[g].name, run.workflow_id) for g in remaining],
        )
        refs = tuple(dict.fromkeys(r for g in ready for r in state.nodes[g].out_refs))
        now = time.time()
        start = run.started.pop(index, now)
        run.records.append(("done", index, run.journal.spill(output), refs, {}, (start, now, 1)))

    def _check_refs(self, run: Run, parent: int, dag: SubDag) -> KeelflowError | None:
        """Why the WorkflowRefs in a step's returned sub-workflow cannot be resolved, if so."""
        named = {name for spec in dag.nodes for name in spec.ext}
        if not named:
            return None
        state = run.state
        wid = run.workflow_id
        missing = sorted(name for name in named if name not in state.names)
        if missing:
            return StepNotFoundError(
                f"step {state.step_name(parent)} of workflow {wid!r} returned a sub-workflow whose WorkflowRef names "
                f"step {missing[0]!r}, which the workflow has not recorded (a WorkflowRef without workflow_id names "
                "a step recorded before)",
                workflow_id=wid,
                step_name=missing[0],
            )
        # The steps whose output is this sub-workflow's cannot be its inputs: that would wait forever.
        blocked = {parent}
        current = parent
        while state.nodes[current].alias_of is not None:
            current = state.nodes[current].alias_of  # type: ignore[assignment]
            blocked.add(current)
        for name in sorted(named):
            stack, seen = [state.names[name]], set()
            while stack:
                i = stack.pop()
                if i in blocked:
                    return KeelflowError(
                        f"step {state.step_name(parent)} of workflow {wid!r} returned a sub-workflow whose WorkflowRef "
                        f"names step {name!r}, whose output waits for that very sub-workflow's: it would never be "
                        "ready",
                        workflow_id=wid,
                        step_name=state.step_name(parent),
                    )
                n = state.nodes[i]
                if i in seen or n.done:
                    continue
                seen.add(i)
                stack.extend(n.deps)
                if n.continued is not None:
                    stack.append(n.continued)
        return None

    def _local_func(self, entry: FuncEntry) -> Any:
        func = self._local_funcs.get(entry.key)
        if func is None:
            func = self._local_funcs[entry.key] = cloudpickle.loads(entry.blob)
        return func

    def _deliver(self, outcome: Outcome) -> None:
        """An outcome from a step run in this process (any thread)."""
        self._inline_done.append(outcome)
        self.executor.wake()

    def _event_loop(self) -> EventLoop:
        if self._events is None:
            self._events = EventLoop()
        return self._events

    def _run_inline(self, task_id: int, entry: FuncEntry, payload: bytes) -> None:
        """Run an inline step on a thread of its own (it may wait, e.g. for an actor's turn)."""
        func = self._local_func(entry)

        def work() -> None:
            try:
                outcome = Outcome(task_id, result=run_task(func, payload))
            except BaseException as e:  # run_task encodes application errors; this is a bug
                outcome = Outcome(task_id, error=f"{type(e).__name__}: {e}")
            self._deliver(outcome)

        threading.Thread(target=work, name=f"keelflow-inline-{task_id}", daemon=True).start()

    def _acknowledge(self, run: Run) -> None:
        """Tell the listeners of newly checkpointed events; record each once it returns."""
        for index, task_id in run.to_ack:
            if index in run.acking:
                continue
            run.acking.add(index)
            entry = run.state.funcs[run.state.nodes[index].func]
            output = None
            if task_id is None:
                output = run.journal.load(run.state.unacked[index])

            def done(error: BaseException | None, index: int = index) -> None:
                # A listener whose hook raised is not told again: its event is checkpointed.
                self.call(lambda: self._acked(run, index))

            where = (run.workflow_id, run.state.step_name(index))
            self._event_loop().acknowledge(task_id, self._local_func(entry), output, where, done)
        run.to_ack.clear()

    def _acked(self, run: Run, index: int) -> None:
        if self._runs.get(run.workflow_id) is not run:
            return
        run.acking.discard(index)
        run.records.append(("acked", index))
        try:
            self._commit(run)
        except Exception as e:
            log.exception("keelflow stopped workflow %s", run.workflow_id)
            self._abandon(run, e)

    def _demand(self, entry: FuncEntry) -> tuple[Demand, str | None]:
        """What a step function's steps hold while they run, and why that is impossible."""
        cached = self._demands.get(entry.key)
        if cached is None:
            plain = entry.plain
            demand = Demand(
                float(plain.get("num_cpus", 1)),
                float(plain.get("num_gpus", 0)),
                tuple(sorted((plain.get("resources") or {}).items())),
            )
            cached = self._demands[entry.key] = (demand, self.executor.check_demand(demand))
        return cached

    def _on_outcome(self, run: Run, index: int, outcome: Outcome) -> None:
        state = run.state
        node = state.nodes[index]
        plain = state.funcs[node.func].plain
        attempts = run.attempts[index]
        if outcome.result is None:
            # A system failure: the step's code did not get to an answer because its worker
            # process died (killed by the OOM killer, SIGKILL, a dead Ray node) or could not
            # start or load it. That is not the step's exception: it is run again without
            # counting against max_retries (catch_exceptions does not see it), and after
            # SYSTEM_RETRIES such retries in a row the workflow stops RESUMABLE, not FAILED.
            # Demands that can never be met were refused before submitting.
            run.lost[index] += 1
            run.lost_total[index] += 1
            if run.lost[index] <= SYSTEM_RETRIES:
                log.warning(
                    "step %s of workflow %s did not finish (system failure %d in a row, retrying): %s",
                    node.name,
                    run.workflow_id,
                    run.lost[index],
                    outcome.error,
                    extra={"workflow_id": run.workflow_id, "step_name": node.name},
                )
                metrics.step_retried()
                self._submit(run, index)
            else:
                self._halt(run, index, outcome.error or "no answer from the executor")
            return
        if run.lost:  # (a key per step would grow with the workflow)
            run.lost.pop(index, None)
        counted = attempts - run.lost_total.get(index, 0)  # the attempts max_retries counts
        result = serialization.load_record(outcome.result)
        kind = result[0]
        start = run.started.pop(index, result[-2])
        took = result[-1] - result[-2]  # this attempt, as timed where it ran
        if kind == "ok":
            metrics.observe_step("succeeded", took)
            _, data, refs, objects, _s, end = result
            run.records.append(
                ("done", index, run.journal.spill(data), refs, self._new_objects(run, objects), (start, end, attempts))
            )
            if state.funcs[node.func].kind == "event_ack":
                run.to_ack.append((index, outcome.task_id))
        elif kind == "cont":
            _, dag_record, _s, end = result
            dag = SubDag.from_record(dag_record)
            problem = self._check_refs(run, index, dag)
            if problem is not None:  # a WorkflowRef that cannot be resolved: retrying cannot help
                metrics.observe_step("failed", took)
                self._fail(run, index, problem, "", end, start=start)
                return
            metrics.observe_step("succeeded", took)
            dag.objects = self._new_objects(run, dag.objects)
            run.records.append(("nodes", index, dag.to_record(), (start, end, attempts)))
        else:
            _, exc_blob, tb, retryable, caught, _s, end = result
            if retryable and counted <= plain.get("max_retries", 3):
                run.started[index] = start
                log.warning(
                    "step %s of workflow %s failed (attempt %d of %d), retrying",
                    node.name,
                    run.workflow_id,
                    counted,
                    plain.get("max_retries", 3) + 1,
                    extra={"workflow_id": run.workflow_id, "step_name": node.name},
                )
                metrics.step_retried()
                metrics.observe_step("retried", took)
                self._submit(run, index)
            elif caught is not None:
                metrics.observe_step("failed", took)
                run.records.append(("done", index, run.journal.spill(caught), (), {}, (start, end, attempts)))
            else:
                metrics.observe_step("failed", took)
                self._fail(run, index, exc_blob, tb, end, start=start)

    def _new_objects(self, run: Run, objects: dict[str, tuple[bytes, tuple[str, ...]]]) -> dict[str, Any]:
        """Objects not yet stored for this workflow (each object is stored once)."""
        known = run.state.objects
        return {k: (run.journal.spill(d), n) for k, (d, n) in objects.items() if k not in known}

    def _fail(self, run: Run, index: int, error: Any, tb: str, end: float, start: float | None = None) -> None:
        exc_blob = error if isinstance(error, bytes) else cloudpickle.dumps(error)
        begin = start if start is not None else run.started.pop(index, end)
        last = tb.strip().splitlines()[-1] if tb.strip() else str(error)
        catcher = _enclosing_catcher(run.state, index)
        if catcher is not None:
            # Inside the sub-workflow of a catch_exceptions step: that step's output becomes
            # (None, exception) — unless an earlier failure there was caught already — and the
            # workflow goes on.
            if not run.state.nodes[catcher].done and not any(r[1] == catcher for r in run.records):
                caught = cloudpickle.dumps((None, serialization.decode(exc_blob, what="a step's error")))
                run.records.append(("done", catcher, run.journal.spill(caught), (), {}, (begin, end, 1)))
            log.warning(
                "step %s of workflow %s failed, caught by its enclosing step: %s",
                run.state.step_name(index),
                run.workflow_id,
                last,
                extra={"workflow_id": run.workflow_id, "step_name": run.state.step_name(index)},
            )
            return
        run.records.append(("fail", index, exc_blob, tb, (begin, end, run.attempts[index])))
        run.failing = True
        log.error(
            "step %s of workflow %s failed: %s",
            run.state.step_name(index),
            run.workflow_id,
            last,
            extra={"workflow_id": run.workflow_id, "step_name": run.state.step_name(index)},
        )

    def _halt(self, run: Run, index: int, error: str) -> None:
        """Record that step ``index`` keeps dying of system failures; the run then stops
        (see :meth:`_dispatch`) and the workflow is RESUMABLE."""
        end = time.time()
        begin = run.started.pop(index, end)
        name = run.state.step_name(index)
        lost = run.lost[index]
        message = f"{lost} system failures in a row; the last: {error}"
        run.records.append(("halt", index, message, (begin, end, run.attempts[index])))
        log.error(
            "step %s of workflow %s did not finish %d times in a row (%s); stopping the workflow, "
            "which stays RESUMABLE",
            name,
            run.workflow_id,
            lost,
            error,
            extra={"workflow_id": run.workflow_id, "step_name": name},
        )
        if run.halting is None:
            stops = run.state.nodes[index].halts + 1
            run.interrupted = {"step": name, "time": end, "stops": stops, "error": message}
            run.halting = KeelflowError(
                f"workflow {run.workflow_id!r} stopped: step {name} did not finish {lost} times in a row "
                f"(the last: {error}). That is a system failure, not the step's exception, so the workflow is "
                f"RESUMABLE, not FAILED: workflow.resume({run.workflow_id!r}) runs the step again",
                workflow_id=run.workflow_id,
                step_name=name,
                resumable=True,
            )

    def _finish(self, run: Run) -> None:
        """The run has ended (successfully, failed, or cancelled): settle its future."""
        state = run.state
        if run.running:  # steps nobody needs any more (those a workflow.wait left behind)
            self._stop_tasks(run)
        self._forget_waits(run)
        with self._lock:
            if self._runs.get(run.workflow_id) is not run:
                return
            del self._runs[run.workflow_id]
        status = state.status_name
        error: BaseException | None = None
        value: Any = None
        if status == "SUCCESSFUL":
            try:
                value = output_value(state, run.journal)
            except Exception as e:
                error = e
        elif status == "FAILED":
            error = execution_error(state)
        else:
            error = WorkflowCancelledError(workflow_id=run.workflow_id)
        try:
            info = _status_info(state, status, ended=True)
            try:
                # Lets a reader tell a journal cut short later from one that never held more.
                info["journal_extent"] = run.journal.extent()
            except StorageError as e:
                log.warning("could not measure the journal of workflow %s: %s", run.workflow_id, e)
            self.write_index(run.workflow_id, info)
        finally:
            # Before the index says it ended, another process asking finds no lease and
            # reads the end from the journal.
            run.lease.release()
        log.info("workflow %s finished: %s", run.workflow_id, status, extra={"workflow_id": run.workflow_id})
        if error is None:
            run.future.set_result(value)
        else:
            run.future.set_exception(error)

    def _stop_tasks(self, run: Run) -> None:
        """Abandon the run's running steps; their outcomes, if any come, are ignored."""
        self.executor.cancel(list(run.running.values()))
        if self._events is not None:
            self._events.cancel(list(run.running.values()))
        for task_id in run.running.values():
            self._tasks.pop(task_id, None)
        run.running.clear()

    def _cancel(self, run: Run) -> None:
        self._stop_tasks(run)
        run.records.append(("cancel", time.time()))
        self._write(run)
        self._finish(run)

    def _abandon(self, run: Run, error: BaseException) -> None:
        """Stop a run without recording an end: it stays resumable."""
        self._stop_tasks(run)
        self._forget_waits(run)
        with self._lock:
            if self._runs.get(run.workflow_id) is run:
                del self._runs[run.workflow_id]
        run.lease.release()
        if not run.future.done():
            run.future.set_exception(error)

    def _poll_cancels(self) -> None:
        self._last_cancel_poll = time.monotonic()
        try:
            requested = self.storage.children(CANCELS)
        except Exception:
            return
        for workflow_id in requested:
            run = self._runs.get(workflow_id)
            if run is not None:
                log.info("workflow %s cancelled from another process", workflow_id)
                self._cancel(run)
                self.storage.delete_prefix(f"{CANCELS}/{workflow_id}")


def interrupt_hold(info: dict[str, Any]) -> float:
    """Seconds ``resume_all()`` still leaves alone a workflow whose status index ``info`` says
    its last run was stopped by a step's system failures (see ``INTERRUPT_HOLD``); 0 if none."""
    interrupted = info.get("interrupted")
    if not isinstance(interrupted, dict):
        return 0.0
    try:
        stops = max(1, int(interrupted.get("stops", 1)))
        hold = min(INTERRUPT_HOLD * 2.0 ** min(stops - 1, 30), INTERRUPT_HOLD_MAX)
        return max(0.0, float(interrupted["time"]) + hold - time.time())
    except (KeyError, TypeError, ValueError):
        return 0.0


def _enclosing_catcher(state: WorkflowState, index: int) -> int | None:
    """The catcher closing the nearest caught continuation that ``index`` belongs to."""
    current = index
    while True:
        root = state.nodes[current].base  # a batch's first node is its root
        if root != current and state.funcs[state.nodes[root].func].plain.get("name") == CATCHER:
            return root
        parent = state.nodes[root].alias_of
        if parent is None:
            return None
        current = parent


def _status_info(state: WorkflowState, status: str, ended: bool = False) -> dict[str, Any]:
    info: dict[str, Any] = {
        "status": status,
        "start_time": state.start_time,
        "user_metadata": state.header.get("user_metadata") or {},
    }
    if state.header.get("owned_by"):
        info["owned_by"] = state.header["owned_by"]
    if ended:
        info["end_time"] = time.time()
    return info


def _code_info() -> dict[str, str]:
    import platform

    from .. import __version__

    return {"keelflow": __version__, "python": platform.python_version()}


def new_workflow_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{new_id()[:12]}"


def cancel_key(workflow_id: str) -> str:
    return f"{CANCELS}/{workflow_id}"


def lease_key(workflow_id: str) -> str:
    return wf_key(workflow_id, "lease")
