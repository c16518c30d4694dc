"""Talking to a gateway: deployed functions by name, their records and logs.

One implementation of every call, as in httpx's ``BaseClient``: :class:`BaseGatewayClient`
builds each request (method, URL, headers, body, timeout), moves between the gateway's
addresses and reads each answer; :class:`GatewayClient` (``httpx.Client``) and
:class:`AsyncGatewayClient` (``httpx.AsyncClient``) only send. Each operation is written
once as a generator that yields the requests it needs and receives their responses (a call
that waits for a result polls several times; ``map`` spawns, then waits); each face runs
it with its own ``send``.

Errors the gateway answers with (``X-Swarmless-Error: 1``) come back as the same exception
classes, with the same fields, that the gateway raised; what a function itself answered
(even a 404 from its own router) is a result, not an error. A request that could not be
delivered to any address raises :class:`~swarmless.GatewayUnavailable` (nothing ran, retry
is safe); one that was delivered but got no answer raises :class:`~swarmless.NoAnswer`
(it may have run) and is never sent twice.
"""

from __future__ import annotations

import dataclasses
import json as jsonlib
import socket
import sys
import time
from collections.abc import Generator, Iterable, Mapping, Sequence
from typing import Any, TypeAlias, TypeVar, cast

import httpx

from swarmless.config import Settings
from swarmless.exceptions import (
    GatewayUnavailable,
    InvalidArgument,
    NoAnswer,
    SwarmlessError,
    WaitTimeout,
    error_from_status,
)
from swarmless.records import InvocationRecord
from swarmless.spec import FunctionSpec

__all__ = [
    "AsyncGatewayClient",
    "AsyncInvocation",
    "BaseGatewayClient",
    "GatewayClient",
    "Invocation",
    "InvokeResult",
]

T = TypeVar("T")

#: One operation: yields the requests it sends, receives their responses, returns its value.
Steps: TypeAlias = Generator[httpx.Request, httpx.Response, T]

#: Longest single wait the gateway grants a result long-poll (``?wait=``), seconds.
_POLL = 30.0


@dataclasses.dataclass(frozen=True)
class InvokeResult:
    """What a function answered to one invocation (sync, or an async call's stored answer)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    call_id: str

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return jsonlib.loads(self.body)


@dataclasses.dataclass(frozen=True)
class _Request:
    """What to send, before an address is chosen."""

    method: str
    path: str
    params: Mapping[str, str] | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    content: bytes | None = None
    #: Seconds to wait for the answer, when this request needs its own (a long-poll).
    read_timeout: float | None = None


def _plain(value: str, what: str) -> str:
    """A name or id that goes into a URL path: one segment, nothing to escape."""
    if (
        not isinstance(value, str)
        or not value
        or any(c in value for c in "/?#%\\")
        or not value.isprintable()
        or value != value.strip()
        or value in (".", "..")
    ):
        raise InvalidArgument(f"{what} must be a plain name, got {value!r}")
    return value


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
    prefix: str = "/function",
) -> _Request:
    _plain(name, "function name")
    hdrs = dict(headers or {})
    if args is not None:
        if isinstance(args, str) or not all(isinstance(a, str) for a in args):
            raise InvalidArgument(f"args must be a list of strings, got {args!r}")
        hdrs["X-Swarmless-Args"] = jsonlib.dumps(list(args))
    content: bytes | None
    if json is not None:
        if data is not None:
            raise InvalidArgument("give data or json=, not both")
        content = jsonlib.dumps(json).encode()
        hdrs.setdefault("Content-Type", "application/json")
    elif data is None or isinstance(data, bytes):
        content = data
    elif isinstance(data, str):
        content = data.encode()
    else:
        raise InvalidArgument(f"data must be bytes or str, got {type(data).__name__}")
    url = f"{prefix}/{name}" + (f"/{path.lstrip('/')}" if path else "")
    return _Request(method, url, params=query, headers=hdrs, content=content)


def _spawn_headers(
    headers: Mapping[str, str] | None, idempotency_key: str | None, callback_url: str | None
) -> dict[str, str]:
    hdrs = dict(headers or {})
    if idempotency_key is not None:
        hdrs["Idempotency-Key"] = idempotency_key
    if callback_url is not None:
        hdrs["X-Callback-Url"] = callback_url
    return hdrs


def _raise_for(response: httpx.Response) -> None:
    """Raise the error a gateway answered with, as the class (and fields) it raised."""
    if response.headers.get("x-swarmless-error") == "1" or (
        response.status_code >= 400 and not response.request.url.path.startswith("/function/")
    ):
        try:
            body = response.json()
        except ValueError:
            body = {"message": response.text[:500] or f"HTTP {response.status_code}"}
        if not isinstance(body, dict):
            body = {"message": str(body)}
        # What the gateway also said in headers (older gateways said it only there).
        call_id = response.headers.get("x-call-id")
        if call_id and "call_id" not in body:
            body["call_id"] = call_id
        retry_after = response.headers.get("retry-after", "")
        if "retry_after" not in body and retry_after.isdigit():
            body["retry_after"] = float(retry_after)
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

    def _exchange(self, req: _Request) -> Steps[httpx.Response]:
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
        response = yield from self._exchange(_Request(method, path, params, headers, content))
        _raise_for(response)
        return response.json() if response.content else None

    # -- the operations -------------------------------------------------------------------

    def _op_invoke(self, name: str, data: bytes | str | None, **kw: Any) -> Steps[InvokeResult]:
        response = yield from self._exchange(_invoke_request(name, data, **kw))
        return _invoke_result(response)

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
        request = _invoke_request(
            name,
            data,
            json=json,
            args=args,
            method="POST",
            path=path,
            query=None,
            headers=_spawn_headers(headers, idempotency_key, callback_url),
            prefix="/async-function",
        )
        response = yield from self._exchange(request)
        _raise_for(response)
        call_id: str = response.headers.get("x-call-id", "")
        if not call_id:
            raise SwarmlessError(
                f"the gateway accepted the call of {name!r} (HTTP {response.status_code}) "
                "without a call id: is SWARMLESS_GATEWAY_URL a swarmless gateway?"
            )
        return call_id

    def _op_result(self, call_id: str, timeout: float | None) -> Steps[InvokeResult]:
        _plain(call_id, "call id")
        if timeout is not None and (not isinstance(timeout, int | float) or timeout < 0):
            raise InvalidArgument(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _POLL if deadline is None else max(0.0, deadline - time.monotonic())
            wait = min(_POLL, left)
            request = _Request(
                "GET",
                f"/invocations/{call_id}/result",
                params={"wait": f"{wait:.3f}"},
                read_timeout=wait + 30.0,  # the gateway answers after ``wait`` at the latest
            )
            response = yield from self._exchange(request)
            _raise_for(response)
            if response.status_code != 202:
                return _invoke_result(response)
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
        request = _Request(
            "POST",
            "/system/functions",
            params=params,
            headers={"Content-Type": "application/json"},
            content=jsonlib.dumps(_spec_json(spec)).encode(),
            read_timeout=(60.0 if wait is None else wait) + 30.0,
        )
        response = yield from self._exchange(request)
        _raise_for(response)
        return cast(dict[str, Any], response.json())

    def _op_functions(self) -> Steps[list[dict[str, Any]]]:
        result = yield from self._op_json("GET", "/system/functions")
        return cast(list[dict[str, Any]], result)

    def _op_function(self, name: str) -> Steps[dict[str, Any]]:
        result = yield from self._op_json("GET", f"/system/functions/{_plain(name, 'name')}")
        return cast(dict[str, Any], result)

    def _op_remove(self, name: str) -> Steps[None]:
        yield from self._op_json("DELETE", f"/system/functions/{_plain(name, 'name')}")

    def _op_scale(self, name: str, replicas: int | None) -> Steps[dict[str, Any]]:
        if replicas is not None and (
            not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0
        ):
            raise InvalidArgument(f"replicas must be an integer >= 0 or None, got {replicas!r}")
        path = f"/system/scale/{_plain(name, 'name')}"
        result = yield from self._op_json("POST", path, json={"replicas": replicas})
        return cast(dict[str, Any], result)

    def _op_invocation(self, call_id: str) -> Steps[InvocationRecord]:
        row = yield from self._op_json("GET", f"/invocations/{_plain(call_id, 'call id')}")
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
        path = f"/invocations/{_plain(call_id, 'call id')}/logs"
        result = yield from self._op_json("GET", path)
        return cast(dict[str, str], result)

    def _op_retry(self, call_id: str) -> Steps[None]:
        yield from self._op_json("POST", f"/invocations/{_plain(call_id, 'call id')}/retry")

    def _op_put_secret(self, name: str, value: bytes | str) -> Steps[None]:
        content = value.encode() if isinstance(value, str) else value
        if not isinstance(content, bytes):
            raise InvalidArgument(f"a secret is bytes or str, got {type(value).__name__}")
        path = f"/system/secrets/{_plain(name, 'secret name')}"
        yield from self._op_json("PUT", path, content=content)

    def _op_delete_secret(self, name: str) -> Steps[None]:
        yield from self._op_json("DELETE", f"/system/secrets/{_plain(name, 'secret name')}")

    def _op_secrets(self) -> Steps[list[str]]:
        result = yield from self._op_json("GET", "/system/secrets")
        return cast(list[str], result)

    def _op_schedules(self) -> Steps[list[dict[str, Any]]]:
        result = yield from self._op_json("GET", "/system/schedules")
        return cast(list[dict[str, Any]], result)


class GatewayClient(BaseGatewayClient):
    """Sync client of a gateway (what :class:`swarmless.Client` uses for deployed functions).

    >>> gw = GatewayClient(Settings.load(gateway_url="http://127.0.0.1:8080"))  # doctest: +SKIP
    >>> gw.invoke("upper", "shout").text                                      # doctest: +SKIP
    'SHOUT'
    """

    _http: httpx.Client

    def __init__(self, settings: Settings | None = None, *, timeout: float | None = None) -> None:
        super().__init__(settings, timeout=timeout)
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(socket_options=NO_DELAY),
            **self._client_options(timeout),
        )

    def _drive(self, steps: Steps[T]) -> T:
        """Run one operation: send each request it yields, hand it each answer."""
        try:
            request = next(steps)
            while True:
                try:
                    response = self._http.send(request)
                except httpx.RequestError as e:
                    request = steps.throw(e)
                else:
                    request = steps.send(response)
        except StopIteration as done:
            return cast(T, done.value)
        finally:
            steps.close()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        return self._drive(
            self._op_invoke(
                name,
                data,
                json=json,
                args=args,
                method=method,
                path=path,
                query=query,
                headers=headers,
            )
        )

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
        call_id = self._drive(
            self._op_spawn(
                name,
                data,
                json=json,
                args=args,
                path=path,
                headers=headers,
                idempotency_key=idempotency_key,
                callback_url=callback_url,
            )
        )
        return Invocation(call_id, self)

    def map(
        self, name: str, inputs: Iterable[Any], *, timeout: float | None = None
    ) -> list[InvokeResult]:
        """Fan out: one async call per input (sent as JSON), then every answer, in order
        (``timeout`` applies to each wait)."""
        return self._drive(self._op_map(name, inputs, timeout))

    def result(self, call_id: str, timeout: float | None = None) -> InvokeResult:
        """Wait for the call ``call_id`` to finish and return its answer.

        Raises the call's error (``ContainerError``, ``FunctionFailed`` for a dead call...)
        or, when ``timeout`` seconds pass first, :class:`~swarmless.WaitTimeout` (the call
        goes on).
        """
        return self._drive(self._op_result(call_id, timeout))

    def deploy(
        self,
        spec: FunctionSpec | Mapping[str, Any],
        *,
        dry_run: bool = False,
        wait: float | None = None,
    ) -> dict[str, Any]:
        """Deploy or update a function; returns its description (version, containers, and
        ``rollout``: a new version of a warm function has replaced the old one before this
        returns, ``wait`` seconds at most, default 60). ``dry_run``: check, apply nothing,
        and return what would change."""
        return self._drive(self._op_deploy(spec, dry_run, wait))

    def functions(self) -> list[dict[str, Any]]:
        """Every deployed function, described."""
        return self._drive(self._op_functions())

    def function(self, name: str) -> dict[str, Any]:
        """One deployed function, described (spec, version, containers, scaling)."""
        return self._drive(self._op_function(name))

    def remove(self, name: str) -> None:
        """Remove a function and its containers."""
        self._drive(self._op_remove(name))

    def scale(self, name: str, replicas: int | None) -> dict[str, Any]:
        """Pin ``replicas`` warm containers; ``None`` gives the function back to autoscaling."""
        return self._drive(self._op_scale(name, replicas))

    def invocation(self, call_id: str) -> InvocationRecord:
        """The record of one call."""
        return self._drive(self._op_invocation(call_id))

    def invocations(
        self, *, function: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[InvocationRecord]:
        """The latest records, newest first, of one function or all, with one status or any."""
        return self._drive(self._op_invocations(function, status, limit))

    def logs(self, call_id: str) -> dict[str, str]:
        """What one call printed: ``{"stdout": ..., "stderr": ...}``."""
        return self._drive(self._op_logs(call_id))

    def retry(self, call_id: str) -> None:
        """Redrive a dead async call."""
        self._drive(self._op_retry(call_id))

    def put_secret(self, name: str, value: bytes | str) -> None:
        """Create or replace a secret (mounted as /run/secrets/NAME where a spec names it)."""
        self._drive(self._op_put_secret(name, value))

    def delete_secret(self, name: str) -> None:
        """Delete a secret."""
        self._drive(self._op_delete_secret(name))

    def secrets(self) -> list[str]:
        """The names of the secrets (never their values)."""
        return self._drive(self._op_secrets())

    def schedules(self) -> list[dict[str, Any]]:
        """Every scheduled function with its next and last run."""
        return self._drive(self._op_schedules())


class AsyncGatewayClient(BaseGatewayClient):
    """The asyncio face of :class:`GatewayClient`: the same methods, the same requests and
    answers (one implementation, :class:`BaseGatewayClient`), awaited.

    >>> async with AsyncGatewayClient(settings) as gw:   # doctest: +SKIP
    ...     inv = await gw.spawn("report", json={"month": 11})
    ...     (await inv.result(timeout=60)).json()
    """

    _http: httpx.AsyncClient

    def __init__(self, settings: Settings | None = None, *, timeout: float | None = None) -> None:
        super().__init__(settings, timeout=timeout)
        self._http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(socket_options=NO_DELAY),
            **self._client_options(timeout),
        )

    async def _drive(self, steps: Steps[T]) -> T:
        """Run one operation: send each request it yields, hand it each answer."""
        try:
            request = next(steps)
            while True:
                try:
                    response = await self._http.send(request)
                except httpx.RequestError as e:
                    request = steps.throw(e)
                else:
                    request = steps.send(response)
        except StopIteration as done:
            return cast(T, done.value)
        finally:
            steps.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncGatewayClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

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
        """Call function ``name`` and wait for its answer."""
        return await self._drive(
            self._op_invoke(
                name,
                data,
                json=json,
                args=args,
                method=method,
                path=path,
                query=query,
                headers=headers,
            )
        )

    async def spawn(
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
    ) -> AsyncInvocation:
        """Queue an async call of ``name``; returns at once, once the call is durable."""
        call_id = await self._drive(
            self._op_spawn(
                name,
                data,
                json=json,
                args=args,
                path=path,
                headers=headers,
                idempotency_key=idempotency_key,
                callback_url=callback_url,
            )
        )
        return AsyncInvocation(call_id, self)

    async def map(
        self, name: str, inputs: Iterable[Any], *, timeout: float | None = None
    ) -> list[InvokeResult]:
        """Fan out: one async call per input (sent as JSON), then every answer, in order
        (``timeout`` applies to each wait)."""
        return await self._drive(self._op_map(name, inputs, timeout))

    async def result(self, call_id: str, timeout: float | None = None) -> InvokeResult:
        """Wait for the call ``call_id`` to finish and return its answer (see
        :meth:`GatewayClient.result`)."""
        return await self._drive(self._op_result(call_id, timeout))

    async def deploy(
        self,
        spec: FunctionSpec | Mapping[str, Any],
        *,
        dry_run: bool = False,
        wait: float | None = None,
    ) -> dict[str, Any]:
        """Like :meth:`GatewayClient.deploy`."""
        return await self._drive(self._op_deploy(spec, dry_run, wait))

    async def functions(self) -> list[dict[str, Any]]:
        """Every deployed function, described."""
        return await self._drive(self._op_functions())

    async def function(self, name: str) -> dict[str, Any]:
        """One deployed function, described (spec, version, containers, scaling)."""
        return await self._drive(self._op_function(name))

    async def remove(self, name: str) -> None:
        """Remove a function and its containers."""
        await self._drive(self._op_remove(name))

    async def scale(self, name: str, replicas: int | None) -> dict[str, Any]:
        """Pin ``replicas`` warm containers; ``None`` gives the function back to autoscaling."""
        return await self._drive(self._op_scale(name, replicas))

    async def invocation(self, call_id: str) -> InvocationRecord:
        """The record of one call."""
        return await self._drive(self._op_invocation(call_id))

    async def invocations(
        self, *, function: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[InvocationRecord]:
        """The latest records, newest first, of one function or all, with one status or any."""
        return await self._drive(self._op_invocations(function, status, limit))

    async def logs(self, call_id: str) -> dict[str, str]:
        """What one call printed: ``{"stdout": ..., "stderr": ...}``."""
        return await self._drive(self._op_logs(call_id))

    async def retry(self, call_id: str) -> None:
        """Redrive a dead async call."""
        await self._drive(self._op_retry(call_id))

    async def put_secret(self, name: str, value: bytes | str) -> None:
        """Create or replace a secret (mounted as /run/secrets/NAME where a spec names it)."""
        await self._drive(self._op_put_secret(name, value))

    async def delete_secret(self, name: str) -> None:
        """Delete a secret."""
        await self._drive(self._op_delete_secret(name))

    async def secrets(self) -> list[str]:
        """The names of the secrets (never their values)."""
        return await self._drive(self._op_secrets())

    async def schedules(self) -> list[dict[str, Any]]:
        """Every scheduled function with its next and last run."""
        return await self._drive(self._op_schedules())


class Invocation:
    """A handle on one call, from any process: ``Invocation.from_id(call_id)``.

    >>> inv = swarmless.from_env().spawn("report", json={"month": 11})  # doctest: +SKIP
    >>> inv.status, inv.result(timeout=60).json()                      # doctest: +SKIP
    """

    def __init__(self, call_id: str, client: GatewayClient) -> None:
        self.id = _plain(call_id, "call id")
        self._client = client

    def __repr__(self) -> str:
        return f"<Invocation {self.id}>"

    @classmethod
    def from_id(cls, call_id: str, client: GatewayClient | None = None) -> Invocation:
        """The handle of an existing call (a client from the environment by default)."""
        return cls(call_id, client or GatewayClient(Settings.load()))

    @property
    def record(self) -> InvocationRecord:
        """The call's record, read now."""
        return self._client.invocation(self.id)

    @property
    def status(self) -> str:
        """queued, running, succeeded, failed, timeout, dead or cancelled (read now)."""
        return self.record.status

    def result(self, timeout: float | None = None) -> InvokeResult:
        """Wait for the call to finish; its answer, or its error raised."""
        return self._client.result(self.id, timeout)

    def logs(self) -> dict[str, str]:
        return self._client.logs(self.id)

    def retry(self) -> None:
        self._client.retry(self.id)


class AsyncInvocation:
    """The asyncio face of :class:`Invocation` (what :meth:`AsyncGatewayClient.spawn`
    returns); ``record`` and ``status`` are awaited methods, since each reads the gateway."""

    def __init__(self, call_id: str, client: AsyncGatewayClient) -> None:
        self.id = _plain(call_id, "call id")
        self._client = client

    def __repr__(self) -> str:
        return f"<AsyncInvocation {self.id}>"

    @classmethod
    def from_id(cls, call_id: str, client: AsyncGatewayClient | None = None) -> AsyncInvocation:
        """The handle of an existing call (a client from the environment by default)."""
        return cls(call_id, client or AsyncGatewayClient(Settings.load()))

    async def record(self) -> InvocationRecord:
        """The call's record, read now."""
        return await self._client.invocation(self.id)

    async def status(self) -> str:
        """queued, running, succeeded, failed, timeout, dead or cancelled (read now)."""
        return (await self.record()).status

    async def result(self, timeout: float | None = None) -> InvokeResult:
        """Wait for the call to finish; its answer, or its error raised."""
        return await self._client.result(self.id, timeout)

    async def logs(self) -> dict[str, str]:
        return await self._client.logs(self.id)

    async def retry(self) -> None:
        await self._client.retry(self.id)
