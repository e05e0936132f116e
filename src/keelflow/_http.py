"""What the worker's and the dashboard's HTTP endpoints share: where they may listen, who may
call them, how much of a request they read, and how they answer.

Every request to either server meets these rules (all refusals are JSON ``{"error": message}``):

* Who: with a token, the request must carry it (401). Without one (loopback only), its ``Host``
  must name this machine by a loopback address or the address listened on (403: DNS rebinding).
* POSTs from other sites: a POST must carry ``Content-Type: application/json`` (parameters such
  as ``; charset=utf-8`` allowed) or ``X-Requested-By: keelflow``. A page on another site can
  send neither without a CORS preflight, which is never granted (OPTIONS is not served). An
  ``Origin`` header, if sent, must name this server: the host and port of the ``Host`` header,
  or a loopback host with the port listened on. Otherwise 403, token or not.
* POST bodies: the length must be given as ``Content-Length`` (411 without it, chunked
  ``Transfer-Encoding`` included; 400 unless a whole number of bytes); over the endpoint's limit
  is 413, and the body is not read.
* Size and time: the request line and headers must fit in :data:`MAX_HEAD` bytes (414/431), and
  the whole request must arrive within the handler's ``timeout`` (else the connection is closed
  unanswered). Paths and queries are percent-encoded UTF-8 (400 otherwise).
* Load: at most ``max_connections`` connections are served at once; more get 503 at once.
* Failures: an unexpected exception in a handler is logged and answered with 500.
"""

from __future__ import annotations

import hmac
import http.server
import io
import ipaddress
import json
import logging
import re
import socket
import threading
import time
import urllib.parse
from typing import Any, ClassVar

from . import metrics
from .errors import KeelflowError

__all__ = ["MAX_CONNECTIONS", "MAX_HEAD", "TIMEOUT", "HTTPError", "Handler", "Listener", "check_listen", "loopback"]

log = logging.getLogger("keelflow")

#: Seconds a whole request (line, headers, body) may take to arrive.
TIMEOUT = 10.0
#: Connections served at once; each one holds a thread.
MAX_CONNECTIONS = 64
#: Bytes the request line and headers may take together.
MAX_HEAD = 64 << 10

_DEFAULT_PORTS = {"http": 80, "https": 443}


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


class HTTPError(Exception):
    """Answer the request with ``code`` and ``{"error": message}``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _HeadTooLarge(Exception):
    pass


class _Reader(io.RawIOBase):
    """A connection's reads, bounded in time (the request must arrive by ``deadline``) and in
    bytes (``budget``: :data:`MAX_HEAD` for the head, then the body's accepted length)."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.budget = MAX_HEAD

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.budget <= 0:
            raise _HeadTooLarge
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request took too long to arrive")
        # A socket timeout bounds each recv, not the request: a client sending a byte now and
        # then would hold its thread forever. Writes keep the full timeout.
        self.sock.settimeout(left)
        try:
            n = self.sock.recv_into(memoryview(buffer)[: self.budget])
        finally:
            self.sock.settimeout(self.timeout)
        self.budget -= n
        return n


def _host_port(value: str, scheme: str = "http") -> tuple[str, int | None]:
    """The host (lower case, IPv6 unbracketed) and port of ``host[:port]``; ValueError if malformed."""
    parts = urllib.parse.urlsplit(f"//{value}")
    return parts.hostname or "", parts.port or _DEFAULT_PORTS.get(scheme)


class Handler(http.server.BaseHTTPRequestHandler):
    """A JSON endpoint. Subclasses set ``token`` and ``bound_host`` (the address it listens on),
    and read POST bodies with :meth:`read_body` or :meth:`read_json` (which apply the rules in
    this module's docstring); raising :class:`HTTPError` answers with its code and message."""

    token: ClassVar[str | None] = None
    bound_host: ClassVar[str] = "127.0.0.1"
    #: Whether ``?token=`` may stand in for the header (a page opened in a browser).
    token_in_query: ClassVar[bool] = False
    #: Seconds the whole request may take to arrive; also bounds each write.
    timeout = TIMEOUT

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # its file object would keep the socket open after close()
        self._reader = _Reader(self.connection, self.timeout)
        self.rfile = io.BufferedReader(self._reader)
        self._answered = False
        # What send_response needs should the head be refused before it is parsed.
        self.command, self.requestline, self.request_version = "", "", "HTTP/1.0"

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()  # closes the connection itself on a timeout
        except HTTPError as e:
            self._refuse(e.code, e.message)
        except _HeadTooLarge:
            if not hasattr(self, "raw_requestline"):
                self._refuse(414, f"the request line is over {MAX_HEAD} bytes")
            else:
                self._refuse(431, f"the request line and headers are over {MAX_HEAD} bytes")
        except ConnectionError:
            self.close_connection = True  # the client went away
        except Exception as e:
            log.exception("http: %s failed", self.requestline)
            self._refuse(500, f"internal error ({type(e).__name__}); the server's log has the details")

    def _refuse(self, code: int, message: str) -> None:
        self.close_connection = True
        if not self._answered:  # else part of an answer went out: closing is all that is left
            try:
                self.reply(code, {"error": message})
            except OSError:
                pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The errors http.server finds itself (a bad request line, an unknown method...), as JSON."""
        self.log_error("code %d, message %s", code, message)
        self.close_connection = True
        short = self.responses.get(code, ("error", ""))[0]
        self.reply(code, {"error": (message or short) + (f": {explain}" if explain else "")})

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s - " + format, self.address_string(), *args)

    def send_body(self, code: int, body: bytes, content_type: str) -> None:
        self._answered = True
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
        """The path's segments and the query, percent-decoded as UTF-8 (400 if they are not)."""
        path, _, query = self.path.partition("#")[0].partition("?")
        try:
            # http.server decoded the request line as Latin-1: back to its bytes, so raw UTF-8
            # reads like its escapes, and bytes that are not UTF-8 are refused rather than
            # becoming U+FFFD (which would make different ids one).
            segments = [urllib.parse.unquote_to_bytes(p.encode("latin-1")).decode() for p in path.split("/") if p]
            return segments, urllib.parse.parse_qs(query.encode("latin-1").decode(), errors="strict")
        except UnicodeError:
            raise HTTPError(400, "the path and query must be UTF-8 (percent-encoded)") from None

    def send_metrics(self) -> None:
        body, content_type = metrics.exposition()
        self.send_body(200, body, content_type)

    def authorized(self, query: dict[str, list[str]] | None = None) -> bool:
        """Whether the request may proceed; answers 401/403 itself when not."""
        if not self.token:
            # A page elsewhere may point a name of its own at 127.0.0.1 (DNS rebinding):
            # without a token, answer only requests that name this machine as such.
            try:
                host = _host_port(self.headers.get("Host", ""))[0]
            except ValueError:
                raise HTTPError(400, f"bad Host header {self.headers.get('Host')!r}") from None
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

    def check_same_site(self) -> None:
        """Refuse (403) a POST a page on another site could have sent: see the module's docstring."""
        if (
            self.headers.get_content_type() != "application/json"
            and self.headers.get("X-Requested-By", "").strip() != "keelflow"
        ):
            raise HTTPError(
                403,
                "a POST must carry the header Content-Type: application/json or X-Requested-By: keelflow "
                "(a page on another site can send neither)",
            )
        origins = self.headers.get_all("Origin") or []
        if origins and (len(origins) > 1 or not self._is_this_server(origins[0])):
            raise HTTPError(
                403,
                f"a POST from another site (Origin: {', '.join(origins)}) is refused; "
                "send it without an Origin header, or from this server's own page",
            )

    def _is_this_server(self, origin: str) -> bool:
        try:
            parts = urllib.parse.urlsplit(origin)
            host, port = _host_port(parts.netloc, parts.scheme)
            # The Host header leaves out the port its scheme implies.
            to = _host_port(self.headers.get("Host", ""), parts.scheme)
        except ValueError:
            return False
        if parts.scheme not in _DEFAULT_PORTS or not host or parts.path or parts.query:
            return False  # "null", and what no browser sends
        return (host, port) == to or (loopback(host) and port == self.connection.getsockname()[1])

    def read_body(self, limit: int) -> bytes:
        """A POST's body, of at most ``limit`` bytes, once :meth:`check_same_site` passes."""
        self.check_same_site()
        if "Transfer-Encoding" in self.headers:
            raise HTTPError(411, "send the body with a Content-Length header, not a Transfer-Encoding")
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            raise HTTPError(411, "a POST needs a Content-Length header (Content-Length: 0 for no body)")
        if len(lengths) > 1 or not re.fullmatch(r"[0-9]{1,18}", lengths[0].strip()):
            raise HTTPError(400, f"bad Content-Length {', '.join(lengths)!r}: give one whole number of bytes")
        length = int(lengths[0])
        if length > limit:
            raise HTTPError(413, f"the body is {length} bytes; at most {limit} are accepted")
        self._reader.budget = length
        body = self.rfile.read(length)
        if len(body) < length:
            raise HTTPError(400, f"the body ended after {len(body)} of its {length} bytes")
        return body

    def read_json(self, limit: int) -> Any:
        """A POST's body (see :meth:`read_body`) as JSON; an empty body is None."""
        raw = self.read_body(limit)
        try:
            return json.loads(raw) if raw.strip() else None
        except RecursionError:
            raise HTTPError(400, "the body is not JSON this server reads: it is nested too deeply") from None
        except ValueError as e:
            raise HTTPError(400, f"the body is not JSON: {e}") from None


class _Server(http.server.ThreadingHTTPServer):
    """Serves each connection on a daemon thread (a hung request must not block exit), at most
    ``max_connections`` at once: beyond that, the accepting thread answers 503 and closes."""

    daemon_threads = True
    request_queue_size = 256  # a burst of connections waits to be accepted (or refused), not dropped

    def __init__(self, address: tuple[str, int], handler: type[Handler], max_connections: int) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(1)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


_BUSY_BODY = b'{"error": "too many connections at once; try again shortly"}'
_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
    b"Retry-After: 1\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


class Listener:
    """An HTTP server answering on its own threads, within the bounds in the module's docstring.

    ``timeout`` (default: the handler's, :data:`TIMEOUT`) and ``max_connections`` (default
    :data:`MAX_CONNECTIONS`) set them.
    """

    def __init__(
        self,
        host: str,
        port: int,
        handler: type[Handler],
        name: str,
        *,
        timeout: float | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if timeout is not None:
            handler = type(handler.__name__, (handler,), {"timeout": timeout})
        self._server = _Server((host, port), handler, max_connections)
        threading.Thread(target=self._server.serve_forever, args=(0.1,), name=name, daemon=True).start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
