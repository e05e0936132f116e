"""The benchmark workloads on DBOS Transact 3.x with SQLite (its own virtualenv).

    benchmarks/.venvs/dbos/bin/python benchmarks/compare/dbos_workloads.py WORKLOAD --n N
        [--repeats R] --storage DIR [--sqlite-journal default|wal] [--out result.json]

The same shapes as keelflow's workloads, in DBOS's idiom:

- chain N: one workflow calling the step ``inc`` N times in sequence (``x = inc(x)``);
- fan-out N + gather: one workflow enqueues N ``one`` steps on a queue, waits for every
  handle, then runs the step ``gather`` (DBOS's documented fan-out pattern);
- fib(n): a workflow ``fib(n)`` that starts child workflows ``fib(n-1)`` and ``fib(n-2)``
  (``DBOS.start_workflow``, so they may run concurrently, as in keelflow and Ray) and adds their
  results with the step ``add``. Counted like keelflow's: one per fib call plus one per add,
  3 F(n+1) - 2 in all;
- onestep: a workflow with one step, repeated in a warm process.

Storage: ``sqlite:///DIR/dbos.sqlite``. ``--sqlite-journal default`` leaves SQLite as DBOS
opens it (rollback journal, synchronous=FULL); ``wal`` switches each connection to
``journal_mode=WAL`` with ``synchronous=FULL`` (still durable: every commit is fsync'd).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _bench_util import RssSampler, fib_steps, fib_value, rusage_report, summarize, write_result

_t = time.perf_counter()
import sqlalchemy as sa  # noqa: E402
from dbos import DBOS  # noqa: E402

IMPORT_S = time.perf_counter() - _t

QUEUE_POLL_S = 0.01  # DBOS's default is 1 s; a short poll keeps the queue from idling.


def configure(storage: str, journal: str) -> None:
    if journal == "wal":

        @sa.event.listens_for(sa.engine.Engine, "connect")
        def _wal(dbapi_conn, record):  # type: ignore[no-untyped-def]
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA synchronous=FULL")

    os.makedirs(storage, exist_ok=True)
    url = "sqlite:///" + os.path.join(os.path.abspath(storage), "dbos.sqlite")
    DBOS(config={"name": "keelflow-bench", "system_database_url": url, "log_level": "WARNING"})


@DBOS.step()
def inc(x: int) -> int:
    return x + 1


@DBOS.step()
def one(i: int) -> int:
    return 1


@DBOS.step()
def gather(xs: list[int]) -> int:
    return sum(xs)


@DBOS.step()
def add(a: int, b: int) -> int:
    return a + b


@DBOS.workflow()
def chain_wf(n: int) -> int:
    x = 0
    for _ in range(n):
        x = inc(x)
    return x


@DBOS.workflow()
def fanout_wf(n: int) -> int:
    queue = DBOS.retrieve_queue("fanout")
    handles = [queue.enqueue(one, i) for i in range(n)]
    return gather([h.get_result() for h in handles])


@DBOS.workflow()
def fib_wf(n: int) -> int:
    if n < 2:
        return n
    a = DBOS.start_workflow(fib_wf, n - 1)
    b = DBOS.start_workflow(fib_wf, n - 2)
    return add(a.get_result(), b.get_result())


@DBOS.workflow()
def one_wf(x: int) -> int:
    return inc(x)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("workload", choices=["chain", "fanout", "fib", "onestep"])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument(
        "--budget-s", type=float, default=float("inf"), help="stop repeating once the repeats so far took this long"
    )
    p.add_argument("--storage", required=True)
    p.add_argument("--sqlite-journal", choices=["default", "wal"], default="default")
    p.add_argument("--sample-rss", action="store_true")
    p.add_argument("--out")
    a = p.parse_args()
    logging.getLogger("dbos").setLevel(logging.WARNING)

    sampler = RssSampler().start() if a.sample_rss else None
    configure(a.storage, a.sqlite_journal)
    DBOS.launch()
    DBOS.register_queue("fanout", polling_interval_sec=QUEUE_POLL_S)
    one_wf(0)  # warm-up (untimed)

    result: dict = {
        "system": "dbos",
        "workload": a.workload,
        "n": a.n,
        "import_s": round(IMPORT_S, 4),
        "sqlite_journal": a.sqlite_journal,
        "queue_polling_interval_s": QUEUE_POLL_S,
    }
    times = []
    if a.workload == "onestep":
        for _ in range(10):
            one_wf(1)
        for _ in range(a.n):
            t = time.perf_counter()
            assert one_wf(1) == 2
            times.append(time.perf_counter() - t)
        result.update(summarize(times, 1), count=a.n)
    else:
        fn, want, steps = {
            "chain": (chain_wf, a.n, a.n),
            "fanout": (fanout_wf, a.n, a.n + 1),
            "fib": (fib_wf, fib_value(a.n), fib_steps(a.n)),
        }[a.workload]
        for _ in range(a.repeats):
            t = time.perf_counter()
            out = fn(a.n)
            times.append(time.perf_counter() - t)
            assert out == want, out
            if sum(times) > a.budget_s:
                break
        result.update(summarize(times, steps))
    DBOS.destroy()
    if sampler is not None:
        result.update(sampler.stop())
    result.update(rusage_report())
    write_result(a.out, result)


if __name__ == "__main__":
    main()
