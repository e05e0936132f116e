# ruff: noqa: SIM300, RUF059 - Yoda asserts and unused unpacked names are the seeds' own spelling
"""Durable virtual actors (SPEC §6), end to end: the seeds' actor examples ported by their
import line, ordering, read-only concurrency, non-JSON state, bad input, the management API,
actor method steps in workflow DAGs and actor handles passed into steps.

Actor classes defined inside a test travel by value (cloudpickle); the ``actorsteps`` ones by
reference. Waits use flag files, so ordering is asserted by timestamps, never by durations.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

import actorsteps
import seedsteps
from actorsteps import Bag, Counter, Faulty, JsonCounter, Point, Recorder, ShoppingCart, Slow
from conftest import run_python, wait_until
from keelflow import workflow
from seedsteps import count, wait_for_file


@pytest.fixture
def env_executor(executor, monkeypatch):
    """For seeds that call a bare ``workflow.init()``: storage and executor come from the env."""
    monkeypatch.setenv("KEELFLOW_EXECUTOR", executor)
    return executor


@pytest.fixture
def wf(storage, monkeypatch):
    """keelflow on a fresh directory, for tests whose actors run no steps (executor-independent).
    Fresh processes started by the test find the same storage through the environment."""
    monkeypatch.setenv("KEELFLOW_STORAGE", storage)
    workflow.init(storage)
    yield workflow
    workflow.shutdown()


def in_fresh_process(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Run ``code`` in a new interpreter on the same storage; its stdout (it must succeed)."""
    done = run_python(code, *args, env=env, timeout=60)
    assert done.returncode == 0, f"fresh process failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture
def flag(tmp_path):
    """A flag file that blocked actor calls wait for. It is created at teardown too, so a failing
    test leaves no call blocked while keelflow shuts down (list this fixture last)."""
    path = tmp_path / "flag"
    yield str(path)
    path.touch()


def idle(actor_id: str) -> bool:
    return workflow.get_actor_metadata(actor_id)["status"] == "IDLE"


# ==================================================================================================
# Seeds: virtual-actors.rst, virtual-actors-extended.txt, book examples 8-4, 8-10 .. 8-13
# ==================================================================================================


def test_virtual_actors_rst_counter(env_executor):
    @workflow.virtual_actor
    class Counter:
        def __init__(self, init_val):
            self._val = init_val

        def incr(self, val=1):
            self._val += val
            print(self._val)

        @workflow.virtual_actor.readonly
        def value(self):
            return self._val

        def __getstate__(self):
            return self._val

        def __setstate__(self, val):
            self._val = val

    workflow.init()

    # Initialize a Counter actor with id="my_counter".
    counter = Counter.get_or_create("my_counter", 0)

    # Similar to workflow steps, actor methods support:
    # - `run()`, which will return the value
    # - `run_async()`, which will return a ObjectRef
    counter.incr.run(10)
    assert counter.value.run() == 10

    # Non-blocking execution.
    counter.incr.run_async(10)
    counter.incr.run(10)
    assert 30 == workflow.get(counter.value.run_async())

    # The state is what __getstate__ returned.
    assert workflow.get_actor_metadata("my_counter")["state"] == 30

    # "We can retrieve the actor via its workflow_id in another process" (the seed's
    # id "counter" is a typo for "my_counter").
    out = in_fresh_process(
        "from keelflow import workflow\n"
        "counter = workflow.get_actor(workflow_id='my_counter')\n"
        "assert 30 == counter.value.run()\n"
        "print('seen', counter.value.run())\n"
    )
    assert "seen 30" in out


def test_virtual_actors_extended_counter_json_state(env_executor):
    # The extended document's Counter, with the decorators its rendering dropped: no
    # __getstate__, so the instance __dict__ (JSON) is the state.
    @workflow.virtual_actor
    class Counter:
        def __init__(self, init_val):
            self._val = init_val

        def incr(self, val=1):
            self._val += val

        @workflow.virtual_actor.readonly
        def value(self):
            return self._val

    workflow.init()

    # Initialize a Counter actor with id="my_counter".
    counter = Counter.get_or_create("my_counter", 0)

    # Similar to workflow steps, actor methods support:
    # - `run()`, which will return the value
    # - `run_async()`, which will return a ObjectRef
    counter.incr.run(10)
    assert counter.value.run() == 10

    # Non-blocking execution.
    counter.incr.run_async(10)
    counter.incr.run(10)
    assert 30 == workflow.get(counter.value.run_async())
    assert workflow.get_actor_metadata("my_counter")["state"] == {"_val": 30}


def test_virtual_actors_extended_sub_workflow_blocks_later_calls(kf, tmp_path, flag):
    """The "bad" long-lived sub-workflow: queued mutating calls wait for it to finish."""
    log = str(tmp_path / "ship.log")
    cart = ShoppingCart.get_or_create("cart-bad", "o1", log, flag)
    cart.add_item.run("a")
    cart.add_item.run("b")

    checkout = cart.do_checkout_blocking.run_async()
    wait_until(lambda: count(log) == 1, what="the shipping step to start")
    later = cart.add_item.run_async("c")

    calls = kf.list_actor_calls("cart-bad")
    assert [(c["method"], c["status"]) for c in calls] == [
        ("add_item", "SUCCESSFUL"),
        ("add_item", "SUCCESSFUL"),
        ("do_checkout_blocking", "RUNNING"),
        ("add_item", "QUEUED"),
    ]
    assert calls[2]["workflow_id"] == "cart-bad.do_checkout_blocking.2"
    assert not later.done()

    Path(flag).touch()
    assert workflow.get(checkout) == 2  # the items at checkout time
    assert workflow.get(later) == 3
    calls = kf.list_actor_calls("cart-bad")
    assert calls[3]["start_time"] >= calls[2]["end_time"]
    assert kf.get_status("cart-bad.do_checkout_blocking.2") == kf.WorkflowStatus.SUCCESSFUL
    assert count(log) == 1


def test_example_8_4_counter(storage, executor):
    @workflow.virtual_actor
    class counter:
        def __init__(self):
            self.count = 0

        def incr(self):
            self.count += 1
            return self.count

    workflow.init(storage=storage, executor=executor)

    # The seed's ``c1`` is a typo for ``workflow1``.
    workflow1 = counter.get_or_create("counter_workflw")
    assert workflow1.incr.run() == 1
    assert workflow1.incr.run() == 2


def test_example_8_10_workflow_management_with_actors(env_executor):
    @workflow.virtual_actor
    class Counter:
        def __init__(self, init_val):
            self._val = init_val

        def incr(self, val=1):
            self._val += val
            print(self._val)

        @workflow.virtual_actor.readonly
        def value(self):
            return self._val

    workflow.init()

    # Initialize a Counter actor with id="my_counter".
    counter = Counter.get_or_create("my_counter", 0)

    # Similar to workflow steps, actor methods support:
    # - `run()`, which will return the value
    # - `run_async()`, which will return a ObjectRef
    counter.incr.run(10)
    assert counter.value.run() == 10

    # Nonblocking execution.
    counter.incr.run_async(10)
    counter.incr.run(10)
    assert 30 == workflow.get(counter.value.run_async())


def test_example_8_11_sub_workflows(kf):
    @workflow.step
    def double(s):
        return 2 * s

    @workflow.virtual_actor
    class Actor:
        def __init__(self):
            self.val = 1

        def double(self, update):
            step = double.step(self.val)
            if not update:
                # Inside the method, a workflow can be launched
                return step
            else:
                # Workflow can also be passed to another method
                return self.update.step(step)

        def update(self, v):
            self.val = v
            return self.val

    handler = Actor.get_or_create("actor")
    assert handler.double.run(False) == 2
    assert handler.double.run(False) == 2
    assert handler.double.run(True) == 2
    assert handler.double.run(True) == 4

    assert kf.get_actor_metadata("actor")["state"] == {"val": 4}
    calls = kf.list_actor_calls("actor")
    assert [c["workflow_id"] for c in calls] == [f"actor.double.{i}" for i in range(4)]
    assert all(c["status"] == "SUCCESSFUL" for c in calls)
    assert [kf.get_output(f"actor.double.{i}") for i in range(4)] == [2, 2, 2, 4]


def test_chained_method_step_in_a_returned_workflow_many_times(kf):
    """Example 8-11's ``self.update.step(...)`` chain, repeated: the chained call must always run
    inside the call that returned the workflow, never be queued behind it (that would deadlock)."""
    d = actorsteps.Doubler.get_or_create("doubler")
    for i in range(1, 31):
        # A bounded wait: a chained call queued behind its own caller would never finish.
        assert d.double.run_async(True).result(timeout=20) == 2**i
    assert kf.get_actor_metadata("doubler")["state"] == {"val": 2**30}
    assert [c["method"] for c in kf.list_actor_calls("doubler")] == ["double"] * 30


def test_example_8_12_machine_learning_workflow(kf):
    import numpy as np
    import pandas as pd
    from sklearn import base
    from sklearn.base import BaseEstimator
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    @workflow.virtual_actor
    class estimator_virtual_actor:
        def __init__(self, estimator: BaseEstimator):
            if estimator is not None:
                self.estimator = estimator

        def fit(self, inputtuple):
            (X, y, mode) = inputtuple
            if base.is_classifier(self.estimator) or base.is_regressor(self.estimator):
                self.estimator.fit(X, y)
                return X, y, mode
            else:
                X = self.estimator.fit_transform(X)
                return X, y, mode

        @workflow.virtual_actor.readonly
        def predict(self, inputtuple):
            (X, y, mode) = inputtuple
            if base.is_classifier(self.estimator) or base.is_regressor(self.estimator):
                pred_y = self.estimator.predict(X)
                return X, pred_y, mode
            else:
                X = self.estimator.transform(X)
                return X, y, mode

        def run_workflow_step(self, inputtuple):
            (X, y, mode) = inputtuple
            if mode == "fit":
                return self.fit(inputtuple)
            elif mode == "predict":
                return self.predict(inputtuple)

        def __getstate__(self):
            return self.estimator

        def __setstate__(self, estimator):
            self.estimator = estimator

    ## Prepare the data
    X = pd.DataFrame(np.random.randint(0, 100, size=(10000, 4)), columns=list("ABCD"))
    y = pd.DataFrame(np.random.randint(0, 2, size=(10000, 1)), columns=["Label"])

    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2)

    @workflow.step
    def scaling(inputtuple, name):
        va = estimator_virtual_actor.get_or_create(name, StandardScaler())
        outputtuple = va.run_workflow_step.run_async(inputtuple)
        return outputtuple

    @workflow.step
    def classification(inputtuple, name):
        va = estimator_virtual_actor.get_or_create(name, DecisionTreeClassifier(max_depth=3))
        outputtuple = va.run_workflow_step.run_async(inputtuple)
        return outputtuple

    training_tuple = (X_train, y_train, "fit")
    classification.step(scaling.step(training_tuple, "standardscalar"), "decisiontree").run("training_pipeline")

    predict_tuple = (X_test, y_test, "predict")
    (X, pred_y, mode) = classification.step(scaling.step(predict_tuple, "standardscalar"), "decisiontree").run(
        "prediction_pipeline"
    )
    assert pred_y.shape[0] == 2000

    # The fitted models are the actors' state, usable from this process too.
    assert kf.list_actors() == ["decisiontree", "standardscalar"]
    scaler = kf.get_actor_metadata("standardscalar")["state"]
    assert scaler.mean_.shape == (4,)
    tree = kf.get_actor("decisiontree")
    _, again, _ = tree.predict.run((scaler.transform(X_test), None, "predict"))
    assert (again == pred_y).all()
    # Training called each actor's mutating method once; prediction did too (mode "predict").
    for actor_id in ("standardscalar", "decisiontree"):
        assert [c["status"] for c in kf.list_actor_calls(actor_id)] == ["SUCCESSFUL", "SUCCESSFUL"]


def test_example_8_13_non_blocking_checkout(kf, tmp_path, flag):
    log = str(tmp_path / "ship.log")
    cart = ShoppingCart.get_or_create("cart", "order1", log, flag)
    cart.add_item.run("a")
    cart.add_item.run("b")

    # do_checkout returns while the shipping workflow still waits for the flag.
    assert cart.do_checkout.run() == "ship_order1"
    assert kf.get_status("ship_order1") == kf.WorkflowStatus.RUNNING
    assert cart.shipment_status.run() == kf.WorkflowStatus.RUNNING
    # Mutating calls are not blocked by the shipment.
    assert cart.add_item.run("c") == 3

    # Checking out again with the same order id does not start a second shipment.
    assert cart.do_checkout.run() == "ship_order1"
    wait_until(lambda: count(log) >= 1, what="the shipping step to start")

    Path(flag).touch()
    assert kf.get_output("ship_order1") == 2  # the first checkout's items
    assert cart.shipment_status.run() == kf.WorkflowStatus.SUCCESSFUL
    assert cart.do_checkout.run() == "ship_order1"  # after it finished, too
    assert kf.get_output("ship_order1") == 2
    assert count(log) == 1
    assert [w for w, _ in kf.list_all() if w.startswith("ship_")] == ["ship_order1"]
    assert kf.get_actor_metadata("cart")["state"]["shipment_workflow_id"] == "ship_order1"


def test_get_actor_from_a_fresh_process_sees_the_state(wf):
    counter = Counter.get_or_create("my_counter", 0)
    counter.incr.run(10)
    counter.incr.run_async(10)
    counter.incr.run(10)

    # A class defined here travels by value: the fresh process has no copy of this test.
    @workflow.virtual_actor
    class Greeter:
        def __init__(self, name):
            self.names = [name]

        def greet(self, name):
            self.names.append(name)
            return "hello " + ", ".join(self.names)

        @workflow.virtual_actor.readonly
        def who(self):
            return self.names

    assert Greeter.get_or_create("greeter", "ann").greet.run("bob") == "hello ann, bob"

    out = in_fresh_process(
        "import json\n"
        "from keelflow import workflow\n"
        "c = workflow.get_actor('my_counter')\n"
        "g = workflow.get_actor('greeter')\n"
        "print(json.dumps([c.value.run(), c.incr.run(5), g.who.run(), g.greet.run('cy')]))\n"
    )
    assert json.loads(out.strip().splitlines()[-1]) == [30, 35, ["ann", "bob"], "hello ann, bob, cy"]

    # This process sees what the other one committed, and carries on from it.
    assert counter.value.run() == 35
    assert counter.incr.run(1) == 36
    assert workflow.get_actor("greeter").greet.run("dee") == "hello ann, bob, cy, dee"


# ==================================================================================================
# Ordering
# ==================================================================================================


def test_run_async_calls_apply_in_submission_order(wf):
    rec = Recorder.get_or_create("rec")
    refs = [rec.append.run_async(i) for i in range(100)]
    assert [workflow.get(r) for r in refs] == list(range(1, 101))
    assert rec.get.run() == list(range(100))

    calls = wf.list_actor_calls("rec")
    assert [c["seq"] for c in calls] == list(range(100))
    assert all(c["status"] == "SUCCESSFUL" for c in calls)
    starts = [c["start_time"] for c in calls]
    assert starts == sorted(starts)


def test_calls_queued_by_another_process_run_in_its_order(wf, flag):
    """While this process runs a call, another one's calls go through the inbox: still in order."""
    rec = Recorder.get_or_create("rec")
    held = rec.hold.run_async(flag)
    out = in_fresh_process(
        "import json, sys\n"
        "from pathlib import Path\n"
        "from keelflow import workflow\n"
        "rec = workflow.get_actor('rec')\n"
        "refs = [rec.append.run_async(i) for i in range(50)]\n"
        "Path(sys.argv[1]).touch()\n"
        "print(json.dumps([workflow.get(r) for r in refs]))\n",
        flag,
    )
    assert json.loads(out.strip().splitlines()[-1]) == list(range(1, 51))
    assert workflow.get(held) == "held"
    assert rec.get.run() == list(range(50))
    assert [c["method"] for c in wf.list_actor_calls("rec")] == ["hold"] + ["append"] * 50


# ==================================================================================================
# Read-only calls run concurrently with a mutating call, on the last committed state
# ==================================================================================================


def test_readonly_calls_overlap_a_slow_call_and_see_committed_state(wf, tmp_path, flag):
    started = str(tmp_path / "started")
    s = Slow.get_or_create("slow")
    s.set.run(5)
    slow = s.slow.run_async(started, flag, 6)
    assert wait_for_file(started, 30)

    peeks = [s.peek.run() for _ in range(3)]
    peeks += [workflow.get(r) for r in [s.peek.run_async() for _ in range(3)]]
    # And from another process, which also must not see the in-progress state.
    out = in_fresh_process(
        "import json\nfrom keelflow import workflow\nprint(json.dumps(workflow.get_actor('slow').peek.run()))\n"
    )
    peeks.append(tuple(json.loads(out.strip().splitlines()[-1])))
    assert not slow.done()
    Path(flag).touch()

    slow_start, slow_end = workflow.get(slow)
    for start, seen, end in peeks:
        assert slow_start <= start <= end <= slow_end
        assert seen == 5
    assert s.peek.run()[1] == 6
    assert wf.get_actor_metadata("slow")["state"] == {"val": 6}


# ==================================================================================================
# Non-JSON state via __getstate__ / __setstate__
# ==================================================================================================


def test_getstate_state_survives_a_fresh_process(wf):
    bag = Bag.get_or_create("bag")
    assert bag.add.run("a") == 1
    assert bag.add.run("b") == 2
    assert bag.move.run(1, 2) == Point(1, 2)
    assert wf.get_actor_metadata("bag")["state"] == {"tags": {"a", "b"}, "origin": Point(1, 2)}

    out = in_fresh_process(
        "from keelflow import workflow\n"
        "from actorsteps import Point\n"
        "bag = workflow.get_actor('bag')\n"
        "tags, origin = bag.snapshot.run()\n"
        "assert tags == {'a', 'b'} and isinstance(tags, set), tags\n"
        "assert origin == Point(1, 2), origin\n"
        "assert bag.add.run('c') == 3\n"
        "print('ok')\n"
    )
    assert out.strip().endswith("ok")

    tags, origin = bag.snapshot.run()
    assert tags == {"a", "b", "c"}
    assert isinstance(origin, Point)
    assert bag.add.run("d") == 4
    assert workflow.get_actor("bag").snapshot.run() == ({"a", "b", "c", "d"}, Point(1, 2))


# ==================================================================================================
# Bad input
# ==================================================================================================


def test_unknown_actor_id(wf):
    with pytest.raises(workflow.ActorNotFoundError, match="nope"):
        workflow.get_actor("nope")
    with pytest.raises(workflow.ActorNotFoundError):
        workflow.get_actor_metadata("nope")
    with pytest.raises(workflow.ActorNotFoundError):
        workflow.list_actor_calls("nope")
    with pytest.raises(workflow.ActorNotFoundError):
        workflow.delete_actor("nope")
    assert workflow.list_actors() == []


@pytest.mark.parametrize("bad", ["a/b", "..", "tab\there", "nul\x00", "new\nline", ""])
def test_invalid_actor_ids(wf, bad):
    with pytest.raises(workflow.InvalidIdError):
        workflow.get_actor(bad)
    with pytest.raises(workflow.InvalidIdError):
        Counter.get_or_create(bad, 0)
    with pytest.raises(ValueError):  # InvalidIdError is a ValueError too
        workflow.get_actor_metadata(bad)
    with pytest.raises(workflow.InvalidIdError):
        workflow.delete_actor(bad)
    assert workflow.list_actors() == []


def _serialization_error(exc: BaseException) -> workflow.SerializationError:
    """A state that cannot be stored fails the call with SerializationError (SPEC §5)."""
    assert isinstance(exc, workflow.SerializationError), exc
    return exc


def test_non_json_state_without_getstate_fails_the_call_and_keeps_the_last_good_state(wf):
    f = Faulty.get_or_create("faulty", 1)
    assert f.incr.run() == 2

    with pytest.raises(workflow.SerializationError) as info:
        f.bad_state.run()
    err = _serialization_error(info.value)
    assert "'thing'" in str(err)
    assert "__getstate__" in str(err)

    assert f.value.run() == 2
    assert wf.get_actor_metadata("faulty")["state"] == {"val": 2}
    assert f.incr.run() == 3  # the next call works, on the last good state

    # The same through run_async, with a call queued behind it.
    bad = f.bad_state.run_async()
    after = f.incr.run_async(10)
    with pytest.raises(workflow.SerializationError) as info:
        workflow.get(bad)
    assert "'thing'" in str(_serialization_error(info.value))
    assert workflow.get(after) == 13
    assert wf.get_actor_metadata("faulty")["state"] == {"val": 13}


def test_unserializable_argument_is_refused_before_queueing(wf):
    f = Faulty.get_or_create("faulty")
    with pytest.raises(workflow.SerializationError, match=r"Faulty\.incr"):
        f.incr.run(threading.Lock())
    with pytest.raises(workflow.SerializationError):
        f.incr.run_async(threading.Lock())
    assert wf.list_actor_calls("faulty") == []
    assert f.incr.run(1) == 1


def test_failing_call_commits_nothing_and_later_calls_still_run(wf):
    f = Faulty.get_or_create("faulty", 1)
    first = f.incr.run_async(1)
    failing = f.boom.run_async("bad input")
    behind = f.incr.run_async(2)

    assert workflow.get(first) == 2
    with pytest.raises(workflow.WorkflowExecutionError) as info:
        workflow.get(failing)
    assert isinstance(info.value.__cause__, actorsteps.Boom)
    assert str(info.value.__cause__) == "bad input"
    assert workflow.get(behind) == 4  # boom's += 100 was not kept
    with pytest.raises(workflow.WorkflowExecutionError):
        failing.result()

    with pytest.raises(workflow.WorkflowExecutionError, match="Boom") as info:
        f.boom.run("again")
    assert type(info.value.__cause__) is actorsteps.Boom
    assert f.value.run() == 4
    assert wf.get_actor_metadata("faulty")["state"] == {"val": 4}
    assert f.incr.run() == 5


def test_wrong_arguments_name_the_method(wf):
    f = Faulty.get_or_create("faulty")
    with pytest.raises(TypeError, match=r"Faulty\.incr"):
        f.incr.run(1, 2, 3)
    with pytest.raises(TypeError, match=r"Faulty\.incr"):
        f.incr.run_async(bogus=1)
    with pytest.raises(TypeError, match="incr"):
        f.incr.step(1, 2, 3)
    with pytest.raises(TypeError, match=r"Faulty\.value"):
        f.value.run(1)
    with pytest.raises(TypeError, match=r"Faulty\.boom"):
        f.boom.run()
    with pytest.raises(AttributeError, match="nope"):
        f.nope  # noqa: B018 - the attribute access is what fails
    assert wf.list_actor_calls("faulty") == []

    with pytest.raises(TypeError):
        Counter.get_or_create("no-init-arg")
    assert wf.list_actors() == ["faulty"]


def test_get_or_create_on_an_existing_id_ignores_new_init_args(wf):
    c = Counter.get_or_create("c", 5)
    assert c.incr.run() == 6
    again = Counter.get_or_create("c", 100)
    assert again.value.run() == 6
    assert again.incr.run(1) == 7
    assert wf.get_actor_metadata("c")["state"] == 7


# ==================================================================================================
# Management API
# ==================================================================================================


def test_list_metadata_and_calls(wf):
    for actor_id in ("b", "c"):
        JsonCounter.get_or_create(actor_id)
    f = Faulty.get_or_create("a", 1)
    assert wf.list_actors() == ["a", "b", "c"]

    before = time.time()
    assert f.incr.run() == 2
    with pytest.raises(workflow.WorkflowExecutionError):
        f.boom.run("no")
    assert f.sub.run(3) == 6  # returns a workflow: its output is the call's result

    wait_until(lambda: idle("a"), what="the actor to go idle")
    meta = wf.get_actor_metadata("a")
    assert meta["actor_id"] == "a"
    assert meta["class"] == "actorsteps.Faulty"
    assert meta["status"] == "IDLE"
    assert meta["state"] == {"val": 2}
    stats = meta["stats"]
    assert (stats["calls"], stats["failed"], stats["queued"]) == (3, 1, 0)
    assert stats["created"] <= before <= stats["last_call_time"]

    calls = wf.list_actor_calls("a")
    assert [(c["seq"], c["method"], c["status"]) for c in calls] == [
        (0, "incr", "SUCCESSFUL"),
        (1, "boom", "FAILED"),
        (2, "sub", "SUCCESSFUL"),
    ]
    assert calls[0]["error"] is None and calls[0]["workflow_id"] is None
    assert "Boom" in calls[1]["error"] and "no" in calls[1]["error"]
    assert calls[2]["workflow_id"] == "a.sub.2"
    assert wf.get_output("a.sub.2") == 6
    for c in calls:
        assert c["submitted"] <= c["start_time"] <= c["end_time"]
    assert [c["method"] for c in wf.list_actor_calls("a", status="FAILED")] == ["boom"]
    assert [c["method"] for c in wf.list_actor_calls("a", status="SUCCESSFUL")] == ["incr", "sub"]
    assert wf.list_actor_calls("b") == []
    assert wf.get_actor_metadata("b")["stats"]["calls"] == 0


def test_metadata_while_a_call_runs(wf, flag):
    rec = Recorder.get_or_create("rec")
    held = rec.hold.run_async(flag)
    rec.append.run_async(1)
    last = rec.append.run_async(2)

    assert wf.get_actor_metadata("rec")["status"] == "RUNNING"
    assert [(c["method"], c["status"]) for c in wf.list_actor_calls("rec")] == [
        ("hold", "RUNNING"),
        ("append", "QUEUED"),
        ("append", "QUEUED"),
    ]
    assert len(wf.list_actor_calls("rec", status="QUEUED")) == 2

    # Another process sees it running and may not delete it.
    out = in_fresh_process(
        "from keelflow import workflow\n"
        "assert workflow.get_actor_metadata('rec')['status'] == 'RUNNING'\n"
        "try:\n"
        "    workflow.delete_actor('rec')\n"
        "except workflow.WorkflowRunningError as e:\n"
        "    print('refused:', e)\n"
    )
    assert "refused:" in out

    Path(flag).touch()
    assert workflow.get(held) == "held"
    assert workflow.get(last) == 2
    wait_until(lambda: idle("rec"), what="the actor to go idle")
    assert [c["status"] for c in wf.list_actor_calls("rec")] == ["SUCCESSFUL"] * 3
    assert wf.get_actor_metadata("rec")["stats"]["queued"] == 0


def test_delete_actor(wf):
    f = Faulty.get_or_create("doomed", 1)
    assert f.sub.run(2) == 4
    assert f.sub.run(5) == 10
    keep = Faulty.get_or_create("kept", 1)
    assert keep.sub.run(1) == 2
    # list_all() lists the actors too (as Ray Workflows 1.x did), beside their calls' workflows.
    assert {w for w, _ in wf.list_all()} == {"doomed", "kept", "doomed.sub.0", "doomed.sub.1", "kept.sub.0"}

    wait_until(lambda: idle("doomed"), what="the actor to go idle")
    wf.delete_actor("doomed")
    with pytest.raises(workflow.ActorNotFoundError):
        workflow.get_actor("doomed")
    with pytest.raises(workflow.ActorNotFoundError):
        wf.get_actor_metadata("doomed")
    with pytest.raises(workflow.ActorNotFoundError):
        wf.delete_actor("doomed")
    assert wf.list_actors() == ["kept"]
    assert [w for w, _ in wf.list_all()] == ["kept.sub.0", "kept"]  # newest first
    assert keep.value.run() == 1

    # The id is free again: a new actor starts from its own init args.
    again = Faulty.get_or_create("doomed", 7)
    assert again.value.run() == 7
    assert wf.list_actor_calls("doomed") == []


# ==================================================================================================
# Actor method steps in workflow DAGs; handles passed into steps
# ==================================================================================================


def test_actor_method_step_in_a_workflow_dag_runs_once(kf, tmp_path, flag):
    c = JsonCounter.get_or_create("ctr", 10)
    dag = c.incr.step(seedsteps.add.step(1, 2))
    assert dag.run(workflow_id="dag") == 13
    # Running the same workflow id again returns its stored output; the call is not repeated.
    assert c.incr.step(seedsteps.add.step(1, 2)).run(workflow_id="dag") == 13
    assert c.value.run() == 13

    # A read-only method as a step.
    assert seedsteps.add.step(c.value.step(), 1).run() == 14

    # A workflow that fails after its actor step: resuming it does not apply the call again.
    attempts = str(tmp_path / "attempts")
    check = seedsteps.needs_flag.options(max_retries=0)
    with pytest.raises(workflow.WorkflowExecutionError):
        check.step(flag, attempts, c.incr.step(seedsteps.add.step(1, 2))).run(workflow_id="resumed")
    assert c.value.run() == 16
    Path(flag).touch()
    assert kf.resume("resumed") == 16
    assert count(attempts) == 2
    assert c.value.run() == 16
    assert [c["method"] for c in kf.list_actor_calls("ctr")] == ["incr", "incr"]


def test_actor_handles_passed_into_steps(kf):
    c = JsonCounter.get_or_create("shared", 0)
    assert actorsteps.incr_via_handle.step(c, 5).run() == 5

    # Several steps call the same actor at once (worker processes with the local executor).
    results = seedsteps.identity.step([actorsteps.incr_via_handle.step(c, 1) for _ in range(4)]).run()
    assert sorted(results) == [6, 7, 8, 9]
    assert actorsteps.read_via_handle.step(c).run() == 9
    assert c.value.run() == 9
    wait_until(lambda: idle("shared"), what="the actor to go idle")
    assert [x["status"] for x in kf.list_actor_calls("shared")] == ["SUCCESSFUL"] * 5


@workflow.virtual_actor
class Direct:
    def __init__(self):
        self.v = 0

    def direct(self, x):
        # The returned workflow is nothing but a chained method step: it must run inside
        # this call, not queue behind it.
        return self.update.step(x)

    def update(self, x):
        self.v += x
        return self.v


def test_a_method_returning_only_a_chained_step_never_waits_on_itself(storage):
    workflow.init(storage, executor="thread")
    for i in range(40):
        handle = Direct.get_or_create(f"direct-{i}")
        assert handle.direct.run_async(2).result(timeout=30) == 2
        assert handle.direct.run_async(3).result(timeout=30) == 5


@workflow.step
def call_back(actor_id):
    return workflow.get_actor(actor_id).bump.run()


@workflow.virtual_actor
class SelfCaller:
    def __init__(self):
        self.n = 0

    def bump(self):
        self.n += 1
        return self.n

    def via_step(self):
        # A step of this call's own workflow waiting for another call of the same actor
        # would wait forever; keelflow refuses it with an explanation instead.
        return call_back.step("self-caller")


def test_a_step_inside_a_call_cannot_wait_for_its_own_actor(kf):
    handle = SelfCaller.get_or_create("self-caller")
    with pytest.raises(workflow.WorkflowExecutionError) as info:
        handle.via_step.run_async().result(timeout=60)
    assert "Chain it instead" in str(info.value)
    assert handle.bump.run() == 1  # the refused call changed nothing; the actor goes on
