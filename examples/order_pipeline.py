"""A durable order pipeline: fan-out, retries, idempotent side effects and a dynamic step.

Run it twice: the second run finds the workflow already finished in storage and returns its
output without running a step again. Kill it half-way (Ctrl-C or kill -9) and run it again
with ``--resume``: it continues from the last checkpointed step.

    python examples/order_pipeline.py [--id ID] [--orders N] [--storage DIR] [--resume]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
import uuid

import keelflow as workflow


@workflow.step
def load_orders(count: int) -> list[dict]:
    """Pretend to read today's orders from a database."""
    return [
        {"id": f"order-{i:04d}", "items": [(f"sku-{(i * 7 + k) % 13}", 1 + (i + k) % 3) for k in range(1 + i % 4)]}
        for i in range(count)
    ]


@workflow.step
def price(order: dict) -> dict:
    """Price one order. CPU-bound on purpose: orders are priced in parallel worker processes."""
    total = 0
    for sku, qty in order["items"]:
        digest = sku.encode()
        for _ in range(2_000):  # a stand-in for a real pricing engine
            digest = hashlib.sha256(digest).digest()
        total += qty * (100 + digest[0])
    return {"id": order["id"], "cents": total, "weight": sum(q for _, q in order["items"])}


@workflow.step
def new_payment_token() -> str:
    """An idempotency key, checkpointed before the charge so a retried charge reuses it."""
    return uuid.uuid4().hex


@workflow.step(max_retries=5)
def charge(priced: dict, token: str) -> dict:
    """Charge the customer. The fake gateway times out on the first try for some orders."""
    attempt_marker = int(token[:2], 16) % 3 == 0 and not _seen(token)
    if attempt_marker:
        raise TimeoutError(f"payment gateway timed out for {priced['id']}")
    return {**priced, "charged": True, "payment": token[:8]}


_TOKENS_SEEN: set[str] = set()


def _seen(token: str) -> bool:
    # Per worker process: good enough to make the demo's first attempt fail and a retry pass.
    seen = token in _TOKENS_SEEN
    _TOKENS_SEEN.add(token)
    return seen


@workflow.step
def ship(order: dict) -> workflow.Workflow[list[str]] | list[str]:
    """Heavy orders are split into parcels: the step returns a sub-workflow (a dynamic step)."""
    if order["weight"] <= 4:
        return [f"{order['id']}/parcel-0"]
    parcels = [label_parcel.step(order["id"], n) for n in range(0, order["weight"], 4)]
    return collect.step(parcels)


@workflow.step
def label_parcel(order_id: str, n: int) -> str:
    return f"{order_id}/parcel-{n // 4}"


@workflow.step
def collect(labels: list[str]) -> list[str]:
    return labels


@workflow.step
def process(orders: list[dict]) -> workflow.Workflow[dict]:
    """Fan out over the day's orders: price, charge and ship each, then summarise."""
    shipped = []
    for order in orders:
        priced = price.step(order)
        charged = charge.step(priced, new_payment_token.step())
        shipped.append(ship.step(charged))
    return summarize.step(shipped)


@workflow.step
def summarize(parcels: list[list[str]]) -> dict:
    return {"orders": len(parcels), "parcels": sum(len(p) for p in parcels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--id", default=f"orders-{time.strftime('%Y-%m-%d')}", help="workflow id")
    parser.add_argument("--orders", type=int, default=24)
    parser.add_argument("--storage", default=None, help="storage directory (default: keelflow's)")
    parser.add_argument("--resume", action="store_true", help="resume an interrupted run")
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    workflow.init(args.storage)
    start = time.perf_counter()
    if args.resume:
        result = workflow.resume(args.id)
    else:
        result = process.step(load_orders.step(args.orders)).run(workflow_id=args.id)
    elapsed = time.perf_counter() - start
    print(f"workflow {args.id}: {result} in {elapsed:.2f} s ({workflow.get_status(args.id).value})")
    meta = workflow.get_metadata(args.id)
    print(f"started {time.ctime(meta['stats']['start_time'])}; run again to read it back from storage")


if __name__ == "__main__":
    main()
