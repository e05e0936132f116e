"""The S3 backend against a real S3-compatible server (moto, on 127.0.0.1).

The storage contract itself runs on S3 in test_storage.py and test_backends.py; these are the
parts only an object store has: URLs and errors, leases kept by conditional writes and a
heartbeat (taken over only after a dead holder's ttl), and whole workflows shared between
processes through a bucket.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import keelflow as workflow
from conftest import wait_until
from keelflow.errors import StorageError
from keelflow.storage import open_storage
from keelflow.storage.s3 import CLOCK_SKEW, S3Storage
from s3server import s3_url

# Fixtures: the session's S3 server (one per session), and a fresh bucket per test.

KEY = "wf/x/lease"


def spawn(code: str, *args: str) -> subprocess.Popen[str]:
    """A Python subprocess running ``code``; it inherits the test server's credentials."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def line(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    """The next line ``proc`` prints, waiting at most ``timeout``."""
    assert proc.stdout is not None
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    assert got, f"no output from the subprocess within {timeout} s"
    return got[0].strip()


def finish(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()


def stored_lease(store, key: str = KEY) -> dict:
    return json.loads(store.get(key))


def dead_lease(*, released: bool) -> bytes:
    """A lease object as a holder that died (or released it) a minute ago left it."""
    return json.dumps(
        {"owner": "gone", "token": "0" * 32, "expires": time.time() - 60, "ttl": 1.0, "released": released}
    ).encode()


# -- URLs and errors ---------------------------------------------------------------------------
def test_url_round_trips_and_locations_name_objects(s3_bucket):
    url = s3_url(s3_bucket, "team/flows", lease_seconds=2.5)
    store = open_storage(url)
    assert isinstance(store, S3Storage)
    assert store.url == url and store.lease_seconds == 2.5
    again = open_storage(store.url)
    assert (again.bucket, again.prefix, again.endpoint_url, again.lease_seconds) == (
        store.bucket,
        store.prefix,
        store.endpoint_url,
        store.lease_seconds,
    )
    store.put("a/b", b"shared")
    assert again.get("a/b") == b"shared"
    assert store.location("a/b") == f"s3://{s3_bucket}/team/flows/a/b"
    assert open_storage(s3_url(s3_bucket)).location("a/b") == f"s3://{s3_bucket}/a/b"
    # The default ttl is left out of the URL; other options stay in it.
    plain = open_storage(f"s3://{s3_bucket}/p")
    assert plain.url == f"s3://{s3_bucket}/p" and plain.lease_seconds == 10
    store.close()
    again.close()
    plain.close()


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("s3://", "names no bucket"),
        ("s3:///just/a/prefix", "names no bucket"),
        ("s3://127.0.0.1:9000/bucket", "not a bucket name"),
        ("s3://bucket/p?lease_seconds=soon", "lease_seconds"),
        ("s3://bucket/p?lease_seconds=0", "lease_seconds"),
        ("s3://bucket/p?lease_seconds=nan", "lease_seconds"),
        ("s3://bucket/p?colour=blue", "unknown option 'colour'"),
        ("s3://bucket/p?addressing_style=sideways", "addressing_style"),
    ],
)
def test_bad_urls_are_named(url, named):
    with pytest.raises(StorageError, match=named):
        open_storage(url)


def test_core_import_does_not_load_boto3():
    code = (
        "import sys, keelflow\n"
        "from keelflow.storage import open_storage\n"
        "open_storage('memory://')\n"
        "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules, 'boto3 imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_missing_boto3_names_the_extra():
    code = (
        "import sys\n"
        "sys.modules['boto3'] = None\n"  # as if it were not installed
        "from keelflow.storage import open_storage\n"
        "from keelflow.errors import StorageError\n"
        "try:\n"
        "    open_storage('s3://bucket/prefix')\n"
        "except StorageError as e:\n"
        "    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pip install 'keelflow[s3]'" in done.stdout, done.stdout + done.stderr


def test_unreachable_endpoint_is_named(s3_bucket):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket closes
    url = f"s3://{s3_bucket}/p?endpoint_url=http://127.0.0.1:{port}"
    with pytest.raises(StorageError, match=f"cannot reach the S3 endpoint http://127.0.0.1:{port}") as info:
        workflow.init(url, executor="thread")  # botocore's retries are bounded: it gives up in seconds
    assert info.value.path == f"s3://{s3_bucket}/p/keelflow.json"


def test_missing_bucket_is_named(s3_server):
    url = s3_url("kf-no-such-bucket", "p")
    store = open_storage(url)
    with pytest.raises(StorageError, match="bucket 'kf-no-such-bucket' does not exist") as info:
        store.put("a/b", b"x")
    assert "s3://kf-no-such-bucket/p/a/b" in str(info.value)
    with pytest.raises(StorageError, match="kf-no-such-bucket"):
        store.children("")
    with pytest.raises(StorageError, match="kf-no-such-bucket"):
        workflow.init(url, executor="thread")
    store.close()


def test_listing_and_deleting_span_pages(s3_bucket):
    store = open_storage(s3_url(s3_bucket, "root"))
    store._page = 2  # S3 lists at most 1000 keys a page; make small pages to cross many
    names = [f"n{i}" for i in range(5)]
    for name in names:
        store.put(f"d/{name}", b".")
    for sub in ("s1", "s2", "s3"):
        store.put(f"d/{sub}/x/y", b".")
    store.put("d-sibling", b".")
    assert store.children("d") == sorted([*names, "s1", "s2", "s3"])
    store.delete_prefix("d")
    assert store.children("d") == []
    assert store.children("") == ["d-sibling"]  # a shared name prefix is not "below"
    store.close()


# -- leases ------------------------------------------------------------------------------------
HOLDER = """
import sys, time
from keelflow.storage import open_storage
store = open_storage(sys.argv[1])
lease = store.acquire_lease(sys.argv[2], b"child")
print("held" if lease else "refused", flush=True)
time.sleep(120)
"""


def test_killed_holders_lease_is_taken_over_only_after_it_expires(s3_bucket):
    url = s3_url(s3_bucket, "k", lease_seconds=1)
    store = open_storage(url)
    child = spawn(HOLDER, url, KEY)
    try:
        assert line(child) == "held"
        assert store.lease_held(KEY)
        assert store.acquire_lease(KEY, b"parent") is None
        assert stored_lease(store)["owner"] == "child"
    finally:
        child.send_signal(signal.SIGKILL)
        finish(child)
    # The dead holder's last renewal says when its lease ends; nobody may take it before.
    expires = stored_lease(store)["expires"]
    if time.time() < expires:
        assert store.lease_held(KEY)
        assert store.acquire_lease(KEY, b"parent") is None
    lease = wait_until(lambda: store.acquire_lease(KEY, b"parent"), what="takeover of the dead holder's lease")
    assert time.time() > expires + CLOCK_SKEW
    assert lease.held and store.lease_held(KEY)
    assert stored_lease(store)["owner"] == "parent"
    lease.release()
    store.close()


@pytest.mark.parametrize("released", [False, True], ids=["expired", "released"])
def test_one_of_many_threads_takes_over_a_free_lease(s3_bucket, released):
    store = open_storage(s3_url(s3_bucket, "k"))
    store.put(KEY, dead_lease(released=released))
    barrier = threading.Barrier(12)
    results = []

    def race(i: int) -> None:
        barrier.wait()
        results.append(store.acquire_lease(KEY, f"thread {i}".encode()))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [lease for lease in results if lease is not None]
    assert len(winners) == 1
    assert winners[0].held and stored_lease(store)["owner"] == winners[0].owner.decode()
    winners[0].release()
    store.close()


RACER = """
import sys, threading
from keelflow.storage import open_storage
store = open_storage(sys.argv[1])
barrier = threading.Barrier(4)
won = []
def race(i):
    barrier.wait()
    if store.acquire_lease(sys.argv[2], b"racer") is not None:
        won.append(i)
threads = [threading.Thread(target=race, args=(i,)) for i in range(4)]
print("ready", flush=True)
sys.stdin.readline()
for t in threads:
    t.start()
for t in threads:
    t.join()
print(len(won), flush=True)
sys.stdin.readline()
"""


def test_one_of_two_processes_takes_over_an_expired_lease(s3_bucket):
    url = s3_url(s3_bucket, "k")
    store = open_storage(url)
    store.put(KEY, dead_lease(released=False))
    racers = [spawn(RACER, url, KEY) for _ in range(2)]
    try:
        for racer in racers:
            assert line(racer) == "ready"
        for racer in racers:
            racer.stdin.write("go\n")  # type: ignore[union-attr]
            racer.stdin.flush()  # type: ignore[union-attr]
        wins = [int(line(racer)) for racer in racers]
        assert sorted(wins) == [0, 1]
        assert store.lease_held(KEY) and stored_lease(store)["owner"] == "racer"
    finally:
        for racer in racers:
            finish(racer)
    store.close()


def test_heartbeat_keeps_a_lease_alive_past_its_ttl(s3_bucket):
    url = s3_url(s3_bucket, "k", lease_seconds=1)
    store, other = open_storage(url), open_storage(url)
    lease = store.acquire_lease(KEY, b"me")
    assert lease is not None
    first_expiry = stored_lease(store)["expires"]
    wait_until(lambda: time.time() > first_expiry + CLOCK_SKEW + 0.5, what="the first ttl to pass")
    assert lease.held
    assert other.lease_held(KEY)
    assert other.acquire_lease(KEY, b"you") is None
    assert stored_lease(store)["expires"] > first_expiry
    lease.release()
    store.close()
    other.close()


def test_release_lets_the_next_acquirer_in_at_once(s3_bucket):
    url = s3_url(s3_bucket, "k")  # the default ttl (10 s): only the release can free it now
    store, other = open_storage(url), open_storage(url)
    lease = store.acquire_lease(KEY, b"me")
    assert lease is not None and other.acquire_lease(KEY, b"you") is None
    lease.release()
    lease.release()  # idempotent
    assert not lease.held and not other.lease_held(KEY)
    taken = other.acquire_lease(KEY, b"you")
    assert taken is not None and taken.held
    taken.release()
    store.close()
    other.close()


STALLER = """
import sys, time
from keelflow.storage import open_storage
store = open_storage(sys.argv[1])
lease = store.acquire_lease(sys.argv[2], b"staller")
print("held" if lease else "refused", flush=True)
sys.stdin.readline()  # the parent stops us (SIGSTOP) here, takes the lease over, resumes us
deadline = time.monotonic() + 10
while lease.held and time.monotonic() < deadline:
    time.sleep(0.02)
time.sleep(1.0)  # several renewal rounds: a refused renewal must not bring it back
print("held" if lease.held else "lost", flush=True)
lease.release()
print("released", flush=True)
"""


def test_a_holder_that_stalled_past_its_ttl_loses_the_lease(s3_bucket):
    url = s3_url(s3_bucket, "k", lease_seconds=1)
    store = open_storage(url)
    child = spawn(STALLER, url, KEY)
    try:
        assert line(child) == "held"
        child.send_signal(signal.SIGSTOP)
        try:
            mine = wait_until(lambda: store.acquire_lease(KEY, b"parent"), what="takeover of the stalled lease")
        finally:
            child.send_signal(signal.SIGCONT)
        child.stdin.write("go\n")  # type: ignore[union-attr]
        child.stdin.flush()  # type: ignore[union-attr]
        assert line(child) == "lost"
        assert line(child) == "released"
        # Neither its renewals nor its release touched the lease it lost.
        assert mine.held and store.lease_held(KEY)
        assert stored_lease(store)["owner"] == "parent"
        mine.release()
    finally:
        finish(child)
    store.close()


def test_one_heartbeat_thread_renews_every_lease(s3_bucket):
    store = open_storage(s3_url(s3_bucket, "k"))
    leases = [store.acquire_lease(f"wf/{i}/lease", b"me") for i in range(20)]
    assert all(lease is not None and lease.held for lease in leases)
    beating = [t for t in threading.enumerate() if t.name.startswith(f"keelflow-s3-heartbeat s3://{s3_bucket}/")]
    assert len(beating) == 1
    for lease in leases:
        lease.release()
    store.close()


def test_a_lease_deleted_with_its_workflow_is_free_and_the_old_holder_leaves_the_new_one(s3_bucket):
    store = open_storage(s3_url(s3_bucket, "k"))
    first = store.acquire_lease(KEY, b"a")
    assert first is not None
    store.delete_prefix("wf/x")
    second = store.acquire_lease(KEY, b"b")
    assert second is not None
    first.release()
    assert store.lease_held(KEY) and second.held
    second.release()
    store.close()


# -- whole workflows ---------------------------------------------------------------------------
RUNNER = """
import os, sys, time
import keelflow as workflow

url, gate, log = sys.argv[1:4]

@workflow.step
def first(x):
    with open(log, "a") as f:
        f.write("first\\n")
    return x + 1

@workflow.step
def second(y):
    with open(log, "a") as f:
        f.write("second\\n")
    while not os.path.exists(gate):
        time.sleep(0.02)
    return y * 10

workflow.init(url, executor="thread")
print(second.step(first.step(1)).run(workflow_id="wf", metadata={"via": "s3"}), flush=True)
"""


def test_a_workflow_run_in_one_process_is_read_from_another(s3_bucket, tmp_path):
    url = s3_url(s3_bucket, "flows")
    gate, log = tmp_path / "gate", tmp_path / "log"
    gate.touch()
    runner = spawn(RUNNER, url, str(gate), str(log))
    try:
        assert line(runner, timeout=60) == "20"
        assert runner.wait(30) == 0
    finally:
        finish(runner)
    workflow.init(url, executor="thread")
    assert workflow.get_status("wf") == workflow.WorkflowStatus.SUCCESSFUL
    assert workflow.get_output("wf") == 20
    assert workflow.get_metadata("wf")["user_metadata"] == {"via": "s3"}
    assert dict(workflow.list_all()) == {"wf": workflow.WorkflowStatus.SUCCESSFUL}
    storage = open_storage(url)
    assert storage.children("workflows/wf/journal.d")  # segments: S3 cannot append
    storage.close()


def test_a_workflow_resumes_after_its_runner_is_killed(s3_bucket, tmp_path):
    url = s3_url(s3_bucket, "flows", lease_seconds=2)
    gate, log = tmp_path / "gate", tmp_path / "log"
    runner = spawn(RUNNER, url, str(gate), str(log))
    try:
        wait_until(lambda: log.exists() and "second" in log.read_text(), timeout=60, what="the second step")
    finally:
        runner.send_signal(signal.SIGKILL)
        finish(runner)
    workflow.init(url, executor="thread")
    # RUNNING while the dead runner's lease lasts, RESUMABLE once its ttl has passed.
    status = wait_until(
        lambda: (s := workflow.get_status("wf")) != workflow.WorkflowStatus.RUNNING and s,
        what="the dead runner's lease to expire",
    )
    assert status == workflow.WorkflowStatus.RESUMABLE
    gate.touch()
    assert workflow.resume("wf") == 20
    assert workflow.get_status("wf") == workflow.WorkflowStatus.SUCCESSFUL
    assert log.read_text().split() == ["first", "second", "second"]  # first was checkpointed
    os.remove(gate)
