"""The storage seam: a small byte-level key/value protocol.

Keys are relative, ``/``-separated paths whose segments the engine has already validated
(no empty segment, ``.``/``..``, or control characters). Values are opaque bytes: what they
mean, and how they were serialized, is the engine's business, never a backend's.

Each method states its atomicity promise. Backends raise :class:`~keelflow.errors.StorageError`
(naming the location) when storage is unreachable or unwritable.
"""

from __future__ import annotations

import abc
from typing import ClassVar

__all__ = ["RESERVED_PREFIX", "Lease", "Storage"]

#: Backends may keep temporary files under names that start with this, and hide them from
#: :meth:`Storage.children`; the engine refuses ids that start with it.
RESERVED_PREFIX = ".tmp-"


class Lease(abc.ABC):
    """Exclusive ownership of a key's lease, held until released or the holder dies."""

    @abc.abstractmethod
    def release(self) -> None:
        """Give the lease up (idempotent)."""

    @property
    @abc.abstractmethod
    def held(self) -> bool:
        """Whether this lease is still ours."""


class Storage(abc.ABC):
    """Durable bytes under keys. One instance may be used from many threads."""

    #: ``append`` is native and cheap (one durable write per call).
    can_append: ClassVar[bool] = False
    #: Other processes (workers, a later run) can open the same storage from ``url``.
    shared: ClassVar[bool] = True

    url: str

    @abc.abstractmethod
    def get(self, key: str) -> bytes | None:
        """The bytes stored at ``key``, or ``None`` when nothing is stored there."""

    def size(self, key: str) -> int | None:
        """The length of the bytes stored at ``key``, or ``None``; without reading them where
        the backend can (a stat, a HEAD request)."""
        data = self.get(key)
        return None if data is None else len(data)

    def read_from(self, key: str, offset: int) -> bytes | None:
        """The bytes at ``key`` from ``offset`` on (for following a growing journal)."""
        data = self.get(key)
        return None if data is None else data[offset:]

    @abc.abstractmethod
    def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        """Atomically replace ``key``: readers see the old or the new bytes, never a mix.

        With ``durable=False`` the write may be lost in a machine crash (never torn): for
        index records the engine can rebuild from durable ones.
        """

    @abc.abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Durably store ``data`` at ``key`` unless something is there; True if stored."""

    def append(self, key: str, data: bytes) -> None:
        """Durably append ``data`` to ``key`` (created if absent). Only if ``can_append``.

        A crash may leave a torn tail after the last whole append; readers frame their
        records to detect it.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot append")

    @abc.abstractmethod
    def children(self, prefix: str) -> list[str]:
        """Names directly below ``prefix`` (like a directory listing), sorted."""

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Remove ``prefix`` and everything below it (no error if absent)."""

    @abc.abstractmethod
    def acquire_lease(self, key: str, owner: bytes) -> Lease | None:
        """Take the lease at ``key`` for ``owner``, or ``None`` if a live holder has it.

        A holder that dies (even by SIGKILL) loses its lease without running any code.
        """

    @abc.abstractmethod
    def lease_held(self, key: str) -> bool:
        """Whether some live holder (in any process) holds the lease at ``key``."""

    def location(self, key: str) -> str:
        """Where ``key`` lives, for messages (a path or URL a person can look at)."""
        return f"{self.url.rstrip('/')}/{key}"

    def close(self) -> None:
        """Release cached handles. The storage may not be used afterwards."""
