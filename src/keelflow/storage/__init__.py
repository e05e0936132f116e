"""Storage backends, built from a URL in exactly one place: :func:`open_storage`."""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

from ..errors import StorageURLError
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
        raise StorageURLError(f"storage must be a non-empty path or URL, got {url!r}")
    if "://" not in text:
        _refuse_scheme_like(text)
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
    raise StorageURLError(f"unknown storage scheme {scheme!r} in {text!r}; use one of: path, {', '.join(_SCHEMES)}")


# What a URL scheme looks like (RFC 3986), then the ':' ending it.
_SCHEME_LIKE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def _refuse_scheme_like(text: str) -> None:
    """A path whose first part looks like ``scheme:`` (``c:\\ray``, ``s3:bucket``) names no
    directory on purpose: Ray Workflows refused such URLs (``ValueError``), and taking one
    for a relative directory would create, say, a directory named ``c:\\ray`` here."""
    match = _SCHEME_LIKE.match(text)
    if match is None or os.path.splitdrive(text)[0]:
        return  # no scheme, or a drive letter on a system that has them (Windows)
    scheme = match.group()[:-1]
    hint = (
        "a Windows path, which this system has no drive letters for"
        if len(scheme) == 1
        else f"a URL with scheme {scheme!r}, missing '//' or unknown"
    )
    raise StorageURLError(
        f"storage {text!r} looks like {hint}; give a directory path (./{text} for a directory named so), "
        f"or a URL: {', '.join(s + '://' for s in _SCHEMES)}"
    )
