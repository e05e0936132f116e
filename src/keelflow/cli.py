"""The ``keelflow`` command."""

from __future__ import annotations

import logging
import os

import click

from .worker import Worker


@click.group()
def main() -> None:
    """keelflow: fast, durable Python workflows."""


@main.command()
@click.option("--storage", envvar="KEELFLOW_STORAGE", help="Storage URL or directory ($KEELFLOW_STORAGE).")
@click.option("--executor", envvar="KEELFLOW_EXECUTOR", default=None, help="local (default) or thread.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address of the event endpoint.")
@click.option("--port", default=8765, show_default=True, type=int, help="Port of the event endpoint (0: any free one).")
@click.option("--no-http", is_flag=True, help="Serve no event endpoint.")
@click.option("--token", envvar="KEELFLOW_WORKER_TOKEN", default=None, help="Bearer token the endpoint requires.")
@click.option("--poll", default=1.0, show_default=True, type=float, help="Seconds between looks for work.")
def worker(
    storage: str | None, executor: str | None, host: str, port: int, no_http: bool, token: str | None, poll: float
) -> None:
    """Run workflows and actor calls that no process runs; deliver HTTP events; fire timers."""
    logging.basicConfig(level=os.environ.get("KEELFLOW_LOG_LEVEL", "INFO"), format="%(asctime)s %(message)s")
    w = Worker(storage, executor=executor, host=host, port=None if no_http else port, token=token, poll=poll)
    w.start()
    if w.address is not None:
        # A line scripts (and tests) can wait for, naming the port actually bound.
        click.echo(f"keelflow worker listening on http://{w.address[0]}:{w.address[1]}", err=True)
    else:
        click.echo("keelflow worker started", err=True)
    w.serve()


if __name__ == "__main__":  # pragma: no cover
    main()
