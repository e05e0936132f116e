"""Ray 2.x's DAG API: ``@ray.remote`` functions bound with Ray's ``.bind()``, run as workflows.

Code written for Ray Workflows 2.0 to 2.47 runs with one import changed::

    import ray
    from keelflow import workflow              # was: from ray import workflow

    @ray.remote
    def add(a: int, b: int) -> int:
        return a + b

    assert workflow.run(add.bind(1, add.bind(2, 3)), workflow_id="sum") == 6

Ray builds the DAG (``ray.dag.FunctionNode`` objects, made by ``.bind()`` without a Ray
cluster). :func:`run` reads each node's function, arguments and options and converts the DAG
into keelflow nodes, one step per Ray task, whose function is the remote function's own Python
function; the executor ``init`` chose runs it: embedded by default (keelflow never calls
``ray.init()`` for it), or Ray tasks on a Ray cluster with ``init(executor="ray")``. Ray stays
optional: this module imports it only when handed something that is not a keelflow node.

Semantics carried over from Ray 2.x (as Ray 2.47 implemented them):

- arguments resolve as a Ray task's do: a DAG node passed as an argument itself becomes its
  output; one inside a list, tuple, dict or any other value becomes a *ref* to its output (a
  Ray ObjectRef on the Ray executor, so ``ray.get`` works on it; a keelflow ref elsewhere, read
  with ``workflow.get``). An ObjectRef passed as an argument itself becomes its value.
- ``InputNode``: ``run(dag, *args, **kwargs)`` feeds it; ``inp[i]`` is ``args[i]``, ``inp.k`` and
  ``inp["k"]`` are ``kwargs["k"]``, and ``inp`` itself is a ``ray.dag.DAGInputData`` of both.
- a task that returns a DAG node (or ``workflow.continuation(dag)``) is continued by it.
- a step's name is its task id: ``task_id`` if given, else ``<module>.<qualname>`` slugged as
  Ray 2.x did (``f.<locals>.g`` gives ``f.locals.g``); repeats get ``_1``, ``_2``, … (numbered
  from the DAG's output back, where Ray numbered them in the order the tasks were created).
- ``max_retries`` (default 3) counts retries of a task; an exception it raises is retried only
  with ``retry_exceptions`` (``True`` or exception types), a worker that dies always is.
  ``max_retries=-1`` means no retries, as in Ray Workflows 2.x (not Ray's "forever").

``f.options(**workflow.options(...))`` passes the workflow options as a task label,
``_labels={"keelflow.io/workflow-options": "<JSON>"}`` (Ray 2.60 refuses the ``_metadata`` task
option Ray Workflows used; it takes any text as a label's value, and only shows the label);
``@workflow.options(...)`` keeps them on the function. Tested with Ray 2.60, the version
``keelflow[ray]`` installs.
"""

from __future__ import annotations

import collections.abc
import functools
import importlib
import inspect
import io
import json
import logging
import pickle
import re
import sys
import threading
import unicodedata
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle

from .errors import KeelflowError, SerializationError
from .objects import FutureRef, current_step, current_workflow, get, is_ray_ref, put, stored_ref
from .step import StepFunction, StepOptions, Workflow, _code_fingerprint

__all__ = [
    "continuation",
    "get_current_task_id",
    "get_current_workflow_id",
    "options",
    "run",
    "run_async",
    "task_name",
]

log = logging.getLogger("keelflow")

#: The options ``workflow.options`` takes (Ray 2.x's).
WORKFLOW_OPTIONS = ("task_id", "metadata", "catch_exceptions", "checkpoint")
#: The Ray task option ``f.options(**workflow.options(...))`` passes them in, and the label.
CARRIER = "_labels"
LABEL = "keelflow.io/workflow-options"
#: Where ``@workflow.options(...)`` keeps them: on the remote function's Python function.
FUNC_ATTR = "__keelflow_workflow_options__"
#: Ray task options that keelflow reads, and those it has no use for and need no warning.
_READ = frozenset({"num_cpus", "num_gpus", "resources", "max_retries", "retry_exceptions", "num_returns", CARRIER})
_IRRELEVANT = frozenset({"name", "max_calls", "enable_task_events"})
_ATOMIC = frozenset({int, float, str, bytes, bool, type(None), complex})


# -- workflow.options -------------------------------------------------------------------------------
class options(collections.abc.Mapping):  # type: ignore[type-arg]  # (lowercase: Ray 2.x's name)
    """Workflow options for a Ray task, in both of Ray 2.x's spellings::

        @workflow.options(catch_exceptions=True)        # above or below @ray.remote
        @ray.remote
        def f(): ...

        node = f.options(**workflow.options(task_id="f1", metadata={"k": "v"})).bind()

    ``task_id`` names the step (``get_output(wid, task_id=...)``), ``metadata`` is a
    JSON-serializable dict (``get_metadata``), ``catch_exceptions`` makes the output
    ``(result, None)`` or ``(None, exception)``, and ``checkpoint`` must stay ``True`` (every
    step's output is checkpointed; ``False`` is an error when the workflow runs). Options given
    with ``.options(...)`` are merged over the decorator's, key by key (as Ray 2.x merged them).

    As a mapping it is ``{"_labels": {"keelflow.io/workflow-options": "<JSON>"}}``: a task label
    Ray accepts (and attaches, should the function be called with ``.remote()``).
    """

    def __init__(self, **workflow_options: Any) -> None:
        unknown = set(workflow_options) - set(WORKFLOW_OPTIONS)
        if unknown:
            raise ValueError(
                f"invalid option keyword(s) {sorted(unknown)} for workflow tasks; valid ones are "
                f"{list(WORKFLOW_OPTIONS)} (Ray's own task options go to .options() or @ray.remote)"
            )
        checkpoint = workflow_options.get("checkpoint", True)
        if not isinstance(checkpoint, bool):
            raise TypeError(f"workflow option checkpoint must be a bool, got {checkpoint!r}")
        # Checked as a step's options are; metadata is copied, so later changes do not leak in.
        checked = StepOptions(
            name=workflow_options.get("task_id"),
            catch_exceptions=workflow_options.get("catch_exceptions", False),
            metadata=workflow_options.get("metadata"),
        )
        self._options = dict(workflow_options)
        if "metadata" in self._options:
            self._options["metadata"] = checked.metadata

    def __getitem__(self, key: str) -> Any:
        if key != CARRIER:
            raise KeyError(key)
        return {LABEL: json.dumps(self._options, sort_keys=True)}

    def __iter__(self) -> Iterator[str]:
        return iter((CARRIER,))

    def __len__(self) -> int:
        return 1

    def __call__(self, f: Any) -> Any:
        """As a decorator: keeps the options on the function (a remote one, or the one under
        ``@ray.remote``) and returns it."""
        func = _python_function(f)
        if func is None:
            raise ValueError(
                f"workflow.options(...) decorates a Ray remote function or the function under @ray.remote, got {f!r}"
            )
        setattr(func, FUNC_ATTR, {**(getattr(func, FUNC_ATTR, None) or {}), **self._options})
        return f

    def __repr__(self) -> str:
        return f"workflow.options({', '.join(f'{k}={v!r}' for k, v in self._options.items())})"


def _python_function(f: Any) -> Any:
    """The Python function of a Ray remote function, or ``f`` if it is a plain function."""
    remote = sys.modules.get("ray.remote_function")
    if remote is not None and isinstance(f, remote.RemoteFunction):
        return f._function
    if inspect.isfunction(f):
        return f
    return None


# -- the step of a Ray task -------------------------------------------------------------------------
def task_name(func: Any) -> str:
    """A Ray task's default id as Ray 2.x made it: ``<module>.<qualname>``, the qualname slugged."""
    module = getattr(func, "__module__", None) or "__anonymous_module__"
    qualname = getattr(func, "__qualname__", None) or "__anonymous_func__"
    ascii_name = unicodedata.normalize("NFKD", qualname).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[-\s]+", "-", re.sub(r"[^\w.\-]", "", ascii_name).strip())
    return f"{module}.{slug}"


class RayTask(StepFunction[Any]):
    """The step of a Ray task node: it runs the remote function's own Python function, and a
    Ray DAG that function returns becomes the step's continuation."""

    def __init__(self, body: Callable[..., Any], options: StepOptions) -> None:
        self._body = body
        super().__init__(_runner(body), options)

    @property
    def default_name(self) -> str:
        return task_name(self._body)

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = _code_fingerprint(self._body)
        return self._fingerprint

    def options(self, **options: Any) -> StepFunction[Any]:
        return _task(self._body, self._options.merge(**options))

    def __repr__(self) -> str:
        return f"<Ray task {self.default_name}>"

    def __reduce__(self) -> Any:
        where = _import_path(self._body)
        if where is not None:
            # By import path: the module (and its @ray.remote) is imported where it is loaded.
            return _import_task, (*where, self._options)
        return _task, (self._body, self._options)  # by value (__main__, closures)


def _runner(body: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(body)
    def call(*args: Any, **kwargs: Any) -> Any:
        result = body(*args, **kwargs)
        if _is_dag(result):  # Ray 2.x continued a task by the DAG it returned
            return _to_workflow(result, None, f"the DAG task {task_name(body)} returned")
        return result

    return call


_TASKS: dict[tuple[int, str], RayTask] = {}
_TASKS_LOCK = threading.Lock()


def _task(body: Callable[..., Any], options: StepOptions) -> RayTask:
    """The step function for ``body`` with ``options``; one object per pair, so a fan-out of
    one remote function is pickled once."""
    key = (id(body), repr(options))
    with _TASKS_LOCK:
        found = _TASKS.get(key)
    if found is not None and found._body is body:
        return found
    made = RayTask(body, options)
    with _TASKS_LOCK:
        if len(_TASKS) > 4096:
            _TASKS.clear()
        _TASKS[key] = made
    return made


def _import_path(body: Any) -> tuple[str, str] | None:
    """``(module, qualname)`` when importing them gives ``body`` (or its remote function)."""
    module, qualname = getattr(body, "__module__", None), getattr(body, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<locals>" in qualname:
        return None
    target: Any = sys.modules.get(module)
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return (module, qualname) if target is body or _python_function(target) is body else None


def _import_task(module: str, qualname: str, options: StepOptions) -> RayTask:
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return _task(_python_function(target) or target, options)


#: Per remote function, the sets of unused Ray options already named in a warning.
_warned: weakref.WeakKeyDictionary[Any, set[tuple[str, ...]]] = weakref.WeakKeyDictionary()


def _step_options(node: Any, default_name: str) -> StepOptions:
    """A Ray task node's options as keelflow's: Ray's task options and the workflow options
    (the decorator's, then those given to ``.options()``)."""
    ray_options: dict[str, Any] = dict(node._bound_options or {})
    wf = dict(getattr(node._body, FUNC_ATTR, None) or {})
    labels = ray_options.get(CARRIER) or {}
    if LABEL in labels:
        wf.update(json.loads(labels[LABEL]))
    task = wf.get("task_id") or default_name
    returns = ray_options.get("num_returns")
    if returns not in (None, 1):
        raise ValueError(f"Ray task {task} has num_returns={returns!r}; a workflow task returns one value")
    if wf.get("checkpoint", True) is not True:
        raise KeelflowError(
            f"Ray task {task} has workflow.options(checkpoint=False), which keelflow does not support: "
            "every step's output is checkpointed before the steps that use it start (skipping that "
            "would make a resumed workflow run the task again, and keelflow does not). Remove the "
            "option; a checkpoint costs one journal append."
        )
    unused = sorted(k for k, v in ray_options.items() if k not in _READ | _IRRELEVANT and v is not None)
    if set(labels) - {LABEL}:
        unused.append(CARRIER)
    said = _warned.setdefault(node._body, set()) if unused else set()
    if unused and tuple(unused) not in said:
        said.add(tuple(unused))
        log.warning(
            "keelflow does not apply the Ray task option(s) %s of %s: a step holds only num_cpus, num_gpus "
            "and resources",
            ", ".join(unused),
            task,
        )
    retries = ray_options.get("max_retries")
    if retries is None:
        retries = 3  # Ray's default
    elif retries < 0:
        retries = 0  # -1 ("forever" to Ray) never retried a Ray Workflows 2.x task
    retry = ray_options.get("retry_exceptions") or False
    cpus, gpus = ray_options.get("num_cpus"), ray_options.get("num_gpus")
    return StepOptions(
        name=wf.get("task_id"),
        max_retries=retries,
        catch_exceptions=wf.get("catch_exceptions", False),
        retry_exceptions=tuple(retry) if isinstance(retry, list) else retry,
        num_cpus=1.0 if cpus is None else cpus,
        num_gpus=0.0 if gpus is None else gpus,
        resources=ray_options.get("resources") or None,
        metadata=wf.get("metadata"),
    )


# -- converting a Ray DAG -----------------------------------------------------------------------------
class _AsRef:
    """A DAG node inside another argument: the task gets a ref to the node's output."""

    __slots__ = ("node",)

    def __init__(self, node: Workflow[Any]) -> None:
        self.node = node

    def __reduce__(self) -> Any:
        return _output_ref, (self.node,)  # keelflow's encoder cuts the node out as a dependency


def _output_ref(value: Any) -> Any:
    return put(value)  # a Ray ObjectRef on the Ray executor


class _Deref:
    """An ObjectRef passed as an argument itself: the task gets its value."""

    __slots__ = ("ref",)

    def __init__(self, ref: Any) -> None:
        self.ref = ref

    def __reduce__(self) -> Any:
        return get, (self.ref,)


class _Cutter(cloudpickle.Pickler):  # type: ignore[misc]
    """Pickles an argument with the DAG nodes, keelflow nodes and refs in it cut out (by
    identity), so they can be found, and replaced when it is loaded."""

    def __init__(self, file: io.BytesIO, node_type: type) -> None:
        super().__init__(file, protocol=5)
        self.found: list[Any] = []
        self._seen: dict[int, int] = {}
        self._node_type = node_type

    def persistent_id(self, obj: Any) -> int | None:
        if isinstance(obj, (self._node_type, Workflow)) or stored_ref(obj) or is_ray_ref(obj):
            index = self._seen.get(id(obj))
            if index is None:
                index = self._seen[id(obj)] = len(self.found)
                self.found.append(obj)
            return index
        return None


class _Filler(pickle.Unpickler):
    def __init__(self, data: bytes, replacements: list[Any]) -> None:
        super().__init__(io.BytesIO(data))
        self._replacements = replacements

    def persistent_load(self, pid: Any) -> Any:
        return self._replacements[pid]


class _Scan:
    """A Ray task node's arguments: the DAG nodes they hold, and those held inside other
    values (pickled, with their nodes and refs cut out)."""

    __slots__ = ("children", "packed")

    def __init__(self) -> None:
        self.children: list[Any] = []
        self.packed: dict[int | str, tuple[bytes, list[Any]]] = {}


def _ray_dag(what: str) -> Any:
    """Ray's DAG classes (importing them starts no Ray cluster)."""
    try:
        return importlib.import_module("ray.dag")
    except ImportError as e:
        raise KeelflowError(
            f"{what} runs a Ray DAG (built with @ray.remote and .bind()), which needs Ray: "
            f"pip install 'keelflow[ray]' ({e})"
        ) from e


def _is_dag(obj: Any) -> bool:
    dag = sys.modules.get("ray.dag")  # a DAG node exists only once Ray's DAG module is loaded
    return dag is not None and isinstance(obj, dag.DAGNode)


def _plain(value: Any) -> bool:
    """An argument with no DAG node inside it to look for."""
    return type(value) in _ATOMIC or isinstance(value, Workflow) or stored_ref(value) or is_ray_ref(value)


def _unsupported(node: Any) -> TypeError:
    return TypeError(
        f"keelflow runs DAGs of Ray tasks (@ray.remote functions and their .bind()); a {type(node).__name__} "
        "is not supported (Ray Workflows 2.x did not run actors or their methods either)"
    )


def _scan(node: Any, dag: Any, task: str) -> _Scan:
    scan = _Scan()
    if not isinstance(node, dag.FunctionNode):
        if isinstance(node, (dag.InputNode, dag.InputAttributeNode)):
            return scan  # filled in from run()'s arguments
        raise _unsupported(node)
    positions: list[tuple[int | str, Any]] = list(enumerate(node._bound_args))
    positions += list(node._bound_kwargs.items())
    for pos, value in positions:
        if isinstance(value, dag.DAGNode):
            scan.children.append(value)
        elif not _plain(value):
            buf = io.BytesIO()
            cutter = _Cutter(buf, dag.DAGNode)
            try:
                cutter.dump(value)
            except Exception as e:
                raise SerializationError(
                    f"cannot serialize an argument of Ray task {task} (a {type(value).__name__}): "
                    f"{type(e).__name__}: {e}"
                ) from e
            if cutter.found:
                scan.packed[pos] = (buf.getvalue(), cutter.found)
                scan.children.extend(x for x in cutter.found if isinstance(x, dag.DAGNode))
    return scan


def _input(node: Any, dag: Any, inputs: tuple[tuple[Any, ...], dict[str, Any]] | None) -> Any:
    """The value an InputNode (or an attribute of it) stands for."""
    if inputs is None:
        raise TypeError(
            f"a continuation has no input for its {type(node).__name__} to read: pass values to .bind() instead"
        )
    args, kwargs = inputs
    if isinstance(node, dag.InputNode):
        return dag.DAGInputData(*args, **kwargs)
    key = node._key
    try:
        return args[key] if isinstance(key, int) else kwargs[key]
    except (IndexError, KeyError):
        where = f"positional argument {key}" if isinstance(key, int) else f"keyword argument {key!r}"
        raise TypeError(f"the DAG reads its input's {where}, which run() was not given") from None


def _build(node: Any, scan: _Scan, made: dict[int, Any], dag: Any) -> Workflow[Any]:
    """The keelflow node of a Ray task node whose argument nodes are ``made`` already."""

    def nested(obj: Any) -> Any:
        if isinstance(obj, dag.FunctionNode):
            return _AsRef(made[id(obj)])
        if isinstance(obj, dag.DAGNode):
            return made[id(obj)]  # an input: its value
        if isinstance(obj, Workflow):
            return _AsRef(obj)
        return obj  # a ref stays a ref

    def place(pos: int | str, value: Any) -> Any:
        if isinstance(value, dag.DAGNode):
            return made[id(value)]
        if stored_ref(value) or is_ray_ref(value):
            return _Deref(value)
        packed = scan.packed.get(pos)
        if packed is not None:
            return _Filler(packed[0], [nested(x) for x in packed[1]]).load()
        return value

    default = task_name(node._body)
    step = _task(node._body, _step_options(node, default))
    args = [place(i, v) for i, v in enumerate(node._bound_args)]
    kwargs = {k: place(k, v) for k, v in node._bound_kwargs.items()}
    return step.step(*args, **kwargs)


def _to_workflow(root: Any, inputs: tuple[tuple[Any, ...], dict[str, Any]] | None, what: str) -> Workflow[Any]:
    """The keelflow node of a Ray DAG, every Ray task node a step (shared nodes once).

    Walks the DAG with a stack of its own, so a long chain does not recurse."""
    dag = _ray_dag(what)
    if not isinstance(root, dag.FunctionNode):
        if isinstance(root, dag.DAGNode) and not isinstance(root, (dag.InputNode, dag.InputAttributeNode)):
            raise _unsupported(root)
        raise TypeError(f"{what} must be a Ray task node (f.bind(...)) or a keelflow node, got {root!r}")
    made: dict[int, Any] = {}
    scans: dict[int, _Scan] = {}
    stack = [root]
    while stack:
        node = stack[-1]
        key = id(node)
        if key in made:
            stack.pop()
            continue
        scan = scans.get(key)
        if scan is None:
            scan = scans[key] = _scan(node, dag, task_name(getattr(node, "_body", node)))
            todo = [child for child in scan.children if id(child) not in made]
            if todo:
                stack.extend(reversed(todo))
                continue
        elif any(id(child) not in made for child in scan.children):
            raise TypeError(f"{what} has a cycle through {node}")
        stack.pop()
        if isinstance(node, dag.FunctionNode):
            made[key] = _build(node, scan, made, dag)
        else:
            made[key] = _input(node, dag, inputs)
    return made[id(root)]  # type: ignore[no-any-return]


def _root(dag: Any, args: tuple[Any, ...], kwargs: dict[str, Any], what: str) -> Workflow[Any]:
    if isinstance(dag, Workflow):
        if args or kwargs:
            raise TypeError(f"{what}: input arguments are for a Ray DAG with an InputNode; a keelflow node takes none")
        return dag
    ray_dag = _ray_dag(what)
    if not isinstance(dag, ray_dag.DAGNode):
        raise TypeError(f"{what} needs a Ray DAG (f.bind(...)) or a keelflow node, got {type(dag).__name__}")
    return _to_workflow(dag, (args, kwargs), what)


# -- the API -------------------------------------------------------------------------------------------
def run_async(
    dag: Any,
    *args: Any,
    workflow_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    **kwargs: Any,
) -> FutureRef[Any]:
    """Start ``dag`` (a Ray DAG, or a keelflow node) as a workflow; a ref to its output at once
    (``workflow.get(ref)`` waits for it). ``args`` and ``kwargs`` feed the DAG's ``InputNode``.

    As in Ray 2.x, a workflow that exists already is not started again: a ``FAILED`` or
    ``RESUMABLE`` one is resumed, a finished one gives its stored output, and one running in a
    live process is waited for.
    """
    from . import api

    # (run_workflow resumes an id that failed or was interrupted, as Ray 2.x did.)
    return api.run_workflow(_root(dag, args, kwargs, "workflow.run"), workflow_id, metadata)


def run(
    dag: Any,
    *args: Any,
    workflow_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Run ``dag`` (a Ray DAG, or a keelflow node) as a workflow and return its output; see
    :func:`run_async`. A failed task raises :class:`WorkflowExecutionError` (``__cause__`` is
    the task's exception)."""
    return run_async(dag, *args, workflow_id=workflow_id, metadata=metadata, **kwargs).result()


def create(dag: Any, *args: Any, **kwargs: Any) -> Workflow[Any]:
    """Ray 1.12's name: the keelflow node of the Ray DAG ``dag`` (``args`` and ``kwargs`` feed
    its ``InputNode``), to ``.run(workflow_id=...)`` or pass to a step like any node."""
    return _root(dag, args, kwargs, "workflow.create")


def continuation(dag: Any) -> Any:
    """Inside a workflow step: the keelflow node of ``dag``, to return (the step's output is
    then the DAG's; returning the DAG itself does the same).

    Outside any step, what Ray 2.x did: run ``dag`` and return its output, with Ray
    (``ray.get(dag.execute())``) when this process is connected to a Ray cluster, e.g. inside a
    plain Ray task; otherwise as a workflow of its own on keelflow's executor, without Ray.
    """
    inside = current_workflow.get() is not None
    if isinstance(dag, Workflow):
        return dag if inside else dag.run()
    ray_dag = _ray_dag("workflow.continuation")
    if not isinstance(dag, ray_dag.DAGNode):
        raise TypeError(f"workflow.continuation needs a Ray DAG (f.bind(...)), got {type(dag).__name__}")
    if inside:
        return _to_workflow(dag, None, "a continuation")
    ray = sys.modules["ray"]
    if ray.is_initialized():
        with warnings.catch_warnings():
            # Ray deprecates DAGNode.execute(); it is what Ray 2.x ran here, not the user's call.
            warnings.filterwarnings("ignore", message=r"DAGNode\.execute\(\) is deprecated")
            ref = dag.execute()
        return ray.get(ref)
    return run(dag)


def get_current_workflow_id() -> str:
    """The id of the workflow whose step is running here."""
    workflow_id = current_workflow.get()
    if workflow_id is None:
        raise KeelflowError("get_current_workflow_id() is for code running in a workflow step")
    return workflow_id


def get_current_task_id() -> str:
    """The name of the step running here: its task id (Ray 2.x's name for it)."""
    name = current_step.get()
    if name is None:
        raise KeelflowError("get_current_task_id() is for code running in a workflow step")
    return name
