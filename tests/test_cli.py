"""The ``keelflow`` command line, through its real entry point: click's runner in this process,
and ``python -m keelflow.cli`` in subprocesses (a runner killed with SIGKILL, a live watch)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

import clisteps
import keelflow as workflow
from conftest import TESTS
from keelflow.cli import main

ENV = {"PYTHONPATH": os.pathsep.join([str(TESTS.parent / "src"), str(TESTS), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture
def wf(storage, monkeypatch):
    """keelflow on the test's storage with the thread executor; the command line, given the
    same storage, shares this runtime (its own init is then a no-op)."""
    monkeypatch.setenv("KEELFLOW_EXECUTOR", "thread")
    workflow.init(storage)
    return workflow


@pytest.fixture
def cli(storage):
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None):
        return runner.invoke(main, [*args, "--storage", storage], input=input, env=env, catch_exceptions=False)

    return invoke


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **ENV)
    return subprocess.run(
        [sys.executable, "-m", "keelflow.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


class Runners:
    """Runner subprocesses (``clisteps.main``): a workflow whose ``gate`` step waits on a file."""

    def __init__(self, storage: str, tmp) -> None:
        self.storage, self.tmp = storage, tmp
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, wid: str) -> tuple[subprocess.Popen[str], str]:
        gate = str(self.tmp / f"gate-{wid}")
        open(gate, "w").close()
        out = open(self.tmp / f"runner-{wid}.out", "w+")  # noqa: SIM115 (closed in cleanup)
        code = "import clisteps; clisteps.main()"
        args = [sys.executable, "-c", code, self.storage, wid, gate]
        proc = subprocess.Popen(args, env=dict(os.environ, **ENV), stdout=out, stderr=subprocess.STDOUT, text=True)
        proc.out = out  # type: ignore[attr-defined]
        self.procs.append(proc)
        wait_for(lambda: os.path.exists(f"{gate}.reached"), proc, f"{wid} to reach its gate")
        return proc, gate

    def output(self, proc: subprocess.Popen[str]) -> str:
        proc.out.seek(0)  # type: ignore[attr-defined]
        return proc.out.read()  # type: ignore[attr-defined]

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
            proc.out.close()  # type: ignore[attr-defined]


@pytest.fixture
def runners(storage, tmp_path):
    r = Runners(storage, tmp_path)
    yield r
    r.cleanup()


def wait_for(condition, proc: subprocess.Popen[str] | None, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc is None or proc.poll() is None, f"process exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def open_gate(gate: str) -> None:
    os.unlink(gate)


def finished_workflows(wf, tmp_path) -> tuple[str, str]:
    """``ok`` (SUCCESSFUL, output 12, user metadata) and then ``bad`` (FAILED in ``check``)."""
    clisteps.gated_chain(None).run(workflow_id="ok", metadata={"owner": "ops"})
    flag = tmp_path / "flag"
    flag.touch()
    with pytest.raises(workflow.WorkflowExecutionError):
        clisteps.failing(str(flag)).run(workflow_id="bad")
    return "ok", "bad"


# -- help, listing, status, steps ---------------------------------------------------------------
def test_help_names_every_command_and_the_exit_codes():
    runner = CliRunner()
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("list", "status", "output", "metadata", "resume", "resume-all", "cancel", "delete", "steps"):
        assert f"  {command}" in result.output
    for command in ("actors", "worker", "dashboard"):
        assert f"  {command}" in result.output
    assert "Exit codes" in result.output and "3  unknown workflow" in result.output
    dash = runner.invoke(main, ["dashboard", "--help"])
    assert dash.exit_code == 0 and "8370" in dash.output and "--token" in dash.output
    assert runner.invoke(main, ["list", "--bogus"]).exit_code == 2


def test_list_filters_by_status_newest_first(wf, cli, tmp_path, storage, monkeypatch):
    finished_workflows(wf, tmp_path)
    rows = json.loads(cli("list", "--json").output)
    assert [(r["workflow_id"], r["status"]) for r in rows] == [("bad", "FAILED"), ("ok", "SUCCESSFUL")]
    assert all(r["duration"] is not None and r["duration"] >= 0 for r in rows)
    assert [r["workflow_id"] for r in json.loads(cli("list", "--status", "failed", "--json").output)] == ["bad"]
    both = cli("list", "--status", "FAILED", "--status", "SUCCESSFUL", "--json")
    assert len(json.loads(both.output)) == 2
    assert json.loads(cli("list", "--status", "RUNNING", "--json").output) == []

    table = cli("list").output.splitlines()
    assert table[0].split() == ["WORKFLOW", "ID", "STATUS", "STARTED", "ENDED", "DURATION"]
    assert table[1].split()[:2] == ["bad", "FAILED"] and table[2].split()[:2] == ["ok", "SUCCESSFUL"]

    # The storage also comes from before the command name, or from $KEELFLOW_STORAGE.
    runner = CliRunner()
    before = runner.invoke(main, ["--storage", storage, "list", "--json"])
    assert [r["workflow_id"] for r in json.loads(before.output)] == ["bad", "ok"]
    monkeypatch.setenv("KEELFLOW_STORAGE", storage)
    from_env = runner.invoke(main, ["list", "--json"])
    assert [r["workflow_id"] for r in json.loads(from_env.output)] == ["bad", "ok"]


def test_status_and_steps_report_what_failed(wf, cli, tmp_path):
    finished_workflows(wf, tmp_path)
    ok = json.loads(cli("status", "ok", "--json").output)
    assert ok["status"] == "SUCCESSFUL" and ok["steps_done"] == ok["steps_total"] == 3
    assert ok["user_metadata"] == {"owner": "ops"} and ok["failed_step"] is None

    bad = cli("status", "bad")
    assert bad.exit_code == 0  # status reports; it does not judge
    assert "FAILED" in bad.output and "check" in bad.output and "flag flag is up" in bad.output
    info = json.loads(cli("status", "bad", "--json").output)
    assert (info["status"], info["failed_step"], info["steps_failed"]) == ("FAILED", "check", 1)
    assert info["error"] == "ValueError: flag flag is up"

    rows = json.loads(cli("steps", "bad", "--json").output)
    by_name = {r["name"]: r for r in rows}
    assert by_name["check"]["status"] == "FAILED" and by_name["check"]["attempts"] == 1
    assert "ValueError: flag flag is up" in by_name["check"]["traceback"]
    assert by_name["two"]["status"] == "SUCCESSFUL"
    table = cli("steps", "bad").output.splitlines()
    assert table[0].split() == ["#", "NAME", "STATUS", "ATTEMPTS", "DURATION", "ERROR"]
    check = next(line for line in table if " check " in line)
    assert "FAILED" in check and check.endswith("ValueError: flag flag is up")


def test_output_prints_json_or_repr(wf, cli, tmp_path):
    finished_workflows(wf, tmp_path)
    clisteps.opaque.step().run(workflow_id="opaque")
    ok = cli("output", "ok")
    assert (ok.exit_code, json.loads(ok.output)) == (0, 12)
    assert json.loads(cli("output", "ok", "--step", "first", "--json").output) == 2
    assert cli("output", "opaque").output.strip() == "Opaque()"
    forced = cli("output", "opaque", "--json")
    assert forced.exit_code == 1 and "not JSON-serialisable" in forced.output and forced.stdout == ""
    failed = cli("output", "bad")
    assert failed.exit_code == 1 and "failed in step check" in failed.stderr and "flag flag is up" in failed.stderr


def test_metadata_is_json(wf, cli, tmp_path):
    finished_workflows(wf, tmp_path)
    meta = json.loads(cli("metadata", "ok").output)
    assert meta["status"] == "SUCCESSFUL" and meta["user_metadata"] == {"owner": "ops"}
    assert meta["stats"]["end_time"] >= meta["stats"]["start_time"]
    step = json.loads(cli("metadata", "bad", "--step", "check", "--json").output)
    assert (step["name"], step["status"], step["step_options"]["max_retries"]) == ("check", "FAILED", 0)


@pytest.mark.parametrize(
    "args, named",
    [
        (["status", "nope"], "'nope'"),
        (["status", "nope", "--watch"], "'nope'"),
        (["steps", "nope"], "'nope'"),
        (["output", "nope"], "'nope'"),
        (["output", "ok", "--step", "missing"], "'missing'"),
        (["metadata", "nope"], "'nope'"),
        (["metadata", "ok", "--step", "missing"], "'missing'"),
        (["resume", "nope"], "'nope'"),
        (["cancel", "nope"], "'nope'"),
        (["delete", "nope", "--yes"], "'nope'"),
        (["delete", "nope"], "'nope'"),  # before asking
        (["actors", "nope"], "'nope'"),
    ],
)
def test_unknown_ids_exit_3_naming_the_id(wf, cli, args, named):
    clisteps.add.options(name="first").step(1, 1).run(workflow_id="ok")
    result = cli(*args)
    assert result.exit_code == 3, result.output
    assert named in result.stderr and result.stdout == ""


def test_a_malformed_id_is_a_usage_error(wf, cli):
    result = cli("status", "a/b")
    assert result.exit_code == 2 and "must not contain" in result.stderr


def test_bad_storage_exits_4(tmp_path):
    runner = CliRunner()
    for args in (["list"], ["status", "x"], ["actors"], ["resume-all"]):
        result = runner.invoke(main, [*args, "--storage", "bogus://x"])
        assert result.exit_code == 4, (args, result.output)
        assert "unknown storage scheme 'bogus'" in result.stderr
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "keelflow.json").write_text(json.dumps({"format": 999}))
    result = runner.invoke(main, ["list", "--storage", str(newer)])
    assert result.exit_code == 4 and "newer keelflow" in result.stderr
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    result = runner.invoke(main, ["list", "--storage", str(a_file)])
    assert result.exit_code == 4 and str(a_file) in result.stderr


# -- resume, resume-all, cancel, delete ----------------------------------------------------------
def test_resume_runs_a_killed_runners_workflow_to_the_end(storage, runners):
    proc, gate = runners.start("killed")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    status = run_cli("status", "killed", "--json", "--storage", storage)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] == "RESUMABLE"

    open_gate(gate)
    resumed = run_cli("resume", "killed", "--storage", storage)  # the default (process) executor
    assert (resumed.returncode, resumed.stdout.strip()) == (0, "12"), resumed.stderr
    after = run_cli("list", "--json", "--storage", storage)
    assert [(r["workflow_id"], r["status"]) for r in json.loads(after.stdout)] == [("killed", "SUCCESSFUL")]


def test_resume_of_a_workflow_that_fails_again_exits_1(wf, cli, tmp_path):
    finished_workflows(wf, tmp_path)
    again = cli("resume", "bad")
    assert again.exit_code == 1 and "failed in step check" in again.stderr and again.stdout == ""
    (tmp_path / "flag").unlink()
    fixed = cli("resume", "bad", "--executor", "thread")
    assert (fixed.exit_code, fixed.stdout.strip()) == (0, "5")
    assert workflow.get_status("bad") == workflow.WorkflowStatus.SUCCESSFUL


def test_resume_all_runs_resumable_and_optionally_failed_workflows(wf, cli, tmp_path):
    finished_workflows(wf, tmp_path)
    for wid in ("sub-1", "sub-2"):
        workflow.submit(clisteps.gated_chain(None), workflow_id=wid)
    first = cli("resume-all", "--json")
    assert first.exit_code == 0
    assert sorted((r["workflow_id"], r["status"]) for r in json.loads(first.output)) == [
        ("sub-1", "SUCCESSFUL"),
        ("sub-2", "SUCCESSFUL"),
    ]
    assert workflow.get_output("sub-2") == 12 and workflow.get_status("bad").value == "FAILED"

    nothing = cli("resume-all")
    assert nothing.exit_code == 0 and "nothing to resume" in nothing.stderr
    still_failing = cli("resume-all", "--include-failed")
    assert still_failing.exit_code == 1
    assert still_failing.stdout.splitlines()[1].split()[:2] == ["bad", "FAILED"]
    (tmp_path / "flag").unlink()
    fixed = cli("resume-all", "--include-failed", "--json")
    assert fixed.exit_code == 0 and json.loads(fixed.output)[0]["status"] == "SUCCESSFUL"


def test_cancel_stops_a_workflow_another_process_runs(storage, runners, cli):
    proc, gate = runners.start("long")
    assert json.loads(cli("status", "long", "--json").output)["status"] == "RUNNING"
    refused = cli("delete", "long", "--yes")
    assert refused.exit_code == 1 and "cancel it first" in refused.stderr

    busy = cli("resume", "long")
    assert busy.exit_code == 1 and "running in a live process" in busy.stderr

    result = cli("cancel", "long")
    assert (result.exit_code, result.stdout.strip()) == (0, "long CANCELED")
    open_gate(gate)
    proc.wait(30)
    assert "ERROR WorkflowCancelledError" in runners.output(proc)
    assert json.loads(cli("status", "long", "--json").output)["status"] == "CANCELED"
    again = cli("cancel", "long")
    assert again.exit_code == 0 and "already CANCELED" in again.stderr
    gone = cli("output", "long")
    assert gone.exit_code == 1 and "cancelled" in gone.stderr


def test_delete_asks_unless_yes(wf, cli, tmp_path):
    finished_workflows(wf, tmp_path)
    kept = cli("delete", "ok", input="n\n")
    assert kept.exit_code == 1 and "Delete workflow 'ok'" in kept.output
    assert workflow.get_status("ok").value == "SUCCESSFUL"
    deleted = cli("delete", "ok", input="y\n")
    assert deleted.exit_code == 0 and "deleted ok" in deleted.output
    assert cli("status", "ok").exit_code == 3
    assert cli("delete", "bad", "--yes").stdout.strip() == "deleted bad"
    assert json.loads(cli("list", "--json").output) == []


# -- status --watch --------------------------------------------------------------------------------
def test_watch_follows_a_workflow_in_another_process_until_it_succeeds(storage, runners, tmp_path):
    proc, gate = runners.start("watched")
    out_path = tmp_path / "watch.out"
    with open(out_path, "w") as out:
        args = [sys.executable, "-m", "keelflow.cli", "status", "watched", "--watch", "--interval", "0.05"]
        watch = subprocess.Popen([*args, "--storage", storage], env=dict(os.environ, **ENV), stdout=out, text=True)
        try:
            wait_for(lambda: "watched RUNNING" in out_path.read_text(), watch, "a progress line")
            open_gate(gate)
            assert watch.wait(60) == 0
        finally:
            if watch.poll() is None:
                watch.kill()
                watch.wait(10)
    lines = out_path.read_text().splitlines()
    assert lines[0].startswith("watched RUNNING: 1/3 steps done, 0 failed")
    assert lines[-1].startswith("watched SUCCESSFUL: 3/3 steps done, 0 failed, 0 retried, in ")
    proc.wait(30)


def test_watch_draws_a_live_view_and_exits_1_unless_successful(wf, cli, tmp_path):
    finished_workflows(wf, tmp_path)
    gate = tmp_path / "gate"
    gate.touch()
    clisteps.gated_chain(str(gate)).run_async(workflow_id="live")
    waited = cli("output", "live", "--timeout", "0.05")
    assert waited.exit_code == 1 and "'live' is still running" in waited.stderr
    # Opened from a thread while the watch runs, so it sees the workflow move (whenever it opens).
    opener = threading.Thread(target=lambda: (time.sleep(0.3), gate.unlink()))
    opener.start()
    try:
        live = cli("status", "live", "--watch", "--interval", "0.05", env={"FORCE_COLOR": "1", "COLUMNS": "100"})
    finally:
        opener.join()
    assert live.exit_code == 0
    assert "steps" in live.stdout and "\x1b[" in live.stdout  # drawn by rich for a terminal
    last = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", live.stdout.splitlines()[-1])  # rich's cursor escapes
    assert last.startswith("live SUCCESSFUL: 3/3 steps done, 0 failed, 0 retried, in "), last

    failed = cli("status", "bad", "--watch", "--json")
    assert failed.exit_code == 1
    assert json.loads(failed.stdout)["status"] == "FAILED"
    plain = cli("status", "bad", "--watch")
    assert plain.exit_code == 1 and plain.stdout.startswith("bad FAILED: 1/2 steps done, 1 failed")
    assert "step check failed: ValueError: flag flag is up" in plain.stderr


# -- actors, and the entry point itself --------------------------------------------------------------
def test_actors_lists_state_and_calls(wf, cli):
    tally = clisteps.Tally.get_or_create("tally-1", 5)
    assert tally.add.run(2) == 7
    with pytest.raises(workflow.KeelflowError):
        tally.add.run(-1)
    rows = json.loads(cli("actors", "--json").output)
    assert [(r["actor_id"], r["class"]) for r in rows] == [("tally-1", "clisteps.Tally")]
    assert (rows[0]["stats"]["calls"], rows[0]["stats"]["failed"]) == (2, 1)
    table = cli("actors").output.splitlines()
    assert table[0].split()[:4] == ["ACTOR", "ID", "CLASS", "STATUS"]
    assert table[1].split()[:2] == ["tally-1", "clisteps.Tally"]

    one = json.loads(cli("actors", "tally-1", "--json").output)
    assert [(c["method"], c["status"]) for c in one["calls"]] == [("add", "SUCCESSFUL"), ("add", "FAILED")]
    assert "cannot add -1" in one["calls"][1]["error"]
    text = cli("actors", "tally-1").output
    assert "clisteps.Tally" in text and "2 (1 failed, 0 queued)" in text and "cannot add -1" in text


def test_the_module_entry_point_and_a_light_import(storage):
    workflow.init(storage)  # creates it: the command line never does
    workflow.shutdown()
    listed = run_cli("list", "--json", "--storage", storage)
    assert (listed.returncode, json.loads(listed.stdout)) == (0, [])
    missing = run_cli("output", "nope", "--storage", storage)
    assert missing.returncode == 3 and "no workflow with id 'nope'" in missing.stderr
    bad = run_cli("--storage", "bogus://x", "list")
    assert bad.returncode == 4 and "bogus" in bad.stderr
    probe = "import sys, keelflow.cli; print(sorted(m for m in ('rich', 'keelflow.api') if m in sys.modules))"
    light = subprocess.run([sys.executable, "-c", probe], env=dict(os.environ, **ENV), capture_output=True, text=True)
    assert light.stdout.strip() == "[]", light.stderr
