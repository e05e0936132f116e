"""keelflow: fast, durable Python workflows, embedded or on a Ray cluster.

``import keelflow as workflow`` (or ``from keelflow import workflow``: the same module)::

    @workflow.step
    def add(a: int, b: int) -> int:
        return a + b

    assert add.step(1, add.step(2, 3)).run(workflow_id="sum") == 6

The management API loads on first use, so ``import keelflow`` stays cheap, in your
process and in every worker process that runs steps.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .errors import (
    ActorNotFoundError,
    CorruptCheckpointError,
    InvalidIdError,
    KeelflowError,
    OutputNotReadyError,
    SerializationError,
    StepNotFoundError,
    StorageError,
    StorageFormatError,
    StorageURLError,
    WorkflowCancellationError,
    WorkflowCancelledError,
    WorkflowError,
    WorkflowExecutionError,
    WorkflowNotFoundError,
    WorkflowRunningError,
)
from .objects import ObjectRef, get, put
from .step import StepFunction, StepOptions, Workflow, WorkflowRef, step

# The management API (and the engine behind it) loads on first use.
_LAZY = {
    "WorkflowStatus": "api",
    "cancel": "api",
    "delete": "api",
    "get_metadata": "api",
    "get_output": "api",
    "get_output_async": "api",
    "get_status": "api",
    "init": "api",
    "list_all": "api",
    "resume": "api",
    "resume_all": "api",
    "resume_async": "api",
    "salvage": "api",
    "shutdown": "api",
    "submit": "api",
    "virtual_actor": "actors",
    "get_actor": "actors",
    "list_actors": "actors",
    "get_actor_metadata": "actors",
    "list_actor_calls": "actors",
    "delete_actor": "actors",
    "EventListener": "events",
    "wait_for_event": "events",
    "sleep": "events",
    "send_event": "events",
    "receive_event": "events",
    "wait": "waiting",
    # Ray 2.x's DAG API: @ray.remote functions bound with .bind() (Ray imported only then).
    "run": "raydag",
    "run_async": "raydag",
    "continuation": "raydag",
    "create": "raydag",
    "options": "raydag",
    "get_current_workflow_id": "raydag",
    "get_current_task_id": "raydag",
    "RUNNING": "api",
    "FAILED": "api",
    "RESUMABLE": "api",
    "CANCELED": "api",
    "SUCCESSFUL": "api",
}
__all__ = [
    "CANCELED",
    "FAILED",
    "RESUMABLE",
    "RUNNING",
    "SUCCESSFUL",
    "ActorNotFoundError",
    "CorruptCheckpointError",
    "EventListener",
    "InvalidIdError",
    "KeelflowError",
    "ObjectRef",
    "OutputNotReadyError",
    "SerializationError",
    "StepFunction",
    "StepNotFoundError",
    "StepOptions",
    "StorageError",
    "StorageFormatError",
    "StorageURLError",
    "Workflow",
    "WorkflowCancellationError",
    "WorkflowCancelledError",
    "WorkflowError",
    "WorkflowExecutionError",
    "WorkflowNotFoundError",
    "WorkflowRef",
    "WorkflowRunningError",
    "WorkflowStatus",
    "__version__",
    "cancel",
    "continuation",
    "create",
    "delete",
    "delete_actor",
    "event_listener",
    "get",
    "get_actor",
    "get_actor_metadata",
    "get_current_task_id",
    "get_current_workflow_id",
    "get_metadata",
    "get_output",
    "get_output_async",
    "get_status",
    "init",
    "list_actor_calls",
    "list_actors",
    "list_all",
    "options",
    "put",
    "receive_event",
    "resume",
    "resume_all",
    "resume_async",
    "run",
    "run_async",
    "salvage",
    "send_event",
    "shutdown",
    "sleep",
    "step",
    "submit",
    "virtual_actor",
    "wait",
    "wait_for_event",
    "workflow",
]

#: ``from keelflow import workflow`` gives this very module, so seed code ports by one line.
workflow = sys.modules[__name__]

if TYPE_CHECKING:
    from . import event_listener
    from .actors import (
        delete_actor,
        get_actor,
        get_actor_metadata,
        list_actor_calls,
        list_actors,
        virtual_actor,
    )
    from .api import (
        CANCELED,
        FAILED,
        RESUMABLE,
        RUNNING,
        SUCCESSFUL,
        WorkflowStatus,
        cancel,
        delete,
        get_metadata,
        get_output,
        get_output_async,
        get_status,
        init,
        list_all,
        resume,
        resume_all,
        resume_async,
        salvage,
        shutdown,
        submit,
    )
    from .events import EventListener, receive_event, send_event, sleep, wait_for_event
    from .raydag import (
        continuation,
        create,
        get_current_task_id,
        get_current_workflow_id,
        options,
        run,
        run_async,
    )
    from .waiting import wait


def __getattr__(name: str) -> Any:
    if name == "event_listener":
        return importlib.import_module(".event_listener", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'keelflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
