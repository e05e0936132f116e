"""SPEC §9: every bad input gets a clear error naming what was wrong, and loses nothing stored."""

from __future__ import annotations

import json
import os
import threading

import pytest

import keelflow as workflow
from keelflow.errors import (
    CorruptCheckpointError,
    InvalidIdError,
    KeelflowError,
    SerializationError,
    StorageError,
    StorageFormatError,
    WorkflowExecutionError,
)


@workflow.step
def echo(x):
    return x


@workflow.step
def make_lock():
    return threading.Lock()


def _stored_ok(kf) -> None:
    """A workflow stored before the bad input still reads back afterwards."""
    assert kf.get_output("kept") == "safe"
    assert kf.get_status("kept") == kf.WorkflowStatus.SUCCESSFUL


@pytest.fixture
def kept(kf):
    assert echo.step("safe").run(workflow_id="kept") == "safe"
    return kf


def test_unserializable_argument_is_named_and_nothing_is_created(kept):
    with pytest.raises(SerializationError, match=r"arguments of step .*echo.*lock"):
        echo.step(threading.Lock()).run(workflow_id="bad-arg")
    with pytest.raises(workflow.WorkflowNotFoundError):
        kept.get_status("bad-arg")
    assert [w for w, _ in kept.list_all()] == ["kept"]
    _stored_ok(kept)


def test_unserializable_output_fails_the_step_without_retrying(kept):
    with pytest.raises(WorkflowExecutionError) as info:
        make_lock.step().run(workflow_id="bad-out")
    assert isinstance(info.value.__cause__, SerializationError)
    assert "output of step" in str(info.value.__cause__)
    assert "lock" in str(info.value.__cause__)
    assert kept.get_metadata("bad-out", name=info.value.step_name)["attempts"] == 1
    _stored_ok(kept)


@pytest.mark.parametrize("bad", ["a/b", "..", "x..y", "tab\there", "nul\x00", "", "back\\slash", ".", ".tmp-job"])
def test_bad_workflow_ids(kept, bad):
    with pytest.raises(InvalidIdError) as info:
        echo.step(1).run(workflow_id=bad)
    assert isinstance(info.value, ValueError)
    for call in (kept.get_status, kept.get_output, kept.resume, kept.cancel, kept.delete, kept.get_metadata):
        with pytest.raises(InvalidIdError):
            call(bad)
    _stored_ok(kept)


def test_non_string_id(kept):
    with pytest.raises(InvalidIdError, match="must be a string"):
        echo.step(1).run(workflow_id=42)


def test_unknown_storage_scheme_is_named():
    with pytest.raises(StorageError, match="unknown storage scheme 'nfs'"):
        workflow.init("nfs://server/share")


def test_storage_in_place_of_a_file_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match=str(blocker)):
        workflow.init(str(blocker / "storage"))


def test_newer_storage_format_is_refused(storage):
    os.makedirs(storage)
    with open(os.path.join(storage, "keelflow.json"), "w") as f:
        json.dump({"format": 99}, f)
    with pytest.raises(StorageFormatError, match="format 99"):
        workflow.init(storage)


def test_unreadable_format_marker_is_named(storage):
    os.makedirs(storage)
    marker = os.path.join(storage, "keelflow.json")
    with open(marker, "w") as f:
        f.write("{not json")
    with pytest.raises(CorruptCheckpointError) as info:
        workflow.init(storage)
    assert info.value.path == marker


def test_corrupted_journal_is_named_and_other_workflows_still_read(kept, storage):
    assert echo.step("victim").run(workflow_id="victim") == "victim"
    path = os.path.join(storage, "workflows", "victim", "journal")
    with open(path, "rb") as f:
        data = bytearray(f.read())
    data[12] ^= 0xFF  # inside the first record's payload: a whole frame fails its checksum
    with open(path, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(CorruptCheckpointError) as info:
        kept.get_output("victim")
    assert info.value.path == path
    assert path in str(info.value)
    with pytest.raises(CorruptCheckpointError):
        kept.resume("victim")
    _stored_ok(kept)
    assert kept.get_status("victim") == kept.WorkflowStatus.SUCCESSFUL  # the index still answers


def test_truncated_large_output_is_named(kept, storage):
    big = "x" * (2 << 20)  # above the inline limit: stored as a blob of its own
    assert echo.step(big).run(workflow_id="big") == big
    blob_dir = os.path.join(storage, "workflows", "big", "blobs")
    (name,) = os.listdir(blob_dir)
    path = os.path.join(blob_dir, name)
    with open(path, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(CorruptCheckpointError) as info:
        kept.get_output("big")
    assert info.value.path == path
    _stored_ok(kept)


def test_metadata_must_be_json(kept):
    with pytest.raises(SerializationError, match="JSON"):
        echo.step(1).run(workflow_id="meta", metadata={"when": object()})
    with pytest.raises(SerializationError, match="JSON"):
        echo.options(metadata={"x": {1, 2}})
    with pytest.raises(workflow.WorkflowNotFoundError):
        kept.get_status("meta")


def test_unknown_executor_is_named(storage):
    with pytest.raises(KeelflowError, match="unknown executor 'gpu-farm'"):
        workflow.init(storage, executor="gpu-farm")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": "3"}, "max_retries"),
        ({"num_cpus": -2}, "num_cpus"),
        ({"resources": {"x": -1}}, "resources"),
        ({"retry_exceptions": "ValueError"}, "retry_exceptions"),
        ({"catch_exceptions": 1}, "catch_exceptions"),
        ({"colour": "red"}, "unknown step option"),
    ],
)
def test_bad_step_options_are_named(options, message):
    with pytest.raises((TypeError, ValueError), match=message):
        echo.options(**options)
