"""Schedules: functions with ``schedule: "*/5 * * * *"`` are queued on time, as async calls.

Each fire is an async call with the idempotency key ``schedule:<name>:<slot>``, so a slot
fires once however many gateways share the store and however often one restarts. The
last slot fired is kept in the store (``meta``: ``schedule:<name>``); a gateway that was
down when slots came due fires the latest missed slot once, marked ``late``, and skips the
older ones. A function deployed with a schedule starts counting from its deployment.

One schedule never stops the others: a cron that never fires (``0 0 30 2 *`` is refused at
deploy, but a store may hold one from an older swarmless, and a year field runs out) or a
store error on one schedule is logged once, shown in ``/system/schedules`` as that
schedule's ``error``, and the others keep firing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter

from swarmless.exceptions import SwarmlessError
from swarmless.records import InvocationRecord, new_call_id, now_ms
from swarmless.spec import FunctionSpec, NeverFires, next_fire
from swarmless.store import Store

__all__ = ["NeverFires", "Schedule", "Scheduler", "due_slot", "next_fire"]

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
    #: None when it never fires again.
    next_fire: datetime | None
    last_fired: datetime | None
    #: Why this schedule does not fire, when it does not (it is skipped; the others fire).
    error: str | None = None


def due_slot(cron: str, tz: str, last_ms: int, now: int) -> int | None:
    """The latest slot in ``(last_ms, now]``, or None if none is due; NeverFires for a
    cron with no slot after ``last_ms``."""
    slot = next_fire(cron, tz, last_ms)
    if slot > now:
        return None
    start = datetime.fromtimestamp(slot / 1000, tz=ZoneInfo(tz))
    it = croniter(cron, start)
    for _ in range(MAX_CATCH_UP):
        try:
            nxt = int(it.get_next(datetime).timestamp() * 1000)
        except (CroniterBadDateError, ValueError, OverflowError):
            break  # no slot after this one: the latest due is ``slot``
        if nxt > now:
            break
        slot = nxt
    return slot


class Scheduler:
    """Fires due schedules into the async queue."""

    def __init__(
        self,
        store: Store,
        functions: Mapping[str, tuple[FunctionSpec, int]],
        *,
        on_fire: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        #: The deployed functions (the dispatcher's, read live).
        self.functions = functions
        #: Called after a tick queued calls (the async runner's wake-up).
        self._on_fire = on_fire
        #: Schedules that cannot fire, by function: why (logged once, listed, skipped).
        self.errors: dict[str, str] = {}

    async def run(self, interval: float = 1.0) -> None:
        while True:
            try:
                await self.tick(now_ms())
            except Exception:  # one bad tick must not end the schedules until a restart
                log.exception("schedules: a tick failed; trying again in %gs", interval)
            await asyncio.sleep(interval)

    async def tick(self, now: int) -> list[str]:
        """Fire what is due at ``now``; returns the call ids queued. A schedule that fails
        is skipped (and its error kept in :attr:`errors`); the others still fire."""
        fired: list[str] = []
        for name, (spec, _) in list(self.functions.items()):
            if not spec.schedule:
                self.errors.pop(name, None)
                continue
            try:
                call_id = await self._fire(name, spec, now)
            except (NeverFires, SwarmlessError, ValueError, OverflowError) as e:
                why = e.message if isinstance(e, SwarmlessError) else str(e)
                if self.errors.get(name) != why:
                    log.error("schedule of %s is skipped: %s", name, why)
                self.errors[name] = why
                continue
            self.errors.pop(name, None)
            if call_id is not None:
                fired.append(call_id)
        for name in set(self.errors) - set(self.functions):
            del self.errors[name]
        if fired and self._on_fire is not None:
            self._on_fire()
        return fired

    async def _fire(self, name: str, spec: FunctionSpec, now: int) -> str | None:
        """Fire ``name``'s schedule if a slot is due: the call id queued, else None."""
        assert spec.schedule is not None
        key = f"schedule:{name}"
        state = await self.store.get_meta(key)
        if state is None or not state.startswith(f"{spec.schedule}|{spec.timezone}|"):
            # New (or changed) schedule: count from now.
            await self.store.set_meta(key, f"{spec.schedule}|{spec.timezone}|{now}")
            # ... and say now if it never will fire.
            next_fire(spec.schedule, spec.timezone, now)
            return None
        last = int(state.rsplit("|", 1)[1])
        slot = due_slot(spec.schedule, spec.timezone, last, now)
        if slot is None:
            return None
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
        if not created:
            return None
        log.info(
            "schedule %s fired for %s%s: %s", name, slot_iso, " (late)" if late else "", call_id
        )
        return call_id

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
            error = self.errors.get(name)
            try:
                nxt = next_fire(spec.schedule, spec.timezone, max(since, now))
                when = datetime.fromtimestamp(nxt / 1000, tz=ZoneInfo(spec.timezone))
            except (NeverFires, ValueError, OverflowError) as e:
                when, error = None, error or str(e)
            out.append(
                Schedule(
                    function=name,
                    cron=spec.schedule,
                    timezone=spec.timezone,
                    next_fire=when,
                    last_fired=last,
                    error=error,
                )
            )
        return out
