"""Importable virtual actors and steps for tests/test_actors.py.

Classes here are pickled *by reference*, so fresh interpreters (``run_python``) and the local
executor's worker processes load them by import. Waits use flag files rather than sleeps, so
the tests order events without depending on how fast the machine is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from keelflow import workflow
from seedsteps import bump, wait_for_file

# -- the seed counter (virtual-actors.rst), state kept by __getstate__/__setstate__ -----------------


@workflow.virtual_actor
class Counter:
    def __init__(self, init_val):
        self._val = init_val

    def incr(self, val=1):
        self._val += val
        return self._val

    @workflow.virtual_actor.readonly
    def value(self):
        return self._val

    def __getstate__(self):
        return self._val

    def __setstate__(self, val):
        self._val = val


# -- a JSON-state counter (virtual-actors-extended.txt: no __getstate__) ----------------------------


@workflow.virtual_actor
class JsonCounter:
    def __init__(self, init_val=0):
        self._val = init_val

    def incr(self, val=1):
        self._val += val
        return self._val

    @workflow.virtual_actor.readonly
    def value(self):
        return self._val


# -- ordering ---------------------------------------------------------------------------------------


@workflow.virtual_actor
class Recorder:
    def __init__(self):
        self.items = []

    def append(self, i):
        self.items.append(i)
        return len(self.items)

    def hold(self, flag):
        """Keep the actor busy until ``flag`` exists, so other callers' calls queue behind."""
        if not wait_for_file(flag, 60):
            raise TimeoutError(f"flag {flag} never appeared")
        return "held"

    @workflow.virtual_actor.readonly
    def get(self):
        return self.items


# -- readonly concurrency ---------------------------------------------------------------------------


@workflow.virtual_actor
class Slow:
    def __init__(self):
        self.val = 0

    def set(self, val):
        self.val = val
        return val

    def slow(self, started, flag, final):
        """A long mutating call: its in-progress state must never be visible to readers."""
        start = time.time()
        self.val = "in-progress"
        bump(started)
        if not wait_for_file(flag, 60):
            raise TimeoutError(f"flag {flag} never appeared")
        self.val = final
        return start, time.time()

    @workflow.virtual_actor.readonly
    def peek(self):
        start = time.time()
        seen = self.val
        return start, seen, time.time()


# -- non-JSON state ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    x: int
    y: int


@workflow.virtual_actor
class Bag:
    """State is a set and a custom object: not JSON, so kept by __getstate__/__setstate__."""

    def __init__(self):
        self.tags = set()
        self.origin = Point(0, 0)

    def add(self, tag):
        self.tags.add(tag)
        return len(self.tags)

    def move(self, x, y):
        self.origin = Point(x, y)
        return self.origin

    @workflow.virtual_actor.readonly
    def snapshot(self):
        return self.tags, self.origin

    def __getstate__(self):
        return {"tags": self.tags, "origin": self.origin}

    def __setstate__(self, state):
        self.tags = state["tags"]
        self.origin = state["origin"]


# -- failures ---------------------------------------------------------------------------------------


class Boom(ValueError):
    pass


@workflow.virtual_actor
class Faulty:
    def __init__(self, val=0):
        self.val = val

    def incr(self, n=1):
        self.val += n
        return self.val

    def bad_state(self):
        self.val += 1000
        self.thing = {1, 2}  # a set: not JSON, and no __getstate__
        return "unreachable"

    def boom(self, msg):
        self.val += 100  # must not be committed: the call fails
        raise Boom(msg)

    def sub(self, n):
        """Return a workflow: the call's result is the workflow's output."""
        return double.step(n)

    @workflow.virtual_actor.readonly
    def value(self):
        return self.val


@workflow.step
def double(x):
    return 2 * x


# -- shopping cart (virtual-actors-extended.txt "Long-lived sub-workflows", example 8-13) -------------


@workflow.step
def ship_items(items, log, flag):
    """The shipping workflow: counts its runs in ``log``, then waits for ``flag``."""
    bump(log)
    if not wait_for_file(flag, 60):
        raise TimeoutError(f"flag {flag} never appeared")
    return len(items)


@workflow.virtual_actor
class ShoppingCart:
    def __init__(self, order_id, log, flag):
        self.order_id = order_id
        self.items = []
        self.log = log
        self.flag = flag
        self.shipment_workflow_id = None

    def add_item(self, item):
        self.items.append(item)
        return len(self.items)

    # BAD: blocks until shipping completes; no mutating call runs until that workflow ends.
    def do_checkout_blocking(self):
        return ship_items.step(self.items, self.log, self.flag)

    # GOOD: non-blocking; the shipment is monitored via ``self.shipment_workflow_id``.
    def do_checkout(self):
        # Deterministically generate a workflow id for idempotency.
        self.shipment_workflow_id = "ship_{}".format(self.order_id)  # noqa: UP032 - the seed's spelling
        # Run shipping workflow as a separate async workflow.
        ship_items.step(self.items, self.log, self.flag).run_async(workflow_id=self.shipment_workflow_id)
        return self.shipment_workflow_id

    @workflow.virtual_actor.readonly
    def shipment_status(self):
        return workflow.get_status(self.shipment_workflow_id)


# -- handles inside steps ---------------------------------------------------------------------------


@workflow.step
def incr_via_handle(handle, n):
    """A step that calls an actor through a handle it got as an argument."""
    return handle.incr.run(n)


@workflow.step
def read_via_handle(handle):
    return handle.value.run()


# -- example 8-11's chaining, importable ------------------------------------------------------------


@workflow.virtual_actor
class Doubler:
    def __init__(self):
        self.val = 1

    def double(self, update):
        step = double.step(self.val)
        if not update:
            return step
        return self.update.step(step)

    def update(self, v):
        self.val = v
        return self.val
