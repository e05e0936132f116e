"""Ray remote functions for tests/test_ray2.py (Ray 2.x's DAG API on keelflow), importable by
keelflow's worker processes, Ray's workers and the driver subprocesses of the crash test, so
they are pickled by reference.

Written the way Ray 2.x's documentation wrote them: ``import ray`` for ``@ray.remote`` and
``.bind()``, ``from keelflow import workflow`` where it said ``from ray import workflow``.

Driver: ``python -c "import ray2steps; ray2steps.main()" MODE STORAGE EXECUTOR WID`` runs (or,
with MODE ``rerun``, runs again: Ray 2.x resumes an interrupted workflow that way) the DAG of
:func:`crash_dag` and prints one line ``RESULT <json>``.
"""

from __future__ import annotations

import json
import os
import sys

import ray

from crashsteps import combine_value, crash_point, record_execution
from keelflow import workflow


def bump(path: str) -> int:
    """Append a line to ``path``; this attempt's number (counted across processes)."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    with open(path) as f:
        return len(f.read().split())


# -- Ray 2.x documentation examples -----------------------------------------------------------------
@ray.remote
def one() -> int:
    return 1


@ray.remote
def add(a: int, b: int) -> int:
    return a + b


@ray.remote
def mult(a: int, b: int) -> int:
    return a * b


@ray.remote
def book_flight(origin: str, dest: str) -> str:
    return f"Flight: {origin}->{dest}"


@ray.remote
def book_hotel(location: str) -> str:
    return f"Hotel: {location}"


@ray.remote
def finalize_trip(bookings: list) -> str:
    # Nodes inside a list arrive as refs (as in Ray 2.x); workflow.get reads them anywhere.
    return " | ".join(workflow.get(bookings))


@ray.remote
def finalize_trip_with_ray_get(bookings: list) -> str:
    return " | ".join(ray.get(bookings))  # Ray 2.x's docs, verbatim: on the Ray executor


@ray.remote
def fib(n: int) -> int:
    if n <= 1:
        return n
    return workflow.continuation(add.bind(fib.bind(n - 1), fib.bind(n - 2)))


@ray.remote
def factorial(n: int) -> int:
    if n == 1:
        return 1
    return mult.bind(n, factorial.bind(n - 1))  # a returned DAG continues the task too


# -- arguments, options, failures --------------------------------------------------------------------
def _kind(value: object) -> str:
    if isinstance(value, ray.ObjectRef):
        return "ray ref"
    if isinstance(value, workflow.ObjectRef):
        return "keelflow ref"
    return type(value).__name__


@ray.remote
def kinds(*args: object, **kwargs: object) -> dict:
    """What each argument (and each item of a list/tuple/dict argument) arrived as, and its value."""
    out: dict = {}
    for key, value in [*enumerate(args), *kwargs.items()]:
        if isinstance(value, (list, tuple)):
            out[key] = [(_kind(v), workflow.get(v)) for v in value]
        elif isinstance(value, dict):
            out[key] = {k: (_kind(v), workflow.get(v)) for k, v in value.items()}
        else:
            out[key] = (_kind(value), value)
    return out


@ray.remote
def echo(value: object) -> object:
    return value


@ray.remote
def counted(path: str, value: object) -> object:
    bump(path)
    return value


@ray.remote
def flaky(path: str, fails: int) -> int:
    attempt = bump(path)
    if attempt <= fails:
        raise ValueError(f"attempt {attempt} fails")
    return attempt


@ray.remote
def fails(message: str) -> None:
    raise ValueError(message)


@ray.remote
def handle(result: tuple) -> str:
    value, error = result
    return f"caught {type(error).__name__}: {error}" if error is not None else f"ok {value}"


@workflow.options(catch_exceptions=True)
@ray.remote
def caught_above(message: str) -> None:
    raise ValueError(message)


@ray.remote
@workflow.options(catch_exceptions=True)
def caught_below(message: str) -> None:
    raise ValueError(message)


@workflow.options(catch_exceptions=True)
@ray.remote
def fails_inside(message: str) -> object:
    """Its continuation fails; catch_exceptions catches that too."""
    return echo.bind(fails.bind(message))


@ray.remote
def whoami() -> tuple[str, str]:
    return workflow.get_current_workflow_id(), workflow.get_current_task_id()


@ray.remote(num_cpus=0.5, num_gpus=0, max_retries=5, retry_exceptions=[KeyError])
def placed() -> str:
    return str(os.getpid())


@ray.remote
def node_id() -> str:
    return str(ray.get_runtime_context().get_node_id())


class Signal(workflow.EventListener):
    async def poll_for_event(self, value: str) -> dict:
        return {"signal": value}


# -- the crash test's DAG ----------------------------------------------------------------------------
@ray.remote
def stage(label: str, *inputs: int) -> int:
    crash_point(f"{label}:start")
    record_execution(label, inputs)
    crash_point(label)
    return combine_value(label, inputs)


@ray.remote
def grow(label: str, k: int, *inputs: int) -> object:
    """Dynamic: continued by a chain of stages ``label.0`` … ``label.{k-1}``."""
    crash_point(f"{label}:start")
    record_execution(label, (k, *inputs))
    crash_point(label)
    node = _stage(f"{label}.0", *inputs)
    for j in range(1, k):
        node = _stage(f"{label}.{j}", node)
    return workflow.continuation(node)


def _stage(label: str, *inputs: object) -> object:
    return stage.options(**workflow.options(task_id=label)).bind(label, *inputs)


def crash_dag() -> object:
    """a -> b -> x (continued by x.0 -> x.1) -> c -> d, and d also reads a."""
    a = _stage("a")
    b = _stage("b", a)
    x = grow.options(**workflow.options(task_id="x")).bind("x", 2, b)
    c = _stage("c", x)
    return _stage("d", c, a)


def crash_values() -> dict[str, int]:
    """Every stage's output, computed directly."""
    v = {"a": combine_value("a", [])}
    v["b"] = combine_value("b", [v["a"]])
    v["x.0"] = combine_value("x.0", [v["b"]])
    v["x"] = v["x.1"] = combine_value("x.1", [v["x.0"]])
    v["c"] = combine_value("c", [v["x"]])
    v["d"] = combine_value("d", [v["c"], v["a"]])
    return v


def main() -> None:
    mode, storage, executor, wid = sys.argv[1:5]
    workflow.init(storage, executor=executor)
    result: dict = {}
    if mode == "rerun":
        result["status"] = workflow.get_status(wid).value
        done = result["done_before"] = {}
        for label in crash_values():
            try:
                if workflow.get_metadata(wid, task_id=label)["status"] == "SUCCESSFUL":
                    done[label] = workflow.get_output(wid, task_id=label)
            except workflow.StepNotFoundError:
                pass  # not in the journal yet: its task never started
    try:
        result["ok"] = workflow.run(crash_dag(), workflow_id=wid)
        result["final_status"] = workflow.get_status(wid).value
    except workflow.KeelflowError as e:
        result["error"] = f"{type(e).__name__}: {e}"
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
    workflow.shutdown()
