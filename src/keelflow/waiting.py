"""``workflow.wait`` (Ray Workflows 1.x), and reading another workflow's step (``WorkflowRef``).

``workflow.wait(workflows, num_returns=1, timeout=None)`` works on either:

- **workflow nodes** (the results of ``.step()``, or references such as the ``remaining`` of
  an earlier wait): it returns a node, a step of the workflow, whose output is the pair
  ``(ready, remaining)`` — the outputs of the first ``num_returns`` nodes to be done, in the
  order given, and references (``Workflow.from_ref``) to the others, which later steps take as
  arguments (or wait for again) like any node. It is completed by the scheduler (see
  :mod:`keelflow.engine.waits`) once ``num_returns`` of them are done, or at ``timeout``
  seconds after the run reaches it, whichever comes first; its output is checkpointed like
  any step's, so a resume never recomputes it.
- **refs** (``run_async``, ``get_output_async``, ``resume_async``, ``put``; Ray refs on
  Ray): it blocks, as ``ray.wait`` does, and returns ``(ready, remaining)`` lists of those
  refs, in the order given.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import time
from typing import Any

from . import session
from .errors import KeelflowError
from .events import EventListener, EventStep
from .ids import validate_id
from .objects import FutureRef, ObjectRef, is_ray_ref
from .step import StepFunction, StepOptions, Workflow, WorkflowRef

__all__ = ["WaitStep", "read_step", "wait"]

#: The name of wait steps (``workflow.wait``, ``workflow.wait_1``, … in one workflow).
WAIT_STEP = "workflow.wait"


def wait(workflows: Any, num_returns: int = 1, timeout: float | None = None) -> Any:
    """Wait until ``num_returns`` of ``workflows`` are done, or ``timeout`` seconds pass.

    Given workflow nodes, returns a node whose output is ``(ready, remaining)``: ``ready`` the
    outputs of the first ``num_returns`` that are done, ``remaining`` references to the rest
    (each keeps the input order). Given refs, waits here and returns ``(ready, remaining)``
    lists of refs, as ``ray.wait`` does. ``timeout=None`` waits for ``num_returns``; inside a
    workflow it counts from when the run reaches the wait (a resumed run that had not finished
    the wait counts it afresh; for a deadline that survives a crash, wait for a
    ``workflow.sleep`` among the nodes instead).
    """
    if isinstance(workflows, (Workflow, WorkflowRef, ObjectRef)) or not isinstance(workflows, (list, tuple)):
        raise TypeError(f"workflow.wait needs a list of workflow nodes or refs, got {type(workflows).__name__}")
    items = list(workflows)
    nodes = all(isinstance(w, (Workflow, WorkflowRef)) for w in items)
    refs = all(isinstance(w, ObjectRef) for w in items)
    if not (nodes or refs):
        odd = [w for w in items if not isinstance(w, (Workflow, WorkflowRef, ObjectRef))]
        if not odd:  # a mix of nodes and refs
            raise TypeError("workflow.wait takes either workflow nodes or refs, not both in one list")
        raise TypeError(
            f"the input of workflow.wait should be a list of workflows (the results of .step()) or of refs; "
            f"it holds a {type(odd[0]).__name__}: {odd[0]!r}"
        )
    _check(items, num_returns, timeout)
    if nodes:  # (an empty list too: a node whose output is ([], []))
        return Workflow(WaitStep(num_returns, timeout), (items,), {})
    return _wait_refs(items, num_returns, timeout)


def _check(items: list[Any], num_returns: Any, timeout: Any) -> None:
    """The checks ``ray.wait`` makes, made when the wait is built."""
    if isinstance(num_returns, bool) or not isinstance(num_returns, int):
        raise TypeError(f"num_returns must be an int, got {num_returns!r}")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or math.isnan(timeout) or timeout < 0
    ):
        raise ValueError(f"the 'timeout' argument must be a number >= 0 or None, got {timeout!r}")
    if not items:
        return
    keys = [_identity(w) for w in items]
    if len(set(keys)) != len(keys):
        raise ValueError("workflow.wait requires a list of unique workflows (each node or ref once)")
    if num_returns <= 0:
        raise ValueError(f"invalid number of workflows to return: {num_returns}")
    if num_returns > len(items):
        raise ValueError(
            f"num_returns ({num_returns}) cannot be greater than the number of workflows given to workflow.wait "
            f"({len(items)})"
        )


def _identity(item: Any) -> Any:
    if isinstance(item, WorkflowRef):
        return item
    if isinstance(item, Workflow) and item._ref is not None:
        return item._ref
    return id(item)


class WaitStep(StepFunction[Any]):
    """The step function of a ``workflow.wait`` node: completed by the scheduler itself."""

    kind = "wait"

    def __init__(self, num_returns: int, timeout: float | None) -> None:
        super().__init__(_wait, StepOptions(max_retries=0, num_cpus=0.0))
        self._num_returns = num_returns
        self._timeout = None if timeout is None else float(timeout)

    def engine_options(self) -> dict[str, Any]:
        return {"num_returns": self._num_returns, "timeout": self._timeout}

    @property
    def default_name(self) -> str:
        return WAIT_STEP

    @property
    def fingerprint(self) -> str:
        return WAIT_STEP

    def step(self, *args: Any, **kwargs: Any) -> Workflow[Any]:
        raise TypeError("build a wait with workflow.wait(workflows, num_returns=..., timeout=...)")

    def options(self, **options: Any) -> StepFunction[Any]:
        raise TypeError("workflow.wait takes no step options")

    def __reduce__(self) -> Any:
        return WaitStep, (self._num_returns, self._timeout)


def _wait(*args: Any, **kwargs: Any) -> Any:
    raise KeelflowError("workflow.wait is completed by the scheduler; it has no function to call")


# -- refs ------------------------------------------------------------------------------------------
def _ready(ref: Any) -> bool:
    if isinstance(ref, FutureRef):
        return ref.done()
    if is_ray_ref(ref):
        import ray

        return bool(ray.wait([ref], num_returns=1, timeout=0)[0])
    return True  # a stored object: there already


def _wait_refs(refs: list[Any], num_returns: int, timeout: float | None) -> tuple[list[Any], list[Any]]:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        done = [_ready(r) for r in refs]
        left = None if deadline is None else deadline - time.monotonic()
        if sum(done) >= num_returns or (left is not None and left <= 0):
            break
        pending = [r for r, d in zip(refs, done, strict=True) if not d]
        futures = [r._future for r in pending if isinstance(r, FutureRef)]
        # Ray refs are looked at again every 50 ms; futures wake this up when they settle.
        poll = 0.05 if len(futures) < len(pending) else None
        limits = [x for x in (left, poll) if x is not None]
        pause = min(limits) if limits else None
        if futures:
            concurrent.futures.wait(futures, timeout=pause, return_when=concurrent.futures.FIRST_COMPLETED)
        else:
            time.sleep(pause or 0.05)
    ready: list[Any] = []
    remaining: list[Any] = []
    for ref, is_done in zip(refs, done, strict=True):
        (ready if is_done and len(ready) < num_returns else remaining).append(ref)
    return ready, remaining


# -- another workflow's step (WorkflowRef with a workflow_id) ----------------------------------------
class StepOutputListener(EventListener):
    """Waits until step ``step_id`` of workflow ``workflow_id`` has an output; the event is
    that output (checkpointed in the workflow waiting for it, so a resume reads it no more)."""

    async def poll_for_event(self, workflow_id: str, step_id: str) -> Any:
        loop = asyncio.get_running_loop()
        delay = 0.02
        while True:
            found, value = await loop.run_in_executor(None, _read_step, workflow_id, step_id)
            if found:
                return value
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


def read_step(ref: WorkflowRef) -> Workflow[Any]:
    """A node whose output is a copy of ``ref``'s (a step of another workflow)."""
    assert ref.workflow_id is not None
    validate_id(ref.workflow_id)
    reader = EventStep(StepOutputListener).options(name=f"{ref.step_id}@{ref.workflow_id}")
    return reader.step(ref.workflow_id, ref.step_id)


def _read_step(workflow_id: str, step_id: str) -> tuple[bool, Any]:
    """``(True, output)`` once the step has one; ``(False, None)`` while it may still get one;
    raises if it never will (no such workflow, or it ended without that step's output)."""
    from .engine.results import ENDED, load, not_found, resolved_node, step_output, step_value
    from .engine.runtime import lease_key
    from .engine.status import workflow_status

    rt = session.runtime()
    loaded = load(rt.storage, workflow_id)
    if loaded is None:
        if rt.storage.lease_held(lease_key(workflow_id)):
            return False, None  # its runner has not written its first record yet
        raise not_found(rt.storage, workflow_id)
    state, journal, records = loaded
    index = state.names.get(step_id)
    if index is not None and resolved_node(state, index) is not None:
        return True, step_value(state, journal, records, index)
    status = workflow_status(rt, workflow_id)
    if status.value not in ENDED:
        return False, None  # RUNNING, or RESUMABLE: it may still get there once resumed
    return True, step_output(state, journal, records, step_id, status.value)  # raises: it never will
