"""The outcome of a call's child containers, part of :class:`swarmless.store.Store`.

A container of a ``docker: scoped`` function may start child containers through the scoped
Docker API (:mod:`swarmless.proxy`); they may outlive the call that started them (the
spec's ``children_timeout``). When one ends, the proxy reports it and the gateway keeps it
here, keyed by the call's id and the child's container: exit code, duration, and whether
swarmless killed it. Rows are few (one per child) and written at once, not behind; they go
with their call's record when retention deletes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from sqlalchemy import select

from swarmless.records import ChildOutcome
from swarmless.store.db import Database
from swarmless.store.schema import invocation_children

__all__ = ["ChildOutcome", "ChildrenOps"]


class ChildrenOps(Database):
    """Keeping and reading the outcome of calls' child containers."""

    async def record_child(self, outcome: ChildOutcome) -> None:
        """Keep how a child ended (a second report of the same child replaces the first)."""
        row = dataclasses.asdict(outcome)
        row["id"] = row.pop("call_id")
        ins = self._insert(invocation_children)
        stmt = ins.on_conflict_do_update(
            index_elements=["id", "container"],
            set_={k: ins.excluded[k] for k in row if k not in ("id", "container")},
        )
        async with self._write() as conn:
            await conn.execute(stmt, [row])

    async def children_of(self, call_ids: Iterable[str]) -> dict[str, list[ChildOutcome]]:
        """The child containers of each of ``call_ids`` that have ended, by finish time."""
        ids = list(dict.fromkeys(call_ids))
        if not ids:
            return {}
        t = invocation_children
        query = select(t).where(t.c.id.in_(ids)).order_by(t.c.finished_at, t.c.container)
        async with self._read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        out: dict[str, list[ChildOutcome]] = {}
        for row in rows:
            data = dict(row)
            data["call_id"] = data.pop("id")
            out.setdefault(data["call_id"], []).append(ChildOutcome(**data))
        return out
