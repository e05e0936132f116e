"""Runners and step functions for tests/test_executors.py; imported by workers by name."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path
from typing import Any


def call(func: Any, payload: bytes) -> bytes:
    """The runner: ``payload`` is a pickled argument tuple."""
    return pickle.dumps(func(*pickle.loads(payload)))


def broken_runner(func: Any, payload: bytes) -> bytes:
    raise RuntimeError("runner bug")


def echo(x: Any) -> Any:
    return x


def getenv(name: str) -> str | None:
    return os.environ.get(name)


def write_atomic(path: str | Path, text: str) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def record(directory: str, name: str, seconds: float, weight: float = 1.0, busy: bool = False) -> int:
    """Run for ``seconds`` (sleeping or spinning) and record ``start end pid weight``."""
    start = time.monotonic()
    if busy:
        while time.monotonic() - start < seconds:
            pass
    else:
        time.sleep(seconds)
    end = time.monotonic()
    write_atomic(Path(directory) / name, f"{start} {end} {os.getpid()} {weight}")
    return os.getpid()


def spin_until_seen(directory: str, name: str, other: str, timeout: float) -> tuple[int, bool]:
    """CPU-bound: announce ``name``, then spin until ``other`` is announced too (or timeout),
    recording the window like :func:`record`."""
    start = time.monotonic()
    Path(directory, f"{name}.started").touch()
    seen = Path(directory, f"{other}.started")
    while not seen.exists() and time.monotonic() - start < timeout:
        pass
    end = time.monotonic()
    write_atomic(Path(directory) / name, f"{start} {end} {os.getpid()} 1")
    return os.getpid(), seen.exists()


def append_line(path: str, text: str) -> None:
    with open(path, "a") as f:
        f.write(text + "\n")


def pid_then_sleep(path: str, seconds: float) -> int:
    """Announce the pid in ``path`` (if given), then sleep."""
    if path:
        write_atomic(path, str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


def wait_for_file(path: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def touch(path: str) -> None:
    Path(path).touch()


def exit_now(code: int) -> None:
    os._exit(code)


def open_files() -> list[tuple[int, int]]:
    """(st_dev, st_ino) of every fd open in this process (Linux)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            st = os.stat(int(name))
        except OSError:
            continue
        found.append((st.st_dev, st.st_ino))
    return found


# Times each CountingFunc token was unpickled in this process.
LOADS: dict[str, int] = {}


def _rebuild_counting(token: str) -> CountingFunc:
    LOADS[token] = LOADS.get(token, 0) + 1
    return CountingFunc(token)


class CountingFunc:
    """A step function that counts how often its blob was unpickled in the current process."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_counting, (self.token,)

    def __call__(self) -> tuple[int, int]:
        return os.getpid(), LOADS[self.token]


def blob_of(n: int) -> bytes:
    return b"x" * n


def leave_a_child_and_die(seconds: float) -> None:
    """Start a process that outlives this worker (sharing inheritable fds), then die."""
    import subprocess

    subprocess.Popen(["sleep", str(seconds)], close_fds=False)
    os._exit(5)
