"""The one place that connects to the Docker Engine and translates its errors.

``docker.errors.*`` and ``requests`` connection errors never escape this package: every call
into the Docker SDK runs inside :func:`translate`, which raises the swarmless error that
says what happened and what to do.

Every call waits a bounded time for the engine's answer: the client's ``timeout`` (the
gateway's ``engine_timeout``). An engine that accepts connections but never answers (a
frozen ``dockerd``) is then :class:`~swarmless.exceptions.EngineUnavailable`, like one
that refuses them, not a call that hangs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import docker
import docker.constants
import docker.errors
import docker.tls
import docker.utils
import requests.exceptions

from swarmless.exceptions import EngineUnavailable, ImageNotFound, SwarmlessError
from swarmless.labels import (
    LABEL_CALL,
    LABEL_FUNCTION,
    LABEL_GATEWAY,
    LABEL_KIND,
    LABEL_MANAGED,
    LABEL_PARENT,
    LABEL_WORKER,
    managed_labels,
)

__all__ = [
    "LABEL_CALL",
    "LABEL_FUNCTION",
    "LABEL_GATEWAY",
    "LABEL_KIND",
    "LABEL_MANAGED",
    "LABEL_PARENT",
    "LABEL_WORKER",
    "Endpoint",
    "connect",
    "endpoint",
    "engine_address",
    "engine_failure",
    "managed_labels",
    "translate",
]

#: Connections per engine client; 20 threads running containers at once must not queue.
POOL_SIZE = 64


def engine_address(docker_host: str | None = None) -> str:
    """The engine address the Docker SDK will try, for error messages."""
    return docker_host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Endpoint:
    """Where the engine listens, read once from ``DOCKER_HOST`` (or the setting)."""

    #: The address as given (for messages).
    address: str
    #: The Unix socket's path, or None for TCP.
    socket: str | None = None
    host: str = ""
    port: int = 0
    #: ``DOCKER_TLS_VERIFY`` or an ``https://`` address: the engine wants TLS.
    tls: bool = False


def endpoint(docker_host: str | None = None) -> Endpoint:
    """The one parser of ``DOCKER_HOST``: unix, tcp, http(s); a ValueError for the others."""
    address = engine_address(docker_host)
    scheme, sep, rest = address.partition("://")
    if not sep:
        raise ValueError(f"engine address {address!r} has no scheme (unix://, tcp://)")
    scheme = scheme.lower()
    if scheme in ("unix", "http+unix"):
        return Endpoint(address=address, socket=rest or "/var/run/docker.sock")
    if scheme in ("tcp", "http", "https"):
        hostport = rest.split("/", 1)[0]
        host, colon, port = hostport.rpartition(":")
        if not colon:
            host, port = hostport, ""
        host = host.strip("[]")
        tls = scheme == "https" or os.environ.get("DOCKER_TLS_VERIFY", "") not in ("", "0")
        if not host or (port and not port.isdigit()):
            raise ValueError(f"engine address {address!r}: expected tcp://HOST:PORT")
        return Endpoint(
            address=address, host=host, port=int(port or (2376 if tls else 2375)), tls=tls
        )
    raise ValueError(f"engine address {address!r}: only unix:// and tcp:// engines are supported")


def connect(docker_host: str | None = None, *, timeout: float = 120) -> docker.DockerClient:
    """A Docker SDK client whose every call waits at most ``timeout`` seconds for an answer;
    raises :class:`EngineUnavailable` when no engine answers."""
    try:
        client = _client(docker_host, timeout)
    except docker.errors.DockerException as e:
        raise EngineUnavailable(engine_address(docker_host), _short(e)) from e
    # Errors met later through this client name the address it was made for.
    client.api.swarmless_address = engine_address(docker_host)
    return client


def _client(docker_host: str | None, timeout: float) -> docker.DockerClient:
    kwargs: dict[str, Any]
    if docker_host:
        kwargs = {"base_url": docker_host, "tls": _tls_from_env(docker_host)}
    else:
        kwargs = docker.utils.kwargs_from_env()  # what docker.from_env reads
    tls = kwargs.get("tls")
    if not (isinstance(tls, docker.tls.TLSConfig) and tls.verify and tls.ca_cert):
        return docker.DockerClient(
            version="auto", timeout=timeout, max_pool_size=POOL_SIZE, **kwargs
        )
    # The engine's CA (DOCKER_CERT_PATH/ca.pem) alone: requests would let REQUESTS_CA_BUNDLE
    # or CURL_CA_BUNDLE replace it on every call (the system's bundle, which never signed
    # the engine's certificate), so the session must not read the environment, and the
    # API version is asked only once it does not.
    client = docker.DockerClient(
        version=docker.constants.MINIMUM_DOCKER_API_VERSION,
        timeout=timeout,
        max_pool_size=POOL_SIZE,
        **kwargs,
    )
    client.api.trust_env = False
    client.api._version = client.api._retrieve_server_version()
    return client


def _tls_from_env(docker_host: str) -> docker.tls.TLSConfig | None:
    """TLS for an explicit engine address, from ``DOCKER_TLS_VERIFY`` and ``DOCKER_CERT_PATH``
    as the Docker CLI reads them (and as :func:`endpoint` decides ``tls``): the server's
    certificate checked against ``ca.pem``, ``cert.pem`` and ``key.pem`` presented; missing
    files are an error, never a silent plain-text connection."""
    if os.environ.get("DOCKER_TLS_VERIFY", "") in ("", "0") or endpoint(docker_host).socket:
        return None
    env = {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": os.environ.get("DOCKER_CERT_PATH", "")}
    tls = docker.utils.kwargs_from_env(environment=env).get("tls")
    return tls if isinstance(tls, docker.tls.TLSConfig) else None


def _short(e: BaseException) -> str:
    if _timed_out(e):
        return "no answer in time (the engine accepts connections but does not reply)"
    text = str(e)
    # requests wraps the cause several times; the innermost reason is the useful one.
    for marker in ("Connection refused", "No such file or directory", "Permission denied"):
        if marker in text:
            return marker
    return text[:200]


@contextlib.contextmanager
def translate(
    *, image: str | None = None, docker_host: str | None = None, api: Any = None
) -> Iterator[None]:
    """Run Docker SDK calls, raising swarmless errors instead of docker's.

    ``docker_host`` (or the ``api`` client the calls go through) names the engine in the
    error that says it does not answer.
    """
    if docker_host is None and api is not None:
        docker_host = getattr(api, "swarmless_address", None)
    try:
        yield
    except docker.errors.ImageNotFound as e:
        raise ImageNotFound(image or "?", _explanation(e)) from e
    except docker.errors.NotFound as e:
        if image and "No such image" in _explanation(e):
            raise ImageNotFound(image, _explanation(e)) from e
        raise SwarmlessError(f"not found on the engine: {_explanation(e)}") from e
    except docker.errors.APIError as e:
        raise SwarmlessError(f"Docker Engine refused: {_explanation(e)}") from e
    except (requests.exceptions.ConnectionError, ConnectionError) as e:
        raise EngineUnavailable(engine_address(docker_host), _short(e)) from e
    except (requests.exceptions.Timeout, TimeoutError) as e:  # a frozen or stalled engine
        waited = getattr(api, "timeout", None)
        within = f" within {waited:g} s" if isinstance(waited, int | float) else ""
        raise EngineUnavailable(
            engine_address(docker_host),
            f"no answer{within} (the engine accepts connections but does not reply)",
        ) from e
    except docker.errors.DockerException as e:
        raise SwarmlessError(f"Docker SDK error: {e}") from e


def _timed_out(e: BaseException) -> bool:
    """Whether ``e`` (or what it wraps) is a read or connect that timed out."""
    cause: BaseException | None = e
    for _ in range(10):
        if cause is None:
            return False
        if isinstance(cause, requests.exceptions.Timeout | TimeoutError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def engine_failure(e: BaseException) -> str | None:
    """Why the engine does not answer, when ``e`` says so (refused, reset, timed out,
    :class:`EngineUnavailable`); None for any other error (the engine answered)."""
    if isinstance(e, EngineUnavailable):
        return e.reason or e.message
    if isinstance(e, requests.exceptions.ConnectionError | ConnectionError):
        return _short(e)
    if isinstance(e, requests.exceptions.Timeout | TimeoutError):
        return _short(e)
    return None


def _explanation(e: Any) -> str:
    return str(getattr(e, "explanation", None) or e)
