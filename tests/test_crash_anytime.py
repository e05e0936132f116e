"""kill -9 at an arbitrary instant — mid-append, mid-dispatch, between anything — then resume.

test_crash.py kills at chosen step boundaries; here the kill lands wherever a random delay
puts it, many times, so the journal's torn-tail handling and the commit order are exercised
where they are hardest to reach on purpose.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import TESTS, run_python

DRIVER = """
import os, sys
import keelflow as workflow
from anytime_steps import build
workflow.init(sys.argv[1], executor=sys.argv[2])
print("OUT", build().run(workflow_id="w"), flush=True)
"""

RESUME = """
import sys
import keelflow as workflow
from keelflow.engine.results import load
from keelflow.storage import open_storage
workflow.init(sys.argv[1], executor=sys.argv[2])
loaded = load(open_storage(sys.argv[1]), "w")
# Steps whose output (or continuation) was durable when the owner died.
done = [] if loaded is None else [n.name for n in loaded[0].nodes if n.done or n.continued is not None]
status = workflow.get_status("w").value
if status == "SUCCESSFUL":
    out = workflow.get_output("w")
else:
    out = workflow.resume("w")
print("STATUS", status)
print("DONE", ",".join(done))
print("OUT", out)
"""

STEPS = """
import os
import keelflow as workflow

def _log(label):
    fd = os.open(os.environ["KF_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{os.environ.get('KF_PHASE', '1')} {label}\\n".encode())
    os.close(fd)

@workflow.step
def leaf(i, label):
    _log(label)
    return i * i

@workflow.step
def link(prev, i, label):
    _log(label)
    return prev + i

@workflow.step
def grow(n, label):
    _log(label)
    if n == 0:
        return 0
    sub = grow.options(name=f"grow{n - 1}").step(n - 1, f"grow{n - 1}")
    return link.options(name=f"glink{n}").step(sub, n, f"glink{n}")

@workflow.step
def total(a, b, c, label):
    _log(label)
    return a + sum(b) + c

def build():
    x = leaf.options(name="leaf0").step(0, "leaf0")
    for i in range(1, 60):
        x = link.options(name=f"link{i}").step(x, i, f"link{i}")
    wide = [leaf.options(name=f"wide{i}").step(i, f"wide{i}") for i in range(40)]
    return total.options(name="total").step(x, wide, grow.options(name="grow25").step(25, "grow25"), "total")

EXPECTED = sum(range(60)) + sum(i * i for i in range(40)) + sum(range(26))
"""


def _executions(path: str) -> dict[str, list[str]]:
    phases: dict[str, list[str]] = {"1": [], "2": []}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                phase, label = line.split()
                phases[phase].append(label)
    return phases


@pytest.mark.parametrize("executor", ["local", "thread"])
def test_kill_at_random_instants_then_resume(tmp_path, executor):
    (tmp_path / "anytime_steps.py").write_text(STEPS)
    sys.path.insert(0, str(tmp_path))
    try:
        import anytime_steps
    finally:
        sys.path.remove(str(tmp_path))
    rng = random.Random(f"anytime-{executor}")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(TESTS.parent / "src"), str(TESTS)])}
    # How long an uninterrupted run lasts after its first step, so the kills land inside runs.
    cal_log = str(tmp_path / "cal.log")
    cal = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(tmp_path / "calibration"), executor],
        env={**os.environ, **env, "KF_LOG": cal_log},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not os.path.exists(cal_log) and cal.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    clock = time.monotonic()
    out, _ = cal.communicate(timeout=120)
    span = time.monotonic() - clock
    assert f"OUT {anytime_steps.EXPECTED}" in out
    killed_mid_run = 0
    for trial in range(6):
        storage = str(tmp_path / f"s{trial}")
        log = str(tmp_path / f"log{trial}")
        full_env = {**os.environ, **env, "KF_LOG": log, "KF_PHASE": "1"}
        driver = subprocess.Popen(
            [sys.executable, "-c", DRIVER, storage, executor],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            # Wait until the workflow has started, then kill it at a random later instant.
            deadline = time.monotonic() + 60
            while not os.path.exists(log) and driver.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.8 * span))
            if driver.poll() is None:
                killed_mid_run += 1
                os.kill(driver.pid, signal.SIGKILL)
        finally:
            driver.wait(30)
            assert driver.stdout is not None
            driver.stdout.close()
        before = _executions(log)
        resumed = run_python(RESUME, storage, executor, env={**env, "KF_LOG": log, "KF_PHASE": "2"}, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        lines = dict(line.split(" ", 1) for line in resumed.stdout.splitlines() if " " in line)
        assert int(lines["OUT"]) == anytime_steps.EXPECTED
        after = _executions(log)
        checkpointed = set(filter(None, lines["DONE"].strip().split(",")))
        ran_before, ran_after = before["1"], after["2"]
        # Nothing fails here, so each phase runs a step at most once; every step ran; and a
        # step checkpointed before the kill never runs again.
        assert len(set(ran_before)) == len(ran_before)
        assert len(set(ran_after)) == len(ran_after)
        assert len(set(ran_before) | set(ran_after)) == 60 + 40 + 1 + 26 + 25
        assert not checkpointed & set(ran_after), sorted(checkpointed & set(ran_after))
        assert checkpointed <= set(ran_before)
    assert killed_mid_run >= 3  # the delays must actually land inside runs
