"""The gateway's admin routes (Starlette): deploy, inspect, scale and remove functions,
invocation records and logs, async results and redrive, secrets, schedules, API docs.

Every route but the docs needs the admin token. The hot paths (``/function/*``,
``/async-function/*``, the runtime API) are raw ASGI in :mod:`swarmless.gateway.app`.

:class:`Admin` holds the route table; the routes live with what they are about:
:mod:`~swarmless.gateway.admin_functions` (functions),
:mod:`~swarmless.gateway.admin_invocations` (records, logs, results, redrive), and here
secrets, schedules and the API's description (:mod:`swarmless.gateway.openapi`,
:mod:`swarmless.gateway.docs`). What every route shares (the admin check, bounded bodies,
JSON errors, never a 500 for bad input) is :mod:`~swarmless.gateway.admin_http`,
re-exported here. What each route takes and answers is described in
:mod:`swarmless.gateway.schemas`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request as HTTPRequest
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from swarmless.exceptions import InvalidArgument, NotFound
from swarmless.gateway import admin_http
from swarmless.gateway.admin_functions import FunctionRoutes
from swarmless.gateway.admin_http import MAX_JSON as MAX_JSON
from swarmless.gateway.admin_http import (
    MAX_SECRET,
    Endpoint,
    admin_dispatcher,
    by_method,
    read_body,
)
from swarmless.gateway.admin_http import safe_headers as safe_headers
from swarmless.gateway.admin_invocations import InvocationRoutes
from swarmless.gateway.async_routes import list_schedules
from swarmless.gateway.context import GatewayContext
from swarmless.gateway.docs import docs_page
from swarmless.gateway.openapi import openapi_schema

__all__ = ["Admin", "Endpoint", "by_method"]

_SECRET_NAME = re.compile(r"[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?")


class Admin:
    """The admin routes of one gateway (as a :class:`GatewayContext`: it reads the
    gateway's parts and asks through its methods)."""

    def __init__(self, gw: GatewayContext) -> None:
        self.gw = gw
        #: ``/system/functions`` and ``/system/scale`` (the OpenFaaS routes call them too).
        self.functions = FunctionRoutes(gw)
        #: ``/invocations`` and what hangs under it.
        self.invocations = InvocationRoutes(gw)
        self._openapi: dict[str, Any] | None = None

    def routes(self) -> list[Route]:
        """One route per path (so that a 405 lists every method of the path in Allow)."""
        f, i = self.functions, self.invocations
        table: dict[str, dict[str, Endpoint]] = {
            "/openapi.json": {"GET": self.openapi},
            "/docs": {"GET": self.docs},
            "/system/functions": {
                "GET": f.list_functions,
                "POST": f.deploy,
                "PUT": f.deploy,
            },
            "/system/functions/{name}": {
                "GET": f.get_function,
                "PUT": f.update_function,
                "DELETE": f.delete_function,
            },
            "/system/scale/{name}": {"POST": f.scale},
            "/invocations": {"GET": i.list_invocations},
            "/invocations/{call_id}": {"GET": i.get_invocation},
            "/invocations/{call_id}/logs": {"GET": i.get_logs},
            "/invocations/{call_id}/result": {"GET": i.get_result},
            "/invocations/{call_id}/retry": {"POST": i.retry},
            "/system/schedules": {"GET": self.schedules},
            "/system/secrets": {"GET": self.list_secrets},
            "/system/secrets/{name}": {
                "PUT": self.put_secret,
                "POST": self.put_secret,
                "DELETE": self.delete_secret,
            },
        }
        return [
            Route(path, by_method(handlers), methods=list(handlers))
            for path, handlers in table.items()
        ]

    def exception_handlers(self) -> Mapping[Any, Any]:
        return admin_http.exception_handlers()

    async def list_secrets(self, request: HTTPRequest) -> Response:
        """Names of the secrets functions can mount (never their values)."""
        admin_dispatcher(self.gw, request)
        return JSONResponse(await self.gw.backend.list_secrets())

    async def put_secret(self, request: HTTPRequest) -> Response:
        """Create or replace a secret; the body is its value."""
        admin_dispatcher(self.gw, request)
        name = request.path_params["name"]
        if not _SECRET_NAME.fullmatch(name):
            raise InvalidArgument(
                f"secret name {name!r}: lower-case letters, digits, '-', '_' and '.' only"
            )
        data = await read_body(request, MAX_SECRET, f"secret {name!r}")
        await self.gw.backend.put_secret(name, data)
        return Response(status_code=204)

    async def delete_secret(self, request: HTTPRequest) -> Response:
        """Remove a secret."""
        admin_dispatcher(self.gw, request)
        name = request.path_params["name"]
        if not await self.gw.backend.delete_secret(name):
            raise NotFound(f"no secret named {name!r}")
        return Response(status_code=204)

    async def schedules(self, request: HTTPRequest) -> Response:
        """Scheduled functions and their next fire times."""
        admin_dispatcher(self.gw, request)
        return await list_schedules(self.gw, request)

    async def openapi(self, _request: HTTPRequest) -> Response:
        """The OpenAPI description of the gateway (admin routes from their docstrings)."""
        return JSONResponse(self.schema())

    async def docs(self, _request: HTTPRequest) -> Response:
        """A self-contained page listing the API (no CDN needed)."""
        return HTMLResponse(docs_page(self.schema()))

    def schema(self) -> dict[str, Any]:
        """The gateway's OpenAPI document (built once)."""
        if self._openapi is None:
            self._openapi = openapi_schema(self.gw.app.routes)
        return self._openapi
