"""The long-running worker: picks up what no process runs, fires timers, delivers HTTP events,
stops cleanly on SIGTERM. Real worker processes, real SIGKILL/SIGTERM, a real HTTP client."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import pytest

import keelflow as workflow
from conftest import TESTS

ENV = {"PYTHONPATH": os.pathsep.join([str(TESTS.parent / "src"), str(TESTS)])}


class WorkerProc:
    """``keelflow worker`` in a subprocess, on a free port of 127.0.0.1."""

    def __init__(self, storage: str, tmp, *extra: str) -> None:
        self.err_path = str(tmp / f"worker-{time.monotonic_ns()}.log")
        self.err = open(self.err_path, "w")  # noqa: SIM115 (closed in stop(); the process writes to it)
        env = dict(os.environ, **ENV, KF_STEP_LOG=str(tmp / "steps.log"))
        args = [sys.executable, "-m", "keelflow.cli", "worker", "--storage", storage, "--executor", "thread"]
        self.proc = subprocess.Popen([*args, "--poll", "0.2", *extra], env=env, stderr=self.err, stdout=self.err)
        self.url = ""
        if "--no-http" not in extra:
            self.url = self._wait_for(r"listening on (http://\S+)")

    def _wait_for(self, pattern: str, timeout: float = 30) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            with open(self.err_path) as f:
                found = re.search(pattern, f.read())
            if found:
                return found.group(1)
            assert self.proc.poll() is None, self.log()
            time.sleep(0.05)
        raise AssertionError(f"worker never logged {pattern!r}:\n{self.log()}")

    def log(self) -> str:
        with open(self.err_path) as f:
            return f.read()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.err.close()
        return code


@pytest.fixture
def workers(storage, tmp_path):
    started: list[WorkerProc] = []

    def start(*extra: str) -> WorkerProc:
        w = WorkerProc(storage, tmp_path, *extra)
        started.append(w)
        return w

    yield start
    for w in started:
        if w.proc.poll() is None:
            w.stop(signal.SIGKILL)


def wait_status(wid: str, wanted: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if workflow.get_status(wid).value == wanted:
                return
        except workflow.WorkflowNotFoundError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{wid} never became {wanted} (is {workflow.get_status(wid)})")


def steps_run(tmp_path) -> list[str]:
    try:
        with open(tmp_path / "steps.log") as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def http(method: str, url: str, body: bytes | None = None, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:  # what a page on another site cannot send: the worker requires it
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


def test_a_submitted_workflow_runs_in_the_worker_and_its_timer_fires(storage, tmp_path, workers):
    import workersteps as ws

    workflow.init(storage, executor="thread")
    wid = workflow.submit(ws.record.step("after-nap", workflow.sleep(0.5)), workflow_id="submitted")
    assert workflow.get_status(wid) == workflow.WorkflowStatus.RESUMABLE  # nobody runs it yet
    workers("--no-http")
    wait_status(wid, "SUCCESSFUL")
    assert workflow.get_output(wid) == "after-nap"


def test_the_worker_takes_over_a_workflow_whose_runner_was_killed(storage, tmp_path, workers):
    code = textwrap.dedent(
        f"""
        import keelflow as workflow, workersteps as ws
        workflow.init({storage!r}, executor="thread")
        ws.chain(6, 0.3).run(workflow_id="orphan")
        """
    )
    env = dict(os.environ, **ENV, KF_STEP_LOG=str(tmp_path / "steps.log"))
    driver = subprocess.Popen([sys.executable, "-c", code], env=env)
    deadline = time.time() + 30
    while len(steps_run(tmp_path)) < 2:
        assert time.time() < deadline and driver.poll() is None
        time.sleep(0.02)
    driver.send_signal(signal.SIGKILL)
    driver.wait(10)
    done_before = steps_run(tmp_path)
    workflow.init(storage, executor="thread")
    assert workflow.get_status("orphan") == workflow.WorkflowStatus.RESUMABLE
    workers("--no-http")
    wait_status("orphan", "SUCCESSFUL")
    assert workflow.get_output("orphan") == 6
    ran = steps_run(tmp_path)
    assert sorted(set(ran)) == [f"link-{i}" for i in range(6)]
    # Checkpointed links never ran again; at most the one running at the kill did.
    assert len(ran) - 6 <= 1 and ran[: len(done_before)] == done_before


def test_sigterm_stops_the_worker_cleanly_and_the_next_one_finishes(storage, tmp_path, workers):
    import workersteps as ws

    workflow.init(storage, executor="thread")
    workflow.submit(ws.chain(8, 0.3), workflow_id="long")
    first = workers("--no-http")
    deadline = time.time() + 30
    while len(steps_run(tmp_path)) < 2:
        assert time.time() < deadline, first.log()
        time.sleep(0.02)
    assert first.stop(signal.SIGTERM) == 0  # a clean exit
    assert workflow.get_status("long") == workflow.WorkflowStatus.RESUMABLE
    checkpointed = len(steps_run(tmp_path))
    workers("--no-http")
    wait_status("long", "SUCCESSFUL")
    assert workflow.get_output("long") == 8
    ran = steps_run(tmp_path)
    assert sorted(set(ran)) == [f"link-{i}" for i in range(8)]
    assert len(ran) - 8 <= 1 and checkpointed >= 2


def test_http_events_reach_the_workflow(storage, tmp_path, workers):
    import workersteps as ws

    workflow.init(storage, executor="thread")
    workflow.submit(ws.record.step(workflow.receive_event("approved")), workflow_id="order-7")
    w = workers("--port", "0")
    assert http("GET", f"{w.url}/health")[0] == 200
    code, body = http("POST", f"{w.url}/events/order-7/approved", json.dumps({"by": "ada"}).encode())
    assert code == 202, body
    wait_status("order-7", "SUCCESSFUL")
    assert workflow.get_output("order-7") == {"by": "ada"}
    assert http("GET", f"{w.url}/workflows/order-7") == (200, {"workflow_id": "order-7", "status": "SUCCESSFUL"})


def test_ray_2_http_events_reach_the_workflow(storage, tmp_path, workers):
    """Ray 2.x's HTTPListener and its POST /event/send_event/<workflow_id>, on the worker."""
    import workersteps as ws
    from keelflow.http_event_provider import HTTPListener

    workflow.init(storage, executor="thread")
    workflow.submit(ws.record.step(workflow.wait_for_event(HTTPListener, event_key="approval")), workflow_id="ray2")
    # Without a key, the key is the waiting step's name (Ray 2.x: its task id).
    workflow.submit(ws.record.step(workflow.wait_for_event(HTTPListener)), workflow_id="ray2-default")
    w = workers("--port", "0")
    url = f"{w.url}/event/send_event/ray2"
    assert http("POST", url, json.dumps({"event_key": "approval"}).encode())[0] == 400
    assert http("POST", url, json.dumps({"event_key": 7, "event_payload": 1}).encode())[0] == 400
    assert http("POST", f"{w.url}/event/send_event/nobody", b'{"event_key": "k", "event_payload": 1}')[0] == 404
    body = json.dumps({"event_key": "approval", "event_payload": {"by": "ada"}}).encode()
    assert http("POST", url, body) == (200, {})
    body = json.dumps({"event_key": "keelflow.http_event_provider.HTTPListener", "event_payload": "yes"}).encode()
    assert http("POST", f"{w.url}/event/send_event/ray2-default", body) == (200, {})
    wait_status("ray2", "SUCCESSFUL")
    assert workflow.get_output("ray2") == ("approval", {"by": "ada"})
    wait_status("ray2-default", "SUCCESSFUL")
    assert workflow.get_output("ray2-default") == ("keelflow.http_event_provider.HTTPListener", "yes")


def test_the_worker_serves_prometheus_metrics(storage, tmp_path, workers):
    from prometheus_client.parser import text_string_to_metric_families

    import workersteps as ws

    workflow.init(storage, executor="thread")
    workflow.submit(ws.record.step(workflow.receive_event("go")), workflow_id="waits")
    workflow.submit(ws.fails_once.step(str(tmp_path / "failed-once")), workflow_id="flaky")
    w = workers("--port", "0")
    wait_status("flaky", "SUCCESSFUL")
    deadline = time.time() + 30
    while True:  # the waiting workflow's event step is being awaited in the worker
        with urllib.request.urlopen(f"{w.url}/metrics", timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            text = response.read().decode()
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        if samples[("keelflow_events_waiting", ())] == 1 or time.time() > deadline:
            break
        time.sleep(0.1)
    assert samples[("keelflow_events_waiting", ())] == 1
    assert samples[("keelflow_steps_retried_total", ())] >= 1
    assert samples[("keelflow_steps_succeeded_total", ())] >= 1
    assert samples[("keelflow_steps_started_total", ())] >= 3
    assert samples[("keelflow_workflows", (("status", "SUCCESSFUL"),))] == 1
    assert samples[("keelflow_workflows", (("status", "RUNNING"),))] == 1
    assert samples[("keelflow_step_duration_seconds_count", (("outcome", "retried"),))] >= 1
    http("POST", f"{w.url}/events/waits/go", b"1")
    wait_status("waits", "SUCCESSFUL")


def test_bad_http_input_gets_a_clear_4xx_and_changes_nothing(storage, tmp_path, workers):
    import workersteps as ws

    workflow.init(storage, executor="thread")
    workflow.submit(ws.record.step(workflow.receive_event("k")), workflow_id="w1")
    w = workers("--port", "0", "--token", "s3cret")
    url = f"{w.url}/events/w1/k"
    code, body = http("POST", url, b"{}")
    assert code == 401 and "token" in body["error"]
    code, body = http("POST", url, b"{}", token="wrong")
    assert code == 401
    code, body = http("POST", f"{w.url}/events/nobody/k", b"{}", token="s3cret")
    assert code == 404 and "nobody" in body["error"]
    code, body = http("POST", url, b"{not json", token="s3cret")
    assert code == 400 and "JSON" in body["error"]
    code, body = http("POST", f"{w.url}/events/w1/%2E%2E", b"{}", token="s3cret")
    assert code == 400
    code, body = http("POST", f"{w.url}/nothing-here", b"{}", token="s3cret")
    assert code == 404
    time.sleep(0.5)
    assert workflow.get_status("w1") == workflow.WorkflowStatus.RUNNING  # still waiting
    from keelflow import session

    assert session.runtime().storage.children("events") == []  # nothing was stored
    assert http("POST", url, b'"go"', token="s3cret")[0] == 202
    wait_status("w1", "SUCCESSFUL")
    assert workflow.get_output("w1") == "go"


def test_two_workers_never_run_one_workflow_at_once(storage, tmp_path, workers):
    import workersteps as ws

    workflow.init(storage, executor="thread")
    ids = [workflow.submit(ws.chain(3, 0.05, prefix=f"w{i}-")) for i in range(8)]
    workers("--no-http")
    workers("--no-http")
    for wid in ids:
        wait_status(wid, "SUCCESSFUL")
    ran = steps_run(tmp_path)
    assert sorted(ran) == sorted(f"w{i}-link-{j}" for i in range(8) for j in range(3))


def test_an_open_address_needs_a_token():
    from keelflow.worker import Worker

    with pytest.raises(workflow.KeelflowError, match="token"):
        Worker(None, host="0.0.0.0", port=0)
