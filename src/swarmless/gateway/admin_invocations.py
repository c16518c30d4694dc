"""The admin routes of invocations: records, what a call printed, async results, redrive.

A record shows how the child containers its call started ended (``detached``); a child
swarmless had to kill makes the call's ``error``. An async call's result is the admin's to
read, and also the calling function's: a container may read the results of the calls its
function made (its caller token, :mod:`swarmless.gateway.async_routes`).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response

from swarmless.exceptions import InvalidArgument, InvocationNotFound, Unauthorized
from swarmless.gateway.admin_http import admin_dispatcher
from swarmless.gateway.asgi import bearer
from swarmless.gateway.async_routes import get_result, retry_invocation
from swarmless.gateway.context import GatewayContext
from swarmless.records import STATUSES, InvocationRecord

__all__ = ["InvocationRoutes"]


class InvocationRoutes:
    """The invocation routes of one gateway (``/invocations``...)."""

    def __init__(self, gw: GatewayContext) -> None:
        self.gw = gw

    async def list_invocations(self, request: HTTPRequest) -> Response:
        """Invocation records, newest first (``function``, ``status``, ``limit``)."""
        admin_dispatcher(self.gw, request)
        assert self.gw.store is not None
        q = request.query_params
        status = q.get("status")
        if status is not None and status not in STATUSES:
            raise InvalidArgument(f"status must be one of {', '.join(STATUSES)}; got {status!r}")
        try:
            limit = int(q.get("limit", "100"))
        except ValueError:
            raise InvalidArgument(f"limit must be a number, got {q.get('limit')!r}") from None
        if not 1 <= limit <= 10_000:
            raise InvalidArgument(f"limit must be between 1 and 10000, got {limit}")
        records = await self.gw.store.list_invocations(
            function=q.get("function"), status=status, parent=q.get("parent"), limit=limit
        )
        return JSONResponse(await self._shown(records))

    async def _shown(self, records: list[InvocationRecord]) -> list[dict[str, Any]]:
        """Records as the API shows them: with how the child containers each call started
        ended (``detached``); a child swarmless had to kill makes the call's ``error``."""
        assert self.gw.store is not None
        ended = await self.gw.store.children_of(r.id for r in records)
        out = []
        for rec in records:
            body = rec.to_dict()
            children = ended.get(rec.id, [])
            body["detached"] = [c.to_dict() for c in children]
            killed = [c.error for c in children if c.killed and c.error]
            if killed:
                body["error"] = "\n".join([*([rec.error] if rec.error else []), *killed])
            out.append(body)
        return out

    async def _record(self, request: HTTPRequest) -> InvocationRecord:
        """The record named by the route's ``call_id`` (admin only); 404 when unknown."""
        admin_dispatcher(self.gw, request)
        assert self.gw.store is not None
        call_id = request.path_params["call_id"]
        rec = await self.gw.store.get_invocation(call_id)
        if rec is None:
            raise InvocationNotFound(call_id)
        return rec

    async def get_invocation(self, request: HTTPRequest) -> Response:
        """One invocation record, with the ids of the calls it made and how the child
        containers it started ended."""
        rec = await self._record(request)
        assert self.gw.store is not None
        children = await self.gw.store.list_invocations(parent=rec.id, limit=1000)
        (body,) = await self._shown([rec])
        body["children"] = [c.id for c in children]
        return JSONResponse(body)

    async def get_logs(self, request: HTTPRequest) -> Response:
        """What one invocation printed: ``{"stdout": ..., "stderr": ...}``."""
        call_id = (await self._record(request)).id
        assert self.gw.store is not None
        logs = await self.gw.store.get_logs(call_id)
        stdout, stderr = logs or (b"", b"")
        return JSONResponse(
            {
                "id": call_id,
                "stdout": stdout.decode("utf-8", "replace"),
                "stderr": stderr.decode("utf-8", "replace"),
            }
        )

    async def get_result(self, request: HTTPRequest) -> Response:
        """What a finished async call answered (``?wait=S`` waits for it). A function's
        container may read the calls its function made (its caller token)."""
        token = bearer(request.scope)  # Bearer, or Basic admin:<token> as every admin route
        try:
            self.gw.check_admin(token)
        except Unauthorized:
            await self._own_child(token, request.path_params["call_id"])
        return await get_result(self.gw, request)

    async def _own_child(self, token: str | None, call_id: str) -> None:
        """Unauthorized unless ``token`` is a function container's and ``call_id`` a call
        its function made (the call's parent is a call of that function)."""
        assert self.gw.dispatcher is not None
        assert self.gw.store is not None
        grant = self.gw.callers.caller(token, self.gw.dispatcher)
        if grant is None:
            raise Unauthorized("this route needs the admin token: Authorization: Bearer <token>")
        rec = await self.gw.store.get_invocation(call_id)
        if rec is not None and rec.parent:
            # The call this container serves now (its record may not be written yet)...
            if self.gw.callers.parent(grant, rec.parent, self.gw.dispatcher) == rec.parent:
                return
            # ...or a call of the same function still running here (answered, its record
            # not kept yet: no longer in the container's hand, not yet in the store)...
            if self.gw.dispatcher.in_flight(rec.parent) == grant.function:
                return
            # ...or an earlier call of the same function.
            parent = await self.gw.store.get_invocation(rec.parent)
            if parent is not None and parent.function == grant.function:
                return
        raise Unauthorized(
            f"function {grant.function!r} may read only the results of the calls it made; "
            f"call {call_id} is not one of them"
        )

    async def retry(self, request: HTTPRequest) -> Response:
        """Queue a dead or failed async call again (the dead letter's redrive)."""
        admin_dispatcher(self.gw, request)
        return await retry_invocation(self.gw, request)
