"""One implementation of every gateway call, for both faces (httpx's ``BaseClient``).

:class:`BaseGatewayClient` builds each request (:mod:`~swarmless.sdk.gateway_wire`), moves
between the gateway's addresses and reads each answer; :class:`~swarmless.GatewayClient`
(``httpx.Client``) and :class:`~swarmless.AsyncGatewayClient` (``httpx.AsyncClient``) only
send. Each operation is written once as a generator that yields the requests it needs and
receives their responses (a call that waits for a result polls several times; ``map``
spawns, then waits); each face runs it with its own ``send``.

A request that could not be delivered to any address raises
:class:`~swarmless.GatewayUnavailable` (nothing ran, retry is safe); one that was delivered
but got no answer raises :class:`~swarmless.NoAnswer` (it may have run) and is never sent
twice.
"""

from __future__ import annotations

import json as jsonlib
import socket
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import httpx

from swarmless.config import Settings
from swarmless.exceptions import (
    GatewayUnavailable,
    InvalidArgument,
    NoAnswer,
    SwarmlessError,
    WaitTimeout,
)
from swarmless.records import InvocationRecord
from swarmless.sdk.gateway_wire import (
    POLL,
    GatewayRequest,
    InvokeResult,
    Steps,
    invoke_request,
    invoke_result,
    plain_name,
    raise_for,
    spawn_headers,
    spec_json,
)
from swarmless.spec import FunctionSpec

__all__ = ["NO_DELAY", "BaseGatewayClient"]


#: Errors after which nothing reached the gateway: the next address may be tried.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: Errors of the request itself: no address would take it.
_UNSENDABLE = (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.InvalidURL)


class _Addresses:
    """The gateway's addresses (replicas), the one in use first: a request that could not
    be delivered moves to the next; one that was delivered is never sent twice."""

    def __init__(self, settings: Settings) -> None:
        self.urls = list(settings.gateway_urls) or ["http://127.0.0.1:8080"]
        self.current = 0
        self._last: Exception | None = None

    def attempts(self) -> list[tuple[int, str]]:
        n = len(self.urls)
        return [((self.current + k) % n, self.urls[(self.current + k) % n]) for k in range(n)]

    def failed(self, e: httpx.RequestError, request: httpx.Request) -> None:
        """A request failed: raise, unless nothing reached the gateway (try the next)."""
        what = f"{request.method} {request.url.path}"
        if isinstance(e, _UNSENDABLE):
            raise InvalidArgument(f"cannot send {what}: {e}") from e
        if not isinstance(e, _NOT_SENT):
            address = f"{request.url.scheme}://{request.url.netloc.decode('ascii', 'replace')}"
            raise NoAnswer(address=address, request=what, reason=_reason(e)) from e
        self._last = e

    def unreachable(self) -> GatewayUnavailable:
        """The error once no address could be reached (nothing was sent)."""
        assert self._last is not None
        where = " or ".join(self.urls)
        err = GatewayUnavailable(
            f"no gateway answers at {where} ({_reason(self._last)}). "
            "Start it with `swarmless up`, or set SWARMLESS_GATEWAY_URL.",
            address=where,
        )
        err.__cause__ = self._last
        return err


def _reason(e: Exception) -> str:
    detail = str(e).strip()
    return f"{type(e).__name__}: {detail}" if detail else type(e).__name__


#: httpx writes a request's headers and body separately: without TCP_NODELAY the body
#: waits for the ACK of the headers, which the server delays by 40 ms, on every call.
NO_DELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


def _serving() -> str | None:
    """The call this thread serves in a warm container's runtime (none elsewhere)."""
    runtime = sys.modules.get("swarmless.runtime.invocation")
    call: str | None = getattr(getattr(runtime, "CURRENT", None), "call_id", None)
    return call


class BaseGatewayClient:
    """Everything both faces share: settings, addresses, and every operation's requests
    and answers (the ``_op_*`` generators). A face adds only ``_http`` and ``_drive``."""

    _http: httpx.Client | httpx.AsyncClient

    def __init__(self, settings: Settings | None = None, *, timeout: float | None = None) -> None:
        self.settings = settings or Settings.load()
        if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
            raise InvalidArgument(f"timeout must be a positive number of seconds, got {timeout!r}")
        self._addresses = _Addresses(self.settings)

    def _client_options(self, timeout: float | None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.settings.token}"} if self.settings.token else {}
        # Inside a function the calls made here are children of the call it serves: the
        # one-shot container's (SWARMLESS_CALL_ID), or the warm handler thread's.
        parent = self.settings.call_id or _serving()
        if parent:
            headers["X-Swarmless-Parent"] = parent
        return {"headers": headers, "timeout": httpx.Timeout(timeout or 300.0, connect=10.0)}

    # -- sending, once for both faces -----------------------------------------------------

    def _exchange(self, req: GatewayRequest) -> Steps[httpx.Response]:
        """Send ``req`` to the first address that takes it; its response."""
        timeout: Any = httpx.USE_CLIENT_DEFAULT
        if req.read_timeout is not None:
            t = self._http.timeout
            read = None if t.read is None else max(t.read, req.read_timeout)
            timeout = httpx.Timeout(connect=t.connect, read=read, write=t.write, pool=t.pool)
        for i, base in self._addresses.attempts():
            request = self._http.build_request(
                req.method,
                base + req.path,
                params=req.params,
                headers=req.headers,
                content=req.content,
                timeout=timeout,
            )
            try:
                response = yield request
            except httpx.RequestError as e:
                self._addresses.failed(e, request)
                continue
            self._addresses.current = i
            return response
        raise self._addresses.unreachable()

    def _op_json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        content: bytes | None = None,
    ) -> Steps[Any]:
        headers: dict[str, str] = {}
        if json is not None:
            content = jsonlib.dumps(json).encode()
            headers["Content-Type"] = "application/json"
        response = yield from self._exchange(GatewayRequest(method, path, params, headers, content))
        raise_for(response)
        return response.json() if response.content else None

    # -- the operations -------------------------------------------------------------------

    def _op_invoke(self, name: str, data: bytes | str | None, **kw: Any) -> Steps[InvokeResult]:
        response = yield from self._exchange(invoke_request(name, data, **kw))
        return invoke_result(response)

    def _op_spawn(
        self,
        name: str,
        data: bytes | str | None,
        *,
        json: Any,
        args: Sequence[str] | None,
        path: str,
        headers: Mapping[str, str] | None,
        idempotency_key: str | None,
        callback_url: str | None,
    ) -> Steps[str]:
        request = invoke_request(
            name,
            data,
            json=json,
            args=args,
            method="POST",
            path=path,
            query=None,
            headers=spawn_headers(headers, idempotency_key, callback_url),
            prefix="/async-function",
        )
        response = yield from self._exchange(request)
        raise_for(response)
        call_id: str = response.headers.get("x-call-id", "")
        if not call_id:
            raise SwarmlessError(
                f"the gateway accepted the call of {name!r} (HTTP {response.status_code}) "
                "without a call id: is SWARMLESS_GATEWAY_URL a swarmless gateway?"
            )
        return call_id

    def _op_result(self, call_id: str, timeout: float | None) -> Steps[InvokeResult]:
        plain_name(call_id, "call id")
        if timeout is not None and (not isinstance(timeout, int | float) or timeout < 0):
            raise InvalidArgument(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = POLL if deadline is None else max(0.0, deadline - time.monotonic())
            wait = min(POLL, left)
            request = GatewayRequest(
                "GET",
                f"/invocations/{call_id}/result",
                params={"wait": f"{wait:.3f}"},
                read_timeout=wait + 30.0,  # the gateway answers after ``wait`` at the latest
            )
            response = yield from self._exchange(request)
            raise_for(response)
            if response.status_code != 202:
                return invoke_result(response)
            if deadline is not None and time.monotonic() >= deadline:
                status = response.json().get("status", "pending")
                raise WaitTimeout(
                    f"call {call_id} is still {status} after {timeout:g}s; it goes on "
                    "(wait again with result(), or read its record)",
                    timeout=float(timeout or 0),
                    invocation=call_id,
                )

    def _op_map(
        self, name: str, inputs: Iterable[Any], timeout: float | None
    ) -> Steps[list[InvokeResult]]:
        call_ids: list[str] = []
        for item in inputs:
            call_id = yield from self._op_spawn(
                name,
                jsonlib.dumps(item).encode(),
                json=None,
                args=None,
                path="",
                headers={"Content-Type": "application/json"},
                idempotency_key=None,
                callback_url=None,
            )
            call_ids.append(call_id)
        results: list[InvokeResult] = []
        for call_id in call_ids:
            results.append((yield from self._op_result(call_id, timeout)))
        return results

    def _op_deploy(
        self, spec: FunctionSpec | Mapping[str, Any], dry_run: bool, wait: float | None
    ) -> Steps[dict[str, Any]]:
        params = {"dry_run": "true"} if dry_run else {}
        if wait is not None:
            params["wait"] = f"{wait:g}"
        # The answer comes once the new version has rolled out (60 s at most by default).
        request = GatewayRequest(
            "POST",
            "/system/functions",
            params=params,
            headers={"Content-Type": "application/json"},
            content=jsonlib.dumps(spec_json(spec)).encode(),
            read_timeout=(60.0 if wait is None else wait) + 30.0,
        )
        response = yield from self._exchange(request)
        raise_for(response)
        return cast(dict[str, Any], response.json())

    def _op_functions(self) -> Steps[list[dict[str, Any]]]:
        result = yield from self._op_json("GET", "/system/functions")
        return cast(list[dict[str, Any]], result)

    def _op_function(self, name: str) -> Steps[dict[str, Any]]:
        result = yield from self._op_json("GET", f"/system/functions/{plain_name(name, 'name')}")
        return cast(dict[str, Any], result)

    def _op_remove(self, name: str) -> Steps[None]:
        yield from self._op_json("DELETE", f"/system/functions/{plain_name(name, 'name')}")

    def _op_scale(
        self, name: str, replicas: int | None, wait: float | None = None
    ) -> Steps[dict[str, Any]]:
        if replicas is not None and (
            not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0
        ):
            raise InvalidArgument(f"replicas must be an integer >= 0 or None, got {replicas!r}")
        if wait is not None and (
            not isinstance(wait, int | float) or isinstance(wait, bool) or not 0 <= wait <= 3600
        ):
            raise InvalidArgument(f"wait must be a number of seconds from 0 to 3600, got {wait!r}")
        if wait and replicas is None:
            raise InvalidArgument(
                "wait needs a number of replicas (None unpins: nothing to wait for)"
            )
        body: dict[str, Any] = {"replicas": replicas}
        if wait:
            body["wait"] = wait
        result = yield from self._exchange(
            GatewayRequest(
                "POST",
                f"/system/scale/{plain_name(name, 'name')}",
                headers={"Content-Type": "application/json"},
                content=jsonlib.dumps(body).encode(),
                # the gateway answers after ``wait`` at the latest
                read_timeout=wait + 30.0 if wait else None,
            )
        )
        raise_for(result)
        return cast(dict[str, Any], result.json())

    def _op_invocation(self, call_id: str) -> Steps[InvocationRecord]:
        row = yield from self._op_json("GET", f"/invocations/{plain_name(call_id, 'call id')}")
        return InvocationRecord.from_dict(row)

    def _op_invocations(
        self, function: str | None, status: str | None, limit: int
    ) -> Steps[list[InvocationRecord]]:
        params = {"limit": str(limit)}
        if function:
            params["function"] = function
        if status:
            params["status"] = status
        rows = yield from self._op_json("GET", "/invocations", params=params)
        return [InvocationRecord.from_dict(r) for r in rows]

    def _op_logs(self, call_id: str) -> Steps[dict[str, str]]:
        path = f"/invocations/{plain_name(call_id, 'call id')}/logs"
        result = yield from self._op_json("GET", path)
        return cast(dict[str, str], result)

    def _op_retry(self, call_id: str) -> Steps[None]:
        yield from self._op_json("POST", f"/invocations/{plain_name(call_id, 'call id')}/retry")

    def _op_put_secret(self, name: str, value: bytes | str) -> Steps[None]:
        content = value.encode() if isinstance(value, str) else value
        if not isinstance(content, bytes):
            raise InvalidArgument(f"a secret is bytes or str, got {type(value).__name__}")
        path = f"/system/secrets/{plain_name(name, 'secret name')}"
        yield from self._op_json("PUT", path, content=content)

    def _op_delete_secret(self, name: str) -> Steps[None]:
        yield from self._op_json("DELETE", f"/system/secrets/{plain_name(name, 'secret name')}")

    def _op_secrets(self) -> Steps[list[str]]:
        result = yield from self._op_json("GET", "/system/secrets")
        return cast(list[str], result)

    def _op_schedules(self) -> Steps[list[dict[str, Any]]]:
        result = yield from self._op_json("GET", "/system/schedules")
        return cast(list[dict[str, Any]], result)
