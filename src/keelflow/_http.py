"""What the worker's and the dashboard's HTTP endpoints share: where they may listen, who may
call them, and how they answer."""

from __future__ import annotations

import hmac
import http.server
import ipaddress
import json
import logging
import socket
import threading
import urllib.parse
from typing import Any, ClassVar

from . import metrics
from .errors import KeelflowError

__all__ = ["Handler", "Listener", "check_listen", "loopback"]

log = logging.getLogger("keelflow")


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_listen(host: str, token: str | None, what: str, how: str) -> None:
    """Refuse to serve beyond this machine without a token."""
    if not loopback(host) and not token:
        raise KeelflowError(f"{what} would listen on {host}, beyond this machine, without a token: {how}")


class Handler(http.server.BaseHTTPRequestHandler):
    """A JSON endpoint. Subclasses set ``token`` and ``bound_host`` (the address it listens on)."""

    token: ClassVar[str | None] = None
    bound_host: ClassVar[str] = "127.0.0.1"
    #: Whether ``?token=`` may stand in for the header (a page opened in a browser).
    token_in_query: ClassVar[bool] = False

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s - " + format, self.address_string(), *args)

    def send_body(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def reply(self, code: int, body: Any) -> None:
        self.send_body(code, json.dumps(body, allow_nan=False).encode(), "application/json")

    def split(self) -> tuple[list[str], dict[str, list[str]]]:
        """The path's segments (unquoted) and the query."""
        parts = urllib.parse.urlsplit(self.path)
        return [urllib.parse.unquote(p) for p in parts.path.split("/") if p], urllib.parse.parse_qs(parts.query)

    def send_metrics(self) -> None:
        body, content_type = metrics.exposition()
        self.send_body(200, body, content_type)

    def authorized(self, query: dict[str, list[str]] | None = None) -> bool:
        """Whether the request may proceed; answers 401/403 itself when not."""
        if not self.token:
            # A page elsewhere may point a name of its own at 127.0.0.1 (DNS rebinding):
            # without a token, answer only requests that name this machine as such.
            host = urllib.parse.urlsplit(f"//{self.headers.get('Host', '')}").hostname or ""
            if host and not loopback(host) and host != self.bound_host:
                self.reply(
                    403,
                    {
                        "error": f"requests must name this machine by a loopback address (Host: {host!r}); "
                        "to be reached by other names, start it with a token"
                    },
                )
                return False
            return True
        header = self.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            given = header[len("Bearer ") :]
        elif self.token_in_query and query:
            given = (query.get("token") or [""])[-1]
        else:
            given = ""
        if hmac.compare_digest(given.encode(), self.token.encode()):
            return True
        where = "Authorization: Bearer <token>" + (", or ?token=<token>" if self.token_in_query else "")
        self.reply(401, {"error": f"missing or wrong token ({where})"})
        return False


class _V6Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


class Listener:
    """An HTTP server answering on daemon threads (a hung request must not block exit)."""

    def __init__(self, host: str, port: int, handler: type[Handler], name: str) -> None:
        server_cls = _V6Server if ":" in host else http.server.ThreadingHTTPServer
        self._server = server_cls((host, port), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.1,), name=name, daemon=True).start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
