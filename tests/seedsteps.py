"""Importable step functions for tests/test_seeds.py and tests/test_api.py.

Steps defined here are pickled *by reference* (module + qualname), unlike the closures the
tests define inline, which travel by value. Worker processes import this module by name.
Side effects are counted in files, so counts work across worker processes.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from keelflow import workflow

# -- file helpers ---------------------------------------------------------------------------------


def bump(path: str | os.PathLike[str]) -> int:
    """Append one line to ``path``; return how many lines it has now (this call included)."""
    with open(path, "a") as f:
        f.write("x\n")
    return count(path)


def count(path: str | os.PathLike[str]) -> int:
    try:
        with open(path) as f:
            return len(f.readlines())
    except FileNotFoundError:
        return 0


def wait_for_file(path: str | os.PathLike[str], timeout: float = 60.0) -> bool:
    """Poll until ``path`` exists (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# -- seed steps (overview "Composing steps" and the fib example) ------------------------------------


@workflow.step
def one() -> int:
    return 1


@workflow.step
def add(a: int, b: int) -> int:
    return a + b


@workflow.step
def fib(n: int) -> int:
    if n <= 1:
        return n
    return add.step(fib.step(n - 1), fib.step(n - 2))


# -- example 8-3 ----------------------------------------------------------------------------------


@workflow.step
def factorial(n: int) -> int:
    if n == 1:
        return 1
    else:
        return mult.step(n, factorial.step(n - 1))


@workflow.step
def mult(a: int, b: int) -> int:
    return a * b


# -- example 8-5 ----------------------------------------------------------------------------------


@workflow.step
def sum(x: int, y: int, z: int) -> int:
    return x + y + z


@workflow.step
def get_value1() -> int:
    return 100


@workflow.step
def get_value2(x: int) -> int:
    return 10 * x


# -- example 8-7 (the seed's "..." filled in) -------------------------------------------------------


@dataclass(frozen=True)
class Flight:
    origin: str
    dest: str
    date: str


@dataclass(frozen=True)
class Hotel:
    city: str
    dates: tuple[str, ...]


@dataclass(frozen=True)
class Receipt:
    flights: tuple[Flight, ...]
    hotels: tuple[Hotel, ...]
    confirmed: bool


# -- example 8-9: a fake booking service that keeps its tickets in a directory -----------------------


@dataclass(frozen=True)
class FlightTicket:
    request_id: str
    number: str


class FileTicketService:
    """Books at most one ticket per request id; bookings are files, so they survive crashes."""

    def __init__(self, directory: str, fail_after_first_booking: bool = False) -> None:
        self.directory = directory
        self.fail_after_first_booking = fail_after_first_booking
        os.makedirs(directory, exist_ok=True)

    def _path(self, request_id: str) -> Path:
        return Path(self.directory) / f"{request_id}.ticket"

    def has_ticket(self, request_id: str) -> bool:
        return self._path(request_id).exists()

    def get_ticket(self, request_id: str) -> FlightTicket:
        return FlightTicket(request_id, self._path(request_id).read_text())

    def book_flight(self, request_id: str) -> FlightTicket:
        number = uuid.uuid4().hex[:8]
        self._path(request_id).write_text(number)
        bookings = bump(Path(self.directory) / "bookings.log")
        if self.fail_after_first_booking and bookings == 1:
            # The booking went through, but the step dies before its output is checkpointed.
            raise ConnectionError("connection lost after booking")
        return FlightTicket(request_id, number)

    def bookings(self) -> int:
        return count(Path(self.directory) / "bookings.log")


# -- counted steps for the API tests ----------------------------------------------------------------


@workflow.step
def counted(path: str, value: object) -> object:
    """Return ``value``; count the execution in ``path``."""
    bump(path)
    return value


@workflow.step
def counted_add(path: str, a: int, b: int) -> int:
    bump(path)
    return a + b


@workflow.step
def needs_flag(flag: str, counter: str, value: object) -> object:
    """Fail unless ``flag`` exists (a cause the test can fix); count attempts in ``counter``."""
    bump(counter)
    if not os.path.exists(flag):
        raise FileNotFoundError(f"flag {flag} is missing")
    return value


@workflow.step
def wait_for_flag(flag: str, started: str, value: object = "done") -> object:
    """Mark ``started``, then block until ``flag`` exists (at most a minute)."""
    bump(started)
    if not wait_for_file(flag, 60):
        raise TimeoutError(f"flag {flag} never appeared")
    return value


@workflow.step
def countdown(n: int) -> int:
    """A dynamic loop: n continuations deep."""
    if n == 0:
        return 0
    return countdown.step(n - 1)


@workflow.step
def identity(x: object) -> object:
    return x


@workflow.step
def total(values: list[int]) -> int:
    import builtins

    return builtins.sum(values)
