"""The promise of durable workflows on Ray: a workflow whose driver and whole cluster are
killed resumes on a freshly started cluster from S3 storage. And the seed ML pipeline on Ray
with S3 storage.

Real parts throughout: Ray clusters on 127.0.0.1 (started and killed here; the session's
cluster is left alone), an S3-compatible server on 127.0.0.1, SIGKILL.
"""

from __future__ import annotations

import os
import signal

import pytest

import crashsteps as cs
import keelflow as workflow
import test_actors
from raycluster import RayCluster
from s3server import s3_url

pytest.importorskip("ray")
pytestmark = pytest.mark.ray

WID = "across-clusters"


def chain_spec() -> dict:
    labels = "abcde"
    nodes = [{"id": x, "kind": "combine", "inputs": [labels[i - 1]] if i else []} for i, x in enumerate(labels)]
    return {"nodes": nodes, "root": "e"}


@pytest.mark.timeout(400)
def test_driver_and_cluster_killed_then_resumed_on_a_new_cluster_from_s3(s3_bucket, tmp_path, monkeypatch):
    spec = chain_spec()
    h = cs.Harness(str(tmp_path / "crash"), "ray")
    h.storage = s3_url(s3_bucket, "flows", lease_seconds=2)
    first = RayCluster(nodes=1)
    try:
        first.start()
        monkeypatch.setenv("RAY_ADDRESS", first.address)
        h.block("c")
        driver = h.start("run", WID, spec)
        blocked = h.wait_reached("c", driver, timeout=120)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(30)
    finally:
        first.stop()  # the whole cluster, with the step it was running
    cs.wait_gone([blocked], 30.0)
    h.release("c")
    cut = len(h.executions())
    assert h.counts() == {"a": 1, "b": 1, "c": 1}

    second = RayCluster(nodes=1)
    try:
        second.start()
        monkeypatch.setenv("RAY_ADDRESS", second.address)
        result = h.run("resume", WID, spec, timeout=180)
    finally:
        second.stop()
        h.cleanup()
    assert result.get("status") == "RESUMABLE", result  # the dead driver's lease has expired
    assert "error" not in result, result
    assert result["ok"] == cs.evaluate(spec)
    assert result["final_status"] == "SUCCESSFUL"
    before, after = cs.split_counts(h.executions(), cut)
    # a and b were checkpointed on the first cluster: never run again. c was running at the
    # kill (at-least-once), d and e had not started.
    assert after == {"c": 1, "d": 1, "e": 1}
    assert before == {"a": 1, "b": 1, "c": 1}


@pytest.mark.timeout(300)
def test_example_8_12_on_ray_with_s3_storage(ray_cluster, s3_bucket):
    workflow.init(s3_url(s3_bucket, "ml"), executor="ray")
    try:
        test_actors.test_example_8_12_machine_learning_workflow(workflow)  # the seed, as written there
    finally:
        workflow.shutdown()
