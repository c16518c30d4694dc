"""Leases, part of :class:`swarmless.store.Store`: which of several gateways is active.

A lease is one row (``leases``): a holder, the URL where the other replicas reach it, and
an expiry. :meth:`LeaseOps.acquire_lease` takes the lease when it is free (or expired,
when the caller says it may), or extends it when the caller already holds it, in one
statement (an upsert whose update only applies under that condition), so two replicas
racing for it cannot both win. Expiries are the replicas' own clocks (epoch ms): keep the
machines' clocks synchronised (NTP) to well under the lease's time to live.

A replica that asks for a lease someone else holds leaves its mark on the row
(``contended_until``): the holder learns at its next renewal that another replica stands
by, ready to take over (:attr:`LeaseState.contended`). A holder that nobody contends may
keep serving through an outage of the store; one that is contended must step down before
its lease can expire (see :mod:`swarmless.gateway.replicas`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy import bindparam, delete, or_, select, update

from swarmless.records import now_ms
from swarmless.store.db import Database
from swarmless.store.schema import leases

__all__ = ["CONTENDED_FOR", "LeaseOps", "LeaseState"]

#: A replica's mark on a lease lasts this many times the lease's time to live.
CONTENDED_FOR = 3
#: What an acquire answers from.
_COLUMNS = (leases.c.holder, leases.c.url, leases.c.until, leases.c.contended_until)


@dataclasses.dataclass(frozen=True)
class LeaseState:
    """Who holds a lease (after an acquire: maybe the caller), and until when (epoch ms)."""

    holder: str
    url: str
    until: int
    #: Another replica asked for the lease lately (it would take over if it expired).
    contended: bool = False
    #: The lease had expired when it was read (only when its holder was not the caller).
    expired: bool = False


class LeaseOps(Database):
    """The lease operations of the store (a part of :class:`~swarmless.store.Store`)."""

    async def acquire_lease(
        self, name: str, holder: str, url: str, ttl: float, *, take_expired: bool = True
    ) -> LeaseState:
        """Take or extend lease ``name`` for ``ttl`` seconds if it is free or already
        ``holder``'s, or expired (unless ``take_expired`` is False: the caller first wants
        to know whether the holder is really gone); returns who holds it now (compare
        ``holder``). Asking for a lease another holds marks it contended.

        One statement when the caller gets it (the upsert returns the row it wrote); the
        row is read, and marked, only when another holds it. The statement is built once
        (its values bound at each call): a renewal every second costs little."""
        now = now_ms()
        values = {
            "l_name": name,
            "l_holder": holder,
            "l_url": url,
            "l_until": now + int(ttl * 1000),
            "l_now": now,
        }
        async with self._write() as conn:
            row = (await conn.execute(self._acquire_statement(take_expired), values)).first()
            if row is None:  # another holds it: who, until when; it learns we stand by
                row = (await conn.execute(select(*_COLUMNS).where(leases.c.name == name))).one()
                mark = now + int(ttl * 1000 * CONTENDED_FOR)
                await conn.execute(
                    update(leases).where(leases.c.name == name).values(contended_until=mark)
                )
        return LeaseState(
            holder=row.holder,
            url=row.url,
            until=int(row.until),
            contended=row.contended_until is not None and int(row.contended_until) > now,
            expired=row.holder != holder and int(row.until) < now,
        )

    def _acquire_statement(self, take_expired: bool) -> Any:
        """The upsert of :meth:`acquire_lease`, with bound values, built once per store
        (kept with the store's other upserts, :attr:`Database._upserts`)."""
        key = (leases.name, "acquire, taking expired" if take_expired else "acquire")
        stmt = self._upserts.get(key)
        if stmt is None:
            ins = self._insert(leases).values(
                name=bindparam("l_name"),
                holder=bindparam("l_holder"),
                url=bindparam("l_url"),
                until=bindparam("l_until"),
            )
            mine = leases.c.holder == bindparam("l_holder")
            stmt = self._upserts[key] = ins.on_conflict_do_update(
                index_elements=["name"],
                set_={
                    "holder": ins.excluded.holder,
                    "url": ins.excluded.url,
                    "until": ins.excluded.until,
                },
                where=or_(mine, leases.c.until < bindparam("l_now")) if take_expired else mine,
            ).returning(*_COLUMNS)
        return stmt

    async def release_lease(self, name: str, holder: str) -> bool:
        """Give up lease ``name`` if ``holder`` holds it (a clean shutdown): another replica
        takes it at its next try instead of waiting for it to expire."""
        async with self._write() as conn:
            result = await conn.execute(
                delete(leases).where(leases.c.name == name, leases.c.holder == holder)
            )
        return bool(result.rowcount)
