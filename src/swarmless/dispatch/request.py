"""What goes into a function and what comes out: :class:`Request` and :class:`Response`.

The edge (:mod:`swarmless.gateway.app`), the async runner and the UI build a
:class:`Request`; the :class:`~swarmless.dispatch.dispatcher.Dispatcher` answers with a
:class:`Response`, whatever the mode that ran it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

__all__ = ["Request", "Response"]


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
