"""Object refs: ``workflow.put`` / ``workflow.get``, and refs to results still on their way.

An :class:`ObjectRef` is an immutable snapshot: ``put`` serializes the value at once (as Ray's
``put`` copies it), so mutating the original later changes nothing. The bytes are what gets
checkpointed — once per workflow, however many steps receive the ref.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextvars
import os
import random
import sys
import threading
from typing import Any, Generic, TypeVar

from . import serialization
from .errors import KeelflowError

__all__ = ["ObjectRef", "get", "put"]

T = TypeVar("T")
_MISSING: Any = object()

#: The workflow whose step is running in this thread (set by the step runner).
current_workflow: contextvars.ContextVar[str | None] = contextvars.ContextVar("keelflow_wf", default=None)
#: The name of that step.
current_step: contextvars.ContextVar[str | None] = contextvars.ContextVar("keelflow_step", default=None)


# Ref ids: 128 random bits from a generator seeded once per process; os.urandom per id
# (what uuid4 does) costs tens of microseconds on some VMs.
_ids = random.Random(os.urandom(32))


def new_id() -> str:
    return f"{_ids.getrandbits(128):032x}"


class _RefType(type):
    # On Ray the refs user code holds are Ray's, and ``isinstance(r, workflow.ObjectRef)``
    # holds for them too, so code written for keelflow runs unchanged there.
    def __instancecheck__(cls, obj: Any) -> bool:
        return cls in type(obj).__mro__ or (cls is ObjectRef and is_ray_ref(obj))


def stored_ref(obj: Any) -> bool:
    """Whether ``obj`` is keelflow's own ref (not a Ray one); cheaper than ``isinstance``."""
    return ObjectRef in type(obj).__mro__


class ObjectRef(Generic[T], metaclass=_RefType):
    """A reference to a stored value. Pass it into steps; read it with ``workflow.get``.

    With the Ray executor, ``put`` returns and steps receive Ray ObjectRefs instead."""

    __slots__ = ("__weakref__", "_data", "_id", "_refs", "_value")

    def __init__(
        self,
        ref_id: str,
        data: bytes | None = None,
        refs: dict[str, ObjectRef[Any]] | None = None,
    ) -> None:
        self._id = ref_id
        self._data = data
        self._refs = refs or {}
        self._value: Any = _MISSING

    @property
    def id(self) -> str:
        return self._id

    @classmethod
    def of(cls, value: Any) -> ObjectRef[Any]:
        refs: dict[str, ObjectRef[Any]] = {}

        def on_ref(ref: ObjectRef[Any]) -> str:
            ref = ref._settled()
            refs[ref._id] = ref
            return ref._id

        data = serialization.encode(value, what="the value given to workflow.put", on_ref=on_ref)
        ref: ObjectRef[Any] = cls(new_id(), data, refs)
        ref._value = value if _immutable(value) else _MISSING
        return ref

    def _settled(self) -> ObjectRef[T]:
        """A ref whose bytes are known (futures override this to wait)."""
        return self

    def _bytes(self) -> tuple[bytes, dict[str, ObjectRef[Any]]]:
        if self._data is None:
            raise KeelflowError(f"object {self._id} has no value in this process")
        return self._data, self._refs

    def _get(self) -> T:
        if self._value is _MISSING:
            data, refs = self._bytes()
            self._value = serialization.decode(data, what=f"object {self._id}", resolve_ref=lambda rid: refs[rid])
        return self._value  # type: ignore[no-any-return]

    def __reduce__(self) -> Any:
        # Plain pickling (outside keelflow's own encoder) carries the bytes along.
        data, refs = self._bytes()
        return _rebuild_ref, (self._id, data, refs)

    def __repr__(self) -> str:
        return f"ObjectRef({self._id})"


def _rebuild_ref(ref_id: str, data: bytes, refs: dict[str, ObjectRef[Any]]) -> ObjectRef[Any]:
    return ObjectRef(ref_id, data, refs)


def _immutable(value: Any) -> bool:
    return value is None or isinstance(value, (int, float, complex, str, bytes, bool, frozenset))


class FutureRef(ObjectRef[T]):
    """The result of ``run_async`` and friends: a ref that settles when the work ends."""

    __slots__ = ("_future", "_workflow_id")

    def __init__(self, future: concurrent.futures.Future[Any], workflow_id: str | None = None) -> None:
        super().__init__(new_id())
        self._future = future
        self._workflow_id = workflow_id

    @property
    def workflow_id(self) -> str | None:
        return self._workflow_id

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> T:
        """Wait for the value (``workflow.get(ref)`` does the same)."""
        running = current_workflow.get()
        if running is not None and running == self._workflow_id and not self._future.done():
            raise KeelflowError(
                f"a step of workflow {running!r} cannot wait for that workflow's own output; "
                "pass the node to the next step instead"
            )
        return self._future.result(timeout)  # type: ignore[no-any-return]

    def _get(self) -> T:
        return get(self.result())  # type: ignore[no-any-return]

    def _settled(self) -> ObjectRef[T]:
        value = self.result()
        if stored_ref(value):
            return value._settled()  # type: ignore[attr-defined, no-any-return]
        if is_ray_ref(value):
            return from_ray(value)
        return ObjectRef.of(value)

    def _bytes(self) -> tuple[bytes, dict[str, ObjectRef[Any]]]:
        return self._settled()._bytes()

    def __repr__(self) -> str:
        state = "done" if self._future.done() else "pending"
        return f"FutureRef({self._workflow_id or self._id}, {state})"


# -- Ray interop ---------------------------------------------------------------------------------
# With the Ray executor, the refs user code sees are Ray ObjectRefs (``ray.get`` works on them,
# as in Ray Workflows). Wherever keelflow stores a value, a Ray ObjectRef inside it is replaced
# by the keelflow ref standing for it: its value is fetched and stored once, and a Ray ref that
# keelflow itself handed out maps back to the stored object it came from.
_ray_mode = False
_RAY_KNOWN_MAX = 4096
_ray_known: collections.OrderedDict[bytes, ObjectRef[Any]] = collections.OrderedDict()
_ray_lock = threading.Lock()


def use_ray(on: bool) -> None:
    """Hand out Ray ObjectRefs from ``put`` and to steps (set by the Ray executor)."""
    global _ray_mode
    _ray_mode = on


def ray_mode() -> bool:
    return _ray_mode


def is_ray_ref(obj: Any) -> bool:
    ray = sys.modules.get("ray")  # never imported here: only if the program uses Ray
    return ray is not None and isinstance(obj, ray.ObjectRef)


def _remember(key: bytes, ref: ObjectRef[Any]) -> None:
    with _ray_lock:
        _ray_known[key] = ref
        _ray_known.move_to_end(key)
        if len(_ray_known) > _RAY_KNOWN_MAX:  # forgetting only costs storing a value again
            _ray_known.popitem(last=False)


def from_ray(ray_ref: Any) -> ObjectRef[Any]:
    """The keelflow ref standing for a Ray ObjectRef."""
    key = ray_ref.binary()
    with _ray_lock:
        known = _ray_known.get(key)
    if known is None:
        import ray

        known = ObjectRef.of(ray.get(ray_ref))
        _remember(key, known)
    return known


def to_ray(ref: ObjectRef[Any]) -> Any:
    """A Ray ObjectRef holding ``ref``'s value, that maps back to ``ref`` when stored."""
    import ray

    ray_ref = ray.put(ref._get())
    _remember(ray_ref.binary(), ref)
    return ray_ref


def put(value: T) -> ObjectRef[T]:
    """Store ``value`` as an object and return a ref to it (a Ray ObjectRef on Ray)."""
    if _ray_mode:
        import ray

        return ray.put(value)  # type: ignore[return-value]
    return ObjectRef.of(value)


def get(ref: Any, timeout: float | None = None) -> Any:
    """The value behind a ref, a list of refs, or a plain value (returned as is)."""
    if is_ray_ref(ref):
        import ray

        return ray.get(ref, timeout=timeout)
    if isinstance(ref, FutureRef):
        return get(ref.result(timeout))
    if stored_ref(ref):
        return ref._get()
    if isinstance(ref, list):
        return [get(r, timeout) for r in ref]
    return ref
