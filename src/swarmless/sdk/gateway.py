"""Talking to a gateway: deployed functions by name, their records and logs.

:class:`GatewayClient` is the sync face (``httpx.Client``) and :class:`Invocation` its
handle on one call; :class:`~swarmless.sdk.gateway_async.AsyncGatewayClient` and
:class:`~swarmless.sdk.gateway_async.AsyncInvocation` are their asyncio twins. Both faces
only send: every operation is written once, in
:class:`~swarmless.sdk.gateway_base.BaseGatewayClient`, and every request and answer is
built and read in :mod:`swarmless.sdk.gateway_wire`.

Errors the gateway answers with (``X-Swarmless-Error: 1``) come back as the same exception
classes, with the same fields, that the gateway raised; what a function itself answered
(even a 404 from its own router) is a result, not an error. A request that could not be
delivered to any address raises :class:`~swarmless.GatewayUnavailable` (nothing ran, retry
is safe); one that was delivered but got no answer raises :class:`~swarmless.NoAnswer`
(it may have run) and is never sent twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast

import httpx

from swarmless.config import Settings
from swarmless.records import InvocationRecord
from swarmless.sdk.gateway_async import AsyncGatewayClient, AsyncInvocation
from swarmless.sdk.gateway_base import NO_DELAY, BaseGatewayClient
from swarmless.sdk.gateway_wire import InvokeResult, Steps, plain_name
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

    def scale(
        self, name: str, replicas: int | None, *, wait: float | None = None
    ) -> dict[str, Any]:
        """Pin ``replicas`` warm containers; ``None`` gives the function back to autoscaling.
        With ``wait`` (seconds), return once the function runs exactly ``replicas``
        containers, all ready: :class:`~swarmless.WaitTimeout` if they are not after
        ``wait`` seconds (the pin stays, they go on starting),
        :class:`~swarmless.FunctionFailed` if one fails before it is ready."""
        return self._drive(self._op_scale(name, replicas, wait))

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


class Invocation:
    """A handle on one call, from any process: ``Invocation.from_id(call_id)``.

    >>> inv = swarmless.from_env().spawn("report", json={"month": 11})  # doctest: +SKIP
    >>> inv.status, inv.result(timeout=60).json()                      # doctest: +SKIP
    """

    def __init__(self, call_id: str, client: GatewayClient) -> None:
        self.id = plain_name(call_id, "call id")
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
