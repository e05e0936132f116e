"""keelflow: fast, durable Python workflows, embedded or on a Ray cluster.

``import keelflow as workflow`` (or ``from keelflow import workflow``: the same module)::

    @workflow.step
    def add(a: int, b: int) -> int:
        return a + b

    assert add.step(1, add.step(2, 3)).run(workflow_id="sum") == 6
"""

from __future__ import annotations

import sys as _sys

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

__version__ = "0.1.0"

#: ``from keelflow import workflow`` gives this very module, so seed code ports by one line.
workflow = _sys.modules[__name__]

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
    "get",
    "get_metadata",
    "get_output",
    "get_output_async",
    "get_status",
    "init",
    "list_all",
    "put",
    "resume",
    "resume_all",
    "resume_async",
    "shutdown",
    "step",
    "workflow",
]
