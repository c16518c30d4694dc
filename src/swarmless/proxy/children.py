"""Children outlive their parent, for a while: the life of the scoped Docker API's children.

A child container (``swarmless.kind=child``) carries its parent's id
(``swarmless.parent``), the call its parent served (``swarmless.parent-call``, one-shot and
cgi parents) and how long it may go on once its parent has exited
(``swarmless.children-timeout``: the function's ``children_timeout`` when it was made), all
forced by the policy (:mod:`swarmless.proxy.create`).

:class:`ChildWatch` follows the engine's events of the gateway's containers (the proxy
feeds it): a child that starts is noted (for its duration), a child that dies is reported
(exit code, duration, killed or not) through ``report`` to the record of the call that made
it; a parent that dies leaves its children ``children_timeout`` seconds, measured from its
death, after which those still there are removed (a running one is killed, and its report
says so). A 2016-style CGI page that fires a detached task and exits at once therefore
loses nothing, and a task that hangs is still bounded.

Events can be missed (the stream reconnects): every few seconds :meth:`ChildWatch.sweep`
finds children whose parent is not running and gives them the same timeout, counted from
the parent's death when it was seen, else from the first sweep that found them orphaned.
While the parent lives, only it can reach its children through the API; once it is gone,
no one can, and the gateway's stop removes them all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from swarmless.labels import (
    LABEL_CHILDREN_TIMEOUT,
    LABEL_KIND,
    LABEL_PARENT,
    LABEL_PARENT_CALL,
)
from swarmless.proxy.engine_view import EngineView
from swarmless.records import ChildOutcome

__all__ = ["ChildWatch", "children_timeout"]

log = logging.getLogger("swarmless.proxy")

#: Children's start times kept at most (for their durations), and parents' deaths.
MAX_TRACKED = 10_000
#: Most seconds a child may outlive its parent (the spec's bound).
MAX_TIMEOUT = 3600.0


def children_timeout(labels: dict[str, str]) -> float:
    """A child's ``swarmless.children-timeout``, in seconds; 0 when missing or invalid
    (it then dies with its parent, as children did before the label existed)."""
    try:
        value = float(labels.get(LABEL_CHILDREN_TIMEOUT) or 0)
    except ValueError:
        return 0.0
    return min(value, MAX_TIMEOUT) if value > 0 else 0.0


def _ms(event: dict[str, Any]) -> int:
    nano = event.get("timeNano")
    if isinstance(nano, int):
        return nano // 1_000_000
    return int(event.get("time") or time.time()) * 1000


def _short(image: str) -> str:
    """An image as records show it: a name as it is, an id by its first 12 hex digits (the
    policy makes a child of the image id it checked)."""
    return image[7:19] if image.startswith("sha256:") else image


class ChildWatch:
    """The children of one gateway's containers: their starts, ends and orphaned life."""

    def __init__(
        self, engine: EngineView, *, report: Callable[[ChildOutcome], None] | None = None
    ) -> None:
        self.engine = engine
        self.report = report
        #: Child id -> when it started (epoch ms).
        self._started: dict[str, int] = {}
        #: Parent id -> when it died (monotonic), while it has children.
        self._dead: dict[str, float] = {}
        #: Parents whose children wait for their timeout in a task of their own.
        self._reaping: set[str] = set()
        #: Child id -> why swarmless is killing it (its report says so).
        self._killing: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- events ----------------------------------------------------------------------------

    def child_event(self, action: str, event: dict[str, Any]) -> None:
        """A child started or died."""
        actor = event.get("Actor") or {}
        attrs: dict[str, str] = actor.get("Attributes") or {}
        cid = str(actor.get("ID") or event.get("id") or "")
        if not cid:
            return
        if action == "start":
            if len(self._started) >= MAX_TRACKED:
                self._started.pop(next(iter(self._started)))
            self._started[cid] = _ms(event)
            return
        started = self._started.pop(cid, None)
        killed = self._killing.pop(cid, None)
        call = attrs.get(LABEL_PARENT_CALL)
        if not call or self.report is None:
            return
        finished = _ms(event)
        try:
            code: int | None = int(attrs.get("exitCode", ""))
        except ValueError:
            code = None
        error = killed
        if error is None and code:
            error = f"child container {cid[:12]} exited with status {code}"
        self.report(
            ChildOutcome(
                call_id=call,
                container=cid[:12],
                image=_short(attrs.get("image") or "") or None,
                exit_code=code,
                started_at=started,
                finished_at=finished,
                duration_ms=None if started is None else float(finished - started),
                killed=killed is not None,
                error=error,
            )
        )

    def parent_died(self, parent: str) -> None:
        """A container of the gateway exited: its children get their timeout from now."""
        died = time.monotonic()
        if len(self._dead) >= MAX_TRACKED:
            self._dead.pop(next(iter(self._dead)))
        self._dead[parent] = died
        task = asyncio.get_running_loop().create_task(self._reap(parent, died))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- removing them -----------------------------------------------------------------------

    async def _reap(self, parent: str, died: float) -> None:
        """Remove ``parent``'s children as each one's timeout passes."""
        self._reaping.add(parent)
        try:
            rows = await self.engine.list(f"{LABEL_KIND}=child", f"{LABEL_PARENT}={parent}")
            for timeout in sorted({children_timeout(r.get("Labels") or {}) for r in rows}):
                await asyncio.sleep(max(died + timeout - time.monotonic(), 0.0))
                rows = await self.engine.list(f"{LABEL_KIND}=child", f"{LABEL_PARENT}={parent}")
                due = [r for r in rows if children_timeout(r.get("Labels") or {}) <= timeout]
                await self._remove(due)
        except httpx.HTTPError as e:  # the sweep tries again
            log.debug("could not remove the children of %s: %s", parent[:12], e)
        finally:
            self._reaping.discard(parent)
            self._dead.pop(parent, None)

    async def sweep(self) -> int:
        """Children whose parent is not running (its death maybe unseen): removed once
        their timeout has passed since the death, or since this sweep first saw them.
        Returns how many children it found (running or not)."""
        children = await self.engine.list(f"{LABEL_KIND}=child")
        running = {c["Id"] for c in await self.engine.list(running=True)} if children else set()
        now = time.monotonic()
        due = []
        orphaned = set()
        for c in children:
            parent = (c.get("Labels") or {}).get(LABEL_PARENT) or ""
            if parent in running:
                continue
            orphaned.add(parent)
            died = self._dead.setdefault(parent, now)
            if now >= died + children_timeout(c.get("Labels") or {}):
                due.append(c)
        self._dead = {p: t for p, t in self._dead.items() if p in orphaned or p in self._reaping}
        await self._remove(due)
        return len(children)

    async def _remove(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            labels = row.get("Labels") or {}
            if row.get("State") == "running":
                timeout = children_timeout(labels)
                image = _short(str(row.get("Image") or "?"))
                self._killing[row["Id"]] = (
                    f"child container {row['Id'][:12]} ({image}) was still running "
                    + (
                        f"{timeout:g}s after its caller exited (children_timeout): killed"
                        if timeout
                        else "when its caller exited (children_timeout 0): killed"
                    )
                )
                if len(self._killing) > MAX_TRACKED:
                    self._killing.pop(next(iter(self._killing)))
        await asyncio.gather(*(self.engine.remove(r["Id"]) for r in rows), return_exceptions=True)
        if rows:
            log.info("removed %d child container(s) whose parent exited", len(rows))
