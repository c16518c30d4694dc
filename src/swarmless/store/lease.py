"""Leases, part of :class:`swarmless.store.Store`: which of several gateways is active.

A lease is one row (``leases``): a holder, the URL where the other replicas reach it, and
an expiry. :meth:`LeaseOps.acquire_lease` takes the lease when it is free or expired, or
extends it when the caller already holds it, in one statement (an upsert whose update only
applies under that condition), so two replicas racing for it cannot both win. Expiries are
the replicas' own clocks (epoch ms): keep the machines' clocks synchronised (NTP) to well
under the lease's time to live.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from swarmless.records import now_ms
from swarmless.store.schema import leases

__all__ = ["LeaseOps", "LeaseState"]


@dataclasses.dataclass(frozen=True)
class LeaseState:
    """Who holds a lease (after an acquire: maybe the caller), and until when (epoch ms)."""

    holder: str
    url: str
    until: int


class LeaseOps:
    """The lease operations of the store (a mixin of :class:`Store`)."""

    _insert: Any

    if TYPE_CHECKING:  # provided by Store

        def _write(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
            raise NotImplementedError

    async def acquire_lease(self, name: str, holder: str, url: str, ttl: float) -> LeaseState:
        """Take or extend lease ``name`` for ``ttl`` seconds if it is free, expired or
        already ``holder``'s; returns who holds it now (compare ``holder``)."""
        now = now_ms()
        ins = self._insert(leases).values(
            name=name, holder=holder, url=url, until=now + int(ttl * 1000)
        )
        stmt = ins.on_conflict_do_update(
            index_elements=["name"],
            set_={
                "holder": ins.excluded.holder,
                "url": ins.excluded.url,
                "until": ins.excluded.until,
            },
            where=or_(leases.c.holder == holder, leases.c.until < now),
        )
        async with self._write() as conn:
            await conn.execute(stmt)
            row = (
                await conn.execute(
                    select(leases.c.holder, leases.c.url, leases.c.until).where(
                        leases.c.name == name
                    )
                )
            ).one()
        return LeaseState(holder=row.holder, url=row.url, until=int(row.until))

    async def release_lease(self, name: str, holder: str) -> bool:
        """Give up lease ``name`` if ``holder`` holds it (a clean shutdown): another replica
        takes it at its next try instead of waiting for it to expire."""
        async with self._write() as conn:
            result = await conn.execute(
                delete(leases).where(leases.c.name == name, leases.c.holder == holder)
            )
        return bool(result.rowcount)
