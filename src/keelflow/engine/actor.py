"""Running a durable virtual actor's calls: the journal, the lease, the queue, recovery.

Layout under the storage root::

    actors/<id>/meta          class, creation time and initial state (written once, put-if-absent)
    actors/<id>/journal       calls, results and state changes: framed records, append-only
    actors/<id>/lease         held by the process running the actor's calls right now
    actors/<id>/inbox/<key>   a call made by a process that did not hold the lease

The process holding the lease is the actor's *owner*. A mutating call it accepts is appended
to the journal (durable before ``run_async`` returns), run on the instance the owner keeps in
memory, and closed by a ``result`` record carrying the result and the new state together: one
atomic append, so a crash leaves both or neither. A process that cannot get the lease writes
the call to the inbox; the owner moves inbox calls into its journal, in key order (which is
submission order per thread), and gives the lease up as soon as nothing is queued, so the
next caller becomes the owner. Callers elsewhere follow the journal for their results.

After a crash the next owner finds calls without results and runs them in order, each once:
a result is only ever written with its state. Read-only calls take no lease and write
nothing; they run on a fresh instance built from the last committed state.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextvars
import functools
import json
import logging
import os
import pickle
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import cloudpickle

from .. import serialization
from ..errors import (
    ActorNotFoundError,
    CorruptCheckpointError,
    KeelflowError,
    SerializationError,
    StorageError,
    WorkflowExecutionError,
)
from ..objects import ObjectRef
from ..step import Workflow
from ..storage import Lease, Storage
from .dag import SubDag, collect_refs, flatten
from .journal import Journal, describe
from .runtime import owner_info
from .task import Refs, portable

__all__ = ["ActorHost", "ActorWatch", "actor_root", "current_actor", "decode_instance", "encode_state", "read_meta"]

log = logging.getLogger("keelflow")

ACTORS = "actors"
#: Inbox entries moved into the journal per batch (bounds one append).
_INGEST_BATCH = 512
#: Queued calls run before their results are committed together: at most this many, and only
#: while they keep finishing within the window.
_RUN_BATCH = 64
_BATCH_WINDOW = 0.002
#: How long an idle runner keeps the lease, waiting for the next call.
_LINGER = 0.002
#: Once a journal generation holds this much, the owner starts the next with a snapshot (and
#: drops the one before the current): first reads stay short however long an actor lives.
ROTATE_BYTES = 16 << 20
#: How long results of other processes' calls are carried into new generations.
RESULTS_KEPT_FOR = 120.0
_RECENT_RESULTS = 10_000
#: Keys of recent calls remembered, to skip an inbox entry a crashed owner had already moved.
_RECENT_KEYS = 100_000

#: The actor whose method body runs in this thread: ``(host, call seq)``.
current_actor: contextvars.ContextVar[tuple[ActorHost, int] | None] = contextvars.ContextVar(
    "keelflow_actor", default=None
)

_key_lock = threading.Lock()
_last_key = [0]
_proc_token = f"{os.getpid():x}{os.urandom(3).hex()}"


def _next_key() -> str:
    """A call key that sorts in submission order within this process (and by time across)."""
    with _key_lock:
        now = max(time.time_ns(), _last_key[0] + 1)
        _last_key[0] = now
    return f"{now:020d}-{_proc_token}"


def actor_root(actor_id: str) -> str:
    return f"{ACTORS}/{actor_id}"


def _generation_root(actor_id: str, gen: int) -> str:
    # Generation 0 is the journal the actor starts with; later ones begin with a snapshot.
    return actor_root(actor_id) if gen == 0 else f"{actor_root(actor_id)}/gen/{gen:08d}"


def _newest_generation(storage: Storage, actor_id: str) -> int:
    names = storage.children(f"{actor_root(actor_id)}/gen")
    return max((int(n) for n in names if n.isdigit()), default=0)


def generation_journal(storage: Storage, actor_id: str, gen: int) -> Journal:
    return Journal(storage, actor_id, root=_generation_root(actor_id, gen), kind="actor")


def read_journals(storage: Storage, actor_id: str) -> list[tuple[Any, ...]]:
    """The records of the generations kept (the one before the newest, and the newest)."""
    newest = _newest_generation(storage, actor_id)
    records: list[tuple[Any, ...]] = []
    for gen in range(max(0, newest - 1), newest + 1):
        records.extend(generation_journal(storage, actor_id, gen).read())
    return records


def _drop_generation(storage: Storage, actor_id: str, gen: int) -> None:
    if gen == 0:
        for leaf in ("journal", "journal.d"):
            storage.delete_prefix(f"{actor_root(actor_id)}/{leaf}")
    else:
        storage.delete_prefix(_generation_root(actor_id, gen))


# -- state ----------------------------------------------------------------------------------------
def _custom(cls: type, name: str) -> bool:
    return getattr(cls, name, None) is not getattr(object, name, None)


def encode_state(actor_id: str, inst: Any) -> tuple[str, bytes]:
    """The instance's state as stored: its ``__dict__`` as JSON, or what ``__getstate__`` returns."""
    cls = type(inst)
    if _custom(cls, "__getstate__"):
        value = inst.__getstate__()
        try:
            return ("pickle", cloudpickle.dumps(value, protocol=5))
        except Exception as e:
            raise SerializationError(
                f"cannot serialize the state of actor {actor_id!r}: {cls.__qualname__}.__getstate__ returned "
                f"a {type(value).__name__} that cannot be pickled ({type(e).__name__}: {e})"
            ) from e
    attrs = getattr(inst, "__dict__", None)
    if attrs is None:
        raise SerializationError(
            f"actor {actor_id!r}: {cls.__qualname__} instances have no __dict__ (__slots__?); define "
            "__getstate__ and __setstate__ to say what its state is"
        )
    try:
        return ("json", json.dumps(attrs, allow_nan=False).encode())
    except (TypeError, ValueError) as e:
        bad = _first_non_json(attrs)
        raise SerializationError(
            f"the state of actor {actor_id!r} is not JSON-serializable{bad}; keep JSON values in its "
            f"attributes, or define {cls.__qualname__}.__getstate__ and __setstate__ to store any picklable value"
        ) from e


def _first_non_json(attrs: dict[str, Any]) -> str:
    for name, value in attrs.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            return f": attribute {name!r} holds a {type(value).__name__}"
    return ""


def decode_instance(cls: type, state: tuple[str, bytes]) -> Any:
    """A fresh instance of ``cls`` holding ``state`` (``__init__`` is not called)."""
    codec, data = state
    inst: Any = cls.__new__(cls)  # type: ignore[call-overload]
    if codec == "json":
        vars(inst).update(json.loads(data))
        return inst
    value = pickle.loads(data)
    if _custom(cls, "__setstate__"):
        inst.__setstate__(value)
    elif isinstance(value, dict):
        vars(inst).update(value)
    else:
        raise SerializationError(
            f"{cls.__qualname__}.__getstate__ returned a {type(value).__name__}; define __setstate__ to restore it"
        )
    return inst


def state_value(state: tuple[str, bytes]) -> Any:
    """The stored state as a plain value (for the management API)."""
    codec, data = state
    return json.loads(data) if codec == "json" else pickle.loads(data)


# -- meta -----------------------------------------------------------------------------------------
def meta_record(actor_id: str, cls: type, state: tuple[str, bytes]) -> bytes:
    header = {
        "format": serialization.FORMAT_VERSION,
        "actor_id": actor_id,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "created": time.time(),
    }
    try:
        blob = cloudpickle.dumps(cls, protocol=5)
    except Exception as e:
        raise SerializationError(f"cannot serialize actor class {cls.__qualname__}: {type(e).__name__}: {e}") from e
    return serialization.frame(serialization.dump_record(("actor", header, blob, state)))


def read_meta(storage: Storage, actor_id: str) -> tuple[dict[str, Any], bytes, tuple[str, bytes]] | None:
    """``(header, class blob, initial state)``, or None for an unknown actor."""
    key = f"{actor_root(actor_id)}/meta"
    raw = storage.get(key)
    if raw is None:
        return None
    scan = serialization.scan_frames(raw)
    where = storage.location(key)
    if len(scan.payloads) != 1 or not scan.clean:
        what = scan.problem or ("cut short" if scan.torn else "more than one record")
        raise CorruptCheckpointError(
            f"actor record {where} is damaged at byte {scan.end}: {what}", path=where, offset=scan.end
        )
    try:
        _, header, blob, state = serialization.load_record(scan.payloads[0])
    except Exception as e:
        raise CorruptCheckpointError(f"actor record {where} is unreadable: {e}", path=where, offset=0) from e
    if header.get("format", 0) > serialization.FORMAT_VERSION:
        from ..errors import StorageFormatError

        raise StorageFormatError(
            f"actor {actor_id!r} was written by a newer keelflow (format {header['format']}); upgrade to use it",
            path=storage.location(key),
        )
    return header, blob, state


# -- status, for listings -------------------------------------------------------------------------
class ActorWatch:
    """One actor's status as ``list_all`` shows it, following its journal incrementally so a
    repeated listing reads only what was appended since (a stat when nothing was):

    - ``RUNNING``: a live process holds its lease (it runs calls now);
    - ``RESUMABLE``: calls wait, in its journal or inbox, and no live process runs them (their
      owner died, or a process left them queued): ``resume_all()``, or any process touching
      the actor, runs them;
    - ``SUCCESSFUL``: nothing waits. A call that raised does not change this: its exception is
      that call's result, and the calls behind it ran.
    """

    def __init__(self, storage: Storage, actor_id: str) -> None:
        self.storage = storage
        self.actor_id = actor_id
        self.root = actor_root(actor_id)
        self.created: Any = None
        self.gen = -1
        self.journal: Journal | None = None
        self.pending: set[int] = set()

    def status(self) -> tuple[str, dict[str, Any]] | None:
        """``(status, info)``, or None for an actor that does not exist (any more).
        :class:`CorruptCheckpointError` for a damaged record."""
        meta = read_meta(self.storage, self.actor_id)
        if meta is None:
            return None
        header = meta[0]
        info: dict[str, Any] = {
            "actor": True,
            "class": header.get("class"),
            "start_time": header.get("created"),
            "user_metadata": {},
        }
        if header.get("created") != self.created:  # first look, or a new actor under this id
            self.created, self.journal, self.gen = header.get("created"), None, -1
        if self.storage.lease_held(f"{self.root}/lease"):
            return "RUNNING", info
        if self.storage.children(f"{self.root}/inbox"):
            return "RESUMABLE", info
        newest = _newest_generation(self.storage, self.actor_id)
        if self.journal is None or newest != self.gen:
            # A generation starts with a snapshot of everything before it: read only the newest.
            self.gen, self.pending = newest, set()
            self.journal = generation_journal(self.storage, self.actor_id, newest)
        for rec in self.journal.read_new():
            kind = rec[0]
            if kind == "call":
                self.pending.add(rec[1])
            elif kind == "result":
                self.pending.discard(rec[1])
            elif kind == "snapshot":
                self.pending = {call[1] for call in rec[1]["pending"]}
        return ("RESUMABLE" if self.pending else "SUCCESSFUL"), info


# -- values ---------------------------------------------------------------------------------------
def encode_value(value: Any, what: str) -> tuple[bytes, dict[str, tuple[bytes, tuple[str, ...]]]]:
    """Bytes for ``value`` plus the objects its refs point to."""
    found: dict[str, ObjectRef[Any]] = {}

    def on_ref(ref: ObjectRef[Any]) -> str:
        ref = ref._settled()
        found[ref.id] = ref
        return ref.id

    data = serialization.encode(value, what=what, on_ref=on_ref)
    table: dict[str, tuple[bytes, tuple[str, ...]]] = {}
    collect_refs(found, table)
    return data, table


def decode_value(packed: tuple[bytes, dict[str, Any]], what: str) -> Any:
    data, table = packed
    return serialization.decode(data, what=what, resolve_ref=Refs(table))


class _Pending:
    """A call accepted into the journal that has no result yet."""

    __slots__ = ("args", "idem", "key", "method", "seq", "sub_id", "submitted")

    def __init__(self, rec: tuple[Any, ...]) -> None:
        _, self.seq, self.key, self.idem, self.method, self.args, self.submitted = rec
        self.sub_id: str | None = None


class ActorHost:
    """One actor as seen by this process: owner of its calls while it holds the lease,
    else a follower of its journal."""

    def __init__(
        self,
        storage: Storage,
        actor_id: str,
        cls: type,
        state: tuple[str, bytes],
        run_sub: Callable[[Any, str, dict[str, Any]], Any],
    ) -> None:
        self.storage = storage
        self.actor_id = actor_id
        self.cls = cls
        self.root = actor_root(actor_id)
        self.gen = _newest_generation(storage, actor_id)
        self.journal = generation_journal(storage, actor_id, self.gen)
        self.failed = 0  # calls that raised, over the actor's life
        self._run_sub = run_sub
        self.lock = threading.Lock()  # the fields below, and journal appends
        self.wake = threading.Condition(self.lock)  # a call was queued for the runner
        self.exec_lock = threading.RLock()  # one method body at a time: calls and chained calls
        self.lease: Lease | None = None
        self.state = state  # last committed
        self.staged = state  # after the last call run here (committed or about to be)
        self.instance: Any = None  # the owner's live instance (None: build from self.state)
        self.next_seq = 0
        self.pending: dict[int, _Pending] = {}
        self.subs: dict[str, tuple[Any, ...]] = {}  # chained calls of pending calls, by key
        self.idem: dict[str, int] = {}  # idempotency key -> seq
        self.recent: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.futures: dict[str, list[concurrent.futures.Future[Any]]] = {}  # call key -> waiters
        self.key_of: dict[int, str] = {}  # seq -> key, for pending calls
        self.running: tuple[int, str | None] | None = None  # (seq, sub-workflow id) of the call in hand
        self._aliases: dict[str, int] = {}  # repeated idempotent call key -> the call answering it
        # Results of calls made by other processes (which follow the journal for them), kept a
        # while and carried into new generations: a follower that slept through a generation
        # still finds its result.
        self.recent_results: collections.OrderedDict[str, tuple[float, tuple[Any, ...]]] = collections.OrderedDict()
        self._runner: threading.Thread | None = None
        self._follower: threading.Thread | None = None
        self._stopped = False

    # -- following the journal --------------------------------------------------------------------
    def _apply(self, rec: tuple[Any, ...]) -> None:
        kind = rec[0]
        if kind == "call":
            call = _Pending(rec)
            self.pending[call.seq] = call
            self.key_of[call.seq] = call.key
            self.next_seq = max(self.next_seq, call.seq + 1)
            if call.idem is not None:
                self.idem[call.idem] = call.seq
            self.recent[call.key] = None
            if len(self.recent) > _RECENT_KEYS:
                self.recent.popitem(last=False)
        elif kind == "alias":  # a repeated idempotent call, answered by an earlier one
            _, key, seq = rec
            self.recent[key] = None
            self._settle_alias(key, seq)
        elif kind == "cont":
            _, seq, state, sub_id, _t = rec
            if state is not None:
                self.state = state
            if seq in self.pending:
                self.pending[seq].sub_id = sub_id
        elif kind == "sub":
            _, _seq, sub_key, _k, _p, state, _s, _e = rec
            if state is not None:
                self.state = state
            self.subs[sub_key] = rec
        elif kind == "result":
            _, seq, ok, _payload, state, _s, _e = rec
            self.failed += ok != "ok"
            if state is not None:
                self.state = state
            self.pending.pop(seq, None)
            key = self.key_of.pop(seq, None)
            if key is not None and not key.endswith(_proc_token):  # another process's call
                self.recent_results[key] = (time.time(), rec)
                if len(self.recent_results) > _RECENT_RESULTS:
                    self.recent_results.popitem(last=False)
            if not self.pending:
                self.subs.clear()
            if key is not None:
                self._settle(key, rec)
            for other, s in list(self._aliases.items()):
                if s == seq:
                    del self._aliases[other]
                    self._settle(other, rec)

        elif kind == "snapshot":
            self._apply_snapshot(rec[1])

    def _snapshot(self) -> dict[str, Any]:
        """Everything a new generation starts from (owner, between calls)."""
        return {
            "seq": self.next_seq,
            "state": self.state,
            "failed": self.failed,
            "pending": [("call", c.seq, c.key, c.idem, c.method, c.args, c.submitted) for c in self.pending.values()],
            "conts": {c.seq: c.sub_id for c in self.pending.values() if c.sub_id is not None},
            "subs": list(self.subs.values()),
            "idem": dict(self.idem),
            "results": self._recent_results(),
            "time": time.time(),
        }

    def _recent_results(self) -> dict[str, tuple[float, tuple[Any, ...]]]:
        cutoff = time.time() - RESULTS_KEPT_FOR
        while self.recent_results and next(iter(self.recent_results.values()))[0] < cutoff:
            self.recent_results.popitem(last=False)
        return dict(self.recent_results)

    def _apply_snapshot(self, info: dict[str, Any]) -> None:
        for key, (when, rec) in info.get("results", {}).items():
            self.recent_results.setdefault(key, (when, rec))
            if key in self.futures:
                self._settle(key, rec)
        known = dict(self.key_of)
        self.state = info["state"]
        self.failed = info["failed"]
        self.pending, self.key_of = {}, {}
        for rec in info["pending"]:
            self._apply(rec)
        for seq, sub_id in info["conts"].items():
            self.pending[seq].sub_id = sub_id
        self.subs = {rec[2]: rec for rec in info["subs"]}
        self.idem.update(info["idem"])
        self.next_seq = max(self.next_seq, info["seq"])
        # Calls we saw queued that finished in a generation we did not read to its end.
        for seq, key in known.items():
            if seq not in self.pending and key in self.futures:
                try:
                    self._settle(key, self._find_result(seq))
                except CorruptCheckpointError as e:
                    for fut in self.futures.pop(key, []):
                        fut.set_exception(e)
        # Calls of ours from the inbox that we never saw at all: look for them by key.
        queued = {c.key for c in self.pending.values()}
        for key in [k for k in self.futures if k not in queued]:
            rec = self._find_result_of_key(key)
            if rec is not None:
                self._settle(key, rec)

    def _maybe_rotate(self) -> None:
        """Owner, holding ``lock``, between calls: start a new generation if this one is big."""
        if self.journal.size < ROTATE_BYTES:
            return
        gen = self.gen + 1
        journal = generation_journal(self.storage, self.actor_id, gen)
        if not journal.start([("snapshot", self._snapshot())]):
            raise StorageError(
                f"journal generation {gen} of actor {self.actor_id!r} exists already: two processes run its calls",
                path=journal.path,
            )
        old, self.gen, self.journal = self.gen, gen, journal
        if old > 0:
            _drop_generation(self.storage, self.actor_id, old - 1)
        log.info("actor %s: journal generation %d started", self.actor_id, gen)

    def _settle_alias(self, key: str, seq: int) -> None:
        if seq in self.pending:
            self._aliases[key] = seq
            return
        if key in self.futures:
            self._settle(key, self._find_result(seq))

    def _settle(self, key: str, rec: tuple[Any, ...]) -> None:
        waiters = self.futures.pop(key, None)
        if not waiters:
            return
        outcome = self._outcome(rec)
        for fut in waiters:
            if fut.done():
                continue
            if isinstance(outcome, BaseException):
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome)

    def _outcome(self, rec: tuple[Any, ...]) -> Any:
        """The value of a result record, or the exception to raise for it."""
        _, seq, ok, payload, _state, _s, _e = rec
        if ok == "ok":
            try:
                return decode_value(payload, f"the result of call #{seq} of actor {self.actor_id!r}")
            except Exception as e:
                return e
        exc_blob, tb = payload
        return call_error(self.actor_id, seq, exc_blob, tb)

    def _find_result_of_key(self, key: str) -> tuple[Any, ...] | None:
        """The result of the call made under ``key``, if the journals kept still have it."""
        return self._lookup(key=key)

    def _find_result(self, seq: int) -> tuple[Any, ...]:
        """A finished call's result record, read back from the journals kept (rare path)."""
        rec = self._lookup(seq=seq)
        if rec is None:
            raise CorruptCheckpointError(
                f"actor {self.actor_id!r} no longer stores the result of call #{seq} (compacted away)",
                path=self.journal.path,
            )
        return rec

    def _lookup(self, seq: int | None = None, key: str | None = None) -> tuple[Any, ...] | None:
        """The result record of call ``seq``, or of the call made under ``key``."""
        for rec in read_journals(self.storage, self.actor_id):
            if key is not None and rec[0] == "call" and rec[2] == key:
                seq = rec[1]
            elif rec[0] == "result" and seq is not None and rec[1] == seq:
                return rec
        return None

    def _follow(self) -> None:
        """Read what others appended (caller holds ``lock``), into newer generations too."""
        owner = self.lease is not None
        records = self.journal.read_new(owner=owner)
        for rec in records:
            self._apply(rec)
        newest = _newest_generation(self.storage, self.actor_id)
        while newest > self.gen:
            self.gen += 1
            self.journal = generation_journal(self.storage, self.actor_id, self.gen)
            more = self.journal.read_new(owner=owner and self.gen == newest)
            for rec in more:
                self._apply(rec)
            records.extend(more)
        if records:
            # Another process ran calls: our instance, if any, is out of date.
            self.instance = None
            self.staged = self.state

    def _inbox(self) -> list[str]:
        return self.storage.children(f"{self.root}/inbox")

    def _ingest(self) -> bool:
        """Move inbox calls into the journal (owner, holding ``lock``); True if any were new."""
        names = self._inbox()
        if not names:
            return False
        added = False
        for start in range(0, len(names), _INGEST_BATCH):
            batch = names[start : start + _INGEST_BATCH]
            records: list[tuple[Any, ...]] = []
            seq = self.next_seq
            for name in batch:
                if name in self.recent:
                    continue  # moved already by an owner that died before deleting it
                raw = self.storage.get(f"{self.root}/inbox/{name}")
                if raw is None:
                    continue
                try:
                    key, idem, method, args, submitted = serialization.load_record(raw)
                except Exception:
                    log.error("actor %s: unreadable inbox entry %s skipped", self.actor_id, name)
                    continue
                if idem is not None and idem in self.idem:
                    records.append(("alias", key, self.idem[idem]))
                    continue
                records.append(("call", seq, key, idem, method, args, submitted))
                seq += 1
            if records:
                self.journal.append_owned(records)
                for rec in records:
                    self._apply(rec)
                added = True
            for name in batch:
                self.storage.delete_prefix(f"{self.root}/inbox/{name}")
        return added

    # -- ownership --------------------------------------------------------------------------------
    def _try_own(self) -> bool:
        """Take the lease if free (caller holds ``lock``), catching up with the journal and inbox."""
        if self.lease is not None:
            return True
        lease = self.storage.acquire_lease(f"{self.root}/lease", owner_info())
        if lease is None:
            return False
        self.lease = lease
        try:
            self._follow()
            self._ingest()
        except BaseException:
            self.lease = None
            lease.release()
            raise
        if self.pending:
            self._start_runner()
        return True

    def touch(self) -> None:
        """Catch up; if calls are waiting and nobody runs them, run them (recovery)."""
        with self.lock:
            self._catch_up(inbox_too=True)

    def _catch_up(self, inbox_too: bool) -> None:
        """Unless we own it: read what others committed, and take over calls nobody runs
        (queued in the journal, or with ``inbox_too`` in the inbox). Caller holds ``lock``."""
        if self.lease is None and not self._stopped:
            self._follow()
            if self.pending or (inbox_too and self._inbox()):
                self._recover()

    def _recover(self) -> None:
        """Run calls a dead owner left, if the lease is free (caller holds ``lock``)."""
        if self._try_own() and not self.pending and self._runner is None:
            self._release()  # nothing to run after all: hold nothing

    def _release(self) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    def _start_runner(self) -> None:
        if self._runner is None:
            self._runner = threading.Thread(target=self._run, name=f"keelflow-actor-{self.actor_id}", daemon=True)
            self._runner.start()

    def _start_follower(self) -> None:
        if self._follower is None:
            self._follower = threading.Thread(
                target=self._wait, name=f"keelflow-actor-wait-{self.actor_id}", daemon=True
            )
            self._follower.start()

    # -- calls ------------------------------------------------------------------------------------
    def submit(
        self, method: str, args: tuple[bytes, dict[str, Any]], idem: str | None = None, here: bool = False
    ) -> concurrent.futures.Future[Any]:
        """Queue a mutating call; durable when this returns. The future gets its result.

        With ``here`` (a caller about to wait anyway), a call this process can run at once
        runs on the calling thread rather than being handed to a runner thread.
        """
        running = current_actor.get()
        if here and running is not None and running[0] is self:
            raise KeelflowError(
                f"a method of actor {self.actor_id!r} cannot wait for another call of the same actor: that "
                "call runs after this one. Call the method directly (self.method(...)), chain it "
                "(return self.method.step(...)), or use run_async without waiting"
            )
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        key = _next_key()
        run_here = False
        with self.lock:
            if self._stopped:
                raise RuntimeError("keelflow was shut down")
            self._try_own()
            if self.lease is not None:
                if idem is not None and idem in self.idem:
                    seq = self.idem[idem]
                    self.futures.setdefault(self.key_of.get(seq, key), []).append(fut)
                    if seq not in self.pending:
                        self._settle(key, self._find_result(seq))
                    return fut
                rec = ("call", self.next_seq, key, idem, method, args, time.time())
                self.journal.append_owned([rec])
                self.futures.setdefault(key, []).append(fut)
                self._apply(rec)
                if here and self._runner is None and len(self.pending) == 1:
                    self._runner = threading.current_thread()
                    run_here = True
                else:
                    self._start_runner()
                    self.wake.notify()
            else:
                entry = serialization.dump_record((key, idem, method, args, time.time()))
                self.storage.put(f"{self.root}/inbox/{key}", entry)
                self.futures.setdefault(key, []).append(fut)
                self._start_follower()
        if run_here:
            self._run(until=fut)
        return fut

    def _wait(self) -> None:
        """Follower: until our inbox calls have results, follow the journal or take over."""
        delay = 0.001
        while True:
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)
            with self.lock:
                if not self.futures or self._stopped:
                    self._follower = None
                    return
                if self.lease is not None:
                    self._follower = None
                    return  # we own it now; the runner settles the futures
                try:
                    if self._try_own():
                        self._follower = None
                        return
                    self._follow()
                except Exception as e:
                    log.exception("actor %s: cannot follow its journal", self.actor_id)
                    for waiters in self.futures.values():
                        for fut in waiters:
                            if not fut.done():
                                fut.set_exception(e)
                    self.futures.clear()
                    self._follower = None
                    return

    def _run(self, until: concurrent.futures.Future[Any] | None = None) -> None:
        """Owner: run queued calls in order, then give the lease up. With ``until`` (the
        caller's own call, run on the caller's thread) stop once that call is done."""
        lingered = False
        while True:
            with self.lock:
                if self._stopped:
                    self._runner = None
                    self._release()
                    return
                try:
                    if not self.pending:
                        self._ingest()
                    if until is not None and until.done() and self.pending:
                        self._runner = None
                        self._start_runner()  # the rest is not this caller's to wait for
                        return
                    if not self.pending and not lingered and until is None:
                        # A caller issuing calls back to back is likely to send the next one
                        # in a moment: keeping the lease that long saves a hand-over per call.
                        lingered = True
                        self.wake.wait(_LINGER)
                        continue
                    if not self.pending:
                        self._runner = None
                        self._release()
                        if self.futures:
                            self._start_follower()  # calls of ours still wait in someone's queue
                        return
                    self._maybe_rotate()
                    batch = [self.pending[seq] for seq in sorted(self.pending)[:_RUN_BATCH]]
                except Exception:
                    log.exception("actor %s: cannot read its inbox", self.actor_id)
                    self._runner = None
                    self._release()
                    return
            lingered = False
            try:
                self._execute(batch)
            except Exception as e:
                # Storage failed under us, or a call's workflow stopped resumable: stop owning;
                # the calls stay queued for recovery.
                if isinstance(e, _Interrupted):
                    held = getattr(e.__cause__, "held", False)  # waiting out a hold: said before
                    (log.debug if held else log.warning)(
                        "actor %s: %s; it stays queued, and the calls after it behind it", self.actor_id, e
                    )
                else:
                    log.exception("actor %s: calls could not be recorded", self.actor_id)
                with self.lock:
                    self._runner = None
                    self.instance = None
                    self.staged = self.state
                    self._release()
                return

    def _live(self) -> Any:
        if self.instance is None:
            self.instance = decode_instance(self.cls, self.staged)
        return self.instance

    def _commit(self, records: list[tuple[Any, ...]]) -> None:
        """One durable append for ``records``; their callers hear back only after it."""
        if not records:
            return
        with self.lock:
            self.journal.append_owned(records)
            for rec in records:
                self._apply(rec)
        records.clear()

    def _new_state(self, inst: Any) -> tuple[str, bytes] | None:
        """The state to record after a method ran (None when unchanged); staged as current."""
        state = encode_state(self.actor_id, inst)
        if state == self.staged:
            return None
        self.staged = state
        if state[0] == "json":
            # Rebuilt from what is stored, so the instance behaves the same before and after
            # a restart (tuples become lists, keys strings).
            self.instance = None
        return state

    def _failed(self, call: _Pending, exc: BaseException, start: float) -> tuple[Any, ...]:
        self.instance = None  # drop the failed call's changes: back to the last good state
        return ("result", call.seq, "err", _error_payload(exc), None, start, time.time())

    def _execute(self, batch: list[_Pending]) -> None:
        """Run ``batch`` in order. Results are committed together (one append), so a run of
        queued calls costs one flush; a crash before it re-runs them all from the last
        committed state, and nobody heard of their results."""
        records: list[tuple[Any, ...]] = []
        window = time.monotonic()
        for call in batch:
            if records and time.monotonic() - window > _BATCH_WINDOW:
                # Slow calls are committed one by one: after a crash, only calls run in the
                # last couple of milliseconds run again (their effects outside the state too).
                self._commit(records)
                window = time.monotonic()
            start = time.time()
            what = f"call #{call.seq} ({call.method}) of actor {self.actor_id!r}"
            owned_by = {"actor": self.actor_id, "call": call.seq}
            if call.sub_id is not None:
                # Its method ran before a crash and returned a workflow: see that through.
                self._commit(records)
                self._await_sub(call, functools.partial(self._run_sub, None, call.sub_id, owned_by), start, what)
                return
            future = None
            before = self.staged
            with self.exec_lock:
                token = current_actor.set((self, call.seq))
                try:
                    args, kwargs = decode_value(call.args, f"the arguments of {what}")
                    result = getattr(self.cls, call.method)(self._live(), *args, **kwargs)
                    if isinstance(result, Workflow):
                        # The workflow's first record is durable before the call records that
                        # it started one: a crash in between re-runs the method, which then
                        # finds the workflow and goes on with it. Chained method steps wait
                        # for exec_lock, so they see the state recorded here.
                        state = self._new_state(self._live())
                        self._commit(records)
                        call.sub_id = f"{self.actor_id}.{call.method}.{call.seq}"
                        # Before the workflow starts: its chained method steps look for it.
                        self.running = (call.seq, call.sub_id)
                        future = self._run_sub(result, call.sub_id, owned_by)
                        self._commit([("cont", call.seq, state, call.sub_id, time.time())])
                    else:
                        packed = encode_value(result, f"the result of {what}")
                        state = self._new_state(self._live())
                        records.append(("result", call.seq, "ok", packed, state, start, time.time()))
                except Exception as exc:
                    self.staged = before
                    self.running = None
                    records.append(self._failed(call, exc, start))
                    call.sub_id = None
                finally:
                    current_actor.reset(token)
            if future is not None:
                self._await_sub(call, functools.partial(_same, future), start, what)
                return
        self._commit(records)

    def _await_sub(self, call: _Pending, begin: Callable[[], Any], start: float, what: str) -> None:
        """Wait for the workflow of ``call`` (``begin`` starts or finds it) and record its end."""
        self.running = (call.seq, call.sub_id)
        record: tuple[Any, ...]
        try:
            value = begin().result()
            record = ("result", call.seq, "ok", encode_value(value, f"the result of {what}"), None, start, time.time())
        except Exception as exc:
            if getattr(exc, "resumable", False):
                # The workflow stopped without ending (its step's worker kept dying): it is
                # RESUMABLE, and so is this call. Its callers here hear why; the call stays
                # queued, and whoever runs the actor's calls next resumes the workflow.
                self._interrupted(call, exc)
                raise _Interrupted(f"{what} was interrupted: its workflow {call.sub_id!r} is RESUMABLE") from exc
            # The workflow's steps are not undone: state its chained calls recorded stays.
            record = ("result", call.seq, "err", _error_payload(exc), None, start, time.time())
        finally:
            self.running = None
        self._commit([record])

    def _interrupted(self, call: _Pending, exc: BaseException) -> None:
        """Tell the callers waiting here that ``call`` stopped unfinished, and the calls behind
        it with it: all stay queued, in order, for whoever runs the actor's calls next."""
        mine = {self.key_of.get(call.seq)} | {k for k, s in self._aliases.items() if s == call.seq}
        behind = KeelflowError(
            f"actor {self.actor_id!r} stopped at call #{call.seq}, whose workflow {call.sub_id!r} is RESUMABLE "
            "(its steps' workers kept dying); this call stays queued behind it, and runs when the actor's "
            "calls are resumed: workflow.resume_all(), or a process touching the actor",
            workflow_id=self.actor_id,
            resumable=True,
        )
        with self.lock:
            waiting, self.futures = self.futures, {}
        for key, waiters in waiting.items():
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(exc if key in mine else behind)

    def chained(self, sub_key: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A ``self.method.step(...)`` node of the running call's sub-workflow: runs now, in
        the call, with its state change recorded (once: a re-run returns what was recorded)."""
        with self.exec_lock:
            done = self.subs.get(sub_key)
            seq = self.running[0] if self.running else -1
            if done is None:
                start = time.time()
                before = self.staged
                what = f"{method} (in call #{seq} of actor {self.actor_id!r})"
                token = current_actor.set((self, seq))
                try:
                    result = getattr(self.cls, method)(self._live(), *args, **kwargs)
                    if isinstance(result, Workflow):
                        kind, payload = "cont", flatten(result, what=f"the workflow returned by {what}").to_record()
                    else:
                        kind, payload = "ok", encode_value(result, f"the result of {what}")
                    state = self._new_state(self._live())
                except Exception as exc:
                    self.instance = None
                    self.staged = before
                    kind, payload, state = "err", _error_payload(exc), None
                finally:
                    current_actor.reset(token)
                done = ("sub", seq, sub_key, kind, payload, state, start, time.time())
                self._commit([done])
        _, _, _, kind, payload, _, _, _ = done
        if kind == "cont":
            return SubDag.from_record(payload)
        if kind == "ok":
            return decode_value(payload, f"the result of {method}")
        exc_blob, _tb = payload
        raise serialization.decode(exc_blob, what="an actor method's error")

    def in_call(self, workflow_id: str | None) -> bool:
        """Whether a call of this actor, run here, is waiting on workflow ``workflow_id``."""
        running = self.running
        return running is not None and workflow_id is not None and running[1] == workflow_id

    # -- read-only calls --------------------------------------------------------------------------
    def committed(self) -> tuple[str, bytes]:
        """The last committed state, caught up with other processes."""
        with self.lock:
            self._catch_up(inbox_too=False)  # a read must stay cheap: no inbox listing
            return self.state

    def stop(self) -> None:
        """Stop running calls after the one in hand (queued ones stay for the next owner)."""
        with self.lock:
            self._stopped = True
            runner = self._runner
            if runner is None:
                self._release()
        if runner is not None and runner is not threading.current_thread():
            runner.join(5)
        with self.lock:
            self._release()
            for waiters in self.futures.values():
                for fut in waiters:
                    if not fut.done():
                        fut.set_exception(
                            RuntimeError(f"keelflow was shut down; actor {self.actor_id!r} calls stay queued")
                        )
            self.futures.clear()


def _same(value: Any) -> Any:
    return value


class _Interrupted(KeelflowError):
    """A call's workflow stopped RESUMABLE: the runner stops, the call stays queued."""


def _error_payload(exc: BaseException) -> tuple[bytes, str]:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return cloudpickle.dumps(portable(exc)), tb


def call_error(actor_id: str, seq: int, exc_blob: bytes, tb: str) -> KeelflowError:
    """What a failed call raises: WorkflowExecutionError with the method's exception as
    ``__cause__``, or SerializationError when its result or new state could not be stored."""
    try:
        cause = serialization.decode(exc_blob, what=f"the error of call #{seq} of actor {actor_id!r}")
    except SerializationError as e:
        cause = e
    if isinstance(cause, SerializationError):
        err: KeelflowError = SerializationError(f"call #{seq} of actor {actor_id!r} failed: {cause}")
        err.__cause__ = cause
        return err
    err = WorkflowExecutionError(
        f"call #{seq} of actor {actor_id!r} failed: {type(cause).__name__}: {cause}", workflow_id=actor_id, traceback=tb
    )
    err.__cause__ = cause
    return err


def not_found(storage: Storage, actor_id: str) -> ActorNotFoundError:
    where = describe(storage)
    return ActorNotFoundError(
        f"no actor {actor_id!r} in {where}; create it with get_or_create", actor_id=actor_id, storage=where
    )
