"""dockerrun's ``Client``, ``from_env`` and ``ProcessError``, on :class:`swarmless.Client`.

The 2016 ``Client`` was a subclass of docker-py's ``docker.Client`` whose ``run`` created,
started and waited for a container, then returned its logs. This one keeps that face and
runs through :meth:`swarmless.Client.run` (attached output, labels, removal); the rest of
the Docker API it inherited is the Docker SDK's ``APIClient``, reached on first use.
Importing it and building a client imports nothing beyond this package: not the Docker
SDK (until a container runs or the API is used), not ``swarmless.exceptions`` (until an
error is raised: :class:`ProcessError` is loaded on first use), not even ``typing`` or
``re``. A CGI front end pays for that on every request.
"""

from __future__ import annotations

import _thread

from swarmless import _lazy

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    import docker

    from swarmless.compat.dockerrun._process_error import ProcessError
    from swarmless.exceptions import SwarmlessError
    from swarmless.sdk.client import Client as SwarmlessClient
else:

    def __getattr__(name: str) -> object:
        return _lazy.load(__name__, _EXPORTS, name)


del TYPE_CHECKING

__all__ = ["CREATE_KWARGS", "START_KWARGS", "Client", "ProcessError", "from_env"]

#: The options ``run`` passed to ``create_container`` (dockerrun's own list).
CREATE_KWARGS = [
    "hostname",
    "user",
    "detach",
    "stdin_open",
    "tty",
    "mem_limit",
    "ports",
    "environment",
    "dns",
    "volumes",
    "volumes_from",
    "network_disabled",
    "name",
    "entrypoint",
    "cpu_shares",
    "working_dir",
    "domainname",
    "memswap_limit",
    "cpuset",
    "host_config",
    "mac_address",
    "labels",
]

#: The options ``run`` passed to ``start`` (dockerrun's own list).
START_KWARGS = [
    "binds",
    "port_bindings",
    "lxc_conf",
    "publish_all_ports",
    "links",
    "privileged",
    "dns",
    "dns_search",
    "volumes_from",
    "network_mode",
    "restart_policy",
    "cap_add",
    "cap_drop",
    "devices",
    "extra_hosts",
    "read_only",
    "pid_mode",
    "ipc_mode",
    "security_opt",
    "ulimits",
]

#: Options of dockerrun's lists that mean the same to :meth:`swarmless.Client.run`.
_PASSED_ON = frozenset(
    {"hostname", "user", "mem_limit", "environment", "name", "entrypoint", "working_dir"}
    | {"labels", "network_mode"}
)
#: Options swarmless adds to dockerrun's (docker-py names, docker-py meaning).
_ADDED = frozenset({"auto_remove", "nano_cpus"})
#: Loaded on first use.
_EXPORTS = {"ProcessError": "swarmless.compat.dockerrun._process_error"}


def _invalid(message: str) -> SwarmlessError:
    from swarmless.exceptions import InvalidArgument

    return InvalidArgument(message)


def from_env(**kwargs: Any) -> Client:
    """A client for the engine named by ``DOCKER_HOST`` (and ``SWARMLESS_*`` settings).

    Takes what docker-py's ``from_env`` took that still means something: ``version`` (the
    Docker API version the code was written for: the engine must speak it) and
    ``timeout`` (seconds for each Engine API request). Connects on first use.
    """
    return Client.from_env(**kwargs)


class Client:
    """dockerrun's client: ``run`` an image like a function call, and the Docker API.

    >>> client = from_env(version="1.24")
    >>> client.run("swarmless/busybox", "echo hello world")
    b'hello world\\n'
    """

    def __init__(
        self,
        base_url: str | None = None,
        version: str | None = None,
        timeout: float | None = None,
        tls: bool = False,
        user_agent: str | None = None,
        num_pools: int | None = None,
    ) -> None:
        """As docker-py's ``docker.Client``: ``base_url`` (default: ``DOCKER_HOST``),
        ``version``, ``timeout``. ``user_agent`` and ``num_pools`` change nothing here;
        TLS comes from ``DOCKER_TLS_VERIFY`` and ``DOCKER_CERT_PATH`` (``from_env``)."""
        if base_url is not None and (not isinstance(base_url, str) or not base_url):
            raise _invalid(f"base_url must be an engine address, got {base_url!r}")
        if version is not None and version != "auto" and not _is_api_version(version):
            raise _invalid(
                f"version must be a Docker API version like '1.24' or 'auto', got {version!r}"
            )
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            raise _invalid(f"timeout must be a positive number of seconds: {timeout!r}")
        if tls not in (False, None):
            raise _invalid(
                "tls: give the engine's TLS settings as DOCKER_HOST, DOCKER_TLS_VERIFY and "
                "DOCKER_CERT_PATH, and use from_env()"
            )
        # Private: the Docker API's own names (version(), base_url, api_version...) are
        # the APIClient's, reached through __getattr__.
        self._base_url = base_url
        #: The Docker API version asked for (checked against the engine on first use);
        #: swarmless itself speaks the engine's own version.
        self._asked_version = None if version == "auto" else version
        self._timeout = timeout
        self._client: SwarmlessClient | None = None
        self._lock = _thread.allocate_lock()  # threading's Lock, without importing threading

    @classmethod
    def from_env(cls, **kwargs: Any) -> Client:
        """See :func:`from_env`."""
        tls_options = ("assert_hostname", "ssl_version", "environment")
        refused = sorted(k for k in kwargs if k in tls_options and kwargs[k] is not None)
        if refused:
            raise _invalid(
                f"from_env(): {', '.join(refused)} not supported; the engine's address and "
                "TLS settings are read from DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH"
            )
        unknown = sorted(set(kwargs) - {"version", "timeout", *tls_options})
        if unknown:
            raise TypeError(
                f"from_env() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
                "it takes version and timeout"
            )
        return cls(version=kwargs.get("version"), timeout=kwargs.get("timeout"))

    @property
    def swarmless(self) -> SwarmlessClient:
        """The :class:`swarmless.Client` this one runs containers with (made on first use)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._connect()
        return self._client

    def _connect(self) -> SwarmlessClient:
        from swarmless.config import Settings
        from swarmless.engine import connect, engine_address
        from swarmless.exceptions import EngineUnavailable
        from swarmless.sdk.client import Client as SwarmlessClient

        settings = Settings.load(docker_host=self._base_url)
        engine: docker.DockerClient | None = None
        if self._timeout is not None:
            engine = connect(settings.docker_host, timeout=self._timeout)
        client = SwarmlessClient(settings=settings, docker=engine)
        if self._asked_version is not None:
            speaks = client.docker.api.api_version
            if _version_tuple(speaks) < _version_tuple(self._asked_version):
                client.close()
                raise EngineUnavailable(
                    engine_address(settings.docker_host),
                    message=(
                        f"the Docker Engine speaks API {speaks}, older than the "
                        f"{self._asked_version} this code asks for (from_env(version=...)); "
                        "upgrade the engine"
                    ),
                )
        return client

    def run(
        self,
        image: str,
        command: str | Sequence[str] | None = None,
        detach: bool = False,
        stdout: bool = True,
        stderr: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Run ``image`` with ``command``; return its output, or with ``detach`` its id.

        Not detached: waits, and returns what it wrote to stdout (and stderr, with
        ``stderr=True``) as bytes; a non-zero exit raises :class:`ProcessError`. Detached:
        returns ``{"Id": ..., "Warnings": None}`` once it started; the engine removes the
        container when it exits (``auto_remove=False`` keeps it). A string ``command`` is
        split as a shell would. ``kwargs`` are dockerrun's options (:data:`CREATE_KWARGS`,
        :data:`START_KWARGS`) that swarmless can honour; the others are refused by name.
        """
        from swarmless.exceptions import ContainerError

        options = _options(kwargs)
        if detach:
            options.setdefault("auto_remove", True)
        try:
            if detach:
                handle = self.swarmless.run(image, command, detach=True, remove=False, **options)
                return {"Id": handle.id, "Warnings": None}
            if not stdout and not stderr:
                self.swarmless.run(image, command, **options)
                return b""
            return self.swarmless.run(image, command, stdout=stdout, stderr=stderr, **options)
        except ContainerError as e:
            from swarmless.compat.dockerrun._process_error import ProcessError

            raise ProcessError(
                {"Id": e.container, "Warnings": None}, e.exit_status, command, image, e.stderr
            ) from None

    def wait(self, container: str | Mapping[str, Any], timeout: float | None = None) -> int:
        """Wait for ``container`` to exit and return its exit status (an int, as in 2016;
        today's Docker SDK answers ``{"StatusCode": ..., "Error": ...}``)."""
        answer = self.swarmless.docker.api.wait(container, timeout=timeout)
        return int(answer["StatusCode"])

    def close(self) -> None:
        """Close the connection to the engine (a later call opens a new one)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __getattr__(self, name: str) -> Any:
        # The Docker API of docker-py's client, as the 2016 subclass inherited it.
        if name.startswith("_"):
            raise AttributeError(name)
        api = self.swarmless.docker.api
        try:
            return getattr(api, name)
        except AttributeError:
            raise AttributeError(
                f"{type(self).__name__!r} has no attribute {name!r} (nor has the Docker SDK's "
                "APIClient)"
            ) from None

    def __repr__(self) -> str:
        return f"<dockerrun.Client {self._base_url or 'DOCKER_HOST'}>"


def _is_api_version(version: object) -> bool:
    """``1.24`` and the like."""
    major, dot, minor = str(version).partition(".")
    return major == "1" and dot == "." and minor.isdigit()


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _options(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """dockerrun's options as :meth:`swarmless.Client.run`'s, refusing what it cannot do."""
    known = {*CREATE_KWARGS, *START_KWARGS, *_ADDED}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(
            f"run() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"dockerrun's options are {', '.join(sorted({*CREATE_KWARGS, *START_KWARGS}))}"
        )
    # Falsy values are docker-py's defaults (privileged=False, ports={}...): nothing asked.
    given = {k: v for k, v in kwargs.items() if v}
    mounts = ("binds", "volumes", "network_disabled")
    refused = sorted(set(given) - _PASSED_ON - _ADDED - set(mounts) - {"detach"})
    if refused:
        raise _invalid(
            f"run(): {', '.join(refused)} not supported by swarmless (a run() container "
            "publishes no ports, gets no extra privileges and shares nothing with other "
            "containers); supported: " + ", ".join(sorted(_PASSED_ON | _ADDED | set(mounts)))
        )
    options = {k: kwargs[k] for k in _PASSED_ON | _ADDED if kwargs.get(k) is not None}
    if given.get("network_disabled"):
        if options.get("network_mode") not in (None, "none"):
            raise _invalid("run(): network_disabled=True with a network_mode")
        options["network_mode"] = "none"
    volumes = _volumes(kwargs.get("binds"), kwargs.get("volumes"))
    if volumes:
        options["volumes"] = volumes
    return options


def _volumes(binds: Any, volumes: Any) -> list[str]:
    """``binds`` (docker-py's form) and ``volumes`` (paths declared as volumes: each one no
    bind covers becomes an anonymous volume) as ``volumes`` for swarmless's run()."""
    from collections.abc import Mapping, Sequence

    from swarmless.sdk.options import docker_options

    out: list[str] = []
    if binds:
        out = list(docker_options({"volumes": binds}, function="dockerrun run()")["binds"])
    if volumes:
        if isinstance(volumes, str):
            volumes = [volumes]
        if not isinstance(volumes, Mapping | Sequence):
            raise _invalid(f"volumes must be a list of paths, got {volumes!r}")
        targets = {entry.split(":")[1] if ":" in entry else entry for entry in out}
        for path in volumes:
            if isinstance(path, str) and ":" in path:
                out.append(path)  # "src:dst[:mode]", as docker-py's containers.run takes it
                continue
            if not isinstance(path, str) or not path.startswith("/"):
                raise _invalid(f"volumes: {path!r} is not an absolute path in the container")
            if path not in targets:
                out.append(path)
    return out
