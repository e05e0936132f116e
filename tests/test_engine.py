"""Engine contracts that are not visible through results alone: writes per step, the journal
as the source of truth, code-version records, torn tails."""

from __future__ import annotations

import logging
import os
import textwrap

import pytest

import keelflow as workflow
from conftest import run_python
from keelflow.engine.journal import Journal
from keelflow.serialization import frame
from keelflow.storage.base import Lease, Storage
from keelflow.storage.file import FileStorage


class CountingStorage(Storage):
    """Wraps a real backend and counts the durable writes the engine asks for."""

    can_append = True

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.url = inner.url
        self.appends = 0
        self.durable_puts = 0

    def get(self, key):
        return self.inner.get(key)

    def put(self, key, data, *, durable=True):
        self.durable_puts += durable
        self.inner.put(key, data, durable=durable)

    def put_if_absent(self, key, data):
        self.durable_puts += 1
        return self.inner.put_if_absent(key, data)

    def append(self, key, data):
        self.appends += 1
        self.inner.append(key, data)

    def children(self, prefix):
        return self.inner.children(prefix)

    def delete_prefix(self, prefix):
        self.inner.delete_prefix(prefix)

    def acquire_lease(self, key, owner) -> Lease | None:
        return self.inner.acquire_lease(key, owner)

    def lease_held(self, key):
        return self.inner.lease_held(key)

    def location(self, key):
        return self.inner.location(key)

    def close(self):
        self.inner.close()


@workflow.step
def inc(x):
    return x + 1


@workflow.step
def one(i):
    return 1


@workflow.step
def total(xs):
    return sum(xs)


@pytest.mark.parametrize("executor", ["local", "thread"])
def test_one_durable_write_per_step_and_batching(storage, executor):
    counting = CountingStorage(FileStorage(storage))
    workflow.init(counting, executor=executor)
    x = inc.step(0)
    for _ in range(49):
        x = inc.step(x)
    before = counting.appends, counting.durable_puts
    assert x.run(workflow_id="chain") == 50
    # The start record, then one append per step; nothing else is flushed.
    assert counting.appends - before[0] == 1 + 50
    assert counting.durable_puts - before[1] == 0

    before = counting.appends
    assert total.step([one.step(i) for i in range(300)]).run(workflow_id="fan") == 300
    appends = counting.appends - before
    assert appends <= 1 + 301
    records = Journal(counting, "fan").read()
    done = [r[1] for r in records if r[0] == "done"]
    assert sorted(done) == list(range(301))  # each step checkpointed exactly once


def test_status_index_is_rebuilt_from_the_journal(kf, storage):
    assert inc.step(1).run(workflow_id="w") == 2
    os.unlink(os.path.join(storage, "workflows", "w", "status"))
    assert kf.get_status("w") == kf.WorkflowStatus.SUCCESSFUL
    assert kf.list_all() == [("w", kf.WorkflowStatus.SUCCESSFUL)]
    with open(os.path.join(storage, "workflows", "w", "status"), "w") as f:
        f.write('{"status": "RUN')  # a torn index file, as a crash could leave
    assert kf.get_status("w") == kf.WorkflowStatus.SUCCESSFUL


def test_torn_tail_is_ignored_and_cut_before_the_next_append(kf, storage):
    assert inc.step(1).run(workflow_id="w") == 2
    path = os.path.join(storage, "workflows", "w", "journal")
    size = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(frame(b"x" * 100)[:30])  # a record cut off mid-write
    assert kf.get_output("w") == 2
    assert os.path.getsize(path) == size + 30  # reading never writes
    journal = Journal(FileStorage(storage), "w")
    journal.read()
    assert journal.torn == (size, size + 30)
    journal.cut_torn_tail()
    assert os.path.getsize(path) == size


def test_newer_journal_format_is_refused(kf, storage):
    from keelflow.serialization import dump_record

    path = os.path.join(storage, "workflows", "future", "journal")
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(frame(dump_record(("start", {"format": 7}, ([], [], {}), 0.0))))
    with pytest.raises(workflow.StorageFormatError, match="format 7"):
        kf.get_output("future")


def test_resume_under_changed_code_says_so(tmp_path, storage):
    module = tmp_path / "mod" / "flaky_mod.py"
    module.parent.mkdir()
    flag = tmp_path / "flag"
    module.write_text(
        textwrap.dedent(
            f"""
            import os
            import keelflow as workflow

            @workflow.step
            def first():
                return 20

            @workflow.step
            def second(x):
                if not os.path.exists({str(flag)!r}):
                    raise RuntimeError("not yet")
                return x + 1
            """
        )
    )
    driver = (
        "import sys, logging; sys.path.insert(0, sys.argv[2]); logging.basicConfig(level=logging.INFO)\n"
        "import keelflow as workflow, flaky_mod\n"
        "workflow.init(sys.argv[1])\n"
        "if sys.argv[3] == 'run':\n"
        "    try:\n"
        "        flaky_mod.second.options(max_retries=0).step(flaky_mod.first.step()).run(workflow_id='w')\n"
        "    except workflow.WorkflowExecutionError as e:\n"
        "        print('failed', e.step_name)\n"
        "else:\n"
        "    print('resumed', workflow.resume('w'))\n"
    )
    first = run_python(driver, storage, str(module.parent), "run", timeout=60)
    assert "failed flaky_mod.second" in first.stdout, first.stderr
    flag.write_text("go")
    module.write_text(module.read_text().replace("return x + 1", "return x + 2  # fixed"))
    second = run_python(driver, storage, str(module.parent), "resume", timeout=60)
    assert "resumed 22" in second.stdout, second.stderr
    assert "flaky_mod.second changed since workflow w started" in second.stderr
    assert "flaky_mod.first changed" not in second.stderr


def test_step_failure_and_retry_are_logged_with_ids(kf, caplog):
    @workflow.step(max_retries=1)
    def broken():
        raise KeyError("missing")

    with caplog.at_level(logging.INFO, logger="keelflow"), pytest.raises(workflow.WorkflowExecutionError):
        broken.step().run(workflow_id="logged")
    records = [r for r in caplog.records if getattr(r, "workflow_id", None) == "logged"]
    messages = [r.getMessage() for r in records]
    assert any("started" in m for m in messages)
    assert any("retrying" in m for m in messages)
    assert any("failed" in m and "KeyError" in m for m in messages)
    assert any("finished: FAILED" in m for m in messages)
    assert all(getattr(r, "step_name", "x") for r in records)
    step_records = [r for r in records if "retrying" in r.getMessage() or "KeyError" in r.getMessage()]
    assert step_records and all(r.step_name.endswith("broken") for r in step_records)


@workflow.step
def count_into(path, value):
    with open(path, "a") as f:
        f.write("x\n")
    return value * 2


def test_concurrent_runs_of_one_id_start_it_once(kf, tmp_path):
    import threading

    log = str(tmp_path / "runs.log")
    results: list[int] = []
    errors: list[BaseException] = []

    def go() -> None:
        try:
            results.append(count_into.step(log, 21).run(workflow_id="once"))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert results == [42] * 8
    with open(log) as f:
        assert f.read().count("x") == 1


@workflow.step
def inner_times_ten(x):
    return x * 10


@workflow.step
def starts_a_workflow(x):
    # A separate workflow started from inside a step, with a deterministic id (the pattern
    # for long-running work that must not be started twice).
    return inner_times_ten.step(x).run(workflow_id=f"inner-{x}")


def test_a_step_can_start_a_separate_workflow(kf):
    assert starts_a_workflow.step(4).run(workflow_id="outer") == 40
    assert dict(kf.list_all()) == {
        "inner-4": kf.WorkflowStatus.SUCCESSFUL,
        "outer": kf.WorkflowStatus.SUCCESSFUL,
    }


def test_memory_storage_with_a_local_executor_refuses_api_calls_inside_steps_clearly():
    workflow.init("memory://", executor="local")
    with pytest.raises(workflow.WorkflowExecutionError) as info:
        starts_a_workflow.options(max_retries=0).step(1).run()
    assert "lives only in the parent process" in str(info.value.__cause__)


@workflow.step
def big_object():
    return workflow.put(b"x" * (3 << 20))  # above the inline limit: stored as a blob


@workflow.step
def size_of(ref):
    return len(workflow.get(ref))


def test_a_large_object_is_stored_once_and_read_once_for_many_steps(storage):
    counting = CountingStorage(FileStorage(storage))
    gets: list[str] = []
    inner_get = counting.get

    def get(key):
        if "/blobs/" in key:
            gets.append(key)
        return inner_get(key)

    counting.get = get  # type: ignore[method-assign]
    workflow.init(counting, executor="thread")
    ref = big_object.step()
    assert total.step([size_of.step(ref) for _ in range(8)]).run(workflow_id="big") == 8 * (3 << 20)
    blobs = os.listdir(os.path.join(storage, "workflows", "big", "blobs"))
    assert len(blobs) == 1
    assert len(gets) == 1


@workflow.step(max_retries=0)
def explode(x):
    raise ValueError(f"bad input {x}")


@workflow.step
def deeper(x, fail):
    # A continuation inside the continuation: the failure is two levels down.
    return explode.step(x) if fail else inc.step(x)


@workflow.step
def plan(x, fail):
    return inc.step(deeper.step(x, fail))


@workflow.step
def describe(outcome):
    value, error = outcome
    return f"error: {error}" if error is not None else f"value: {value}"


def test_catch_exceptions_covers_the_sub_workflow_a_step_returns(kf):
    caught_plan = plan.options(catch_exceptions=True)
    assert describe.step(caught_plan.step(1, False)).run(workflow_id="ok") == "value: 3"
    assert describe.step(caught_plan.step(1, True)).run(workflow_id="bad") == "error: bad input 1"
    assert kf.get_status("bad") == kf.WorkflowStatus.SUCCESSFUL
    value, error = kf.get_output("bad", name=f"{__name__}.plan")
    assert value is None and isinstance(error, ValueError)
    with pytest.raises(workflow.WorkflowExecutionError) as info:
        plan.step(1, True).run(workflow_id="uncaught")
    assert isinstance(info.value.__cause__, ValueError)
    assert kf.get_status("uncaught") == kf.WorkflowStatus.FAILED
