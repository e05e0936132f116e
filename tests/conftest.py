"""Shared fixtures: every test gets its own storage directory and a fresh keelflow."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import keelflow as workflow
from s3server import s3_bucket, s3_server  # noqa: F401 - fixtures for every test module

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


@pytest.fixture(params=["local", "thread", "ray"])
def executor(request):
    """Run the test on each executor; ``ray`` steps run on the session's Ray cluster."""
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
    return request.param


@pytest.fixture(scope="session")
def ray_cluster():
    """A real two-node Ray cluster on loopback, for the whole session (start-up is slow)."""
    pytest.importorskip("ray")
    from raycluster import RayCluster

    cluster = RayCluster().start()
    previous = os.environ.get("RAY_ADDRESS")
    previous_auth = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_ADDRESS"] = cluster.address  # drivers here and in subprocesses find it
    os.environ["RAY_AUTH_MODE"] = "disabled"  # as the cluster runs, whatever the shell says
    try:
        yield cluster
    finally:
        import ray

        workflow.shutdown()
        ray.shutdown()
        if previous is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = previous
        if previous_auth is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = previous_auth
        cluster.stop()


def pytest_collection_modifyitems(items):
    # `-m "not ray"` leaves the Ray variants out of a quick run.
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "ray" in callspec.params.values():
            item.add_marker(pytest.mark.ray)


@pytest.fixture
def storage(tmp_path) -> str:
    return str(tmp_path / "storage")


@pytest.fixture
def kf(storage, executor):
    """keelflow initialised on a fresh directory with each executor."""
    workflow.init(storage, executor=executor)
    yield workflow
    workflow.shutdown()


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "the condition") -> Any:
    """Poll ``predicate`` until it returns something true (returned), failing after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.01)


def run_python(code: str, *args: str, env: dict[str, str] | None = None, **kw):
    """Run ``code`` in a fresh interpreter with keelflow and the tests importable."""
    import subprocess

    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent / "src"), str(TESTS), full_env.get("PYTHONPATH", "")])
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code, *args], env=full_env, capture_output=True, text=True, **kw)
