"""Storage in a local (or shared) directory.

Durability: appends are ``write`` + ``fdatasync`` on a kept-open descriptor (one flush per
call); new files and directories also flush their parent directory so they survive a machine
crash. Replacing a file goes through a temporary file and ``rename``.

Leases are ``flock`` locks on a file per key: the kernel drops them when the holder dies,
kill -9 included, so a dead owner never needs to be timed out. On a shared filesystem this is
only as good as its ``flock`` (NFSv4 implements it with server-side locks; older NFS may not).
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import shutil
import stat
import threading
import time

from ..errors import StorageError
from .base import RESERVED_PREFIX, Lease, Storage

__all__ = ["FileStorage"]

_TMP = RESERVED_PREFIX
# fdatasync skips flushing metadata the data does not need; macOS has only fsync.
_datasync = getattr(os, "fdatasync", os.fsync)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# Temporary names unique to this process without a random draw each (os.urandom costs tens
# of microseconds on some VMs); O_EXCL guards against the impossible clash anyway.
_TMP_TOKEN = f"{os.getpid():x}{os.urandom(6).hex()}"
_tmp_counter = itertools.count()

#: Bytes of owner description at the head of a lease file.
_OWNER_WIDTH = 256


class _FileLease(Lease):
    def __init__(self, fd: int, path: str) -> None:
        self._fd: int | None = fd
        self._path = path

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None


class FileStorage(Storage):
    """Keys are files below ``root``."""

    can_append = True
    shared = True

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.url = "file://" + self.root
        self._lock = threading.Lock()
        self._append_fds: dict[str, int] = {}
        self._known_dirs: set[str] = set()
        self._unsynced: set[str] = set()
        if os.path.isdir(self.root):
            return  # opening writes nothing: read-only or full storage can still be read
        if os.path.exists(self.root):
            raise StorageError(f"storage path {self.root} is not a directory", path=self.root)
        if not create:
            raise StorageError(
                f"no keelflow storage at {self.root}: the directory does not exist; check the storage path "
                "(--storage, $KEELFLOW_STORAGE, or workflow.init)",
                path=self.root,
            )
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as e:
            raise self._error("create storage directory", self.root, e) from e

    # -- helpers -----------------------------------------------------------------------------
    def _path(self, key: str) -> str:
        return os.path.join(self.root, key)

    def _error(self, action: str, path: str, e: OSError) -> StorageError:
        reason = e.strerror or str(e)
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            reason += " (storage is read-only or not writable)"
        return StorageError(f"cannot {action} {path}: {reason}", path=path)

    def _ensure_dir(self, directory: str) -> None:
        """Create ``directory`` and missing parents. Their entries are flushed later, by
        :meth:`_sync_dirs`, after the data that needs them: one filesystem commit then
        covers both (a flush per directory first would cost a commit each)."""
        if directory in self._known_dirs:
            return
        missing = []
        d = directory
        while not os.path.isdir(d):
            missing.append(d)
            d = os.path.dirname(d)
        for d in reversed(missing):
            try:
                os.mkdir(d)
            except FileExistsError:
                continue
            with self._lock:
                self._unsynced.add(d)
        with self._lock:
            self._known_dirs.add(directory)

    def _sync_dirs(self, directory: str) -> None:
        """Flush ``directory`` (a new entry in it) and any new, unflushed ancestors."""
        _fsync_dir(directory)
        d = directory
        while True:
            with self._lock:
                if d not in self._unsynced:
                    return
                self._unsynced.discard(d)
            d = os.path.dirname(d)
            _fsync_dir(d)

    def location(self, key: str) -> str:
        return self._path(key)

    # -- protocol ----------------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except OSError as e:
            raise self._error("read", path, e) from e

    def size(self, key: str) -> int | None:
        path = self._path(key)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise self._error("read", path, e) from e
        return None if stat.S_ISDIR(st.st_mode) else st.st_size

    def read_from(self, key: str, offset: int) -> bytes | None:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                if offset:
                    f.seek(offset)
                return f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except OSError as e:
            raise self._error("read", path, e) from e

    def _write_temp(self, directory: str, data: bytes, durable: bool) -> str:
        """A new temporary file in ``directory`` holding ``data`` (flushed if ``durable``)."""
        self._ensure_dir(directory)
        tmp = os.path.join(directory, f"{_TMP}{_TMP_TOKEN}-{next(_tmp_counter)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, data)
            if durable:
                _datasync(fd)
        except BaseException:
            os.close(fd)
            _silent_unlink(tmp)
            raise
        os.close(fd)
        return tmp

    def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        path = self._path(key)
        directory = os.path.dirname(path)
        try:
            tmp = self._write_temp(directory, data, durable)
            with self._lock:
                # A replaced journal must not keep receiving appends through a stale fd.
                stale = self._append_fds.pop(key, None)
            if stale is not None:
                os.close(stale)
            try:
                os.replace(tmp, path)
            except BaseException:
                _silent_unlink(tmp)
                raise
            if durable:
                self._sync_dirs(directory)
        except OSError as e:
            raise self._error("write", path, e) from e

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        directory = os.path.dirname(path)
        try:
            tmp = self._write_temp(directory, data, durable=True)
            try:
                # link() refuses an existing name: an atomic create of a complete file.
                os.link(tmp, path)
            except FileExistsError:
                return False
            finally:
                _silent_unlink(tmp)
            self._sync_dirs(directory)
            return True
        except OSError as e:
            raise self._error("write", path, e) from e

    def append(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            with self._lock:
                fd = self._append_fds.get(key)
            created = False
            if fd is None:
                fd, created = self._open_append(key, path)
            _write_all(fd, data)
            _datasync(fd)
            if created:
                self._sync_dirs(os.path.dirname(path))
        except OSError as e:
            raise self._error("append to", path, e) from e

    def _open_append(self, key: str, path: str) -> tuple[int, bool]:
        self._ensure_dir(os.path.dirname(path))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
            created = True
        except FileExistsError:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND, 0o644)
            created = False
        with self._lock:
            other = self._append_fds.setdefault(key, fd)
        if other != fd:
            os.close(fd)
        return other, created

    def children(self, prefix: str) -> list[str]:
        path = self._path(prefix)
        try:
            names = os.listdir(path)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as e:
            raise self._error("list", path, e) from e
        return sorted(n for n in names if not n.startswith(_TMP))

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix)
        with self._lock:
            doomed = [k for k in self._append_fds if k == prefix or k.startswith(prefix.rstrip("/") + "/")]
            fds = [self._append_fds.pop(k) for k in doomed]
            self._known_dirs = {d for d in self._known_dirs if not (d == path or d.startswith(path + os.sep))}
            self._unsynced = {d for d in self._unsynced if not (d == path or d.startswith(path + os.sep))}
        for fd in fds:
            os.close(fd)
        try:
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._error("delete", path, e) from e

    def acquire_lease(self, key: str, owner: bytes) -> Lease | None:
        path = self._path(key)
        try:
            self._ensure_dir(os.path.dirname(path))
            while True:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                if not _try_flock(fd):
                    os.close(fd)
                    return None
                # The file may have been deleted (and recreated) between open and flock;
                # a lock on an unlinked inode protects nothing, so retry on the live one.
                try:
                    same = os.fstat(fd).st_ino == os.stat(path).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
            # Overwrite in place at a fixed width: truncating a file ext4 has written makes it
            # flush that file on close (its replace-via-truncate safeguard), ~1 ms per lease.
            note = owner[: _OWNER_WIDTH - 1].rstrip(b"\n") + b"\n"
            os.pwrite(fd, note.ljust(_OWNER_WIDTH), 0)
            return _FileLease(fd, path)
        except OSError as e:
            raise self._error("lock", path, e) from e

    def lease_held(self, key: str) -> bool:
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise self._error("read lease", path, e) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops our probe lock, if we got it
        return False

    def close(self) -> None:
        with self._lock:
            fds = list(self._append_fds.values())
            self._append_fds.clear()
        for fd in fds:
            os.close(fd)


def _try_flock(fd: int) -> bool:
    # lease_held() probes with a shared lock for a few microseconds; don't mistake a probe
    # for a holder.
    for attempt in range(5):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            time.sleep(0.001 * (attempt + 1))
    return False


def _silent_unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
