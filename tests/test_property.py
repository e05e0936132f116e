"""Property: any DAG, killed (SIGKILL) at any step, resumes to the output computed directly
in Python, and no step whose outcome was checkpointed before the kill runs again (SPEC §4).

Each example: a random DAG of 5-25 ``combine`` steps (some dynamic: a step returning a small
chain, or a short recursive countdown) runs in a driver subprocess; one step blocks at its
start or in its middle, the driver is SIGKILLed there, and a fresh process resumes it.
The execution log is split at the kill:

- before the kill every step ran at most once;
- a step checkpointed before the kill (its output, or for a dynamic step its continuation,
  is in the journal) ran before the kill and never after the resume;
- every other step runs exactly once after the resume (so the step that was running at the
  kill ran at most twice in total).
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

import crashsteps as cs

WID = "prop"
_seq = itertools.count()


@st.composite
def dag_and_crash(draw: st.DrawFn) -> tuple[dict, str]:
    size = draw(st.integers(5, 25))
    nodes: list[dict] = []
    consumed: set[str] = set()
    for i in range(size - 1):
        nid = f"n{i}"
        ids = [n["id"] for n in nodes]
        inputs = draw(st.lists(st.sampled_from(ids), max_size=3, unique=True)) if ids else []
        consumed.update(inputs)
        kind = draw(st.sampled_from(["combine"] * 6 + ["expand", "countdown"]))
        entry = {"id": nid, "kind": kind, "inputs": inputs}
        if kind == "expand":
            entry["k"] = draw(st.integers(1, 3))
        elif kind == "countdown":
            entry["n"] = draw(st.integers(1, 3))
        nodes.append(entry)
    # The root needs every sink, so every node is part of the workflow.
    nodes.append({"id": "root", "kind": "combine", "inputs": [n["id"] for n in nodes if n["id"] not in consumed]})
    spec = {"nodes": nodes, "root": "root"}
    label = draw(st.sampled_from(cs.labels(spec)))
    key = label + draw(st.sampled_from(["", ":start"]))
    return spec, key


DYNAMIC_EXAMPLE = (
    {
        "nodes": [
            {"id": "n0", "kind": "combine", "inputs": []},
            {"id": "n1", "kind": "expand", "k": 3, "inputs": ["n0"]},
            {"id": "n2", "kind": "combine", "inputs": ["n0"]},
            {"id": "n3", "kind": "countdown", "n": 3, "inputs": ["n1", "n2"]},
            {"id": "n4", "kind": "combine", "inputs": ["n2"]},
            {"id": "root", "kind": "combine", "inputs": ["n3", "n4"]},
        ],
        "root": "root",
    },
    "n3@1",
)


def check_crash_and_resume(root: str, executor: str, spec: dict, key: str) -> None:
    h = cs.Harness(root, executor)
    try:
        h.block(key)
        proc = h.start("run", WID, spec)
        h.wait_reached(key, proc, timeout=30)
        h.crash(proc)  # waits until the driver and its workers are gone
        cut = len(h.executions())
        h.release(key)
        r = h.run("resume", WID, spec, timeout=60)
    finally:
        h.cleanup()
    assert r.get("status") == "RESUMABLE", r
    assert "error" not in r, r
    assert r["ok"] == cs.evaluate(spec), "resumed output differs from the directly computed one"
    assert r["final_status"] == "SUCCESSFUL"

    before, after = cs.split_counts(h.executions(), cut)
    done = cs.checkpointed(spec, r["probe"])
    values = cs.step_values(spec)
    for label, p in r["probe"].items():
        if p["state"] == "done":
            assert p["value"] == values[label], f"checkpointed output of {label} is wrong"
    for label in cs.labels(spec):
        b, a = before.get(label, 0), after.get(label, 0)
        assert b <= 1, f"{label} ran {b} times before the kill"
        if label in done:
            assert b == 1, f"{label} is checkpointed but never ran"
            assert a == 0, f"{label} was checkpointed before the kill but ran again after resume"
        else:
            assert a == 1, f"{label} ran {a} times after resume (want exactly 1)"
    crashed = key.removesuffix(":start")
    assert crashed not in done
    assert before.get(crashed, 0) == (0 if key.endswith(":start") else 1)


COMMON = dict(
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: every example costs two processes
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@settings(max_examples=15, **COMMON)
@given(case=dag_and_crash())
@example(case=DYNAMIC_EXAMPLE)
def test_any_dag_crashed_anywhere_resumes_thread(tmp_path_factory: pytest.TempPathFactory, case) -> None:
    spec, key = case
    check_crash_and_resume(str(tmp_path_factory.mktemp(f"prop-thread-{next(_seq)}")), "thread", spec, key)


@settings(max_examples=4, **COMMON)
@given(case=dag_and_crash())
@example(case=DYNAMIC_EXAMPLE)
def test_any_dag_crashed_anywhere_resumes_local(tmp_path_factory: pytest.TempPathFactory, case) -> None:
    spec, key = case
    check_crash_and_resume(str(tmp_path_factory.mktemp(f"prop-local-{next(_seq)}")), "local", spec, key)
