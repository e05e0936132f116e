"""The web dashboard: its JSON API, /metrics and token checks over real HTTP on 127.0.0.1, and
its pages in a real headless Chromium (Debian's ``chromium`` driven by Playwright).

``KEELFLOW_UPDATE_SCREENSHOT=1`` makes the workflow-page test write ``docs/dashboard.png``.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

import dashsteps as ds
import keelflow as workflow
from conftest import TESTS
from keelflow.dashboard import Dashboard

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = TESTS.parent / "docs" / "dashboard.png"
ENV = {"PYTHONPATH": os.pathsep.join([str(TESTS.parent / "src"), str(TESTS)])}


# -- helpers -----------------------------------------------------------------------------------------
def request(
    method: str, url: str, token: str | None = None, headers: dict[str, str] | None = None
) -> tuple[int, str, bytes]:
    """(status, content type, body) of one real HTTP request."""
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.headers.get("Content-Type", ""), e.read()


def call(dash: Dashboard, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    headers = kw.pop("headers", None) or ({"X-Requested-By": "keelflow"} if method == "POST" else {})
    code, content_type, body = request(method, dash.url + path.lstrip("/"), headers=headers, **kw)
    assert content_type == "application/json", (code, content_type, body)
    return code, json.loads(body)


def wait_for(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def make_successful() -> str:
    assert ds.fib.step(5).run(workflow_id="fib-5", metadata={"n": 5}) == 5
    return "fib-5"


def make_failed() -> str:
    with pytest.raises(workflow.WorkflowExecutionError):
        ds.pipeline().run(workflow_id="nightly-orders", metadata={"owner": "data-team", "date": "2025-06-01"})
    return "nightly-orders"


def make_resumable(storage: str, tmp_path: Any) -> tuple[str, str]:
    """A workflow whose process was SIGKILLed inside a step: RESUMABLE. Returns (id, lever)."""
    lever = str(tmp_path / "lever-crashed")
    open(lever, "w").close()
    code = ds.RUN_HELD
    proc = subprocess.Popen(
        [sys.executable, "-c", code, storage, lever, "crashed"],
        env=dict(os.environ, **ENV),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: os.path.exists(lever + ".started") or proc.poll() is not None, "the step to start", 60)
        assert proc.poll() is None, "the workflow's process exited before its step started"
    finally:
        proc.kill()
        proc.wait(30)
    assert workflow.get_status("crashed") == workflow.WorkflowStatus.RESUMABLE
    return "crashed", lever


@pytest.fixture
def dash(storage):
    workflow.init(storage, executor="thread")
    server = Dashboard("127.0.0.1", 0).start()
    yield server
    server.close()


# -- the JSON API, over HTTP -------------------------------------------------------------------------
def test_the_api_lists_and_shows_workflows(dash):
    make_successful()
    make_failed()
    workflow.submit(ds.fib.step(2), workflow_id="queued")

    code, body = call(dash, "GET", "/api/workflows")
    assert code == 200
    assert [w["workflow_id"] for w in body["workflows"]] == ["queued", "nightly-orders", "fib-5"]
    assert body["counts"] == {"RUNNING": 0, "RESUMABLE": 1, "FAILED": 1, "CANCELED": 0, "SUCCESSFUL": 1}
    assert body["total"] == 3 and not body["truncated"]

    code, body = call(dash, "GET", "/api/workflows?status=failed,SUCCESSFUL")
    assert code == 200 and [w["workflow_id"] for w in body["workflows"]] == ["nightly-orders", "fib-5"]
    assert body["counts"]["RESUMABLE"] == 1  # counts are over every workflow, for the filter buttons

    code, body = call(dash, "GET", "/api/workflows?limit=1")
    assert len(body["workflows"]) == 1 and body["truncated"] and body["matched"] == 3

    code, view = call(dash, "GET", "/api/workflows/nightly-orders")
    assert code == 200
    assert view["status"] == "FAILED" and view["can_resume"] and not view["can_cancel"]
    assert view["user_metadata"] == {"owner": "data-team", "date": "2025-06-01"}
    assert view["failed_step"] == "dashsteps.validate"
    failed = next(s for s in view["steps"] if s["status"] == "FAILED")
    assert failed["error"] == "ValueError: 3 rows have no tax rate for region 'us'"
    assert "Traceback (most recent call last)" in failed["traceback"] and "_check" in failed["traceback"]
    assert failed["attempts"] == 2

    code, view = call(dash, "GET", "/api/workflows/fib-5")
    assert view["total_steps"] == len(view["steps"]) == 22 and not view["truncated"]
    assert view["step_counts"] == {"CONTINUED": 7, "SUCCESSFUL": 15}


def test_the_api_answers_unknown_ids_with_404_and_bad_input_with_400(dash):
    make_successful()
    ds.Account.get_or_create("acct", "ada")

    code, body = call(dash, "GET", "/api/workflows/nope")
    assert code == 404 and "nope" in body["error"]
    code, body = call(dash, "POST", "/api/workflows/nope/resume")
    assert code == 404 and "nope" in body["error"]
    code, body = call(dash, "POST", "/api/workflows/nope/cancel")
    assert code == 404 and "nope" in body["error"]
    code, body = call(dash, "GET", "/api/actors/nobody")
    assert code == 404 and "nobody" in body["error"]
    code, body = call(dash, "GET", "/api/no-such-thing")
    assert code == 404 and "no such endpoint" in body["error"]

    for path in ("/api/workflows/a..b", "/api/workflows/a%2Fb", "/api/actors/x%0Ay"):
        code, body = call(dash, "GET", path)
        assert code == 400 and "must not" in body["error"], (path, body)
    code, body = call(dash, "GET", "/api/workflows?status=DONE")
    assert code == 400 and "unknown status 'DONE'" in body["error"]
    for limit in ("0", "lots", "1000001"):
        code, body = call(dash, "GET", f"/api/workflows/fib-5?limit={limit}")
        assert code == 400 and "limit" in body["error"]

    # An action without the header that a cross-site form cannot send is refused.
    code, body = call(dash, "POST", "/api/workflows/fib-5/cancel", headers={"Content-Type": "text/plain"})
    assert code == 403 and "X-Requested-By" in body["error"]
    # Cancelling a finished workflow changes nothing.
    code, body = call(dash, "POST", "/api/workflows/fib-5/cancel")
    assert code == 200 and body["status"] == "SUCCESSFUL"

    code, body = call(dash, "GET", "/api/actors/acct")
    assert code == 200 and body["state"] == {"owner": "ada", "balance": 0, "history": []}


def test_static_files_stay_inside_their_folder(dash):
    code, content_type, body = request("GET", dash.url)
    assert code == 200 and content_type.startswith("text/html") and b"static/app.js" in body
    code, content_type, _ = request("GET", dash.url + "static/vendor/cytoscape.min.js")
    assert code == 200 and content_type.startswith("text/javascript")
    host, port = dash.address  # type: ignore[misc]
    for path in ("/static/../server.py", "/static/%2e%2e/server.py", "/static/vendor/../../__init__.py"):
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.request("GET", path)  # sent as written, not normalised
            response = conn.getresponse()
            assert response.status == 404, path
            assert b"import" not in response.read()
        finally:
            conn.close()


def test_metrics_parse_with_the_prometheus_parser(dash):
    from prometheus_client.parser import text_string_to_metric_families

    make_successful()
    make_failed()
    code, content_type, body = request("GET", dash.url + "metrics")
    assert code == 200 and content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    by_status = {s.labels["status"]: s.value for s in families["keelflow_workflows"].samples}
    assert by_status["SUCCESSFUL"] == 1 and by_status["FAILED"] == 1
    assert families["keelflow_steps_succeeded"].type == "counter"
    assert families["keelflow_steps_retried"].samples[0].value >= 1  # validate was retried once
    assert families["keelflow_step_duration_seconds"].type == "histogram"


def test_a_token_is_required_beyond_loopback_and_checked_when_given(storage):
    workflow.init(storage, executor="thread")
    for host in ("0.0.0.0", "192.0.2.1", "::"):
        with pytest.raises(workflow.KeelflowError, match="without a token"):
            Dashboard(host, 0)

    dash = Dashboard("127.0.0.1", 0, token="s3cret").start()
    try:
        url = dash.url
        assert request("GET", url + "api/workflows")[0] == 401
        assert request("GET", url + "api/workflows", token="wrong")[0] == 401
        assert request("GET", url + "api/workflows?token=wrong")[0] == 401
        assert request("GET", url + "metrics")[0] == 401
        assert request("POST", url + "api/workflows/x/cancel", headers={"X-Requested-By": "keelflow"})[0] == 401
        assert request("GET", url + "api/workflows", token="s3cret")[0] == 200
        assert request("GET", url + "api/workflows?token=s3cret")[0] == 200
        assert request("GET", url + "metrics?token=s3cret")[0] == 200
        # The page and its scripts hold no data: they load, then ask for the token.
        assert request("GET", url)[0] == 200
        assert request("GET", url + "static/app.js")[0] == 200
    finally:
        dash.close()

    # Without a token, only requests addressed to this machine are answered (DNS rebinding).
    dash = Dashboard("127.0.0.1", 0).start()
    try:
        code, _, body = request("GET", dash.url + "api/workflows", headers={"Host": "evil.example:80"})
        assert code == 403 and b"evil.example" in body
        assert request("GET", dash.url + "api/workflows", headers={"Host": "localhost"})[0] == 200
    finally:
        dash.close()


def test_serve_blocks_until_sigterm_and_reports_its_port(storage):
    code = (
        "import sys, keelflow as workflow\n"
        "from keelflow.dashboard import serve\n"
        "workflow.init(sys.argv[1], executor='thread')\n"
        "serve(port=0, ready=lambda address: print('READY', *address, flush=True))\n"
        "print('STOPPED', flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, storage],
        env=dict(os.environ, **ENV),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "serve never called ready()"
        line = proc.stdout.readline().split()
        assert line[:2] == ["READY", "127.0.0.1"], line
        port = int(line[2])
        code_, _, body = request("GET", f"http://127.0.0.1:{port}/api/workflows")
        assert code_ == 200 and json.loads(body)["total"] == 0
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "STOPPED" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


# -- the pages, in headless Chromium -----------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no {CHROMIUM} (Debian's chromium package); .ci/run installs it")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed (pip install playwright); .ci/run installs it")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, dash):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    tab = context.new_page()
    tab.set_default_timeout(20_000)
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    yield tab
    context.close()
    assert not errors, errors


def graph(page: Any) -> dict[str, Any]:
    """The drawn graph, read from the page's cytoscape instance."""
    return page.evaluate(
        """() => {
            const cy = window.keelflowDash.cy;
            return {
                nodes: cy.nodes().map((n) => [n.data("label"), n.classes().join(" ")]),
                deps: cy.edges(".dep").length,
                conts: cy.edges(".cont").map((e) => e.source().classes().join(" ")),
                layouts: window.keelflowDash.layouts,
            };
        }"""
    )


def open_workflow(page: Any, dash: Dashboard, wid: str) -> None:
    page.goto(f"{dash.url}#/workflows/{wid}")
    page.wait_for_function("window.keelflowDash.layouts > 0")


def test_the_list_shows_counts_and_filters(page, dash, storage, tmp_path):
    make_successful()
    make_failed()
    workflow.submit(ds.fib.step(2), workflow_id="queued", metadata={"team": "ml"})

    page.goto(dash.url)
    page.wait_for_selector("#workflows tr[data-id='fib-5']")
    counts = {
        s: page.text_content(f"#filters button[data-status='{s}'] .count")
        for s in ("ALL", "FAILED", "RESUMABLE", "SUCCESSFUL", "RUNNING")
    }
    assert counts == {"ALL": "3", "FAILED": "1", "RESUMABLE": "1", "SUCCESSFUL": "1", "RUNNING": "0"}

    page.click("#filters button[data-status='FAILED']")
    page.wait_for_function("document.querySelectorAll('#workflows tr[data-id]').length === 1")
    assert page.get_attribute("#workflows tr[data-id]", "data-id") == "nightly-orders"

    page.click("#filters button[data-status='ALL']")
    page.wait_for_function("document.querySelectorAll('#workflows tr[data-id]').length === 3")
    page.fill("#text-filter", "ml")  # matches the metadata of one
    page.wait_for_function("document.querySelectorAll('#workflows tr[data-id]').length === 1")
    assert page.get_attribute("#workflows tr[data-id]", "data-id") == "queued"

    page.fill("#text-filter", "")
    page.click("#workflows a:text('nightly-orders')")
    page.wait_for_selector("#workflow-view #wf-status .badge.FAILED")


def test_a_workflow_page_draws_its_graph_and_shows_a_failed_step(page, dash, tmp_path):
    make_failed()
    open_workflow(page, dash, "nightly-orders")
    drawn = graph(page)
    assert sorted(drawn["nodes"]) == sorted(
        [
            ["load_orders", "SUCCESSFUL"],
            ["load_customers", "SUCCESSFUL"],
            ["join", "SUCCESSFUL"],
            ["totals", "SUCCESSFUL"],
            ["validate", "FAILED"],
            ["report", "PENDING"],
        ]
    )
    assert drawn["deps"] == 6 and drawn["conts"] == []
    assert "ValueError: 3 rows have no tax rate for region 'us'" in page.text_content("#wf-error")
    assert page.is_enabled("#resume-btn") and not page.is_enabled("#cancel-btn")
    assert json.loads(page.text_content("#wf-meta")) == {"owner": "data-team", "date": "2025-06-01"}

    # The picture for the README (before a traceback, which names this machine's paths, opens).
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size < 300_000
    if os.environ.get("KEELFLOW_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)

    failed_row = "#steps tr[data-status='FAILED']"
    assert page.text_content(f"{failed_row} td:nth-child(5)") == "2"  # attempts
    assert not page.is_visible(f"{failed_row} details pre")
    page.click(f"{failed_row} details summary")
    traceback = page.text_content(f"{failed_row} details pre")
    assert traceback.startswith("Traceback (most recent call last)") and "in _check" in traceback
    assert page.is_visible(f"{failed_row} details pre")

    # Polling goes on, but nothing changed: no new layout, and the open traceback stays open.
    refreshes = page.evaluate("window.keelflowDash.refreshes")
    page.wait_for_function(f"window.keelflowDash.refreshes >= {refreshes + 2}")
    assert graph(page)["layouts"] == drawn["layouts"] == 1
    assert page.is_visible(f"{failed_row} details pre")


def test_a_dynamic_workflow_shows_its_continuations(page, dash):
    make_successful()
    open_workflow(page, dash, "fib-5")
    drawn = graph(page)
    statuses = [status for _, status in drawn["nodes"]]
    assert len(statuses) == 22 and statuses.count("CONTINUED") == 7 and statuses.count("SUCCESSFUL") == 15
    # Each fib step that continued made two smaller fibs: an edge to each, from the step.
    assert drawn["conts"] == ["CONTINUED"] * 14
    assert "continued by add" in page.text_content("#steps tr[data-index='0']")

    page.click("header.top nav a[data-nav='workflows']")
    page.wait_for_selector("#list-view")


def test_resume_finishes_a_workflow_whose_process_was_killed(page, dash, storage, tmp_path):
    wid, lever = make_resumable(storage, tmp_path)
    open_workflow(page, dash, wid)
    page.wait_for_selector("#wf-status .badge.RESUMABLE")
    assert [n[1] for n in sorted(graph(page)["nodes"])] == ["PENDING", "PENDING", "SUCCESSFUL"]  # finish hold prepare

    os.unlink(lever)  # the step goes through when run again
    assert page.is_enabled("#cancel-btn")
    page.click("#resume-btn")
    page.wait_for_selector("#wf-status .badge.SUCCESSFUL")
    assert workflow.get_output(wid) == "crashed!"
    page.wait_for_function("window.keelflowDash.cy.nodes('.SUCCESSFUL').length === 3")
    assert graph(page)["layouts"] == 1  # steps changed colour in place: the graph kept its layout
    assert not page.is_enabled("#resume-btn") and not page.is_enabled("#cancel-btn")


def test_cancel_stops_a_running_workflow(page, dash, tmp_path):
    lever = str(tmp_path / "lever-live")
    open(lever, "w").close()
    try:
        ref = ds.held(lever, "live").run_async(workflow_id="live")
        wait_for(lambda: os.path.exists(lever + ".started"), "the step to start")
        open_workflow(page, dash, "live")
        page.wait_for_selector("#wf-status .badge.RUNNING")
        assert page.evaluate("window.keelflowDash.cy.nodes('.RUNNING').length") == 1  # hold
        assert not page.is_enabled("#resume-btn")

        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#cancel-btn")
        page.wait_for_selector("#wf-status .badge.CANCELED")
        assert workflow.get_status("live") == workflow.WorkflowStatus.CANCELED
        with pytest.raises(workflow.WorkflowCancelledError):
            ref.result(timeout=20)
    finally:
        os.unlink(lever)


def test_the_actors_view_shows_state_and_calls(page, dash):
    account = ds.Account.get_or_create("acct-1", "ada")
    account.deposit.run(5)
    account.deposit.run(7)
    with pytest.raises(workflow.WorkflowExecutionError):
        account.deposit.run(-1)

    page.goto(dash.url + "#/actors")
    page.wait_for_selector("#actors tr[data-id='acct-1']")
    assert page.text_content("#actors tr[data-id='acct-1'] td:nth-child(4)") == "3"  # calls
    page.click("#actors a:text('acct-1')")
    page.wait_for_selector("#calls tr[data-status='FAILED']")
    assert json.loads(page.text_content("#actor-state")) == {"owner": "ada", "balance": 12, "history": [5, 7]}
    rows = page.eval_on_selector_all("#calls tbody tr", "rows => rows.map(r => r.dataset.status)")
    assert rows == ["SUCCESSFUL", "SUCCESSFUL", "FAILED"]
    assert "deposit must be positive, got -1" in page.text_content("#calls tr[data-status='FAILED']")


def test_a_big_workflow_draws_its_first_500_steps(page, dash):
    workflow.submit(ds.wide(600), workflow_id="wide")
    code, view = call(dash, "GET", "/api/workflows/wide")
    assert code == 200
    assert view["total_steps"] == 601 and len(view["steps"]) == 500 and view["truncated"]
    open_workflow(page, dash, "wide")
    assert len(graph(page)["nodes"]) == 500
    assert page.text_content("#graph-note") == "Showing the first 500 of 601 steps."
    assert page.eval_on_selector_all("#steps tbody tr", "rows => rows.length") == 500
