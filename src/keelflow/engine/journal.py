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
import threading
import time
import weakref
from typing import Any

from .. import serialization
from ..errors import CorruptCheckpointError, StorageError, StorageFormatError
from ..objects import new_id
from ..storage import Storage

__all__ = [
    "BLOB_THRESHOLD",
    "Journal",
    "check_format",
    "describe",
    "load_blob",
    "prepare_write",
    "read_status",
    "store_blob",
    "write_status",
]

log = logging.getLogger("keelflow")

#: Values larger than this go to a blob of their own instead of inline in the journal.
BLOB_THRESHOLD = 1 << 20
#: How many bytes of large values a running workflow keeps in memory once read.
BLOB_CACHE_BYTES = 256 << 20
FORMAT_KEY = "keelflow.json"
# What keelflow keeps at the top of a storage (besides the marker).
_TOP_LEVEL = ("workflows", "actors", "events", "cancels")
# Storage objects whose marker names this release's format (so writing needs no check).
_stamped: weakref.WeakSet[Storage] = weakref.WeakSet()
_stamp_lock = threading.Lock()


def wf_key(workflow_id: str, leaf: str) -> str:
    return f"workflows/{workflow_id}/{leaf}"


def check_format(storage: Storage, *, create: bool = True) -> None:
    """Refuse storage from a newer keelflow. Reads only, except that with ``create`` new
    storage (no marker yet) is stamped with this release's format.

    Without ``create``, storage that holds no keelflow marker and no keelflow data is refused
    with :class:`StorageError` ("no keelflow storage there"): a read command pointed at a
    wrong path says so instead of reporting an empty storage.
    """
    raw = storage.get(FORMAT_KEY)
    if raw is None:
        if not create:
            if not any(storage.children(top) for top in _TOP_LEVEL):
                raise StorageError(
                    f"no keelflow storage at {describe(storage)} (it has no {FORMAT_KEY}); check the storage "
                    "path or URL (--storage, $KEELFLOW_STORAGE, or workflow.init)",
                    path=storage.location(FORMAT_KEY),
                )
            return  # data without a marker (copied in by hand?): read it as it is
        if storage.put_if_absent(FORMAT_KEY, _marker()):
            _stamped.add(storage)
            return
        raw = storage.get(FORMAT_KEY)
    found = _marker_format(storage, raw or b"")
    if found > serialization.FORMAT_VERSION:
        raise StorageFormatError(
            f"storage at {storage.url} was written by a newer keelflow (format {found}; this release "
            f"reads up to {serialization.FORMAT_VERSION}); upgrade keelflow to use it",
            path=storage.location(FORMAT_KEY),
        )
    if found == serialization.FORMAT_VERSION:
        _stamped.add(storage)


def prepare_write(storage: Storage) -> None:
    """Before the first record this process writes to ``storage``: make sure its marker names
    this release's format, so an older keelflow refuses the storage instead of misreading
    records it cannot parse. Checked once per storage object; reading never calls this."""
    if storage in _stamped:
        return
    with _stamp_lock:
        if storage in _stamped:
            return
        raw = storage.get(FORMAT_KEY)
        found = 0 if raw is None else _marker_format(storage, raw)
        if found > serialization.FORMAT_VERSION:
            check_format(storage)  # raises StorageFormatError
        if found < serialization.FORMAT_VERSION:
            storage.put(FORMAT_KEY, _marker())
            if found:
                log.info(
                    "keelflow: storage %s upgraded from format %d to %d",
                    describe(storage),
                    found,
                    serialization.FORMAT_VERSION,
                )
        _stamped.add(storage)


def describe(storage: Storage) -> str:
    """The storage's root, as a person would write it (a path, or a URL)."""
    return storage.location("").rstrip("/") or storage.url


def _marker() -> bytes:
    return json.dumps({"format": serialization.FORMAT_VERSION}).encode()


def _marker_format(storage: Storage, raw: bytes) -> int:
    try:
        return int(json.loads(raw or b"")["format"])
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpointError(
            f"storage format marker {storage.location(FORMAT_KEY)} is unreadable", path=storage.location(FORMAT_KEY)
        ) from e


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
        self.kind = kind
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
        #: ``(end, size)`` when the last :meth:`read` found a torn tail: the whole records end
        #: at byte ``end`` of the ``size`` there were.
        self.torn: tuple[int, int] | None = None
        #: Where the whole records :meth:`read` found end: a byte offset, or (segmented) the
        #: number of segments.
        self.read_end = 0
        self._marked = False  # read_new() has seen frames of the current layout
        self._records = 0  # records read_new() has returned so far

    @property
    def path(self) -> str:
        return self.storage.location(self.key)

    def exists(self) -> bool:
        if self.segmented:
            return bool(self.storage.children(self.key))
        return self.storage.size(self.key) is not None

    def append(self, records: list[tuple[Any, ...]]) -> None:
        data = _encode(records)
        prepare_write(self.storage)
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
        found.sort()
        for expected, (seq, _key) in enumerate(found):
            if seq != expected:
                missing = self.storage.location(f"{self.key}/{expected:012d}")
                raise CorruptCheckpointError(
                    f"journal segment {missing} of {self.label} is missing ({len(found)} segments, numbered "
                    f"up to {found[-1][0]}); the records from there on are lost",
                    path=missing,
                    offset=0,
                )
        return found

    def _damage(self, location: str, offset: int, scan: serialization.Scan, records: int) -> CorruptCheckpointError:
        if not records:
            intact = "no record before it is intact"
        elif self.kind == "workflow":
            intact = f"the {records} records before it are intact (`keelflow salvage {self.workflow_id}` keeps them)"
        else:
            intact = f"the {records} records before it are intact"
        return CorruptCheckpointError(
            f"journal of {self.label} at {location} is damaged at byte {offset}: {scan.problem}; {intact}; "
            "see 'Damaged storage' in keelflow's README",
            path=location,
            offset=offset,
        )

    def _decode(self, scan: serialization.Scan, location: str, base: int, first: int) -> list[tuple[Any, ...]]:
        """The records of ``scan``'s frames; ``base`` is the byte offset of the scanned data
        in ``location``, ``first`` the number of records before it."""
        records = []
        for payload, at in zip(scan.payloads, scan.offsets, strict=True):
            try:
                records.append(serialization.load_record(payload))
            except Exception as e:
                raise CorruptCheckpointError(
                    f"journal record #{first + len(records)} of {self.label} at {location} (byte {base + at}) "
                    f"is unreadable: {e}",
                    path=location,
                    offset=base + at,
                ) from e
        return records

    def read(self) -> list[tuple[Any, ...]]:
        """All whole records. A torn tail (the unfinished last append of a crashed writer) is
        left out and noted in :attr:`torn`; any other damage raises
        :class:`CorruptCheckpointError` naming the file and byte offset. Reads only."""
        self.torn = None
        if not self.segmented:
            data = self.storage.get(self.key)
            if data is None:
                return []
            scan = serialization.scan_frames(data)
            records = self._decode(scan, self.path, 0, 0)
            if scan.damaged:
                raise self._damage(self.path, scan.end, scan, len(records))
            if scan.torn:
                self.torn = (scan.end, scan.size)
            self.read_end = scan.end
        else:
            records = []
            segments = self._segments()
            for _seq, key in segments:
                data = self.storage.get(key)
                location = self.storage.location(key)
                if data is None:
                    raise CorruptCheckpointError(
                        f"journal segment {location} of {self.label} vanished while it was read", path=location
                    )
                scan = serialization.scan_frames(data)
                more = self._decode(scan, location, 0, len(records))
                if not scan.clean:  # puts are atomic: a segment is never torn
                    raise self._damage(location, scan.end, scan, len(records) + len(more))
                records.extend(more)
            self._next_segment = self.read_end = len(segments)
        if records:
            header = records[0][1] if records[0][0] == "start" else {}
            self.check_header_format(header)
        return records

    def cut_torn_tail(self) -> None:
        """Cut off the torn tail :meth:`read` found, so appends follow the last whole record.
        Only for the lease holder (nobody else writes), and only when the tail is provably
        torn: the bytes are checked again, unchanged, before they are cut."""
        if self.torn is None:
            return
        end, size = self.torn
        data = self.storage.get(self.key) or b""
        if len(data) != size or not serialization.scan_frames(data).torn:
            raise StorageError(f"journal {self.path} of {self.label} changed while it was repaired", path=self.path)
        log.warning(
            "journal %s ends with a partly written record (%d bytes after byte %d: a crash mid-write); cutting it off",
            self.path,
            size - end,
            end,
        )
        self.storage.put(self.key, data[:end])
        self.torn = None

    def extent(self) -> int:
        """How far the journal goes: its size in bytes, or (segmented) its number of segments.
        It only grows; the status index keeps it when a workflow ends, to tell a journal cut
        short afterwards from one that was never longer."""
        if self.segmented:
            if self._next_segment is None:
                self._next_segment = len(self._segments())
            return self._next_segment
        return self.storage.size(self.key) or 0

    def check_extent(self, recorded: int) -> None:
        """Raise :class:`CorruptCheckpointError` unless the journal still reaches ``recorded``
        (what :meth:`extent` said when the workflow ended). Costs one stat, not a read."""
        if self.segmented:
            last = f"{self.key}/{recorded - 1:012d}"
            if recorded > 0 and self.storage.size(last) is None:
                raise CorruptCheckpointError(
                    f"journal of {self.label} is damaged: its segment {self.storage.location(last)} is missing "
                    f"(it had {recorded} segments when the workflow ended)",
                    path=self.storage.location(last),
                )
            return
        size = self.storage.size(self.key)
        if size is None or size < recorded:
            state = "missing" if size is None else f"{size} bytes long"
            raise CorruptCheckpointError(
                f"journal of {self.label} at {self.path} is damaged: it is {state}, but it was {recorded} bytes "
                "long when the workflow ended",
                path=self.path,
                offset=size or 0,
            )

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
        written (a torn tail, to this reader) is left for the next call. ``owner`` (the caller
        holds the lease, so nobody else writes) cuts off a torn tail instead, so that appends
        follow the last whole record. Damage raises :class:`CorruptCheckpointError`.
        """
        if self.segmented:
            records: list[tuple[Any, ...]] = []
            for seq, key in self._segments():
                if seq < self._cursor:
                    continue
                data = self.storage.get(key)
                if data is None:
                    break
                location = self.storage.location(key)
                scan = serialization.scan_frames(data)
                more = self._decode(scan, location, 0, self._records)
                if not scan.clean:
                    raise self._damage(location, scan.end, scan, self._records + len(more))
                records.extend(more)
                self._records += len(more)
                self._cursor = seq + 1
                self.size += len(data)
            self._next_segment = self._cursor
            return records
        data = self.storage.read_from(self.key, self._cursor)
        if not data:
            return []
        scan = serialization.scan_frames(data, marked=self._marked)
        records = self._decode(scan, self.path, self._cursor, self._records)
        if scan.damaged:
            raise self._damage(self.path, self._cursor + scan.end, scan, self._records + len(records))
        if scan.torn and owner:
            self.torn = (self._cursor + scan.end, self._cursor + scan.size)
            self.cut_torn_tail()
        self._marked = scan.marked
        self._records += len(records)
        self._cursor += scan.end
        self.size += scan.end
        return records

    def append_owned(self, records: list[tuple[Any, ...]]) -> None:
        """:meth:`append` by the sole writer, keeping :meth:`read_new` past its own records."""
        data = _encode(records)
        prepare_write(self.storage)
        self._marked = True
        self._records += len(records)
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
        prepare_write(self.storage)
        key = f"{self.key}/{0:012d}" if self.segmented else self.key
        if not self.storage.put_if_absent(key, data):
            return False
        if self.segmented:
            self._next_segment = self._cursor = 1
        else:
            self._cursor = len(data)
        self.size = len(data)
        self._marked = True
        self._records = len(records)
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
    prepare_write(storage)
    storage.put(key, serialization.frame(data))
    return ("blob", key)


def load_blob(storage: Storage, key: str) -> bytes:
    """The value :func:`store_blob` stored at ``key``; damage is named by path."""
    raw = storage.get(key)
    path = storage.location(key)
    if raw is None:
        raise CorruptCheckpointError(f"stored value {path} is missing", path=path)
    scan = serialization.scan_frames(raw)
    if len(scan.payloads) != 1 or not scan.clean:
        what = scan.problem or ("cut short" if scan.torn else "more than one value")
        raise CorruptCheckpointError(
            f"stored value {path} is damaged at byte {scan.end}: {what}", path=path, offset=scan.end
        )
    return bytes(scan.payloads[0])


def write_status(storage: Storage, workflow_id: str, info: dict[str, Any]) -> None:
    storage.put(wf_key(workflow_id, "status"), json.dumps(info).encode(), durable=False)


def update_status(
    storage: Storage, workflow_id: str, status: str, *, ended: bool = False, extent: int | None = None
) -> None:
    """Set the status in the index, keeping its other fields (``extent``: the journal's, at
    the end it records)."""
    info = {**(read_status(storage, workflow_id) or {}), "status": status}
    if ended:
        info["end_time"] = time.time()
    if extent is not None:
        info["journal_extent"] = extent
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
