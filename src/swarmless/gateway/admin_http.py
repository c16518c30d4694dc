"""What every admin route shares: the admin check, bounded bodies, one method per handler,
and the JSON error answers.

Bad input gets a 4xx with a JSON body naming the problem (:mod:`swarmless.exceptions`),
never a 500: bodies are read with a limit and parsed here; an error that escapes a route is
answered by :func:`exception_handlers` in the same JSON shape.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeVar

from starlette.exceptions import HTTPException
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response

from swarmless.dispatch.dispatcher import Dispatcher
from swarmless.exceptions import InvalidArgument, SwarmlessError
from swarmless.gateway.asgi import ClientGone, bearer, disconnected, header_safe
from swarmless.gateway.context import GatewayContext

__all__ = [
    "MAX_JSON",
    "MAX_SECRET",
    "Endpoint",
    "admin_dispatcher",
    "by_method",
    "exception_handlers",
    "read_body",
    "read_json",
    "safe_headers",
    "unless_gone",
]

log = logging.getLogger("swarmless.gateway")

#: Largest JSON body of an admin route (a function spec is a few KiB).
MAX_JSON = 1024 * 1024
#: Largest secret.
MAX_SECRET = 512 * 1024

Endpoint = Callable[[HTTPRequest], Awaitable[Response]]
T = TypeVar("T")


def by_method(handlers: dict[str, Endpoint]) -> Endpoint:
    """One endpoint that calls the handler of the request's method (HEAD: GET's); the
    handlers are kept as its ``handlers`` (the API description reads their docstrings)."""

    async def endpoint(request: HTTPRequest) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    endpoint.handlers = handlers  # type: ignore[attr-defined]
    return endpoint


def admin_dispatcher(gw: GatewayContext, request: HTTPRequest) -> Dispatcher:
    """The gateway's dispatcher, once the request has shown the admin token."""
    gw.check_admin(bearer(request.scope))  # Bearer, or Basic admin:<token>
    assert gw.dispatcher is not None
    return gw.dispatcher


async def read_body(request: HTTPRequest, limit: int, what: str) -> bytes:
    """The request body; InvalidArgument past ``limit`` bytes (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise InvalidArgument(f"{what} is {declared} bytes; {limit} at most")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InvalidArgument(f"{what} is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: HTTPRequest, what: str) -> Any:
    """The body as JSON; InvalidArgument saying why when it is not."""
    body = await read_body(request, MAX_JSON, what)
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:
        why = e.msg if isinstance(e, json.JSONDecodeError) else type(e).__name__
        raise InvalidArgument(f"{what} must be JSON ({why})") from None


async def unless_gone(
    gw: GatewayContext, request: HTTPRequest, kind: str, wait: Coroutine[Any, Any, T]
) -> T:
    """What ``wait`` gives, unless the client goes away first: then ``wait`` is cancelled
    and :class:`~swarmless.gateway.asgi.ClientGone` raised (answered by an empty 499 that
    nobody reads). A wait can last an hour (``scale --wait``), and holds a watcher or a
    poll all along: nothing of it is kept for a client that is gone, one that gave up and
    asked again included. Counted while it waits in
    ``swarmless_gateway_waits_in_progress{kind}``, and in
    ``swarmless_gateway_waits_abandoned_total{kind}`` when its client left first.

    For a request whose body was read already (or that has none)."""
    metrics = gw.dispatcher.metrics if gw.dispatcher is not None else None
    task = asyncio.ensure_future(wait)
    gone = asyncio.ensure_future(disconnected(request.receive))
    if metrics is not None:
        metrics.waits.labels(kind).inc()
    try:
        done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
        if metrics is not None:
            metrics.waits.labels(kind).dec()
    if task in done:
        return task.result()
    await asyncio.wait({task})  # its clean-up (a watcher given back) runs before the answer
    if metrics is not None:
        metrics.waits_abandoned.labels(kind).inc()
    log.debug("%s %s: the client went away while it waited", request.method, request.url.path)
    raise ClientGone()


def safe_headers(exc: SwarmlessError) -> dict[str, str]:
    """The headers of an error answer: the call id only when it can be a header value."""
    headers = {"x-swarmless-error": "1"}
    if exc.invocation and header_safe(exc.invocation):
        headers["x-call-id"] = exc.invocation
    return headers


def exception_handlers() -> Mapping[Any, Any]:
    """Starlette's exception handlers: every error answers JSON, a crash too."""
    return {
        SwarmlessError: _on_error,
        ClientGone: _on_gone,
        HTTPException: _on_http_error,
        Exception: _on_crash,
    }


async def _on_error(_request: HTTPRequest, exc: Exception) -> Response:
    assert isinstance(exc, SwarmlessError)
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=safe_headers(exc))


async def _on_gone(_request: HTTPRequest, _exc: Exception) -> Response:
    return Response(status_code=499)  # nobody reads it: the client has gone away


async def _on_http_error(_request: HTTPRequest, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    body = {"error": "http_error", "message": exc.detail or f"HTTP {exc.status_code}"}
    headers = {**(exc.headers or {}), "x-swarmless-error": "1"}  # a 405's Allow too
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


async def _on_crash(request: HTTPRequest, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    body = {"error": "internal", "message": f"{type(exc).__name__}: {exc}"}
    return JSONResponse(body, status_code=500, headers={"x-swarmless-error": "1"})
