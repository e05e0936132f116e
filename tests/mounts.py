"""Real filesystems that refuse writes, for the tests: a small tmpfs that can be filled, or
remounted read-only. Mounting needs root with CAP_SYS_ADMIN (as on this project's CI); where
that is missing, the tests that need it skip and say why."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator

import pytest


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def tmpfs(path: str, size: str = "2m") -> Iterator[str]:
    """A tmpfs of ``size`` mounted at ``path`` for the duration."""
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", path)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], capture_output=True, timeout=30)


def remount(path: str, mode: str) -> None:
    """``mode``: ``ro`` or ``rw``."""
    done = _mount("-o", f"remount,{mode}", path)
    assert done.returncode == 0, done.stderr


def fill(path: str) -> None:
    """Write a file at ``path`` until the filesystem has no space left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 16, 1 << 12, 1 << 8, 1):
            chunk = b"\0" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError:
                continue  # full at this size: smaller pieces may still fit
    finally:
        os.close(fd)
