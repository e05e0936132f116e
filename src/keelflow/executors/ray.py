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
  ``catch_exceptions`` mean what they mean on the local executor. A task whose Ray worker or
  node dies (or that Ray kills for memory) is a system failure, as a dead worker process is
  there: run again without counting against ``max_retries``, and after repeated failures in
  a row the workflow stops RESUMABLE, as Ray Workflows 1.x left it after Ray's task retries.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import socket
import sys
import tempfile
import threading
from typing import Any

import ray
from ray._private import services  # ray.init's own address lookup

from .. import objects
from ..engine.journal import BLOB_THRESHOLD, load_blob, store_blob
from ..errors import KeelflowError
from ..objects import new_id
from ._worker import call_runner, prepare
from .base import Demand, Executor, Outcome, Task

__all__ = ["RayExecutor", "connect", "resolve_address"]

# Small function blobs travel inline with each task (a ref would cost a fetch from the driver).
_INLINE_FUNC_BYTES = 64 * 1024
# Stored large outputs whose Ray objects the driver keeps alive for later steps. Older ones
# are read back from storage instead, so this bounds what the object store must hold.
_KEEP_BLOB_OBJECTS = 64


def connect(address: str | None = None) -> None:
    """Attach this process to the running Ray cluster: ``address``, else ``RAY_ADDRESS``, else
    the one ``ray.init(address="auto")`` finds (see :func:`resolve_address`).

    No cluster there is a :class:`KeelflowError` within seconds that names the address and
    where it came from (Ray itself keeps retrying such an address for minutes). A cluster that
    is there but refuses the connection (token authentication, say) is one that quotes Ray.
    """
    if ray.is_initialized():
        return
    target, source, auto = resolve_address(address)
    if target == "local" or "://" in target:  # a new local cluster, or Ray Client: Ray's own business
        _ray_init(target, f"{target!r} ({source})")
        return
    try:
        dialled = services.canonicalize_bootstrap_address(target) or target
    except ValueError as e:
        raise KeelflowError(f"the Ray executor got {target!r} ({source}), which is not a Ray address: {e}") from e
    # Ray dials 127.0.0.1 and localhost as this machine's outbound address: so does the probe.
    where = f"{target!r} ({source}{'' if dialled == target else f'; Ray dials it as {dialled}'})"
    problem = _probe(dialled)
    if problem is not None:
        if problem[0].startswith("something"):
            hint = "check the address: a Ray cluster's is its head's GCS port, which `ray start --head` prints"
        elif source.startswith("from the file"):
            hint = (
                "the cluster that wrote it is gone: delete that file or start a cluster (`ray start --head` "
                "rewrites it), or set RAY_ADDRESS to a running cluster's address"
            )
        else:
            hint = "start one (`ray start --head`) or set RAY_ADDRESS to a running cluster's address"
        raise KeelflowError(f"the Ray executor found no Ray cluster at {where}: {problem[0]}; {hint}") from problem[1]
    # "auto" stays "auto" for Ray: only then does it use a token that it finds in ~/.ray/auth_token.
    _ray_init("auto" if auto else target, where)


def resolve_address(address: str | None = None) -> tuple[str, str, bool]:
    """``(address, where it came from, whether Ray's "auto" lookup found it)``, resolved as Ray
    2.60's ``ray.init`` does (``ray._private.services.get_ray_address_from_environment``).

    The address given, else ``RAY_ADDRESS`` if set and not ``"auto"``. Else, for ``"auto"``: the
    GCS address of the Ray node running on this machine (Ray reads it off the raylet's command
    line), but when several clusters run here or none does, the address that the last
    ``ray start`` recorded in ``$RAY_TMPDIR/ray/ray_current_cluster`` (``$TMPDIR``, else ``/tmp``,
    stand in for ``$RAY_TMPDIR``), which outlives a cluster that was killed.
    """
    if address and address != "auto":
        return address, "as given", False
    env = os.environ.get("RAY_ADDRESS")
    if env and env != "auto":
        return env, "from RAY_ADDRESS", False
    path = _address_file()
    try:
        with open(path) as f:
            recorded: str | None = f.read().strip()
    except FileNotFoundError:
        recorded = None
    getattr(services.find_gcs_addresses, "cache_clear", lambda: None)()  # as ray.init does
    running = sorted(services.find_gcs_addresses())
    if recorded is not None and len(running) != 1:
        return recorded, f"from the file {path}, left by the last `ray start` on this machine", True
    if running:
        return running[0], "the GCS address of the Ray node running on this machine", True
    raise KeelflowError(
        "the Ray executor found no Ray cluster: RAY_ADDRESS is not set, no Ray node runs on this machine, "
        f"and no `ray start` recorded one in {path}; start one (`ray start --head`) or set RAY_ADDRESS "
        "to a running cluster's address"
    )


def _address_file() -> str:
    """Where ``ray start`` records its cluster for ``"auto"`` (Ray's
    ``ray._common.utils.get_ray_address_file(None)``)."""
    if "RAY_TMPDIR" in os.environ:
        base = os.environ["RAY_TMPDIR"]
    elif sys.platform.startswith("linux") and "TMPDIR" in os.environ:
        base = os.environ["TMPDIR"]
    elif sys.platform.startswith(("darwin", "linux")):
        base = "/tmp"
    else:
        base = tempfile.gettempdir()
    return os.path.join(base, "ray", "ray_current_cluster")


# An HTTP/2 client's connection preface with an empty SETTINGS frame. Ray's GCS is a gRPC server,
# which answers with a SETTINGS frame of its own.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _probe(address: str) -> tuple[str, BaseException | None] | None:
    """What is wrong at ``address`` (what to say, and the error behind it), or ``None`` if a
    gRPC server answers there. Ray keeps retrying for minutes both where nothing listens and
    where something that is not a Ray cluster does."""
    host, _, port = address.rpartition(":")
    try:
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=5)
    except OSError as e:
        return f"nothing listens there ({e})", e
    with sock:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            return None  # the cluster speaks TLS: the port is open, Ray takes it from here
        got = b""
        try:
            sock.settimeout(10)
            sock.sendall(_H2_PREFACE)
            while len(got) < 9:
                chunk = sock.recv(9 - len(got))
                if not chunk:
                    break
                got += chunk
            if len(got) == 9 and got[3] == 4:  # a SETTINGS frame
                return None
            if len(got) == 9:
                sock.settimeout(1)
                got += sock.recv(80)  # more of what it said, to quote it
        except OSError as e:
            if not got:
                return f"something listens there but does not answer as a Ray cluster would ({e!r})", e
        said = f"it answered {got[:80]!r}" if got else "it closed the connection unanswered"
        return f"something listens there but it is not a Ray cluster ({said}; Ray's GCS speaks gRPC)", None


def _ray_init(target: str, where: str) -> None:
    try:
        ray.init(address=target, logging_level=logging.WARNING, configure_logging=False)
    except Exception as e:
        raise KeelflowError(
            f"the Ray executor could not connect to the Ray cluster at {where}: "
            f"a cluster there refused or failed the connection: {ray_error(e)}"
        ) from e


def ray_error(e: BaseException) -> str:
    """What Ray said, as ``module.Type: message``, with the root cause that Ray wraps: a failed
    connection is a ``ConnectionError`` from a ``RuntimeError`` whose message holds the formatted
    traceback of the last attempt (ending ``ray.exceptions.AuthenticationError: ...``, say)."""

    def name(x: BaseException) -> str:
        kind = type(x)
        return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"

    def cause_of(x: BaseException) -> BaseException | None:
        return x.__cause__ if x.__cause__ is not None or x.__suppress_context__ else x.__context__

    said = f"{name(e)}: {e}"
    seen = {id(e)}
    inner = cause_of(e)
    while inner is not None and id(inner) not in seen:
        seen.add(id(inner))
        text = str(inner)
        marker = "Traceback (most recent call last):"
        if marker in text:  # the last unindented line of the traceback: "module.Type: message"
            lines = [line for line in text.rsplit(marker, 1)[1].splitlines() if line.strip()]
            last = next((line for line in reversed(lines) if not line[0].isspace()), None)
            if last is not None:
                return f"{said} (Ray's last connection error: {last.strip()})"
        if cause_of(inner) is None:
            return f"{said} (caused by {name(inner)}: {text})"
        inner = cause_of(inner)
    return said


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
