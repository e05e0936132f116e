"""Where a workflow's records live in storage, and how they are written and read back.

Layout under the storage root::

    keelflow.json                      format marker: {"format": N}
    workflows/<id>/journal             append-only framed records (the source of truth)
    workflows/<id>/journal.d/<n>       the same, one object per append, where storage cannot
                                       append (object stores)
    workflows/<id>/status              small JSON index (status, times, user metadata);
                                       written without flushing, rebuilt from the journal
    workflows/<id>/lease               held by the live owner
    workflows/<id>/blobs/<name>        outputs and objects too large to inline
    cancels/<id>                       a cancel request for a workflow owned elsewhere

One step completion is one framed record appended with one flush; steps that finish together
share one append.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from typing import Any

from .. import serialization
from ..errors import CorruptCheckpointError, StorageError, StorageFormatError
from ..objects import new_id
from ..storage import Storage

__all__ = ["BLOB_THRESHOLD", "Journal", "check_format", "load_blob", "read_status", "store_blob", "write_status"]

log = logging.getLogger("keelflow")

#: Values larger than this go to a blob of their own instead of inline in the journal.
BLOB_THRESHOLD = 1 << 20
#: How many bytes of large values a running workflow keeps in memory once read.
BLOB_CACHE_BYTES = 256 << 20
FORMAT_KEY = "keelflow.json"


def wf_key(workflow_id: str, leaf: str) -> str:
    return f"workflows/{workflow_id}/{leaf}"


def check_format(storage: Storage) -> None:
    """Stamp new storage with our format; refuse storage from a newer keelflow."""
    marker = json.dumps({"format": serialization.FORMAT_VERSION}).encode()
    if storage.put_if_absent(FORMAT_KEY, marker):
        return
    raw = storage.get(FORMAT_KEY)
    try:
        found = int(json.loads(raw or b"")["format"])
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpointError(
            f"storage format marker {storage.location(FORMAT_KEY)} is unreadable", path=storage.location(FORMAT_KEY)
        ) from e
    if found > serialization.FORMAT_VERSION:
        raise StorageFormatError(
            f"storage at {storage.url} was written by a newer keelflow (format {found}; this release "
            f"reads up to {serialization.FORMAT_VERSION}); upgrade keelflow to use it",
            path=storage.location(FORMAT_KEY),
        )


def _encode(records: list[tuple[Any, ...]]) -> bytes:
    return b"".join(serialization.frame(serialization.dump_record(r)) for r in records)


class Journal:
    """The append-only record log of one workflow.

    On a backend that can append (files, memory) the journal is one object and each append
    is one flush. On one that cannot (object stores), each append is a new numbered segment
    written with put-if-absent, which also fences off a second writer: two runners can never
    both write segment N.
    """

    def __init__(self, storage: Storage, workflow_id: str, *, root: str | None = None, kind: str = "workflow") -> None:
        self.storage = storage
        self.workflow_id = workflow_id
        self.root = root if root is not None else f"workflows/{workflow_id}"
        self.label = f"{kind} {workflow_id!r}"
        self.segmented = not storage.can_append
        self.key = f"{self.root}/{'journal.d' if self.segmented else 'journal'}"
        self._next_segment: int | None = None
        # Where read_new() goes on: a byte offset, or the next segment number.
        self._cursor = 0
        #: Bytes read or written through read_new()/append_owned()/start() (a size hint).
        self.size = 0
        self._blobs: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._blob_bytes = 0

    @property
    def path(self) -> str:
        return self.storage.location(self.key)

    def exists(self) -> bool:
        if self.segmented:
            return bool(self.storage.children(self.key))
        return self.storage.get(self.key) is not None

    def append(self, records: list[tuple[Any, ...]]) -> None:
        data = _encode(records)
        if not self.segmented:
            self.storage.append(self.key, data)
            return
        self._write_segment(data)

    def _write_segment(self, data: bytes) -> None:
        if self._next_segment is None:
            segments = self._segments()
            self._next_segment = segments[-1][0] + 1 if segments else 0
        name = f"{self.key}/{self._next_segment:012d}"
        if not self.storage.put_if_absent(name, data):
            raise StorageError(
                f"journal segment {self.storage.location(name)} of {self.label} was written "
                "by another process: two runners own it",
                path=self.storage.location(name),
            )
        self._next_segment += 1

    def _segments(self) -> list[tuple[int, str]]:
        found = []
        for name in self.storage.children(self.key):
            if name.isdigit():
                found.append((int(name), f"{self.key}/{name}"))
        return sorted(found)

    def _chunks(self) -> list[tuple[str, bytes, bool]]:
        """``(location, bytes, may_be_torn)`` in order."""
        if not self.segmented:
            data = self.storage.get(self.key)
            return [] if data is None else [(self.path, data, True)]
        chunks = []
        segments = self._segments()
        for _seq, key in segments:
            data = self.storage.get(key)
            if data is not None:
                chunks.append((self.storage.location(key), data, False))  # puts are atomic: never torn
        self._next_segment = segments[-1][0] + 1 if segments else 0
        return chunks

    def read(self, *, repair: bool = False, strict: bool = True) -> list[tuple[Any, ...]]:
        """All whole records. A torn tail (a crash mid-append) is dropped, and with ``repair``
        cut off so later appends follow the last whole record. Damage before the tail raises
        :class:`CorruptCheckpointError`, or with ``strict=False`` ends the list there."""
        records: list[tuple[Any, ...]] = []
        for location, data, may_be_torn in self._chunks():
            payloads, end = serialization.scan_frames(data)
            for payload in payloads:
                try:
                    records.append(serialization.load_record(payload))
                except Exception as e:
                    if strict:
                        raise CorruptCheckpointError(
                            f"journal record #{len(records)} of {self.label} at {location} is unreadable: {e}",
                            path=location,
                        ) from e
                    return records
            if end == len(data):
                continue
            if may_be_torn and serialization.tail_is_torn(data, end):
                log.warning(
                    "journal %s ends with a partly written record (%d bytes, a crash mid-write); ignoring it",
                    location,
                    len(data) - end,
                )
                if repair:
                    self.storage.put(self.key, data[:end])
                break
            if strict:
                raise CorruptCheckpointError(
                    f"journal of {self.label} at {location} is damaged at byte {end} "
                    f"(checksum mismatch); {len(records)} records before it are intact",
                    path=location,
                )
            return records
        if records:
            header = records[0][1] if records[0][0] == "start" else {}
            self.check_header_format(header)
        return records

    def check_header_format(self, header: dict[str, Any]) -> None:
        fmt = header.get("format", 0)
        if fmt > serialization.FORMAT_VERSION:
            raise StorageFormatError(
                f"{self.label} at {self.path} was written by a newer keelflow "
                f"(format {fmt}); upgrade keelflow to read it",
                path=self.path,
            )

    def read_new(self, *, owner: bool = False) -> list[tuple[Any, ...]]:
        """The whole records appended since the last call (the first call reads them all).

        For a reader following a journal another process writes: a record still being
        written is left for the next call. ``owner`` (the caller holds the lease, so nobody
        else writes) cuts off a torn tail instead, so that appends follow the last whole record.
        """
        if self.segmented:
            records: list[tuple[Any, ...]] = []
            for seq, key in self._segments():
                if seq < self._cursor:
                    continue
                data = self.storage.get(key)
                if data is None:
                    break
                payloads, end = serialization.scan_frames(data)
                if end != len(data):
                    raise CorruptCheckpointError(
                        f"journal segment {self.storage.location(key)} of {self.label} is damaged at byte {end}",
                        path=self.storage.location(key),
                    )
                records.extend(self._load(p, self.storage.location(key)) for p in payloads)
                self._cursor = seq + 1
                self.size += len(data)
            self._next_segment = self._cursor
            return records
        data = self.storage.read_from(self.key, self._cursor)
        if not data:
            return []
        payloads, end = serialization.scan_frames(data)
        records = [self._load(p, self.path) for p in payloads]
        if end != len(data) and owner:
            if not serialization.tail_is_torn(data, end):
                raise CorruptCheckpointError(
                    f"journal of {self.label} at {self.path} is damaged at byte {self._cursor + end} "
                    "(checksum mismatch)",
                    path=self.path,
                )
            log.warning("journal %s ends with a partly written record (a crash mid-write); cutting it off", self.path)
            whole = self.storage.get(self.key) or b""
            self.storage.put(self.key, whole[: self._cursor + end])
        self._cursor += end
        self.size += end
        return records

    def _load(self, payload: memoryview, location: str) -> tuple[Any, ...]:
        try:
            return serialization.load_record(payload)
        except Exception as e:
            raise CorruptCheckpointError(
                f"a journal record of {self.label} at {location} is unreadable: {e}", path=location
            ) from e

    def append_owned(self, records: list[tuple[Any, ...]]) -> None:
        """:meth:`append` by the sole writer, keeping :meth:`read_new` past its own records."""
        data = _encode(records)
        if self.segmented:
            self._write_segment(data)
            self._cursor = self._next_segment or 0
        else:
            self.storage.append(self.key, data)
            self._cursor += len(data)
        self.size += len(data)

    def start(self, records: list[tuple[Any, ...]]) -> bool:
        """Create the journal holding ``records``, atomically; False if it exists already."""
        data = _encode(records)
        key = f"{self.key}/{0:012d}" if self.segmented else self.key
        if not self.storage.put_if_absent(key, data):
            return False
        if self.segmented:
            self._next_segment = self._cursor = 1
        else:
            self._cursor = len(data)
        self.size = len(data)
        return True

    # -- large values ---------------------------------------------------------------------------
    def spill(self, data: bytes) -> Any:
        """``data`` itself, or a pointer to a blob holding it when it is large (a pointer
        made by a worker that stored the blob itself is kept as it is)."""
        if isinstance(data, tuple) or len(data) <= BLOB_THRESHOLD:
            return data
        return store_blob(self.storage, f"{self.root}/blobs/", data)

    def load(self, value: Any) -> bytes:
        """The bytes behind what :meth:`spill` returned."""
        if isinstance(value, bytes):
            return value
        if isinstance(value, (bytearray, memoryview)):
            return bytes(value)
        key = value[1]
        cached = self._blobs.get(key)
        if cached is not None:
            self._blobs.move_to_end(key)
            return cached
        data = load_blob(self.storage, key)
        # A large object handed to many steps is read once, not once per step.
        self._blobs[key] = data
        self._blob_bytes += len(data)
        while self._blob_bytes > BLOB_CACHE_BYTES and len(self._blobs) > 1:
            _, dropped = self._blobs.popitem(last=False)
            self._blob_bytes -= len(dropped)
        return data


def store_blob(storage: Storage, prefix: str, data: bytes) -> tuple[str, str]:
    """Durably store a large value under ``prefix``; the pointer a journal record keeps."""
    key = f"{prefix}{new_id()}"
    storage.put(key, serialization.frame(data))
    return ("blob", key)


def load_blob(storage: Storage, key: str) -> bytes:
    """The value :func:`store_blob` stored at ``key``; damage is named by path."""
    raw = storage.get(key)
    path = storage.location(key)
    if raw is None:
        raise CorruptCheckpointError(f"stored value {path} is missing", path=path)
    payloads, end = serialization.scan_frames(raw)
    if len(payloads) != 1 or end != len(raw):
        raise CorruptCheckpointError(f"stored value {path} is truncated or damaged", path=path)
    return bytes(payloads[0])


def write_status(storage: Storage, workflow_id: str, info: dict[str, Any]) -> None:
    storage.put(wf_key(workflow_id, "status"), json.dumps(info).encode(), durable=False)


def update_status(storage: Storage, workflow_id: str, status: str, *, ended: bool = False) -> None:
    """Set the status in the index, keeping its other fields."""
    info = {**(read_status(storage, workflow_id) or {}), "status": status}
    if ended:
        info["end_time"] = time.time()
    write_status(storage, workflow_id, info)


def read_status(storage: Storage, workflow_id: str) -> dict[str, Any] | None:
    raw = storage.get(wf_key(workflow_id, "status"))
    if not raw:
        return None
    try:
        info = json.loads(raw)
    except ValueError:
        return None  # an index file lost in a crash; callers rebuild from the journal
    return info if isinstance(info, dict) else None
