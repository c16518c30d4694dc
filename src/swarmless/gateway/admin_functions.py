"""The admin routes of functions: deploy, inspect, update, scale and remove.

A spec the engine could not run (more CPUs or memory than its host, a network it does not
have) is refused at deploy (:mod:`swarmless.gateway.capacity`); a new version of a warm
function rolls out before the answer (:mod:`swarmless.gateway.rollout`). The OpenFaaS
routes (:mod:`swarmless.gateway.openfaas`) call these handlers too.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response

from swarmless.dispatch.dispatcher import Dispatcher
from swarmless.exceptions import InvalidArgument, SpecError
from swarmless.gateway.admin_http import admin_dispatcher, read_json, unless_gone
from swarmless.gateway.capacity import EngineCapacity, check_deployable
from swarmless.gateway.context import GatewayContext
from swarmless.gateway.rollout import ROLLOUT_WAIT, check_name, pin, preview, settle
from swarmless.spec import FunctionSpec

__all__ = ["FunctionRoutes"]

log = logging.getLogger("swarmless.gateway")


class FunctionRoutes:
    """The function routes of one gateway (``/system/functions``, ``/system/scale``)."""

    def __init__(self, gw: GatewayContext) -> None:
        self.gw = gw
        self.capacity = EngineCapacity(gw.backend)

    def _describe(self, spec: FunctionSpec, version: int) -> dict[str, Any]:
        assert self.gw.dispatcher is not None
        counts = self.gw.snapshot().get(spec.name, {})
        rec = self.gw.reconcilers.get(spec.name)
        return {
            "name": spec.name,
            "version": version,
            "spec": spec.to_dict(),
            "containers": counts,
            # The last plan and the recent ones with actions, each with its reasons.
            "scale": rec.describe() if rec else {"pinned": None, "desired": None, "reason": None},
        }

    async def list_functions(self, request: HTTPRequest) -> Response:
        """List deployed functions with their containers."""
        d = admin_dispatcher(self.gw, request)
        return JSONResponse([self._describe(s, v) for s, v in d.functions.values()])

    async def _spec_from(self, request: HTTPRequest, name: str | None = None) -> FunctionSpec:
        data = await read_json(request, "the body (a JSON function spec)")
        if not isinstance(data, dict):
            raise SpecError({"spec": f"must be a JSON object, got {type(data).__name__}"})
        if name is not None and data.setdefault("name", name) != name:
            raise SpecError({"name": f"{data['name']!r} does not match the URL ({name!r})"})
        return FunctionSpec.from_dict(data)

    async def deploy(self, request: HTTPRequest) -> Response:
        """Deploy (or update) a function from a JSON spec.

        A new version (the spec changed, or what its image holds) of a warm function rolls
        out before the answer: ``rollout`` says how (``?wait=S``, default 60, bounds the
        wait). ``?dry_run=true`` checks everything and applies nothing: the answer says
        what would change."""
        d = admin_dispatcher(self.gw, request)
        spec = await self._spec_from(request)
        return await self._deploy(d, spec, request)

    def _wait(self, request: HTTPRequest) -> float:
        raw = request.query_params.get("wait")
        if raw is None:
            return ROLLOUT_WAIT
        try:
            wait = float(raw)
        except ValueError:
            wait = -1.0
        if not 0 <= wait <= 600:
            raise InvalidArgument(f"wait must be a number of seconds from 0 to 600, got {raw!r}")
        return wait

    async def _deploy(self, d: Dispatcher, spec: FunctionSpec, request: HTTPRequest) -> Response:
        dry_run = request.query_params.get("dry_run", "").lower()
        if dry_run not in ("", "0", "false", "1", "true"):
            raise InvalidArgument(f"dry_run must be true or false, got {dry_run!r}")
        if dry_run in ("1", "true"):
            return JSONResponse(await preview(spec, d, self.gw.backend, self.capacity))
        wait = self._wait(request)
        await check_deployable(spec, self.capacity)
        current, before = d.functions.get(spec.name, (None, None))
        check_name(spec, current)
        spec = await pin(spec, self.gw.backend)
        version = await d.deploy(spec)
        if spec.docker == "host-socket":
            log.warning(
                "function %r has docker: host-socket: its containers get the engine's socket, "
                "which is root on this host; docker: scoped is the safe choice",
                spec.name,
            )
        if spec.name in d.pools:
            self.gw.start_reconciler(spec.name)
        body = self._describe(spec, version)
        body["previous_version"] = before
        waits = before != version and wait > 0
        settled = settle(d, spec.name, version, wait if waits else 0.0)
        rollout = await (unless_gone(self.gw, request, "rollout", settled) if waits else settled)
        body["rollout"] = rollout.to_dict()
        return JSONResponse(body, status_code=200 if current is not None else 201)

    async def update_function(self, request: HTTPRequest) -> Response:
        """Update a deployed function."""
        d = admin_dispatcher(self.gw, request)
        name = request.path_params["name"]
        d.get(name)
        return await self._deploy(d, await self._spec_from(request, name), request)

    async def get_function(self, request: HTTPRequest) -> Response:
        """A function's spec, version and containers."""
        d = admin_dispatcher(self.gw, request)
        spec, version = d.get(request.path_params["name"])
        return JSONResponse(self._describe(spec, version))

    async def delete_function(self, request: HTTPRequest) -> Response:
        """Remove a function and its containers."""
        d = admin_dispatcher(self.gw, request)
        name = request.path_params["name"]
        await d.remove(name)
        self.gw.stop_reconciler(name)
        return Response(status_code=204)

    async def scale(self, request: HTTPRequest) -> Response:
        """Pin a warm function to N containers (``{"replicas": N}``; null unpins). With
        ``"wait": S`` the answer comes once the function runs exactly N containers, all
        ready, or a 504 after S seconds (the pin stays), or a 502 if one of them fails
        before it is ready."""
        d = admin_dispatcher(self.gw, request)
        name = request.path_params["name"]
        spec, version = d.get(name)
        rec = self.gw.reconcilers.get(name)
        if rec is None:
            raise InvalidArgument(f"function {name!r} is {spec.mode}: only warm functions scale")
        data = await read_json(request, 'the body ({"replicas": N})')
        if not isinstance(data, dict) or "replicas" not in data:
            raise InvalidArgument(f'the body must be {{"replicas": N}} (null unpins), got {data!r}')
        n = data["replicas"]
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 1000):
            raise InvalidArgument(
                f"replicas must be a whole number from 0 to 1000 or null, got {n!r}"
            )
        if n is not None and n > spec.max_containers:
            raise InvalidArgument(
                f"replicas {n} is over the max_containers of function {name!r} "
                f"({spec.max_containers}); raise max_containers first"
            )
        wait = data.get("wait", 0)
        if wait is None:
            wait = 0
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= 3600:
            raise InvalidArgument(f"wait must be a number of seconds from 0 to 3600, got {wait!r}")
        if wait and n is None:
            raise InvalidArgument(
                "wait needs a number of replicas (null unpins: nothing to wait for)"
            )
        rec.pin(n)
        if wait and n is not None:
            await unless_gone(self.gw, request, "scale", rec.settled(n, float(wait)))
            spec, version = d.get(name)
        return JSONResponse(self._describe(spec, version))
