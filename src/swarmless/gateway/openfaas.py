"""OpenFaaS's gateway API on swarmless, so that faas-cli and OpenFaaS scripts work unchanged.

Routes (OpenFaaS's paths and bodies, after its gateway's published API description)::

    GET    /system/functions               the functions: each item is swarmless's and
                                           OpenFaaS's FunctionStatus at once (below)
    POST   /system/functions               deploy: OpenFaaS's FunctionDeployment
    PUT    /system/functions               update: the same body; 404 if not deployed
    DELETE /system/functions               remove: {"functionName": NAME}
    GET    /system/function/{name}         one function as a FunctionStatus
    POST   /system/scale-function/{name}   {"serviceName": NAME, "replicas": N}
    GET    /system/info                    provider, version, architecture

``/function/{name}``, ``/async-function/{name}`` and ``/healthz`` are the same paths in both.
Credentials: the admin token, as ``Authorization: Bearer <token>`` or, as OpenFaaS has it,
basic auth with user ``admin`` and the token as the password (:func:`.asgi.bearer`).

**One path, two APIs.** ``/system/functions`` is swarmless's own path too. A POST or PUT
body with ``service`` (OpenFaaS's name field, which a swarmless spec does not have) is an
OpenFaaS FunctionDeployment; any other body is a swarmless spec and goes to the admin route
unchanged. A GET needs no choice: swarmless's items (``name``, ``version``, ``spec``,
``containers``, ``scale``) and OpenFaaS's (``image``, ``envProcess``, ``labels``,
``replicas``, ``invocationCount``...) share only ``name``, so every item carries both and each
kind of client reads its own fields. DELETE on that path is OpenFaaS's alone.

**The mapping** is :mod:`~swarmless.gateway.openfaas_mapping`'s (docs/openfaas.md has it
in full): ``service`` is the name, ``envProcess`` the command of a ``oneshot`` function (the
classic watchdog's contract: one process per call, body on stdin, stdout the answer),
``annotations`` ``com.swarmless.FIELD`` set spec fields, the others are kept as labels.

Each route translates and hands the work to the admin route that does it (deploy, update,
remove, scale, inspect): one implementation of each, whichever API asked.
"""

from __future__ import annotations

import json
import platform
from typing import Any

from prometheus_client import Counter
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from swarmless import __version__
from swarmless.exceptions import InvalidArgument, SpecError
from swarmless.gateway.admin import MAX_JSON, Admin, Endpoint, by_method
from swarmless.gateway.asgi import Message, bearer
from swarmless.gateway.context import GatewayContext
from swarmless.gateway.openfaas_mapping import NAMESPACE, to_spec, to_status

__all__ = ["OpenFaaS", "calls_by_function"]


def calls_by_function(counter: Counter | None) -> dict[str, float]:
    """Calls finished, by function, from the gateway's ``swarmless_invocations`` counter."""
    out: dict[str, float] = {}
    for metric in counter.collect() if counter is not None else ():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                name = sample.labels.get("function", "")
                out[name] = out.get(name, 0) + sample.value
    return out


def _replayed(request: HTTPRequest, body: bytes, **path_params: str) -> HTTPRequest:
    """``request`` again, with ``body`` as its body and ``path_params`` as its path's names:
    what an admin route is handed to do the work."""
    scope = dict(request.scope)
    scope["headers"] = [
        *((k, v) for k, v in request.scope["headers"] if k != b"content-length"),
        (b"content-length", str(len(body)).encode()),
    ]
    scope["path_params"] = {**request.path_params, **path_params}
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:  # then what the client's connection says (its disconnect, when it leaves)
            return await request.receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return HTTPRequest(scope, receive)


class OpenFaaS:
    """OpenFaaS's management routes, each handing its work to the admin route that does it."""

    def __init__(self, gw: GatewayContext, admin: Admin, invocations: Counter | None = None):
        self.gw = gw
        self.admin = admin
        self._invocations = invocations

    def routes(self) -> list[Route]:
        """Mounted before the admin routes: ``/system/functions`` is served here first."""
        table: dict[str, dict[str, Endpoint]] = {
            "/system/functions": {
                "GET": self.list_functions,
                "POST": self.deploy,
                "PUT": self.update,
                "DELETE": self.delete,
            },
            "/system/function/{name}": {"GET": self.function_status},
            "/system/scale-function/{name}": {"POST": self.scale},
            "/system/info": {"GET": self.info},
        }
        return [
            Route(path, by_method(handlers), methods=list(handlers))
            for path, handlers in table.items()
        ]

    def _check(self, request: HTTPRequest) -> None:
        self.gw.check_admin(bearer(request.scope))
        namespace = request.query_params.get("namespace", "")
        if namespace not in ("", NAMESPACE):
            raise InvalidArgument(
                f"namespace {namespace[:100]!r}: swarmless has one, OpenFaaS's default "
                f"({NAMESPACE}); leave it out"
            )

    async def _json_body(self, request: HTTPRequest) -> tuple[bytes, Any]:
        """The body (at most the admin routes' limit) and its JSON (None if it is not)."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_JSON:
            raise InvalidArgument(f"the body is {declared} bytes; {MAX_JSON} at most")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_JSON:
                raise InvalidArgument(f"the body is over {MAX_JSON} bytes")
        try:
            return body, json.loads(body)
        except (ValueError, RecursionError):
            return body, None

    async def list_functions(self, request: HTTPRequest) -> Response:
        """List deployed functions (swarmless's fields and OpenFaaS's FunctionStatus)."""
        self._check(request)
        answer = await self.admin.functions.list_functions(request)
        calls = calls_by_function(self._invocations)
        items = [
            {**to_status(item, calls.get(item["name"], 0)), **item}
            for item in json.loads(bytes(answer.body))
        ]
        return JSONResponse(items)

    async def _deploy(self, request: HTTPRequest, update: bool) -> Response:
        self._check(request)
        body, data = await self._json_body(request)
        if not (isinstance(data, dict) and "service" in data):  # a swarmless spec
            return await self.admin.functions.deploy(_replayed(request, body))
        spec, origin = to_spec(data)
        again = _replayed(request, json.dumps(spec).encode(), name=spec["name"])
        try:
            if update:
                answer = await self.admin.functions.update_function(again)
            else:
                answer = await self.admin.functions.deploy(again)
        except SpecError as e:  # name OpenFaaS's fields, not the spec's
            raise SpecError({origin.get(k, k): v for k, v in e.errors.items()}) from None
        if request.query_params.get("dry_run", "").lower() in ("1", "true"):
            return answer  # what would change, as swarmless says it
        return Response(status_code=202)

    async def deploy(self, request: HTTPRequest) -> Response:
        """Deploy a function: an OpenFaaS FunctionDeployment or a swarmless spec.

        A body with ``service`` is OpenFaaS's (answered 202, no body); any other is a
        swarmless spec, answered as ``POST /system/functions`` answers it.
        """
        return await self._deploy(request, update=False)

    async def update(self, request: HTTPRequest) -> Response:
        """Update a function: an OpenFaaS FunctionDeployment (404 when it is not deployed;
        202, no body, as faas-netes answers) or a swarmless spec (deployed or updated)."""
        return await self._deploy(request, update=True)

    async def delete(self, request: HTTPRequest) -> Response:
        """Remove a function (OpenFaaS: ``{"functionName": NAME}``; 200, no body)."""
        self._check(request)
        _, data = await self._json_body(request)
        name = data.get("functionName") if isinstance(data, dict) else None
        if not isinstance(data, dict) or set(data) != {"functionName"} or not isinstance(name, str):
            raise InvalidArgument(f'the body must be {{"functionName": NAME}}, got {data!r:.200}')
        await self.admin.functions.delete_function(_replayed(request, b"", name=name))
        return Response(status_code=200)

    async def function_status(self, request: HTTPRequest) -> Response:
        """One function as OpenFaaS's FunctionStatus."""
        self._check(request)
        answer = await self.admin.functions.get_function(request)
        item = json.loads(bytes(answer.body))
        calls = calls_by_function(self._invocations).get(item["name"], 0)
        return JSONResponse(to_status(item, calls))

    async def scale(self, request: HTTPRequest) -> Response:
        """Pin a warm function to N containers (OpenFaaS: ``{"serviceName", "replicas"}``;
        202, no body). ``swarmless scale NAME auto`` gives it back to the autoscaler."""
        self._check(request)
        name = request.path_params["name"]
        _, data = await self._json_body(request)
        if not isinstance(data, dict) or not set(data) <= {"serviceName", "replicas", "namespace"}:
            raise InvalidArgument(
                f'the body must be {{"serviceName": NAME, "replicas": N}}, got {data!r:.200}'
            )
        if data.get("serviceName") not in (None, "", name):
            raise InvalidArgument(
                f"serviceName {data['serviceName']!r:.100} does not match the URL ({name!r})"
            )
        if data.get("namespace") not in (None, "", NAMESPACE):
            raise InvalidArgument(f"namespace: swarmless has one ({NAMESPACE}); leave it out")
        replicas = data.get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool):
            raise InvalidArgument(f"replicas must be a whole number, got {replicas!r:.100}")
        await self.admin.functions.scale(
            _replayed(request, json.dumps({"replicas": replicas}).encode())
        )
        return Response(status_code=202)

    async def info(self, request: HTTPRequest) -> Response:
        """The provider, its version and the architecture (what ``faas-cli version`` shows)."""
        self._check(request)
        version = {"sha": "", "release": __version__}
        return JSONResponse(
            {
                "provider": {
                    "provider": "swarmless",
                    "orchestration": self.gw.settings.backend,
                    "version": version,
                },
                "version": {**version, "commit_message": ""},
                "arch": platform.machine(),
            }
        )
