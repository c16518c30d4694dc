"""The durable async queue and the scheduler, on SQLite and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import select

from swarmless.dispatch.scheduler import Scheduler, due_slot, next_fire
from swarmless.records import InvocationRecord, new_call_id, now_ms
from swarmless.spec import FunctionSpec
from swarmless.store import Store, StoredResult
from swarmless.store.schema import async_queue
from tests.test_store import run, url  # noqa: F401  fixtures


def arec(function: str = "echo", **kw: Any) -> InvocationRecord:
    return InvocationRecord(
        id=kw.pop("id", new_call_id()),
        function=function,
        mode="warm",
        kind="async",
        queued_at=kw.pop("queued_at", now_ms()),
        **kw,
    )


async def put(store: Store, r: InvocationRecord, key: str | None = None) -> tuple[str, bool]:
    return await store.enqueue(
        r,
        method="POST",
        path="/p",
        query="q=1",
        headers=[("a", "b")],
        body=b"data",
        idempotency_key=key,
    )


def test_enqueue_claim_finish(url: str) -> None:  # noqa: F811
    async def main() -> None:
        async with await Store.open(url) as store:
            r = arec()
            assert await put(store, r) == (r.id, True)
            assert (await store.get_invocation(r.id)).status == "queued"  # type: ignore[union-attr]
            assert await store.queued_counts() == {"echo": 1}
            [c] = await store.claim("gw1", {"echo": (10, 60_000)})
            assert (c.id, c.method, c.path, c.query, c.body, c.attempt) == (
                r.id,
                "POST",
                "/p",
                "q=1",
                b"data",
                1,
            )
            assert c.headers == [("a", "b")]
            assert await store.claim("gw2", {"echo": (10, 60_000)}) == []  # leased
            r.status = "succeeded"
            await store.finish(r, StoredResult(status=201, headers=[("x", "y")], body=b"ok"))
            assert (await store.get_invocation(r.id)).status == "succeeded"  # type: ignore[union-attr]
            assert await store.get_result(r.id) == StoredResult(
                status=201, headers=[("x", "y")], body=b"ok"
            )
            assert await store.queued_counts() == {}

    run(main())


def test_many_enqueues_group_commit(url: str) -> None:  # noqa: F811
    async def main() -> None:
        async with await Store.open(url) as store:
            recs = [arec() for _ in range(300)]
            got = await asyncio.gather(*(put(store, r) for r in recs))
            assert [g[0] for g in got] == [r.id for r in recs]
            claimed = await store.claim("gw", {"echo": (1000, 60_000)})
            assert {c.id for c in claimed} == {r.id for r in recs}

    run(main())


def test_idempotency_key(url: str) -> None:  # noqa: F811
    async def main() -> None:
        async with await Store.open(url) as store:
            first, second = arec(), arec()
            assert await put(store, first, key="k1") == (first.id, True)
            assert await put(store, second, key="k1") == (first.id, False)
            assert await store.get_invocation(second.id) is None
            # The same key for another function is another call.
            other = arec("other")
            assert await put(store, other, key="k1") == (other.id, True)
            # Concurrent duplicates: exactly one is created.
            dupes = [arec() for _ in range(10)]
            got = await asyncio.gather(*(put(store, d, key="k2") for d in dupes))
            assert len({g[0] for g in got}) == 1
            assert sum(created for _, created in got) == 1

    run(main())


def test_an_outcome_keeps_a_queue_row_only_for_a_key_or_a_redrive(url: str) -> None:  # noqa: F811
    """Outcomes written together (one statement per table on PostgreSQL): the queue row of
    a call that succeeded goes, unless the call has an idempotency key (then it stays,
    done, without its body, and the key still answers with the first call); a dead call
    keeps its row and its request, for a redrive."""

    async def main() -> None:
        async with await Store.open(url) as store:
            plain, keyed, dead = arec(), arec(), arec()
            await put(store, plain)
            await put(store, keyed, key="once")
            await put(store, dead)
            assert len(await store.claim("gw", {"echo": (10, 60_000)})) == 3
            plain.status = keyed.status = "succeeded"
            dead.status, dead.error = "dead", "dead after 1 attempt"
            ok = StoredResult(status=200, headers=[], body=b"ok")
            await store.finish_many([(plain, ok), (keyed, ok), (dead, None)])
            async with store._read() as conn:
                rows = {
                    r.id: (r.state, bytes(r.body), r.lease_owner)
                    for r in await conn.execute(select(async_queue))
                }
            assert rows == {keyed.id: ("done", b"", None), dead.id: ("done", b"data", None)}
            for r in (plain, keyed):
                assert (await store.get_invocation(r.id)).status == "succeeded"  # type: ignore[union-attr]
                assert await store.get_result(r.id) == ok
            again = arec()
            assert await put(store, again, key="once") == (keyed.id, False)
            assert await store.claim("gw", {"echo": (10, 60_000)}) == []
            assert await store.redrive(dead.id)
            [c] = await store.claim("gw", {"echo": (10, 60_000)})
            assert (c.id, c.body) == (dead.id, b"data")

    run(main())


def test_retry_later_lease_expiry_release_and_redrive(url: str) -> None:  # noqa: F811
    async def main() -> None:
        async with await Store.open(url) as store:
            r = arec()
            await put(store, r)
            now = now_ms()
            [c] = await store.claim("gw1", {"echo": (5, 1_000)}, now=now)
            r.status, r.error = "queued", "attempt 1 failed"
            await store.retry_later(r, now + 10_000)
            assert await store.claim("gw1", {"echo": (5, 1_000)}, now=now + 5_000) == []
            [c] = await store.claim("gw1", {"echo": (5, 1_000)}, now=now + 10_000)
            assert c.attempt == 2
            # A lease that expires is claimable by another gateway.
            [c] = await store.claim("gw2", {"echo": (5, 1_000)}, now=now + 11_001)
            assert c.attempt == 3
            # A gateway restarting gives its leases back at once.
            assert await store.release("gw2") == 1
            [c] = await store.claim("gw3", {"echo": (5, 60_000)}, now=now + 11_002)
            # Dead, then redriven with a fresh budget and its request kept.
            r.status, r.error = "dead", "dead after 3 attempts"
            await store.finish(r)
            assert await store.claim("gw3", {"echo": (5, 1_000)}) == []
            assert await store.redrive(r.id)
            assert (await store.get_invocation(r.id)).status == "queued"  # type: ignore[union-attr]
            [c] = await store.claim("gw3", {"echo": (5, 1_000)})
            assert (c.attempt, c.body) == (1, b"data")
            assert not await store.redrive(r.id)  # leased, not done

    run(main())


def test_any_due_sees_what_a_sweep_would_claim_and_nothing_else(url: str) -> None:  # noqa: F811
    """The runner's idle sweep asks ``any_due`` first: it must say yes whenever a claim
    would find a call (queued and due, a lease expired), and no otherwise (nothing, a call
    not due yet, a live lease, a dead call, a finished one)."""

    async def main() -> None:
        async with await Store.open(url) as store:
            assert not await store.any_due(now=now_ms())
            r = arec()
            await put(store, r)
            now = now_ms()
            assert await store.any_due(now=now)
            await store.claim("gw1", {"echo": (5, 1_000)}, now=now)
            assert not await store.any_due(now=now + 999)  # leased, the lease alive
            assert await store.any_due(now=now + 1_001)  # the lease expired
            r.status, r.error = "queued", "attempt 1 failed"
            await store.retry_later(r, now + 10_000)
            assert not await store.any_due(now=now + 9_999)  # a retry not due yet
            assert await store.any_due(now=now + 10_000)
            await store.claim("gw1", {"echo": (5, 60_000)}, now=now + 10_000)
            r.status, r.error = "dead", "dead after 2 attempts"
            await store.finish(r)
            assert not await store.any_due(now=now + 100_000)  # dead: redriven by hand only
            other = arec(function="other")
            await put(store, other)
            await store.claim("gw1", {"other": (5, 60_000)})
            other.status = "succeeded"
            await store.finish(other)
            assert not await store.any_due(now=now_ms() + 100_000)

    run(main())


def test_claim_respects_per_function_limits(url: str) -> None:  # noqa: F811
    async def main() -> None:
        async with await Store.open(url) as store:
            for _ in range(5):
                await put(store, arec("a"))
                await put(store, arec("b"))
            got = await store.claim("gw", {"a": (2, 60_000), "b": (0, 60_000)})
            assert [c.function for c in got] == ["a", "a"]

    run(main())


def test_concurrent_claims_never_share_a_call(url: str) -> None:  # noqa: F811
    async def main() -> None:
        async with await Store.open(url) as one, await Store.open(url) as two:
            for _ in range(40):
                await put(one, arec())
            ids: list[str] = []
            for _ in range(20):  # two stores racing; each claim takes at most 3
                got = await asyncio.gather(
                    *(s.claim(f"gw{i}", {"echo": (3, 60_000)}) for i, s in enumerate([one, two]))
                )
                ids += [c.id for batch in got for c in batch]
                if len(ids) >= 40:
                    break
            assert len(ids) == len(set(ids)) == 40

    run(main())


# -- schedules ------------------------------------------------------------------------------

T0 = 1_800_000_000_000  # 2027-01-15T08:00:00Z


def test_cron_slots() -> None:
    assert next_fire("*/5 * * * *", "UTC", T0) == T0 + 5 * 60_000
    assert due_slot("*/5 * * * *", "UTC", T0, T0 + 4 * 60_000) is None
    assert due_slot("*/5 * * * *", "UTC", T0, T0 + 17 * 60_000) == T0 + 15 * 60_000
    # Time zones: 09:00 in Paris is 08:00 UTC in January.
    assert next_fire("0 9 * * *", "Europe/Paris", T0 - 1) == T0


def test_scheduler_fires_once_and_catches_up_late(url: str) -> None:  # noqa: F811
    async def main() -> None:
        async with await Store.open(url) as store:
            spec = FunctionSpec.from_dict({"name": "tick", "image": "b", "schedule": "*/5 * * * *"})
            functions = {"tick": (spec, 1)}
            sched = Scheduler(store, functions)
            assert await sched.tick(T0) == []  # deployed: counts from now
            assert await sched.tick(T0 + 4 * 60_000) == []
            [first] = await sched.tick(T0 + 5 * 60_000 + 200)
            assert not (await store.get_invocation(first)).late  # type: ignore[union-attr]
            assert await sched.tick(T0 + 5 * 60_000 + 900) == []  # no double fire
            # A restart (a new scheduler on the same store) does not fire again...
            assert await Scheduler(store, functions).tick(T0 + 6 * 60_000) == []
            # ...and after 20 minutes down, the latest missed slot fires once, late.
            [late] = await Scheduler(store, functions).tick(T0 + 27 * 60_000)
            assert (await store.get_invocation(late)).late  # type: ignore[union-attr]
            assert await Scheduler(store, functions).tick(T0 + 28 * 60_000) == []
            listed = await sched.list()
            assert listed[0].function == "tick"
            assert listed[0].next_fire.timestamp() * 1000 >= T0 + 30 * 60_000
            # Two gateways on one store firing the same slot: one call.
            a, b = Scheduler(store, functions), Scheduler(store, functions)
            fired = await asyncio.gather(a.tick(T0 + 30 * 60_000), b.tick(T0 + 30 * 60_000))
            assert sum(len(f) for f in fired) == 1

    run(main())


def test_a_claim_loads_a_bounded_amount_of_bodies(url: str) -> None:  # noqa: F811
    """Calls with large bodies are taken a few at a time (at least one), bodies intact."""

    async def main() -> None:
        async with await Store.open(url) as store:
            big = [arec(queued_at=now_ms() - 100 + i) for i in range(3)]
            bodies = {r.id: bytes([i]) * 600_000 for i, r in enumerate(big)}
            for r in big:
                await store.enqueue(
                    r, method="POST", path="", query="", headers=[], body=bodies[r.id]
                )
            wants = {"echo": (10, 60_000)}
            first = await store.claim("gw", wants, max_bytes=1_000_000)
            assert [c.id for c in first] == [big[0].id]
            assert first[0].body == bodies[big[0].id]
            # Over the budget on its own: still one at a time, never none.
            second = await store.claim("gw", wants, max_bytes=100)
            assert [c.id for c in second] == [big[1].id]
            third = await store.claim("gw", wants, max_bytes=10_000_000)
            assert [(c.id, c.body) for c in third] == [(big[2].id, bodies[big[2].id])]

    run(main())


def test_a_result_wait_is_woken_by_the_outcome_not_by_polling(url: str) -> None:  # noqa: F811
    async def main() -> None:
        async with await Store.open(url) as store:
            r = arec()
            await put(store, r)
            await store.claim("gw", {"echo": (1, 60_000)})
            with store.watch(r.id) as changed:
                assert store.stats().watchers == 1
                t0 = time.monotonic()
                waiting = asyncio.ensure_future(changed.wait(t0 + 30))
                r.status = "succeeded"
                await store.finish(r, StoredResult(status=200, headers=[], body=b"ok"))
                await asyncio.wait_for(waiting, 5)
                # Woken by the finish, well before the fallback re-read (5 s).
                assert time.monotonic() - t0 < 2
            assert store.stats().watchers == 0

    run(main())
