"""Actors, steps and driver commands for test_actor_crash.py.

The tests start ``python -c "import actorcrash; actorcrash.main()" COMMAND ...`` processes,
SIGKILL some of them, and recover in fresh ones. Every command prints its outcome as one
``RESULT {json}`` line; progress markers are plain lines, flushed at once so the test sees
them before it kills.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import time
from typing import Any

import keelflow as workflow

#: No wait in these drivers may outlast this (the tests kill and fail a driver before that).
DEADLINE = 60.0


def say(*parts: Any) -> None:
    sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
    sys.stdout.flush()


def result(value: Any) -> None:
    say("RESULT " + json.dumps(value))


def side_effect(path: str, line: str) -> None:
    """An external effect that survives a SIGKILL the moment this returns."""
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_side_log(path: str) -> list[tuple[int, str]]:
    """``(pid, what)`` per line of a side-effect log, in the order they were written."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            pid, what = line.split(" ", 1)
            out.append((int(pid), what.strip()))
    return out


# -- actors ---------------------------------------------------------------------------------------
@workflow.virtual_actor
class Recorder:
    """Appends each call's argument to its state and to a side-effect log, slowly, so that
    calls queue up behind the one running."""

    def __init__(self, side_log: str, delay: float) -> None:
        self.items: list[int] = []
        self.side_log = side_log
        self.delay = delay

    def append(self, i: int) -> int:
        side_effect(self.side_log, f"{os.getpid()} {i}")
        self.items.append(i)
        time.sleep(self.delay)
        return len(self.items)

    @workflow.virtual_actor.readonly
    def get_items(self) -> list[int]:
        return list(self.items)


@workflow.virtual_actor
class Counter:
    def __init__(self) -> None:
        self.value = 0

    def incr(self, n: int) -> int:
        self.value += n
        return self.value

    @workflow.virtual_actor.readonly
    def get(self) -> int:
        return self.value


def _block_file(ctrl: str, key: str) -> str:
    return os.path.join(ctrl, f"block-{key}")


def crash_point(ctrl: str, key: str) -> None:
    """If the test blocked ``key``, say so and wait until it is released (or we are killed)."""
    if os.path.exists(_block_file(ctrl, key)):
        with open(os.path.join(ctrl, f"reached-{key}"), "w") as f:
            f.write(str(os.getpid()))
        deadline = time.monotonic() + DEADLINE
        while os.path.exists(_block_file(ctrl, key)) and time.monotonic() < deadline:
            time.sleep(0.005)


@workflow.step
def gate(x: Any, key: str, ctrl: str) -> Any:
    """Log this execution, then stop at crash point ``key``."""
    side_effect(os.path.join(ctrl, "gates.log"), f"{os.getpid()} {key}")
    crash_point(ctrl, key)
    return x


@workflow.virtual_actor
class Ledger:
    """``deposit`` returns a sub-workflow: gate "before" -> chained ``update`` -> gate "after"."""

    def __init__(self, ctrl: str) -> None:
        self.ctrl = ctrl
        self.total = 0
        self.applied: list[int] = []

    def deposit(self, amount: int) -> Any:
        return gate.step(self.update.step(gate.step(amount, "before", self.ctrl)), "after", self.ctrl)

    def update(self, amount: int) -> int:
        crash_point(self.ctrl, "update")
        self.applied.append(amount)
        self.total += amount
        return self.total

    @workflow.virtual_actor.readonly
    def get_total(self) -> int:
        return self.total


# -- driver commands ------------------------------------------------------------------------------
def wait_for_file(path: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.002)


def cmd_submit(storage: str, actor_id: str, n: str, delay: str, side_log: str, pace: str = "0") -> None:
    """Queue ``n`` appends with run_async from one thread (``pace`` seconds apart), saying
    which were accepted."""
    workflow.init(storage, executor="thread")
    h = Recorder.get_or_create(actor_id, side_log, float(delay))
    say("READY")
    refs = []
    for i in range(int(n)):
        refs.append(h.append.run_async(i))
        say("ACCEPTED", i)  # run_async returned: the call is durably queued
        if float(pace):
            time.sleep(float(pace))
    say("SUBMITTED")
    result({"results": [workflow.get(r) for r in refs]})
    workflow.shutdown()


READERS = {"Recorder": "get_items", "Counter": "get", "Ledger": "get_total"}


def cmd_recover(storage: str, actor_ids: str, how: str) -> None:
    """Touch the actors (``read``: get_actor and a read-only call each; ``resume_all``), then
    wait until none of them has a call left to run. ``actor_ids`` is comma-separated."""
    workflow.init(storage, executor="thread")
    ids = actor_ids.split(",")
    out: dict[str, Any] = {"first_read": {}, "actors": {}}
    if how == "read":
        for actor_id in ids:
            h = workflow.get_actor(actor_id)
            out["first_read"][actor_id] = getattr(h, READERS[type_name(actor_id)]).run()
    elif how == "resume_all":
        workflow.resume_all()
    else:
        raise ValueError(how)
    for actor_id in ids:
        out["actors"][actor_id] = wait_idle(actor_id)
    result(out)
    workflow.shutdown()


def type_name(actor_id: str) -> str:
    return str(workflow.get_actor_metadata(actor_id)["class"]).rsplit(".", 1)[-1]


def wait_idle(actor_id: str) -> dict[str, Any]:
    """Poll the management API until every call has a result and nobody holds the actor.

    The call list is read between two metadata reads that agree: a call moving from the
    inbox to the journal while the list is read could otherwise be missed."""
    deadline = time.monotonic() + DEADLINE
    while True:
        meta = workflow.get_actor_metadata(actor_id)
        calls = workflow.list_actor_calls(actor_id)
        again = workflow.get_actor_metadata(actor_id)
        busy = [c for c in calls if c["status"] in ("QUEUED", "RUNNING")]
        if meta == again and meta["status"] == "IDLE" and not busy and len(calls) == meta["stats"]["calls"]:
            return {"calls": calls, "meta": meta}
        if time.monotonic() > deadline:
            raise TimeoutError(f"actor {actor_id} still busy: {again}, {[c['status'] for c in calls]}")
        time.sleep(0.01)


def cmd_incr(storage: str, actor_id: str, n: str, go: str) -> None:
    """``n`` sequential ``incr.run(1)`` calls, started when ``go`` appears."""
    workflow.init(storage, executor="thread")
    h = workflow.get_actor(actor_id)
    say("READY")
    wait_for_file(go)
    result({"seen": [h.incr.run(1) for _ in range(int(n))]})
    workflow.shutdown()


def cmd_burst(storage: str, actor_id: str, bursts: str, size: str, go: str) -> None:
    """``bursts`` rounds of ``size`` run_async increments, each round awaited before the next."""
    workflow.init(storage, executor="thread")
    h = workflow.get_actor(actor_id)
    say("READY")
    wait_for_file(go)
    seen: list[int] = []
    for _ in range(int(bursts)):
        refs = [h.incr.run_async(1) for _ in range(int(size))]
        seen.extend(workflow.get(r) for r in refs)
    result({"seen": seen})
    workflow.shutdown()


def cmd_reader(storage: str, actor_id: str, go: str, stop: str) -> None:
    """Read the counter (read-only calls, sync and async) until ``stop`` appears."""
    workflow.init(storage, executor="thread")
    h = workflow.get_actor(actor_id)
    say("READY")
    wait_for_file(go)
    reads: list[int] = []
    deadline = time.monotonic() + DEADLINE
    while not os.path.exists(stop) and time.monotonic() < deadline:
        reads.append(h.get.run())
        reads.append(workflow.get(h.get.run_async()))
    result({"reads": reads})
    workflow.shutdown()


def cmd_deposit(storage: str, actor_id: str, ctrl: str, amount: str, then: str) -> None:
    """A sub-workflow call, then a plain call queued behind it."""
    workflow.init(storage, executor="thread")
    h = Ledger.get_or_create(actor_id, ctrl)
    first = h.deposit.run_async(int(amount))
    second = h.update.run_async(int(then))
    say("SUBMITTED")
    result({"deposit": workflow.get(first), "update": workflow.get(second)})
    workflow.shutdown()


COMMANDS = {
    "submit": cmd_submit,
    "recover": cmd_recover,
    "incr": cmd_incr,
    "burst": cmd_burst,
    "reader": cmd_reader,
    "deposit": cmd_deposit,
}


def main() -> None:
    # A test that gives up on a driver asks it for its threads' stacks first.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    COMMANDS[sys.argv[1]](*sys.argv[2:])


if __name__ == "__main__":
    main()
