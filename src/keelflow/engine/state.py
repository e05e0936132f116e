"""A workflow's state as the journal describes it: pure bookkeeping, no I/O.

The same :meth:`WorkflowState.apply` builds the state live (record by record, right after
each record is durable) and on recovery (replaying the journal), so what a resumed run
believes is exactly what the original run had committed.

Records are tuples of plain values:

``("start", header, dag, time)``           the workflow and its root DAG
``("nodes", parent, dag, stats)``          step ``parent`` returned a sub-DAG (a continuation)
``("done", node, output, refs, objects, stats)``  a step's output
``("fail", node, error, traceback, stats)``       a step failed for good: the workflow is FAILED
``("halt", node, message, stats)``         the step's attempts ended in system failures (its
                                           worker died, say) too often in a row: the run
                                           stopped, and the workflow is RESUMABLE, not FAILED
``("resume", time, info)``                 a new run took over
``("cancel", time)``                       cancelled for good
``("acked", node)``                        event step ``node``'s listener was told its event is
                                           checkpointed (``event_checkpointed`` returned)
"""

from __future__ import annotations

from collections import deque
from typing import Any

from .dag import FuncEntry, SubDag

__all__ = ["Node", "WorkflowState"]

ROOT = 0


class Node:
    __slots__ = (
        "alias_of",
        "args",
        "attempts",
        "base",
        "consumers",
        "continued",
        "dependents",
        "deps",
        "done",
        "end",
        "error",
        "ext",
        "func",
        "halted",
        "halts",
        "name",
        "out_refs",
        "output",
        "refs",
        "start",
        "waiting",
    )

    def __init__(
        self, base: int, func: int, args: bytes, deps: tuple[int, ...], refs: tuple[str, ...], name: str
    ) -> None:
        self.base = base  # index of its batch's first node: arguments name deps relative to it
        self.func = func
        self.args = args
        self.deps = deps
        # Steps recorded before its batch that its arguments name (WorkflowRef): the global
        # index of the node its arguments call -(k + 1) is ext[k]. They are in deps too.
        self.ext: tuple[int, ...] = ()
        self.refs = refs
        self.name = name
        self.waiting = 0
        self.dependents: list[int] = []
        self.consumers = 0
        self.output: Any = None  # bytes, ("blob", key) or None once released
        self.out_refs: tuple[str, ...] = ()
        self.done = False
        self.alias_of: int | None = None
        self.continued: int | None = None
        self.start: float | None = None
        self.end: float | None = None
        self.attempts = 0
        self.error: tuple[bytes, str] | None = None
        #: Why the last run stopped at this step (system failures), until a resume.
        self.halted: str | None = None
        self.halts = 0  # runs it stopped that way, over the workflow's life


class WorkflowState:
    """Nodes, functions and objects of one workflow, and which steps may run next."""

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        self.header: dict[str, Any] = {}
        self.start_time: float | None = None
        self.nodes: list[Node] = []
        self.funcs: list[FuncEntry] = []
        self._func_keys: dict[str, int] = {}
        self.objects: dict[str, tuple[bytes, tuple[str, ...]]] = {}
        self.names: dict[str, int] = {}
        self._name_counts: dict[str, int] = {}
        self.ready: deque[int] = deque()
        self.failed: int | None = None
        #: The step whose system failures stopped the last run (it stays resumable).
        self.halted: int | None = None
        #: A step failed for good at some point (the workflow may have been resumed since).
        self.ever_failed = False
        self.cancelled = False
        #: Wait nodes (``workflow.wait``) added since the scheduler last looked (it keeps
        #: their timeouts).
        self.waits: list[int] = []
        # Event steps whose event is checkpointed but not yet acknowledged to the listener.
        self.unacked: dict[int, Any] = {}

    # -- queries -------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return bool(self.nodes) and self.nodes[ROOT].done

    @property
    def status_name(self) -> str:
        if self.cancelled:
            return "CANCELED"
        if self.finished:
            return "SUCCESSFUL"
        if self.failed is not None:
            return "FAILED"
        return "RUNNING"

    def step_name(self, index: int) -> str:
        return self.nodes[index].name

    def end_time(self) -> float | None:
        return self.nodes[ROOT].end if self.finished else None

    # -- applying records ----------------------------------------------------------------------
    def apply(self, record: tuple[Any, ...]) -> None:
        kind = record[0]
        if kind == "done":
            self._done(record[1], record[2], record[3], record[4], record[5])
        elif kind == "nodes":
            self._continue(record[1], SubDag.from_record(record[2]), record[3])
        elif kind == "start":
            self.header = record[1]
            self.start_time = record[3]
            self._add_dag(SubDag.from_record(record[2]))
        elif kind == "fail":
            node = self.nodes[record[1]]
            node.error = (record[2], record[3])
            node.start, node.end, node.attempts = record[4]
            self.failed = record[1]
            self.ever_failed = True
        elif kind == "halt":
            node = self.nodes[record[1]]
            node.halted = record[2]
            node.halts += 1
            node.start, node.end, node.attempts = record[3]
            self.halted = record[1]
        elif kind == "resume":
            self._reset_failed()
        elif kind == "cancel":
            self.cancelled = True
        elif kind == "acked":
            self.unacked.pop(record[1], None)
        else:
            raise ValueError(f"unknown journal record {kind!r}")

    def _add_dag(self, dag: SubDag) -> int:
        """Append a flattened DAG; returns the global index of its root."""
        base = len(self.nodes)
        fmap = []
        for entry in dag.funcs:
            g = self._func_keys.get(entry.key)
            if g is None:
                g = self._func_keys[entry.key] = len(self.funcs)
                self.funcs.append(entry)
            fmap.append(g)
        self.objects.update(dag.objects)
        # Steps named by WorkflowRef are looked up before this batch's names exist.
        known = {n: self.names[n] for spec in dag.nodes if spec.ext for n in spec.ext}
        for spec in dag.nodes:
            func = fmap[spec.func]
            entry = self.funcs[func]
            deps = tuple(base + d for d in spec.deps)
            ext = tuple(known[n] for n in spec.ext) if spec.ext else ()
            if ext:
                deps += tuple(dict.fromkeys(g for g in ext if g not in deps))
            name = self._unique_name(entry.plain.get("name") or entry.name)
            node = Node(base, func, spec.args, deps, spec.refs, name)
            if ext:
                node.ext = ext
            self.names[node.name] = len(self.nodes)
            self.nodes.append(node)
        # Wire dependencies from the leaves up; a batch points inside itself, and (through
        # WorkflowRef) at steps recorded before it, which may be done already.
        waits = {g for g in fmap if self.funcs[g].kind == "wait"}
        for i in range(base, len(self.nodes)):
            node = self.nodes[i]
            waiting = 0
            for d in node.deps:
                dep = self.nodes[d]
                dep.consumers += 1
                if not dep.done:
                    dep.dependents.append(i)
                    waiting += 1
            if waits and node.func in waits:
                # workflow.wait: ready once num_returns of its inputs are done (or at its
                # timeout, which the scheduler keeps).
                done = len(node.deps) - waiting
                wanted = int(self.funcs[node.func].plain.get("num_returns", 1))
                waiting = max(0, min(wanted, len(node.deps)) - done)
                self.waits.append(i)
            node.waiting = waiting
            if waiting == 0:
                self.ready.append(i)
        return base

    def _unique_name(self, base: str) -> str:
        count = self._name_counts.get(base, 0)
        name = base if count == 0 else f"{base}_{count}"
        while name in self.names:
            count += 1
            name = f"{base}_{count}"
        self._name_counts[base] = count + 1
        return name

    def _continue(self, parent: int, dag: SubDag, stats: tuple[float, float, int]) -> None:
        root = self._add_dag(dag)
        p = self.nodes[parent]
        p.start, p.end, p.attempts = stats
        p.continued = root
        self.nodes[root].alias_of = parent
        self._release_inputs(p)

    def _done(
        self,
        index: int,
        output: Any,
        refs: tuple[str, ...],
        objects: dict[str, tuple[bytes, tuple[str, ...]]],
        stats: tuple[float, float, int],
    ) -> None:
        self.objects.update(objects)
        node = self.nodes[index]
        node.start, node.end, node.attempts = stats
        if self.funcs[node.func].kind == "event_ack":
            self.unacked[index] = output
        if node.continued is None:
            self._release_inputs(node)
        # Resolve the node, then every step it was the continuation of, without recursion.
        current: int | None = index
        while current is not None:
            n = self.nodes[current]
            n.output, n.out_refs, n.done = output, refs, True
            if n.end is None or n.continued is not None:
                n.end = stats[1]
            for d in n.dependents:
                dependent = self.nodes[d]
                dependent.waiting -= 1
                if dependent.waiting == 0:
                    self.ready.append(d)
            parent = n.alias_of
            if parent is not None and current != ROOT:
                n.output = None  # the parent holds it now
            current = parent

    def _release_inputs(self, node: Node) -> None:
        """A step has used its inputs for good: drop outputs nobody else needs (memory)."""
        for d in node.deps:
            dep = self.nodes[d]
            dep.consumers -= 1
            if dep.consumers == 0 and d != ROOT:
                dep.output = None

    def _reset_failed(self) -> None:
        if self.halted is not None:
            node = self.nodes[self.halted]
            node.halted = None
            node.attempts = 0
            self.ready.append(self.halted)  # (a duplicate in ``ready`` is skipped when dispatched)
            self.halted = None
        if self.failed is not None:
            node = self.nodes[self.failed]
            node.error = None
            node.attempts = 0
            self.ready.append(self.failed)
        self.failed = None
