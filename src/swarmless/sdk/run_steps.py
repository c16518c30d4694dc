"""The Engine API steps a container run is made of, shared by a run in the foreground
(:mod:`swarmless.sdk.run_foreground`) and a detached one (:mod:`swarmless.sdk.run`).

Create (pulling the image when the options allow), start (a command that cannot be executed
fails as with ``docker run``: status 127 or 126), feed stdin and half-close it, kill at the
deadline (:class:`Killer`), read the exit status and whether the kernel killed it for
memory, and remove: on every path, never masking the error that brought us there.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Mapping
from typing import Any

import docker.errors
import docker.utils

from swarmless.engine import translate
from swarmless.exceptions import ContainerError, OOMKilled
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
            pull_image(api, opts.image)
        try:
            return str(api.create_container(**kwargs)["Id"])
        except docker.errors.ImageNotFound:
            if opts.pull == "never":
                raise
        pull_image(api, opts.image)
        return str(api.create_container(**kwargs)["Id"])


def pull_image(api: Any, image: str) -> None:
    repo, tag = docker.utils.parse_repository_tag(image)
    try:
        api.pull(repo, tag=tag or "latest")
    except docker.errors.APIError as e:
        raise docker.errors.ImageNotFound(str(e.explanation or e)) from e


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
