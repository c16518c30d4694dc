"""The outcome of a call's child containers in the store (schema v5): kept, read back, swept
with the call's record, and a v4 database upgraded (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarmless.records import InvocationRecord, new_call_id, now_ms
from swarmless.retention import Retention
from swarmless.store import ChildOutcome, Store
from swarmless.store.schema import SCHEMA_VERSION


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/swarmless.db"
        return
    yield request.getfixturevalue("postgres_database")


def _outcome(call_id: str, container: str, **kw: object) -> ChildOutcome:
    return ChildOutcome(call_id=call_id, container=container, finished_at=now_ms(), **kw)  # type: ignore[arg-type]


def test_outcomes_are_kept_by_call_and_replaced_by_a_later_report(url: str) -> None:
    async def main() -> None:
        async with await Store.open(url) as store:
            a, b = new_call_id(), new_call_id()
            await store.record_child(_outcome(a, "c1", image="busybox", exit_code=0))
            await store.record_child(_outcome(a, "c2", exit_code=137, killed=True, error="x"))
            await store.record_child(_outcome(b, "c3", exit_code=1))
            await store.record_child(_outcome(b, "c3", exit_code=2, duration_ms=5.0))
            found = await store.children_of([a, b, "nobody"])
            assert [c.container for c in found[a]] == ["c1", "c2"]
            assert found[a][1].killed
            assert found[a][1].error == "x"
            assert [(c.exit_code, c.duration_ms) for c in found[b]] == [(2, 5.0)]
            assert "nobody" not in found
            assert found[a][0].to_dict()["image"] == "busybox"
            assert "call_id" not in found[a][0].to_dict()
            assert await store.children_of([]) == {}

    asyncio.run(main())


def test_outcomes_go_with_their_record(tmp_path: Path) -> None:
    async def main() -> None:
        async with await Store.open(f"sqlite:///{tmp_path}/s.db") as store:
            old = InvocationRecord(
                id=f"{now_ms() - 10 * 86400_000:012x}-000000000001",
                function="f",
                mode="cgi",
                status="succeeded",
            )
            await store.save(old)
            new = new_call_id()
            await store.record_child(_outcome(old.id, "gone"))
            await store.record_child(_outcome(new, "kept"))
            await store.sweep(Retention(records_age=86400))
            found = await store.children_of([old.id, new])
            assert list(found) == [new]

    asyncio.run(main())


def test_a_v4_store_gets_the_children_table(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text

    from swarmless.store.schema import _stamp, metadata

    engine = create_engine(f"sqlite:///{tmp_path}/swarmless.db")
    with engine.begin() as conn:
        metadata.create_all(conn)
        conn.execute(text("DROP TABLE invocation_children"))
        _stamp(conn, 4)
    engine.dispose()

    async def main() -> None:
        async with await Store.open(f"sqlite:///{tmp_path}/swarmless.db") as store:
            assert await store.get_meta("schema_version") == str(SCHEMA_VERSION) == "5"
            await store.record_child(_outcome("call", "c"))
            assert [c.container for c in (await store.children_of(["call"]))["call"]] == ["c"]

    asyncio.run(main())
