"""Async invocations over HTTP: accept durably, read results, redrive, list schedules.

``POST /async-function/{name}[/{path}]`` writes the call to the store **before** it answers
``202`` with ``X-Call-Id``. ``Idempotency-Key`` returns the first call's id instead of
queueing twice; ``X-Callback-Url`` gets the result POSTed when the call is over, if the
gateway's :class:`~swarmless.gateway.callbacks.CallbackPolicy` lets it go there (400
otherwise; checked again at delivery). The headers stored with the call, and replayed to
the function when it runs, are those the edge let through (:mod:`swarmless.gateway.edge`).
While the store is away (or behind), a call is refused with ``503 gateway_unavailable``
and ``Retry-After``: nothing was queued.

``GET /invocations/{id}/result?wait=S`` reads the record once, then sleeps until the store
says the record changed (:meth:`~swarmless.store.Store.watch`), so a waiting client costs
the store one read per change of its call, not four a second.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response

from swarmless.exceptions import (
    FunctionFailed,
    FunctionNotFound,
    InvalidArgument,
    InvocationNotFound,
    InvocationTimeout,
    NotFound,
    QueueFull,
    SwarmlessError,
)
from swarmless.gateway.admin_http import unless_gone
from swarmless.gateway.asgi import (
    ClientGone,
    Receive,
    Scope,
    Send,
    bearer,
    header,
    internal_error,
    read_body,
    send_error,
    send_response,
)
from swarmless.gateway.context import GatewayContext
from swarmless.records import InvocationRecord, new_call_id, now_ms

if TYPE_CHECKING:
    from swarmless.store import Store

__all__ = ["accept_async", "get_result", "list_schedules", "retry_invocation"]

log = logging.getLogger("swarmless.gateway")

FINAL = ("succeeded", "failed", "timeout", "dead", "cancelled")
#: Longest ``?wait=`` a result request may ask for, seconds.
MAX_WAIT = 60.0
#: Headers the async intake acts on itself: the function does not get them.
CONSUMED = frozenset({"x-callback-url", "idempotency-key"})


async def accept_async(gw: GatewayContext, scope: Scope, receive: Receive, send: Send) -> None:
    """``ANY /async-function/{name}[/{path}]``: queue one call durably, answer 202.

    The active gateway does it with its own state; a standby replica (``gw.runner`` None)
    with the store's (the spec, the queue's length) for calls it can authorize itself
    (public, or the admin token): they need no active replica, which picks them up from
    the store within its idle poll.
    """
    assert gw.store is not None
    runner, replicas = gw.runner, gw.replicas
    rest: str = scope["path"][len("/async-function/") :]
    name, slash, sub = rest.partition("/")
    try:
        token = bearer(scope)
        parent = None
        if runner is not None:
            assert gw.dispatcher is not None
            spec, _ = gw.dispatcher.get(name)
            caller = gw.callers.caller(token, gw.dispatcher)
            if spec.private and caller is None:
                gw.check_admin(token)
            if caller is not None:  # spawned by a function: the call tree records it
                claimed = header(scope, b"x-swarmless-parent")
                parent = gw.callers.parent(caller, claimed, gw.dispatcher)
            waiting = runner.waiting(name)
        else:
            assert replicas is not None
            found = await replicas.spec(name)
            if found is None:
                raise FunctionNotFound(name)
            spec = found
            if spec.private:
                gw.check_admin(token)
            waiting = await replicas.waiting(name)
        passed = gw.edge(scope, consumed=CONSUMED)
        callback, key = _consumed(scope)
        if callback is not None:
            gw.callbacks.check_url(callback)
        body = await read_body(scope, receive, spec.max_body)
        if key is not None and not 0 < len(key) <= 200:
            raise InvalidArgument("Idempotency-Key must be 1 to 200 characters")
        if waiting >= spec.queue_size:
            raise QueueFull(
                f"function {name!r} has {waiting} async calls waiting "
                f"(queue_size {spec.queue_size}); retry later",
                retry_after=5.0,
            )
        rec = InvocationRecord(
            id=new_call_id(),
            function=name,
            mode=spec.mode,
            kind="async",
            status="queued",
            queued_at=now_ms(),
            request_size=len(body),
            parent=parent,
        )
        headers = passed.headers
        # The active gateway's runner may take the call in hand as it is written.
        enqueue = runner.submit if runner is not None else gw.store.enqueue
        call_id, created = await enqueue(
            rec,
            method=scope["method"],
            path=slash + sub,
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=headers,
            body=body,
            callback_url=callback,
            idempotency_key=key,
        )
    except ClientGone:
        return
    except SwarmlessError as e:
        await send_error(send, e)
        return
    except Exception as e:  # a bug of ours: still a JSON answer, never a bare 500
        log.exception("unexpected error queueing a call of %s", name)
        await send_error(send, internal_error(e))
        return
    if created and runner is None and replicas is not None:
        replicas.queued(name)
    await send_response(
        send,
        202,
        _answer(call_id, created),
        [(b"content-type", b"application/json"), (b"x-call-id", call_id.encode())],
    )


def _consumed(scope: Scope) -> tuple[str | None, str | None]:
    """The first ``X-Callback-Url`` and ``Idempotency-Key`` of a request (one pass over
    its headers, not one per name)."""
    callback = key = None
    for k, v in scope["headers"]:
        if k == b"x-callback-url":
            if callback is None:
                callback = str(v.decode("latin-1"))
        elif k == b"idempotency-key" and key is None:
            key = str(v.decode("latin-1"))
    return callback, key


def _answer(call_id: str, created: bool) -> bytes:
    """The 202's JSON body, ``{"call_id": ..., "status": "queued"|"duplicate"}``: written
    out for an id of the gateway's own form (letters, digits, ``-``), else by ``json``."""
    status = "queued" if created else "duplicate"
    if call_id.isascii() and call_id.replace("-", "").isalnum():
        return f'{{"call_id": "{call_id}", "status": "{status}"}}'.encode()
    return json.dumps({"call_id": call_id, "status": status}).encode()


async def _record(store: Store, call_id: str, deadline: float) -> InvocationRecord:
    """The record of ``call_id`` once it is final, or as it is at ``deadline``."""
    # Woken in memory when the call's record changes (the store tells its watchers), not
    # by reading the store over and over: one read now, one per change.
    with store.watch(call_id) as changed:
        while True:
            rec = await store.get_invocation(call_id)
            if rec is None:
                raise InvocationNotFound(call_id)
            if rec.status in FINAL or time.monotonic() >= deadline:
                return rec
            await changed.wait(deadline)


async def get_result(gw: GatewayContext, request: HTTPRequest) -> Response:
    """The answer of a finished call; with ``?wait=S`` waits up to S seconds for it."""
    assert gw.store is not None
    call_id = request.path_params["call_id"]
    raw = request.query_params.get("wait", "0")
    try:
        wait = float(raw)
    except ValueError:
        wait = math.nan
    if not wait >= 0:  # NaN too: a deadline of NaN never comes
        raise InvalidArgument(f"wait must be a number of seconds >= 0, got {raw!r}")
    wait = min(wait, MAX_WAIT)
    awaited = _record(gw.store, call_id, time.monotonic() + wait)
    rec = await (unless_gone(gw, request, "result", awaited) if wait > 0 else awaited)
    headers = {"x-call-id": call_id, "x-swarmless-status": rec.status}
    if rec.status == "succeeded":
        stored = await gw.store.get_result(call_id)
        if stored is None and rec.kind == "async":
            raise NotFound(
                f"the result of call {call_id} is no longer kept (retention: results_age, "
                "results_count); its record is at /invocations/" + call_id,
                invocation=call_id,
            )
        if stored is None:  # a sync call: its answer went to its caller, not the store
            return JSONResponse(rec.to_dict(), headers=headers)
        out = Response(stored.body, status_code=stored.status, headers=headers)
        for k, v in stored.headers:
            if k.lower() not in ("content-length", "transfer-encoding"):
                out.headers.append(k, v)
        return out
    if rec.status in FINAL:
        err: SwarmlessError
        if rec.status == "timeout":
            err = InvocationTimeout(rec.error or "timed out", timeout=0, invocation=call_id)
        else:
            err = FunctionFailed(
                f"call {rec.status}: {rec.error or 'no detail'}", invocation=call_id
            )
        body: dict[str, Any] = err.to_dict()
        body["status"] = rec.status
        headers["x-swarmless-error"] = "1"
        return JSONResponse(body, status_code=err.status_code, headers=headers)
    return JSONResponse(
        {"call_id": call_id, "status": rec.status}, status_code=202, headers=headers
    )


async def retry_invocation(gw: GatewayContext, request: HTTPRequest) -> Response:
    """Redrive a dead (or failed) async call: it is queued again with fresh retries."""
    assert gw.store is not None
    assert gw.runner is not None
    call_id = request.path_params["call_id"]
    rec = await gw.store.get_invocation(call_id)
    if rec is None:
        raise InvocationNotFound(call_id)
    if rec.kind != "async" or rec.status not in ("dead", "failed", "timeout"):
        raise InvalidArgument(
            f"only a dead or failed async call can be retried; {call_id} is a {rec.kind} "
            f"call that is {rec.status}"
        )
    if not await gw.store.redrive(call_id):
        raise InvalidArgument(f"call {call_id} is not in the queue any more")
    gw.runner.wake_up()
    return JSONResponse({"call_id": call_id, "status": "queued"}, status_code=202)


async def list_schedules(gw: GatewayContext, _request: HTTPRequest) -> Response:
    """Scheduled functions and their next fire times."""
    assert gw.scheduler is not None
    return JSONResponse(
        [
            {
                "function": s.function,
                "schedule": s.cron,
                "timezone": s.timezone,
                "next_fire": s.next_fire.isoformat() if s.next_fire else None,
                "last_fired": s.last_fired.isoformat() if s.last_fired else None,
                "error": s.error,
            }
            for s in await gw.scheduler.list()
        ]
    )
