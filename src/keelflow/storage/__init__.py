"""Storage backends, built from a URL in exactly one place: :func:`open_storage`."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from ..errors import StorageError
from .base import RESERVED_PREFIX, Lease, Storage

__all__ = ["RESERVED_PREFIX", "Lease", "Storage", "open_storage"]

_SCHEMES = ("file", "memory", "s3")


def open_storage(url: str | os.PathLike[str], *, create: bool = True) -> Storage:
    """Open the storage named by ``url``: a path, ``file://…``, ``memory://[name]``, ``s3://…``.

    Opening writes nothing, except that a directory that does not exist is created when
    ``create`` is true (else :class:`StorageError` says it does not exist).
    """
    text = os.fspath(url)
    if not isinstance(text, str) or not text.strip():
        raise StorageError(f"storage must be a non-empty path or URL, got {url!r}")
    if "://" not in text:
        from .file import FileStorage

        return FileStorage(os.path.expanduser(text), create=create)
    scheme = text.split("://", 1)[0].lower()
    if scheme == "file":
        from .file import FileStorage

        path = urlsplit(text).path if text.startswith("file:///") else text[len("file://") :]
        return FileStorage(os.path.expanduser(path), create=create)
    if scheme == "memory":
        from .memory import MemoryStorage

        return MemoryStorage.named(text[len("memory://") :])
    if scheme == "s3":
        from .s3 import S3Storage

        return S3Storage.from_url(text)
    raise StorageError(f"unknown storage scheme {scheme!r} in {text!r}; use one of: path, {', '.join(_SCHEMES)}")
