"""Run a Docker image as if it were a function call.

The successor of the 2016 ``dockerrun`` library: stdout comes back, a non-zero exit is
raised, and - unlike the original - every container is labelled and removed on every path
(success, error, timeout, Ctrl-C), timeouts are enforced, and stdin is streamed in.

- :mod:`~swarmless.sdk.run_options`: :class:`RunOptions`, the arguments, validated;
- :mod:`~swarmless.sdk.run_steps`: the Engine API steps of a run (create, start, kill at
  the deadline, wait, remove);
- :mod:`~swarmless.sdk.run_foreground`: a run to completion (:func:`execute`,
  :func:`run_container`);
- here: a detached run, :func:`start_container` and its :class:`Run` handle.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import docker.errors

from swarmless.engine import translate
from swarmless.exceptions import RunTimeout, WaitTimeout
from swarmless.sdk.run_foreground import Outcome, execute, run_container
from swarmless.sdk.run_options import Pull, RunOptions, Stdin
from swarmless.sdk.run_steps import (
    Killer,
    create,
    exit_status,
    failure,
    feed_stdin,
    output,
    remove,
    start,
)

__all__ = [
    "Outcome",
    "Pull",
    "Run",
    "RunOptions",
    "Stdin",
    "execute",
    "run_container",
    "start_container",
]


def start_container(api: Any, opts: RunOptions, kind: str = "run") -> Run:
    """Start a container and return its handle; see :meth:`swarmless.Client.run`."""
    container_id = create(api, opts, kind)
    try:
        stdin = opts.stdin_bytes()
        with translate(image=opts.image, api=api):
            if stdin is None:
                start(api, opts, container_id)
            else:
                sock = api.attach_socket(container_id, params={"stdin": 1, "stream": 1})
                start(api, opts, container_id)
                feed_stdin(sock, stdin)
                sock.close()
        return Run(api, container_id, opts)
    except BaseException:
        if opts.remove:
            remove(api, container_id)
        raise


def _reap(api: Any, container_id: str) -> None:
    """Remove an abandoned detached container once it exits (in a daemon thread)."""

    def wait_and_remove() -> None:
        with contextlib.suppress(Exception):
            api.wait(container_id)
        remove(api, container_id)

    threading.Thread(target=wait_and_remove, daemon=True, name="swarmless-reap").start()


class Run:
    """A handle on a detached container run.

    >>> import swarmless
    >>> with swarmless.from_env().run("swarmless/busybox", ["echo", "hi"], detach=True) as r:
    ...     r.result()
    b'hi\\n'

    The container is removed once ``result()`` has collected its outcome or the handle is
    closed (``close()``, the end of a ``with`` block). A handle that is dropped without
    either leaves the container to finish, then removes it.
    """

    def __init__(self, api: Any, container_id: str, opts: RunOptions) -> None:
        self._api = api
        self._opts = opts
        self.id = container_id
        self.image = opts.image
        self.command = opts.command
        self._status: tuple[int, bool] | None = None
        self._closed = False
        self._killer = Killer(api, container_id, opts.timeout)
        self._finalizer = weakref.finalize(self, _reap, api, container_id) if opts.remove else None

    def __repr__(self) -> str:
        return f"<Run {self.id[:12]} {self.image}>"

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def done(self) -> bool:
        """True once the container has exited."""
        if self._status is not None:
            return True
        with translate(image=self.image, api=self._api):
            state = self._api.inspect_container(self.id)["State"]
        return not state.get("Running") and state.get("Status") != "created"

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the container to exit and return its exit status.

        Raises :class:`~swarmless.WaitTimeout` if it is still running after ``timeout``
        seconds (the container keeps running; ``kill()`` stops it).
        """
        if self._status is None:
            self._status = self._wait(timeout)
        return self._status[0]

    def _wait(self, timeout: float | None) -> tuple[int, bool]:
        if timeout is None:
            with translate(image=self.image, api=self._api):
                return exit_status(self._api, self.id)
        done: list[tuple[int, bool]] = []
        errors: list[BaseException] = []

        def waiter() -> None:
            try:
                with translate(image=self.image, api=self._api):
                    done.append(exit_status(self._api, self.id))
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=waiter, daemon=True)
        t.start()
        t.join(timeout)
        if errors:
            raise errors[0]
        if not done:
            raise WaitTimeout(
                f"{self.image} ({self.id[:12]}) still running after {timeout:g}s; it goes on "
                "(wait again, or kill() it)",
                timeout=timeout,
            )
        return done[0]

    def result(self, timeout: float | None = None) -> bytes | str:
        """Wait, then return stdout; raise :class:`ContainerError` on a non-zero exit."""
        status = self.wait(timeout)
        assert self._status is not None
        try:
            if self._killer.fired:
                raise RunTimeout(
                    image=self.image, timeout=self._opts.timeout or 0, container=self.id
                )
            if status != 0:
                stderr = self._logs(stdout=False, stderr=True)
                raise failure(self._opts, status, stderr, self.id, self._status[1])
            data = self._logs(stdout=self._opts.stdout, stderr=self._opts.stderr)
            return output(self._opts, data)
        finally:
            self.close()

    def _logs(self, *, stdout: bool, stderr: bool) -> bytes:
        with translate(image=self.image, api=self._api):
            return bytes(self._api.logs(self.id, stdout=stdout, stderr=stderr))

    def logs(self, follow: bool = False) -> Any:
        """The output so far as bytes; with ``follow=True``, an iterator of lines as they come."""
        if not follow:
            return self._logs(stdout=True, stderr=True)
        return self._follow()

    def _follow(self) -> Iterator[bytes]:
        with translate(image=self.image, api=self._api):
            stream = self._api.logs(self.id, stdout=True, stderr=True, stream=True, follow=True)
        pending = b""
        with translate(image=self.image, api=self._api):
            for chunk in stream:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line + b"\n"
        if pending:
            yield pending

    def kill(self) -> None:
        """Stop the container now (SIGKILL)."""
        with (
            translate(image=self.image, api=self._api),
            contextlib.suppress(docker.errors.APIError),
        ):
            self._api.kill(self.id)

    def close(self) -> None:
        """Release the handle: stop the container if still running and remove it."""
        if self._closed:
            return
        self._closed = True
        self._killer.cancel()
        if self._finalizer is not None:
            self._finalizer.detach()
            remove(self._api, self.id)
