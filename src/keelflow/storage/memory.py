"""Storage in this process's memory: for users' unit tests, gone when the process exits.

``memory://`` is a fresh store each time; ``memory://name`` is shared by every ``init`` in the
process that names it, so a test can shut down and "restart" against the same data.
"""

from __future__ import annotations

import threading

from .base import Lease, Storage

__all__ = ["MemoryStorage"]

_NAMED: dict[str, MemoryStorage] = {}
_NAMED_LOCK = threading.Lock()


class _MemoryLease(Lease):
    def __init__(self, store: MemoryStorage, key: str) -> None:
        self._store = store
        self._key = key
        self._held = True

    def release(self) -> None:
        with self._store._lock:
            if self._held and self._store._leases.get(self._key) is self:
                del self._store._leases[self._key]
            self._held = False

    @property
    def held(self) -> bool:
        return self._held


class MemoryStorage(Storage):
    can_append = True
    shared = False

    def __init__(self, name: str = "") -> None:
        self.url = "memory://" + name
        self._lock = threading.Lock()
        self._data: dict[str, bytes | bytearray] = {}
        self._leases: dict[str, _MemoryLease] = {}

    @classmethod
    def named(cls, name: str) -> MemoryStorage:
        if not name:
            return cls()
        with _NAMED_LOCK:
            if name not in _NAMED:
                _NAMED[name] = cls(name)
            return _NAMED[name]

    def get(self, key: str) -> bytes | None:
        with self._lock:
            value = self._data.get(key)
            return None if value is None else bytes(value)

    def size(self, key: str) -> int | None:
        with self._lock:
            value = self._data.get(key)
            return None if value is None else len(value)

    def read_from(self, key: str, offset: int) -> bytes | None:
        with self._lock:
            value = self._data.get(key)
            return None if value is None else bytes(value[offset:])

    def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        with self._lock:
            self._data[key] = bytes(data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        with self._lock:
            if key in self._data:
                return False
            self._data[key] = bytes(data)
            return True

    def append(self, key: str, data: bytes) -> None:
        with self._lock:
            current = self._data.get(key)
            if current is None:
                self._data[key] = bytearray(data)
            elif isinstance(current, bytearray):
                current += data
            else:
                self._data[key] = bytearray(current) + data

    def children(self, prefix: str) -> list[str]:
        base = prefix.rstrip("/") + "/" if prefix else ""
        with self._lock:
            names = {k[len(base) :].split("/", 1)[0] for k in self._data if k.startswith(base)}
        return sorted(names)

    def delete_prefix(self, prefix: str) -> None:
        base = prefix.rstrip("/") + "/"
        with self._lock:
            for key in [k for k in self._data if k == prefix or k.startswith(base)]:
                del self._data[key]

    def acquire_lease(self, key: str, owner: bytes) -> Lease | None:
        with self._lock:
            if key in self._leases:
                return None
            lease = _MemoryLease(self, key)
            self._leases[key] = lease
            return lease

    def lease_held(self, key: str) -> bool:
        with self._lock:
            return key in self._leases
