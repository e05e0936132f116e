"""Steps, a virtual actor and a runner for the command-line tests (tests/test_cli.py).

Importable by reference, so fresh interpreters and worker processes load them. Waits use
files rather than sleeps: a gated step writes ``<gate>.reached`` and waits while ``<gate>``
exists; ``fail_while`` fails while its flag file exists.

Runner: ``python -c "import clisteps; clisteps.main()" STORAGE WORKFLOW_ID GATE`` runs
:func:`gated_chain` and prints its output.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import keelflow as workflow

GATE_LIMIT = 60.0  # a gate never opened fails the step after this long (tests never wait that long)


def wait_gate(gate: str | None) -> None:
    if not gate:
        return
    with open(f"{gate}.reached", "w"):
        pass
    deadline = time.monotonic() + GATE_LIMIT
    while os.path.exists(gate):
        if time.monotonic() > deadline:
            raise RuntimeError(f"gate {gate} was never opened")
        time.sleep(0.01)


@workflow.step
def add(a: int, b: int) -> int:
    return a + b


@workflow.step
def gated(gate: str | None, value: Any) -> Any:
    wait_gate(gate)
    return value


@workflow.step
def fail_while(flag: str, value: Any) -> Any:
    if os.path.exists(flag):
        raise ValueError(f"flag {os.path.basename(flag)} is up")
    return value


class Opaque:
    """A value JSON cannot hold."""

    def __repr__(self) -> str:
        return "Opaque()"


@workflow.step
def opaque() -> Opaque:
    return Opaque()


def gated_chain(gate: str | None) -> workflow.Workflow[int]:
    """``first`` -> ``gate`` (waits on the gate file) -> ``last``: outputs 12."""
    first = add.options(name="first").step(1, 1)
    held = gated.options(name="gate").step(gate, first)
    return add.options(name="last").step(10, held)


def failing(flag: str) -> workflow.Workflow[int]:
    """Fails in step ``check`` while ``flag`` exists, else outputs 5."""
    return fail_while.options(name="check", max_retries=0).step(flag, add.options(name="two").step(2, 3))


@workflow.virtual_actor
class Tally:
    def __init__(self, start: int = 0) -> None:
        self.n = start

    def add(self, k: int) -> int:
        if k < 0:
            raise ValueError(f"cannot add {k}")
        self.n += k
        return self.n

    @workflow.virtual_actor.readonly
    def value(self) -> int:
        return self.n


def main() -> None:
    storage, wid, gate = sys.argv[1:4]
    workflow.init(storage, executor="thread")
    try:
        print("OUTPUT", gated_chain(gate).run(workflow_id=wid), flush=True)
    except workflow.KeelflowError as e:
        print("ERROR", type(e).__name__, flush=True)
