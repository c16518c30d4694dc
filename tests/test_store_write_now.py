"""Group writes on SQLite written on the event loop's own thread (``Database._write_now``),
against a real SQLite file: the loop never waits there for a lock another process holds,
and the writes reach the database file (the WAL is checkpointed and starts over, it does
not grow with every write)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

from swarmless.records import InvocationRecord, new_call_id, now_ms
from swarmless.store import Store

GROUP = 32


def call() -> InvocationRecord:
    return InvocationRecord(
        id=new_call_id(), function="f", mode="warm", kind="async", queued_at=now_ms()
    )


async def accept(store: Store, n: int = GROUP) -> list[str]:
    """``n`` async calls accepted together (one group): their ids."""
    futs = [
        store.enqueue_future(call(), method="POST", path="/", query="", headers=[], body=b"x" * 256)
        for _ in range(n)
    ]
    return [call_id for call_id, _ in await asyncio.gather(*futs)]


def ids_in(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM async_queue")}


def test_a_write_lock_held_by_another_process_does_not_stop_the_event_loop(
    tmp_path: Path,
) -> None:
    """While another process holds the write lock, a group waits for it in the driver's
    thread (``busy_timeout``, 30 s here), not on the loop's: the loop runs on, and the
    group is written once the lock is released. Waiting on the loop's thread, the loop
    would stand still until the busy timeout ran out (the ticks below never came in time)."""
    db = tmp_path / "swarmless.db"

    async def main() -> None:
        store = await Store.open(f"sqlite:///{db}", busy_timeout=30.0)
        try:
            first = await accept(store)
            holder = sqlite3.connect(db, isolation_level=None)
            try:
                holder.execute("BEGIN IMMEDIATE")
                waiting = asyncio.ensure_future(accept(store, 4))
                ticks = 0

                async def ticking() -> None:
                    nonlocal ticks
                    while ticks < 20:
                        await asyncio.sleep(0.01)
                        ticks += 1

                await asyncio.wait_for(ticking(), 10)
                assert not waiting.done(), "written while another process held the lock"
            finally:
                holder.execute("COMMIT")
                holder.close()
            later = await asyncio.wait_for(waiting, 30)
        finally:
            await store.close()
        assert ids_in(db) == {*first, *later}

    asyncio.run(main())


def wal_generation(wal: Path) -> bytes:
    """The WAL header's checkpoint sequence number and salt: they change each time the WAL
    starts over (its frames all checkpointed into the database file)."""
    with open(wal, "rb") as f:
        return f.read(24)[12:20]


def test_the_wal_is_checkpointed_and_starts_over_while_writes_go_on(tmp_path: Path) -> None:
    """The commits on the loop's thread do not checkpoint; the checkpoint that follows
    them (in the driver's thread, in turn with the writes) moves their pages into the
    database file, and the WAL starts over instead of growing with every write."""
    db = tmp_path / "swarmless.db"
    wal = Path(f"{db}-wal")

    async def main() -> int:
        store = await Store.open(f"sqlite:///{db}")
        groups = 1
        try:
            await accept(store)
            seen = {wal_generation(wal)}
            deadline = asyncio.get_running_loop().time() + 60
            while len(seen) < 3:  # started over twice
                assert asyncio.get_running_loop().time() < deadline, (
                    f"the WAL never started over in {groups} groups of writes"
                )
                assert groups < 20_000
                await accept(store)
                groups += 1
                seen.add(wal_generation(wal))
        finally:
            await store.close()
        return groups

    groups = asyncio.run(main())
    assert len(ids_in(db)) == groups * GROUP


class Turns:
    """Counts the turns of the running event loop while open (a task that yields at each)."""

    def __init__(self) -> None:
        self.count = 0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            self.count += 1
            await asyncio.sleep(0)

    async def __aenter__(self) -> Turns:
        self._task = asyncio.ensure_future(self._tick())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def test_a_group_is_answered_within_a_few_turns_of_the_event_loop(tmp_path: Path) -> None:
    """A group commit answers its callers within a few turns of the event loop, whatever
    else it runs: on a busy gateway every turn is milliseconds (each request, each worker
    frame takes one). Its connection goes back to the pool in the writer's own task,
    not in a task of its own a turn later as SQLAlchemy's ``async with`` does, which kept
    the write turn and the answers two turns more (``Database._connected``). Counted in
    turns, not in time: the count does not depend on the machine's load."""
    db = tmp_path / "swarmless.db"

    async def main() -> list[int]:
        store = await Store.open(f"sqlite:///{db}")
        try:
            async with Turns() as turns:
                await accept(store)  # the writer's connection and statements are ready
                taken = []
                for _ in range(5):
                    before = turns.count
                    await accept(store)
                    taken.append(turns.count - before)
            return taken
        finally:
            await store.close()

    taken = asyncio.run(main())
    assert max(taken) <= 4, taken  # 3 here; 6 with SQLAlchemy's close


def test_a_writes_hook_runs_in_the_commits_own_turn_once_even_if_cancelled(
    tmp_path: Path,
) -> None:
    """``then`` (``GroupCommit.submit``): called once the write is in, in the same turn of
    the event loop as the commit, before any done callback of its future (those run a
    turn later); called once too for a write whose future was cancelled meanwhile (as a
    done callback would be: the async runner counts what it hands over by it)."""
    db = tmp_path / "swarmless.db"

    async def main() -> list[tuple[str, int, object]]:
        store = await Store.open(f"sqlite:///{db}")
        seen: list[tuple[str, int, object]] = []
        try:
            async with Turns() as turns:

                def hook(name: str) -> Any:
                    def then(f: asyncio.Future[tuple[str, bool]]) -> None:
                        outcome = "cancelled" if f.cancelled() else f.result()[1]
                        seen.append((name, turns.count, outcome))

                    return then

                kept, gone = (
                    store.enqueue_future(
                        call(), method="POST", path="/", query="", headers=[], body=b"", then=then
                    )
                    for then in (hook("kept"), hook("gone"))
                )
                kept.add_done_callback(lambda f: seen.append(("done", turns.count, f.result()[1])))
                gone.cancel()
                await kept
                await asyncio.sleep(0)
            return seen
        finally:
            await store.close()

    seen = asyncio.run(main())
    assert [name for name, _, _ in seen] == ["kept", "gone", "done"], seen
    (_, then_turn, created), (_, _, cancelled), (_, done_turn, _) = seen
    assert created is True
    assert cancelled == "cancelled"
    assert then_turn < done_turn, seen
    assert len(ids_in(db)) == 2  # the cancelled one's write went in with its group
