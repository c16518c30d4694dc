"""Async calls in batches: handed over at accept, claimed ahead, outcomes group-committed,
given back at a graceful stop (store on SQLite and a real PostgreSQL; the runner end to end
on the real engine)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import docker
import httpx
import pytest

from swarmless.dispatch.async_limits import (
    AHEAD,
    HAND_OVER,
    HAND_OVER_MAX,
    LEASE_SLACK,
    hand_over_lease_ms,
    hand_over_limit,
    lease_ms,
)
from swarmless.exceptions import SwarmlessError
from swarmless.records import InvocationRecord, now_ms
from swarmless.spec import FunctionSpec
from swarmless.store import Store, StoredResult
from tests.conftest import handler_image
from tests.gateway_harness import TOKEN, RunningGateway
from tests.test_async import HANDLERS, Sink, deploy
from tests.test_queue import arec, put
from tests.test_store import run, url  # noqa: F401  fixtures
from tests.waiting import wait_until

# -- the store ----------------------------------------------------------------------------


def test_a_call_written_leased_is_its_owners_until_the_lease_passes(url: str) -> None:  # noqa: F811
    async def main() -> None:
        async with await Store.open(url) as store:
            r = arec()
            before = now_ms()
            got = await store.enqueue(
                r, method="POST", path="/p", query="", headers=[], body=b"x",
                leased_to=("gw1", 10_000),
            )  # fmt: skip
            assert got == (r.id, True)
            assert await store.queued_counts() == {"echo": 1}  # waiting: leased counts
            assert await store.claim("gw2", {"echo": (5, 60_000)}) == []
            assert await store.claim("gw1", {"echo": (5, 60_000)}) == []  # held, not due
            # Its first attempt was the hand-over: a claim after the lease is the second.
            [c] = await store.claim("gw2", {"echo": (5, 60_000)}, now=before + 20_000)
            assert (c.id, c.attempt, c.body) == (r.id, 2, b"x")

    run(main())


def test_give_back_returns_calls_not_started_uncounted(url: str) -> None:  # noqa: F811
    async def main() -> None:
        async with await Store.open(url) as store:
            recs = [arec() for _ in range(3)]
            for r in recs:
                await put(store, r)
            claimed = await store.claim("gw1", {"echo": (3, 60_000)})
            assert len(claimed) == 3
            ids = [c.id for c in claimed[:2]]
            assert await store.give_back("gw2", ids) == 0  # not its leases
            assert await store.give_back("gw1", ids) == 2
            assert await store.give_back("gw1", ids) == 0  # not leased any more
            for i in ids:
                assert (await store.get_invocation(i)).status == "queued"  # type: ignore[union-attr]
            again = await store.claim("gw2", {"echo": (5, 60_000)})
            assert sorted(c.id for c in again) == sorted(ids)
            assert {c.attempt for c in again} == {1}  # the first claim was not counted

    run(main())


def test_a_record_says_running_once_its_call_starts(url: str) -> None:  # noqa: F811
    async def main() -> None:
        async with await Store.open(url) as store:
            r, done = arec(), arec()
            for x in (r, done):
                await put(store, x)
            assert len(await store.claim("gw", {"echo": (5, 60_000)})) == 2
            # Claimed is not started: still queued.
            assert (await store.get_invocation(r.id)).status == "queued"  # type: ignore[union-attr]
            done.status, done.finished_at = "succeeded", now_ms()
            await store.finish(done)
            store.mark_running(r.id)
            store.mark_running(done.id)  # too late: a final record is left alone
            await put(store, arec())  # a write after the marks: they are in by its commit
            assert (await store.get_invocation(r.id)).status == "running"  # type: ignore[union-attr]
            assert (await store.get_invocation(done.id)).status == "succeeded"  # type: ignore[union-attr]

    run(main())


def test_a_refused_call_in_a_group_fails_alone(url: str) -> None:  # noqa: F811
    """Calls accepted together share one transaction; one the database refuses (its id is
    taken) fails in its own caller, and the others of the same group are written."""

    async def main() -> None:
        async with await Store.open(url) as store:
            first = arec()
            await put(store, first)
            others = [arec() for _ in range(20)]
            twin = arec(id=first.id)
            got = await asyncio.gather(
                *(put(store, r) for r in [*others[:10], twin, *others[10:]]),
                return_exceptions=True,
            )
            refused = [g for g in got if isinstance(g, BaseException)]
            assert len(refused) == 1, got
            assert isinstance(refused[0], SwarmlessError), got
            claimed = await store.claim("gw", {"echo": (100, 60_000)})
            assert sorted(c.id for c in claimed) == sorted(r.id for r in [first, *others])

    run(main())


def test_outcomes_that_end_together_are_all_written(url: str) -> None:  # noqa: F811
    async def main() -> None:
        async with await Store.open(url) as store:
            recs = [arec() for _ in range(60)]
            await asyncio.gather(*(put(store, r) for r in recs))
            claimed = await store.claim("gw", {"echo": (100, 60_000)})
            assert len(claimed) == 60
            for i, r in enumerate(recs):
                r.status = "succeeded" if i % 3 else "dead"
                r.finished_at = now_ms()
            await asyncio.gather(
                *(
                    store.finish(r, StoredResult(status=200, headers=[], body=r.id.encode()))
                    if r.status == "succeeded"
                    else store.finish(r)
                    for r in recs
                )
            )
            assert await store.queued_counts() == {}
            for r in recs:
                got = await store.get_invocation(r.id)
                assert got is not None
                assert got.status == r.status
                result = await store.get_result(r.id)
                assert (result.body if result else None) == (
                    r.id.encode() if r.status == "succeeded" else None
                )

    run(main())


def test_outcomes_written_as_one_op_all_or_none(url: str) -> None:  # noqa: F811
    """``finish_many``: the outcomes of many calls (successes and dead ones, mixed) in one
    op, every record, result and queue row written; a batch holding a value the database
    refuses writes none of them, and the calls stay leased (written one by one, the others
    then go through)."""

    async def main() -> None:
        async with await Store.open(url) as store:
            recs = [arec() for _ in range(30)]
            await asyncio.gather(*(put(store, r) for r in recs))
            assert len(await store.claim("gw", {"echo": (100, 60_000)})) == 30
            outcomes: list[tuple[InvocationRecord, StoredResult | None]] = []
            for i, r in enumerate(recs):
                r.status, r.finished_at = ("succeeded" if i % 4 else "dead"), now_ms()
                body = r.id.encode()
                outcomes.append((r, StoredResult(status=200, headers=[("k", "v")], body=body)))
            outcomes = [(r, None if r.status == "dead" else res) for r, res in outcomes]
            bad = arec()
            await put(store, bad)
            assert len(await store.claim("gw", {"echo": (10, 60_000)})) == 1
            bad.status, bad.finished_at = "succeeded", now_ms()
            bad.exit_code = 1 << 40  # out of an INTEGER column's range on PostgreSQL
            if store.dialect == "postgresql":
                with pytest.raises(SwarmlessError):
                    await store.finish_many([*outcomes[:5], (bad, None)])
                for r, _ in outcomes[:5]:
                    got = await store.get_invocation(r.id)
                    assert got is not None
                    assert got.status == "queued"
            await store.finish_many(outcomes)
            assert await store.queued_counts() == ({"echo": 1})  # the bad one, still leased
            for r, res in outcomes:
                got = await store.get_invocation(r.id)
                assert got is not None
                assert got.status == r.status
                kept = await store.get_result(r.id)
                if res is None:
                    assert kept is None
                else:
                    assert kept is not None
                    assert (kept.status, kept.headers, kept.body) == (
                        200,
                        [("k", "v")],
                        r.id.encode(),
                    )

    run(main())


def test_hand_over_goes_deeper_than_a_claim_bounded_with_a_lease_to_match() -> None:
    """A burst is handed over deeper than a claim holds (``HAND_OVER`` x the limit), never
    more than ``HAND_OVER_MAX`` calls (nor fewer than a claim); each call's lease covers
    the rounds of the limit held before it, never shorter than a claim's lease."""
    small = FunctionSpec(name="s", image="i", mode="warm", handler="h:h", concurrency=2,
                         max_containers=1, timeout=10)  # fmt: skip
    big = FunctionSpec(name="b", image="i", mode="warm", handler="h:h", concurrency=10,
                       max_containers=100, timeout=10)  # fmt: skip
    assert hand_over_limit(small) == HAND_OVER * 2 > AHEAD * 2
    assert hand_over_limit(big) == max(AHEAD * 1000, HAND_OVER_MAX)
    assert hand_over_lease_ms(small, 0) == lease_ms(small)  # the first rounds: a claim's
    deep = hand_over_lease_ms(small, HAND_OVER * 2 - 1)
    assert deep == int(((HAND_OVER + 1) * 10 + LEASE_SLACK) * 1000) > lease_ms(small)


# -- the runner, end to end ----------------------------------------------------------------


@pytest.fixture(scope="module")
def image(build_image: Callable[..., str]) -> str:
    return handler_image(build_image, "async-batch", HANDLERS)


@pytest.fixture
def gw(
    engine: docker.DockerClient, labels: dict[str, str], tmp_path: Path
) -> Iterator[RunningGateway]:
    g = RunningGateway(tmp_path, labels).start()
    yield g
    g.stop(engine)


def _accept(gw: RunningGateway, function: str, n: int) -> list[str]:
    with gw.http() as http:
        ids = []
        for i in range(n):
            r = http.post(f"/async-function/{function}", content=str(i).encode())
            assert r.status_code == 202, r.text
            ids.append(r.headers["x-call-id"])
    return ids


def test_a_burst_runs_every_call_once(
    gw: RunningGateway, image: str, engine: docker.DockerClient
) -> None:
    """More calls than the runner holds (``HAND_OVER`` x the limit): some are handed over
    at accept, the rest claimed in batches; each runs once, at its first attempt, and its
    outcome is written."""
    n = HAND_OVER * 2 + 40  # over hand_over_limit: the limit is 2 (concurrency 2, 1 container)
    network = engine.networks.get(gw.settings.network)
    witness = Sink(network.attrs["IPAM"]["Config"][0]["Gateway"])  # reachable from containers
    try:
        deploy(gw, name="burst", image=image, mode="warm", handler="handler:handle",
               env={"WITNESS": witness.url, "DELAY": "0.01"}, concurrency=2,
               max_containers=1, min_containers=1)  # fmt: skip
        ids: list[str] = []
        with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {TOKEN}"}) as h:

            def accept(i: int) -> str:
                r = h.post("/async-function/burst", content=str(i).encode())
                assert r.status_code == 202, r.text
                return str(r.headers["x-call-id"])

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                ids = list(pool.map(accept, range(n)))
        with gw.http() as http:

            def all_done() -> bool:
                rows = http.get("/invocations", params={"function": "burst", "limit": 500}).json()
                return sum(r["status"] == "succeeded" for r in rows if r["id"] in set(ids)) == n

            wait_until(all_done, 180, f"{n} calls succeeded", interval=0.2)
            rows = http.get("/invocations", params={"function": "burst", "limit": 500}).json()
        mine = [r for r in rows if r["id"] in set(ids)]
        assert {r["attempt"] for r in mine} == {1}, Counter(r["attempt"] for r in mine)
        ran = Counter(body.decode() for _, body in witness.posts)
        assert set(ran) == set(ids)
        assert set(ran.values()) == {1}, ran.most_common(3)
    finally:
        witness.close()


def test_a_graceful_stop_gives_back_the_calls_not_started(
    engine: docker.DockerClient, labels: dict[str, str], tmp_path: Path, image: str
) -> None:
    """Calls held in memory but not started go back to the queue at a graceful stop, their
    attempt not counted; none is left leased, none lost (a call that succeeded has its
    record, and its queue row is gone: nothing remembers a key of it)."""
    g = RunningGateway(tmp_path, labels).start()
    try:
        deploy(g, name="slow", image=image, mode="warm", handler="handler:handle",
               env={"DELAY": "1"}, async_concurrency=1, max_containers=1)  # fmt: skip
        ids = _accept(g, "slow", 6)

        def one_running() -> bool:
            with g.http() as http:
                rows = http.get("/invocations", params={"function": "slow", "limit": 50}).json()
            return any(r["status"] == "succeeded" for r in rows)

        wait_until(one_running, 90, "a call finished")
    finally:
        g.stop(engine)
    db = sqlite3.connect(tmp_path / "swarmless.db")
    try:
        rows = db.execute(
            "SELECT id, state, attempt, lease_owner FROM async_queue WHERE function = 'slow'"
        ).fetchall()
        succeeded = {
            r[0]
            for r in db.execute(
                "SELECT id FROM invocations WHERE function = 'slow' AND status = 'succeeded'"
            )
        }
    finally:
        db.close()
    assert succeeded, "no call succeeded"
    assert not succeeded & {r[0] for r in rows}, (succeeded, rows)
    assert sorted([r[0] for r in rows] + list(succeeded)) == sorted(ids), "a call was lost"
    states = Counter(r[1] for r in rows)
    assert "leased" not in states, rows
    assert "done" not in states, rows
    assert states["queued"] >= 1, states
    assert {r[2] for r in rows if r[1] == "queued"} == {0}, rows  # not counted
    assert {r[3] for r in rows if r[1] == "queued"} == {None}, rows


def test_every_value_survives_a_group_commit_exactly(url: str) -> None:  # noqa: F811
    """Calls accepted and finished together (one group commit each way, their rows in one
    statement per table: on PostgreSQL one array of rows of the statement's own composite
    type) read back exactly: every byte value, a body of 640 KB, quotes, backslashes,
    control characters, text beyond Latin-1, floats, booleans and NULLs."""

    async def main() -> None:
        async with await Store.open(url) as store:
            if store.dialect == "postgresql":  # every bulk statement has its row type
                assert set(store._bulk.values()) <= set(store._typed)
            await every_value_survives(store)

    run(main())


def test_without_the_right_to_make_types_rows_go_as_arrays(
    postgres_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A store whose PostgreSQL role may write the tables but not create types (a gateway
    run with least privilege, the schema made by an administrator) opens all the same,
    says so in the log, and writes its rows as one array per column: every value intact."""
    role = f"swarmless_test_dml_{uuid.uuid4().hex[:8]}"
    admin_url = postgres_database.replace("postgresql+asyncpg://", "postgresql://")
    name = admin_url.rsplit("/", 1)[1]
    limited = admin_url.replace("postgres@", f"{role}@", 1)
    assert limited != admin_url, admin_url

    async def main() -> None:
        async with await Store.open(postgres_database):
            pass  # the schema, and the row types, made by the administrator
        admin = await asyncpg.connect(admin_url)
        created = False
        try:
            types = await admin.fetch(
                "SELECT typname FROM pg_type WHERE typname LIKE 'swarmless\\_%' AND typtype = 'c'"
            )
            assert types, "no row type was made"
            for t in types:
                await admin.execute(f'DROP TYPE "{t["typname"]}"')
            await admin.execute(f"CREATE ROLE {role} LOGIN")
            created = True
            await admin.execute(f'GRANT CONNECT ON DATABASE "{name}" TO {role}')
            await admin.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
            await admin.execute(
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"
            )
            with caplog.at_level(logging.WARNING, logger="swarmless.store"):
                async with await Store.open(limited) as store:
                    assert store._typed == {}
                    await every_value_survives(store)
            assert "its rows go as arrays per column" in caplog.text
        finally:
            if created:
                await admin.execute(f"DROP OWNED BY {role}")
                await admin.execute(f"DROP ROLE {role}")
            await admin.close()

    run(main())


async def every_value_survives(store: Store) -> None:
    """The body of the two tests above."""
    awkward = [
        '"q"',
        "back\\slash \\x00ff",
        "tab\tnew\nline",
        "snow\u2603man \U0001f600",
        '{"a":[1]}',
    ]
    big = bytes(range(256)) * 2500  # 640 KB, alone in its groups

    recs = [arec(parent=awkward[i % 5], late=i % 2 == 0) for i in range(12)]
    bodies = [bytes(range(256)) + str(i).encode() for i in range(11)] + [big]

    def accept(i: int, r: InvocationRecord) -> asyncio.Future[tuple[str, bool]]:
        return store.enqueue_future(
            r,
            method="POST",
            path=f"/p/{awkward[i % 5]}",
            query=awkward[(i + 1) % 5],
            headers=[("x-v", awkward[(i + 2) % 5]), ("x-e", "")],
            body=bodies[i],
            callback_url=None if i % 3 else f"http://cb/{awkward[i % 5]}",
            leased_to=None,
        )

    # Eleven in one group, then the big one alone.
    futures = [accept(i, r) for i, r in enumerate(recs[:-1])]
    assert [await f for f in futures] == [(r.id, True) for r in recs[:-1]]
    assert await accept(len(recs) - 1, recs[-1]) == (recs[-1].id, True)
    claimed = {c.id: c for c in await store.claim("gw", {"echo": (100, 60_000)})}
    assert sorted(claimed) == sorted(r.id for r in recs)
    for i, r in enumerate(recs):
        c = claimed[r.id]
        assert (c.path, c.query, c.body, c.parent, c.late) == (
            f"/p/{awkward[i % 5]}",
            awkward[(i + 1) % 5],
            bodies[i],
            awkward[i % 5],
            i % 2 == 0,
        )
        assert c.headers == [("x-v", awkward[(i + 2) % 5]), ("x-e", "")]
        assert c.callback_url == (None if i % 3 else f"http://cb/{awkward[i % 5]}")
    outcomes: list[tuple[InvocationRecord, StoredResult | None]] = []
    for i, r in enumerate(recs):
        r.status, r.started_at, r.finished_at = "succeeded", now_ms(), now_ms() + 1
        r.wait_ms, r.run_ms, r.cold, r.exit_code = 0.125 * i, 1e-9, False, -i
        r.error, r.container = awkward[(i + 3) % 5], None
        r.init_ms, r.http_status, r.response_size = 0.5, 200 + i, len(bodies[i])
        r.attempt, r.callback = 2 + i, f"delivered {awkward[i % 5]}"
        headers = [("x-r", awkward[(i + 4) % 5])]
        outcomes.append((r, StoredResult(status=200 + i, headers=headers, body=bodies[i])))
    await asyncio.gather(*(store.finish_many([o]) for o in outcomes[:-1]))
    await store.finish_many(outcomes[-1:])
    for i, (r, res) in enumerate(outcomes):
        got = await store.get_invocation(r.id)
        assert got is not None
        assert (got.status, got.wait_ms, got.run_ms, got.cold, got.exit_code) == (
            "succeeded",
            0.125 * i,
            1e-9,
            False,
            -i,
        )
        assert (got.error, got.parent, got.container) == (r.error, r.parent, None)
        assert got == r  # every field of the outcome, and the accept's identity
        kept = await store.get_result(r.id)
        assert kept is not None
        assert res is not None
        assert (kept.status, kept.headers, kept.body) == (res.status, res.headers, res.body)
    assert await store.queued_counts() == {}
