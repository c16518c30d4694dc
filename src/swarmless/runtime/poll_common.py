"""What the poll loop (:mod:`~swarmless.runtime.loop`) and both of a poller's channels (the
framed one, :mod:`~swarmless.runtime.poll_frames`, and HTTP, :mod:`~swarmless.runtime.poll_http`)
share: the failures the loop tells apart (:class:`Retry`, :class:`Refused`, :class:`Dropped`),
a call as handed out, the poll's socket timeout. No HTTP client here: a runtime whose
gateway takes a HELLO never imports one.
"""

from __future__ import annotations

import contextlib
import socket

from swarmless.runtime import capture

__all__ = ["POLL_TIMEOUT", "Dropped", "Handed", "Refused", "Retry", "connect", "cut", "no_delay"]

#: Socket timeout of a poll: longer than the gateway's long-poll window (about 25 s).
POLL_TIMEOUT = 70.0

#: A call as the gateway handed it out: id, deadline (epoch ms), event (a ValueError when it
#: could not be parsed), body.
Handed = tuple[str, object, object, bytes]


class Retry(Exception):
    """A failure worth retrying after a backoff (connection error, 5xx, 429)."""


class Refused(Exception):
    """The gateway refused the token: stop."""


class Dropped(Exception):
    """A result the gateway will not take even as an error: give it up."""


def cut(text: str) -> str:
    """At most 1 MiB of UTF-8, cut on a character boundary."""
    data = text.encode("utf-8", "replace")
    if len(data) <= capture.LOG_LIMIT:
        return text
    return data[: capture.LOG_LIMIT].decode("utf-8", "ignore")


def no_delay(sock: socket.socket | None) -> None:
    """Nagle off: a frame or a request is never held back waiting for an ACK."""
    if sock is not None:
        with contextlib.suppress(OSError):  # not every socket family has the option
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def connect(host: str, port: int, timeout: float) -> socket.socket:
    """``socket.create_connection((host, port), timeout)``, with an ASCII host looked up as
    bytes: CPython runs a ``str`` host through the ``idna`` codec, and importing it (with
    ``stringprep``) costs a container's start about 9 ms of CPU, a sixth of the runtime's."""
    name: str | bytes = host
    with contextlib.suppress(UnicodeEncodeError):
        name = host.encode("ascii")
    error: OSError = OSError(f"getaddrinfo returned nothing for {host!r}")
    for family, kind, proto, _, address in socket.getaddrinfo(name, port, 0, socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)  # a numeric address: no codec
        except OSError as e:
            sock.close()
            error = e
            continue
        return sock
    raise error
