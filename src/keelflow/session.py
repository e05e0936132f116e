"""This process's keelflow: the runtime :func:`keelflow.init` starts, and helper threads.

The management API, actors, events and waits all reach the runtime through here, below the
API, so none of them imports the API (and the API imports none of them at import time).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import os
import sys
import threading
from typing import Any

from .engine.journal import check_format
from .engine.runtime import Runtime
from .errors import KeelflowError
from .executors.base import Executor
from .objects import FutureRef
from .storage import Storage, open_storage

__all__ = ["DEFAULT_STORAGE", "done_ref", "helper_pool", "in_background", "initialized", "runtime", "start", "stop"]

log = logging.getLogger("keelflow")

DEFAULT_STORAGE = os.path.join("~", ".keelflow", "storage")

_lock = threading.RLock()
_runtime_obj: Runtime | None = None
_config: tuple[Any, ...] | None = None
_helpers: concurrent.futures.ThreadPoolExecutor | None = None
_atexit_registered = False


def start(
    storage: str | os.PathLike[str] | Storage | None = None,
    *,
    executor: str | None = None,
    num_cpus: float | None = None,
    resources: dict[str, float] | None = None,
    create: bool = True,
) -> None:
    """:func:`keelflow.init` (its docstring says what the arguments mean)."""
    global _runtime_obj, _config, _atexit_registered
    with _lock:
        if storage is None and os.environ.get("KEELFLOW_WORKER_UNSHARED"):
            raise KeelflowError(
                "this step runs in a worker process, and the workflow's storage "
                f"({os.environ['KEELFLOW_WORKER_UNSHARED']}) lives only in the parent process; use "
                "directory storage, or init(executor='thread'), to call keelflow from inside steps"
            )
        if isinstance(storage, Storage):
            url: Any = storage
        else:
            url = os.fspath(storage) if storage is not None else os.environ.get("KEELFLOW_STORAGE") or DEFAULT_STORAGE
        kind = executor or os.environ.get("KEELFLOW_EXECUTOR") or "local"
        config = (url, kind, num_cpus, tuple(sorted((resources or {}).items())))
        if _runtime_obj is not None:
            if config == _config:
                return
            raise KeelflowError(
                f"keelflow is already initialised with storage {_runtime_obj.storage.url!r}; "
                "call workflow.shutdown() before init with other arguments"
            )
        store = url if isinstance(url, Storage) else open_storage(url, create=create)
        check_format(store, create=create)
        execu = _make_executor(kind, store, num_cpus, resources)
        _runtime_obj = Runtime(store, execu)
        _config = config
        if not _atexit_registered:
            # Before the executor's own exit hooks (atexit runs last-registered first): stop
            # the scheduler, then the workers, so runs end resumable rather than torn down.
            atexit.register(stop)
            _atexit_registered = True
        log.info(
            "keelflow: storage %s, executor %s",
            store.location("").rstrip("/"),
            kind,
        )


def stop() -> None:
    """:func:`keelflow.shutdown`: stop this process's runs (they stay resumable), forget ``init``."""
    global _runtime_obj, _config
    actors = sys.modules.get("keelflow.actors")
    if actors is not None:
        actors.stop_all()  # before the runtime: a call may be waiting on a workflow
    with _lock:
        rt, _runtime_obj, _config = _runtime_obj, None, None
    if rt is not None:
        rt.shutdown()
        rt.storage.close()


def initialized() -> bool:
    """Whether :func:`start` has run in this process (and :func:`stop` has not since)."""
    return _runtime_obj is not None


def runtime() -> Runtime:
    """This process's runtime, started with the defaults if ``init`` was not called."""
    rt = _runtime_obj
    if rt is None:
        start()
        rt = _runtime_obj
        assert rt is not None
    return rt


def helper_pool() -> concurrent.futures.ThreadPoolExecutor:
    """Threads for waits that must not block the caller (refs to outputs, actor reads)."""
    global _helpers
    with _lock:
        if _helpers is None:
            _helpers = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="keelflow-wait")
        return _helpers


def in_background(fn: Any, workflow_id: str, *args: Any) -> FutureRef[Any]:
    """A ref to ``fn(*args)``, run on the helper pool."""
    return FutureRef(helper_pool().submit(fn, *args), workflow_id)


def done_ref(value: Any, workflow_id: str) -> FutureRef[Any]:
    """A ref already resolved to ``value``."""
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    future.set_result(value)
    return FutureRef(future, workflow_id)


def _make_executor(kind: str, store: Storage, num_cpus: float | None, resources: dict[str, float] | None) -> Executor:
    custom = dict(resources or {})
    gpus = float(custom.pop("GPU", 0) or 0)
    if "CPU" in custom:
        num_cpus = float(custom.pop("CPU"))
    if num_cpus is not None and (isinstance(num_cpus, bool) or not isinstance(num_cpus, (int, float)) or num_cpus <= 0):
        raise ValueError(f"num_cpus must be a number > 0, got {num_cpus!r}")
    for name, amount in custom.items():
        if not isinstance(name, str) or isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
            raise ValueError(f"resources must map names to numbers >= 0, got {name!r}: {amount!r}")
    if kind == "local":
        from .executors.local import ProcessExecutor

        return ProcessExecutor(num_cpus=num_cpus, num_gpus=gpus, resources=custom, env=_worker_env(store))
    if kind == "thread":
        from .executors.thread import ThreadExecutor

        return ThreadExecutor(num_cpus=num_cpus, num_gpus=gpus, resources=custom)
    if kind == "ray":
        try:
            from .executors.ray import RayExecutor
        except ImportError as e:
            raise KeelflowError(f"the Ray executor needs Ray: pip install 'keelflow[ray]' ({e})") from e
        if num_cpus is not None or resources:
            log.warning("keelflow: on Ray, resources are the cluster's; init's num_cpus and resources are not used")
        return RayExecutor(store.url if store.shared else None, env=_worker_env(store))
    raise KeelflowError(f"unknown executor {kind!r}; use 'local', 'thread' or 'ray'")


def _worker_env(store: Storage) -> dict[str, str]:
    """What a step's process needs to call keelflow itself (a nested workflow)."""
    env = {"KEELFLOW_EXECUTOR": "thread"}
    if store.shared:
        env["KEELFLOW_STORAGE"] = store.url
    else:
        env["KEELFLOW_WORKER_UNSHARED"] = store.url
    return env
