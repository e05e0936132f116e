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
    SerializationError,
    StepNotFoundError,
    StorageError,
    StorageFormatError,
    WorkflowCancelledError,
    WorkflowExecutionError,
    WorkflowNotFoundError,
    WorkflowRunningError,
)
from .objects import ObjectRef, get, put
from .step import StepFunction, StepOptions, Workflow, step

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
    "shutdown": "api",
    "virtual_actor": "actors",
    "get_actor": "actors",
    "list_actors": "actors",
    "get_actor_metadata": "actors",
    "list_actor_calls": "actors",
    "delete_actor": "actors",
}
__all__ = [
    "ActorNotFoundError",
    "CorruptCheckpointError",
    "InvalidIdError",
    "KeelflowError",
    "ObjectRef",
    "SerializationError",
    "StepFunction",
    "StepNotFoundError",
    "StepOptions",
    "StorageError",
    "StorageFormatError",
    "Workflow",
    "WorkflowCancelledError",
    "WorkflowExecutionError",
    "WorkflowNotFoundError",
    "WorkflowRunningError",
    "WorkflowStatus",
    "__version__",
    "cancel",
    "delete",
    "delete_actor",
    "get",
    "get_actor",
    "get_actor_metadata",
    "get_metadata",
    "get_output",
    "get_output_async",
    "get_status",
    "init",
    "list_actor_calls",
    "list_actors",
    "list_all",
    "put",
    "resume",
    "resume_all",
    "resume_async",
    "shutdown",
    "step",
    "virtual_actor",
    "workflow",
]

#: ``from keelflow import workflow`` gives this very module, so seed code ports by one line.
workflow = sys.modules[__name__]

if TYPE_CHECKING:
    from .actors import (
        delete_actor,
        get_actor,
        get_actor_metadata,
        list_actor_calls,
        list_actors,
        virtual_actor,
    )
    from .api import (
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
        shutdown,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'keelflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
