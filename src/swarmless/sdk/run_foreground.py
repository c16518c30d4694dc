"""A container run in the foreground: :func:`execute` runs it to completion and reports
what happened (:class:`Outcome`); :func:`run_container` raises for a failure and returns
stdout, as ``Client.run`` does.

How it works: the container is created, its stdio is attached *before* it starts (as
``docker run -i`` does, so no output is lost and bytes come back exactly, not through the
log driver), stdin is written from a thread and half-closed, stdout and stderr are read as
multiplexed frames until the stream ends, then the exit status is read and the container
removed. A timer kills the container at the deadline. Five Engine API calls per run:
create, attach, start, wait, remove (the Docker SDK's own ``containers.run`` makes six).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from docker.utils.socket import frames_iter

from swarmless.engine import translate
from swarmless.exceptions import RunTimeout
from swarmless.sdk.run_options import RunOptions
from swarmless.sdk.run_steps import (
    Killer,
    create,
    exit_status,
    failure,
    feed_stdin,
    output,
    raw_socket,
    remove,
    start,
    wait_bound,
)

__all__ = ["Outcome", "execute", "run_container"]

_STDOUT, _STDERR = 1, 2


@dataclasses.dataclass
class Outcome:
    """What one foreground container run produced (the gateway's one-shot modes use it)."""

    container_id: str
    status: int
    stdout: bytes
    stderr: bytes
    #: Both streams in arrival order, when both were asked for.
    combined: bytes | None
    oom: bool
    timed_out: bool
    #: Monotonic seconds: before create, after start, after exit.
    t_create: float
    t_started: float
    t_exited: float
    #: stdout passed ``max_output``: the container was killed, ``stdout`` holds its first
    #: ``max_output`` bytes.
    output_exceeded: bool = False


class _Capped:
    """One stream's bytes, at most ``limit`` of them (None: all); counts what it dropped."""

    def __init__(self, limit: int | None) -> None:
        self._buf = io.BytesIO()
        self._limit = limit
        self.size = 0
        self.dropped = 0

    def write(self, chunk: bytes) -> bool:
        """Keep what fits; False once something did not."""
        room = len(chunk) if self._limit is None else self._limit - self.size
        if room >= len(chunk):
            self._buf.write(chunk)
            self.size += len(chunk)
            return True
        if room > 0:
            self._buf.write(chunk[:room])
            self.size += room
        self.dropped += len(chunk) - max(room, 0)
        return False

    def getvalue(self) -> bytes:
        return self._buf.getvalue()


def execute(
    api: Any,
    opts: RunOptions,
    kind: str = "run",
    *,
    max_output: int | None = None,
    host_config: Mapping[str, Any] | None = None,
    remove_with: Callable[[Any, str], None] = remove,
) -> Outcome:
    """Run to completion and report what happened, without raising for the exit status.

    With ``max_output``, at most that many bytes of each stream are held: the container is
    killed as soon as its stdout passes it (``Outcome.output_exceeded``), and stderr past
    it is dropped (a line at its end says how much). ``host_config`` entries of the Engine
    API (``PidsLimit``, ``LogConfig``) go into the container's as they are. The container
    is removed on every path by ``remove_with`` (default: at once, before returning; the
    gateway's one-shot calls remove it after their answer).
    """
    t_create = time.monotonic()
    container_id = create(api, opts, kind, host_config)
    killer: Killer | None = None
    exceeded = False
    try:
        stdin = opts.stdin_bytes()
        out, err = _Capped(max_output), _Capped(max_output)
        both = io.BytesIO() if (opts.stdout and opts.stderr) else None
        with translate(image=opts.image, api=api):
            params = {"stdout": 1, "stderr": 1, "stream": 1, "stdin": int(stdin is not None)}
            sock = api.attach_socket(container_id, params=params)
            # The stream is read until the container exits: bounded by its deadline plus
            # the engine's answer time, not by the client's timeout (a quiet container).
            raw_socket(sock).settimeout(wait_bound(api, opts.timeout))
            try:
                start(api, opts, container_id)
                t_started = time.monotonic()
                killer = Killer(api, container_id, opts.timeout)
                feeder = None
                if stdin is not None:
                    feeder = threading.Thread(target=feed_stdin, args=(sock, stdin), daemon=True)
                    feeder.start()
                sink = opts.stderr_sink
                for stream, chunk in frames_iter(sock, tty=False):
                    if not (out if stream == _STDOUT else err).write(chunk) and stream == _STDOUT:
                        exceeded = True  # no more of it is read: stop the container now
                        break
                    if both is not None:
                        both.write(chunk)
                    if sink is not None and stream == _STDERR:
                        sink.write(chunk)
                        sink.flush()
                if feeder is not None:
                    feeder.join(timeout=5)
            finally:
                if exceeded:
                    # The engine reports no exit (and a kill waits for one) while a stream
                    # of the container waits for its reader: end the stream first, for
                    # real (close() alone leaves the socket open while a reference lives).
                    with contextlib.suppress(OSError):
                        raw_socket(sock).shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(Exception):
                    sock.close()
            if exceeded:
                with contextlib.suppress(Exception):
                    api.kill(container_id)
            left = None if opts.timeout is None else t_started + opts.timeout - time.monotonic()
            status, oom = exit_status(api, container_id, wait_bound(api, left))
        stderr = err.getvalue()
        if err.dropped:
            stderr += f"\n[{err.dropped} more bytes of stderr dropped]\n".encode()
        return Outcome(
            container_id=container_id,
            status=status,
            stdout=out.getvalue(),
            stderr=stderr,
            combined=both.getvalue() if both is not None else None,
            oom=oom,
            timed_out=killer.fired,
            t_create=t_create,
            t_started=t_started,
            t_exited=time.monotonic(),
            output_exceeded=exceeded,
        )
    finally:
        if killer is not None:
            killer.cancel()
        if opts.remove:
            remove_with(api, container_id)


def run_container(api: Any, opts: RunOptions, kind: str = "run") -> bytes | str:
    """Run to completion and return stdout; see :meth:`swarmless.Client.run`."""
    o = execute(api, opts, kind)
    if o.timed_out:
        raise RunTimeout(image=opts.image, timeout=opts.timeout or 0, container=o.container_id)
    if o.status != 0:
        raise failure(opts, o.status, o.stderr, o.container_id, o.oom)
    if o.combined is not None:
        return output(opts, o.combined)
    return output(opts, o.stdout if opts.stdout else o.stderr)
