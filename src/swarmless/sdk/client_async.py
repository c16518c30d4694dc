"""The asyncio twin of :class:`~swarmless.Client`: :class:`AsyncClient`, and
:class:`AsyncRun`, the twin of a :class:`~swarmless.Run` handle.

The same methods and no second implementation of any: the gateway calls are the same
operations sent with ``httpx.AsyncClient``
(:class:`~swarmless.sdk.gateway_async.AsyncGatewayClient`), and since the Docker SDK is
synchronous, ``run`` runs the one implementation (:meth:`Client.run`) in a thread.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, Unpack, overload

from swarmless.config import Settings
from swarmless.sdk.client import Client
from swarmless.sdk.options import DockerOptions

if TYPE_CHECKING:
    # Imported where they are used: the Docker SDK, httpx and asyncio cost a CGI front end
    # that only builds a client tens of milliseconds it need not pay.
    import docker

    from swarmless.sdk.gateway_async import AsyncGatewayClient, AsyncInvocation
    from swarmless.sdk.gateway_wire import InvokeResult
    from swarmless.sdk.run import Pull, Run, Stdin

_P = ParamSpec("_P")
_T = TypeVar("_T")

__all__ = ["AsyncClient", "AsyncRun"]


class AsyncRun:
    """The asyncio face of a :class:`Run` handle: the same methods, awaited (each runs the
    one implementation in a thread; the Docker SDK is synchronous)."""

    def __init__(self, run: Run) -> None:
        #: The sync handle this one drives.
        self.sync = run
        self.id = run.id
        self.image = run.image
        self.command = run.command

    def __repr__(self) -> str:
        return f"<AsyncRun {self.id[:12]} {self.image}>"

    async def done(self) -> bool:
        """True once the container has exited."""
        return await _in_thread(lambda: self.sync.done)

    async def wait(self, timeout: float | None = None) -> int:
        """See :meth:`Run.wait`."""
        return await _in_thread(self.sync.wait, timeout)

    async def result(self, timeout: float | None = None) -> bytes | str:
        """See :meth:`Run.result`."""
        return await _in_thread(self.sync.result, timeout)

    async def logs(self, follow: bool = False) -> Any:
        """The output so far as bytes; with ``follow=True``, an async iterator of lines."""
        if not follow:
            return await _in_thread(self.sync.logs)
        lines: Iterator[bytes] = await _in_thread(self.sync.logs, True)
        return _aiter_thread(lines)

    async def kill(self) -> None:
        """See :meth:`Run.kill`."""
        await _in_thread(self.sync.kill)

    async def close(self) -> None:
        """See :meth:`Run.close`."""
        await _in_thread(self.sync.close)

    async def __aenter__(self) -> AsyncRun:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _in_thread(fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """``asyncio.to_thread``; asyncio is imported here, where its loop is already running."""
    import asyncio

    return await asyncio.to_thread(fn, *args, **kwargs)


async def _aiter_thread(items: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A blocking iterator, read in a thread one item at a time."""
    done = object()
    while True:
        item = await _in_thread(next, items, done)
        if item is done:
            return
        assert isinstance(item, bytes)
        yield item


class AsyncClient:
    """The asyncio twin of :class:`Client`: the same methods, the same semantics, awaited.

    >>> async with swarmless.AsyncClient() as client:                     # doctest: +SKIP
    ...     await client.run("swarmless/busybox", ["echo", "hi"])
    ...     (await client.invoke("hello", json={"name": "Ada"})).json()
    """

    def __init__(
        self, *, settings: Settings | None = None, docker: docker.DockerClient | None = None
    ) -> None:
        """See :class:`Client`."""
        self.settings = settings or Settings.load()
        #: The sync client whose ``run`` this one runs in a thread (the Docker SDK is sync).
        self.sync = Client(settings=self.settings, docker=docker)
        self._gateway: AsyncGatewayClient | None = None

    @classmethod
    def from_env(cls, **overrides: Any) -> AsyncClient:
        """An async client configured from the environment (see :func:`from_env`)."""
        return cls(settings=Settings.load(**overrides))

    @property
    def docker(self) -> docker.DockerClient:
        """The Docker SDK client (synchronous), connected on first use."""
        return self.sync.docker

    @property
    def gateway(self) -> AsyncGatewayClient:
        """The async gateway client (deploy, records, logs), created on first use."""
        if self._gateway is None:
            from swarmless.sdk.gateway_async import AsyncGatewayClient

            self._gateway = AsyncGatewayClient(self.settings)
        return self._gateway

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
        """Like :meth:`Client.invoke`."""
        return await self.gateway.invoke(
            name, data, json=json, args=args, method=method, path=path, query=query, headers=headers
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
        """Like :meth:`Client.spawn`; returns an :class:`AsyncInvocation`."""
        return await self.gateway.spawn(
            name,
            data,
            json=json,
            args=args,
            path=path,
            headers=headers,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
        )

    async def map(
        self, name: str, inputs: Iterable[Any], *, timeout: float | None = None
    ) -> list[InvokeResult]:
        """Like :meth:`Client.map`."""
        return await self.gateway.map(name, inputs, timeout=timeout)

    @overload
    async def run(
        self,
        image: str,
        command: str | Sequence[str] | None = None,
        *,
        detach: Literal[False] = False,
        stdin: Stdin = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        network: str | None = None,
        memory: int | str | None = None,
        cpus: float | None = None,
        user: str | None = None,
        workdir: str | None = None,
        labels: Mapping[str, str] | None = None,
        stdout: bool = True,
        stderr: bool | IO[bytes] = False,
        remove: bool = True,
        pull: Pull = "missing",
        text: bool = False,
        **options: Unpack[DockerOptions],
    ) -> bytes | str: ...

    @overload
    async def run(
        self,
        image: str,
        command: str | Sequence[str] | None = None,
        *,
        detach: Literal[True],
        stdin: Stdin = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        network: str | None = None,
        memory: int | str | None = None,
        cpus: float | None = None,
        user: str | None = None,
        workdir: str | None = None,
        labels: Mapping[str, str] | None = None,
        stdout: bool = True,
        stderr: bool | IO[bytes] = False,
        remove: bool = True,
        pull: Pull = "missing",
        text: bool = False,
        **options: Unpack[DockerOptions],
    ) -> AsyncRun: ...

    async def run(
        self,
        image: str,
        command: str | Sequence[str] | None = None,
        *,
        detach: bool = False,
        stdin: Stdin = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        network: str | None = None,
        memory: int | str | None = None,
        cpus: float | None = None,
        user: str | None = None,
        workdir: str | None = None,
        labels: Mapping[str, str] | None = None,
        stdout: bool = True,
        stderr: bool | IO[bytes] = False,
        remove: bool = True,
        pull: Pull = "missing",
        text: bool = False,
        **options: Unpack[DockerOptions],
    ) -> bytes | str | AsyncRun:
        """Like :meth:`Client.run`; with ``detach=True`` returns an :class:`AsyncRun`."""
        from swarmless.sdk.run import Run

        run: Any = self.sync.run  # one implementation; its overloads are the sync face's
        call = functools.partial(
            run,
            image,
            command,
            detach=detach,
            stdin=stdin,
            env=env,
            timeout=timeout,
            network=network,
            memory=memory,
            cpus=cpus,
            user=user,
            workdir=workdir,
            labels=labels,
            stdout=stdout,
            stderr=stderr,
            remove=remove,
            pull=pull,
            text=text,
            **options,
        )
        result = await _in_thread(call)
        return AsyncRun(result) if isinstance(result, Run) else result

    async def close(self) -> None:
        """Close the connections this client holds."""
        if self._gateway is not None:
            await self._gateway.close()
            self._gateway = None
        await _in_thread(self.sync.close)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
