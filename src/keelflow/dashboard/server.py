"""The dashboard's HTTP server: a JSON API over :mod:`keelflow.views` and the management API,
the single-page app that shows it, and ``/metrics``.

API (JSON; errors are ``{"error": message}`` with 400 for bad input, 404 for an unknown id)::

    GET  /api/workflows?status=S[,S…]&limit=N  {"workflows": [...], "counts": {...}, "total": n}
    GET  /api/workflows/<id>?limit=N           workflow_view(), steps cut to the first N (500)
    POST /api/workflows/<id>/resume            resume_async() in this process
    POST /api/workflows/<id>/cancel            cancel()
    GET  /api/actors                           {"actors": [get_actor_metadata() less state]}
    GET  /api/actors/<id>?limit=N              get_actor_metadata() and "calls" (the last N)
    GET  /metrics                              Prometheus text format

Bound to 127.0.0.1 unless told otherwise; any other address needs a token, given as
``Authorization: Bearer <token>`` or ``?token=<token>`` (the page passes it on to the API).
POSTs must carry ``X-Requested-By: keelflow`` (the page sends it) or ``Content-Type:
application/json``, which a page on another site cannot send, and no ``Origin`` but this
server's (else 403); and a ``Content-Length`` (411 without one) of at most 64 KiB (413): the
actions take no body. These rules, and the bounds on time and connections, are shared with the
worker and set out in ``keelflow._http``.
"""

from __future__ import annotations

import logging
import math
import mimetypes
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import actors as actor_api
from .. import api, views
from .._http import Handler, HTTPError, Listener, check_listen
from ..errors import (
    ActorNotFoundError,
    InvalidIdError,
    KeelflowError,
    StepNotFoundError,
    WorkflowCancelledError,
    WorkflowNotFoundError,
    WorkflowRunningError,
)

__all__ = ["STEP_LIMIT", "Dashboard", "serve"]

log = logging.getLogger("keelflow")

STATIC = Path(__file__).parent / "static"
#: Steps sent (and drawn) per workflow unless the client asks for more: beyond a few hundred
#: nodes a graph is neither readable nor quick to lay out.
STEP_LIMIT = 500
LIST_LIMIT = 1000
MAX_LIMIT = 100_000
#: The largest POST body accepted (and ignored).
MAX_BODY = 1 << 16
STATUSES = tuple(s.value for s in api.WorkflowStatus)
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".md": "text/plain", "": "text/plain"}


class Dashboard:
    """The dashboard's server; keelflow must be initialised (storage chosen) by the caller."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8370, *, token: str | None = None) -> None:
        check_listen(
            host, token, "the dashboard", "give a token (the page is then opened with ?token=...), or bind to 127.0.0.1"
        )
        self.host = host
        self.port = port
        self.token = token
        self._server: Listener | None = None
        self._resumed: dict[str, Any] = {}  # workflow id -> ref of a run this process resumed
        self._lock = threading.Lock()

    @property
    def address(self) -> tuple[str, int] | None:
        """Where the server listens (once started)."""
        return None if self._server is None else self._server.address

    @property
    def url(self) -> str:
        address = self.address
        if address is None:
            raise RuntimeError("the dashboard is not started")
        host, port = address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def start(self) -> Dashboard:
        """Listen, and answer requests in background threads."""
        self._server = Listener(self.host, self.port, _handler(self), "keelflow-dashboard")
        return self

    def close(self) -> None:
        """Stop serving; workflows it resumed go on running in this process."""
        if self._server is not None:
            self._server.close()
            self._server = None

    # -- the API -------------------------------------------------------------------------------
    def workflows(self, query: dict[str, list[str]]) -> dict[str, Any]:
        wanted = None
        if query.get("status"):
            wanted = {s.strip().upper() for item in query["status"] for s in item.split(",") if s.strip()}
            unknown = sorted(wanted - set(STATUSES))
            if unknown:
                raise HTTPError(400, f"unknown status {unknown[0]!r}; use one of {', '.join(STATUSES)}")
        limit = _limit(query, LIST_LIMIT)
        rows = views.list_view()
        counts = dict.fromkeys(STATUSES, 0)
        for row in rows:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        shown = [r for r in rows if wanted is None or r["status"] in wanted]
        return {
            "workflows": shown[:limit],
            "matched": len(shown),
            "truncated": len(shown) > limit,
            "counts": counts,
            "total": len(rows),
        }

    def workflow(self, wid: str, query: dict[str, list[str]]) -> dict[str, Any]:
        limit = _limit(query, STEP_LIMIT)
        view = views.workflow_view(wid)
        steps = view["steps"]
        view["total_steps"] = len(steps)
        view["truncated"] = len(steps) > limit
        view["steps"] = steps[:limit]
        status = view["status"]
        view["can_resume"] = status in ("FAILED", "RESUMABLE")
        view["can_cancel"] = status in ("RUNNING", "RESUMABLE")
        return view

    def resume(self, wid: str) -> dict[str, Any]:
        ref = api.resume_async(wid)
        with self._lock:
            for done in [w for w, r in self._resumed.items() if r.done()]:
                del self._resumed[done]
            self._resumed[wid] = ref
        log.info("dashboard resumed workflow %s", wid, extra={"workflow_id": wid})
        return {"workflow_id": wid, "status": api.get_status(wid).value}

    def cancel(self, wid: str) -> dict[str, Any]:
        api.cancel(wid)
        log.info("dashboard cancelled workflow %s", wid, extra={"workflow_id": wid})
        return {"workflow_id": wid, "status": api.get_status(wid).value}

    def actors(self) -> dict[str, Any]:
        rows = []
        for actor_id in actor_api.list_actors():
            try:
                meta = actor_api.get_actor_metadata(actor_id)
            except ActorNotFoundError:
                continue  # deleted meanwhile
            except Exception as e:  # its state may need a class this process cannot import
                rows.append({"actor_id": actor_id, "error": _describe(e)})
                continue
            meta.pop("state", None)
            rows.append(meta)
        return {"actors": rows}

    def actor(self, actor_id: str, query: dict[str, list[str]]) -> dict[str, Any]:
        limit = _limit(query, LIST_LIMIT)
        api.validate_id(actor_id, "actor id")
        try:
            out = actor_api.get_actor_metadata(actor_id)
        except KeelflowError:
            raise
        except Exception as e:
            out = {"actor_id": actor_id, "state_error": f"cannot load its state here: {_describe(e)}"}
        try:
            calls = actor_api.list_actor_calls(actor_id)
        except KeelflowError:
            raise
        except Exception as e:
            calls = []
            out["calls_error"] = f"cannot read its calls here: {_describe(e)}"
        out["total_calls"] = len(calls)
        out["truncated"] = len(calls) > limit
        out["calls"] = calls[-limit:]
        return out


def _limit(query: dict[str, list[str]], default: int) -> int:
    given = query.get("limit")
    if not given:
        return default
    raw = given[-1]
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_LIMIT:
        raise HTTPError(400, f"limit must be a whole number from 1 to {MAX_LIMIT}, got {raw!r}")
    return value


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _jsonable(value: Any) -> Any:
    """User data (metadata, actor state) as strict JSON: a browser's JSON.parse takes no NaN."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    return repr(value)


def _error_code(e: BaseException) -> int:
    if isinstance(e, (WorkflowNotFoundError, ActorNotFoundError, StepNotFoundError)):
        return 404
    if isinstance(e, InvalidIdError):
        return 400
    if isinstance(e, (WorkflowRunningError, WorkflowCancelledError)):
        return 409
    return 409 if isinstance(e, KeelflowError) else 500


def _handler(dash: Dashboard) -> type[Handler]:
    class DashboardHandler(Handler):
        server_version = "keelflow-dashboard"
        token = dash.token
        bound_host = dash.host
        token_in_query = True

        def reply(self, code: int, body: Any) -> None:
            super().reply(code, _jsonable(body))

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            segments, query = self.split()
            if not segments or segments == ["index.html"]:
                self._static(["index.html"])
            elif segments[0] == "static":
                self._static(segments[1:])
            elif not self.authorized(query):
                return
            elif segments == ["metrics"]:
                self.send_metrics()
            elif segments[0] == "api":
                self._api("GET", segments[1:], query)
            else:
                self.reply(404, {"error": f"no such page: {self.path}"})

        def do_POST(self) -> None:
            segments, query = self.split()
            if not self.authorized(query):
                return
            self.read_body(MAX_BODY)  # the actions take no body: what is sent is read and ignored
            if segments[:1] == ["api"]:
                self._api("POST", segments[1:], query)
            else:
                self.reply(404, {"error": f"no such endpoint: POST {self.path}"})

        def _api(self, method: str, parts: list[str], query: dict[str, list[str]]) -> None:
            route: Callable[[], Any] | None = None
            if method == "GET":
                if parts == ["workflows"]:
                    route = lambda: dash.workflows(query)  # noqa: E731
                elif len(parts) == 2 and parts[0] == "workflows":
                    route = lambda: dash.workflow(parts[1], query)  # noqa: E731
                elif parts == ["actors"]:
                    route = dash.actors
                elif len(parts) == 2 and parts[0] == "actors":
                    route = lambda: dash.actor(parts[1], query)  # noqa: E731
            elif len(parts) == 3 and parts[0] == "workflows" and parts[2] in ("resume", "cancel"):
                action = dash.resume if parts[2] == "resume" else dash.cancel
                route = lambda: action(parts[1])  # noqa: E731
            if route is None:
                self.reply(404, {"error": f"no such endpoint: {method} {self.path}"})
                return
            try:
                body = route()
            except HTTPError as e:
                self.reply(e.code, {"error": e.message})
            except Exception as e:
                code = _error_code(e)
                if code == 500:
                    log.exception("dashboard: %s %s failed", method, self.path)
                self.reply(code, {"error": str(e) or type(e).__name__})
            else:
                self.reply(200, body)

        def _static(self, parts: list[str]) -> None:
            path = STATIC.joinpath(*parts).resolve() if parts else STATIC
            if STATIC.resolve() not in path.parents or not path.is_file() or any(p.startswith(".") for p in parts):
                self.reply(404, {"error": f"no such file: {self.path}"})
                return
            content_type = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if content_type.startswith("text/"):
                content_type += "; charset=utf-8"
            self.send_body(200, path.read_bytes(), content_type)

    return DashboardHandler


def serve(
    host: str = "127.0.0.1",
    port: int = 8370,
    token: str | None = None,
    ready: Callable[[tuple[str, int]], Any] | None = None,
) -> None:
    """Serve the dashboard until SIGINT or SIGTERM (or KeyboardInterrupt).

    Args:
        host: the address to listen on; any but a loopback address needs ``token``.
        port: the port (0: any free port; ``ready`` is told which).
        token: required of every API request (``Authorization: Bearer`` or ``?token=``).
        ready: called with the bound ``(host, port)`` once the server listens.

    keelflow must be initialised (:func:`keelflow.init`) by the caller. Workflows resumed from
    the dashboard run in this process; when it stops they stay resumable.
    """
    dash = Dashboard(host, port, token=token).start()
    stop = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        address = dash.address
        assert address is not None
        log.info("keelflow dashboard on %s", dash.url)
        if ready is not None:
            ready(address)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        dash.close()
