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

__all__ = ["StepFunction", "StepOptions", "Workflow", "step"]

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
        functools.update_wrapper(self, func)

    @property
    def options_in_force(self) -> StepOptions:
        return self._options

    @property
    def default_name(self) -> str:
        return f"{self._func.__module__}.{self._func.__qualname__}"

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = _code_fingerprint(self._func)
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
        # Calling a step function directly runs the plain function (handy in tests).
        return self._func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<step function {self.default_name}>"

    def _importable(self) -> bool:
        module = sys.modules.get(self._func.__module__)
        if module is None or self._func.__module__ == "__main__":
            return False
        target: Any = module
        for part in self._func.__qualname__.split("."):
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


class Workflow(Generic[T]):
    """A lazy node of a workflow DAG: a step function and its (possibly lazy) arguments."""

    __slots__ = ("__weakref__", "_args", "_func", "_kwargs")

    def __init__(self, func: StepFunction[T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._func = func
        self._args = args
        self._kwargs = kwargs

    @property
    def step_function(self) -> StepFunction[T]:
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
        return f"<Workflow node {self._func.default_name}>"

    def __reduce__(self) -> Any:
        raise SerializationError(
            f"a workflow node ({self._func.default_name}) cannot be pickled on its own; "
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
