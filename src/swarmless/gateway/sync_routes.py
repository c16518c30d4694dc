"""Sync invocations over HTTP: ``ANY /function/{name}[/{path}]``, the gateway's hot path.

The request goes through the edge (:mod:`swarmless.gateway.edge`: what of its headers the
function may see), then the dispatcher, and the function's answer goes back as it is, with
``X-Call-Id``. A private function needs the admin token or a function container's caller
token; a call made from a function names the call it was made from (the call tree). The
same path serves a function's own routes (:mod:`swarmless.gateway.routing`: ``/result/...``
reaches ``result`` with the prefix ``/result``). The async twin is
:mod:`swarmless.gateway.async_routes`.
"""

from __future__ import annotations

import logging

from swarmless.dispatch.dispatcher import Dispatcher
from swarmless.dispatch.request import Request
from swarmless.exceptions import SwarmlessError
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
from swarmless.gateway.routing import Routed

__all__ = ["invoke_sync"]

log = logging.getLogger("swarmless.gateway")

_FRAMING = (b"content-length", b"transfer-encoding")


async def invoke_sync(
    gw: GatewayContext,
    dispatcher: Dispatcher,
    scope: Scope,
    receive: Receive,
    send: Send,
    routed: Routed | None = None,
) -> None:
    """``ANY /function/{name}[/{path}]``, or a function's own route: one sync invocation."""
    prefix: str | None = None
    if routed is None:
        rest: str = scope["path"][len("/function/") :]
        name, slash, sub = rest.partition("/")
        path = slash + sub
    else:
        name, path, prefix = routed.function, routed.path, routed.prefix
    try:
        spec, _ = dispatcher.get(name)
        token = bearer(scope)
        caller = gw.callers.caller(token, dispatcher)
        if spec.private and caller is None:
            gw.check_admin(token)
        passed = gw.edge(scope)
        body = await read_body(scope, receive, spec.max_body)
        parent = None
        if caller is not None:  # a call from a function: the call tree records it
            claimed = header(scope, b"x-swarmless-parent")
            parent = gw.callers.parent(caller, claimed, dispatcher)
        server = scope.get("server") or ("127.0.0.1", gw.settings.port)
        request = Request(
            method=scope["method"],
            path=path,
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=passed.headers,
            body=body,
            remote_addr=passed.client,
            remote_port=passed.client_port,
            server_name=str(server[0]),
            server_port=int(server[1] or 0),
            scheme=passed.scheme,
            prefix=prefix,
        )
        response = await dispatcher.invoke(name, request, parent=parent)
    except ClientGone:
        return
    except SwarmlessError as e:
        await send_error(send, e)
        return
    except Exception as e:  # a bug of ours: still a JSON answer, never a bare 500
        log.exception("unexpected error invoking %s", name)
        await send_error(send, internal_error(e))
        return
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
    headers = [h for h in headers if h[0] not in _FRAMING]
    headers.append((b"x-call-id", response.call_id.encode()))
    await send_response(send, response.status, response.body, headers)
