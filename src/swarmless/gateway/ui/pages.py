"""The dashboard's pages: functions, one function, invocations, one invocation, dead
letters, schedules, cluster. Each reads through :mod:`swarmless.gateway.ui.views` and
renders one template; live updates come later from :mod:`swarmless.gateway.ui.live`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml
from starlette.responses import Response

from swarmless.exceptions import InvalidArgument, InvocationNotFound, SwarmlessError
from swarmless.gateway.ui import views
from swarmless.gateway.ui.actions import Answer
from swarmless.gateway.ui.stats import (
    FINISHED,
    HOUR_MS,
    function_stats,
    recent_failures,
    series,
)
from swarmless.records import STATUSES, now_ms

if TYPE_CHECKING:
    from swarmless.gateway.ui.site import Ctx, Site

__all__ = [
    "cluster",
    "dead_letters",
    "function",
    "functions",
    "invocation",
    "invocations",
    "schedules",
]

#: What the page says after an action redirected to it (``?done=``); nothing else is shown.
DONE = {
    "deployed": "Deployed.",
    "updated": "Updated: new calls get the new version.",
    "scaled": "Scaling changed: the containers follow within a few seconds.",
    "removed": "Removed, with its containers.",
    "redriven": "Queued again, with fresh retries.",
}
#: The deploy form's example: a one-shot function any engine can run.
EXAMPLE_SPEC = """\
name: upper
image: swarmless/busybox:latest
mode: oneshot
command: [tr, a-z, A-Z]
"""
LIST_LIMIT = 100


def _done(ctx: Ctx) -> str | None:
    return DONE.get(ctx.request.query_params.get("done", ""))


async def functions(
    site: Site,
    ctx: Ctx,
    *,
    spec_text: str | None = None,
    error: SwarmlessError | None = None,
    status: int = 200,
) -> Response:
    """``/ui/``: every function with its containers and numbers; charts; the deploy form."""
    records = await site.records()
    now = now_ms()
    rows = views.function_rows(site.gw, function_stats(records, now))
    charts = {
        "calls": series(records, now),
        "containers": site.history.since(now - HOUR_MS),
    }
    return site.render(
        ctx.request,
        ctx.session,
        "functions.html",
        status=status,
        rows=rows,
        failures=recent_failures(records, now)[:20],
        charts=charts,
        spec_text=spec_text if spec_text is not None else EXAMPLE_SPEC,
        error=error,
        errors=getattr(error, "errors", None) or {},
        done=_done(ctx),
    )


async def function(site: Site, ctx: Ctx, *, answer: Answer | None = None) -> Response:
    """``/ui/functions/{name}``: spec, containers, scaling, numbers, recent calls, invoke."""
    gw = site.gw
    assert gw.dispatcher is not None
    assert gw.store is not None
    name = ctx.request.path_params["name"]
    spec, _ = gw.dispatcher.get(name)
    records = [r for r in await site.records() if r.function == name]
    now = now_ms()
    (row,) = [r for r in views.function_rows(gw, function_stats(records, now)) if r["name"] == name]
    recent = await gw.store.list_invocations(function=name, limit=20)
    charts = {
        "calls": series(records, now),
        "containers": site.history.since(now - HOUR_MS, function=name),
    }
    spec_yaml = yaml.safe_dump(spec.to_dict(), sort_keys=False, allow_unicode=True)
    return site.render(
        ctx.request,
        ctx.session,
        "function.html",
        row=row,
        spec_yaml=spec_yaml,
        recent=recent,
        charts=charts,
        failures=recent_failures(records, now)[:10],
        answer=answer,
        form=ctx.form if answer is not None else {},
        done=_done(ctx),
    )


def _filters(ctx: Ctx) -> tuple[str | None, str | None]:
    q = ctx.request.query_params
    function = q.get("function") or None
    status = q.get("status") or None
    if status is not None and status not in STATUSES:
        raise InvalidArgument(f"status must be one of {', '.join(STATUSES)}; got {status!r}")
    if function is not None and len(function) > 200:
        raise InvalidArgument("that function name is too long")
    return function, status


async def invocations(site: Site, ctx: Ctx) -> Response:
    """``/ui/invocations``: the newest calls, filtered by function and status (live)."""
    gw = site.gw
    assert gw.store is not None
    assert gw.dispatcher is not None
    function, status = _filters(ctx)
    rows = await gw.store.list_invocations(function=function, status=status, limit=LIST_LIMIT)
    return site.render(
        ctx.request,
        ctx.session,
        "invocations.html",
        rows=rows,
        function=function or "",
        wanted=status or "",
        statuses=STATUSES,
        names=sorted(gw.dispatcher.functions),
        limit=LIST_LIMIT,
    )


async def invocation(site: Site, ctx: Ctx) -> Response:
    """``/ui/invocations/{id}``: timings, exit code, error, the call tree, the logs."""
    gw = site.gw
    assert gw.store is not None
    call_id = ctx.request.path_params["call_id"]
    rec = await gw.store.get_invocation(call_id)
    if rec is None:
        raise InvocationNotFound(call_id)
    logs = await gw.store.get_logs(call_id)
    stdout, stderr = logs or (b"", b"")
    return site.render(
        ctx.request,
        ctx.session,
        "invocation.html",
        rec=rec,
        final=rec.status in FINISHED,
        phases=views.waterfall(rec),
        tree=await views.call_tree(gw, rec),
        stdout=stdout.decode("utf-8", "replace"),
        stderr=stderr.decode("utf-8", "replace"),
        kept=logs is not None,
        redrivable=rec.kind == "async" and rec.status in ("dead", "failed", "timeout"),
        done=_done(ctx),
    )


async def dead_letters(site: Site, ctx: Ctx) -> Response:
    """``/ui/dead-letters``: async calls that ran out of retries, each redrivable."""
    gw = site.gw
    assert gw.store is not None
    function, _ = _filters(ctx)
    rows = await gw.store.list_invocations(function=function, status="dead", limit=LIST_LIMIT)
    return site.render(
        ctx.request,
        ctx.session,
        "dead.html",
        rows=rows,
        function=function or "",
        limit=LIST_LIMIT,
        done=_done(ctx),
    )


async def schedules(site: Site, ctx: Ctx) -> Response:
    """``/ui/schedules``: scheduled functions and when they fire next."""
    found = await site.gw.scheduler.list() if site.gw.scheduler is not None else []
    return site.render(ctx.request, ctx.session, "schedules.html", schedules=found)


async def cluster(site: Site, ctx: Ctx) -> Response:
    """``/ui/cluster``: the engine or the Swarm's nodes, containers, replica roles."""
    info: dict[str, Any] = await views.cluster(site.gw)
    return site.render(ctx.request, ctx.session, "cluster.html", **info)
