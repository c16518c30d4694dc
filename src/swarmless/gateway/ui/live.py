"""Live updates of the dashboard: one Server-Sent Events stream per open page.

``GET /ui/events?view=functions|function|invocations[&function=][&status=]`` sends:

- ``counts`` every second: each function's containers by state, queued and in flight;
- ``stats`` every few seconds (``functions`` and ``function`` views): calls/min, error
  rate, p50/p99, cold share per function, and the chart series of the last hour;
- ``rows`` when the newest calls change (``invocations`` and ``function`` views): each as
  its id, status and table row, rendered (escaped) by the same macro as the page.

A stream ends when the session does, when the gateway shuts down, and after
:data:`STREAM_SECONDS` (the browser's EventSource then reconnects by itself), so no stream
holds a gateway's shutdown or a session that was logged out.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.responses import Response, StreamingResponse

from swarmless.exceptions import InvalidArgument
from swarmless.gateway.ui import views
from swarmless.gateway.ui.site import fmt_ms, fmt_pct
from swarmless.gateway.ui.stats import (
    HOUR_MS,
    FunctionStats,
    function_stats,
    recent_failures,
    series,
)
from swarmless.records import STATUSES, now_ms

if TYPE_CHECKING:
    from swarmless.gateway.ui.site import Ctx, Site

__all__ = ["events"]

STREAM_SECONDS = 300.0
TICK = 1.0
#: Ticks between two ``stats`` events.
STATS_EVERY = 5
ROWS_LIMIT = 50
VIEWS = ("functions", "function", "invocations")


def _event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _stats_row(s: FunctionStats) -> dict[str, str]:
    return {
        "calls_per_min": str(s.calls_per_min),
        "error_rate": fmt_pct(s.error_rate),
        "p50": fmt_ms(s.p50_ms),
        "p99": fmt_ms(s.p99_ms),
        "cold_share": fmt_pct(s.cold_share),
    }


async def events(site: Site, ctx: Ctx) -> Response:
    """The stream of one page (see the module docstring)."""
    q = ctx.request.query_params
    view = q.get("view", "functions")
    if view not in VIEWS:
        raise InvalidArgument(f"view must be one of {', '.join(VIEWS)}")
    function = q.get("function") or None
    status = q.get("status") or None
    if status is not None and status not in STATUSES:
        raise InvalidArgument(f"status must be one of {', '.join(STATUSES)}")
    if view == "function" and function is None:
        raise InvalidArgument("the function view needs ?function=NAME")
    return StreamingResponse(
        _stream(site, ctx, view, function, status),
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


async def _stream(
    site: Site, ctx: Ctx, view: str, function: str | None, status: str | None
) -> AsyncIterator[str]:
    gw = site.gw
    macros = site.macros()
    end = time.monotonic() + STREAM_SECONDS
    seen: list[tuple[str, str]] | None = None
    tick = 0
    yield "retry: 2000\n\n"
    while time.monotonic() < end:
        d, store = gw.dispatcher, gw.store
        if d is None or store is None or d.closing or site.sessions.get(ctx.request) is None:
            yield _event("end", {"reason": "the session or the gateway ended"})
            return
        counts = {}
        for row in views.function_rows(gw, {}):
            counts[row["name"]] = {
                **row["states"],
                "queued": row["queued"],
                "in_flight": row["in_flight"],
            }
            scale = row["scale"]
            if view == "function" and scale.get("desired") is not None:
                counts[row["name"]]["desired"] = scale["desired"]
                counts[row["name"]]["reason"] = scale.get("reason") or ""
        names = sorted(counts)
        if function is not None and view == "function":
            counts = {k: v for k, v in counts.items() if k == function}
        yield _event("counts", {"functions": names, "counts": counts})
        if view != "invocations" and tick % STATS_EVERY == 0:
            records = await site.records()
            if function is not None:
                records = [r for r in records if r.function == function]
            now = now_ms()
            stats = function_stats(records, now)
            yield _event(
                "stats",
                {
                    "stats": {name: _stats_row(s) for name, s in stats.items()},
                    "failures": str(macros.failures(recent_failures(records, now)[:20])),
                    "charts": {
                        "calls": series(records, now),
                        "containers": site.history.since(now - HOUR_MS, function=function),
                    },
                },
            )
        if view != "functions":
            recs = await store.list_invocations(function=function, status=status, limit=ROWS_LIMIT)
            now_seen = [(r.id, str(r.status)) for r in recs]
            if now_seen != seen:
                seen = now_seen
                yield _event(
                    "rows",
                    {
                        "rows": [
                            {"id": r.id, "status": r.status, "html": str(macros.inv_row(r))}
                            for r in recs
                        ]
                    },
                )
        tick += 1
        await asyncio.sleep(TICK)
