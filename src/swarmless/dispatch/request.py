"""What goes into a function and what comes out: :class:`Request` and :class:`Response`.

The edge (:mod:`swarmless.gateway.app`), the async runner and the UI build a
:class:`Request`; the :class:`~swarmless.dispatch.dispatcher.Dispatcher` answers with a
:class:`Response`, whatever the mode that ran it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

__all__ = ["NO_BODY", "Request", "Response", "answer_problem"]

#: An HTTP header name (RFC 9110 5.1: a token) and value (5.5: visible characters, spaces
#: and tabs, obs-text; never CR, LF, NUL or another control character).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
#: Statuses whose answer has no body (RFC 9110 6.4.1).
NO_BODY = frozenset({204, 304})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Request:
    """An HTTP request as the input of a function."""

    method: str = "POST"
    path: str = ""
    query: str = ""
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""
    remote_addr: str = "127.0.0.1"
    remote_port: int = 0
    server_name: str = "127.0.0.1"
    server_port: int = 8080
    scheme: str = "http"
    #: Where the function is served (``SCRIPT_NAME``): None for ``/function/NAME``, else
    #: the route the request came by (``/result``; ``""`` for a host name's root).
    prefix: str | None = None

    def header(self, name: str) -> str | None:
        lower = name.lower()
        for k, v in self.headers:
            if k.lower() == lower:
                return v
        return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Response:
    """What a function answered."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    call_id: str


def answer_problem(status: int, headers: Sequence[tuple[str, str]]) -> str | None:
    """What makes a function's answer impossible to send as an HTTP response, or None.

    A final status is 200 to 599 (a 1xx is not an answer: a 101 would tell the client the
    protocol changed); a header's name is a token and its value holds no CR, LF or other
    control character (it would end the header early or split the response) and only
    Latin-1 characters. The gateway answers 502 with this text instead.
    """
    if not 200 <= status <= 599:
        return f"it answered HTTP status {status}; a function's status must be 200 to 599"
    for name, value in headers:
        if not _TOKEN.fullmatch(name):
            return f"it answered a header with an invalid name {name[:80]!r}"
        if not _VALUE.fullmatch(value):
            return (
                f"header {name[:80]!r} holds a control character (CR, LF, ...) or a character "
                f"outside Latin-1: {value[:80]!r}"
            )
    return None
