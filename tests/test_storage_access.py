"""Opening storage writes nothing; read-only or full storage can still be inspected; a mistyped
storage or id is named, and nothing is created for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import keelflow as workflow
from conftest import TESTS
from keelflow.errors import ActorNotFoundError, InvalidIdError, StorageError, WorkflowNotFoundError
from mounts import fill, remount, tmpfs

ENV = {"PYTHONPATH": os.pathsep.join([str(TESTS.parent / "src"), str(TESTS)])}


@workflow.step
def echo(x):
    return x


@workflow.virtual_actor
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def add(self) -> int:
        self.n += 1
        return self.n


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **ENV)
    env.pop("KEELFLOW_STORAGE", None)
    return subprocess.run(
        [sys.executable, "-m", "keelflow.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


def stored(root: str) -> None:
    workflow.init(root, executor="thread")
    assert echo.step("kept").run(workflow_id="kept") == "kept"
    assert Counter.get_or_create("tally").add.run() == 1
    workflow.shutdown()


def inspect_works(root: str) -> None:
    """The inspecting commands and calls answer on storage that refuses writes."""
    listed = cli("list", "--json", "--storage", root)
    assert listed.returncode == 0, listed.stderr
    assert [(r["workflow_id"], r["status"]) for r in json.loads(listed.stdout)] == [("kept", "SUCCESSFUL")]
    for args in (["status", "kept"], ["steps", "kept"], ["metadata", "kept"], ["actors"], ["actors", "tally"]):
        done = cli(*args, "--storage", root)
        assert done.returncode == 0, (args, done.stderr)
    out = cli("output", "kept", "--json", "--storage", root)
    assert (out.returncode, json.loads(out.stdout)) == (0, "kept"), out.stderr
    workflow.init(root, executor="thread")
    assert workflow.get_status("kept") == workflow.WorkflowStatus.SUCCESSFUL
    assert workflow.get_output("kept") == "kept"
    assert workflow.get_metadata("kept")["status"] == "SUCCESSFUL"
    assert sorted(workflow.list_all()) == [("kept", workflow.SUCCESSFUL), ("tally", workflow.SUCCESSFUL)]
    assert workflow.list_actors() == ["tally"]
    assert workflow.get_actor_metadata("tally")["state"] == {"n": 1}


def test_read_only_storage_can_be_inspected_and_says_so_only_on_a_write(tmp_path):
    """As found: on a read-only mount, `list`, `status` and `output` failed ("read-only")."""
    with tmpfs(str(tmp_path / "ro")) as root:
        stored(root)
        remount(root, "ro")
        try:
            inspect_works(root)
            with pytest.raises(StorageError) as info:
                echo.step(1).run(workflow_id="new")
            assert "read-only" in str(info.value) and root in str(info.value), str(info.value)
            refused = cli("resume", "kept", "--storage", root)
            assert refused.returncode == 4 and "read-only" in refused.stderr, refused.stderr
        finally:
            workflow.shutdown()
            remount(root, "rw")
        workflow.init(root, executor="thread")
        assert workflow.get_output("kept") == "kept"


def test_full_storage_can_be_inspected_and_says_so_only_on_a_write(tmp_path):
    """As found: on a full disk, `list`, `status` and `output` failed ("No space left")."""
    with tmpfs(str(tmp_path / "full"), size="1m") as root:
        stored(root)
        fill(os.path.join(root, "filler"))
        try:
            inspect_works(root)
            with pytest.raises(StorageError) as info:
                echo.step("x" * 4096).run(workflow_id="new")
            assert "No space left" in str(info.value) and root in str(info.value), str(info.value)
        finally:
            workflow.shutdown()
            os.unlink(os.path.join(root, "filler"))
        workflow.init(root, executor="thread")
        assert workflow.get_output("kept") == "kept"


@pytest.mark.parametrize("args", [["list"], ["status", "x"], ["output", "x"], ["actors"], ["resume", "x"]])
def test_a_mistyped_storage_is_named_and_not_created(tmp_path, args):
    """As found: `keelflow --storage /typo list` created /typo and printed "no workflows"."""
    typo = str(tmp_path / "typo")
    done = cli("--storage", typo, *args)
    assert done.returncode == 4 and typo in done.stderr and "does not exist" in done.stderr, done.stderr
    assert not os.path.exists(typo)
    os.makedirs(typo)
    done = cli("--storage", typo, *args)
    assert done.returncode == 4 and "no keelflow storage" in done.stderr, done.stderr
    assert os.listdir(typo) == []
    with pytest.raises(StorageError, match="does not exist"):
        workflow.init(str(tmp_path / "other"), create=False)
    assert not os.path.exists(tmp_path / "other")


def test_not_found_names_the_storage_searched(storage):
    stored(storage)
    workflow.init(storage, executor="thread")
    for call in (workflow.get_status, workflow.get_output, workflow.resume, workflow.cancel, workflow.delete):
        with pytest.raises(WorkflowNotFoundError) as info:
            call("nope")
        assert storage in str(info.value) and info.value.storage == storage
    with pytest.raises(ActorNotFoundError) as actor:
        workflow.get_actor("nobody")
    assert storage in str(actor.value)
    assert sorted(os.listdir(os.path.join(storage, "workflows"))) == ["kept"], "a lookup creates nothing"
    workflow.shutdown()
    done = cli("status", "nope", "--storage", storage)
    assert done.returncode == 3 and storage in done.stderr, done.stderr


def test_reserved_ids_are_refused_not_hidden(storage):
    """As found: `.tmp-job` was accepted, then missing from list_all() and resume_all()."""
    workflow.init(storage, executor="thread")
    for call in (
        lambda: workflow.submit(echo.step(1), workflow_id=".tmp-job"),
        lambda: echo.step(1).run(workflow_id=".tmp-job"),
        lambda: Counter.get_or_create(".tmp-actor"),
        lambda: workflow.send_event("kept", ".tmp-key"),
    ):
        with pytest.raises(InvalidIdError, match="reserved"):
            call()
    assert workflow.list_all() == [] and workflow.list_actors() == []
