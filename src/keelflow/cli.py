"""The ``keelflow`` command: inspect and operate the workflows and actors in a storage.

Every command reads ``--storage`` (given after the command or before it), else
``$KEELFLOW_STORAGE``, else ``~/.keelflow/storage``. Tables are plain aligned text; ``--json``
gives scripts the same data parsed. The exit codes are listed in :func:`main`'s help.

The management API (and rich, for ``status --watch``) loads inside the commands, so
``import keelflow.cli`` stays cheap.
"""

from __future__ import annotations

import collections
import concurrent.futures
import importlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from . import __version__
from .errors import (
    ActorNotFoundError,
    CorruptCheckpointError,
    InvalidIdError,
    KeelflowError,
    StepNotFoundError,
    StorageError,
    WorkflowNotFoundError,
)

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = ["EXIT_FAILED", "EXIT_NOT_FOUND", "EXIT_OK", "EXIT_STORAGE", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_FAILED = 1  # the workflow failed, or the operation did
EXIT_USAGE = 2  # click's own code for bad usage; also a malformed id
EXIT_NOT_FOUND = 3  # unknown workflow, step or actor id
EXIT_STORAGE = 4  # no storage there, unreachable, unreadable, damaged, of a newer format, or an unknown scheme

# WorkflowStatus's values, spelled out so option parsing needs no management API.
STATUSES = ("RUNNING", "FAILED", "RESUMABLE", "CANCELED", "SUCCESSFUL")
ENDED = ("SUCCESSFUL", "FAILED", "CANCELED")

F = TypeVar("F", bound=Callable[..., Any])


class CommandError(click.ClickException):
    """An error the command reports as ``Error: message`` on stderr, exiting with ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = code  # type: ignore[misc]  # click declares it on the class


class _Group(click.Group):
    """Turns keelflow's errors into a one-line message and an exit code scripts can test."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (WorkflowNotFoundError, StepNotFoundError, ActorNotFoundError) as e:
            raise CommandError(str(e), EXIT_NOT_FOUND) from e
        except InvalidIdError as e:
            raise CommandError(str(e), EXIT_USAGE) from e
        except StorageError as e:
            raise CommandError(str(e), EXIT_STORAGE) from e
        except KeelflowError as e:
            raise CommandError(_describe(e), EXIT_FAILED) from e


@click.group(cls=_Group)
@click.option(
    "--storage",
    metavar="URL",
    default=None,
    help="Storage path or URL for every command ($KEELFLOW_STORAGE, else ~/.keelflow/storage).",
)
@click.version_option(__version__, prog_name="keelflow")
@click.pass_context
def main(ctx: click.Context, storage: str | None) -> None:
    """keelflow: fast, durable Python workflows.

    Inspect and operate the workflows and virtual actors in a storage. Every command takes
    --storage (before or after the command name; default $KEELFLOW_STORAGE, else
    ~/.keelflow/storage), and the commands that report take --json for scripts.

    \b
    Exit codes:
      0  success
      1  the workflow failed, or the operation did (the error is on stderr)
      2  usage error: a bad option or argument, or a malformed id
      3  unknown workflow, step or actor id
      4  storage problem: none there, unknown scheme, unreadable, damaged, or of a newer keelflow
    """
    ctx.ensure_object(dict)["storage"] = storage


# -- shared options and helpers ---------------------------------------------------------------
def _storage_option(f: F) -> F:
    return click.option(
        "--storage",
        metavar="URL",
        default=None,
        help="Storage path or URL ($KEELFLOW_STORAGE, else ~/.keelflow/storage).",
    )(f)


def _json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")(f)


def _storage_url(ctx: click.Context, storage: str | None) -> str | None:
    """The command's --storage, else the group's; None lets keelflow read $KEELFLOW_STORAGE."""
    if storage:
        return storage
    root = ctx.find_root().obj
    return root.get("storage") if isinstance(root, dict) else None


def _open(ctx: click.Context, storage: str | None, executor: str | None = None) -> None:
    """Initialise keelflow on the command's storage, and shut it down after the command if
    this command started it (a caller that initialised keelflow itself keeps its runtime).

    Storage that does not exist is an error, never created: a mistyped --storage must not
    look like an empty storage."""
    from . import api

    level = os.environ.get("KEELFLOW_LOG_LEVEL")
    if level:
        logging.basicConfig(level=level, format="%(asctime)s %(message)s")
    started = not api.initialized()
    api.init(_storage_url(ctx, storage), executor=executor, create=False)
    if started:
        ctx.call_on_close(api.shutdown)


def _describe(e: BaseException) -> str:
    message = str(e) or type(e).__name__
    cause = e.__cause__
    if cause is not None and str(cause) not in message:
        message += f": {type(cause).__name__}: {cause}"
    return message


def _plain(value: Any) -> Any:
    """JSON fallback for metadata: classes by name, anything else by repr."""
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return repr(value)


def _dump(data: Any) -> str:
    return json.dumps(data, indent=2, default=_plain, ensure_ascii=False)


def _value_text(value: Any, force_json: bool, what: str) -> str:
    """A workflow's or step's value: JSON if it is JSON-serialisable, else its repr."""
    try:
        return json.dumps(value, indent=2, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        if force_json:
            raise CommandError(f"{what} is not JSON-serialisable ({e}); drop --json to print its repr") from e
        return repr(value)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds:.3f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _span(start: float | None, end: float | None, status: str) -> float | None:
    """How long it ran: to its end, or (still running) to now."""
    if start is None:
        return None
    if end is not None:
        return end - start
    return time.time() - start if status == "RUNNING" else None


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns aligned by spaces; the last one (often an error message) is left unpadded."""
    cells = [[" ".join(str(c).split()) if c is not None else "-" for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = []
    for row in [list(headers), *cells]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _pairs(items: Sequence[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in items) + 1
    return "\n".join(f"{(k + ':').ljust(width)} {v}" for k, v in items)


# -- workflows ---------------------------------------------------------------------------------
@main.command("list")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(STATUSES, case_sensitive=False),
    help="Only workflows with this status (repeat for several).",
)
@_storage_option
@_json_option
@click.pass_context
def list_command(ctx: click.Context, statuses: tuple[str, ...], storage: str | None, as_json: bool) -> None:
    """List workflows, newest first."""
    _open(ctx, storage)
    from .views import list_view

    rows = list_view([s.upper() for s in statuses] or None)
    for row in rows:
        row["duration"] = _span(row["start_time"], row["end_time"], row["status"])
    if as_json:
        click.echo(_dump(rows))
        return
    if not rows:
        click.echo("no workflows", err=True)
        return
    click.echo(
        _table(
            ["WORKFLOW ID", "STATUS", "STARTED", "ENDED", "DURATION"],
            [
                [r["workflow_id"], r["status"], _when(r["start_time"]), _when(r["end_time"]), _duration(r["duration"])]
                for r in rows
            ],
        )
    )


def _summary(view: dict[str, Any]) -> dict[str, Any]:
    counts = view["step_counts"]
    return {
        "workflow_id": view["workflow_id"],
        "status": view["status"],
        "start_time": view["start_time"],
        "end_time": view["end_time"],
        "duration": _span(view["start_time"], view["end_time"], view["status"]),
        "steps_total": len(view["steps"]),
        "steps_done": counts.get("SUCCESSFUL", 0) + counts.get("CONTINUED", 0),
        "steps_failed": counts.get("FAILED", 0),
        "retries": sum(max(0, (s["attempts"] or 0) - 1) for s in view["steps"]),
        "step_counts": counts,
        "failed_step": view["failed_step"],
        "error": view["error"],
        "user_metadata": view["user_metadata"],
        "owned_by": view["owned_by"],
    }


@main.command()
@click.argument("workflow_id")
@click.option("--watch", is_flag=True, help="Follow it live until it ends (exit 0 only if it ends SUCCESSFUL).")
@click.option(
    "--interval", default=0.5, show_default=True, type=click.FloatRange(min=0.01), help="Seconds between looks."
)
@_storage_option
@_json_option
@click.pass_context
def status(
    ctx: click.Context, workflow_id: str, watch: bool, interval: float, storage: str | None, as_json: bool
) -> None:
    """Show a workflow's status and step counts (exit 0 whatever the status).

    With --watch, a live view (steps done/total, rate, failures) until the workflow is
    SUCCESSFUL, FAILED or CANCELED, or Ctrl-C; a RESUMABLE workflow is waited on, since a
    worker or `keelflow resume` may take it up.
    """
    _open(ctx, storage)
    from .views import workflow_view

    if watch:
        ctx.exit(_watch(workflow_id, interval, as_json))
    info = _summary(workflow_view(workflow_id))
    if as_json:
        click.echo(_dump(info))
        return
    items = [
        ("workflow", info["workflow_id"]),
        ("status", info["status"]),
        ("started", _when(info["start_time"])),
        ("ended", _when(info["end_time"])),
        ("duration", _duration(info["duration"])),
        ("steps", f"{info['steps_done']}/{info['steps_total']} done, {info['steps_failed']} failed"),
        ("retries", info["retries"]),
    ]
    if info["failed_step"] is not None:
        items.append(("failed step", info["failed_step"]))
        items.append(("error", info["error"]))
    if info["user_metadata"]:
        items.append(("metadata", json.dumps(info["user_metadata"], default=_plain)))
    click.echo(_pairs(items))


class _Rate:
    """Steps done per second over the last few seconds of looks."""

    WINDOW = 10.0

    def __init__(self) -> None:
        self.samples: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, done: int) -> float | None:
        now = time.monotonic()
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[1][0] > self.WINDOW:
            self.samples.popleft()
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else None


def _progress_line(info: dict[str, Any], rate: float | None) -> str:
    if info["status"] == "RESUMABLE":
        waiting = " (no process runs it: waiting for a worker or `keelflow resume`)"
    else:
        waiting = ""
    speed = f", {rate:.1f} steps/s" if rate is not None and info["status"] == "RUNNING" else ""
    return (
        f"{info['workflow_id']} {info['status']}: {info['steps_done']}/{info['steps_total']} steps done, "
        f"{info['steps_failed']} failed, {info['retries']} retried{speed}{waiting}"
    )


def _progress_view(info: dict[str, Any], rate: float | None, running: list[str]) -> RenderableType:
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    colour = {"SUCCESSFUL": "green", "FAILED": "red", "CANCELED": "yellow"}.get(info["status"], "cyan")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("workflow", info["workflow_id"])
    grid.add_row("status", f"[{colour}]{info['status']}[/]")
    grid.add_row(
        "steps",
        f"{info['steps_done']}/{info['steps_total']} done"
        + (f"  {rate:.1f} steps/s" if rate is not None and info["status"] == "RUNNING" else ""),
    )
    grid.add_row("", ProgressBar(total=max(info["steps_total"], 1), completed=info["steps_done"], width=40))
    grid.add_row("failures", f"{info['steps_failed']} failed, {info['retries']} retried")
    grid.add_row("elapsed", _duration(info["duration"]))
    if running:
        more = f" (+{len(running) - 3})" if len(running) > 3 else ""
        grid.add_row("running", ", ".join(running[:3]) + more)
    if info["failed_step"] is not None:
        grid.add_row("error", f"[red]{info['failed_step']}: {info['error']}[/]")
    return grid


def _watch(workflow_id: str, interval: float, as_json: bool) -> int:
    from rich.console import Console
    from rich.live import Live

    from .views import workflow_view

    rate = _Rate()
    console = Console()
    live = Live(console=console, auto_refresh=False) if console.is_terminal else None
    last = ""
    info: dict[str, Any] = {}
    if live is not None:
        live.start()
    try:
        while True:
            view = workflow_view(workflow_id)
            info = _summary(view)
            speed = rate.add(info["steps_done"])
            if live is not None:
                running = [s["name"] for s in view["steps"] if s["status"] == "RUNNING"]
                live.update(_progress_view(info, speed, running), refresh=True)
            elif not as_json and info["status"] not in ENDED:  # (the summary below says how it ended)
                line = _progress_line(info, None)
                if line != last:  # a line per change, so a log of it stays short
                    click.echo(_progress_line(info, speed))
                    last = line
            if info["status"] in ENDED:
                break
            time.sleep(interval)
    except KeyboardInterrupt:
        click.echo(f"stopped watching; workflow {workflow_id!r} is {info.get('status', 'unknown')}", err=True)
        return EXIT_FAILED
    finally:
        if live is not None:
            live.stop()
    if as_json:
        click.echo(_dump(info))
    else:
        click.echo(
            f"{workflow_id} {info['status']}: {info['steps_done']}/{info['steps_total']} steps done, "
            f"{info['steps_failed']} failed, {info['retries']} retried, in {_duration(info['duration'])}"
        )
        if info["failed_step"] is not None:
            click.echo(f"step {info['failed_step']} failed: {info['error']}", err=True)
    return EXIT_OK if info["status"] == "SUCCESSFUL" else EXIT_FAILED


@main.command()
@click.argument("workflow_id")
@click.option("--step", "step_name", metavar="NAME", default=None, help="A step's output instead of the workflow's.")
@click.option("--timeout", type=float, default=None, help="Seconds to wait for a running workflow (default: no limit).")
@_storage_option
@click.option("--json", "as_json", is_flag=True, help="JSON or nothing: fail if the value is not JSON-serialisable.")
@click.pass_context
def output(
    ctx: click.Context,
    workflow_id: str,
    step_name: str | None,
    timeout: float | None,
    storage: str | None,
    as_json: bool,
) -> None:
    """Print a workflow's output (or a step's): JSON if it is JSON-serialisable, else its repr.

    Waits while the workflow runs; a failed or cancelled workflow exits 1.
    """
    _open(ctx, storage)
    from . import api

    try:
        value = api.get_output(workflow_id, name=step_name, timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise CommandError(f"workflow {workflow_id!r} is still running after {timeout} s") from None
    what = f"the output of step {step_name!r}" if step_name else f"the output of workflow {workflow_id!r}"
    click.echo(_value_text(value, as_json, what))


@main.command()
@click.argument("workflow_id")
@click.option("--step", "step_name", metavar="NAME", default=None, help="A step's metadata instead of the workflow's.")
@_storage_option
@click.option("--json", "as_json", is_flag=True, hidden=True)  # always JSON; accepted for uniform scripts
@click.pass_context
def metadata(ctx: click.Context, workflow_id: str, step_name: str | None, storage: str | None, as_json: bool) -> None:
    """Print a workflow's (or a step's) metadata as JSON: status, user metadata, times."""
    _open(ctx, storage)
    from . import api

    click.echo(_dump(api.get_metadata(workflow_id, name=step_name)))


@main.command()
@click.argument("workflow_id")
@_storage_option
@_json_option
@click.pass_context
def steps(ctx: click.Context, workflow_id: str, storage: str | None, as_json: bool) -> None:
    """List a workflow's steps: status, attempts, duration and error (--json adds tracebacks)."""
    _open(ctx, storage)
    from .views import workflow_view

    view = workflow_view(workflow_id)
    rows = view["steps"]
    if view["status"] == "RUNNING":
        for row in rows:
            if row["status"] == "RUNNING" and row["duration"] is None and row["start_time"] is not None:
                row["duration"] = time.time() - row["start_time"]
    if as_json:
        click.echo(_dump(rows))
        return
    click.echo(
        _table(
            ["#", "NAME", "STATUS", "ATTEMPTS", "DURATION", "ERROR"],
            [
                [r["index"], r["name"], r["status"], r["attempts"], _duration(r["duration"]), r["error"] or ""]
                for r in rows
            ],
        )
    )


@main.command()
@click.argument("workflow_id")
@click.option("--executor", default=None, help="local (default: $KEELFLOW_EXECUTOR, else local) or thread.")
@_storage_option
@click.option("--json", "as_json", is_flag=True, help="JSON or nothing: fail if the output is not JSON-serialisable.")
@click.pass_context
def resume(ctx: click.Context, workflow_id: str, executor: str | None, storage: str | None, as_json: bool) -> None:
    """Run a RESUMABLE or FAILED workflow to its end in this process and print its output.

    Exits 1 (the error on stderr) if a step fails again.
    """
    _open(ctx, storage, executor)
    from . import api

    value = api.resume(workflow_id)
    click.echo(_value_text(value, as_json, f"the output of workflow {workflow_id!r}"))


@main.command("resume-all")
@click.option("--include-failed", is_flag=True, help="Resume FAILED workflows too.")
@click.option("--executor", default=None, help="local (default: $KEELFLOW_EXECUTOR, else local) or thread.")
@_storage_option
@_json_option
@click.pass_context
def resume_all(
    ctx: click.Context, include_failed: bool, executor: str | None, storage: str | None, as_json: bool
) -> None:
    """Resume every RESUMABLE workflow (and FAILED ones with --include-failed) in this process,
    wait for them, and print each one's final status. Exits 1 if any of them failed."""
    _open(ctx, storage, executor)
    from . import api

    results = []
    for wid, ref in api.resume_all(include_failed=include_failed):
        error = None
        try:
            ref.result()
        except KeelflowError as e:
            error = _describe(e)
        results.append({"workflow_id": wid, "status": api.get_status(wid).value, "error": error})
    if as_json:
        click.echo(_dump(results))
    elif not results:
        click.echo("nothing to resume", err=True)
    else:
        rows = [[r["workflow_id"], r["status"], r["error"] or ""] for r in results]
        click.echo(_table(["WORKFLOW ID", "STATUS", "ERROR"], rows))
    if any(r["status"] != "SUCCESSFUL" for r in results):
        ctx.exit(EXIT_FAILED)


@main.command()
@click.argument("workflow_id")
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait until a process running it has stopped it (else only ask it to stop).",
)
@click.option("--timeout", default=10.0, show_default=True, type=float, help="Seconds to wait for that.")
@_storage_option
@click.pass_context
def cancel(ctx: click.Context, workflow_id: str, wait: bool, timeout: float, storage: str | None) -> None:
    """Cancel a workflow: its running steps are abandoned and it becomes CANCELED.

    A workflow another live process runs is asked to stop, which it does within about a
    second; exits 1 if it ended some other way first, or has not stopped within --timeout.
    """
    _open(ctx, storage)
    from . import api

    before = api.get_status(workflow_id).value
    if before in ("SUCCESSFUL", "CANCELED"):
        click.echo(f"workflow {workflow_id!r} is already {before}; nothing to cancel", err=True)
        click.echo(f"{workflow_id} {before}")
        return
    api.cancel(workflow_id)
    if not wait:
        click.echo(f"{workflow_id} {api.get_status(workflow_id).value}")
        return
    # Another process owns it while it holds the lease; it releases that once it has stopped.
    deadline = time.monotonic() + timeout
    while api.owner_alive(workflow_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    stopped = not api.owner_alive(workflow_id)
    after = api.get_status(workflow_id).value
    click.echo(f"{workflow_id} {after}")
    if not stopped:
        raise CommandError(f"the process running workflow {workflow_id!r} has not stopped it within {timeout} s")
    if after != "CANCELED":
        raise CommandError(f"workflow {workflow_id!r} ended {after} before the cancel took effect")


@main.command()
@click.argument("workflow_id")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_storage_option
@click.pass_context
def delete(ctx: click.Context, workflow_id: str, yes: bool, storage: str | None) -> None:
    """Delete a workflow and all its data (asks first unless --yes). Refuses a running one."""
    _open(ctx, storage)
    from . import api

    try:
        current = api.get_status(workflow_id).value  # an unknown id fails here, before asking
    except CorruptCheckpointError as e:
        click.echo(f"Warning: {e}", err=True)
        current = "damaged"  # deleting is one way out of damage
    if current == "RUNNING":
        raise CommandError(f"workflow {workflow_id!r} is RUNNING; cancel it first")
    if not yes:
        click.confirm(f"Delete workflow {workflow_id!r} ({current}) and all its data?", abort=True)
    api.delete(workflow_id)
    click.echo(f"deleted {workflow_id}")


@main.command()
@click.argument("workflow_id")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_storage_option
@_json_option
@click.pass_context
def salvage(ctx: click.Context, workflow_id: str, yes: bool, storage: str | None, as_json: bool) -> None:
    """Make a workflow with a damaged journal resumable from its last intact record.

    The damaged part is kept beside the journal (journal.damaged.<time>), not deleted; the
    steps whose records it held run again on `keelflow resume`. Asks first unless --yes.
    """
    _open(ctx, storage)
    from . import api

    try:
        api.get_status(workflow_id)
        api.get_metadata(workflow_id)  # reads (and checks) the whole journal
    except CorruptCheckpointError as e:
        click.echo(str(e), err=True)
    else:
        click.echo(f"workflow {workflow_id!r} has no damage; nothing to salvage", err=True)
        return
    if not yes:
        click.confirm(
            f"Keep the intact records of {workflow_id!r}, and set the damaged part aside for its steps to run again?",
            abort=True,
        )
    report = api.salvage(workflow_id)
    if as_json:
        click.echo(_dump(report))
        return
    if not report["damaged"]:
        click.echo(f"workflow {workflow_id!r} has no damage; nothing to salvage", err=True)
        return
    click.echo(
        _pairs(
            [
                ("workflow", workflow_id),
                (
                    "kept",
                    f"{report['records_kept']} records ({report['steps_kept']} of {report['steps']} steps done)",
                ),
                ("set aside", report["set_aside"]),
                ("status", report["status"]),
            ]
        )
    )
    if report["status"] == "RESUMABLE":
        click.echo(f"next: keelflow resume {workflow_id}", err=True)


# -- actors ------------------------------------------------------------------------------------
@main.command()
@click.argument("actor_id", required=False)
@_storage_option
@_json_option
@click.pass_context
def actors(ctx: click.Context, actor_id: str | None, storage: str | None, as_json: bool) -> None:
    """List virtual actors; with ACTOR_ID, one actor's state and call log."""
    _open(ctx, storage)
    from . import actors as actor_api

    if actor_id is not None:
        meta = actor_api.get_actor_metadata(actor_id)
        calls = actor_api.list_actor_calls(actor_id)
        if as_json:
            click.echo(_dump({**meta, "calls": calls}))
            return
        stats = meta["stats"]
        click.echo(
            _pairs(
                [
                    ("actor", meta["actor_id"]),
                    ("class", meta["class"]),
                    ("status", meta["status"]),
                    ("created", _when(stats["created"])),
                    ("calls", f"{stats['calls']} ({stats['failed']} failed, {stats['queued']} queued)"),
                    ("last call", _when(stats["last_call_time"])),
                    ("state", repr(meta["state"])),
                ]
            )
        )
        if calls:
            click.echo()
            click.echo(
                _table(
                    ["SEQ", "METHOD", "STATUS", "SUBMITTED", "DURATION", "ERROR"],
                    [
                        [
                            "-" if c["seq"] is None else c["seq"],
                            c["method"],
                            c["status"],
                            _when(c["submitted"]),
                            _duration(_span(c["start_time"], c["end_time"], c["status"])),
                            c["error"] or "",
                        ]
                        for c in calls
                    ],
                )
            )
        return
    rows = []
    for aid in actor_api.list_actors():
        try:
            rows.append(actor_api.get_actor_metadata(aid))
        except ActorNotFoundError:
            continue  # deleted since it was listed
    if as_json:
        click.echo(_dump(rows))
        return
    if not rows:
        click.echo("no actors", err=True)
        return
    click.echo(
        _table(
            ["ACTOR ID", "CLASS", "STATUS", "CALLS", "FAILED", "QUEUED", "LAST CALL"],
            [
                [
                    m["actor_id"],
                    m["class"],
                    m["status"],
                    m["stats"]["calls"],
                    m["stats"]["failed"],
                    m["stats"]["queued"],
                    _when(m["stats"]["last_call_time"]),
                ]
                for m in rows
            ],
        )
    )


# -- long-running services ---------------------------------------------------------------------
@main.command()
@_storage_option
@click.option("--executor", envvar="KEELFLOW_EXECUTOR", default=None, help="local (default) or thread.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address of the event endpoint.")
@click.option("--port", default=8765, show_default=True, type=int, help="Port of the event endpoint (0: any free one).")
@click.option("--no-http", is_flag=True, help="Serve no event endpoint.")
@click.option("--token", envvar="KEELFLOW_WORKER_TOKEN", default=None, help="Bearer token the endpoint requires.")
@click.option("--poll", default=1.0, show_default=True, type=float, help="Seconds between looks for work.")
@click.pass_context
def worker(
    ctx: click.Context,
    storage: str | None,
    executor: str | None,
    host: str,
    port: int,
    no_http: bool,
    token: str | None,
    poll: float,
) -> None:
    """Run workflows and actor calls that no process runs; deliver HTTP events; fire timers."""
    from .worker import Worker

    logging.basicConfig(level=os.environ.get("KEELFLOW_LOG_LEVEL", "INFO"), format="%(asctime)s %(message)s")
    w = Worker(
        _storage_url(ctx, storage), executor=executor, host=host, port=None if no_http else port, token=token, poll=poll
    )
    w.start()
    if w.address is not None:
        # A line scripts (and tests) can wait for, naming the port actually bound.
        click.echo(f"keelflow worker listening on http://{w.address[0]}:{w.address[1]}", err=True)
    else:
        click.echo("keelflow worker started", err=True)
    w.serve()


@main.command()
@_storage_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8370, show_default=True, type=int, help="Port to listen on (0: any free one).")
@click.option(
    "--token",
    envvar="KEELFLOW_DASHBOARD_TOKEN",
    default=None,
    help="Token the dashboard requires (Bearer or ?token=); needed beyond 127.0.0.1 ($KEELFLOW_DASHBOARD_TOKEN).",
)
@click.pass_context
def dashboard(ctx: click.Context, storage: str | None, host: str, port: int, token: str | None) -> None:
    """Serve the web dashboard (workflows, their DAGs, steps and actors) until Ctrl-C."""
    _open(ctx, storage)
    try:
        # Imported by name: the dashboard is optional to the rest of the command line.
        serve = importlib.import_module("keelflow.dashboard").serve
    except (ImportError, AttributeError) as e:
        raise CommandError(f"the dashboard is not available in this installation: {e}") from e

    def ready(address: tuple[str, int]) -> None:
        click.echo(f"keelflow dashboard on http://{address[0]}:{address[1]}", err=True)

    try:
        serve(host=host, port=port, token=token, ready=ready)
    except OSError as e:
        raise CommandError(f"cannot serve the dashboard on {host}:{port}: {e.strerror or e}") from e


if __name__ == "__main__":  # pragma: no cover
    main()
