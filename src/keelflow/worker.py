"""The long-running worker (``keelflow worker``): keeps a storage's workflows and actors going.

It resumes every workflow no live process runs (``RESUMABLE``: its first runner died, or it
was ``submit``-ted), runs the calls left queued on actors, fires timers as they fall due (a
sleeping workflow sleeps in the worker's event loop), and serves an HTTP endpoint that
delivers external events. Leases make it safe to run several workers on one storage: a
workflow is run by one of them at a time. On SIGTERM or SIGINT it stops: running steps are
abandoned and their workflows stay resumable, so the next worker goes on from the last
checkpoint and nothing checkpointed is lost.

HTTP (bound to 127.0.0.1 unless told otherwise; any other address needs a token, sent as
``Authorization: Bearer <token>``)::

    POST /events/<workflow_id>/<key>   body: the JSON payload (empty body: null), 202
    POST /event/send_event/<workflow_id>  Ray 2.x's HTTP event provider: body
                                       {"event_key": ..., "event_payload": ...}, 200
    GET  /workflows/<workflow_id>      {"workflow_id": ..., "status": ...}
    GET  /health                       {"status": "ok", "running": n}
    GET  /metrics                      Prometheus metrics (see keelflow.metrics)

A POST must carry ``Content-Type: application/json`` or ``X-Requested-By: keelflow`` (a page on
another site can send neither) and no ``Origin`` but this server's (else 403), and a
``Content-Length`` (411 without one) of at most 1 MiB (413). Errors are ``{"error": message}``.
A request must arrive within 10 s, and at most 64 are served at once (503 beyond). The rules in
full, shared with the dashboard, are in ``keelflow._http``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from . import api
from ._http import Handler, Listener, check_listen
from .errors import InvalidIdError, SerializationError, StorageError, WorkflowNotFoundError

__all__ = ["Worker"]

log = logging.getLogger("keelflow")

#: The largest event body the endpoint accepts.
MAX_BODY = 1 << 20


class Worker:
    """Resumes what needs resuming, every ``poll`` seconds, until :meth:`stop`."""

    def __init__(
        self,
        storage: str | None = None,
        *,
        executor: str | None = None,
        host: str = "127.0.0.1",
        port: int | None = 8765,
        token: str | None = None,
        poll: float = 1.0,
    ) -> None:
        if port is not None:
            how = "give --token (or $KEELFLOW_WORKER_TOKEN), or bind to 127.0.0.1"
            check_listen(host, token, "the worker's event endpoint", how)
        if poll <= 0:
            raise ValueError(f"poll must be > 0 seconds, got {poll!r}")
        self.storage = storage
        self.executor = executor
        self.host = host
        self.port = port
        self.token = token
        self.poll = poll
        self._stop = threading.Event()
        self._server: Listener | None = None
        self.running: dict[str, Any] = {}  # workflow id -> ref, for workflows this worker took

    @property
    def address(self) -> tuple[str, int] | None:
        """Where the event endpoint listens (once started)."""
        return None if self._server is None else self._server.address

    def start(self) -> None:
        api.init(self.storage, executor=self.executor)
        if self.port is not None:
            self._server = Listener(self.host, self.port, _handler(self), "keelflow-http")

    def run(self) -> None:
        """Start, then :meth:`serve`."""
        self.start()
        self.serve()

    def serve(self) -> None:
        """Resume work every ``poll`` seconds until stopped (SIGTERM/SIGINT too), then close."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self._stop.set())
        try:
            while not self._stop.is_set():
                self.tick()
                self._stop.wait(self.poll)
        finally:
            self.close()

    def tick(self) -> None:
        """One round: take every workflow and actor queue nobody runs."""
        for wid in [w for w, ref in self.running.items() if ref.done()]:
            del self.running[wid]
        try:
            for wid, ref in api.resume_all():
                log.info("worker resumed workflow %s", wid)
                self.running[wid] = ref
        except Exception:
            log.exception("worker could not resume workflows")

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Stop serving and running: what ran stays resumable for the next worker."""
        if self._server is not None:
            self._server.close()
            self._server = None
        api.shutdown()


def _handler(worker: Worker) -> type[Handler]:
    class WorkerHandler(Handler):
        server_version = "keelflow-worker"
        token = worker.token
        bound_host = worker.host

        def do_GET(self) -> None:
            if not self.authorized():
                return
            parts = self.split()[0]
            if parts == ["health"]:
                self.reply(200, {"status": "ok", "running": sum(not r.done() for r in worker.running.values())})
            elif parts == ["metrics"]:
                self.send_metrics()
            elif len(parts) == 2 and parts[0] == "workflows":
                try:
                    status = api.get_status(parts[1])
                except (WorkflowNotFoundError, InvalidIdError) as e:
                    self.reply(404, {"error": str(e)})
                    return
                self.reply(200, {"workflow_id": parts[1], "status": status.value})
            else:
                self.reply(404, {"error": f"no such endpoint: GET {self.path}"})

        def do_POST(self) -> None:
            if not self.authorized():
                return
            parts = self.split()[0]
            if len(parts) == 3 and parts[0] == "events":
                _, workflow_id, key = parts
                payload = self.read_json(MAX_BODY)
                if self.deliver(workflow_id, key, payload):
                    self.reply(202, {"workflow_id": workflow_id, "key": key, "stored": time.time()})
            elif len(parts) == 3 and parts[:2] == ["event", "send_event"]:
                # Ray 2.x's HTTP event provider: {"event_key": ..., "event_payload": ...}.
                body = self.read_json(MAX_BODY)
                if not isinstance(body, dict) or not {"event_key", "event_payload"} <= body.keys():
                    self.reply(
                        400, {"error": 'the body must be a JSON object {"event_key": ..., "event_payload": ...}'}
                    )
                    return
                if not isinstance(body["event_key"], str):
                    self.reply(400, {"error": "event_key must be a string"})
                    return
                if self.deliver(parts[2], body["event_key"], body["event_payload"]):
                    self.reply(200, {})
            else:
                self.reply(
                    404,
                    {
                        "error": f"no such endpoint: POST {self.path} (POST /events/<workflow_id>/<key>, "
                        "or Ray 2.x's POST /event/send_event/<workflow_id>)"
                    },
                )

        def deliver(self, workflow_id: str, key: str, payload: Any) -> bool:
            """Store the event durably; False once a refusal is answered."""
            try:
                api.validate_id(workflow_id)
                api.validate_id(key, "event key")
                api.get_status(workflow_id)
            except InvalidIdError as e:
                self.reply(400, {"error": str(e)})
                return False
            except WorkflowNotFoundError as e:
                self.reply(404, {"error": f"{e}; send events to a workflow that was started or submitted"})
                return False
            except StorageError as e:  # its journal is damaged, say: the message names it
                self.reply(500, {"error": str(e)})
                return False
            from .events import send_event

            try:
                send_event(workflow_id, key, payload)
            except SerializationError as e:  # JSON nested deeper than pickle goes, say
                self.reply(400, {"error": f"the payload cannot be stored: {e}"})
                return False
            return True

    return WorkerHandler
