"""How values become bytes, and the storage format version.

Two layers, both independent of any storage backend:

* **user values** (arguments, outputs, objects, functions) go through cloudpickle, so lambdas,
  closures and ``__main__`` functions survive; importable functions travel by reference.
  Object refs and workflow nodes inside a value are cut out and replaced by placeholders
  (:func:`encode`), so an object is stored once however many values mention it, and a DAG is
  stored flat;
* **records** (the engine's own bookkeeping) are tuples of plain values, pickled with the
  standard library and loaded with an unpickler that refuses every global, so a damaged
  record can only fail to load, never run code.

Every journal starts with a header naming ``FORMAT_VERSION`` and the value codec, so old data
stays readable as the format evolves.
"""

from __future__ import annotations

import contextvars
import io
import pickle
import struct
import zlib
from collections.abc import Callable
from typing import Any

import cloudpickle

from .errors import SerializationError

__all__ = [
    "FORMAT_VERSION",
    "VALUE_CODEC",
    "Scan",
    "decode",
    "dump_record",
    "encode",
    "frame",
    "load_record",
    "scan_frames",
]

#: The storage format this release writes and the newest it reads. Format 2 added a checksum
#: to every frame's header (format-1 journals are still read).
FORMAT_VERSION = 2
#: The codec that user values are written with (stored in every journal header).
VALUE_CODEC = "cloudpickle"

_PROTOCOL = 5
_ATOMIC = frozenset({int, float, str, bytes, bool, type(None), complex})
# While decoding, placeholders are turned back into refs / node outputs by these callbacks.
_RESOLVE: contextvars.ContextVar[tuple[Callable[[str], Any], Callable[[int], Any]] | None] = contextvars.ContextVar(
    "keelflow_resolve", default=None
)


def _ref_placeholder(ref_id: str) -> Any:
    resolve = _RESOLVE.get()
    if resolve is None:
        raise SerializationError(f"object ref {ref_id} was unpickled outside keelflow's decoder")
    return resolve[0](ref_id)


def _node_placeholder(index: int) -> Any:
    resolve = _RESOLVE.get()
    if resolve is None:
        raise SerializationError("workflow node was unpickled outside keelflow's decoder")
    return resolve[1](index)


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    def __init__(self, file: io.BytesIO, on_ref: Callable[[Any], str], on_node: Callable[[Any], int] | None) -> None:
        super().__init__(file, protocol=_PROTOCOL)
        self._on_ref = on_ref
        self._on_node = on_node

    def reducer_override(self, obj: Any) -> Any:
        # Imported here: objects/step import this module.
        from .objects import from_ray, is_ray_ref, stored_ref
        from .step import Workflow, WorkflowRef

        if stored_ref(obj):
            return _ref_placeholder, (self._on_ref(obj),)
        if is_ray_ref(obj):
            return _ref_placeholder, (self._on_ref(from_ray(obj)),)
        if isinstance(obj, WorkflowRef) and self._on_node is not None:
            # In a step's arguments a WorkflowRef stands for that step's output, like a node;
            # anywhere else it is plain data.
            return _node_placeholder, (self._on_node(Workflow.from_ref(obj)),)
        if isinstance(obj, Workflow):
            if obj._ref is not None and self._on_node is None:
                return super().reducer_override(obj)  # a reference to a recorded step: plain data
            if self._on_node is None:
                raise SerializationError(
                    "a workflow node (the result of .step()) cannot be stored inside an object or "
                    "output here; return it from a step, or pass it as a step argument"
                )
            return _node_placeholder, (self._on_node(obj),)
        return super().reducer_override(obj)


def encode(
    value: Any,
    *,
    what: str,
    on_ref: Callable[[Any], str],
    on_node: Callable[[Any], int] | None = None,
) -> bytes:
    """Pickle ``value``; refs and nodes inside it are handed to the callbacks and cut out.

    ``what`` names the value in the error raised when it cannot be serialized.
    """
    if type(value) in _ATOMIC:
        # Nothing to cut out of a scalar: skip building a cloudpickle Pickler (the common
        # output of small steps, and most of their serialization cost).
        return pickle.dumps(value, _PROTOCOL)
    buf = io.BytesIO()
    try:
        _Pickler(buf, on_ref, on_node).dump(value)
    except SerializationError:
        raise
    except RecursionError as e:
        raise SerializationError(f"cannot serialize {what}: it is nested too deeply") from e
    except Exception as e:
        raise SerializationError(f"cannot serialize {what} (a {type(value).__name__}): {type(e).__name__}: {e}") from e
    return buf.getvalue()


def decode(
    data: bytes,
    *,
    what: str,
    resolve_ref: Callable[[str], Any] | None = None,
    resolve_node: Callable[[int], Any] | None = None,
) -> Any:
    """Unpickle bytes from :func:`encode`, resolving placeholders through the callbacks."""
    token = _RESOLVE.set((resolve_ref or _no_ref, resolve_node or _no_node))
    try:
        return pickle.loads(data)
    except SerializationError:
        raise
    except Exception as e:
        raise SerializationError(f"cannot deserialize {what}: {type(e).__name__}: {e}") from e
    finally:
        _RESOLVE.reset(token)


def _no_ref(ref_id: str) -> Any:
    raise SerializationError(f"object ref {ref_id} has no stored value here")


def _no_node(index: int) -> Any:
    raise SerializationError(f"workflow node #{index} has no output here")


def dumps_function(func: Any) -> bytes:
    """Pickle a step function: by import path when importable, else by value."""
    try:
        return cloudpickle.dumps(func, protocol=_PROTOCOL)
    except Exception as e:
        name = getattr(func, "__qualname__", repr(func))
        raise SerializationError(f"cannot serialize step function {name}: {type(e).__name__}: {e}") from e


# -- records ----------------------------------------------------------------------------------


class _RecordUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"records hold plain values only, found {module}.{name}")


def dump_record(record: tuple[Any, ...]) -> bytes:
    return pickle.dumps(record, protocol=_PROTOCOL)


def load_record(data: bytes | memoryview) -> tuple[Any, ...]:
    return _RecordUnpickler(io.BytesIO(data)).load()  # type: ignore[no-any-return]


# A frame is a header and a payload. The header holds the payload's length (with the top bit
# set: the mark of this layout), the payload's crc32, and a crc32 of those 8 bytes, so a damaged
# length is caught before it is trusted. Frames of format 1 had no header checksum and no mark:
# ``<II`` (length, crc32 of payload); they are still read, in journals that begin with them.
_MARK = 0x80000000
_HEADER = struct.Struct("<III")
_HEADER_V1 = struct.Struct("<II")
_MAX_PAYLOAD = _MARK - 1


def frame(payload: bytes) -> bytes:
    """Length- and checksum-prefix a payload so a torn or damaged one is detected on read."""
    if len(payload) > _MAX_PAYLOAD:
        raise SerializationError(f"a record of {len(payload)} bytes is over the 2 GiB a frame can hold")
    head = _HEADER_V1.pack(len(payload) | _MARK, zlib.crc32(payload))
    return head + struct.pack("<I", zlib.crc32(head)) + payload


class Scan:
    """What :func:`scan_frames` found: the whole frames, and what follows them.

    ``end`` is the length of the valid prefix the frames make up. Past it there is nothing
    (``clean``), a *torn tail* (``torn``: the unfinished last frame a crash mid-write leaves,
    provably so: a partial header, or an intact header whose payload runs past the end), or
    *damage* (anything else; ``problem`` says what was found at byte ``end``).
    """

    __slots__ = ("end", "marked", "offsets", "payloads", "problem", "size", "torn")

    def __init__(
        self,
        payloads: list[memoryview],
        offsets: list[int],
        end: int,
        size: int,
        torn: bool,
        problem: str,
        marked: bool = False,
    ) -> None:
        self.payloads = payloads
        #: Where each frame begins.
        self.offsets = offsets
        self.end = end
        self.size = size
        self.torn = torn
        self.problem = problem
        #: The frames read were of the current layout (see ``scan_frames(marked=...)``).
        self.marked = marked

    @property
    def clean(self) -> bool:
        return self.end == self.size

    @property
    def damaged(self) -> bool:
        return not self.clean and not self.torn


def scan_frames(data: bytes | memoryview, *, marked: bool = False) -> Scan:
    """Read whole frames from the start of ``data`` until the first that is not whole.

    ``marked``: frames of this layout came before ``data`` (a reader going on where it left
    off), so a format-1 frame here can only be damage.
    """
    view = memoryview(data)
    size = len(view)
    payloads: list[memoryview] = []
    offsets: list[int] = []
    pos = 0
    unpack, header_size, crc32 = _HEADER.unpack_from, _HEADER.size, zlib.crc32
    while pos < size:
        rest = size - pos
        if rest >= header_size:  # the common case: one unpack serves either layout
            word, crc, head_crc = unpack(view, pos)
        elif rest >= 4:
            (word,) = struct.unpack_from("<I", view, pos)
        else:
            return Scan(payloads, offsets, pos, size, True, "", marked)
        if word & _MARK:
            if rest < header_size:
                return Scan(payloads, offsets, pos, size, True, "", marked)
            if crc32(view[pos : pos + 8]) != head_crc:
                return Scan(payloads, offsets, pos, size, False, "the record's header fails its checksum", marked)
            start = pos + header_size
            length = word & _MAX_PAYLOAD
            marked = True
        else:
            if marked:
                return Scan(payloads, offsets, pos, size, False, "the record's header lacks its format mark", marked)
            if rest < _HEADER_V1.size:
                return Scan(payloads, offsets, pos, size, True, "", marked)
            length, crc = _HEADER_V1.unpack_from(view, pos)
            start = pos + _HEADER_V1.size
        end = start + length
        if end > size:
            if marked or not _frame_follows(view, pos + 1):
                return Scan(payloads, offsets, pos, size, True, "", marked)
            # A format-1 header cannot vouch for its length; a whole record further on shows
            # this was no unfinished last write but a damaged length.
            return Scan(
                payloads, offsets, pos, size, False, "the record's length is damaged (whole records follow it)", marked
            )
        payload = view[start:end]
        if crc32(payload) != crc:
            return Scan(payloads, offsets, pos, size, False, "the record fails its checksum", marked)
        payloads.append(payload)
        offsets.append(pos)
        pos = end
    return Scan(payloads, offsets, pos, size, False, "", marked)


#: How many payload bytes :func:`_frame_follows` checksums at most before it gives up.
_RESYNC_BUDGET = 64 << 20


def _frame_follows(view: memoryview, start: int) -> bool:
    """Whether a whole frame holding a record begins anywhere at or after ``start`` (used only
    for format-1 journals, where a damaged length cannot be told apart from a torn tail)."""
    size = len(view)
    budget = _RESYNC_BUDGET
    for pos in range(start, size - _HEADER_V1.size + 1):
        (word,) = struct.unpack_from("<I", view, pos)
        if word & _MARK:
            if size - pos < _HEADER.size:
                continue
            word, crc, head_crc = _HEADER.unpack_from(view, pos)
            if zlib.crc32(view[pos : pos + 8]) != head_crc:
                continue
            first, length = pos + _HEADER.size, word & _MAX_PAYLOAD
        else:
            length, crc = _HEADER_V1.unpack_from(view, pos)
            first = pos + _HEADER_V1.size
        if length == 0 or first + length > size:
            continue
        budget -= length
        if budget < 0:
            return True  # too much to search: do not vouch for a torn tail
        payload = view[first : first + length]
        if zlib.crc32(payload) == crc and _is_record(payload):
            return True
    return False


def _is_record(payload: memoryview) -> bool:
    try:
        return isinstance(load_record(payload), tuple)
    except Exception:
        return False
