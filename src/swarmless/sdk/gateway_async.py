"""The asyncio face of :mod:`swarmless.sdk.gateway`: :class:`AsyncGatewayClient` and
:class:`AsyncInvocation`, the same methods as their sync twins, awaited.

No second implementation of anything: each method runs the operation of
:class:`~swarmless.sdk.gateway_base.BaseGatewayClient` that the sync face runs, sending its
requests with ``httpx.AsyncClient``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast

import httpx

from swarmless.config import Settings
from swarmless.records import InvocationRecord
from swarmless.sdk.gateway_base import NO_DELAY, BaseGatewayClient
from swarmless.sdk.gateway_wire import InvokeResult, Steps, plain_name
from swarmless.spec import FunctionSpec

__all__ = ["AsyncGatewayClient", "AsyncInvocation"]

T = TypeVar("T")


class AsyncGatewayClient(BaseGatewayClient):
    """The asyncio face of :class:`~swarmless.GatewayClient`: the same methods, the same
    requests and answers (one implementation,
    :class:`~swarmless.sdk.gateway_base.BaseGatewayClient`), awaited.

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
        :meth:`~swarmless.GatewayClient.result`)."""
        return await self._drive(self._op_result(call_id, timeout))

    async def deploy(
        self,
        spec: FunctionSpec | Mapping[str, Any],
        *,
        dry_run: bool = False,
        wait: float | None = None,
    ) -> dict[str, Any]:
        """Like :meth:`~swarmless.GatewayClient.deploy`."""
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

    async def scale(
        self, name: str, replicas: int | None, *, wait: float | None = None
    ) -> dict[str, Any]:
        """Pin ``replicas`` warm containers; ``None`` gives the function back to autoscaling.
        With ``wait`` (seconds), return once the function runs exactly ``replicas``
        containers, all ready: :class:`~swarmless.WaitTimeout` if they are not after
        ``wait`` seconds (the pin stays, they go on starting),
        :class:`~swarmless.FunctionFailed` if one fails before it is ready."""
        return await self._drive(self._op_scale(name, replicas, wait))

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


class AsyncInvocation:
    """The asyncio face of :class:`~swarmless.Invocation` (what :meth:`AsyncGatewayClient.spawn`
    returns); ``record`` and ``status`` are awaited methods, since each reads the gateway."""

    def __init__(self, call_id: str, client: AsyncGatewayClient) -> None:
        self.id = plain_name(call_id, "call id")
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
