"""The framed runtime connection, the gateway's side (:mod:`swarmless.runtime.frames`).

A warm container's poller opens it with a HELLO frame as the first bytes of a new
connection, or asks for it with ``POST /runtime/connect`` and ``Upgrade:
swarmless-runtime/1``. The gateway's HTTP protocol (:func:`upgrade_protocol`, uvicorn's
httptools protocol that also knows both; a request is parsed by httptools as every other)
tells a HELLO from a request by the connection's first byte (a frame type, never a letter
of an HTTP method): the HELLO is read by :class:`_Hello`, bounded in size and time. Either
way the worker token is checked before the answer (WELCOME, or ``101``), and the
connection becomes a :class:`FramedWorker`: an :class:`asyncio.Protocol`, no ASGI, no task
and no future per call. A NEXT frame carries the result of the poller's previous call; the
answer is the next call, written to the socket as soon as the pool has one
(:class:`~swarmless.dispatch.pool.Waiter`). One exchange per call.

The pull model's guarantees are the long poll's: only a live worker's token opens the
connection, and a gone worker's next NEXT is answered REFUSED (as 401); a poller whose
connection drops while it waits is forgotten before it is handed a call; calls handed over
stay in the worker's hand (its runtime sends the result again on a new connection; its
container's death fails or requeues them, :mod:`~swarmless.dispatch.workers`); a retired
worker's pollers get RETIRE (as 410). A result over the function's ``max_output`` fails its
call (502) and its bytes are dropped as they come, never held; logs over
:data:`~swarmless.gateway.runtime_api.LOGS_LIMIT` are dropped the same way. Idle pollers
get an IDLE frame every long-poll window (as 204), so a runtime can tell a gateway that
went silent, and answer ALIVE; one that has not answered within two windows is taken for
gone (a container removed without a word leaves no FIN behind) and its connection closed,
so the worker is no longer counted as polling and the reconciler checks it, as when a long
poll is not renewed. ALIVE counts as activity, as a renewed long poll does. Any frame that
breaks the protocol closes the connection.

An active gateway only: a standby replica answers UNAVAILABLE (to a HELLO) or 503 (to the
upgrade), and the runtime keeps to ``/runtime/next`` (which the standby forwards).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from swarmless.dispatch.pool import Call, Result, WarmPool, Worker
from swarmless.gateway.asgi import bearer
from swarmless.gateway.runtime_api import LOGS_LIMIT, RuntimeAPI, make_result
from swarmless.runtime import frames

__all__ = ["FramedWorker", "upgrade_protocol"]

log = logging.getLogger("swarmless.runtime_api")

_UPGRADE = frames.UPGRADE.encode()
_PATH = frames.PATH.encode()
_HEAD = frames.HEAD
_HEAD_SIZE = frames.HEAD.size
_RETIRE = frames.frame(frames.RETIRE)
_IDLE = frames.frame(frames.IDLE)
_REFUSED = frames.frame(frames.REFUSED)
_WELCOME = frames.frame(frames.WELCOME)
_UNAVAILABLE = frames.frame(frames.UNAVAILABLE)
#: Seconds a connection that began with a HELLO frame has to send the rest of it.
HELLO_TIMEOUT = 10.0
_SWITCH = (
    b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: " + _UPGRADE + b"\r\n\r\n"
)


def _refusal(status: int, reason: str, error: str, message: str) -> bytes:
    body = json.dumps({"error": error, "message": message}).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


class FramedWorker(asyncio.Protocol):
    """One poller's framed connection; a :class:`~swarmless.dispatch.pool.Waiter` while
    it waits for a call."""

    def __init__(
        self, api: RuntimeAPI, worker: Worker, pool: WarmPool, connections: set[Any]
    ) -> None:
        self._api = api
        self._worker = worker
        self._pool = pool
        self._connections = connections
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        #: Body bytes of an over-limit frame still to drop, and that frame's type.
        self._skip = 0
        self._skipping = 0
        self._waiting = False
        self._closed = False
        #: When the poller last sent anything (monotonic).
        self._heard = time.monotonic()

    # -- the pool's waiter --------------------------------------------------------------

    @property
    def worker(self) -> Worker:
        return self._worker

    def live(self) -> bool:
        transport = self._transport
        return (
            self._waiting
            and not self._closed
            and transport is not None
            and not transport.is_closing()
        )

    def deliver(self, got: Call | object) -> None:
        self._waiting = False
        transport = self._transport
        assert transport is not None
        if isinstance(got, Call):
            meta = b'{"id":%s,"deadline":%d,"event":%s}' % (
                json.dumps(got.id).encode(),
                got.deadline_ms,
                got.event,
            )
            transport.write(frames.frame(frames.CALL, meta, got.body))
        else:  # RETIRE
            transport.write(_RETIRE)

    def idle(self, now: float, silent_after: float) -> None:
        """Tell a waiting poller the gateway is still here (the long poll's 204); close the
        connection of one silent for ``silent_after`` seconds."""
        transport = self._transport
        if not self.live() or transport is None:
            return
        if self._worker.state == "paused":  # frozen: it cannot answer; its clock restarts
            self._heard = now
            return
        if now - self._heard > silent_after:
            log.warning("worker %s: a poller did not answer for %.0fs: closing", self.worker.id,
                        now - self._heard)  # fmt: skip
            transport.abort()
            return
        transport.write(_IDLE)

    # -- asyncio --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport: asyncio's, or uvloop's (which is not an asyncio.Transport).
        self._transport = cast(asyncio.Transport, transport)
        self._connections.add(self)
        self._api.framed_opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._waiting:
            self._waiting = False
            self._pool.unwait(self)
        self._connections.discard(self)
        self._api.framed_closed(self)
        self._buf = bytearray()

    def shutdown(self) -> None:
        """The server stops (uvicorn asks every connection, after the gateway's drain:
        its workers are retired, the calls still in hand abandoned): close."""
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self._heard = time.monotonic()
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
            if self._skip:
                return
            if self._skipping == frames.NEXT:
                self._ask()
            if not data:
                return
        buf = self._buf
        if not buf and len(data) >= _HEAD_SIZE:
            # The common case: one whole small frame, nothing buffered: no copy.
            kind, meta_len, body_len = _HEAD.unpack_from(data)
            start = _HEAD_SIZE + meta_len
            if (
                len(data) == start + body_len
                and kind == frames.NEXT
                and meta_len <= frames.META_LIMIT
                and body_len <= self._pool.spec.max_output
            ):
                meta = self._meta(data[_HEAD_SIZE:start])
                if meta is not None:
                    self._next(meta, data[start:])
                return
        buf += data
        while len(buf) >= _HEAD_SIZE and not self._closed:
            kind, meta_len, body_len = _HEAD.unpack_from(buf)
            if kind == frames.ALIVE and not meta_len and not body_len:
                del buf[:_HEAD_SIZE]
                self._worker.last_active = self._heard
                continue
            if kind not in (frames.NEXT, frames.LOGS) or meta_len > frames.META_LIMIT:
                self._broken(f"a frame of type {kind} with {meta_len} bytes of meta")
                return
            limit = self._pool.spec.max_output if kind == frames.NEXT else LOGS_LIMIT
            start = _HEAD_SIZE + meta_len
            if len(buf) < start:
                return
            if body_len > limit:
                meta = self._meta(bytes(buf[_HEAD_SIZE:start]))
                if meta is None:
                    return
                self._too_large(kind, meta, limit)
                have = min(len(buf) - start, body_len)
                del buf[: start + have]
                if have < body_len:
                    self._skip, self._skipping = body_len - have, kind
                    return
                if kind == frames.NEXT:
                    self._ask()
                continue
            end = start + body_len
            if len(buf) < end:
                return
            meta = self._meta(bytes(buf[_HEAD_SIZE:start]))
            body = bytes(buf[start:end])
            del buf[:end]
            if meta is None:
                return
            if kind == frames.NEXT:
                self._next(meta, body)
            else:
                self._logs(meta, body)

    # -- frames -------------------------------------------------------------------------

    def _meta(self, raw: bytes) -> dict[str, Any] | None:
        if not raw:
            return {}
        try:
            meta = json.loads(raw)
        except ValueError:
            meta = None
        if not isinstance(meta, dict):
            self._broken(f"a frame whose meta is not a JSON object: {raw[:100]!r}")
            return None
        return meta

    def _next(self, meta: dict[str, Any], body: bytes) -> None:
        call_id = meta.get("id")
        if isinstance(call_id, str):
            exit_code = meta.get("exit_code")
            error = meta.get("error")
            result = make_result(
                meta.get("status", 200),
                meta.get("headers") or [],
                None if error is None else str(error),
                exit_code if isinstance(exit_code, int) else None,
                body,
            )
            self._pool.complete(self._worker, call_id, result)
        self._ask()

    def _ask(self) -> None:
        """The poller waits for its next call: hand it one now, or wait in the pool."""
        if self._closed or self._waiting:
            return
        worker = self._worker
        transport = self._transport
        assert transport is not None
        if worker.state == "gone" or self._api.workers.for_token(worker.token) is None:
            transport.write(_REFUSED)
            transport.close()
            return
        got = self._pool.take(worker)
        if got is None:
            self._waiting = True
            self._pool.wait(self)
        else:
            self.deliver(got)

    def _logs(self, meta: dict[str, Any], body: bytes) -> None:
        call_id = meta.get("id")
        split = meta.get("stdout", 0)
        if not isinstance(call_id, str) or not isinstance(split, int):
            self._broken("a LOGS frame without a call id")
            return
        if call_id in self._worker.in_hand:
            self._api.recorder.logs(call_id, body[:split], body[split:])

    def _too_large(self, kind: int, meta: dict[str, Any], limit: int) -> None:
        call_id = meta.get("id")
        if kind != frames.NEXT or not isinstance(call_id, str):
            return  # logs over the limit: dropped
        message = f"its result is over the limit of {limit} bytes (max_output)"
        failed = Result(status=502, headers=[], body=b"", error=message)
        self._pool.complete(self._worker, call_id, failed)

    def _broken(self, what: str) -> None:
        log.warning("worker %s broke the runtime protocol (%s): closing", self._worker.id, what)
        if self._transport is not None:
            self._transport.close()
        self._closed = True


class _OneWrite(asyncio.Transport):
    """The transport as one response of ``/function/*`` (or ``/async-function/*``) sees
    it: the status line and headers are held until the body comes, and both go out in one
    write (one system call and one wake-up of the client instead of two). Only the first
    write after the response started is held; closing sends what is held first."""

    def __init__(self, transport: asyncio.Transport, started: Callable[[], bool]) -> None:
        super().__init__()
        self._transport = transport
        self._started = started
        self._held: bytes | None = None
        self._seen = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + bytes(data))
        elif not self._seen and self._started():
            self._seen = True
            self._held = bytes(data)
        else:
            self._transport.write(data)

    def close(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            self._transport.write(held)
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)


def _switch(
    api: RuntimeAPI,
    found: tuple[Worker, WarmPool],
    transport: asyncio.Transport,
    connections: set[Any],
    answer: bytes,
) -> FramedWorker:
    """The connection of a live worker's poller becomes its :class:`FramedWorker`, told so
    by ``answer`` (WELCOME, or the 101 of the upgrade)."""
    worker, pool = found
    framed = FramedWorker(api, worker, pool, connections)
    transport.write(answer)
    transport.set_protocol(framed)
    framed.connection_made(transport)
    return framed


class _Hello(asyncio.Protocol):
    """A connection whose first byte was a HELLO frame's, until the frame is whole (at most
    :data:`~swarmless.runtime.frames.HELLO_LIMIT` bytes of meta, within
    :data:`HELLO_TIMEOUT`): a live worker's token makes it a :class:`FramedWorker`
    (WELCOME); an unknown one is answered REFUSED, a standby's UNAVAILABLE; anything else
    closes the connection unanswered."""

    def __init__(self, runtime: Callable[[], RuntimeAPI | None], connections: set[Any]) -> None:
        self._runtime = runtime
        self._connections = connections
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._connections.add(self)
        self._timer = asyncio.get_running_loop().call_later(HELLO_TIMEOUT, self._close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()

    def shutdown(self) -> None:
        """The server stops (uvicorn asks every connection): close."""
        self._close()

    def data_received(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        buf = self._buf
        buf += data
        if len(buf) < _HEAD_SIZE:
            return
        kind, meta_len, body_len = _HEAD.unpack_from(buf)
        if kind != frames.HELLO or body_len or meta_len > frames.HELLO_LIMIT:
            self._close()
            return
        end = _HEAD_SIZE + meta_len
        if len(buf) < end:
            return
        try:
            meta = json.loads(bytes(buf[_HEAD_SIZE:end]))
        except ValueError:
            meta = None
        token = meta.get("token") if isinstance(meta, dict) else None
        if not isinstance(token, str) or not token:
            self._close()
            return
        self._answer(token, bytes(buf[end:]))

    def _answer(self, token: str, rest: bytes) -> None:
        transport = self._transport
        assert transport is not None
        api = self._runtime()
        if api is None:
            transport.write(_UNAVAILABLE)
            self._close()
            return
        found = api.workers.for_token(token)
        if found is None:
            transport.write(_REFUSED)
            self._close()
            return
        self._done()
        framed = _switch(api, found, transport, self._connections, _WELCOME)
        if rest:
            framed.data_received(rest)

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._done()

    def _done(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._connections.discard(self)


#: The paths answered in one write: sync calls, and the 202 (or refusal) of an async one.
_ONE_WRITE = ("/function/", "/async-function/")


def upgrade_protocol(runtime: Callable[[], RuntimeAPI | None]) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol that also makes a connection opened with a HELLO
    frame, or upgraded with ``POST /runtime/connect``, a :class:`FramedWorker`
    (``runtime()``: the active gateway's runtime API, or None), and
    answers ``/function/*`` and ``/async-function/*`` in one write (:class:`_OneWrite`)."""

    class GatewayHttpProtocol(HttpToolsProtocol):
        #: Whether the connection's first bytes were looked at (a HELLO, or HTTP).
        _sniffed = False

        def data_received(self, data: bytes) -> None:
            if not self._sniffed:
                self._sniffed = True
                if data[0] == frames.HELLO:
                    self.connections.discard(self)
                    hello = _Hello(runtime, self.connections)
                    self.transport.set_protocol(hello)
                    hello.connection_made(self.transport)
                    hello.data_received(data)
                    return
            super().data_received(data)

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            cycle = self.cycle
            if (
                cycle is not None
                and cycle.scope is self.scope
                and self.scope["method"] != "HEAD"
                and self.scope.get("path", "").startswith(_ONE_WRITE)
            ):
                cycle.transport = _OneWrite(self.transport, lambda: cycle.response_started)

        def _should_upgrade(self) -> bool:
            return self._get_upgrade() == _UPGRADE or super()._should_upgrade()

        def handle_websocket_upgrade(self) -> None:
            if self._get_upgrade() != _UPGRADE:
                super().handle_websocket_upgrade()
                return
            transport = self.transport
            self.connections.discard(self)
            api = runtime()
            try:
                path = httptools.parse_url(self.url).path
            except httptools.HttpParserInvalidURLError:
                path = b""
            method = self.scope.get("method")
            if api is None:
                transport.write(
                    _refusal(
                        503,
                        "Service Unavailable",
                        "unavailable",
                        "not the active gateway: use /runtime/next",
                    )
                )
                transport.close()
                return
            if path != _PATH or method != "POST":
                transport.write(_refusal(404, "Not Found", "not_found", "no such upgrade"))
                transport.close()
                return
            token = bearer({"headers": self.headers})
            found = api.workers.for_token(token) if token else None
            if found is None:
                transport.write(
                    _refusal(401, "Unauthorized", "unauthorized", "unknown worker token")
                )
                transport.close()
                return
            _switch(api, found, transport, self.connections, _SWITCH)

    return GatewayHttpProtocol
