"""The poller's HTTP side: a keep-alive connection to ``SWARMLESS_RUNTIME_API``.

:class:`HttpChannel` sends ``POST /runtime/next`` (carrying the result in hand, answered
with the next call, 204, 410 or 401), a call's prints to ``/runtime/logs/{id}``, and asks
for the upgrade to frames (``POST /runtime/connect``, :mod:`~swarmless.runtime.frames`);
:class:`~swarmless.runtime.poll_frames.Channel` uses it when its gateway takes no HELLO
(imported then only: ``http.client`` is a third of the runtime's import time). The
failures the poll loop (:mod:`~swarmless.runtime.loop`) tells apart: :class:`Retry`,
:class:`Refused`, :class:`Dropped` (:mod:`~swarmless.runtime.poll_common`).
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse

from swarmless.runtime import frames
from swarmless.runtime.config import log
from swarmless.runtime.poll_common import (
    POLL_TIMEOUT,
    Dropped,
    Handed,
    Refused,
    Retry,
    cut,
    no_delay,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from swarmless.runtime.config import RuntimeConfig
    from swarmless.runtime.invocation import Result

# The poll loop's names, also importable from here (:mod:`~swarmless.runtime.poll_common`).
__all__ = ["POLL_TIMEOUT", "Dropped", "Handed", "HttpChannel", "Refused", "Retry", "cut"]


class _HTTPConnection(http.client.HTTPConnection):
    """Keep-alive connection with Nagle off.

    http.client sends a request's headers and body in two writes; without TCP_NODELAY the
    body waits for the ACK of the headers, which the gateway delays by 40 ms. Python sets
    the option itself only from 3.11.4 on; Debian bookworm ships 3.11.2.
    """

    def connect(self) -> None:
        super().connect()
        no_delay(self.sock)


class _HTTPSConnection(http.client.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        no_delay(self.sock)


class HttpChannel:
    """One poller's keep-alive HTTP connection; ``contact`` is called on each 200/204."""

    def __init__(self, config: RuntimeConfig, contact: Callable[[], None]) -> None:
        parts = urllib.parse.urlsplit(config.api)
        self._prefix = parts.path.rstrip("/")
        self._conn: http.client.HTTPConnection
        if parts.scheme == "https":
            self._conn = _HTTPSConnection(parts.hostname or "", parts.port, timeout=POLL_TIMEOUT)
        else:
            self._conn = _HTTPConnection(parts.hostname or "", parts.port, timeout=POLL_TIMEOUT)
        self._auth = f"Bearer {config.token}"
        self._used = False
        self._contact = contact

    def close(self) -> None:
        self._conn.close()

    def request(
        self, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        headers["Authorization"] = self._auth
        resp, data = self._exchange(path, body, headers)
        status = resp.status
        if status >= 500 or status == 429:
            raise Retry(f"HTTP {status} on {path}")
        return status, resp.headers, data

    def _exchange(
        self, path: str, body: bytes, headers: dict[str, str], *, upgrade: bool = False
    ) -> tuple[http.client.HTTPResponse, bytes]:
        """One ``POST`` and its answer, read whole (a 101 asked for with ``upgrade`` is
        handed back unread: the connection is the caller's then). A kept-alive connection
        the server closed meanwhile is retried once, at once; other failures are Retry, a
        401 Refused."""
        for attempt in (1, 2):
            reused = self._used
            try:
                self._conn.request("POST", self._prefix + path, body=body, headers=headers)
                resp = self._conn.getresponse()
                if upgrade and resp.status == 101:
                    return resp, b""
                data = resp.read()
            except (OSError, http.client.HTTPException) as e:
                self._conn.close()
                self._used = False
                stale = isinstance(e, ConnectionResetError | BrokenPipeError)
                if attempt == 1 and reused and stale:
                    continue
                raise Retry(f"{type(e).__name__}: {e}") from e
            self._used = True
            if resp.will_close:
                self._conn.close()
                self._used = False
            if resp.status == 401:
                raise Refused(f"the gateway refused the worker token (401 on {path})")
            return resp, data
        raise AssertionError("unreachable")

    def post_next(self, pending: Result | None) -> tuple[int, Handed | None]:
        headers = pending.request_headers() if pending is not None else {}
        body = pending.body if pending is not None else b""
        status, resp_headers, data = self.request("/runtime/next", body, headers)
        if status in (200, 204, 410):
            if status != 410:
                self._contact()
            if status != 200:
                return status, None
            call_id = resp_headers.get("X-Swarmless-Call-Id") or ""
            try:
                event = json.loads(resp_headers.get("X-Swarmless-Event") or "{}")
            except ValueError as e:
                event = e
            return 200, (call_id, resp_headers.get("X-Swarmless-Deadline"), event, data)
        # Another 4xx: the gateway will not take this request as it is.
        log(f"/runtime/next answered {status}: {data[:200]!r}")
        if pending is None:
            raise Retry(f"HTTP {status} on /runtime/next")  # counts towards giving up
        if pending.error is None:
            # A result it will never take (too large, ...): send the caller why instead.
            pending.status, pending.headers = 500, []
            pending.error = f"the gateway refused the result (HTTP {status})"
            pending.body = data[:4096]
            raise Retry(f"HTTP {status} on /runtime/next")
        raise Dropped

    def upgrade(self) -> http.client.HTTPResponse | None:
        """``POST /runtime/connect``: the 101 response, or None when the gateway answered
        anything else but 401 (Refused)."""
        headers = {
            "Authorization": self._auth,
            "Connection": "Upgrade",
            "Upgrade": frames.UPGRADE,
        }
        resp, _ = self._exchange(frames.PATH, b"", headers, upgrade=True)
        return resp if resp.status == 101 else None

    def taken_socket(self) -> socket.socket | None:
        """The socket of the connection :meth:`upgrade` switched: the caller's from now on
        (this channel opens a new connection if it is used again)."""
        sock, self._conn.sock = self._conn.sock, None
        self._used = False
        return sock

    def send_logs(self, result: Result) -> None:
        payload = json.dumps({"stdout": cut(result.stdout), "stderr": cut(result.stderr)}).encode(
            "utf-8"
        )
        path = "/runtime/logs/" + urllib.parse.quote(result.call_id, safe="")
        status, _, data = self.request(path, payload, {"Content-Type": "application/json"})
        if status >= 300:
            log(f"logs of {result.call_id} refused ({status}): {data[:200]!r}")
        result.stdout = result.stderr = ""
