"""Damaged storage is named, never silently cut; reading never writes.

Each test reproduces a fault as a review found it: a bit flipped in a record's length, a
journal cut, emptied or deleted under a status index that says the workflow ended, a tail cut
off a finished workflow, half a journal overwritten, journals of the previous format.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import keelflow as workflow
from keelflow.engine.journal import Journal
from keelflow.errors import CorruptCheckpointError, KeelflowError, StorageError
from keelflow.serialization import scan_frames
from keelflow.storage import open_storage
from legacy import to_format_1
from test_backends import SegmentedFile

STEPS = 50


@workflow.step
def inc(x):
    return x + 1


def chain(n: int = STEPS):
    node = 0
    for i in range(n):
        node = inc.options(name=f"inc{i}").step(node)
    return node


def journal_of(storage: str, wid: str) -> str:
    return os.path.join(storage, "workflows", wid, "journal")


def snapshot(root: str) -> dict[str, str]:
    """Every file below ``root`` and a hash of its bytes (leases aside: a probe may open them)."""
    found = {}
    for d, _dirs, files in os.walk(root):
        for name in files:
            if name == "lease":
                continue
            path = os.path.join(d, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return found


@pytest.fixture
def finished(storage):
    """Two finished 50-step workflows, ``w`` (to be damaged) and ``other``."""
    workflow.init(storage, executor="thread")
    assert chain().run(workflow_id="w") == STEPS
    assert chain(3).run(workflow_id="other") == 3
    workflow.shutdown()
    workflow.init(storage, executor="thread")
    return storage


def assert_damage_named(wid: str, path: str, *calls) -> list[CorruptCheckpointError]:
    errors = []
    for call in calls:
        with pytest.raises(CorruptCheckpointError) as info:
            call()
        assert isinstance(info.value, StorageError)
        assert info.value.path == path and path in str(info.value), str(info.value)
        errors.append(info.value)
    return errors


def every_call(wid: str):
    return (
        lambda: workflow.get_output(wid),
        lambda: workflow.get_output(wid, name="inc10"),
        lambda: workflow.get_metadata(wid),
        lambda: workflow.get_metadata(wid, name="inc10"),
        lambda: workflow.resume(wid),
    )


def test_a_flipped_bit_in_a_middle_records_length_is_damage_not_a_torn_tail(finished):
    """As found: the reader took it for a crash mid-write, and the next append cut 32 steps."""
    path = journal_of(finished, "w")
    with open(path, "rb") as f:
        data = bytearray(f.read())
    scan = scan_frames(bytes(data))
    assert len(scan.offsets) == STEPS + 1
    at = scan.offsets[25]
    data[at + 2] ^= 0x04  # the length field's third byte: the length grows past the end
    with open(path, "wb") as f:
        f.write(data)
    before = snapshot(finished)
    errors = assert_damage_named("w", path, *every_call("w"))
    assert all(e.offset == at for e in errors), [e.offset for e in errors]
    assert "25 records before it are intact" in str(errors[0])
    assert workflow.resume_all(include_failed=True) == []  # skipped and logged, not fatal
    assert snapshot(finished) == before, "nothing may be cut or rewritten"
    assert workflow.get_output("other") == 3


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bit=st.integers(min_value=0))
def test_any_single_bit_flip_in_a_journal_is_reported_never_cut_or_misread(finished, bit):
    """With no status index to vouch for the journal's end: the frames alone must tell."""
    path = journal_of(finished, "w")
    index = os.path.join(finished, "workflows", "w", "status")
    if os.path.exists(index):
        os.unlink(index)
    with open(path, "rb") as f:
        original = f.read()  # each example puts it back as it was
    bit %= len(original) * 8
    data = bytearray(original)
    data[bit // 8] ^= 1 << (bit % 8)
    with open(path, "wb") as f:
        f.write(data)
    try:
        with pytest.raises(CorruptCheckpointError):
            workflow.get_output("w")
        with pytest.raises(CorruptCheckpointError):
            workflow.resume("w")
        with open(path, "rb") as f:
            assert f.read() == bytes(data)
    finally:
        with open(path, "wb") as f:
            f.write(original)


@pytest.mark.parametrize("damage", ["cut-inside-first-record", "emptied", "deleted"])
def test_index_and_journal_disagree_is_damage_never_not_found(finished, damage):
    """As found: `list` said SUCCESSFUL while every other call said "no workflow"."""
    path = journal_of(finished, "w")
    if damage == "deleted":
        os.unlink(path)
    else:
        with open(path, "rb") as f:
            first = scan_frames(f.read()).payloads[0]
        with open(path, "r+b") as f:
            f.truncate(len(first) // 2 if damage == "cut-inside-first-record" else 0)
    before = snapshot(finished)
    assert_damage_named("w", path, lambda: workflow.get_status("w"), *every_call("w"), lambda: workflow.cancel("w"))
    assert snapshot(finished) == before
    # A listing goes by the index; `delete` still clears the damaged workflow away.
    assert ("w", workflow.WorkflowStatus.SUCCESSFUL) in workflow.list_all()
    workflow.delete("w")
    with pytest.raises(workflow.WorkflowNotFoundError):
        workflow.get_status("w")
    assert workflow.get_output("other") == 3


def test_a_tail_cut_off_a_finished_workflow_is_a_keelflow_error(finished):
    """As found: `truncate -s -30` made get_output raise a bare TypeError."""
    path = journal_of(finished, "w")
    size = os.path.getsize(path)
    os.truncate(path, size - 30)
    errors = assert_damage_named("w", path, lambda: workflow.get_status("w"), *every_call("w"))
    assert all(isinstance(e, KeelflowError) for e in errors)
    assert f"{size - 30} bytes" in str(errors[1]), str(errors[1])
    assert os.path.getsize(path) == size - 30, "a resume must not cut what the index vouches for"


def test_half_the_journal_overwritten_is_named_and_other_workflows_read_back(finished):
    path = journal_of(finished, "w")
    with open(path, "r+b") as f:
        data = f.read()
        f.seek(len(data) // 2)
        f.write(b"\x5a" * (len(data) - len(data) // 2))
    assert_damage_named("w", path, lambda: workflow.get_output("w"), lambda: workflow.get_output("w", name="inc49"))
    assert workflow.get_output("other") == 3
    assert workflow.get_output("other", name="inc1") == 2


def test_a_damaged_index_free_journal_is_listed_not_hidden(finished):
    path = journal_of(finished, "w")
    os.unlink(os.path.join(finished, "workflows", "w", "status"))
    with open(path, "r+b") as f:
        f.seek(40)
        f.write(b"\xff\xff")
    rows = dict(workflow.list_all())
    assert rows["w"] == workflow.WorkflowStatus.RESUMABLE and rows["other"] == workflow.WorkflowStatus.SUCCESSFUL
    assert_damage_named("w", path, lambda: workflow.get_status("w"), lambda: workflow.resume("w"))


def test_a_torn_tail_is_cut_only_by_the_owner_resuming(storage):
    """A crash mid-append, without an index that vouches for more: the only cut allowed."""
    workflow.init(storage, executor="thread")
    assert chain(5).run(workflow_id="w") == 5
    workflow.shutdown()
    path = journal_of(storage, "w")
    os.unlink(os.path.join(storage, "workflows", "w", "status"))  # as if the end was never indexed
    with open(path, "rb") as f:
        data = f.read()
    last = scan_frames(data).offsets[-1]
    os.truncate(path, last + 7)  # the final record, torn
    workflow.init(storage, executor="thread")
    assert workflow.get_status("w") == workflow.WorkflowStatus.RESUMABLE
    assert os.path.getsize(path) == last + 7, "reading never writes"
    assert workflow.resume("w") == 5
    with open(path, "rb") as f:
        assert scan_frames(f.read()).clean


def test_format_1_journals_read_back_and_resume(finished):
    """Journals written before header checksums: read as they are, extended in the new format."""
    path = journal_of(finished, "w")
    with open(path, "rb") as f:
        current = f.read()
    records = scan_frames(current).payloads
    with open(path, "wb") as f:
        f.write(to_format_1([bytes(p) for p in records[:30]]))
    os.unlink(os.path.join(finished, "workflows", "w", "status"))
    marker = os.path.join(finished, "keelflow.json")
    with open(marker, "w") as f:
        f.write('{"format": 1}')
    workflow.shutdown()
    workflow.init(finished, executor="thread")
    assert workflow.get_status("w") == workflow.WorkflowStatus.RESUMABLE
    assert workflow.get_output("w", name="inc20") == 21
    with open(marker) as f:
        assert f.read() == '{"format": 1}', "reading never writes"
    assert workflow.resume("w") == STEPS
    with open(marker) as f:
        assert '"format": 2' in f.read(), "writing new records stamps the storage with their format"
    with open(path, "rb") as f:
        mixed = scan_frames(f.read())
    assert mixed.clean and len(mixed.payloads) > 30


def test_format_1_damaged_length_followed_by_whole_records_is_damage(finished):
    path = journal_of(finished, "w")
    with open(path, "rb") as f:
        records = [bytes(p) for p in scan_frames(f.read()).payloads]
    old = bytearray(to_format_1(records))
    at = scan_frames(bytes(old)).offsets[20]
    old[at + 3] ^= 0x10  # a length past the end: in format 1 only what follows tells
    with open(path, "wb") as f:
        f.write(old)
    assert_damage_named("w", path, lambda: workflow.get_output("w"))
    # The same bytes as the journal's very last record are a torn tail (nothing follows).
    with open(path, "wb") as f:
        f.write(bytes(old[:at]) + bytes(old[at : at + 20]))
    os.unlink(os.path.join(finished, "workflows", "w", "status"))
    assert workflow.get_output("w", name="inc10") == 11


def segmented(tmp_path, steps: int) -> tuple[str, list[str]]:
    """A finished chain of ``steps`` in storage that cannot append: its segments' directory and
    names; keelflow is left initialised on a new storage object for the same directory."""
    store = SegmentedFile(tmp_path / "seg")
    workflow.init(store, executor="thread")
    assert chain(steps).run(workflow_id="w") == steps
    workflow.shutdown()
    workflow.init(SegmentedFile(tmp_path / "seg"), executor="thread")
    segments = os.path.join(store.root, "workflows", "w", "journal.d")
    return segments, sorted(os.listdir(segments))


def test_a_missing_or_damaged_segment_is_named(tmp_path):
    segments, names = segmented(tmp_path, 6)
    assert len(names) > 3
    moved = os.path.join(str(tmp_path), "aside")
    shutil.move(os.path.join(segments, names[2]), moved)
    missing = os.path.join(segments, names[2])
    assert_damage_named("w", missing, lambda: workflow.get_output("w"))
    shutil.move(moved, os.path.join(segments, names[2]))
    with open(os.path.join(segments, names[1]), "r+b") as f:
        f.seek(20)
        f.write(b"\x00\x01")
    assert_damage_named("w", os.path.join(segments, names[1]), lambda: workflow.get_output("w"))


def test_a_damaged_journal_never_stops_a_worker_resuming_the_rest(storage, caplog):
    workflow.init(storage, executor="thread")
    for wid in ("a", "b"):
        workflow.submit(chain(4), workflow_id=wid)
    workflow.shutdown()
    with open(journal_of(storage, "a"), "r+b") as f:
        f.seek(30)
        f.write(b"\x00\x00\x00")
    workflow.init(storage, executor="thread")
    with caplog.at_level(logging.ERROR, logger="keelflow"):
        resumed = dict(workflow.resume_all())
        assert list(resumed) == ["b"] and resumed["b"].result(30) == 4
        assert workflow.resume_all() == []  # a worker asks every second: the damage is said once
    said = [r for r in caplog.records if r.levelno == logging.ERROR and "cannot resume workflow a" in r.getMessage()]
    assert len(said) == 1 and journal_of(storage, "a") in said[0].getMessage()


def test_journal_reader_reads_only(storage):
    workflow.init(storage, executor="thread")
    assert chain(5).run(workflow_id="w") == 5
    workflow.shutdown()
    store = open_storage(storage, create=False)
    before = snapshot(storage)
    journal = Journal(store, "w")
    assert len(journal.read()) == 6 and journal.torn is None
    assert snapshot(storage) == before


# -- salvage ------------------------------------------------------------------------------------
def test_salvage_keeps_the_intact_records_and_resume_runs_the_rest(finished):
    path = journal_of(finished, "w")
    with open(path, "rb") as f:
        data = bytearray(f.read())
    at = scan_frames(bytes(data)).offsets[25]
    data[at + 40] ^= 0x01  # inside record 25's payload
    with open(path, "wb") as f:
        f.write(data)
    report = workflow.salvage("w")
    assert report["damaged"] and report["records_kept"] == 25 and report["steps_kept"] == 24
    assert report["status"] == "RESUMABLE"
    with open(report["set_aside"], "rb") as f:
        assert f.read() == bytes(data), "the damaged journal is kept whole, beside the salvaged one"
    with open(path, "rb") as f:
        assert f.read() == bytes(data[:at])
    assert workflow.get_status("w") == workflow.WorkflowStatus.RESUMABLE
    assert workflow.get_output("w", name="inc20") == 21  # salvaged outputs read back
    assert workflow.resume("w") == STEPS
    assert workflow.salvage("w") == {"workflow_id": "w", "damaged": False}
    assert workflow.get_output("other") == 3


def test_salvage_of_a_journal_cut_short_under_its_index(finished):
    path = journal_of(finished, "w")
    os.truncate(path, os.path.getsize(path) - 30)
    report = workflow.salvage("w")
    assert report["records_kept"] == STEPS and report["steps_kept"] == STEPS - 1
    assert workflow.resume("w") == STEPS


def test_salvage_refuses_when_nothing_is_intact(finished):
    with open(journal_of(finished, "w"), "r+b") as f:
        f.write(b"\x00" * 16)
    with pytest.raises(KeelflowError, match="nothing of workflow 'w' can be salvaged"):
        workflow.salvage("w")
    workflow.delete("w")
    assert workflow.list_all() == [("other", workflow.WorkflowStatus.SUCCESSFUL)]


def test_salvage_of_a_segmented_journal(tmp_path):
    segments, names = segmented(tmp_path, 8)
    os.unlink(os.path.join(segments, names[3]))  # a segment lost: the ones after it go aside
    report = workflow.salvage("w")
    assert report["damaged"] and report["records_kept"] == 3
    assert sorted(os.listdir(report["set_aside"])) == names[4:]
    assert sorted(os.listdir(segments)) == names[:3]
    assert workflow.resume("w") == 8


def test_the_command_line_names_the_damage_and_salvages(finished):
    from test_storage_access import cli

    path = journal_of(finished, "w")
    os.unlink(path)
    workflow.shutdown()
    for args in (["status", "w"], ["output", "w"], ["steps", "w"], ["metadata", "w"], ["resume", "w"]):
        done = cli(*args, "--storage", finished)
        assert done.returncode == 4 and path in done.stderr, (args, done.stderr)
        assert "no workflow" not in done.stderr
    no = cli("salvage", "w", "--storage", finished)  # asks first; no answer is no
    assert no.returncode == 1 and os.path.exists(os.path.join(finished, "workflows", "w", "status"))
    gone = cli("salvage", "w", "--yes", "--storage", finished)
    assert gone.returncode == 1 and "nothing of workflow 'w' can be salvaged" in gone.stderr, gone.stderr
    deleted = cli("delete", "w", "--yes", "--storage", finished)
    assert deleted.returncode == 0, deleted.stderr
    listed = cli("list", "--json", "--storage", finished)
    assert [r["workflow_id"] for r in json.loads(listed.stdout)] == ["other"]
