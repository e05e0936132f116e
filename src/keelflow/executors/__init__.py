"""Executors: where step code runs (see :mod:`keelflow.executors.base`).

The implementations live in their own modules (``local.ProcessExecutor``, the default, and
``thread.ThreadExecutor``); import them from there.
"""

from keelflow.executors.base import Demand, Executor, Outcome, Task

__all__ = ["Demand", "Executor", "Outcome", "Task"]
