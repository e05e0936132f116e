"""Flattening a tree of ``Workflow`` nodes into a table the journal can store.

A DAG is stored flat — a list of node specs that point at each other by index — so a chain of
100,000 steps neither recurses in Python nor in pickle. The same walk serves the root DAG
(flattened in the caller's process) and dynamic continuations (flattened in the worker
whose step returned them).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from .. import serialization
from ..objects import ObjectRef, current_workflow
from ..step import StepFunction, Workflow

__all__ = ["FuncEntry", "NodeSpec", "SubDag", "collect_refs", "flatten"]


@dataclass(frozen=True)
class FuncEntry:
    """A step function as stored: its pickle, identity and the options the engine needs."""

    blob: bytes
    key: str
    name: str
    fingerprint: str
    # The options the engine reads without unpickling user code (all plain values).
    plain: dict[str, Any]
    # The full StepOptions, pickled (retry_exceptions may name user exception types).
    options_blob: bytes
    # Where its steps run: "" on the executor; "inline" on a thread of the scheduler's own
    # process (actor method steps, which act on state this process holds); "event" on the
    # scheduler's event loop (event listeners: no thread each), "event_ack" likewise for a
    # listener whose event_checkpointed must be called (and its call recorded).
    kind: str = ""

    def to_record(self) -> tuple[Any, ...]:
        rec = (self.blob, self.key, self.name, self.fingerprint, self.plain, self.options_blob)
        return (*rec, self.kind) if self.kind else rec

    @classmethod
    def from_record(cls, rec: tuple[Any, ...]) -> FuncEntry:
        return cls(*rec)


@dataclass(frozen=True)
class NodeSpec:
    """One step call: function index, encoded arguments, and which nodes/refs they use.

    ``func`` indexes the batch's own function list; ``deps`` are node indices local to the
    batch (index 0 is the batch's root). ``ext`` names steps recorded before this batch
    (``WorkflowRef``s to the same workflow); the arguments refer to ``ext[k]`` as node
    ``-(k + 1)``.
    """

    func: int
    args: bytes
    deps: tuple[int, ...]
    refs: tuple[str, ...]
    ext: tuple[str, ...] = ()

    def to_record(self) -> tuple[Any, ...]:
        rec = (self.func, self.args, self.deps, self.refs)
        return (*rec, self.ext) if self.ext else rec


@dataclass
class SubDag:
    nodes: list[NodeSpec]
    funcs: list[FuncEntry]
    # ref id -> (bytes, ids of refs nested in it), for every ref the DAG mentions.
    objects: dict[str, tuple[bytes, tuple[str, ...]]]

    def to_record(self) -> tuple[Any, ...]:
        return (
            [n.to_record() for n in self.nodes],
            [f.to_record() for f in self.funcs],
            self.objects,
        )

    @classmethod
    def from_record(cls, rec: tuple[Any, ...]) -> SubDag:
        nodes, funcs, objects = rec
        return cls([NodeSpec(*n) for n in nodes], [FuncEntry.from_record(f) for f in funcs], objects)


_ENTRY_CACHE: dict[int, tuple[StepFunction[Any], FuncEntry]] = {}


def func_entry(func: StepFunction[Any]) -> FuncEntry:
    """The stored form of a step function (cached per function object)."""
    cached = _ENTRY_CACHE.get(id(func))
    if cached is not None and cached[0] is func:
        return cached[1]
    blob = serialization.dumps_function(func)
    opts = func.options_in_force
    plain = {k: v for k, v in opts.as_dict().items() if k != "retry_exceptions"}
    plain.update(func.engine_options())
    entry = FuncEntry(
        blob=blob,
        key=hashlib.blake2b(blob, digest_size=16).hexdigest(),
        name=func.default_name,
        fingerprint=func.fingerprint,
        plain=plain,
        options_blob=serialization.dumps_function(opts),
        kind=func.kind,
    )
    if len(_ENTRY_CACHE) > 4096:
        _ENTRY_CACHE.clear()
    _ENTRY_CACHE[id(func)] = (func, entry)
    return entry


def collect_refs(refs: dict[str, ObjectRef[Any]], into: dict[str, tuple[bytes, tuple[str, ...]]]) -> None:
    """Add every ref in ``refs`` and the refs nested in them (transitively) to ``into``."""
    stack = list(refs.values())
    while stack:
        ref = stack.pop()._settled()
        if ref.id in into:
            continue
        data, nested = ref._bytes()
        into[ref.id] = (data, tuple(nested))
        stack.extend(nested.values())


def flatten(
    root: Workflow[Any],
    what: str = "the workflow",
    *,
    workflow_id: str | None = None,
    order: list[Workflow[Any]] | None = None,
) -> SubDag:
    """Walk ``root`` and everything it depends on, breadth first, without recursion.

    ``workflow_id``: the workflow the DAG becomes part of (default: the one whose step runs
    here); a ``WorkflowRef`` to one of its steps becomes an ``ext`` dependency, one to
    another workflow's step a node reading that step's output. ``order``, if given, receives
    the nodes in the order of the batch (index ``i`` is node ``i``).
    """
    if root._ref is not None:
        ref = root._ref
        raise TypeError(
            f"{root!r} stands for the output of a recorded step and cannot be run as a workflow; read it with "
            f"workflow.get_output({ref.workflow_id or '<workflow id>'!r}, name={ref.step_id!r})"
        )
    if workflow_id is None:
        workflow_id = current_workflow.get()
    if order is None:
        order = []
    order.append(root)
    index: dict[int, int] = {id(root): 0}
    funcs: list[FuncEntry] = []
    func_index: dict[str, int] = {}
    readers: dict[tuple[str, str, str], Workflow[Any]] = {}
    nodes: list[NodeSpec] = []
    objects: dict[str, tuple[bytes, tuple[str, ...]]] = {}

    i = 0
    while i < len(order):
        node = order[i]
        deps: dict[int, None] = {}  # ordered, and O(1) membership for a wide gather
        refs: dict[str, ObjectRef[Any]] = {}
        ext: dict[str, int] = {}  # steps recorded before, by name -> k (the node is -(k + 1))

        def on_node(child: Workflow[Any], deps: dict[int, None] = deps, ext: dict[str, int] = ext) -> int:
            ref = child._ref
            if ref is not None:
                if ref.workflow_id is None or ref.workflow_id == workflow_id:
                    k = ext.setdefault(ref.step_id, len(ext))
                    return -(k + 1)
                # Another workflow's step: a node of this batch waits for its output.
                key = ("ref", ref.step_id, ref.workflow_id)
                reader = readers.get(key)
                if reader is None:
                    reader = readers[key] = ref._reader()
                child = reader
            j = index.get(id(child))
            if j is None:
                j = len(order)
                index[id(child)] = j
                order.append(child)
            deps[j] = None
            return j

        def on_ref(ref: ObjectRef[Any], refs: dict[str, ObjectRef[Any]] = refs) -> str:
            ref = ref._settled()
            refs[ref.id] = ref
            return ref.id

        fn = node.step_function
        args = serialization.encode(
            (node._args, node._kwargs),
            what=f"the arguments of step {fn.default_name} in {what}",
            on_ref=on_ref,
            on_node=on_node,
        )
        entry = func_entry(fn)
        f = func_index.get(entry.key)
        if f is None:
            f = func_index[entry.key] = len(funcs)
            funcs.append(entry)
        collect_refs(refs, objects)
        nodes.append(NodeSpec(f, args, tuple(deps), tuple(refs), tuple(ext)))
        i += 1
    return SubDag(nodes, funcs, objects)
