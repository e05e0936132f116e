"""Durable virtual actors (SPEC §6): classes whose instances live in storage, not a process.

``@workflow.virtual_actor`` marks a class; ``Cls.get_or_create(actor_id, *init_args)`` and
``workflow.get_actor(actor_id)`` return a handle whose methods run with ``.run()`` /
``.run_async()``. How calls are queued, run and recovered is in :mod:`keelflow.engine.actor`.
"""

from __future__ import annotations

import concurrent.futures
import functools
import inspect
import logging
import pickle
import threading
from collections.abc import Callable
from typing import Any

from . import api, serialization, session
from .engine.actor import (
    ACTORS,
    ActorHost,
    ActorWatch,
    _custom,
    actor_root,
    call_error,
    current_actor,
    decode_instance,
    encode_state,
    encode_value,
    meta_record,
    not_found,
    read_journals,
    read_meta,
    state_value,
)
from .engine.journal import prepare_write
from .engine.runtime import interrupt_hold
from .errors import (
    CorruptCheckpointError,
    KeelflowError,
    SerializationError,
    WorkflowNotFoundError,
    WorkflowRunningError,
)
from .objects import FutureRef, ObjectRef, current_step, current_workflow, get, put
from .step import StepFunction, StepOptions, Workflow, _code_fingerprint

__all__ = [
    "ActorHandle",
    "delete_actor",
    "get_actor",
    "get_actor_metadata",
    "list_actor_calls",
    "list_actors",
    "virtual_actor",
]

log = logging.getLogger("keelflow")

_lock = threading.Lock()
_hosts: dict[str, ActorHost] = {}


# -- declaring ----------------------------------------------------------------------------------
class _Method:
    """An actor class's method: a plain method on instances, plus ``.step()`` inside calls."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.readonly = bool(getattr(fn, "_keelflow_readonly", False))
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]
        try:
            self.signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            self.signature = None

    def bind(self, qualname: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Check call arguments here, where the mistake is, not in the actor's runner."""
        if self.signature is None:
            return
        try:
            self.signature.bind(None, *args, **kwargs)
        except TypeError as e:
            raise TypeError(f"bad arguments for actor method {qualname}: {e}") from None

    def __get__(self, inst: Any, owner: type | None = None) -> Any:
        if inst is None:
            return self.fn
        return _BoundMethod(self, inst)


class _BoundMethod:
    __slots__ = ("_inst", "_method")

    def __init__(self, method: _Method, inst: Any) -> None:
        self._method = method
        self._inst = inst

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._method.fn(self._inst, *args, **kwargs)

    def step(self, *args: Any, **kwargs: Any) -> Workflow[Any]:
        """Chain this method into the workflow the running actor method returns."""
        running = current_actor.get()
        name = self._method.fn.__name__
        if running is None:
            raise KeelflowError(
                f"self.{name}.step() chains a method inside an actor method; outside one, use "
                f"a handle: Cls.get_or_create(actor_id).{name}.step(...)"
            )
        host = running[0]
        return ActorMethodStep(host.actor_id, name, self._method.readonly, self._method.fn).step(*args, **kwargs)


class _VirtualActor:
    """``@workflow.virtual_actor``; ``@workflow.virtual_actor.readonly`` on methods."""

    def __call__(self, cls: type) -> Any:
        if not isinstance(cls, type):
            raise TypeError(f"@workflow.virtual_actor decorates a class, got {cls!r}")
        if "get_or_create" in vars(cls):
            raise TypeError(f"actor class {cls.__qualname__} must not define get_or_create: keelflow adds it")
        # The state is what __getstate__ returns and what __setstate__ takes back: one without
        # the other cannot round-trip it. Ray Workflows 1.x refused such a class the same way.
        has_get, has_set = _custom(cls, "__getstate__"), _custom(cls, "__setstate__")
        if has_get != has_set:
            missing, present = ("__setstate__", "__getstate__") if has_get else ("__getstate__", "__setstate__")
            raise ValueError(
                f"The class does not have '{missing}' method: actor class {cls.__qualname__} defines "
                f"{present} but not {missing}; define both (any picklable state), or neither (the "
                "state is then the instance's __dict__, as JSON)"
            )
        for name, attr in list(vars(cls).items()):
            if not name.startswith("_") and inspect.isfunction(attr):
                setattr(cls, name, _Method(attr))
        cls.get_or_create = classmethod(_get_or_create)  # type: ignore[attr-defined]
        cls._keelflow_actor = True  # type: ignore[attr-defined]
        return cls

    @staticmethod
    def readonly(fn: Callable[..., Any]) -> Callable[..., Any]:
        """Mark a method read-only: not logged, runs on the last committed state, concurrently."""
        if not callable(fn):
            raise TypeError(f"@workflow.virtual_actor.readonly decorates a method, got {fn!r}")
        fn._keelflow_readonly = True  # type: ignore[attr-defined]
        return fn


virtual_actor = _VirtualActor()


def _methods(cls: type) -> dict[str, _Method]:
    found: dict[str, _Method] = {}
    for klass in reversed(cls.__mro__):
        for name, attr in vars(klass).items():
            if isinstance(attr, _Method):
                found[name] = attr
    return found


# -- hosts ----------------------------------------------------------------------------------------
def _host(actor_id: str, cls: type | None = None) -> ActorHost:
    rt = session.runtime()
    with _lock:
        host = _hosts.get(actor_id)
        if host is not None and host.storage is rt.storage:
            return host
    meta = read_meta(rt.storage, actor_id)
    if meta is None:
        raise not_found(rt.storage, actor_id)
    _header, blob, state = meta
    if cls is None:
        try:
            cls = pickle.loads(blob)
        except Exception as e:
            raise SerializationError(
                f"cannot load the class of actor {actor_id!r} ({_header.get('class')}): {type(e).__name__}: {e}"
            ) from e
    host = ActorHost(rt.storage, actor_id, cls, state, _run_sub)
    with _lock:
        current = _hosts.get(actor_id)
        if current is not None and current.storage is rt.storage:
            return current
        _hosts[actor_id] = host
    return host


def _run_sub(node: Workflow[Any] | None, sub_id: str, owned_by: dict[str, Any]) -> Any:
    """Start (or find again, after a crash) the workflow an actor call returned."""
    try:
        status = api.get_status(sub_id)
    except WorkflowNotFoundError:
        if node is None:
            raise
        return api.run_workflow(node, sub_id, None, owned_by)
    if status == api.WorkflowStatus.RESUMABLE:
        rt = session.runtime()
        held = interrupt_hold(rt.read_index(sub_id) or {})
        if held > 0:
            # Its step's worker kept dying a moment ago: not yet (as resume_all waits too).
            raise KeelflowError(
                f"workflow {sub_id!r} was stopped by system failures; it is resumed in {held:.0f} s",
                workflow_id=sub_id,
                resumable=True,
                held=True,
            )
        return api.resume_owned(sub_id)
    return api.get_output_async(sub_id)


def stop_all() -> None:
    """Stop this process's actor runners (queued calls stay queued for the next owner)."""
    with _lock:
        hosts = list(_hosts.values())
        _hosts.clear()
    for host in hosts:
        host.stop()


def recover_all() -> list[str]:
    """Run calls left queued by dead owners, for every actor in storage; their ids."""
    rt = session.runtime()
    touched = []
    for actor_id in rt.storage.children(ACTORS):
        try:
            host = _host(actor_id)
            host.touch()
        except KeelflowError:
            continue
        touched.append(actor_id)
    return touched


# -- handles --------------------------------------------------------------------------------------
def _get_or_create(cls: type, actor_id: str, *args: Any, **kwargs: Any) -> ActorHandle:
    """The actor ``actor_id``, created from ``cls(*args, **kwargs)`` if it does not exist yet.

    An existing actor keeps its stored state; the arguments are then ignored.
    """
    api.validate_id(actor_id, "actor id")
    rt = session.runtime()
    if read_meta(rt.storage, actor_id) is None:
        inst = cls(*args, **kwargs)
        state = encode_state(actor_id, inst)
        prepare_write(rt.storage)
        rt.storage.put_if_absent(f"{actor_root(actor_id)}/meta", meta_record(actor_id, cls, state))
    host = _host(actor_id, cls)
    host.touch()
    return ActorHandle(actor_id, cls)


def get_actor(actor_id: str | None = None, *, workflow_id: str | None = None) -> ActorHandle:
    """A handle to an existing actor, from any process that can reach the storage.

    ``workflow_id=`` is the seeds' name for the same id (an actor was a workflow there).
    """
    if (actor_id is None) == (workflow_id is None):
        raise TypeError("get_actor takes one actor id: get_actor(actor_id) or get_actor(workflow_id=...)")
    actor_id = api.validate_id(actor_id if actor_id is not None else workflow_id, "actor id")
    host = _host(actor_id)
    host.touch()
    return ActorHandle(actor_id, host.cls)


class ActorHandle:
    """A handle to a virtual actor: ``handle.method.run(...)``, ``.run_async(...)``, ``.step(...)``."""

    def __init__(self, actor_id: str, cls: type) -> None:
        self._actor_id = actor_id
        self._cls = cls

    @property
    def actor_id(self) -> str:
        return self._actor_id

    def ready(self) -> ObjectRef[None]:
        """A ref whose value is ``None`` once the actor is initialized, as in Ray Workflows
        1.x: ``workflow.get(handle.ready())`` (on the Ray executor it is a Ray ObjectRef, so
        ``ray.get`` works too). ``get_or_create`` runs ``__init__`` and stores the actor before
        it returns (an ``__init__`` that raises, raises there), so the ref is resolved at
        once. :class:`ActorNotFoundError` if the actor was deleted since."""
        rt = session.runtime()
        if rt.storage.size(f"{actor_root(self._actor_id)}/meta") is None:
            raise not_found(rt.storage, self._actor_id)
        return put(None)

    def __getattr__(self, name: str) -> ActorMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        methods = _methods(self._cls)
        method = methods.get(name)
        if method is None:
            known = ", ".join(sorted(methods))
            raise AttributeError(f"actor class {self._cls.__qualname__} has no method {name!r} (its methods: {known})")
        return ActorMethod(self._actor_id, self._cls, name, method)

    def __reduce__(self) -> Any:
        return ActorHandle, (self._actor_id, self._cls)

    def __repr__(self) -> str:
        return f"<actor {self._actor_id!r} of {self._cls.__qualname__}>"


def _resolve_top(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    # Refs passed directly as arguments arrive as their values, as with Ray actor calls.
    # (isinstance holds for Ray's refs too.)
    args = tuple(get(a) if isinstance(a, ObjectRef) else a for a in args)
    kwargs = {k: get(v) if isinstance(v, ObjectRef) else v for k, v in kwargs.items()}
    return args, kwargs


def _read(host: ActorHost, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    inst = decode_instance(host.cls, host.committed())
    return getattr(host.cls, name)(inst, *args, **kwargs)


def _refuse_waiting_on_itself(actor_id: str, qualname: str) -> None:
    """A step of the workflow an actor call returned cannot wait for another call of that
    actor: the call runs after the one waiting for the step. Say so instead of hanging."""
    workflow_id = current_workflow.get()
    if workflow_id is None:
        return
    owner = (session.runtime().read_index(workflow_id) or {}).get("owned_by") or {}
    if owner.get("actor") == actor_id:
        raise KeelflowError(
            f"a step of workflow {workflow_id!r}, which runs inside call #{owner.get('call')} of actor "
            f"{actor_id!r}, cannot wait for another call of it ({qualname}): that call would run after "
            "this one ends. Chain it instead: return self.method.step(...) from the actor method"
        )


class ActorMethod:
    """One method of one actor."""

    def __init__(self, actor_id: str, cls: type, name: str, method: _Method) -> None:
        self._actor_id = actor_id
        self._cls = cls
        self._name = name
        self._method = method

    @property
    def readonly(self) -> bool:
        return self._method.readonly

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Call the method and return its result."""
        if self._method.readonly:
            self._method.bind(self._qualname, args, kwargs)
            args, kwargs = _resolve_top(args, kwargs)
            return _read(_host(self._actor_id, self._cls), self._name, args, kwargs)
        _refuse_waiting_on_itself(self._actor_id, self._qualname)
        return self._submit(args, kwargs, here=True).result()

    def run_async(self, *args: Any, **kwargs: Any) -> FutureRef[Any]:
        """Queue the call (durably, for a mutating method) and return a ref to its result."""
        return FutureRef(self._submit(args, kwargs, here=False))

    def _submit(self, args: tuple[Any, ...], kwargs: dict[str, Any], here: bool) -> concurrent.futures.Future[Any]:
        self._method.bind(self._qualname, args, kwargs)
        args, kwargs = _resolve_top(args, kwargs)
        host = _host(self._actor_id, self._cls)
        if self._method.readonly:
            return session.helper_pool().submit(_read, host, self._name, args, kwargs)
        packed = encode_value((args, kwargs), f"the arguments of {self._qualname} on actor {self._actor_id!r}")
        return host.submit(self._name, packed, here=here)

    def step(self, *args: Any, **kwargs: Any) -> Workflow[Any]:
        """A workflow node calling this method (once, even if the workflow is resumed)."""
        return ActorMethodStep(self._actor_id, self._name, self._method.readonly, self._method.fn).step(*args, **kwargs)

    @property
    def _qualname(self) -> str:
        return f"{self._cls.__qualname__}.{self._name}"

    def __repr__(self) -> str:
        return f"<actor method {self._qualname} of {self._actor_id!r}>"


def sub_key(workflow_id: str | None, step_name: str | None) -> str:
    """The idempotency key of an actor call made by a workflow step."""
    return f"{workflow_id}:{step_name}"


class _MethodCall:
    """What an actor method step runs: the call, on the actor's owner (this process)."""

    def __init__(self, actor_id: str, method: str, readonly: bool, module: str, qualname: str) -> None:
        self.actor_id = actor_id
        self.method = method
        self.readonly = readonly
        self.__module__ = module
        self.__qualname__ = qualname
        self.__name__ = method

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        host = _host(self.actor_id)
        args, kwargs = _resolve_top(args, kwargs)
        if self.readonly:
            return _read(host, self.method, args, kwargs)
        workflow_id = current_workflow.get()
        key = sub_key(workflow_id, current_step.get())
        if host.in_call(workflow_id):
            return host.chained(key, self.method, args, kwargs)
        packed = encode_value((args, kwargs), f"the arguments of {self.__qualname__} on actor {self.actor_id!r}")
        return host.submit(self.method, packed, idem=key).result()


class ActorMethodStep(StepFunction[Any]):
    """A step calling an actor method. It runs in the scheduler's process (``inline``), where
    the actor's running call, if any, is."""

    kind = "inline"

    def __init__(self, actor_id: str, method: str, readonly: bool, fn: Callable[..., Any] | None) -> None:
        module = getattr(fn, "__module__", "actor")
        qualname = getattr(fn, "__qualname__", method)
        super().__init__(_MethodCall(actor_id, method, readonly, module, qualname), StepOptions(max_retries=0))
        self._fn = fn
        self._checker = _Method(fn) if fn is not None else None
        self._spec = (actor_id, method, readonly)

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = _code_fingerprint(self._fn) if self._fn is not None else ""
        return self._fingerprint

    def step(self, *args: Any, **kwargs: Any) -> Workflow[Any]:
        if self._checker is not None:
            self._checker.bind(self.default_name, args, kwargs)
        return Workflow(self, args, kwargs)

    def options(self, **options: Any) -> StepFunction[Any]:
        raise KeelflowError("actor method steps take no step options")

    def __reduce__(self) -> Any:
        return ActorMethodStep, (*self._spec, None)


# -- management -----------------------------------------------------------------------------------
_watch_lock = threading.Lock()
_watches: dict[str, ActorWatch] = {}
_watched: list[Any] = [None]  # the storage _watches follow


def listing() -> list[tuple[str, str, dict[str, Any]]]:
    """Every actor as ``workflow.list_all()`` shows it: ``(actor_id, status, info)``, status
    ``RUNNING``, ``RESUMABLE`` or ``SUCCESSFUL`` (see :class:`~keelflow.engine.actor.ActorWatch`),
    info with ``start_time`` (its creation), ``class`` and ``actor: True``. Costs a few small
    reads per actor, and journal bytes only once each: nothing per workflow."""
    rt = session.runtime()
    rows = []
    with _watch_lock:
        if _watched[0] is not rt.storage:
            _watches.clear()
            _watched[0] = rt.storage
        ids = rt.storage.children(ACTORS)
        for gone in set(_watches) - set(ids):
            del _watches[gone]
        for actor_id in ids:
            watch = _watches.get(actor_id)
            if watch is None:
                watch = _watches[actor_id] = ActorWatch(rt.storage, actor_id)
            try:
                row = watch.status()
            except CorruptCheckpointError as e:
                # Listed, never hidden (as a damaged workflow is); touching it names the damage.
                _watches.pop(actor_id, None)
                log.error("actor %s: %s", actor_id, e)
                row = "RESUMABLE", {"actor": True, "damaged": str(e), "start_time": None, "user_metadata": {}}
            if row is not None:
                rows.append((actor_id, *row))
    return rows


def list_actors() -> list[str]:
    """The ids of every actor in storage, sorted."""
    rt = session.runtime()
    return [a for a in rt.storage.children(ACTORS) if rt.storage.get(f"{actor_root(a)}/meta") is not None]


def _records(actor_id: str) -> tuple[dict[str, Any], tuple[str, bytes], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    rt = session.runtime()
    api.validate_id(actor_id, "actor id")
    meta = read_meta(rt.storage, actor_id)
    if meta is None:
        raise not_found(rt.storage, actor_id)
    header, _blob, state = meta
    # The inbox before the journal: a call moved from one to the other meanwhile is then seen
    # twice (and counted once), never missed.
    inbox = []
    for name in rt.storage.children(f"{actor_root(actor_id)}/inbox"):
        raw = rt.storage.get(f"{actor_root(actor_id)}/inbox/{name}")
        if raw is not None:
            try:
                inbox.append(serialization.load_record(raw))
            except Exception:
                continue
    records = read_journals(rt.storage, actor_id)
    moved = {rec[2] if rec[0] == "call" else rec[1] for rec in records if rec[0] in ("call", "alias")}
    inbox = [entry for entry in inbox if entry[0] not in moved]
    return header, state, records, inbox


def _queued_call(seq: int | None, method: str, submitted: float) -> dict[str, Any]:
    return {
        "seq": seq,
        "method": method,
        "status": "QUEUED",
        "submitted": submitted,
        "start_time": None,
        "end_time": None,
        "error": None,
        "workflow_id": None,
    }


def list_actor_calls(actor_id: str, status: str | None = None) -> list[dict[str, Any]]:
    """The actor's mutating calls, oldest first: ``seq``, ``method``, ``status`` (``QUEUED``,
    ``RUNNING``, ``SUCCESSFUL``, ``FAILED``), ``submitted``, ``start_time``, ``end_time``,
    ``error`` and ``workflow_id`` (of a workflow the call returned)."""
    _header, _state, records, inbox = _records(actor_id)
    rt = session.runtime()
    running = rt.storage.lease_held(f"{actor_root(actor_id)}/lease")
    calls: dict[int, dict[str, Any]] = {}

    def expand(records: list[tuple[Any, ...]]) -> Any:
        for rec in records:
            if rec[0] == "snapshot":  # calls still queued when a new generation began
                yield from rec[1]["pending"]
                for seq, sub_id in rec[1]["conts"].items():
                    yield ("cont", seq, None, sub_id, None)
            else:
                yield rec

    for rec in expand(records):
        kind = rec[0]
        if kind == "call" and rec[1] not in calls:
            _, seq, _key, _idem, method, _args, submitted = rec
            calls[seq] = _queued_call(seq, method, submitted)
        elif kind == "cont" and rec[1] in calls:
            calls[rec[1]]["workflow_id"] = rec[3]
            # Its workflow runs while the owner lives; else it waits to be resumed with it.
            calls[rec[1]]["status"] = "RUNNING" if running else "QUEUED"
        elif kind == "result" and rec[1] in calls:
            _, seq, ok, payload, _st, start, end = rec
            info = calls[seq]
            info.update(start_time=start, end_time=end, status="SUCCESSFUL" if ok == "ok" else "FAILED")
            if ok != "ok":
                err = call_error(actor_id, seq, *payload)
                info["error"] = f"{type(err.__cause__).__name__}: {err.__cause__}"
    out = list(calls.values())
    queued = [c for c in out if c["status"] == "QUEUED"]
    if running and queued and not any(c["status"] == "RUNNING" for c in out):
        queued[0]["status"] = "RUNNING"  # the owner is alive, so its first queued call runs
    # Calls in the inbox have no sequence number until the owner takes them in.
    out.extend(_queued_call(None, method, submitted) for _key, _idem, method, _args, submitted in inbox)
    if status is not None:
        out = [c for c in out if c["status"] == status]
    return out


def get_actor_metadata(actor_id: str) -> dict[str, Any]:
    """``actor_id``, ``class``, ``status`` (``RUNNING``: a live process runs its calls;
    ``QUEUED``: calls wait for a process to touch it; ``IDLE``), ``state`` (the committed
    state) and ``stats`` (``created``, ``calls``, ``failed``, ``queued``, ``last_call_time``)."""
    header, state, records, inbox = _records(actor_id)
    rt = session.runtime()
    calls = failed = 0
    last = None
    pending: set[int] = set()
    for rec in records:
        kind = rec[0]
        if kind == "snapshot":  # sums up everything before it
            info = rec[1]
            state, calls, failed = info["state"], info["seq"], info["failed"]
            pending = {c[1] for c in info["pending"]}
        elif kind == "call":
            calls = max(calls, rec[1] + 1)
            pending.add(rec[1])
        elif kind in ("cont", "sub", "result"):
            new_state = rec[2] if kind == "cont" else rec[5] if kind == "sub" else rec[4]
            if new_state is not None:
                state = new_state
            if kind == "result":
                pending.discard(rec[1])
                failed += rec[2] != "ok"
                last = rec[6]
    queued = len(pending) + len(inbox)
    if rt.storage.lease_held(f"{actor_root(actor_id)}/lease"):
        status = "RUNNING"
    else:
        status = "QUEUED" if queued else "IDLE"
    return {
        "actor_id": actor_id,
        "class": header.get("class"),
        "status": status,
        "state": state_value(state),
        "stats": {
            "created": header.get("created"),
            "calls": calls + len(inbox),
            "failed": failed,
            "queued": queued,
            "last_call_time": last,
        },
    }


def delete_actor(actor_id: str) -> None:
    """Remove the actor, its calls and the workflows its calls ran. Refuses a running actor."""
    rt = session.runtime()
    api.validate_id(actor_id, "actor id")
    with _lock:
        host = _hosts.pop(actor_id, None)
    if host is not None:
        host.stop()
    lease = rt.storage.acquire_lease(f"{actor_root(actor_id)}/lease", b"delete")
    if lease is None:
        raise WorkflowRunningError(f"actor {actor_id!r} is running calls in a live process", workflow_id=actor_id)
    try:
        if read_meta(rt.storage, actor_id) is None:
            raise not_found(rt.storage, actor_id)
        for rec in read_journals(rt.storage, actor_id):
            if rec[0] == "cont":
                try:
                    api.delete(rec[3])
                except WorkflowNotFoundError:
                    pass
        # The record saying it exists goes first, so a crash part way leaves no half actor.
        rt.storage.delete_prefix(f"{ACTORS}/{actor_id}/meta")
        for leaf in ("journal", "journal.d", "gen", "inbox"):
            rt.storage.delete_prefix(f"{ACTORS}/{actor_id}/{leaf}")
    finally:
        lease.release()
    rt.storage.delete_prefix(f"{ACTORS}/{actor_id}")
