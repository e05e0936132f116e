"""Storage in an S3 bucket, or any S3-compatible object store.

``s3://bucket/prefix?endpoint_url=http://host:9000&lease_seconds=10`` (both options optional).
Credentials, region and the default endpoint come from boto3's usual chain (``AWS_*``
environment variables, ``~/.aws``, instance roles); ``endpoint_url`` in the URL wins over
``AWS_ENDPOINT_URL``. Needs boto3: ``pip install 'keelflow[s3]'``.

Every write is one ``PutObject``, atomic by S3's own promise. S3 cannot append, so the
journal is written as numbered segments, each created with ``If-None-Match: *``: two runners
can never both write the same one.

Leases are small JSON objects kept with conditional writes, never read-then-write races:
creating one uses ``If-None-Match: *``, taking over an expired or released one uses
``If-Match`` on the ETag just read, and the holder renews it every ttl/3 (``If-Match`` on its
own last ETag) from one heartbeat thread per storage. A holder that dies stops renewing, and
the lease is free once its expiry time has passed on the reader's clock, plus a margin: this
assumes the machines' clocks agree to within :data:`CLOCK_SKEW` seconds (NTP does far better).
A holder that stalls past its ttl and finds its lease taken over stops renewing, and its
lease's ``held`` turns False.
"""

from __future__ import annotations

import json
import logging
import math
import random
import secrets
import threading
import time
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from ..errors import StorageError, StorageURLError
from .base import Lease, Storage

__all__ = ["CLOCK_SKEW", "DEFAULT_LEASE_SECONDS", "S3Storage"]

log = logging.getLogger("keelflow")

#: Default lease ttl: how long after a holder's last renewal others may take its lease.
DEFAULT_LEASE_SECONDS = 10.0
#: How far apart the clocks of two machines sharing a bucket may be, in seconds.
CLOCK_SKEW = 1.0
_MIN_LEASE_SECONDS = 0.5
_OPTIONS = ("endpoint_url", "lease_seconds", "addressing_style")
_ADDRESSING = ("auto", "path", "virtual")
#: Metadata carried by put_if_absent writes, to recognise our own write behind a retry.
_TOKEN_META = "keelflow-token"
# The engine flushes from 8 threads; resume, heartbeats and user threads share the pool too.
_POOL_CONNECTIONS = 32
_RENEW_THREADS = 8
_CONFLICT_RETRIES = 8
#: Keys per listing page (S3's maximum, and as many as one DeleteObjects takes).
_PAGE = 1000

_HELD, _RELEASED, _LOST = "held", "released", "lost"

_session_lock = threading.Lock()
_session: Any = None


class _NotFound(Exception):
    """No object at the key (or a conditional write found none)."""


class _Refused(Exception):
    """A precondition (If-Match / If-None-Match) did not hold."""


class _BadRange(Exception):
    """A ranged read started at or past the object's end."""


def _import_boto() -> tuple[Any, Any]:
    try:
        import boto3
        import botocore.config
        import botocore.exceptions
    except ImportError as e:
        raise StorageError("s3:// storage needs boto3; install it with: pip install 'keelflow[s3]'") from e
    return boto3, botocore


def _new_client(boto3: Any, botocore: Any, endpoint_url: str | None, options: dict[str, Any]) -> Any:
    global _session
    # Creating a client through one session reuses its parsed service models (a fresh
    # session costs ~0.1 s more); sessions are not thread-safe, hence the lock.
    with _session_lock:
        if _session is None:
            _session = boto3.session.Session()
        if _session._session.get_config_variable("max_attempts") is None:
            # Few attempts, so that a dead endpoint fails in seconds; AWS_MAX_ATTEMPTS (or
            # max_attempts in the AWS config file) overrides this.
            options = {**options, "retries": {"total_max_attempts": 3, "mode": "standard"}}
        return _session.client("s3", endpoint_url=endpoint_url, config=botocore.config.Config(**options))


def parse_url(url: str) -> tuple[str, str, dict[str, str]]:
    """``(bucket, prefix, options)`` of an ``s3://`` URL; :class:`StorageError` naming what is wrong."""
    split = urlsplit(url)
    if split.scheme.lower() != "s3":
        raise StorageURLError(f"not an s3:// URL: {url!r}")
    bucket = split.netloc
    if not bucket:
        raise StorageURLError(f"s3 URL {url!r} names no bucket; use s3://bucket/prefix")
    if any(c in bucket for c in ":@ \t") or bucket != bucket.strip("."):
        raise StorageURLError(
            f"s3 URL {url!r}: {bucket!r} is not a bucket name; give the endpoint as an option: "
            "s3://bucket/prefix?endpoint_url=http://host:port"
        )
    options: dict[str, str] = {}
    try:
        pairs = parse_qsl(split.query, keep_blank_values=True, strict_parsing=bool(split.query))
    except ValueError as e:
        raise StorageURLError(f"s3 URL {url!r} has a malformed query: {e}") from e
    for name, value in pairs:
        if name not in _OPTIONS:
            raise StorageURLError(f"s3 URL {url!r}: unknown option {name!r}; known options: {', '.join(_OPTIONS)}")
        options[name] = value
    return bucket, unquote(split.path).strip("/"), options


class _S3Lease(Lease):
    """A lease object this process wrote; kept alive by its storage's heartbeat."""

    def __init__(self, storage: S3Storage, key: str, owner: bytes) -> None:
        self._storage = storage
        self.key = key
        self.owner = owner
        self.token = secrets.token_hex(16)
        self.lock = threading.Lock()
        self.state = _HELD
        self.etag = ""
        self.valid_until = 0.0  # monotonic: past it, others may take the lease over
        self.next_renewal = 0.0  # monotonic

    def body(self, *, released: bool = False) -> bytes:
        ttl = self._storage.lease_seconds
        return json.dumps(
            {
                "owner": self.owner.decode("latin-1"),
                "token": self.token,
                "expires": time.time() + (0.0 if released else ttl),
                "ttl": ttl,
                "released": released,
            }
        ).encode()

    def granted(self, etag: str, sent: float) -> None:
        """Record a successful write of ours begun at monotonic time ``sent``."""
        ttl = self._storage.lease_seconds
        self.etag = etag
        self.valid_until = sent + ttl
        self.next_renewal = sent + ttl / 3

    def renew(self) -> None:
        store = self._storage
        with self.lock:
            if self.state != _HELD:
                return
            sent = time.monotonic()
            try:
                etag = store._put_lease(self.key, self.body(), IfMatch=self.etag)
            except (_Refused, _NotFound):
                try:
                    current = store._read_lease(self.key)
                except StorageError:
                    current = None
                if current is not None and current[0].get("token") == self.token:
                    # Our write landed but its reply was lost; a retry then met our own ETag.
                    self.granted(current[1], sent)
                    return
                self.state = _LOST
                store._heartbeat.discard(self)
                log.warning(
                    "lease %s was taken over or deleted by another process (this one stalled past its %g s ttl?)",
                    store.location(self.key),
                    store.lease_seconds,
                )
                return
            except StorageError as e:
                self.next_renewal = time.monotonic() + store.lease_seconds / 6
                log.warning("cannot renew lease %s (will retry): %s", store.location(self.key), e)
                return
            self.granted(etag, sent)

    def release(self) -> None:
        store = self._storage
        with self.lock:
            state, self.state = self.state, _RELEASED
            if state != _HELD:
                return
            store._heartbeat.discard(self)
            try:
                # Marked released rather than deleted: the mark is conditional on our ETag,
                # so a lease someone else took over meanwhile is left alone.
                store._put_lease(self.key, self.body(released=True), IfMatch=self.etag)
            except (_Refused, _NotFound):
                pass
            except StorageError as e:
                log.warning(
                    "cannot release lease %s; it expires in %g s: %s", store.location(self.key), store.lease_seconds, e
                )

    @property
    def held(self) -> bool:
        return self.state == _HELD and time.monotonic() < self.valid_until


class _Heartbeat:
    """One thread renewing every held lease of a storage; it exits when none is held."""

    def __init__(self, name: str, linger: float) -> None:
        self._name = name
        self._cond = threading.Condition()
        self._leases: set[_S3Lease] = set()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._linger = linger

    def add(self, lease: _S3Lease) -> None:
        with self._cond:
            if self._closed:
                return
            self._leases.add(lease)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def discard(self, lease: _S3Lease) -> None:
        with self._cond:
            self._leases.discard(lease)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._leases.clear()
            self._cond.notify()

    def _due(self) -> list[_S3Lease] | None:
        """Leases due for renewal, waiting until some are; None when the thread should end."""
        with self._cond:
            while not self._closed:
                if not self._leases:
                    # Linger a while: workflows often take a lease right after giving one up.
                    if not self._cond.wait(self._linger) and not self._leases:
                        break
                    continue
                now = time.monotonic()
                due = [lease for lease in self._leases if lease.next_renewal <= now]
                if due:
                    return due
                self._cond.wait(min(lease.next_renewal for lease in self._leases) - now)
            self._thread = None
            return None

    def _run(self) -> None:
        while (due := self._due()) is not None:
            if len(due) == 1:
                _renew_quietly(due[0])
            else:
                _renew_together(due)


def _renew_together(due: list[_S3Lease]) -> None:
    # Hundreds of leases fall due together after a burst of starts: renew them in parallel,
    # so that a round trip each does not add up past the ttl.
    pending = iter(due)
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                lease = next(pending, None)
            if lease is None:
                return
            _renew_quietly(lease)

    workers = [
        threading.Thread(target=work, name="keelflow-s3-renew", daemon=True)
        for _ in range(min(len(due), _RENEW_THREADS))
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def _renew_quietly(lease: _S3Lease) -> None:
    try:
        lease.renew()
    except Exception:  # the heartbeat must outlive any one failure
        log.exception("renewing lease %s failed", lease.key)
        lease.next_renewal = time.monotonic() + 1.0


def _live(info: dict[str, Any]) -> bool:
    try:
        expires = float(info["expires"])
    except (KeyError, TypeError, ValueError):
        return False  # not a lease we can read: nobody can be relying on it
    return not info.get("released") and time.time() <= expires + CLOCK_SKEW


class S3Storage(Storage):
    """Keys are objects below ``prefix`` in ``bucket``."""

    can_append = False
    shared = True
    _page = _PAGE

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        addressing_style: str | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url or None
        self.lease_seconds = float(lease_seconds)
        self.addressing_style = addressing_style or None
        self.url = self._make_url()
        if not (math.isfinite(self.lease_seconds) and self.lease_seconds >= _MIN_LEASE_SECONDS):
            raise StorageURLError(
                f"{self.url}: lease_seconds must be a number >= {_MIN_LEASE_SECONDS}, got {lease_seconds!r}"
            )
        if self.addressing_style is not None and self.addressing_style not in _ADDRESSING:
            raise StorageURLError(f"{self.url}: addressing_style must be one of {', '.join(_ADDRESSING)}")
        boto3, botocore = _import_boto()
        self._exc = botocore.exceptions
        options: dict[str, Any] = {
            "connect_timeout": 3,
            "read_timeout": 30,
            "max_pool_connections": _POOL_CONNECTIONS,
            "user_agent_extra": "keelflow",
        }
        if self.addressing_style:
            options["s3"] = {"addressing_style": self.addressing_style}
        try:
            self._client = _new_client(boto3, botocore, self.endpoint_url, options)
        except (self._exc.BotoCoreError, ValueError) as e:
            raise StorageError(f"cannot open {self.url}: {e}", path=self.url) from e
        self._heartbeat = _Heartbeat(f"keelflow-s3-heartbeat {self.location('')}", linger=self.lease_seconds)

    @classmethod
    def from_url(cls, url: str) -> S3Storage:
        bucket, prefix, options = parse_url(url)
        lease = options.get("lease_seconds")
        try:
            seconds = float(lease) if lease is not None else DEFAULT_LEASE_SECONDS
        except ValueError:
            raise StorageURLError(f"s3 URL {url!r}: lease_seconds must be a number of seconds, got {lease!r}") from None
        return cls(
            bucket,
            prefix,
            endpoint_url=options.get("endpoint_url"),
            lease_seconds=seconds,
            addressing_style=options.get("addressing_style"),
        )

    def _make_url(self) -> str:
        options: dict[str, str] = {}
        if self.endpoint_url:
            options["endpoint_url"] = self.endpoint_url
        if self.lease_seconds != DEFAULT_LEASE_SECONDS:
            options["lease_seconds"] = f"{self.lease_seconds:g}"
        if self.addressing_style:
            options["addressing_style"] = self.addressing_style
        query = "?" + urlencode(options, safe=":/") if options else ""
        return f"s3://{self.bucket}/{quote(self.prefix, safe='/')}{query}"

    # -- helpers -----------------------------------------------------------------------------
    def _key(self, key: str) -> str:
        key = key.strip("/")
        if not self.prefix:
            return key
        return f"{self.prefix}/{key}" if key else self.prefix

    def _below(self, prefix: str) -> str:
        """The object-key prefix of everything below ``prefix``."""
        full = self._key(prefix)
        return full + "/" if full else ""

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _endpoint(self) -> str:
        return str(self._client.meta.endpoint_url)

    def _error(self, action: str, key: str, e: Exception) -> StorageError:
        where = self.location(key)
        exc = self._exc
        if isinstance(e, exc.ClientError):
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = err.get("Message") or ""
            if code == "NoSuchBucket":
                reason = f"bucket {self.bucket!r} does not exist at {self._endpoint()}"
            elif status == 403 and code not in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"):
                reason = f"access denied ({code or status}: {message}); check the credentials and the bucket's policy"
            elif code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
                reason = f"the credentials were refused ({code}: {message})"
            else:
                reason = f"{code or status}: {message}"
        elif isinstance(e, (exc.NoCredentialsError, exc.PartialCredentialsError)):
            reason = "no usable AWS credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
        elif isinstance(e, (exc.ConnectionError, exc.HTTPClientError)):
            reason = f"cannot reach the S3 endpoint {self._endpoint()}: {e}"
        else:
            reason = str(e)
        return StorageError(f"cannot {action} {where}: {reason}", path=where)

    def _request(self, operation: str, action: str, key: str, **params: Any) -> Any:
        """One S3 call on the object ``key``. Expected outcomes are raised as ``_NotFound``,
        ``_Refused`` and ``_BadRange``; every other failure as :class:`StorageError`."""
        exc = self._exc
        for attempt in range(_CONFLICT_RETRIES):
            try:
                return getattr(self._client, operation)(Bucket=self.bucket, **params)
            except exc.ClientError as e:
                code = str(e.response.get("Error", {}).get("Code", ""))
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if code == "ConditionalRequestConflict":
                    # Another conditional write on this key is in flight; its outcome decides ours.
                    time.sleep(random.uniform(0.5, 1.5) * 0.02 * 2**attempt)
                    continue
                if code in ("NoSuchKey", "NotFound") or (code == "404" and operation == "head_object"):
                    raise _NotFound from None
                if code == "PreconditionFailed" or status == 412:
                    raise _Refused from None
                if code == "InvalidRange" or status == 416:
                    raise _BadRange from None
                raise self._error(action, key, e) from e
            except exc.BotoCoreError as e:
                raise self._error(action, key, e) from e
        where = self.location(key)
        raise StorageError(f"cannot {action} {where}: too many conflicting concurrent writes", path=where)

    def _read(self, key: str, **params: Any) -> tuple[bytes, str] | None:
        """``(bytes, etag)`` of the object at ``key``, or None."""
        try:
            resp = self._request("get_object", "read", key, Key=self._key(key), **params)
        except _NotFound:
            return None
        body = resp["Body"]
        try:
            return body.read(), resp.get("ETag", "")
        except (self._exc.BotoCoreError, OSError) as e:
            raise self._error("read", key, e) from e
        finally:
            body.close()

    def _put_lease(self, key: str, body: bytes, **condition: str) -> str:
        resp = self._request(
            "put_object", "write lease", key, Key=self._key(key), Body=body, ContentType="application/json", **condition
        )
        return str(resp["ETag"])

    def _read_lease(self, key: str) -> tuple[dict[str, Any], str] | None:
        found = self._read(key)
        if found is None:
            return None
        try:
            info = json.loads(found[0])
        except ValueError:
            info = None
        return (info if isinstance(info, dict) else {}), found[1]

    # -- protocol ----------------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        found = self._read(key)
        return None if found is None else found[0]

    def size(self, key: str) -> int | None:
        try:
            head = self._request("head_object", "read", key, Key=self._key(key))
        except _NotFound:
            return None
        return int(head.get("ContentLength", 0))

    def read_from(self, key: str, offset: int) -> bytes | None:
        if offset <= 0:
            return self.get(key)
        try:
            found = self._read(key, Range=f"bytes={offset}-")
        except _BadRange:
            return b""  # the object ends at or before offset
        return None if found is None else found[0]

    def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        self._request("put_object", "write", key, Key=self._key(key), Body=bytes(data))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        token = secrets.token_hex(8)
        try:
            self._request(
                "put_object",
                "write",
                key,
                Key=self._key(key),
                Body=bytes(data),
                IfNoneMatch="*",
                Metadata={_TOKEN_META: token},
            )
        except _Refused:
            # Refused by our own first attempt when a lost reply made boto retry?
            try:
                head = self._request("head_object", "read", key, Key=self._key(key))
            except _NotFound:
                return False
            return bool(head.get("Metadata", {}).get(_TOKEN_META) == token)
        return True

    def children(self, prefix: str) -> list[str]:
        below = self._below(prefix)
        names: set[str] = set()
        params: dict[str, Any] = {"Prefix": below, "Delimiter": "/", "MaxKeys": self._page}
        while True:
            resp = self._request("list_objects_v2", "list", prefix, **params)
            for entry in resp.get("CommonPrefixes", ()):
                names.add(entry["Prefix"][len(below) :].rstrip("/"))
            for entry in resp.get("Contents", ()):
                names.add(entry["Key"][len(below) :])
            if not resp.get("IsTruncated"):
                break
            params["ContinuationToken"] = resp["NextContinuationToken"]
        names.discard("")
        return sorted(names)

    def delete_prefix(self, prefix: str) -> None:
        below = self._below(prefix)
        params: dict[str, Any] = {"Prefix": below, "MaxKeys": self._page}
        while True:
            resp = self._request("list_objects_v2", "list", prefix, **params)
            keys = [{"Key": entry["Key"]} for entry in resp.get("Contents", ())]
            if keys:
                done = self._request("delete_objects", "delete", prefix, Delete={"Objects": keys, "Quiet": True})
                if done.get("Errors"):
                    first = done["Errors"][0]
                    where = f"s3://{self.bucket}/{first.get('Key', '')}"
                    raise StorageError(
                        f"cannot delete {where}: {first.get('Code')}: {first.get('Message')} "
                        f"({len(done['Errors'])} objects under {self.location(prefix)} not deleted)",
                        path=where,
                    )
            if not resp.get("IsTruncated"):
                break
            params["ContinuationToken"] = resp["NextContinuationToken"]
        if self._key(prefix):
            self._request("delete_object", "delete", prefix, Key=self._key(prefix))

    def acquire_lease(self, key: str, owner: bytes) -> Lease | None:
        lease = _S3Lease(self, key, owner)
        for _ in range(4):
            sent = time.monotonic()
            try:
                etag = self._put_lease(key, lease.body(), IfNoneMatch="*")
                return self._grant(lease, etag, sent)
            except _Refused:
                pass
            current = self._read_lease(key)
            if current is None:
                continue  # removed meanwhile: create it afresh
            info, etag = current
            if info.get("token") == lease.token:
                return self._grant(lease, etag, sent)  # our create landed; boto's retry met it
            if _live(info):
                return None
            sent = time.monotonic()
            try:
                new_etag = self._put_lease(key, lease.body(), IfMatch=etag)
            except _NotFound:
                continue
            except _Refused:
                # Another process won the takeover, unless the refusal met our own write.
                current = self._read_lease(key)
                if current is not None and current[0].get("token") == lease.token:
                    return self._grant(lease, current[1], sent)
                return None
            return self._grant(lease, new_etag, sent)
        return None

    def _grant(self, lease: _S3Lease, etag: str, sent: float) -> Lease:
        lease.granted(etag, sent)
        self._heartbeat.add(lease)
        return lease

    def lease_held(self, key: str) -> bool:
        current = self._read_lease(key)
        return current is not None and _live(current[0])

    def close(self) -> None:
        self._heartbeat.close()
        self._client.close()
