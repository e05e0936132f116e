"""What an id (of a workflow, an actor, an event key) may be: it names a place in storage."""

from __future__ import annotations

from typing import Any

from .errors import InvalidIdError
from .storage import RESERVED_PREFIX

__all__ = ["validate_id"]


def validate_id(workflow_id: Any, what: str = "workflow id") -> str:
    """``workflow_id`` itself, or :class:`InvalidIdError` saying what is wrong with it."""
    if not isinstance(workflow_id, str):
        raise InvalidIdError(f"{what} must be a string, got {type(workflow_id).__name__}")
    if not workflow_id:
        raise InvalidIdError(f"{what} must not be empty")
    if "/" in workflow_id or "\\" in workflow_id:
        raise InvalidIdError(f"{what} {workflow_id!r} must not contain '/' or '\\'")
    if ".." in workflow_id or workflow_id == ".":
        raise InvalidIdError(f"{what} {workflow_id!r} must not contain '..' or be '.'")
    if workflow_id.startswith(RESERVED_PREFIX):
        # Storage keeps its temporary files under such names and hides them from listings.
        raise InvalidIdError(f"{what} {workflow_id!r} must not start with {RESERVED_PREFIX!r} (reserved by keelflow)")
    if any(ord(c) < 32 or ord(c) == 127 for c in workflow_id):
        raise InvalidIdError(f"{what} {workflow_id!r} must not contain control characters")
    if len(workflow_id.encode()) > 200:
        raise InvalidIdError(f"{what} is longer than 200 bytes")
    return workflow_id
