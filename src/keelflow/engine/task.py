"""Running one step: the code an executor's worker calls, in whatever process it lives.

The engine sends a payload of plain bytes (encoded arguments, the outputs of the steps they
name, and the objects they mention); this module turns it back into Python values, calls the
step function, and encodes what happened. A step that returns a ``Workflow`` is flattened
here, next to the code that built it, so the engine never has to import user code to
continue a dynamic workflow.
"""

from __future__ import annotations

import contextvars
import pickle
import time
import traceback
from collections.abc import Callable
from typing import Any

import cloudpickle

from .. import serialization
from ..errors import KeelflowError, SerializationError
from ..objects import ObjectRef, current_step, current_workflow, ray_mode, to_ray
from ..step import StepFunction, Workflow, step
from .dag import SubDag, collect_refs, flatten

__all__ = ["Refs", "decode_inputs", "encode_error", "encode_result", "make_payload", "portable", "run_task"]

RUNNER = "keelflow.engine.task:run_task"
#: The step that closes a caught continuation; the engine finds it by this name.
CATCHER = "keelflow.catch"


def make_payload(
    workflow_id: str,
    step_name: str,
    args: bytes,
    deps: dict[int, bytes],
    objects: dict[str, tuple[bytes, tuple[str, ...]]],
) -> bytes:
    return serialization.dump_record((workflow_id, step_name, args, deps, objects))


#: Turns a value as the payload holds it into bytes. Payloads sent to workers that read
#: storage themselves hold pointers to large values (see ``Executor.reads_storage``).
load_value: contextvars.ContextVar[Callable[[Any], bytes]] = contextvars.ContextVar(
    "keelflow_load_value", default=bytes
)


class Refs:
    """Builds ObjectRefs from the payload's object table, nested refs included, on demand.

    ``present`` turns each into what user code is handed (a Ray ObjectRef on Ray)."""

    def __init__(self, table: dict[str, tuple[Any, tuple[str, ...]]], present: bool = False) -> None:
        self._table = table
        self._built: dict[str, ObjectRef[Any]] = {}
        self._present = present and ray_mode()

    def __call__(self, ref_id: str) -> Any:
        ref = self._build(ref_id)
        return to_ray(ref) if self._present else ref

    def _build(self, ref_id: str) -> ObjectRef[Any]:
        ref = self._built.get(ref_id)
        if ref is None:
            data, nested = self._table[ref_id]
            ref = ObjectRef(ref_id, load_value.get()(data), {n: self._build(n) for n in nested})
            self._built[ref_id] = ref
        return ref


def portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives a pickle round trip, else a KeelflowError keeping its type and text.

    Some exceptions pickle but cannot be rebuilt (an ``__init__`` with required arguments
    that are not in ``args``); the user must still see what went wrong.
    """
    try:
        pickle.loads(cloudpickle.dumps(exc))
        return exc
    except Exception:
        return KeelflowError(f"{type(exc).__qualname__}: {exc}")


@step(name=CATCHER)
def catch_continuation(result: Any) -> tuple[Any, None]:
    """Ends the sub-workflow of a ``catch_exceptions`` step: a success becomes ``(result, None)``."""
    return (result, None)


def run_task(func: StepFunction[Any], payload: bytes) -> bytes:
    """Run one attempt of a step and encode its outcome as a record."""
    workflow_id, step_name, args_data, deps, objects = serialization.load_record(payload)
    token = current_workflow.set(workflow_id)
    step_token = current_step.set(step_name)
    start = time.time()
    try:
        args, kwargs = decode_inputs(step_name, args_data, deps, objects)
        # A returned ref stays a ref downstream (as a Ray task's would); it is stored once as
        # an object. Only a workflow's final output is resolved to its value.
        return encode_result(func, step_name, func._func(*args, **kwargs), start)
    except BaseException as exc:
        # SystemExit and KeyboardInterrupt raised by the step too (Ray 1.x caught
        # BaseException): they are the step's own failure, retried under max_retries. Only a
        # worker that dies is a system failure (see Runtime._on_outcome).
        return encode_error(func, exc, start)
    finally:
        current_step.reset(step_token)
        current_workflow.reset(token)


def decode_inputs(
    step_name: str, args_data: bytes, deps: dict[int, bytes], objects: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A step's arguments, with the outputs and objects they name filled in."""
    refs = Refs(objects, present=True)
    outputs: dict[int, Any] = {}
    load = load_value.get()

    def resolve_node(index: int) -> Any:
        if index not in outputs:
            outputs[index] = serialization.decode(
                load(deps[index]), what=f"an input of step {step_name}", resolve_ref=refs
            )
        return outputs[index]

    args, kwargs = serialization.decode(
        args_data, what=f"the arguments of step {step_name}", resolve_ref=refs, resolve_node=resolve_node
    )
    return args, kwargs


def encode_result(func: StepFunction[Any], step_name: str, result: Any, start: float) -> bytes:
    """The outcome record of a step that returned ``result``."""
    opts = func.options_in_force
    if isinstance(result, SubDag):
        # An engine-internal step (an actor method) that flattened its own continuation.
        return serialization.dump_record(("cont", result.to_record(), start, time.time()))
    if isinstance(result, Workflow):
        if opts.catch_exceptions:
            # The step's output is its sub-workflow's, so that is what gets caught: the
            # catcher wraps a success, and the engine routes a failure inside to it.
            result = catch_continuation.step(result)
        dag = flatten(result, what=f"the continuation of step {step_name}")
        return serialization.dump_record(("cont", dag.to_record(), start, time.time()))
    if opts.catch_exceptions:
        result = (result, None)
    found: dict[str, ObjectRef[Any]] = {}

    def on_ref(ref: ObjectRef[Any]) -> str:
        ref = ref._settled()
        found[ref.id] = ref
        return ref.id

    data = serialization.encode(result, what=f"the output of step {step_name}", on_ref=on_ref)
    table: dict[str, tuple[bytes, tuple[str, ...]]] = {}
    collect_refs(found, table)
    return serialization.dump_record(("ok", data, tuple(found), table, start, time.time()))


def encode_error(func: StepFunction[Any], exc: BaseException, start: float) -> bytes:
    """The outcome record of a step that raised ``exc`` (call from its ``except`` block)."""
    opts = func.options_in_force
    end = time.time()
    tb = traceback.format_exc()
    safe = portable(exc)
    caught = cloudpickle.dumps((None, safe)) if opts.catch_exceptions else None
    # An output that cannot be serialized will not serialize on a retry either.
    retryable = opts.should_retry(exc) and not isinstance(exc, SerializationError)
    return serialization.dump_record(("err", cloudpickle.dumps(safe), tb, retryable, caught, start, end))
