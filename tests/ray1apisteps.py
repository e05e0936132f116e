"""Steps and drivers for test_ray1_api.py: Ray Workflows 1.x's API on keelflow.

Importable, so worker processes load these steps by import path. Steps log each execution
and may block at crash points, through ``crashsteps``' environment variables (``KF_EXEC_LOG``,
``KF_CRASH_DIR``), so a driver process can be killed while a step blocks and a fresh process
resumes.

Driver: ``python -c "import ray1apisteps; ray1apisteps.main()" MODE SCENARIO STORAGE EXECUTOR WID``
prints one line ``RESULT <json>``; MODE is ``run`` or ``resume``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from crashsteps import crash_point, record_execution
from keelflow import workflow


# -- plain functions, made steps by the tests ----------------------------------------------------
def add(a: int, b: int) -> int:
    return a + b


class Multiplier:
    """A callable object (its state travels with it)."""

    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, x: int) -> int:
        return self.k * x


# -- steps -----------------------------------------------------------------------------------------
@workflow.step
def gated(label: str, value: Any) -> Any:
    """Blocks while crash point ``label`` is set (a gate the test opens)."""
    record_execution(label)
    crash_point(label)
    return value


def gate(label: str, value: Any) -> workflow.Workflow[Any]:
    """A gated step named ``label``; it holds a quarter CPU, so held gates never starve the rest."""
    return gated.options(name=label, num_cpus=0.25).step(label, value)


@workflow.step
def identity(x: Any) -> Any:
    return x


@workflow.step
def join(*parts: Any) -> tuple[Any, ...]:
    return parts


@workflow.step
def get_all(ready: Any, unready: Any) -> tuple[Any, Any]:
    return ready, unready


@workflow.step
def filter_all(wait_result: Any, label: str = "filter") -> Any:
    """Ray's test_wait: hands the remaining steps on to another step, which gets their outputs."""
    record_execution(label)
    crash_point(label)
    ready, unready = wait_result
    return get_all.step(ready, unready)


@workflow.step
def refers_back(x: Any, name: str) -> Any:
    """Returns a sub-workflow taking the output of the earlier step ``name`` (a WorkflowRef)."""
    return join.step(workflow.WorkflowRef(name), x)


@workflow.step
def refers_to_itself() -> Any:
    """Named "loop": its sub-workflow would wait for its own output."""
    return identity.step(workflow.WorkflowRef("loop"))


@workflow.step
def returns_ref(name: str) -> Any:
    """A WorkflowRef in an output is plain data, not resolved."""
    return {"ref": workflow.WorkflowRef(name, workflow_id="elsewhere")}


@workflow.step
def ready_and_ids(wait_result: Any) -> tuple[Any, list[str]]:
    ready, remaining = wait_result
    return ready, [r.step_id for r in remaining]


@workflow.step
def wait_all_in_turn(wait_result: Any, done: list[Any]) -> Any:
    """Waits again for what a wait left, one at a time: the outputs in the order they ended."""
    ready, remaining = wait_result
    done = done + ready
    if not remaining:
        return done
    return wait_all_in_turn.step(workflow.wait(remaining, num_returns=1), done)


@workflow.step
def one_by_one(values: list[Any]) -> Any:
    """Starts gated steps itself and waits for them inside the sub-workflow it returns."""
    steps = [gate(f"g{v}", v) for v in values]
    return wait_all_in_turn.step(workflow.wait(steps, num_returns=1), [])


# -- scenarios for the crash tests ----------------------------------------------------------------
def scenario(name: str) -> workflow.Workflow[Any]:
    if name == "checkpointed":
        # The wait ends with a ready (b is held); filter_all then blocks and is killed. Recomputed
        # after the resume, with b done by then, the wait would give ([2], [a]) instead.
        w = workflow.wait([gate("b", 2), gate("a", 1)], num_returns=1)
        return filter_all.step(w, "filter")
    if name == "reader":
        # Reads step "p" of workflow "producer" (copied, checkpointed), then is held at "after".
        return join.step(workflow.WorkflowRef("p", workflow_id="producer"), gate("after", 2))
    if name == "unfinished":
        # a is done, b and c are held: the wait has not ended when the driver is killed.
        w = workflow.wait([gate("a", 1), gate("b", 2), gate("c", 3)], num_returns=2)
        return ready_and_ids.step(w)
    raise ValueError(name)


def main() -> None:
    mode, name, storage, executor, wid = sys.argv[1:6]
    workflow.init(storage, executor=executor)
    result: dict[str, Any] = {}
    try:
        if mode == "run":
            result["ok"] = scenario(name).run(workflow_id=wid)
        else:
            result["status"] = workflow.get_status(wid).value
            result["ok"] = workflow.resume(wid)
        if name != "reader":
            result["wait"] = _plain(workflow.get_output(wid, name="workflow.wait"))
    except workflow.KeelflowError as e:
        result["error"] = f"{type(e).__name__}: {e}"
    sys.stdout.write("RESULT " + json.dumps(_plain(result)) + "\n")
    sys.stdout.flush()
    workflow.shutdown()


def _plain(value: Any) -> Any:
    """JSON-able: references to steps become ``"ref:<step id>"``."""
    if isinstance(value, workflow.Workflow):
        return f"ref:{value.step_id}"
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
