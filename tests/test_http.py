"""The worker's and the dashboard's HTTP endpoints (keelflow._http) against hostile clients: a page
on another site forging a POST, lying Content-Lengths, JSON nested 100 000 deep, half-sent
requests, oversized heads, bytes that are not UTF-8. Real servers on 127.0.0.1, requests written
byte by byte on raw sockets, and a real headless Chromium for the page on another site."""

from __future__ import annotations

import http.server
import json
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import keelflow as workflow
import workersteps as ws
from keelflow import api, session
from keelflow._http import MAX_CONNECTIONS, Handler, HTTPError, Listener
from keelflow.dashboard import Dashboard
from keelflow.worker import Worker

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
EVIL = "http://evil.example"


# -- raw HTTP ----------------------------------------------------------------------------------------
@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def error(self) -> str:
        assert self.headers.get("content-type") == "application/json", self
        return str(json.loads(self.body)["error"])


def read_answer(sock: socket.socket) -> Answer:
    """Everything the server sends until it closes, parsed."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:  # after its answer, when it did not read all that was sent
            break
        if not chunk:
            break
        chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/"), f"no answer, just {head[:200]!r}"
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return Answer(int(lines[0].split()[1]), headers, body)


def exchange(address: tuple[str, int], data: bytes, *, end: bool = False, timeout: float = 5) -> Answer:
    """Send ``data`` as it is (then end the sending side if ``end``) and read the answer."""
    with socket.create_connection(address, timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if end:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # it answered, and closed, before reading everything
        return read_answer(sock)


def request(
    address: tuple[str, int],
    method: str,
    path: str,
    headers: dict[str, str | None] | None = None,
    body: bytes = b"",
    **kw: Any,
) -> Answer:
    """A request as a browser or a client sends it: Host, ``headers`` (those set to None left
    out), then ``body``. A POST gets its true ``Content-Length`` unless ``headers`` name one."""
    host, port = address
    head = {"Host": f"{host}:{port}", **(headers or {})}
    if method == "POST" and not {"content-length", "transfer-encoding"} & {h.lower() for h in head}:
        head["Content-Length"] = str(len(body))
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in head.items() if v is not None)]
    return exchange(address, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body, **kw)


# -- the servers -------------------------------------------------------------------------------------
@dataclass
class Target:
    """A server with a workflow ``order-7`` that a POST to ``path`` changes (``changed()``)."""

    address: tuple[str, int]
    path: str
    changed: Callable[[], bool]
    limit: int
    auth: dict[str, str] = field(default_factory=dict)


def events_stored() -> bool:
    return session.runtime().storage.children("events") != []


@pytest.fixture(params=["worker", "worker+token", "dashboard"])
def target(request, storage) -> Iterator[Target]:
    workflow.init(storage, executor="thread")
    workflow.submit(ws.record.step(workflow.receive_event("approved")), workflow_id="order-7")
    if request.param == "dashboard":
        dash = Dashboard("127.0.0.1", 0).start()
        assert dash.address is not None

        def cancelled() -> bool:
            return workflow.get_status("order-7") == workflow.WorkflowStatus.CANCELED

        yield Target(dash.address, "/api/workflows/order-7/cancel", cancelled, 1 << 16)
        dash.close()
    else:
        token = "s3cret" if request.param == "worker+token" else None
        worker = Worker(storage, executor="thread", port=0, token=token)
        worker.start()  # serves HTTP; runs nothing (that is serve()'s work)
        assert worker.address is not None
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        yield Target(worker.address, "/events/order-7/approved", events_stored, 1 << 20, auth)
        worker.close()


def post(target: Target, headers: dict[str, str | None], body: bytes = b"", **kw: Any) -> Answer:
    return request(target.address, "POST", target.path, {**target.auth, **headers}, body, **kw)


JSON = {"Content-Type": "application/json"}


# -- 1. cross-site request forgery -------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [
        # What a page elsewhere sends without a preflight: fetch(..., {mode: "no-cors"}), a form.
        {"Content-Type": "text/plain;charset=UTF-8", "Origin": EVIL},
        {"Content-Type": "application/x-www-form-urlencoded", "Origin": EVIL},
        {"Content-Type": "multipart/form-data; boundary=x", "Origin": "null"},
        {"Content-Type": "text/plain"},
        {},
        # What it could send only after a preflight, or from a sandboxed frame ("null").
        {**JSON, "Origin": EVIL},
        {**JSON, "Origin": "null"},
        {"X-Requested-By": "keelflow", "Origin": "http://127.0.0.1:1"},
        {**JSON, "Origin": f"{EVIL}, http://127.0.0.1:1"},
    ],
)
@pytest.mark.parametrize("body", [b'{"by": "mallory"}', b""])
def test_a_post_a_page_on_another_site_could_send_is_refused(target, headers, body):
    answer = post(target, headers, body)
    assert answer.status == 403, answer
    assert "Content-Type: application/json" in answer.error or "Origin" in answer.error
    assert not target.changed()


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "application/json; charset=utf-8"},
        {"X-Requested-By": "keelflow"},  # an empty body (the payload null) needs it too
        {"X-Requested-By": "keelflow", "Origin": "http://{host}:{port}"},  # the dashboard's page
        {**JSON, "Origin": "http://localhost:{port}"},
    ],
)
def test_a_post_from_a_client_or_this_servers_page_is_accepted(target, headers):
    host, port = target.address
    headers = {k: v.format(host=host, port=port) for k, v in headers.items()}
    answer = post(target, headers, b'{"by": "ada"}' if "Content-Type" in headers else b"")
    assert answer.status in (200, 202), answer
    assert target.changed()


def test_a_real_page_on_another_site_cannot_forge_an_approval(storage):
    """The attack as found: a page the user opens posts text/plain to the worker (no preflight),
    as fetch() and as a form; and JSON, which needs a preflight."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no {CHROMIUM} (Debian's chromium package)")
    sync_api = pytest.importorskip("playwright.sync_api")
    workflow.init(storage, executor="thread")
    workflow.submit(ws.record.step(workflow.receive_event("approved")), workflow_id="order-7")
    worker = Worker(storage, executor="thread", port=0)
    worker.start()
    assert worker.address is not None
    url = f"http://127.0.0.1:{worker.address[1]}/events/order-7/approved"
    page_html = f"""<form method="POST" enctype="text/plain" action="{url}">
        <input name='{{"by": "mallory", "x": "' value='"}}'></form>""".encode()

    class EvilSite(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page_html)))
            self.end_headers()
            self.wfile.write(page_html)

        def log_message(self, *args: Any) -> None:
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EvilSite)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{site.server_address[1]}/")
                sent = page.evaluate(
                    """async (url) => {
                        const body = '{"by": "mallory"}';
                        const out = [];
                        await fetch(url, {method: "POST", mode: "no-cors", body});
                        out.push("text/plain sent");
                        try {
                            await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"}, body});
                            out.push("json sent");
                        } catch (e) {
                            out.push("json blocked");
                        }
                        return out;
                    }""",
                    url,
                )
                assert sent == ["text/plain sent", "json blocked"]  # the preflight was not granted
                with page.expect_navigation() as navigation:
                    page.evaluate("document.forms[0].submit()")
                response = navigation.value
                assert response is not None and response.status == 403  # it reached the worker
                assert "X-Requested-By" in response.text()
            finally:
                browser.close()
        assert not events_stored()
    finally:
        site.shutdown()
        site.server_close()
        worker.close()


def test_a_preflight_gets_no_cors_answer(target):
    answer = request(
        target.address,
        "OPTIONS",
        target.path,
        {"Origin": EVIL, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"},
    )
    assert answer.status >= 400 and answer.error
    assert not [h for h in answer.headers if h.startswith("access-control-")]


# -- 2. body lengths ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("length", "code"),
    [
        ({"Content-Length": "-1"}, 400),  # read until the client closed, past any limit
        ({"Content-Length": "abc"}, 400),
        ({"Content-Length": "+17"}, 400),  # int() takes it
        ({"Content-Length": "17, 17"}, 400),
        ({"Transfer-Encoding": "chunked"}, 411),
        ({"Content-Length": None}, 411),  # the body was taken for none: payload null
    ],
)
def test_a_body_without_a_true_length_is_refused(target, length, code):
    body = b'{"by": "mallory", "padding": "' + b"x" * (target.limit + 1000) + b'"}'
    answer = post(target, {**JSON, **length}, body, end=True)
    assert answer.status == code, answer
    assert "Content-Length" in answer.error
    assert not target.changed()


def test_a_body_over_the_limit_is_refused_before_it_is_sent(target):
    answer = post(target, {**JSON, "Content-Length": str(target.limit + 1)}, timeout=5)  # and no body
    assert answer.status == 413, answer
    assert str(target.limit) in answer.error
    assert not target.changed()


def test_a_body_cut_short_is_refused(target):
    answer = post(target, {**JSON, "Content-Length": "100"}, b'{"by": "ada"}', end=True)
    assert answer.status == 400 and "ended after 13" in answer.error
    assert not target.changed()


# -- 3. deeply nested JSON, and exceptions -----------------------------------------------------------
@pytest.mark.parametrize("target", ["worker", "worker+token"], indirect=True)  # the dashboard reads no JSON
@pytest.mark.parametrize("depth", [100_000, 950])  # deeper than the parser goes; than pickle goes
def test_deeply_nested_json_gets_a_400(target, depth):
    answer = post(target, JSON, b"[" * depth + b"]" * depth)
    assert answer.status == 400, answer
    assert "nested" in answer.error or "cannot be stored" in answer.error
    assert not target.changed()


def test_an_unexpected_exception_is_answered_with_a_500():
    class Failing(Handler):
        def do_GET(self) -> None:
            if self.path == "/teapot":
                raise HTTPError(418, "short and stout")
            raise RuntimeError("a bug")

    listener = Listener("127.0.0.1", 0, Failing, "test-http")
    try:
        answer = request(listener.address, "GET", "/")
        assert answer.status == 500 and "RuntimeError" in answer.error
        answer = request(listener.address, "GET", "/teapot")
        assert answer.status == 418 and answer.error == "short and stout"
    finally:
        listener.close()


# -- 4. connections: threads and time ----------------------------------------------------------------
HALF_SENT = b"POST /events/order-7/approved HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty"


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return result


def closed(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (without waiting)."""
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def test_half_sent_requests_hold_a_bounded_number_of_threads(storage):
    """As found: 200 half-sent requests to the worker held 200 threads, for ever."""
    worker = Worker(storage, executor="thread", port=0)
    worker.start()
    address = worker.address
    assert address is not None
    stalled: list[socket.socket] = []

    def answered() -> list[socket.socket]:
        return [s for s in stalled if select.select([s], [], [], 0)[0]]

    try:
        assert request(address, "GET", "/health").status == 200
        before = threading.active_count()
        for _ in range(200):
            sock = socket.create_connection(address, timeout=5)
            sock.sendall(HALF_SENT)
            stalled.append(sock)
        # The server takes 64 and at once answers the others 503, without a thread of their own.
        wait_until(lambda: len(answered()) >= 200 - MAX_CONNECTIONS, "the 503s")
        busy = answered()
        assert len(busy) == 200 - MAX_CONNECTIONS and all(read_answer(s).status == 503 for s in busy)
        assert threading.active_count() <= before + MAX_CONNECTIONS
        answer = request(address, "GET", "/health")
        assert answer.status == 503 and "too many connections" in answer.error  # an answer, at once
        for sock in stalled:
            sock.close()
        stalled.clear()
        # Their threads see the connections end, and new requests are served again.
        wait_until(lambda: request(address, "GET", "/health").status == 200, "a 200 once they left")
        wait_until(lambda: threading.active_count() <= before + 1, "the threads to end")
    finally:
        for sock in stalled:
            sock.close()
        worker.close()


def test_stalled_requests_are_closed_after_the_timeout_and_others_are_answered_meanwhile(storage):
    from keelflow.worker import _handler

    worker = Worker(storage, executor="thread", port=0)
    api.init(storage, executor="thread")
    listener = Listener("127.0.0.1", 0, _handler(worker), "test-http", timeout=0.5, max_connections=8)
    address = listener.address
    try:
        stalled = []
        for _ in range(6):
            sock = socket.create_connection(address, timeout=5)
            sock.sendall(HALF_SENT)
            stalled.append(sock)
        # One sends a byte every 0.1 s, well within the timeout, but never ends its request.
        trickle = socket.create_connection(address, timeout=5)
        trickle.sendall(b"GET /health HTTP/1.1\r\nX-Slow: ")
        started = time.monotonic()
        answer = request(address, "GET", "/health")
        assert answer.status == 200, answer
        while not closed(trickle):
            assert time.monotonic() - started < 5, "the trickling request was never closed"
            try:
                trickle.sendall(b"a")
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.1)
        wait_until(lambda: all(closed(s) for s in stalled), "the stalled requests to be closed", timeout=5)
        for sock in [*stalled, trickle]:
            sock.close()
        assert request(address, "GET", "/health").status == 200
    finally:
        listener.close()


# -- what else a request can get wrong ---------------------------------------------------------------
def test_an_oversized_request_line_or_head_gets_a_json_refusal(target):
    host, port = target.address
    answer = exchange(target.address, b"GET /" + b"a" * 1_000_000 + b" HTTP/1.1\r\n\r\n")
    assert answer.status == 414 and "request line" in answer.error
    # 100 headers of 64 KiB each were read, 6.5 MB held per connection; the head is now bounded.
    big = "".join(f"X-Big-{i}: {'a' * 10_000}\r\n" for i in range(10))
    answer = exchange(target.address, f"GET /health HTTP/1.1\r\nHost: {host}:{port}\r\n{big}\r\n".encode())
    assert answer.status == 431 and "headers" in answer.error
    many = "".join(f"X-{i}: a\r\n" for i in range(200))
    answer = exchange(target.address, f"GET /health HTTP/1.1\r\nHost: {host}:{port}\r\n{many}\r\n".encode())
    assert answer.status == 431 and answer.error
    answer = exchange(target.address, b"BREW /pot HTTP/1.1\r\n\r\n")
    assert answer.status == 501 and "BREW" in answer.error


def test_paths_and_queries_are_utf8(target):
    workflow.submit(ws.record.step(1), workflow_id="café")
    get = "/workflows/" if target.path.startswith("/events") else "/api/workflows/"
    # Escaped, and raw as some clients send it (request() writes each character as one byte).
    for path in (f"{get}caf%C3%A9", get + "café".encode().decode("latin-1")):
        answer = request(target.address, "GET", path, target.auth)
        assert answer.status == 200, (path, answer)
    for path in (f"{get}caf%E9", f"{get}%FF", f"{get}x?limit=%FF"):  # not UTF-8: was U+FFFD
        answer = request(target.address, "GET", path, target.auth)
        assert answer.status == 400 and "UTF-8" in answer.error, (path, answer)
    answer = request(target.address, "POST", target.path.replace("order-7", "%FF"), {**target.auth, **JSON})
    assert answer.status == 400 and not target.changed()


@pytest.mark.parametrize("target", ["worker", "dashboard"], indirect=True)  # a token: Host is not looked at
def test_a_malformed_host_gets_a_400_not_a_dropped_connection(target):
    answer = exchange(target.address, b"GET /metrics HTTP/1.1\r\nHost: [\r\n\r\n")
    assert answer.status == 400 and "Host" in answer.error
