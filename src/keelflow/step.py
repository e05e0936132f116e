"""Step functions, their typed options, and lazy ``Workflow`` nodes."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import sys
import types
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar, overload

from .errors import SerializationError

__all__ = ["StepFunction", "StepOptions", "Workflow", "WorkflowRef", "step"]

T = TypeVar("T")

_UNSET: Any = object()


def _check_metadata(metadata: Any, what: str) -> dict[str, Any] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise TypeError(f"{what} must be a dict, got {type(metadata).__name__}")
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as e:
        raise SerializationError(f"{what} must be JSON-serializable: {e}") from e
    return dict(metadata)


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """The options a step runs with. Every field is validated when set."""

    name: str | None = None
    max_retries: int = 3
    catch_exceptions: bool = False
    retry_exceptions: bool | tuple[type[BaseException], ...] = True
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    resources: dict[str, float] | None = None
    metadata: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise TypeError(f"step option name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.max_retries, int) or isinstance(self.max_retries, bool) or self.max_retries < 0:
            raise ValueError(f"step option max_retries must be an int >= 0, got {self.max_retries!r}")
        if not isinstance(self.catch_exceptions, bool):
            raise TypeError(f"step option catch_exceptions must be a bool, got {self.catch_exceptions!r}")
        retry = self.retry_exceptions
        if isinstance(retry, type) and issubclass(retry, BaseException):
            object.__setattr__(self, "retry_exceptions", (retry,))
        elif isinstance(retry, (list, tuple)):
            if not all(isinstance(t, type) and issubclass(t, BaseException) for t in retry):
                raise TypeError(f"step option retry_exceptions must hold exception types, got {retry!r}")
            object.__setattr__(self, "retry_exceptions", tuple(retry))
        elif not isinstance(retry, bool):
            raise TypeError(f"step option retry_exceptions must be a bool or exception types, got {retry!r}")
        for field in ("num_cpus", "num_gpus"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"step option {field} must be a number >= 0, got {value!r}")
        if self.resources is not None:
            if not isinstance(self.resources, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                for k, v in self.resources.items()
            ):
                raise ValueError(f"step option resources must map names to numbers >= 0, got {self.resources!r}")
        object.__setattr__(self, "metadata", _check_metadata(self.metadata, "step option metadata"))

    def merge(self, **options: Any) -> StepOptions:
        unknown = set(options) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown step option(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **options)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def should_retry(self, exc: BaseException) -> bool:
        if isinstance(self.retry_exceptions, bool):
            return self.retry_exceptions
        return isinstance(exc, self.retry_exceptions)


def _code_fingerprint(func: Callable[..., Any]) -> str:
    """A hash of what the function does, ignoring where its lines sit in the file."""
    digest = hashlib.blake2b(digest_size=8)
    stack: list[Any] = [getattr(func, "__code__", None)]
    while stack:
        code = stack.pop()
        if not isinstance(code, types.CodeType):
            digest.update(repr(code).encode())
            continue
        digest.update(code.co_code)
        digest.update(repr(code.co_names).encode())
        for const in code.co_consts:
            stack.append(const)
    return digest.hexdigest()


def _unwrap_partial(func: Any) -> Any:
    while isinstance(func, functools.partial):
        func = func.func
    return func


def _callable_name(func: Any) -> str:
    """``module.qualname`` of a function or builtin (a partial: of the function it wraps); a
    callable object is named after its class."""
    func = _unwrap_partial(func)
    qualname = getattr(func, "__qualname__", None)
    if isinstance(qualname, str):
        module = getattr(func, "__module__", None)
        if not isinstance(module, str):  # a builtin method, like [].append
            owner = getattr(func, "__self__", None)
            module = "builtins" if owner is None or isinstance(owner, types.ModuleType) else type(owner).__module__
        return f"{module}.{qualname}"
    cls = type(func)
    return f"{cls.__module__}.{cls.__qualname__}"


def _code_target(func: Any) -> Any:
    """What holds the code of ``func``: itself, the function a partial wraps, or the
    ``__call__`` of a callable object (a builtin has none)."""
    func = _unwrap_partial(func)
    if getattr(func, "__code__", None) is None and callable(func):
        if not inspect.isroutine(func) and not isinstance(func, type):
            call = type(func).__call__
            if getattr(call, "__code__", None) is not None:
                return call
    return func


def _wrap(wrapper: Any, func: Any) -> None:
    """``functools.update_wrapper`` that never overwrites the wrapper's own attributes, and
    names a partial after the function it wraps, a callable object after its class."""
    functools.update_wrapper(wrapper, func, updated=())
    inner = _unwrap_partial(func)
    if inner is func and isinstance(getattr(func, "__qualname__", None), str):
        # A function (or an object that names itself): its attributes too, as update_wrapper
        # would copy them, but never over the wrapper's own.
        for key, value in getattr(func, "__dict__", {}).items():
            wrapper.__dict__.setdefault(key, value)
        return
    named = inner if isinstance(getattr(inner, "__qualname__", None), str) else type(inner)
    wrapper.__qualname__ = named.__qualname__
    wrapper.__name__ = named.__qualname__.rsplit(".", 1)[-1]
    wrapper.__module__ = getattr(named, "__module__", None) or "builtins"
    wrapper.__doc__ = getattr(named, "__doc__", None)


class StepFunction(Generic[T]):
    """A function made into a step by ``@workflow.step``; ``.step(...)`` builds a node."""

    #: Where its steps run (see ``FuncEntry.kind``): on the executor unless a subclass says.
    kind: ClassVar[str] = ""

    def __init__(self, func: Callable[..., T], options: StepOptions | None = None) -> None:
        if not callable(func):
            raise TypeError(f"@workflow.step needs a function, got {func!r}")
        self._func = func
        self._options = options or StepOptions()
        self._signature: inspect.Signature | None = None
        self._fingerprint: str | None = None
        _wrap(self, func)

    @property
    def options_in_force(self) -> StepOptions:
        return self._options

    def engine_options(self) -> dict[str, Any]:
        """Plain values the engine reads for this kind of step without unpickling it (a
        wait's ``num_returns``, say); stored with the function."""
        return {}

    @property
    def func(self) -> Callable[..., T]:
        """The plain function, to call it without a workflow: ``f.func(1, 2)``."""
        return self._func

    @functools.cached_property
    def default_name(self) -> str:
        return _callable_name(self._func)  # (named in every node's error context: computed once)

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = _code_fingerprint(_code_target(self._func))
        return self._fingerprint

    def step(self, *args: Any, **kwargs: Any) -> Workflow[T]:
        """A lazy node calling this function on ``args``; nothing runs until ``run``."""
        if self._signature is None:
            try:
                self._signature = inspect.signature(self._func)
            except (TypeError, ValueError):
                self._signature = None
        if self._signature is not None:
            try:
                self._signature.bind(*args, **kwargs)
            except TypeError as e:
                raise TypeError(f"bad arguments for step {self.default_name}: {e}") from None
        return Workflow(self, args, kwargs)

    def options(self, **options: Any) -> StepFunction[T]:
        """A copy of this step function with ``options`` merged over the current ones."""
        return StepFunction(self._func, self._options.merge(**options))

    def __call__(self, *args: Any, **kwargs: Any) -> T:
        # As in Ray Workflows: a call that looks like running the step but would run the plain
        # function, with no checkpoint and no retries, is refused.
        name = self.default_name
        short = name.rsplit(".", 1)[-1]
        raise TypeError(
            f"workflow step {name} cannot be called directly: use {short}.step(...) to make it a "
            f"step of a workflow, or {short}.func(...) to call the plain function"
        )

    def __repr__(self) -> str:
        return f"<step function {self.default_name}>"

    def _importable(self) -> bool:
        # Only a function decorated where it is defined is found again by its import path;
        # partials, callable objects and builtins made steps travel by value (cloudpickle still
        # stores the functions inside them by reference when they are importable).
        module_name = getattr(self._func, "__module__", None)
        qualname = getattr(self._func, "__qualname__", None)
        if not isinstance(module_name, str) or not isinstance(qualname, str) or module_name == "__main__":
            return False
        module = sys.modules.get(module_name)
        if module is None:
            return False
        target: Any = module
        for part in qualname.split("."):
            target = getattr(target, part, None)
        return isinstance(target, StepFunction) and target._func is self._func

    def __reduce__(self) -> Any:
        if self._importable():
            # By import path: the function's module is imported where it is loaded.
            return _import_step, (self._func.__module__, self._func.__qualname__, self._options)
        # By value (``__main__``, closures). State form, so a function that mentions itself
        # (recursive steps) pickles without infinite recursion.
        return _new_step, (), {"func": self._func, "options": self._options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["func"], state["options"])  # type: ignore[misc]


def _import_step(module: str, qualname: str, options: StepOptions) -> StepFunction[Any]:
    import importlib

    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    if target._options != options:
        return StepFunction(target._func, options)
    return target  # type: ignore[no-any-return]


def _new_step() -> StepFunction[Any]:
    return StepFunction.__new__(StepFunction)


@dataclasses.dataclass(frozen=True)
class WorkflowRef:
    """A reference to the output of step ``step_id`` (a step's unique name, see
    ``Workflow.step_id``), as Ray Workflows 1.x had it: given to a step as an argument, anywhere
    in it, it is replaced by that step's output, like a node.

    Without ``workflow_id`` it names a step of the workflow it is used in: the step must be
    recorded already (a step returning a sub-workflow can refer to any earlier step, e.g. the
    ``remaining`` steps of a ``workflow.wait``). With ``workflow_id`` it may name a step of
    another workflow: the step using it waits until that step has an output (while that
    workflow runs, or waits to be resumed) and checkpoints a copy, so a resume does not read
    it again; an unknown workflow, or one that ended without that step's output, fails it.
    """

    step_id: str
    workflow_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.step_id, str) or not self.step_id:
            raise TypeError(f"WorkflowRef needs a step id (a non-empty string), got {self.step_id!r}")
        if self.workflow_id is not None and (not isinstance(self.workflow_id, str) or not self.workflow_id):
            raise TypeError(f"WorkflowRef's workflow_id must be a non-empty string or None, got {self.workflow_id!r}")

    def _reader(self) -> Workflow[Any]:
        """A node whose output is a copy of this step's output (``workflow_id`` names another
        workflow than the one this is used in)."""
        from .waiting import read_step  # (it reads through the management API)

        return read_step(self)


class Workflow(Generic[T]):
    """A lazy node of a workflow DAG: a step function and its (possibly lazy) arguments."""

    __slots__ = ("__weakref__", "_args", "_func", "_kwargs", "_recorded", "_recorded_in", "_ref")

    def __init__(self, func: StepFunction[T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._func = func
        self._args = args
        self._kwargs = kwargs
        # A reference to a step recorded already (see from_ref): it has no function of its own.
        self._ref: WorkflowRef | None = None
        # The step id and workflow this node was recorded as, once a run in this process did.
        self._recorded: str | None = None
        self._recorded_in: str | None = None

    @classmethod
    def from_ref(cls, ref: WorkflowRef) -> Workflow[Any]:
        """A node standing for the output of a step recorded already (as the ``remaining``
        list of ``workflow.wait`` holds them): a step given it as an argument receives that
        step's output. It can be pickled, returned from steps and stored in outputs."""
        if not isinstance(ref, WorkflowRef):
            raise TypeError(f"Workflow.from_ref needs a WorkflowRef, got {type(ref).__name__}")
        node: Workflow[Any] = cls.__new__(cls)
        node._func = None  # type: ignore[assignment]
        node._args, node._kwargs = (), {}
        node._ref, node._recorded, node._recorded_in = ref, None, None
        return node

    @property
    def step_id(self) -> str:
        """The step's id in its workflow: its unique name, as ``get_output(id, name=...)`` and
        ``get_metadata`` take it (``name`` option, or ``module.function``, with ``_1``, ``_2``…
        appended to repeats). Known once the node is recorded: after ``run``/``run_async``/
        ``submit`` of a DAG holding it in this process, and for references (``from_ref``)."""
        ref = self.workflow_ref
        if ref is None:
            from .errors import KeelflowError

            raise KeelflowError(
                f"step {self._func.default_name} has no step id yet: ids are given when a workflow records "
                "its steps (run, run_async or submit here; a step's returned sub-workflow when that step "
                "ends). To know it in advance, name the step: .options(name=...).step(...)"
            )
        return ref.step_id

    @property
    def workflow_ref(self) -> WorkflowRef | None:
        """This node's output as a :class:`WorkflowRef`, once it is recorded (else ``None``)."""
        if self._ref is not None:
            return self._ref
        return None if self._recorded is None else WorkflowRef(self._recorded, self._recorded_in)

    @property
    def step_function(self) -> StepFunction[T]:
        if self._ref is not None:
            raise TypeError(f"{self!r} stands for a recorded step's output and has no step function")
        return self._func

    def run(self, workflow_id: str | None = None, metadata: dict[str, Any] | None = None) -> T:
        """Run the workflow to its end and return its output."""
        from .api import run_workflow

        return run_workflow(self, workflow_id, metadata).result()  # type: ignore[no-any-return]

    def run_async(self, workflow_id: str | None = None, metadata: dict[str, Any] | None = None) -> Any:
        """Start the workflow and return a ref to its output at once."""
        from .api import run_workflow

        return run_workflow(self, workflow_id, metadata)

    def __repr__(self) -> str:
        if self._ref is not None:
            return f"<Workflow ref {self._ref.step_id} of {self._ref.workflow_id or 'this workflow'}>"
        return f"<Workflow node {self._func.default_name}>"

    def __reduce__(self) -> Any:
        if self._ref is not None:
            return _node_from_ref, (self._ref,)  # a reference: plain data
        # keelflow's own encoder cuts nodes out before this is reached. Any other pickler may
        # pickle one (Ray's ``.bind()`` pickles its arguments to look for DAG nodes, so
        # ``f.bind(workflow.sleep(1))`` must not fail), but what it writes cannot be loaded.
        return _node_pickled_elsewhere, (self._func.default_name,)


def _node_from_ref(ref: WorkflowRef) -> Workflow[Any]:
    return Workflow.from_ref(ref)


def _node_pickled_elsewhere(name: str) -> Any:
    raise SerializationError(
        f"a workflow node ({name}) was pickled on its own, outside keelflow, and cannot be loaded; "
        "return it from a step or pass it as a step argument"
    )


@overload
def step(func: Callable[..., T], /) -> StepFunction[T]: ...


@overload
def step(func: None = None, /, **options: Any) -> Callable[[Callable[..., T]], StepFunction[T]]: ...


def step(func: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Make ``func`` a step function: ``@workflow.step`` or ``@workflow.step(**options)``."""
    opts = StepOptions().merge(**options)
    if func is not None:
        return StepFunction(func, opts)
    return lambda f: StepFunction(f, opts)
