"""SPEC §2 (steps and workflows), §3 (objects) and §5 (management API) beyond the seed examples.

Real runs on real storage, no mocks. Executions are counted in files (see ``seedsteps``), so
the counts hold whether a step ran in a worker process or a thread.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

import keelflow
import seedsteps
from conftest import wait_until
from keelflow import workflow
from seedsteps import bump, count


class AppError(Exception):
    """An application exception with a field of its own (importable: pickled by reference)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self):
        return (type(self), (str(self), self.code))


class StubbornError(Exception):
    """Pickles (as every exception does, by its args) but cannot be rebuilt from them."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def dir_size(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# ==================================================================================================
# Import and exported names (SPEC §1, §5)
# ==================================================================================================


def test_both_import_styles_give_the_same_api():
    import keelflow as a
    from keelflow import workflow as b

    assert a is b
    for name in a.__all__:
        assert getattr(a, name) is getattr(b, name)
    assert b.workflow is b


EXPECTED_ALL = {
    "CANCELED",
    "FAILED",
    "RESUMABLE",
    "RUNNING",
    "SUCCESSFUL",
    "ActorNotFoundError",
    "EventListener",
    "CorruptCheckpointError",
    "InvalidIdError",
    "KeelflowError",
    "ObjectRef",
    "OutputNotReadyError",
    "SerializationError",
    "StepFunction",
    "StepNotFoundError",
    "StepOptions",
    "StorageError",
    "StorageFormatError",
    "StorageURLError",
    "Workflow",
    "WorkflowCancellationError",
    "WorkflowCancelledError",
    "WorkflowError",
    "WorkflowExecutionError",
    "WorkflowNotFoundError",
    "WorkflowRef",
    "WorkflowRunningError",
    "WorkflowStatus",
    "__version__",
    "cancel",
    "continuation",
    "create",
    "delete",
    "delete_actor",
    "event_listener",
    "get",
    "get_actor",
    "get_actor_metadata",
    "get_current_task_id",
    "get_current_workflow_id",
    "get_metadata",
    "get_output",
    "get_output_async",
    "get_status",
    "init",
    "list_actor_calls",
    "list_actors",
    "list_all",
    "options",
    "put",
    "receive_event",
    "resume",
    "resume_all",
    "resume_async",
    "run",
    "run_async",
    "salvage",
    "send_event",
    "shutdown",
    "sleep",
    "step",
    "submit",
    "virtual_actor",
    "wait",
    "wait_for_event",
    "workflow",
}


def test_all_is_pinned():
    assert sorted(keelflow.__all__) == sorted(EXPECTED_ALL)
    assert len(keelflow.__all__) == len(set(keelflow.__all__))
    for name in keelflow.__all__:
        assert hasattr(keelflow, name), name


def test_error_hierarchy():
    E = keelflow
    for cls in (
        E.WorkflowNotFoundError,
        E.StepNotFoundError,
        E.ActorNotFoundError,
        E.WorkflowExecutionError,
        E.WorkflowCancelledError,
        E.WorkflowRunningError,
        E.SerializationError,
        E.InvalidIdError,
        E.StorageError,
        E.OutputNotReadyError,
    ):
        assert issubclass(cls, E.KeelflowError), cls
    assert issubclass(E.InvalidIdError, ValueError)
    # What Ray Workflows 1.x raised in their place, so its except clauses still catch them.
    for cls in (E.WorkflowNotFoundError, E.StepNotFoundError, E.WorkflowCancelledError, E.OutputNotReadyError):
        assert issubclass(cls, ValueError), cls
    assert issubclass(E.WorkflowRunningError, RuntimeError)
    assert issubclass(E.ActorNotFoundError, KeyError)
    assert issubclass(E.StorageURLError, E.StorageError) and issubclass(E.StorageURLError, ValueError)
    assert issubclass(E.CorruptCheckpointError, E.StorageError)
    assert issubclass(E.StorageFormatError, E.StorageError)
    assert issubclass(E.KeelflowError, Exception)
    assert [s.value for s in E.WorkflowStatus] == ["RUNNING", "FAILED", "RESUMABLE", "CANCELED", "SUCCESSFUL"]


# ==================================================================================================
# Step functions: signature check, options (SPEC §2)
# ==================================================================================================


def test_step_arguments_are_checked_at_step_time(kf):
    @workflow.step
    def f(a, b, *, c=1):
        return a + b + c

    with pytest.raises(TypeError):
        f.step(1)
    with pytest.raises(TypeError):
        f.step(1, 2, 3)
    with pytest.raises(TypeError):
        f.step(1, 2, d=4)
    with pytest.raises(TypeError):
        seedsteps.add.step(1, 2, b=3)
    # Nothing ran or was stored.
    assert workflow.list_all() == []
    assert f.step(1, 2, c=3).run() == 6


BAD_OPTIONS = [
    ("max_retries", -1),
    ("max_retries", 1.5),
    ("max_retries", "3"),
    ("max_retries", True),
    ("catch_exceptions", "yes"),
    ("catch_exceptions", 1),
    ("retry_exceptions", "ValueError"),
    ("retry_exceptions", (ValueError, 3)),
    ("retry_exceptions", (int,)),
    ("num_cpus", -1),
    ("num_cpus", "2"),
    ("num_gpus", -0.5),
    ("resources", {"db": -1}),
    ("resources", {"db": "many"}),
    ("resources", ["db"]),
    ("name", ""),
    ("name", 3),
    ("metadata", "not a dict"),
    ("metadata", {"x": object()}),
    ("no_such_option", 1),
]


@pytest.mark.parametrize(("option", "value"), BAD_OPTIONS, ids=[f"{o}={v!r}" for o, v in BAD_OPTIONS])
def test_bad_options_are_refused_when_given(option, value):
    def f():
        return 1

    errors = (TypeError, ValueError, workflow.SerializationError)
    with pytest.raises(errors, match=option):
        workflow.step(**{option: value})(f)
    good = workflow.step(f)
    with pytest.raises(errors, match=option):
        good.options(**{option: value})


def test_good_options_are_accepted():
    def f():
        return 1

    workflow.step(
        name="n",
        max_retries=0,
        catch_exceptions=True,
        retry_exceptions=(ValueError, KeyError),
        num_cpus=0.5,
        num_gpus=0,
        resources={"db": 1},
        metadata={"a": [1, "x", None]},
    )(f)
    workflow.step(retry_exceptions=False)(f)


def test_options_merge_and_do_not_mutate_the_original(kf, tmp_path):
    attempts = str(tmp_path / "attempts")

    @workflow.step(max_retries=1, name="base", metadata={"k": 1})
    def fails():
        bump(attempts)
        raise ValueError("no")

    catching = fails.options(catch_exceptions=True)
    renamed = catching.options(name="renamed")
    assert catching is not fails and renamed is not catching

    # The copy keeps max_retries=1 (2 attempts) and the metadata, and adds catch_exceptions.
    result, err = catching.step().run(workflow_id="catching")
    assert result is None and isinstance(err, ValueError)
    assert count(attempts) == 2
    meta = workflow.get_metadata("catching", name="base")
    assert meta["step_options"]["max_retries"] == 1
    assert meta["step_options"]["catch_exceptions"] is True
    assert meta["user_metadata"] == {"k": 1}

    assert renamed.step().run(workflow_id="renamed")[1] is not None
    assert workflow.get_metadata("renamed", name="renamed")["step_options"]["catch_exceptions"] is True

    # The original is unchanged: it still fails the workflow.
    with pytest.raises(workflow.WorkflowExecutionError):
        fails.step().run(workflow_id="original")
    meta = workflow.get_metadata("original", name="base")
    assert meta["step_options"]["catch_exceptions"] is False
    assert meta["step_options"]["name"] == "base"


# ==================================================================================================
# Arguments, DAG shape (SPEC §2)
# ==================================================================================================


def test_nested_arguments_at_several_levels(kf):
    one, add, identity = seedsteps.one, seedsteps.add, seedsteps.identity
    arg = {
        "a": [one.step(), (one.step(), {"b": add.step(1, 2), "c": [[add.step(2, 2)]]})],
        "d": 5,
        "e": (),
    }
    assert identity.step(arg).run() == {"a": [1, (1, {"b": 3, "c": [[4]]})], "d": 5, "e": ()}

    @workflow.step
    def kw(x, *, y, z):
        return (x, y, z)

    assert kw.step([one.step()], y={"k": (one.step(),)}, z=add.step(one.step(), 1)).run() == ([1], {"k": (1,)}, 2)


def test_a_node_used_twice_runs_once(kf, tmp_path):
    path = str(tmp_path / "count")
    shared = seedsteps.counted.step(path, 5)

    @workflow.step
    def combine(total, rest):
        return total + rest[0] + rest[1]["again"]

    assert combine.step(seedsteps.add.step(shared, shared), [shared, {"again": shared}]).run() == 20
    assert count(path) == 1
    # A new workflow built from the same node runs it again, once.
    assert seedsteps.add.step(shared, shared).run() == 10
    assert count(path) == 2


def test_run_async_returns_a_ref(kf):
    ref = seedsteps.add.step(1, 2).run_async(workflow_id="async")
    assert isinstance(ref, workflow.ObjectRef)
    assert workflow.get(ref) == 3
    assert workflow.get_status("async") == workflow.WorkflowStatus.SUCCESSFUL
    assert workflow.get_output("async") == 3


def test_generated_workflow_ids_are_unique(kf):
    for i in range(10):
        assert seedsteps.add.step(i, 0).run() == i
    refs = [seedsteps.add.step(i, 1).run_async() for i in range(10)]
    assert [workflow.get(r) for r in refs] == [i + 1 for i in range(10)]
    ids = [wid for wid, _ in workflow.list_all()]
    assert len(ids) == 20
    assert len(set(ids)) == 20
    assert {workflow.get_output(wid) for wid in ids} == set(range(11))


def test_run_of_a_successful_id_returns_the_stored_output(kf, tmp_path):
    path = str(tmp_path / "count")
    assert seedsteps.counted.step(path, 7).run(workflow_id="once") == 7
    assert seedsteps.counted.step(path, 7).run(workflow_id="once") == 7
    # Even another DAG under the same id does not start a second copy.
    assert seedsteps.counted.step(path, 8).run(workflow_id="once") == 7
    assert workflow.get(seedsteps.counted.step(path, 9).run_async(workflow_id="once")) == 7
    assert count(path) == 1


def test_run_of_a_running_id_waits_for_it(kf, tmp_path):
    gate, started = tmp_path / "gate", tmp_path / "started"
    try:
        first = seedsteps.wait_for_flag.step(str(gate), str(started), "first").run_async(workflow_id="w")
        wait_until(lambda: count(started) >= 1, what="the step to start")
        second = seedsteps.wait_for_flag.step(str(gate), str(started), "second").run_async(workflow_id="w")
        gate.touch()
        assert workflow.get(first) == "first"
        assert workflow.get(second) == "first"
        assert count(started) == 1
    finally:
        gate.touch()


def test_run_of_a_failed_id_resumes_it_as_ray_did(kf, tmp_path):
    flag = tmp_path / "flag"
    wf = seedsteps.needs_flag.options(max_retries=0).step(str(flag), str(tmp_path / "n"), 1)
    with pytest.raises(workflow.WorkflowExecutionError):
        wf.run(workflow_id="failed")
    with pytest.raises(workflow.WorkflowExecutionError):
        wf.run(workflow_id="failed")  # resumed: the failed step ran again, and failed again
    assert count(tmp_path / "n") == 2
    assert workflow.get_status("failed") == workflow.WorkflowStatus.FAILED
    flag.touch()
    assert wf.run(workflow_id="failed") == workflow.get_output("failed")
    assert count(tmp_path / "n") == 3 and workflow.get_status("failed") == workflow.WorkflowStatus.SUCCESSFUL


@pytest.mark.parametrize("bad_id", ["a/b", "..", "a/../b", "", "tab\there", "nl\n", "nul\x00"])
def test_bad_workflow_ids_are_refused(kf, bad_id):
    with pytest.raises(workflow.InvalidIdError):
        seedsteps.one.step().run(workflow_id=bad_id)
    with pytest.raises(ValueError):
        workflow.get_status(bad_id)
    assert workflow.list_all() == []


# ==================================================================================================
# Failures and retries (SPEC §2)
# ==================================================================================================


def _failing(path: str, exc: BaseException, succeed_after: int | None = None):
    @workflow.step
    def flaky():
        n = bump(path)
        if succeed_after is not None and n > succeed_after:
            return n
        raise exc

    return flaky


def test_retry_exceptions_tuple(kf, tmp_path):
    listed = str(tmp_path / "listed")
    wf = _failing(listed, ValueError("v"), succeed_after=2).options(retry_exceptions=(ValueError,), max_retries=5)
    assert wf.step().run() == 3
    assert count(listed) == 3

    subclass = str(tmp_path / "subclass")
    wf = _failing(subclass, KeyError("k")).options(retry_exceptions=(LookupError,), max_retries=2)
    with pytest.raises(workflow.WorkflowExecutionError) as info:
        wf.step().run()
    assert isinstance(info.value.__cause__, KeyError)
    assert count(subclass) == 3  # retried: KeyError is a LookupError

    other = str(tmp_path / "other")
    wf = _failing(other, TypeError("t"), succeed_after=1).options(
        retry_exceptions=(ValueError, KeyError), max_retries=5
    )
    with pytest.raises(workflow.WorkflowExecutionError) as info:
        wf.step().run()
    assert isinstance(info.value.__cause__, TypeError)
    assert count(other) == 1  # not listed: fails at once

    never = str(tmp_path / "never")
    wf = _failing(never, ValueError("v"), succeed_after=1).options(retry_exceptions=False)
    with pytest.raises(workflow.WorkflowExecutionError):
        wf.step().run()
    assert count(never) == 1


def test_max_retries_zero_runs_once(kf, tmp_path):
    path = str(tmp_path / "n")
    with pytest.raises(workflow.WorkflowExecutionError):
        _failing(path, RuntimeError("x"), succeed_after=1).options(max_retries=0).step().run()
    assert count(path) == 1


def test_catch_exceptions_after_retries(kf, tmp_path):
    path = str(tmp_path / "n")
    result, err = _failing(path, AppError("bad", 7)).options(max_retries=2, catch_exceptions=True).step().run()
    assert result is None
    assert type(err) is AppError and str(err) == "bad" and err.code == 7
    assert count(path) == 3

    # Not retryable: caught after the first attempt.
    once = str(tmp_path / "once")
    result, err = (
        _failing(once, KeyError("k")).options(retry_exceptions=(ValueError,), catch_exceptions=True).step().run()
    )
    assert result is None and isinstance(err, KeyError)
    assert count(once) == 1

    # Success within the retries: (result, None).
    ok = str(tmp_path / "ok")
    assert _failing(ok, ValueError("v"), succeed_after=1).options(catch_exceptions=True).step().run() == (2, None)


def test_workflow_execution_error_names_workflow_step_and_cause(kf, tmp_path):
    @workflow.step
    def upstream():
        return 1

    @workflow.step(name="exploding", max_retries=0)
    def boom(x):
        raise AppError(f"boom {x}", 42)

    with pytest.raises(workflow.WorkflowExecutionError) as info:
        boom.step(upstream.step()).run(workflow_id="wf-err")
    err = info.value
    assert err.workflow_id == "wf-err"
    assert err.step_name == "exploding"
    assert type(err.__cause__) is AppError
    assert str(err.__cause__) == "boom 1" and err.__cause__.code == 42
    assert "wf-err" in str(err) and "exploding" in str(err)
    assert workflow.get_status("wf-err") == workflow.WorkflowStatus.FAILED

    # get_output of the failed workflow raises the same kind of error.
    with pytest.raises(workflow.WorkflowExecutionError) as info2:
        workflow.get_output("wf-err")
    assert info2.value.step_name == "exploding"
    assert type(info2.value.__cause__) is AppError


def test_an_exception_that_cannot_be_rebuilt_keeps_its_type_and_message(kf):
    """SPEC §9: a clear error naming what was wrong. The step's exception pickles but cannot be
    unpickled (a classic: a required __init__ argument not in args); the error the user gets
    must still say which exception the step raised, and its message."""

    @workflow.step(max_retries=0, name="stubborn")
    def stubborn():
        raise StubbornError("the real reason", 7)

    with pytest.raises(workflow.WorkflowExecutionError) as info:
        stubborn.step().run(workflow_id="stubborn")
    assert info.value.step_name == "stubborn"
    text = f"{info.value} | {info.value.__cause__}"
    assert "StubbornError" in text
    assert "the real reason" in text


def test_errors_pickle_round_trip_with_their_fields():
    cases = [
        workflow.WorkflowNotFoundError(workflow_id="w"),
        workflow.StepNotFoundError(workflow_id="w", step_name="s"),
        workflow.ActorNotFoundError(actor_id="a"),
        workflow.WorkflowExecutionError(workflow_id="w", step_name="s"),
        workflow.WorkflowCancelledError(workflow_id="w"),
        workflow.WorkflowRunningError(workflow_id="w"),
        workflow.CorruptCheckpointError(path="workflows/w/journal"),
        workflow.SerializationError("cannot pickle a lock"),
        workflow.InvalidIdError("bad id"),
        workflow.StorageError("unreachable"),
        workflow.StorageFormatError("newer format"),
        workflow.StorageURLError("unknown scheme 'ftp'"),
        workflow.OutputNotReadyError(workflow_id="w", step_name="s"),
        workflow.KeelflowError("plain"),
    ]
    for err in cases:
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err)
        assert str(back) == str(err) and str(err)
        for field in ("workflow_id", "step_name", "actor_id", "path"):
            if hasattr(err, field):
                assert getattr(back, field) == getattr(err, field), field
    assert cases[1].workflow_id == "w" and cases[1].step_name == "s"
    assert cases[6].path == "workflows/w/journal"


def test_real_execution_error_pickles(kf):
    @workflow.step(max_retries=0, name="bad")
    def bad():
        raise ValueError("v")

    with pytest.raises(workflow.WorkflowExecutionError) as info:
        bad.step().run(workflow_id="p")
    back = pickle.loads(pickle.dumps(info.value))
    assert (back.workflow_id, back.step_name, str(back)) == ("p", "bad", str(info.value))


# ==================================================================================================
# Step names (SPEC §5)
# ==================================================================================================


def test_step_names_are_unique_with_suffixes(kf):
    x = seedsteps.identity.options(name="x")
    wf = seedsteps.total.step([x.step(1), x.step(2), x.step(3)])
    assert wf.run(workflow_id="names") == 6
    assert {workflow.get_output("names", name=n) for n in ("x", "x_1", "x_2")} == {1, 2, 3}
    assert {workflow.get_metadata("names", name=n)["name"] for n in ("x", "x_1", "x_2")} == {"x", "x_1", "x_2"}
    with pytest.raises(workflow.StepNotFoundError):
        workflow.get_output("names", name="x_3")
    assert workflow.get_output("names", name="seedsteps.total") == 6


def test_step_names_stay_unique_across_dynamic_continuations(kf):
    assert seedsteps.fib.step(5).run(workflow_id="fib") == 5
    # fib(5) makes 15 fib steps and 7 add steps.
    for i in range(15):
        workflow.get_metadata("fib", name="seedsteps.fib" + (f"_{i}" if i else ""))
    for i in range(7):
        workflow.get_metadata("fib", name="seedsteps.add" + (f"_{i}" if i else ""))
    with pytest.raises(workflow.StepNotFoundError):
        workflow.get_metadata("fib", name="seedsteps.fib_15")
    with pytest.raises(workflow.StepNotFoundError):
        workflow.get_metadata("fib", name="seedsteps.add_7")
    # The root's output is the continuation's output.
    assert workflow.get_output("fib", name="seedsteps.fib") == 5


def test_unknown_step_name(kf):
    seedsteps.one.step().run(workflow_id="w")
    with pytest.raises(workflow.StepNotFoundError) as info:
        workflow.get_output("w", name="nope")
    assert info.value.workflow_id == "w" and info.value.step_name == "nope"
    with pytest.raises(workflow.StepNotFoundError):
        workflow.get_metadata("w", name="nope")
    with pytest.raises(workflow.StepNotFoundError):
        workflow.get(workflow.get_output_async("w", name="nope"))


# ==================================================================================================
# Management API (SPEC §5)
# ==================================================================================================

UNKNOWN_ID_CALLS = {
    "get_status": lambda wid: workflow.get_status(wid),
    "get_output": lambda wid: workflow.get_output(wid),
    "get_output_name": lambda wid: workflow.get_output(wid, name="x"),
    "get_output_async": lambda wid: workflow.get(workflow.get_output_async(wid)),
    "resume": lambda wid: workflow.resume(wid),
    "resume_async": lambda wid: workflow.get(workflow.resume_async(wid)),
    "cancel": lambda wid: workflow.cancel(wid),
    "delete": lambda wid: workflow.delete(wid),
    "get_metadata": lambda wid: workflow.get_metadata(wid),
    "get_metadata_name": lambda wid: workflow.get_metadata(wid, name="x"),
}


@pytest.mark.parametrize("call", list(UNKNOWN_ID_CALLS))
def test_unknown_workflow_id(kf, call):
    seedsteps.one.step().run(workflow_id="exists")
    with pytest.raises(workflow.WorkflowNotFoundError) as info:
        UNKNOWN_ID_CALLS[call]("missing")
    assert info.value.workflow_id == "missing"
    assert "missing" in str(info.value)
    assert workflow.list_all() == [("exists", workflow.WorkflowStatus.SUCCESSFUL)]


def test_api_without_init_uses_the_env_storage(tmp_path):
    # conftest points KEELFLOW_STORAGE at tmp_path/default-storage and shut keelflow down.
    with pytest.raises(workflow.WorkflowNotFoundError):
        workflow.get_status("nothing")
    assert seedsteps.add.step(1, 2).run(workflow_id="implicit") == 3
    assert (tmp_path / "default-storage").is_dir()
    workflow.shutdown()
    workflow.init(str(tmp_path / "default-storage"))
    assert workflow.get_output("implicit") == 3


def test_delete(kf, tmp_path):
    assert seedsteps.add.step(1, 2).run(workflow_id="gone") == 3
    workflow.delete("gone")
    with pytest.raises(workflow.WorkflowNotFoundError):
        workflow.get_status("gone")
    with pytest.raises(workflow.WorkflowNotFoundError):
        workflow.get_metadata("gone")
    with pytest.raises(workflow.WorkflowNotFoundError):
        workflow.delete("gone")
    assert workflow.list_all() == []


def test_delete_refuses_a_running_workflow(kf, tmp_path):
    gate, started = tmp_path / "gate", tmp_path / "started"
    try:
        ref = seedsteps.wait_for_flag.step(str(gate), str(started)).run_async(workflow_id="busy")
        wait_until(lambda: count(started) >= 1, what="the step to start")
        with pytest.raises(workflow.WorkflowRunningError):
            workflow.delete("busy")
        gate.touch()
        assert workflow.get(ref) == "done"
        workflow.delete("busy")
    finally:
        gate.touch()


def test_cancel_a_running_workflow(kf, tmp_path):
    never, started = tmp_path / "never", tmp_path / "started"
    after = str(tmp_path / "after")
    try:
        wf = seedsteps.counted.step(after, seedsteps.wait_for_flag.step(str(never), str(started)))
        ref = wf.run_async(workflow_id="c")
        wait_until(lambda: count(started) >= 1, what="the step to start")
        meta = workflow.get_metadata("c")
        assert meta["status"] == "RUNNING"
        assert isinstance(meta["stats"]["start_time"], float)
        assert "end_time" not in meta["stats"] or meta["stats"]["end_time"] is None

        workflow.cancel("c")
        assert workflow.get_status("c") == workflow.WorkflowStatus.CANCELED
        with pytest.raises(workflow.WorkflowCancelledError) as info:
            workflow.get_output("c")
        assert info.value.workflow_id == "c"
        with pytest.raises(workflow.WorkflowCancelledError):
            workflow.get(ref)
        with pytest.raises(workflow.WorkflowCancelledError):
            workflow.resume("c")
        assert workflow.get_metadata("c")["status"] == "CANCELED"
        # Cancelling again is harmless.
        workflow.cancel("c")
        assert workflow.get_status("c") == workflow.WorkflowStatus.CANCELED
        assert count(after) == 0
    finally:
        never.touch()


def test_resume_of_a_failed_workflow_reruns_only_the_failed_step(kf, tmp_path):
    flag = str(tmp_path / "flag")
    c = {k: str(tmp_path / k) for k in ("a", "b", "sum", "check", "down")}
    a = seedsteps.counted.step(c["a"], 1)
    b = seedsteps.counted.step(c["b"], 2)
    total = seedsteps.counted_add.step(c["sum"], a, b)
    checked = seedsteps.needs_flag.options(max_retries=0).step(flag, c["check"], total)
    wf = seedsteps.counted.step(c["down"], checked)

    with pytest.raises(workflow.WorkflowExecutionError) as info:
        wf.run(workflow_id="r")
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert workflow.get_status("r") == workflow.WorkflowStatus.FAILED
    assert {k: count(p) for k, p in c.items()} == {"a": 1, "b": 1, "sum": 1, "check": 1, "down": 0}

    Path(flag).touch()  # fix the cause
    assert workflow.resume("r") == 3
    assert workflow.get_status("r") == workflow.WorkflowStatus.SUCCESSFUL
    assert {k: count(p) for k, p in c.items()} == {"a": 1, "b": 1, "sum": 1, "check": 2, "down": 1}
    assert workflow.get_output("r") == 3
    assert workflow.resume("r") == 3  # resuming a finished workflow returns its output
    assert count(c["down"]) == 1


def test_resume_async_returns_a_ref(kf, tmp_path):
    flag = tmp_path / "flag"
    with pytest.raises(workflow.WorkflowExecutionError):
        seedsteps.needs_flag.options(max_retries=0).step(str(flag), str(tmp_path / "n"), "v").run(workflow_id="ra")
    flag.touch()
    ref = workflow.resume_async("ra")
    assert isinstance(ref, workflow.ObjectRef)
    assert workflow.get(ref) == "v"


def test_metadata_that_is_not_json_is_refused(kf):
    with pytest.raises((TypeError, ValueError, workflow.SerializationError), match="metadata"):
        seedsteps.one.step().run(workflow_id="m", metadata={"x": {1, 2}})
    with pytest.raises(workflow.WorkflowNotFoundError):
        workflow.get_status("m")  # nothing stored
    with pytest.raises((TypeError, ValueError, workflow.SerializationError), match="metadata"):
        seedsteps.one.options(metadata={"f": len})


def test_list_all_filters(kf, tmp_path):
    seedsteps.one.step().run(workflow_id="s1")
    seedsteps.one.step().run(workflow_id="s2")
    with pytest.raises(workflow.WorkflowExecutionError):
        seedsteps.needs_flag.options(max_retries=0).step(str(tmp_path / "f"), str(tmp_path / "n"), 1).run(
            workflow_id="f1"
        )
    S = workflow.WorkflowStatus
    assert sorted(workflow.list_all()) == [("f1", S.FAILED), ("s1", S.SUCCESSFUL), ("s2", S.SUCCESSFUL)]
    assert sorted(workflow.list_all(S.SUCCESSFUL)) == [("s1", S.SUCCESSFUL), ("s2", S.SUCCESSFUL)]
    assert workflow.list_all("FAILED") == [("f1", S.FAILED)]
    assert sorted(workflow.list_all({S.FAILED, "SUCCESSFUL"})) == sorted(workflow.list_all())
    assert workflow.list_all([S.CANCELED, S.RESUMABLE]) == []
    for _, status in workflow.list_all():
        assert isinstance(status, S)


# ==================================================================================================
# Objects (SPEC §3)
# ==================================================================================================


def test_put_stores_a_snapshot(kf):
    value = {"items": [1, 2]}
    ref = workflow.put(value)
    value["items"].append(3)
    value["new"] = True
    assert workflow.get(ref) == {"items": [1, 2]}

    @workflow.step
    def read(r):
        assert isinstance(r, workflow.ObjectRef)
        return workflow.get(r)

    assert read.step(ref).run() == {"items": [1, 2]}


def test_one_ref_passed_to_many_steps_is_stored_once(kf, storage):
    blob = os.urandom(1_000_000)  # incompressible
    ref = workflow.put(blob)

    @workflow.step
    def size(r):
        assert isinstance(r, workflow.ObjectRef)
        return len(workflow.get(r))

    wf = seedsteps.total.step([size.step(ref) for _ in range(8)])
    assert wf.run(workflow_id="shared") == 8_000_000
    assert dir_size(storage) < 2_500_000, "the object was stored more than once"


def test_refs_nested_in_outputs(kf):
    @workflow.step
    def make():
        return {"a": [workflow.put(1), (workflow.put("two"),)], "plain": 3}

    @workflow.step
    def use(structure):
        a = structure["a"]
        assert isinstance(a[0], workflow.ObjectRef) and isinstance(a[1][0], workflow.ObjectRef)
        return workflow.get(a[0]), workflow.get(a[1][0]), structure["plain"]

    assert use.step(make.step()).run(workflow_id="nested") == (1, "two", 3)
    out = workflow.get_output("nested", name=f"{make.__module__}.{make.__qualname__}")
    assert workflow.get(out["a"][0]) == 1
    assert workflow.get(out["a"][1][0]) == "two"
    # Nested refs in the workflow's own output arrive as refs too (only a top-level ref is resolved).
    out = make.step().run()
    assert isinstance(out["a"][0], workflow.ObjectRef)
    assert workflow.get([out["a"][0], out["a"][1][0]]) == [1, "two"]


def test_refs_passed_into_workflows_inside_nesting(kf):
    refs = [workflow.put(i) for i in range(3)]

    @workflow.step
    def total(d):
        return sum(workflow.get(r) for r in d["refs"]) + workflow.get(d["one"][0])

    assert total.step({"refs": refs, "one": (refs[1],)}).run() == 4


def test_a_step_returning_a_ref_feeds_its_value_downstream(kf):
    """Seed style: the downstream step reads what it receives with workflow.get."""

    @workflow.step
    def produce():
        return workflow.put([1, 2, 3])

    @workflow.step
    def consume(x):
        return sum(workflow.get(x))

    assert consume.step(produce.step()).run() == 6
    assert produce.step().run() == [1, 2, 3]  # a ref as the workflow's output is resolved


def test_a_step_returning_a_ref_passes_a_ref_downstream(kf):
    """SPEC §2: "An object ref returned as the *workflow's* output is resolved"; §3: refs can be
    returned from steps, and an object is checkpointed when first returned from a step. So a
    step's returned ref reaches the next step as a ref (as nested refs do), not as its value."""

    @workflow.step
    def produce():
        return workflow.put([1, 2, 3])

    @workflow.step
    def consume(x):
        return type(x).__name__, isinstance(x, workflow.ObjectRef)

    assert consume.step(produce.step()).run()[1] is True


def test_get_of_plain_values_and_lists(kf):
    assert workflow.get(5) == 5
    assert workflow.get("s") == "s"
    assert workflow.get(None) is None
    assert workflow.get([workflow.put(1), workflow.put("b")]) == [1, "b"]
    assert workflow.get([]) == []
    refs = [seedsteps.add.step(i, i).run_async() for i in range(3)]
    assert workflow.get(refs) == [0, 2, 4]


def test_get_inside_a_step_on_its_own_workflow_refuses(kf):
    @workflow.step(max_retries=0)
    def selfish(wid):
        return workflow.get(workflow.get_output_async(wid))

    with pytest.raises(workflow.WorkflowExecutionError) as info:
        selfish.step("selfish").run(workflow_id="selfish")
    cause = info.value.__cause__
    assert isinstance(cause, workflow.KeelflowError)
    assert "selfish" in str(cause)


# ==================================================================================================
# Deep workflows (SPEC §2: "to any depth without Python recursion limits")
# ==================================================================================================


def test_deep_dynamic_recursion(kf):
    assert seedsteps.countdown.step(3000).run(workflow_id="deep") == 0
    assert workflow.get_output("deep") == 0


def test_deep_static_chain_built_in_a_loop(storage):
    workflow.init(storage, executor="thread")
    node = seedsteps.one.step()
    for _ in range(2000):
        node = seedsteps.add.step(node, 1)
    assert node.run(workflow_id="chain") == 2001
    assert workflow.get_output("chain", name="seedsteps.add_1999") in range(2, 2002)


# ==================================================================================================
# init, storage, resources (SPEC §5, §5b)
# ==================================================================================================


def test_memory_storage(executor):
    workflow.init("memory://", executor=executor)
    assert seedsteps.fib.step(7).run(workflow_id="mem") == 13
    assert workflow.get_status("mem") == workflow.WorkflowStatus.SUCCESSFUL
    assert workflow.get_output("mem") == 13
    assert workflow.list_all() == [("mem", workflow.WorkflowStatus.SUCCESSFUL)]
    ref = workflow.put([1, 2])

    @workflow.step
    def read(r):
        return workflow.get(r)

    assert read.step(ref).run() == [1, 2]


def test_init_twice(storage, executor, tmp_path):
    workflow.init(storage, executor=executor)
    workflow.init(storage, executor=executor)  # same arguments: nothing happens
    assert seedsteps.one.step().run(workflow_id="w") == 1
    with pytest.raises(workflow.KeelflowError, match="shutdown"):
        workflow.init(str(tmp_path / "other"), executor=executor)
    with pytest.raises(workflow.KeelflowError):
        workflow.init(storage, executor="thread" if executor == "local" else "local")
    with pytest.raises(workflow.KeelflowError):
        workflow.init(storage, executor=executor, resources={"db": 1})
    assert workflow.get_output("w") == 1  # still on the first storage
    workflow.shutdown()
    workflow.init(str(tmp_path / "other"), executor=executor)
    with pytest.raises(workflow.WorkflowNotFoundError):
        workflow.get_status("w")


@pytest.mark.timeout(60)
def test_step_needing_more_cpus_than_the_machine_fails_clearly(kf):
    cpus = os.cpu_count() or 1
    with pytest.raises(workflow.KeelflowError, match="CPU"):
        seedsteps.one.options(num_cpus=cpus + 1).step().run()


def test_declared_num_cpus(storage, executor):
    if executor == "ray":
        pytest.skip("on Ray, resources are declared by `ray start`; test_ray.py covers placement")
    workflow.init(storage, executor=executor, num_cpus=64)
    assert seedsteps.one.options(num_cpus=48).step().run() == 1


@pytest.mark.timeout(60)
def test_custom_resources_declared_at_init(storage, executor):
    if executor == "ray":
        pytest.skip("on Ray, resources are declared by `ray start`; test_ray.py covers placement")
    workflow.init(storage, executor=executor, resources={"db": 2})
    needs_two = seedsteps.one.options(resources={"db": 2}).step()
    assert seedsteps.add.options(resources={"db": 1}).step(1, needs_two).run() == 2
    with pytest.raises(workflow.KeelflowError, match="db"):
        seedsteps.one.options(resources={"db": 3}).step().run()
    with pytest.raises(workflow.KeelflowError, match="tpu"):
        seedsteps.one.options(resources={"tpu": 1}).step().run()
