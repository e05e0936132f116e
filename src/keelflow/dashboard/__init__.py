"""The web dashboard (``keelflow dashboard``): workflows, their graphs and steps, actors, metrics.

``serve(host="127.0.0.1", port=8370, token=None, ready=None)`` blocks until SIGINT/SIGTERM;
:class:`Dashboard` is the same server to start and stop from code (tests, notebooks).
"""

from __future__ import annotations

from .server import Dashboard, serve

__all__ = ["Dashboard", "serve"]
