"""Small raw-ASGI helpers for the hot paths (function calls, the runtime API).

The two routes that carry every invocation skip the framework's request objects: they read
the body, answer with one ``http.response.start`` and one body message, and nothing else.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from swarmless.exceptions import GatewayUnavailable, PayloadTooLarge, QueueFull, SwarmlessError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

__all__ = [
    "BASIC_USER",
    "Receive",
    "Scope",
    "Send",
    "bearer",
    "disconnected",
    "error_body",
    "header",
    "header_safe",
    "internal_error",
    "read_body",
    "send_error",
    "send_response",
]


#: What a value from a request (a call id in a URL) must be to go back in a header.
_HEADER_SAFE = re.compile(r"[\x21-\x7e]{1,200}")


def header_safe(value: str | None) -> bool:
    """Whether ``value`` can be sent back as a header value as it is (printable ASCII, no
    space, 200 characters at most): an id taken from a URL may hold anything."""
    return value is not None and _HEADER_SAFE.fullmatch(value) is not None


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case bytes), or None."""
    for k, v in scope["headers"]:
        if k == name:
            return str(v.decode("latin-1"))
    return None


#: The user name of Basic credentials whose password is a token (OpenFaaS's admin user).
BASIC_USER = "admin"


def bearer(scope: Scope) -> str | None:
    """The token a request presents: that of an ``Authorization: Bearer`` header, or the
    password of ``Authorization: Basic`` credentials for user ``admin`` (how OpenFaaS's
    gateway and faas-cli authenticate; the password is the token). Anything else (another
    user, bad base64, no colon) presents no token at all."""
    value = header(scope, b"authorization")
    if not value:
        return None
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() == "bearer":
        return rest.strip() or None
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(rest.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # not base64, or not UTF-8
        return None
    user, colon, password = decoded.partition(":")
    return password if colon and user == BASIC_USER and password else None


class ClientGone(Exception):
    """The client disconnected: before its request body arrived, or while its request
    waited for something (:func:`disconnected`)."""


async def disconnected(receive: Receive) -> None:
    """Returns once the client has gone away (``http.disconnect``). For a request whose
    body was read already (or that has none: the empty ``http.request`` is passed over),
    so that a handler can race what it waits for against its client leaving."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def read_body(scope: Scope, receive: Receive, limit: int | None = None) -> bytes:
    """The whole request body; PayloadTooLarge as soon as it passes ``limit`` bytes."""
    declared = header(scope, b"content-length")
    if limit is not None and declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes is over the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if limit is not None and size > limit:
                raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_response(
    send: Send,
    status: int,
    body: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    raw = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def internal_error(e: Exception) -> SwarmlessError:
    """What the client is told about a bug of ours (the traceback goes to the log)."""
    return SwarmlessError(f"internal error: {type(e).__name__}: {e}")


def error_body(err: SwarmlessError) -> bytes:
    return json.dumps(err.to_dict()).encode()


async def send_error(send: Send, err: SwarmlessError) -> None:
    headers = [(b"content-type", b"application/json"), (b"x-swarmless-error", b"1")]
    if header_safe(err.invocation):
        assert err.invocation is not None
        headers.append((b"x-call-id", err.invocation.encode()))
    if isinstance(err, QueueFull | GatewayUnavailable):
        headers.append((b"retry-after", str(max(1, round(err.retry_after))).encode()))
    await send_response(send, err.status_code, error_body(err), headers)
