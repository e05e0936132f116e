"""Shared fixtures: every test gets its own storage directory and a fresh keelflow."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import keelflow as workflow

TESTS = Path(__file__).parent
# Test helper modules (steps importable by reference in worker processes) live beside the tests.
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


@pytest.fixture(autouse=True)
def _isolated_keelflow(tmp_path, monkeypatch):
    """No test touches ~/.keelflow, and none leaks a runtime into the next."""
    monkeypatch.setenv("KEELFLOW_STORAGE", str(tmp_path / "default-storage"))
    monkeypatch.delenv("KEELFLOW_EXECUTOR", raising=False)
    workflow.shutdown()
    yield
    workflow.shutdown()


@pytest.fixture(params=["local", "thread"])
def executor(request):
    """Run the test on each local executor."""
    return request.param


@pytest.fixture
def storage(tmp_path) -> str:
    return str(tmp_path / "storage")


@pytest.fixture
def kf(storage, executor):
    """keelflow initialised on a fresh directory with each executor."""
    workflow.init(storage, executor=executor)
    yield workflow
    workflow.shutdown()


def run_python(code: str, *args: str, env: dict[str, str] | None = None, **kw):
    """Run ``code`` in a fresh interpreter with keelflow and the tests importable."""
    import subprocess

    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent / "src"), str(TESTS), full_env.get("PYTHONPATH", "")])
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code, *args], env=full_env, capture_output=True, text=True, **kw)
