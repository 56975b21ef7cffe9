"""A producer process on a PostgreSQL ledger, for test_postgres_machines.py.

Usage: python pg_producer.py URL COUNT BATCH LEASE

Enqueues COUNT jobs `work` (payloads 0..COUNT-1), BATCH at a time with one
`enqueue_many` each, and after each call returns prints `acked <id> <id> ...`: the ids
the ledger confirmed. Prints `done` at the end."""

from __future__ import annotations

import asyncio
import sys

from pg_worker import define

import evq


async def produce(url: str, count: int, batch: int, lease: float) -> None:
    async with evq.Context(url) as ctx:
        define(ctx, lease)
        for start in range(0, count, batch):
            ids = await ctx.enqueue_many(
                [("work", n) for n in range(start, min(count, start + batch))])
            print("acked", *ids, flush=True)
    print("done", flush=True)


def main() -> None:
    url, count, batch, lease = sys.argv[1:5]
    asyncio.run(produce(url, int(count), int(batch), float(lease)))


if __name__ == "__main__":
    main()
