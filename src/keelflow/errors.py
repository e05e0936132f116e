"""The exceptions keelflow raises to its users, all under one root.

::

    KeelflowError
    ├── WorkflowNotFoundError        unknown workflow id                       (also ValueError)
    ├── StepNotFoundError            unknown step name (get_output, get_metadata, a WorkflowRef)
    │                                                                          (also ValueError)
    ├── ActorNotFoundError           get_actor of an unknown id                  (also KeyError)
    ├── WorkflowExecutionError       a step failed; __cause__ is the step's own exception
    ├── WorkflowCancelledError       output of a cancelled workflow            (also ValueError)
    ├── WorkflowRunningError         the workflow is owned by a live runner  (also RuntimeError)
    ├── OutputNotReadyError          no output to read yet: the workflow is RESUMABLE, or the
    │                                step has not run                          (also ValueError)
    ├── SerializationError           an argument, output or state cannot be serialized
    ├── InvalidIdError               a bad workflow or actor id                (also ValueError)
    └── StorageError                 storage unreachable, unwritable, or badly named
        ├── StorageURLError          a storage URL that cannot be parsed, or names an unknown
        │                            scheme                                    (also ValueError)
        ├── CorruptCheckpointError   a stored record cannot be read; .path names it
        └── StorageFormatError       storage written by a newer format version

The builtin bases are what Ray Workflows 1.x raised in the same situations (a workflow or
step that does not exist was a ``ValueError``, resuming a running workflow a
``RuntimeError``, an unknown actor a ``KeyError``), so ``except`` clauses written for Ray
still catch them.

Every error keeps its structured fields (``workflow_id``, ``step_name``, ``path``)
through pickling, so errors raised in a worker process arrive intact.

Ray Workflows 2.x's names are aliases: ``WorkflowError`` is ``KeelflowError`` (the root of
every workflow error there too) and ``WorkflowCancellationError`` is ``WorkflowCancelledError``;
``WorkflowExecutionError`` has the same name in both.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ActorNotFoundError",
    "CorruptCheckpointError",
    "InvalidIdError",
    "KeelflowError",
    "OutputNotReadyError",
    "SerializationError",
    "StepNotFoundError",
    "StorageError",
    "StorageFormatError",
    "StorageURLError",
    "WorkflowCancellationError",
    "WorkflowCancelledError",
    "WorkflowError",
    "WorkflowExecutionError",
    "WorkflowNotFoundError",
    "WorkflowRunningError",
]


class KeelflowError(Exception):
    """Root of every error keelflow raises on purpose."""

    def __init__(self, message: str = "", **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        for name, value in fields.items():
            setattr(self, name, value)
        self._fields = fields

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle their args only by default; keep the keyword fields too.
        return (_rebuild_error, (type(self), self.message, self._fields), self.__dict__)

    def __str__(self) -> str:
        return self.message


def _rebuild_error(cls: type[KeelflowError], message: str, fields: dict[str, Any]) -> KeelflowError:
    return cls(message, **fields)


class WorkflowNotFoundError(KeelflowError, ValueError):
    """No workflow with this id exists in storage."""

    def __init__(self, message: str = "", *, workflow_id: str | None = None, **kw: Any) -> None:
        super().__init__(message or f"no workflow with id {workflow_id!r}", workflow_id=workflow_id, **kw)


class StepNotFoundError(KeelflowError, ValueError):
    """The workflow has no step with this name."""

    def __init__(
        self, message: str = "", *, workflow_id: str | None = None, step_name: str | None = None, **kw: Any
    ) -> None:
        super().__init__(
            message or f"workflow {workflow_id!r} has no step named {step_name!r}",
            workflow_id=workflow_id,
            step_name=step_name,
            **kw,
        )


class ActorNotFoundError(KeelflowError, KeyError):
    """No virtual actor with this id exists in storage."""

    def __init__(self, message: str = "", *, actor_id: str | None = None, **kw: Any) -> None:
        super().__init__(message or f"no virtual actor with id {actor_id!r}", actor_id=actor_id, **kw)


class WorkflowExecutionError(KeelflowError):
    """A step failed after its retries; ``__cause__`` is the step's own exception."""

    def __init__(
        self, message: str = "", *, workflow_id: str | None = None, step_name: str | None = None, **kw: Any
    ) -> None:
        super().__init__(
            message or f"workflow {workflow_id!r} failed in step {step_name!r}",
            workflow_id=workflow_id,
            step_name=step_name,
            **kw,
        )


class WorkflowCancelledError(KeelflowError, ValueError):
    """The workflow was cancelled; its result is unavailable."""

    def __init__(self, message: str = "", *, workflow_id: str | None = None, **kw: Any) -> None:
        super().__init__(message or f"workflow {workflow_id!r} was cancelled", workflow_id=workflow_id, **kw)


class WorkflowRunningError(KeelflowError, RuntimeError):
    """The workflow is owned by a live runner, so this operation is refused."""

    def __init__(self, message: str = "", *, workflow_id: str | None = None, **kw: Any) -> None:
        super().__init__(
            message or f"workflow {workflow_id!r} is running in a live process", workflow_id=workflow_id, **kw
        )


class OutputNotReadyError(KeelflowError, ValueError):
    """The workflow (or step) has no output to read yet: the workflow is RESUMABLE (resume
    it), or the step has not run."""

    def __init__(
        self, message: str = "", *, workflow_id: str | None = None, step_name: str | None = None, **kw: Any
    ) -> None:
        what = f"step {step_name!r} of workflow {workflow_id!r}" if step_name else f"workflow {workflow_id!r}"
        super().__init__(message or f"{what} has no output yet", workflow_id=workflow_id, step_name=step_name, **kw)


class SerializationError(KeelflowError):
    """A value could not be serialized; the message names which one."""


class InvalidIdError(KeelflowError, ValueError):
    """A workflow or actor id that cannot name a storage location."""


class StorageError(KeelflowError):
    """Storage is unreachable, unwritable, or named with an unknown scheme."""


class StorageURLError(StorageError, ValueError):
    """A storage URL that cannot be parsed, or that names a scheme keelflow has no backend
    for (``ftp://…``, or ``c:\\ray`` on a system without drive letters)."""


class CorruptCheckpointError(StorageError):
    """A stored record cannot be read; ``path`` names it, and ``offset`` (when known) the byte
    where the damage begins."""

    def __init__(self, message: str = "", *, path: str | None = None, offset: int | None = None, **kw: Any) -> None:
        super().__init__(message or f"corrupted checkpoint at {path}", path=path, offset=offset, **kw)


class StorageFormatError(StorageError):
    """Storage was written by a newer keelflow format version than this one reads."""


#: Ray Workflows 2.x's name for the root of its errors.
WorkflowError = KeelflowError
#: Ray Workflows 2.x's name for the error a cancelled workflow's output raises.
WorkflowCancellationError = WorkflowCancelledError
