"""Talking to a gateway: deployed functions by name, their records and logs.

One implementation of each call: a pure function builds the request and a pure function
reads the answer; the sync (``httpx.Client``) and async (``httpx.AsyncClient``) faces only
send. Errors the gateway answers with (``X-Swarmless-Error: 1``) come back as the same
exception classes the gateway raised; what a function itself answered (even a 404 from
its own router) is a result, not an error.
"""

from __future__ import annotations

import dataclasses
import json as jsonlib
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from swarmless.config import Settings
from swarmless.exceptions import (
    EngineUnavailable,
    InvocationTimeout,
    SwarmlessError,
    error_from_status,
)
from swarmless.records import InvocationRecord
from swarmless.spec import FunctionSpec

__all__ = ["AsyncGatewayClient", "GatewayClient", "Invocation", "InvokeResult"]


@dataclasses.dataclass(frozen=True)
class InvokeResult:
    """What a function answered to one sync invocation."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    call_id: str

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return jsonlib.loads(self.body)


def _invoke_request(
    name: str,
    data: bytes | str | None,
    *,
    json: Any,
    args: Sequence[str] | None,
    method: str,
    path: str,
    query: Mapping[str, str] | None,
    headers: Mapping[str, str] | None,
) -> dict[str, Any]:
    if not name or "/" in name:
        raise SwarmlessError(f"function name must be a plain name, got {name!r}")
    hdrs = dict(headers or {})
    if args is not None:
        if not all(isinstance(a, str) for a in args):
            raise SwarmlessError(f"args must be strings, got {list(args)!r}")
        hdrs["X-Swarmless-Args"] = jsonlib.dumps(list(args))
    content: bytes | None
    if json is not None:
        content = jsonlib.dumps(json).encode()
        hdrs.setdefault("Content-Type", "application/json")
    else:
        content = data.encode() if isinstance(data, str) else data
    url = f"/function/{name}" + (f"/{path.lstrip('/')}" if path else "")
    return {"method": method, "url": url, "content": content, "headers": hdrs, "params": query}


def _raise_for(response: httpx.Response) -> None:
    if response.headers.get("x-swarmless-error") == "1" or (
        response.status_code >= 400 and not response.request.url.path.startswith("/function/")
    ):
        try:
            body = response.json()
        except ValueError:
            body = {"message": response.text[:500] or f"HTTP {response.status_code}"}
        if not isinstance(body, dict):
            body = {"message": str(body)}
        raise error_from_status(response.status_code, body)


def _invoke_result(response: httpx.Response) -> InvokeResult:
    _raise_for(response)
    return InvokeResult(
        status=response.status_code,
        headers=dict(response.headers),
        body=response.content,
        call_id=response.headers.get("x-call-id", ""),
    )


def _spec_json(spec: FunctionSpec | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(spec, FunctionSpec):
        return spec.to_dict()
    return dict(spec)


def _unreachable(settings: Settings, e: Exception) -> EngineUnavailable:
    where = " or ".join(settings.gateway_urls)
    return EngineUnavailable(
        settings.gateway_url,
        type(e).__name__,
        hint="Start the gateway (`swarmless up`) or set SWARMLESS_GATEWAY_URL.",
        message=f"no gateway answers at {where} ({type(e).__name__}). "
        "Start it with `swarmless up`, or set SWARMLESS_GATEWAY_URL.",
    )


#: Errors after which nothing reached the gateway: the next address may be tried.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)


class _Addresses:
    """The gateway's addresses (replicas), the one in use first: a request that could not
    be delivered moves to the next; one that was delivered is never sent twice. Both
    client faces run the same loop::

        for i, url in addresses.attempts(path):
            try:
                response = <send to url>
            except httpx.TransportError as e:
                addresses.failed(e)   # raises, unless the next address may be tried
                continue
            addresses.current = i
            return response
        raise addresses.unreachable()
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.urls = list(settings.gateway_urls) or ["http://127.0.0.1:8080"]
        self.current = 0
        self._last: Exception | None = None

    def attempts(self, url: str) -> list[tuple[int, str]]:
        n = len(self.urls)
        order = [(self.current + k) % n for k in range(n)]
        return [(i, url if url.startswith("http") else self.urls[i] + url) for i in order]

    def failed(self, e: httpx.TransportError) -> None:
        """A request failed: raise, unless nothing reached the gateway (try the next)."""
        if not isinstance(e, _NOT_SENT):
            raise _unreachable(self.settings, e) from e
        self._last = e

    def unreachable(self) -> EngineUnavailable:
        """The error once no address could be reached."""
        assert self._last is not None
        err = _unreachable(self.settings, self._last)
        err.__cause__ = self._last
        return err


#: httpx writes a request's headers and body separately: without TCP_NODELAY the body
#: waits for the ACK of the headers, which the server delays by 40 ms, on every call.
NO_DELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


def _client_kwargs(settings: Settings, timeout: float | None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {settings.token}"} if settings.token else {}
    if settings.call_id:  # inside a function: the calls made here are its children
        headers["X-Swarmless-Parent"] = settings.call_id
    return {
        "headers": headers,
        "timeout": httpx.Timeout(timeout or 300.0, connect=10.0),
    }


class GatewayClient:
    """Sync client of a gateway (what :class:`swarmless.Client` uses for deployed functions)."""

    def __init__(self, settings: Settings, *, timeout: float | None = None) -> None:
        self.settings = settings
        self._addresses = _Addresses(settings)
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(socket_options=NO_DELAY),
            **_client_kwargs(settings, timeout),
        )

    def close(self) -> None:
        self._http.close()

    def _send(self, **request: Any) -> httpx.Response:
        addresses = self._addresses
        for i, url in addresses.attempts(request.pop("url")):
            try:
                response = self._http.request(url=url, **request)
            except httpx.TransportError as e:
                addresses.failed(e)
                continue
            addresses.current = i
            return response
        raise addresses.unreachable()

    def _json(self, method: str, url: str, **kw: Any) -> Any:
        response = self._send(method=method, url=url, **kw)
        _raise_for(response)
        return response.json() if response.content else None

    def invoke(
        self,
        name: str,
        data: bytes | str | None = None,
        *,
        json: Any = None,
        args: Sequence[str] | None = None,
        method: str = "POST",
        path: str = "",
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> InvokeResult:
        """Call function ``name`` and wait for its answer."""
        request = _invoke_request(
            name, data, json=json, args=args, method=method, path=path, query=query, headers=headers
        )
        return _invoke_result(self._send(**request))

    def deploy(self, spec: FunctionSpec | Mapping[str, Any]) -> dict[str, Any]:
        """Deploy or update a function; returns its description (version, containers)."""
        result: dict[str, Any] = self._json("POST", "/system/functions", json=_spec_json(spec))
        return result

    def functions(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json("GET", "/system/functions")
        return result

    def function(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/system/functions/{name}")
        return result

    def remove(self, name: str) -> None:
        self._json("DELETE", f"/system/functions/{name}")

    def scale(self, name: str, replicas: int | None) -> dict[str, Any]:
        result: dict[str, Any] = self._json(
            "POST", f"/system/scale/{name}", json={"replicas": replicas}
        )
        return result

    def invocation(self, call_id: str) -> InvocationRecord:
        return InvocationRecord.from_dict(self._json("GET", f"/invocations/{call_id}"))

    def invocations(
        self, *, function: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[InvocationRecord]:
        params = {"limit": str(limit)}
        if function:
            params["function"] = function
        if status:
            params["status"] = status
        rows = self._json("GET", "/invocations", params=params)
        return [InvocationRecord.from_dict(r) for r in rows]

    def logs(self, call_id: str) -> dict[str, str]:
        result: dict[str, str] = self._json("GET", f"/invocations/{call_id}/logs")
        return result

    def spawn(
        self,
        name: str,
        data: bytes | str | None = None,
        *,
        json: Any = None,
        args: Sequence[str] | None = None,
        path: str = "",
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
    ) -> Invocation:
        """Queue an async call of ``name``; returns at once, once the call is durable."""
        hdrs = dict(headers or {})
        if idempotency_key is not None:
            hdrs["Idempotency-Key"] = idempotency_key
        if callback_url is not None:
            hdrs["X-Callback-Url"] = callback_url
        request = _invoke_request(
            name, data, json=json, args=args, method="POST", path=path, query=None, headers=hdrs
        )
        request["url"] = "/async-" + request["url"].lstrip("/")
        response = self._send(**request)
        _raise_for(response)
        return Invocation(response.headers["x-call-id"], self)

    def result(self, call_id: str, timeout: float | None = None) -> InvokeResult:
        """Wait for the call ``call_id`` to finish and return its answer.

        Raises the call's error (``FunctionFailed`` for a dead call) or, when ``timeout``
        seconds pass first, :class:`InvocationTimeout` (the call goes on).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = 30.0 if deadline is None else max(0.0, min(30.0, deadline - time.monotonic()))
            response = self._send(
                method="GET", url=f"/invocations/{call_id}/result", params={"wait": str(wait)}
            )
            _raise_for(response)
            if response.status_code != 202:
                return _invoke_result(response)
            if deadline is not None and time.monotonic() >= deadline:
                raise InvocationTimeout(
                    f"call {call_id} is still {response.json().get('status')} after {timeout:g}s",
                    timeout=timeout or 0,
                    invocation=call_id,
                )

    def retry(self, call_id: str) -> None:
        """Redrive a dead async call."""
        self._json("POST", f"/invocations/{call_id}/retry")

    def put_secret(self, name: str, value: bytes) -> None:
        """Create or replace a secret (mounted as /run/secrets/NAME where a spec names it)."""
        self._json("PUT", f"/system/secrets/{name}", content=value)

    def delete_secret(self, name: str) -> None:
        self._json("DELETE", f"/system/secrets/{name}")

    def secrets(self) -> list[str]:
        result: list[str] = self._json("GET", "/system/secrets")
        return result

    def schedules(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json("GET", "/system/schedules")
        return result


class Invocation:
    """A handle on one call, from any process: ``Invocation.from_id(call_id)``.

    >>> inv = swarmless.from_env().spawn("report", json={"month": 11})  # doctest: +SKIP
    >>> inv.status, inv.result(timeout=60).json()                      # doctest: +SKIP
    """

    def __init__(self, call_id: str, client: GatewayClient) -> None:
        self.id = call_id
        self._client = client

    def __repr__(self) -> str:
        return f"<Invocation {self.id}>"

    @classmethod
    def from_id(cls, call_id: str, client: GatewayClient | None = None) -> Invocation:
        """The handle of an existing call (a client from the environment by default)."""
        return cls(call_id, client or GatewayClient(Settings.load()))

    @property
    def record(self) -> InvocationRecord:
        return self._client.invocation(self.id)

    @property
    def status(self) -> str:
        """queued, running, succeeded, failed, timeout, dead or cancelled."""
        return self.record.status

    def result(self, timeout: float | None = None) -> InvokeResult:
        """Wait for the call to finish; its answer, or its error raised."""
        return self._client.result(self.id, timeout)

    def logs(self) -> dict[str, str]:
        return self._client.logs(self.id)

    def retry(self) -> None:
        self._client.retry(self.id)


class AsyncGatewayClient:
    """The asyncio face of :class:`GatewayClient` (same requests, same parsing)."""

    def __init__(self, settings: Settings, *, timeout: float | None = None) -> None:
        self.settings = settings
        self._addresses = _Addresses(settings)
        self._http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(socket_options=NO_DELAY),
            **_client_kwargs(settings, timeout),
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def _send(self, **request: Any) -> httpx.Response:
        addresses = self._addresses
        for i, url in addresses.attempts(request.pop("url")):
            try:
                response = await self._http.request(url=url, **request)
            except httpx.TransportError as e:
                addresses.failed(e)
                continue
            addresses.current = i
            return response
        raise addresses.unreachable()

    async def invoke(
        self,
        name: str,
        data: bytes | str | None = None,
        *,
        json: Any = None,
        args: Sequence[str] | None = None,
        method: str = "POST",
        path: str = "",
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> InvokeResult:
        request = _invoke_request(
            name, data, json=json, args=args, method=method, path=path, query=query, headers=headers
        )
        return _invoke_result(await self._send(**request))
