"""The store's write turn: a free turn is taken at once, a held one waited for at most
``write_timeout`` (then 503, nothing written), and a write waiting for it goes through
once the turn is free again."""

from __future__ import annotations

import asyncio
from pathlib import Path

from swarmless.exceptions import GatewayUnavailable
from swarmless.records import InvocationRecord, new_call_id, now_ms
from swarmless.store import Store


def _rec() -> InvocationRecord:
    return InvocationRecord(
        id=new_call_id(), function="echo", mode="warm", kind="async", queued_at=now_ms()
    )


async def _enqueue(store: Store, rec: InvocationRecord) -> tuple[str, bool]:
    return await store.enqueue(rec, method="POST", path="", query="", headers=[], body=b"x")


def test_write_turn_bounded_then_taken(tmp_path: Path) -> None:
    async def main() -> None:
        async with await Store.open(f"sqlite:///{tmp_path}/swarmless.db") as store:
            store._write_timeout = 0.2
            first = _rec()
            assert await _enqueue(store, first) == (first.id, True)  # the turn is free
            await store._write_lock.acquire()  # another write holds the turn
            refused, later = _rec(), _rec()
            try:
                try:
                    await _enqueue(store, refused)
                except GatewayUnavailable:
                    pass
                else:
                    raise AssertionError("a write went through while the turn was held")
                store._write_timeout = 30.0
                waiting = asyncio.ensure_future(_enqueue(store, later))
                await asyncio.sleep(0.05)
                assert not waiting.done()
            finally:
                store._write_lock.release()
            assert await asyncio.wait_for(waiting, 10) == (later.id, True)
            assert await store.get_invocation(first.id) is not None
            assert await store.get_invocation(later.id) is not None
            assert await store.get_invocation(refused.id) is None

    asyncio.run(main())
