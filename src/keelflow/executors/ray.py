"""The Ray executor: each step attempt is a Ray task on a running Ray cluster.

Imported only when chosen (``init(executor="ray")`` or ``KEELFLOW_EXECUTOR=ray``); the rest of
keelflow never imports Ray.

The scheduler stays in the driver and keeps writing the journal; what changes is where step
code runs and how large values travel:

- a task declares the step's ``num_cpus``, ``num_gpus`` and ``resources`` to Ray, which places it;
- large outputs are stored by the task itself, straight into the workflow's storage, and come
  back to the driver as a pointer. The bytes stay in the Ray object store (as the task's second
  return value, owned by the driver), and a later step that needs them gets that object passed
  as a task argument, so Ray moves it between nodes without the driver in the way. A step run
  after a restart, when the object is gone, reads the stored copy;
- retries stay the engine's (Ray's own task retries are off), so ``max_retries`` and
  ``catch_exceptions`` mean what they mean on the local executor. A worker that dies is a
  system failure, retried the same way.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import socket
import sys
import threading
from typing import Any

import ray

from .. import objects
from ..engine.journal import BLOB_THRESHOLD, load_blob, store_blob
from ..errors import KeelflowError
from ..objects import new_id
from ._worker import call_runner, prepare
from .base import Demand, Executor, Outcome, Task

__all__ = ["RayExecutor", "connect"]

# Small function blobs travel inline with each task (a ref would cost a fetch from the driver).
_INLINE_FUNC_BYTES = 64 * 1024
# Stored large outputs whose Ray objects the driver keeps alive for later steps. Older ones
# are read back from storage instead, so this bounds what the object store must hold.
_KEEP_BLOB_OBJECTS = 64


def connect(address: str | None = None) -> None:
    """Attach this process to the running Ray cluster (``RAY_ADDRESS``, else ``"auto"``)."""
    if ray.is_initialized():
        return
    target = address or os.environ.get("RAY_ADDRESS") or "auto"
    hint = "start one (`ray start --head`) or set RAY_ADDRESS to a running cluster's address"
    # Ray keeps retrying an address where nothing listens for a minute or more: look first.
    host, sep, port = target.rpartition(":")
    if sep and port.isdigit() and "://" not in target:
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as e:
            raise KeelflowError(f"the Ray executor found no Ray cluster at {target!r}: {e}; {hint}") from e
    try:
        ray.init(address=target, logging_level=logging.WARNING, configure_logging=False)
    except ConnectionError as e:
        raise KeelflowError(f"the Ray executor found no Ray cluster at {target!r} ({e}); {hint}") from e


class RayExecutor(Executor):
    """Runs tasks as Ray tasks; outcomes arrive through the refs' futures."""

    name = "ray"
    reads_storage = True

    def __init__(self, storage_url: str | None, env: dict[str, str] | None = None, address: str | None = None) -> None:
        connect(address)
        objects.use_ray(True)  # refs handed to user code in the driver are Ray's too
        # The driver's environment goes along (see _prepare_process), and keelflow's own.
        setup = (storage_url, list(sys.path), dict(os.environ), dict(env or {}))
        # Sent once into the object store; tasks carry only its key and ref (wrapped in a
        # tuple so Ray does not fetch it for every task), and a worker fetches it when new.
        self._setup = (new_id(), storage_url, (ray.put(setup),))
        self._remote = ray.remote(num_returns=2, max_retries=0)(_run)
        self._by_demand: dict[Demand, Any] = {}
        self._func_refs: dict[str, Any] = {}
        self._blob_objects: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._pending: dict[int, tuple[Any, Any]] = {}  # task id -> (outcome ref, blobs ref)
        self._done: queue.SimpleQueue[tuple[int, Any] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, task: Task) -> None:
        if self._closed:
            raise RuntimeError("executor is shut down")
        remote = self._by_demand.get(task.demand)
        if remote is None:
            d = task.demand
            remote = self._by_demand[d] = self._remote.options(
                num_cpus=d.cpus, num_gpus=d.gpus, resources=dict(d.custom)
            )
        func: Any = task.func_blob
        if len(func) > _INLINE_FUNC_BYTES:
            func = self._func_refs.get(task.func_key)
            if func is None:
                func = self._func_refs[task.func_key] = ray.put(task.func_blob)
        held = {id(ref): ref for key in task.blobs if (ref := self._blob_objects.get(key)) is not None}
        out_ref, blobs_ref = remote.remote(
            task.runner, task.func_key, func, task.payload, self._setup, task.spill_prefix, *held.values()
        )
        with self._lock:
            self._pending[task.task_id] = (out_ref, blobs_ref)
        out_ref.future().add_done_callback(lambda fut, i=task.task_id: self._done.put((i, fut)))

    def wait(self, timeout: float | None) -> list[Outcome]:
        if self._closed:
            return []
        items: list[tuple[int, Any] | None] = []
        try:
            items.append(self._done.get(timeout=None if timeout is None else max(0.0, timeout)))
            while True:
                items.append(self._done.get_nowait())
        except queue.Empty:
            pass
        out = []
        for item in items:
            if item is None:
                continue
            task_id, fut = item
            with self._lock:
                refs = self._pending.pop(task_id, None)
            if refs is None:  # cancelled
                continue
            try:
                result, error, spilled = fut.result()
            except Exception as e:  # the worker died, the node went away, ...
                out.append(Outcome(task_id, error=f"{type(e).__name__}: {e}"))
                continue
            for key in spilled:
                self._blob_objects[key] = refs[1]
                self._blob_objects.move_to_end(key)
            while len(self._blob_objects) > _KEEP_BLOB_OBJECTS:
                self._blob_objects.popitem(last=False)
            out.append(Outcome(task_id, result=result, error=error))
        return out

    def wake(self) -> None:
        self._done.put(None)

    def cancel(self, task_ids: list[int]) -> None:
        for task_id in task_ids:
            with self._lock:
                refs = self._pending.pop(task_id, None)
            if refs is not None:
                try:
                    ray.cancel(refs[0], force=True)
                except Exception:  # already finished, or its worker is gone
                    pass

    def shutdown(self) -> None:
        # The Ray connection stays: the program may use Ray itself (ray.shutdown() ends it).
        self._closed = True
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        for out_ref, _ in pending:
            try:
                # Stopped, as the local executor's workers are: a step left running could
                # overlap with its own rerun when the workflow is resumed elsewhere.
                ray.cancel(out_ref, force=True)
            except Exception:
                pass
        self._blob_objects.clear()
        self._func_refs.clear()
        objects.use_ray(False)

    def check_demand(self, demand: Demand) -> str | None:
        want = {"CPU": demand.cpus, "GPU": demand.gpus, **dict(demand.custom)}
        want = {k: v for k, v in want.items() if v > 0}
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        if any(all(have.get(k, 0) >= v for k, v in want.items()) for have in nodes):
            return None
        sizes = "; ".join(
            ", ".join(f"{k}={v:g}" for k, v in sorted(have.items()) if not k.startswith("node:") and "memory" not in k)
            for have in nodes
        )
        return f"no node of the Ray cluster offers {want} (its nodes offer: {sizes or 'nothing'})"


# -- in the Ray worker -----------------------------------------------------------------------------

_runners: dict[str, Any] = {}
_funcs: dict[str, Any] = {}
_storages: dict[str, Any] = {}
_own_env: frozenset[str] | None = None  # what the node set for this worker: never overridden
_last_setup: Any = None
_last_key: str | None = None


def _prepare_process(sent: tuple[str, str | None, tuple[Any]]) -> None:
    """The driver's import path, the driver's environment variables that the worker's node
    does not set itself (as a local worker process would inherit them), and keelflow's own
    settings for nested calls; Ray refs for user code."""
    global _own_env, _last_setup, _last_key
    if sent[0] == _last_key:
        return
    setup = ray.get(sent[2][0])
    _last_key = sent[0]
    if _own_env is None:
        _own_env = frozenset(os.environ)
        objects.use_ray(True)
    _url, path, driver_env, keelflow_env = setup
    for entry in path:
        if entry not in sys.path and os.path.isdir(entry or "."):
            sys.path.append(entry)
    for name in set(os.environ) - _own_env - set(driver_env) - set(keelflow_env):  # an earlier driver's
        del os.environ[name]
    for name, value in driver_env.items():
        if name not in _own_env:
            os.environ[name] = value
    if _last_setup is not None and _last_setup[3] != keelflow_env:
        api = sys.modules.get("keelflow.api")
        if api is not None:  # a step here used keelflow under the driver's earlier settings
            api.shutdown()
    os.environ.update(keelflow_env)
    _last_setup = setup


def _storage(url: str) -> Any:
    store = _storages.get(url)
    if store is None:
        from ..storage import open_storage

        store = _storages[url] = open_storage(url)
    return store


def _run(
    runner: str, func_key: str, func_blob: bytes, payload: bytes, setup: Any, spill_prefix: str | None, *held: dict
) -> tuple[tuple[bytes | None, str | None, tuple[str, ...]], dict[str, bytes] | None]:
    """One step attempt: ``((result, error, keys of large outputs it stored), their bytes)``."""
    _prepare_process(setup)
    prepared = prepare(_runners, _funcs, {func_key: func_blob}, runner, func_key)
    if isinstance(prepared, str):
        return (None, prepared, ()), None
    url = setup[1]
    from ..engine import task as task_module

    known: dict[str, bytes] = {}
    for blobs in held:
        known.update(blobs or {})

    def load(value: Any) -> bytes:
        if isinstance(value, bytes):
            return value
        key = value[1]
        data = known.get(key)
        if data is None:
            data = known[key] = load_blob(_storage(url), key)
        return data

    token = task_module.load_value.set(load)
    try:
        result, error = call_runner(prepared[0], prepared[1], payload)
    finally:
        task_module.load_value.reset(token)
    if result is None or spill_prefix is None or len(result) <= BLOB_THRESHOLD:
        return (result, error, ()), None
    return _spill(result, payload, spill_prefix, _storage(url))


def _spill(
    result: bytes, payload: bytes, prefix: str, store: Any
) -> tuple[tuple[bytes | None, str | None, tuple[str, ...]], dict[str, bytes] | None]:
    """Store an outcome's large values here, in the worker, and point at them instead."""
    from .. import serialization

    record = serialization.load_record(result)
    if record[0] != "ok":
        return (result, None, ()), None
    kind, data, refs, table, start, end = record
    inputs = serialization.load_record(payload)[4]  # objects the workflow has stored already
    spilled: dict[str, bytes] = {}

    def keep(value: bytes, ref_id: str | None = None) -> Any:
        if ref_id in inputs:
            return inputs[ref_id][0]  # as stored (a pointer, or bytes too small to matter)
        if len(value) <= BLOB_THRESHOLD:
            return value
        pointer = store_blob(store, prefix, value)
        spilled[pointer[1]] = value
        return pointer

    data = keep(data)
    table = {ref_id: (keep(value, ref_id), nested) for ref_id, (value, nested) in table.items()}
    small = serialization.dump_record((kind, data, refs, table, start, end))
    return (small, None, tuple(spilled)), spilled or None
