"""The store's async writes on PostgreSQL: rows of a composite type vs arrays per column.

    .venv/bin/python bench/store_writes.py [--calls 2000] [--group 28] [--rounds 6]
                                           [--pg-url URL]

Two stores (``swarmless.store.Store``, the real code path: group commit, the gathered
statement of a group) on two databases of their own, created on the server at
``--pg-url`` (``scripts/postgres.sh`` starts the project's one and prints its URL, the
default) and dropped at the end:

- **rows**: as the store writes: a bulk statement's rows as one array of its own
  composite type (``Database._make_row_types``);
- **columns**: the same store with its row types forgotten: one array per column, as
  before them (and as a role without the right to create types still writes).

Each round writes ``--calls`` async calls the way the async drain does: accepted in groups
of ``--group`` (written leased to this process, as the gateway hands calls over), and each
group's outcomes (record, result, queue row deleted) written with the next group's accepts,
in one group commit. Rounds alternate between the two stores (rows, columns, columns,
rows, ...). Per call: this process's CPU (the store's client side: SQLAlchemy, asyncpg's
encoding; it runs nothing else), the server's CPU (its backends for the round's database,
read from ``/proc``: the server must run on this machine, else it is not printed) and the
wall time. Prints ``store-writes-client-cpu ratio X`` (rows / columns, medians; no target:
issue 16's target is the drain, ``bench/async.py --store postgres``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from _common import proc_cpu
from swarmless.records import InvocationRecord, new_call_id, now_ms
from swarmless.store import Store, StoredResult

PG_URL = "postgresql://postgres@127.0.0.1:54329/swarmless"


@contextlib.asynccontextmanager
async def database(server_url: str, name: str) -> AsyncIterator[str]:
    """A database of its own on the server, dropped at the end; its URL."""
    base = server_url.rsplit("/", 1)[0]
    admin = await asyncpg.connect(f"{base}/postgres", timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{base}/{name}"
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def server_cpu(admin: asyncpg.Connection, name: str) -> float | None:
    """CPU seconds of the server's backends for database ``name`` so far (None when the
    server is not on this machine)."""
    rows = await admin.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", name)
    return backends_cpu([int(r["pid"]) for r in rows])


def backends_cpu(pids: list[int]) -> float | None:
    """CPU seconds of the server's processes ``pids`` (None if one is not on this machine)."""
    if not all(Path(f"/proc/{pid}").exists() for pid in pids):
        return None
    return sum(proc_cpu(pid) for pid in pids)


def call() -> InvocationRecord:
    return InvocationRecord(
        id=new_call_id(), function="noop", mode="warm", kind="async", queued_at=now_ms()
    )


async def one_round(store: Store, calls: int, group: int) -> None:
    """``calls`` accepted in groups, each group's outcomes written with the next's accepts."""
    done: list[InvocationRecord] = []
    ok = StoredResult(status=200, headers=[("content-type", "text/plain")], body=b"ok")
    for start in range(0, calls + group, group):
        recs = [call() for _ in range(min(group, max(calls - start, 0)))]
        accepted = [
            store.enqueue_future(
                r,
                method="POST",
                path="/",
                query="",
                headers=[("content-type", "text/plain")],
                body=str(i).encode(),
                leased_to=("bench", 60_000),
            )
            for i, r in enumerate(recs)
        ]
        for r in done:
            r.status, r.started_at, r.finished_at = "succeeded", now_ms(), now_ms()
            r.wait_ms, r.run_ms, r.cold, r.container = 0.1, 0.2, False, "c0ffee"
            r.http_status, r.response_size = 200, 2
        outcomes = store.finish_many([(r, ok) for r in done]) if done else None
        await asyncio.gather(*accepted, *([outcomes] if outcomes else []))
        done = recs


async def main(args: argparse.Namespace) -> None:
    tag = uuid.uuid4().hex[:8]
    base = args.pg_url.rsplit("/", 1)[0]
    admin = await asyncpg.connect(f"{base}/postgres", timeout=10)
    results: dict[str, dict[str, list[float]]] = {
        side: {"client": [], "server": [], "wall": []} for side in ("rows", "columns")
    }
    try:
        async with contextlib.AsyncExitStack() as stack:
            stores: dict[str, tuple[Store, str]] = {}
            for side in ("rows", "columns"):
                name = f"bench_store_writes_{side}_{tag}"
                url = await stack.enter_async_context(database(args.pg_url, name))
                store = await Store.open(url)
                stack.push_async_callback(store.close)
                if side == "columns":
                    store._typed.clear()
                    store._unnests.clear()
                elif set(store._bulk.values()) - set(store._typed):
                    # a sample of "rows" must be all rows: every bulk statement typed
                    raise SystemExit("the store did not make every row type: see its log")
                await one_round(store, args.group * 4, args.group)  # warm-up
                stores[side] = (store, name)
            for rnd in range(args.rounds):
                order = ("rows", "columns") if rnd % 2 == 0 else ("columns", "rows")
                for side in order:
                    store, name = stores[side]
                    s0 = await server_cpu(admin, name)
                    c0, t0 = time.process_time(), time.perf_counter()
                    await one_round(store, args.calls, args.group)
                    c1, t1 = time.process_time(), time.perf_counter()
                    await store.flush()
                    s1 = await server_cpu(admin, name)
                    got = results[side]
                    got["client"].append((c1 - c0) / args.calls * 1e6)
                    got["wall"].append((t1 - t0) / args.calls * 1e6)
                    if s0 is not None and s1 is not None:
                        got["server"].append((s1 - s0) / args.calls * 1e6)
    finally:
        await admin.close()
    print(f"store writes: {args.calls} async calls a round, groups of {args.group}, PostgreSQL")
    for side, got in results.items():
        line = ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in got.items() if v)
        print(f"{side:8s} per call, medians of {args.rounds} rounds (us): {line}")
    rows, cols = results["rows"], results["columns"]
    ratio = statistics.median(rows["client"]) / statistics.median(cols["client"])
    print(f"store-writes-client-cpu ratio {ratio:.2f} (rows vs columns; no target)")
    if rows["server"] and cols["server"]:
        ratio = statistics.median(rows["server"]) / statistics.median(cols["server"])
        print(f"store-writes-server-cpu ratio {ratio:.2f} (rows vs columns; no target)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--group", type=int, default=28)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--pg-url", default=PG_URL)
    parsed = parser.parse_args()
    if not (
        1 <= parsed.calls <= 100_000 and 1 <= parsed.group <= 1000 and 1 <= parsed.rounds <= 50
    ):
        parser.error("--calls 1..100000, --group 1..1000, --rounds 1..50")
    asyncio.run(main(parsed))
