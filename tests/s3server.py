"""A real S3-compatible server for tests: moto's server in a subprocess on 127.0.0.1.

One server per pytest session, started on first use and stopped when the session ends
(or, failing that, when this process exits: the server also quits when its stdin closes).
Dummy credentials are set in ``os.environ`` for the session, so subprocesses inherit them.

moto's own ``python -m moto.server`` handles requests on many threads and checks a
conditional write's precondition separately from the write, so two racing writers could
both pass. Real S3 decides each conditional write atomically; to match it, the server here
runs moto's application with requests handled one at a time.

Use::

    from s3server import s3_bucket, s3_url    # s3_bucket: a fixture, a fresh bucket per test

    def test_x(s3_bucket):
        url = s3_url(s3_bucket, "some/prefix", lease_seconds=2)
"""

from __future__ import annotations

import atexit
import http.client
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest

__all__ = ["S3_ENV", "new_bucket", "s3_bucket", "s3_endpoint", "s3_server", "s3_url", "stop_server"]

#: Environment for anything talking to the test server (set in os.environ once it starts).
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never probe for an instance role
}
_UNSET = ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
_START_TIMEOUT = 30.0

_SERVER_CODE = r"""
import logging, os, sys, threading
from werkzeug.serving import make_server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

logging.getLogger("werkzeug").setLevel(logging.ERROR)
moto_app = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()

def app(environ, start_response):
    with lock:  # one request at a time: conditional writes are atomic, as on S3
        result = moto_app(environ, start_response)
        try:
            return [b"".join(result)]
        finally:
            if hasattr(result, "close"):
                result.close()

server = make_server("127.0.0.1", 0, app, threaded=True)
os.environ["MOTO_PORT"] = str(server.port)

def orphaned():
    sys.stdin.read()  # returns when the test process closes the pipe or dies
    os._exit(0)

threading.Thread(target=orphaned, daemon=True).start()
print(server.port, flush=True)
server.serve_forever()
"""

_lock = threading.Lock()
_proc: subprocess.Popen[str] | None = None
_endpoint: str | None = None


def _answers(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/moto-api/")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


def s3_endpoint() -> str:
    """The server's endpoint URL, starting the server (and setting the credentials) if needed."""
    global _proc, _endpoint
    with _lock:
        if _endpoint is not None:
            return _endpoint
        for name in _UNSET:
            os.environ.pop(name, None)
        os.environ.update(S3_ENV)
        with tempfile.TemporaryFile(mode="w+") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", _SERVER_CODE],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
            try:
                port = _read_port(proc)
                deadline = time.monotonic() + _START_TIMEOUT
                while not _answers(port):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("the moto server did not answer")
                    time.sleep(0.05)
            except BaseException as e:
                _kill(proc)
                log.seek(0)
                raise RuntimeError(f"cannot start the moto S3 server: {e}\n{log.read()[-3000:]}") from e
        _proc, _endpoint = proc, f"http://127.0.0.1:{port}"
        atexit.register(stop_server)
        return _endpoint


def _read_port(proc: subprocess.Popen[str]) -> int:
    assert proc.stdout is not None
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(_START_TIMEOUT)
    if not got or not got[0].strip().isdigit():
        raise RuntimeError(f"no port from the server (got {got!r})")
    return int(got[0])


def _kill(proc: subprocess.Popen[str]) -> None:
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            try:
                pipe.close()
            except OSError:
                pass
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def stop_server() -> None:
    """Stop the server (idempotent)."""
    global _proc, _endpoint
    with _lock:
        proc, _proc, _endpoint = _proc, None, None
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()  # type: ignore[attr-defined]
    if proc is not None:
        _kill(proc)


_clients: dict[str, object] = {}


def _client():
    endpoint = s3_endpoint()
    with _lock:
        if endpoint not in _clients:
            import boto3

            _clients[endpoint] = boto3.session.Session().client("s3", endpoint_url=endpoint)
        return _clients[endpoint]


def new_bucket() -> str:
    """A fresh, empty bucket on the test server."""
    name = f"kf-{uuid.uuid4().hex[:20]}"
    _client().create_bucket(Bucket=name)
    return name


def s3_url(bucket: str, prefix: str = "", **options: object) -> str:
    """``s3://bucket/prefix?endpoint_url=…`` for the test server; ``options`` add to the query."""
    query = urlencode({"endpoint_url": s3_endpoint(), **{k: str(v) for k, v in options.items()}}, safe=":/")
    return f"s3://{bucket}/{prefix.strip('/')}?{query}"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint URL of the session's S3 server; stopped when the session ends."""
    endpoint = s3_endpoint()
    yield endpoint
    stop_server()


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    """A fresh bucket for one test."""
    return new_bucket()
