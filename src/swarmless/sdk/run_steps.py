"""The Engine API steps a container run is made of, shared by a run in the foreground
(:mod:`swarmless.sdk.run_foreground`) and a detached one (:mod:`swarmless.sdk.run`).

Create (pulling the image when the options allow, within ``pull_timeout``: :func:`pull_image`,
the one pull of swarmless, the backends' too), start (a command that cannot be executed
fails as with ``docker run``: status 127 or 126), feed stdin and half-close it, kill at the
deadline (:class:`Killer`), read the exit status and whether the kernel killed it for
memory, and remove: on every path, never masking the error that brought us there.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

import docker.auth
import docker.errors
import docker.utils
import requests.exceptions
import urllib3.exceptions

from swarmless.engine import translate
from swarmless.exceptions import ContainerError, ImageNotFound, InvocationTimeout, OOMKilled
from swarmless.sdk.run_options import RunOptions

__all__ = [
    "Killer",
    "create",
    "exit_status",
    "failure",
    "feed_stdin",
    "output",
    "pull_image",
    "raw_socket",
    "remove",
    "start",
    "wait_bound",
]

_CHUNK = 1 << 16


def create(
    api: Any, opts: RunOptions, kind: str, host_config: Mapping[str, Any] | None = None
) -> str:
    """Create the container, pulling its image first when the options allow; the Engine
    API's ``host_config`` entries (``PidsLimit``, ``LogConfig``) are added as they are."""
    kwargs = opts.create_kwargs(api, kind)
    if host_config:
        kwargs["host_config"].update(host_config)
    with translate(image=opts.image, api=api):
        if opts.pull == "always":
            pull_image(api, opts.image, opts.pull_timeout)
        try:
            return str(api.create_container(**kwargs)["Id"])
        except docker.errors.ImageNotFound:
            if opts.pull == "never":
                raise
        pull_image(api, opts.image, opts.pull_timeout)
        return str(api.create_container(**kwargs)["Id"])


def pull_image(api: Any, image: str, timeout: float, *, hint: str = "") -> None:
    """Pull ``image`` onto the engine within ``timeout`` seconds in all (``pull_timeout``).

    The one pull of swarmless: ``Client.run`` and ``swarmless run`` (``pull=``), a deploy
    on either backend (:meth:`~swarmless.backends.base.EngineBackend.ensure_image`) and a
    one-shot call on one engine. A pull not done in time (a registry that stopped
    answering) is abandoned, which cancels it on the engine: InvocationTimeout (504),
    nothing was run. A registry that refuses it: ImageNotFound with its reason, then
    ``hint``. Neither is taken for an engine that does not answer.
    """
    if _pulled(api, image, time.monotonic() + timeout, hint):
        return
    raise InvocationTimeout(
        f"pulling {image} took over {timeout:g} s (pull_timeout): the registry did not "
        "finish sending it; nothing was run. Try again later, pull it on the engine "
        "yourself, or raise pull_timeout",
        timeout=timeout,
    )


def _pulled(api: Any, image: str, deadline: float, hint: str) -> bool:
    """Pull ``image`` by ``deadline`` (monotonic); False if it did not finish by then.

    docker-py's own pull waits for ever (no read timeout): here the answer's head is
    awaited for the time left, and each read of the progress stream too."""
    repository, tag = docker.utils.parse_repository_tag(image)
    registry, _ = docker.auth.resolve_repository_name(repository)
    headers = {}
    auth = docker.auth.get_config_header(api, registry)  # as docker-py's pull does
    if auth:
        headers["X-Registry-Auth"] = auth
    params = {"fromImage": repository, "tag": tag or "latest"}
    error: str | None = None
    with translate(image=image, api=api):
        try:
            response = api._post(
                api._url("/images/create"),
                params=params,
                headers=headers,
                stream=True,
                timeout=max(deadline - time.monotonic(), 0.001),
            )
        except requests.exceptions.Timeout:
            return False
        try:
            api._raise_for_status(response)
            sock = _stream_socket(response)
            try:
                for msg in api._stream_helper(response, decode=True):
                    if isinstance(msg, dict) and msg.get("error"):
                        error = str(msg["error"])
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    if sock is not None:
                        sock.settimeout(left)
            except (
                requests.exceptions.Timeout,
                urllib3.exceptions.ReadTimeoutError,
                TimeoutError,
            ):
                return False
        except docker.errors.APIError as e:
            error = str(e.explanation or e)
        finally:
            response.close()  # an abandoned pull is cancelled with its connection
    if error is not None:
        raise ImageNotFound(image, f"{error}{hint}")
    return True


def _stream_socket(response: Any) -> socket.socket | None:
    """The socket a streamed answer is read from (its reads' timeout is set on it), or
    None when the transport hides it."""
    raw = getattr(getattr(getattr(response.raw, "_fp", None), "fp", None), "raw", None)
    sock = getattr(raw, "_sock", raw)
    return sock if isinstance(sock, socket.socket) else None


def remove(api: Any, container_id: str) -> None:
    # Removal must not mask the error that brought us here; a container that is already
    # gone (removed by someone else, or by the engine) is fine.
    with contextlib.suppress(Exception):
        api.remove_container(container_id, force=True, v=True)


def raw_socket(sock: Any) -> socket.socket:
    return getattr(sock, "_sock", sock)  # type: ignore[no-any-return]


def feed_stdin(sock: Any, data: bytes) -> None:
    raw = raw_socket(sock)
    with contextlib.suppress(OSError):
        view = memoryview(data)
        for i in range(0, len(view), _CHUNK):
            raw.sendall(view[i : i + _CHUNK])
    with contextlib.suppress(OSError):
        raw.shutdown(socket.SHUT_WR)


class Killer:
    """Kills a container when its deadline passes; remembers that it did."""

    def __init__(self, api: Any, container_id: str, timeout: float | None) -> None:
        self.fired = False
        self._api, self._id = api, container_id
        self._timer: threading.Timer | None = None
        if timeout is not None:
            self._timer = threading.Timer(timeout, self._kill)
            self._timer.daemon = True
            self._timer.start()

    def _kill(self) -> None:
        self.fired = True
        with contextlib.suppress(Exception):
            self._api.kill(self._id)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def start(api: Any, opts: RunOptions, container_id: str) -> None:
    """Start the container; a command that cannot be executed fails like ``docker run``."""
    try:
        api.start(container_id)
    except docker.errors.APIError as e:
        text = str(e.explanation or e)
        if "executable file not found" in text or "no such file or directory" in text:
            status = 127
        elif "permission denied" in text:
            status = 126
        else:
            raise
        raise ContainerError(
            image=opts.image,
            command=opts.command,
            exit_status=status,
            stderr=text.encode(),
            container=container_id,
        ) from None


def wait_bound(api: Any, left: float | None) -> float | None:
    """How long a read that waits on a running container may block: the ``left`` seconds
    until its deadline (then it is killed) plus the client's own bound for an answer, so
    that a quiet container is waited for and a frozen engine is not; None without a
    deadline."""
    if left is None:
        return None
    answer = getattr(api, "timeout", None)
    return max(left, 0.0) + (float(answer) if isinstance(answer, int | float) else 60.0)


def exit_status(api: Any, container_id: str, timeout: float | None = None) -> tuple[int, bool]:
    """The exit status (waiting at most ``timeout`` seconds) and whether it was OOM-killed."""
    status = int(api.wait(container_id, timeout=timeout)["StatusCode"])
    oom = False
    if status != 0:
        with contextlib.suppress(Exception):
            oom = bool(api.inspect_container(container_id)["State"].get("OOMKilled"))
    return status, oom


def failure(opts: RunOptions, status: int, stderr: bytes, cid: str, oom: bool) -> ContainerError:
    cls = OOMKilled if oom else ContainerError
    return cls(
        image=opts.image, command=opts.command, exit_status=status, stderr=stderr, container=cid
    )


def output(opts: RunOptions, data: bytes) -> bytes | str:
    return data.decode("utf-8", "replace") if opts.text else data
