"""``workflow.wait`` nodes, as the scheduler completes them.

A wait node depends on the nodes it waits for, but becomes ready once ``num_returns`` of them
are done (see ``WorkflowState._add_dag``), or at its timeout (kept by the scheduler). The
scheduler then records its output itself, with no step to run: the pair ``(ready, remaining)``
where ``ready`` holds the outputs of the inputs that are done and ``remaining`` references to
the others (``Workflow.from_ref``). The output is pieced together from the stored bytes of
those outputs, so the scheduler never unpickles user values; whoever decodes the wait's output
decodes them, their object refs resolved as for any output.
"""

from __future__ import annotations

import pickle
from typing import Any

from .. import serialization
from ..step import Workflow, WorkflowRef
from .state import Node

__all__ = ["wait_inputs", "wait_output"]


def wait_inputs(node: Node) -> list[int]:
    """The global indices of the nodes a wait node waits for, in the order they were given."""
    # Each input decodes to its placeholder: a batch index, or -(k + 1) for node.ext[k].
    (inputs,), _ = serialization.decode(node.args, what=f"the inputs of {node.name}", resolve_node=int)
    return [node.base + k if k >= 0 else node.ext[-k - 1] for k in inputs]


class _Stored:
    """An output kept as the bytes it was stored as; decoded where the wait's output is."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> Any:
        return _decode_stored, (self.data,)


def _decode_stored(data: bytes) -> Any:
    # Runs inside serialization.decode of the wait's output: the object refs inside resolve
    # through the same resolver as the rest of it.
    return pickle.loads(data)


def wait_output(ready: list[bytes], remaining: list[WorkflowRef]) -> bytes:
    """The stored form of ``([ready outputs…], [references to the remaining steps…])``."""
    value = ([_Stored(data) for data in ready], [Workflow.from_ref(ref) for ref in remaining])
    return pickle.dumps(value, protocol=5)
