"""Importable steps and an actor for tests/test_dashboard.py: the workflows the dashboard shows.

Module-level, so a subprocess that runs a workflow and the test process that resumes it load
the same functions by import.
"""

from __future__ import annotations

import os
import time

from keelflow import Workflow, workflow

# The seeds' dynamic fib (each call continues into two smaller ones and an add).
from seedsteps import add, fib  # noqa: F401 - re-exported for the tests


# -- a small data pipeline whose validation fails (the picture in docs/) ---------------------------
@workflow.step
def load_orders(source: str) -> list[dict]:
    return [{"id": i, "amount": 10.0 * i, "region": "eu" if i % 2 else "us"} for i in range(1, 7)]


@workflow.step
def load_customers(source: str) -> dict:
    return {"eu": 3, "us": 2}


@workflow.step
def join(orders: list[dict], customers: dict) -> list[dict]:
    return [dict(o, customers=customers[o["region"]]) for o in orders]


@workflow.step
def totals(rows: list[dict]) -> dict:
    out: dict = {}
    for row in rows:
        out[row["region"]] = out.get(row["region"], 0.0) + row["amount"]
    return out


def _check(rows: list[dict]) -> None:
    missing = sum(1 for row in rows if row["region"] == "us")
    raise ValueError(f"{missing} rows have no tax rate for region 'us'")


@workflow.step(max_retries=1)
def validate(rows: list[dict]) -> list[dict]:
    _check(rows)
    return rows


@workflow.step
def report(by_region: dict, rows: list[dict]) -> str:
    return f"{len(rows)} rows, {by_region}"


def pipeline() -> Workflow[str]:
    rows = join.step(load_orders.step("s3://orders"), load_customers.step("crm"))
    return report.step(totals.step(rows), validate.step(rows))


# -- steps that wait on the test ---------------------------------------------------------------------
@workflow.step
def prepare(label: str) -> str:
    return label


@workflow.step
def hold(path: str, value: str, limit: float = 60.0) -> str:
    """Say it started (``<path>.started``), wait while ``path`` exists (the test's lever), then
    return; gives up after ``limit`` seconds."""
    with open(path + ".started", "w"):
        pass
    deadline = time.monotonic() + limit
    while os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} was never removed")
        time.sleep(0.02)
    return value


@workflow.step
def finish(value: str) -> str:
    return value + "!"


@workflow.step
def count(*items: str) -> int:
    return len(items)


def wide(n: int) -> Workflow[int]:
    """``n`` steps feeding one: a workflow too big to draw whole."""
    return count.step(*(prepare.step(f"item-{i}") for i in range(n)))


def held(path: str, label: str) -> Workflow[str]:
    return finish.step(hold.step(path, prepare.step(label)))


RUN_HELD = """
import sys, keelflow as workflow, dashsteps
workflow.init(sys.argv[1], executor="thread")
dashsteps.held(sys.argv[2], "crashed").run(workflow_id=sys.argv[3])
"""


# -- an actor ------------------------------------------------------------------------------------------
@workflow.virtual_actor
class Account:
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.balance = 0
        self.history: list[int] = []

    def deposit(self, amount: int) -> int:
        if amount <= 0:
            raise ValueError(f"deposit must be positive, got {amount}")
        self.balance += amount
        self.history.append(amount)
        return self.balance

    @workflow.virtual_actor.readonly
    def read(self) -> int:
        return self.balance
