"""Schedules: functions with ``schedule: "*/5 * * * *"`` are queued on time, as async calls.

Each fire is an async call with the idempotency key ``schedule:<name>:<slot>``, so a slot
fires once however many gateways share the store and however often one restarts. The
last slot fired is kept in the store (``meta``: ``schedule:<name>``); a gateway that was
down when slots came due fires the latest missed slot once, marked ``late``, and skips the
older ones. A function deployed with a schedule starts counting from its deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from croniter import croniter

from swarmless.exceptions import SwarmlessError
from swarmless.records import InvocationRecord, new_call_id, now_ms
from swarmless.spec import FunctionSpec
from swarmless.store import Store

__all__ = ["Schedule", "Scheduler", "due_slot", "next_fire"]

log = logging.getLogger("swarmless.schedule")

#: A fire later than this after its slot is marked late.
LATE_AFTER_MS = 5_000
#: Missed slots looked at, at most, when catching up (the latest one fires).
MAX_CATCH_UP = 100_000


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A function's schedule and the next time it fires."""

    function: str
    cron: str
    timezone: str
    next_fire: datetime
    last_fired: datetime | None


def next_fire(cron: str, tz: str, after_ms: int) -> int:
    """The first slot strictly after ``after_ms`` (epoch ms), in ``tz``."""
    start = datetime.fromtimestamp(after_ms / 1000, tz=ZoneInfo(tz))
    nxt: datetime = croniter(cron, start).get_next(datetime)
    return int(nxt.timestamp() * 1000)


def due_slot(cron: str, tz: str, last_ms: int, now: int) -> int | None:
    """The latest slot in ``(last_ms, now]``, or None if none is due."""
    slot = next_fire(cron, tz, last_ms)
    if slot > now:
        return None
    start = datetime.fromtimestamp(slot / 1000, tz=ZoneInfo(tz))
    it = croniter(cron, start)
    for _ in range(MAX_CATCH_UP):
        nxt = int(it.get_next(datetime).timestamp() * 1000)
        if nxt > now:
            break
        slot = nxt
    return slot


class Scheduler:
    """Fires due schedules into the async queue."""

    def __init__(self, store: Store, functions: dict[str, tuple[FunctionSpec, int]]) -> None:
        self.store = store
        self.functions = functions
        #: Called after a fire is queued (the async runner's wake-up).
        self.fired = asyncio.Event()

    async def run(self, interval: float = 1.0) -> None:
        while True:
            try:
                await self.tick(now_ms())
            except SwarmlessError as e:
                log.error("schedules: %s", e.message)
            await asyncio.sleep(interval)

    async def tick(self, now: int) -> list[str]:
        """Fire what is due at ``now``; returns the call ids queued."""
        fired: list[str] = []
        for name, (spec, _) in list(self.functions.items()):
            if not spec.schedule:
                continue
            key = f"schedule:{name}"
            state = await self.store.get_meta(key)
            if state is None or not state.startswith(f"{spec.schedule}|{spec.timezone}|"):
                # New (or changed) schedule: count from now.
                await self.store.set_meta(key, f"{spec.schedule}|{spec.timezone}|{now}")
                continue
            last = int(state.rsplit("|", 1)[1])
            slot = due_slot(spec.schedule, spec.timezone, last, now)
            if slot is None:
                continue
            late = now - slot > LATE_AFTER_MS
            rec = InvocationRecord(
                id=new_call_id(),
                function=name,
                mode=spec.mode,
                kind="async",
                status="queued",
                queued_at=now,
                late=late,
            )
            slot_iso = datetime.fromtimestamp(slot / 1000, tz=UTC).isoformat()
            call_id, created = await self.store.enqueue(
                rec,
                method="POST",
                path="",
                query="",
                headers=[("x-swarmless-schedule", slot_iso), ("x-swarmless-late", str(late))],
                body=b"",
                idempotency_key=f"schedule:{name}:{slot}",
            )
            await self.store.set_meta(key, f"{spec.schedule}|{spec.timezone}|{slot}")
            if created:
                fired.append(call_id)
                log.info(
                    "schedule %s fired for %s%s: %s",
                    name,
                    slot_iso,
                    " (late)" if late else "",
                    call_id,
                )
        if fired:
            self.fired.set()
        return fired

    async def list(self) -> list[Schedule]:
        """Every schedule with its next fire time."""
        out = []
        now = now_ms()
        for name, (spec, _) in sorted(self.functions.items()):
            if not spec.schedule:
                continue
            state = await self.store.get_meta(f"schedule:{name}")
            last = None
            since = now
            if state is not None and state.startswith(f"{spec.schedule}|{spec.timezone}|"):
                since = int(state.rsplit("|", 1)[1])
                last = datetime.fromtimestamp(since / 1000, tz=ZoneInfo(spec.timezone))
            nxt = next_fire(spec.schedule, spec.timezone, max(since, now))
            with contextlib.suppress(ValueError):
                out.append(
                    Schedule(
                        function=name,
                        cron=spec.schedule,
                        timezone=spec.timezone,
                        next_fire=datetime.fromtimestamp(nxt / 1000, tz=ZoneInfo(spec.timezone)),
                        last_fired=last,
                    )
                )
        return out
