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
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle

from .errors import SerializationError

__all__ = [
    "FORMAT_VERSION",
    "VALUE_CODEC",
    "decode",
    "dump_record",
    "encode",
    "frame",
    "iter_frames",
    "load_record",
    "scan_frames",
    "tail_is_torn",
]

#: The storage format this release writes and the newest it reads.
FORMAT_VERSION = 1
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
        from .step import Workflow

        if stored_ref(obj):
            return _ref_placeholder, (self._on_ref(obj),)
        if is_ray_ref(obj):
            return _ref_placeholder, (self._on_ref(from_ray(obj)),)
        if isinstance(obj, Workflow):
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


_HEADER = struct.Struct("<II")  # payload length, crc32 of payload


def frame(payload: bytes) -> bytes:
    """Length- and checksum-prefix a payload so a torn or damaged one is detected on read."""
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def iter_frames(data: bytes) -> Iterator[tuple[int, memoryview]]:
    """Yield ``(offset, payload)`` for each whole frame; stop at the first torn or bad one."""
    view = memoryview(data)
    pos = 0
    size = len(data)
    while pos + _HEADER.size <= size:
        length, crc = _HEADER.unpack_from(view, pos)
        start = pos + _HEADER.size
        end = start + length
        if end > size:
            return
        payload = view[start:end]
        if zlib.crc32(payload) != crc:
            return
        yield pos, payload
        pos = end


def scan_frames(data: bytes) -> tuple[list[memoryview], int]:
    """All whole frames and the length of the valid prefix they make up."""
    payloads = []
    end = 0
    for offset, payload in iter_frames(data):
        payloads.append(payload)
        end = offset + _HEADER.size + len(payload)
    return payloads, end


def tail_is_torn(data: bytes, end: int) -> bool:
    """Whether the bytes after the valid prefix ``end`` are an unfinished last frame (a crash
    mid-write) rather than a whole frame that fails its checksum (damage)."""
    rest = len(data) - end
    if rest < _HEADER.size:
        return True
    length, _crc = _HEADER.unpack_from(data, end)
    return end + _HEADER.size + length > len(data)
