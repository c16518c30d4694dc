"""The SDK's face: :func:`from_env` and :class:`Client`.

``Client.run`` talks to the Docker Engine directly (no gateway needed); ``invoke``, ``spawn``
and ``map`` go to a gateway (:mod:`swarmless.sdk.gateway`). The asyncio twin,
:class:`~swarmless.AsyncClient`, is :mod:`swarmless.sdk.client_async`: the same methods and
no second implementation of any.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, Literal, Unpack, overload

from swarmless.config import Settings
from swarmless.sdk.options import DockerOptions, docker_options

if TYPE_CHECKING:
    # Imported where they are used: the Docker SDK and httpx cost a CGI front end that
    # only builds a client tens of milliseconds it need not pay.
    import docker

    from swarmless.sdk.gateway import GatewayClient, Invocation
    from swarmless.sdk.gateway_wire import InvokeResult
    from swarmless.sdk.run import Pull, Run, Stdin

#: The keyword arguments of ``run()`` besides docker-py's names (for its error messages).
_RUN_PARAMETERS = (
    "cpus",
    "detach",
    "env",
    "labels",
    "memory",
    "network",
    "pull",
    "remove",
    "stderr",
    "stdin",
    "stdout",
    "text",
    "timeout",
    "user",
    "workdir",
)

__all__ = ["Client", "from_env"]


def from_env(**overrides: Any) -> Client:
    """A client configured from the environment (``DOCKER_HOST``, ``SWARMLESS_*``).

    Keyword arguments override settings (see :class:`swarmless.config.Settings`)::

        client = swarmless.from_env()
        client.run("swarmless/busybox", ["echo", "hello"])  # b"hello\\n"
    """
    return Client(settings=Settings.load(**overrides))


class Client:
    """Runs images as functions on a Docker Engine, and calls deployed functions."""

    def __init__(
        self, *, settings: Settings | None = None, docker: docker.DockerClient | None = None
    ) -> None:
        """``docker``: a Docker SDK client to use (closed with this one) instead of
        connecting to ``settings.docker_host`` on first use."""
        self.settings = settings or Settings.load()
        self._docker = docker
        self._gateway: GatewayClient | None = None
        self._lock = threading.Lock()

    @property
    def docker(self) -> docker.DockerClient:
        """The Docker SDK client, connected on first use."""
        if self._docker is None:
            with self._lock:
                if self._docker is None:
                    from swarmless.engine import connect

                    self._docker = connect(self.settings.docker_host)
        return self._docker

    @property
    def gateway(self) -> GatewayClient:
        """The gateway client (deploy, records, logs), connected on first use."""
        if self._gateway is None:
            with self._lock:
                if self._gateway is None:
                    from swarmless.sdk.gateway import GatewayClient

                    self._gateway = GatewayClient(self.settings)
        return self._gateway

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
        """Call the deployed function ``name`` through the gateway and wait for its answer.

        >>> swarmless.from_env().invoke("hello", json={"name": "Ada"}).json()  # doctest: +SKIP
        {'message': 'Hello, Ada!'}
        """
        return self.gateway.invoke(
            name, data, json=json, args=args, method=method, path=path, query=query, headers=headers
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
        """Queue an async call of ``name``; returns its :class:`Invocation` once durable."""
        return self.gateway.spawn(
            name,
            data,
            json=json,
            args=args,
            path=path,
            headers=headers,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
        )

    def map(
        self, name: str, inputs: Iterable[Any], *, timeout: float | None = None
    ) -> list[InvokeResult]:
        """Fan out: one async call per input (JSON), then every answer, in order."""
        return self.gateway.map(name, inputs, timeout=timeout)

    def close(self) -> None:
        """Close the connections this client holds."""
        if self._docker is not None:
            self._docker.close()
            self._docker = None
        if self._gateway is not None:
            self._gateway.close()
            self._gateway = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @overload
    def run(
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
    def run(
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
    ) -> Run: ...

    def run(
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
    ) -> bytes | str | Run:
        """Run ``image`` with ``command`` as a function call.

        Not detached: returns stdout (bytes, or str with ``text=True``; with ``stderr=True``
        as well, both streams in arrival order; ``stderr=sys.stderr.buffer`` streams it to
        that file as it arrives). A non-zero exit raises
        :class:`~swarmless.ContainerError` with ``exit_status`` and ``stderr``; past
        ``timeout`` seconds the container is killed and :class:`~swarmless.RunTimeout`
        raised. With ``detach=True`` returns a :class:`Run` handle at once.

        ``command`` is a list of arguments, or a string split as a shell would
        (``"echo hello world"`` is three arguments, as with docker-py). docker-py's names
        work too, with docker-py's meaning: ``environment``, ``network_mode``,
        ``working_dir``, ``mem_limit``, ``nano_cpus``, ``volumes``, ``entrypoint``,
        ``name``, ``hostname``, ``auto_remove`` (see :mod:`swarmless.sdk.options`); any
        other keyword is refused with a :class:`TypeError` that names it.

        The container carries ``swarmless.*`` labels, among them this instance's
        (``swarmless.instance``, ``swarmless.owner``: ``swarmless gc`` of this instance
        may remove it, no other's), and is removed on every path unless ``remove=False``.
        ``pull="missing"`` pulls an image that is not on the engine; a pull that takes over
        ``settings.pull_timeout`` seconds (``SWARMLESS_PULL_TIMEOUT``, 300 by default) is
        abandoned: :class:`~swarmless.InvocationTimeout`, nothing was run.

        >>> client = from_env()
        >>> client.run("swarmless/busybox", ["echo", "hello"], text=True)
        'hello\\n'
        >>> client.run("swarmless/busybox", "sh -c 'echo $A'", environment={"A": "hi"})
        b'hi\\n'
        """
        from swarmless.ownership import run_labels
        from swarmless.sdk.run import RunOptions, run_container, start_container

        # The options docker-py names otherwise: given one way or the other, not both.
        taken = {"env": env, "network": network, "memory": memory, "cpus": cpus, "workdir": workdir}
        aliases = docker_options(options, taken=taken, accepted=_RUN_PARAMETERS)
        opts = RunOptions(
            image,
            command,
            stdin=stdin,
            timeout=timeout,
            user=user,
            labels=labels,
            stdout=stdout,
            stderr=stderr,
            remove=remove,
            pull=pull,
            pull_timeout=self.settings.pull_timeout,
            text=text,
            owner=run_labels(self.settings),
            **{**taken, **aliases},
        )
        api = self.docker.api
        if detach:
            return start_container(api, opts)
        return run_container(api, opts)
