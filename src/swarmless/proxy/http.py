"""HTTP/1.1 on both sides of the scoped Docker API, framed by h11 (no hand-written parsing).

The proxy is a trust boundary, so neither side's bytes are read by our own code:

- :class:`ClientSide` reads a function container's requests one at a time with an h11
  server connection (strict framing: one ``Content-Length`` made of ASCII digits or
  ``Transfer-Encoding: chunked``, no smuggling between them; bounded head and body) and
  writes the answers. Requests pipelined behind one are buffered (bounded) and read only
  after that one's answer is complete, so each is checked on its own.
- :class:`EngineExchange` sends exactly one request, the one a verdict spells out, on a
  fresh connection to the engine with an h11 client connection, and reads its answer.

Raw bytes flow only after a protocol switch that both h11 connections agreed to: the
client asked for ``Upgrade: tcp`` on a hijacking route and the engine answered
``101``. Anything else (an engine that answers ``200`` to a detached exec start, say) is
an ordinary HTTP exchange, and the bytes that follow it are read as the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

import h11

from swarmless.engine import Endpoint

__all__ = [
    "BadRequest",
    "ClientGone",
    "ClientSide",
    "EngineExchange",
    "Incoming",
    "open_engine",
    "splice",
]

#: Engine answer headers passed on to the client; the framing is h11's.
_ANSWER_HEADERS = frozenset(
    {
        b"content-type",
        b"api-version",
        b"docker-experimental",
        b"ostype",
        b"server",
        b"builder-version",
        b"swarm",
        b"x-docker-container-path-stat",
        b"content-length",
    }
)
_READ = 65536


class BadRequest(Exception):
    """The client's HTTP cannot be read unambiguously (answered 400 and closed)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


class ClientGone(Exception):
    """The client closed its connection."""


class Incoming:
    """One request as read: method, target, headers (lower-case names), whole body."""

    __slots__ = ("body", "headers", "method", "target")

    def __init__(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes):
        self.method, self.target, self.headers, self.body = method, target, headers, body

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]

    @property
    def wants_upgrade(self) -> bool:
        """Whether the client asked to switch to a raw stream (``Upgrade: tcp``)."""
        upgrade = [v.strip().lower() for v in self.header("upgrade")]
        tokens = {t.strip().lower() for v in self.header("connection") for t in v.split(",")}
        return upgrade == ["tcp"] and "upgrade" in tokens


class ClientSide:
    """The function container's end of one connection (an h11 server connection)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_head: int,
        max_body: int,
    ) -> None:
        self.reader, self.writer = reader, writer
        self.max_body = max_body
        self._max_buffer = max_head + max_body
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
        self._buffered = 0

    # -- reading -------------------------------------------------------------------------

    async def _event(self, timeout: float) -> Any:
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as e:
                raise BadRequest(f"malformed HTTP/1.1: {e}", e.error_status_hint) from None
            if event is not h11.NEED_DATA:
                return event
            data = await asyncio.wait_for(self.reader.read(_READ), timeout)
            self._conn.receive_data(data)

    async def next_request(self, timeout: float) -> Incoming | None:
        """The next whole request; None when the client closed between requests."""
        self._buffered = 0
        event = await self._event(timeout)
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise BadRequest("expected a request")
        names = [k for k, _ in event.headers]
        if b"transfer-encoding" in names and b"content-length" in names:
            # RFC 9112 6.3: a sign of smuggling; refused rather than read one way.
            raise BadRequest("both Content-Length and Transfer-Encoding")
        for k, v in event.headers:
            if k == b"content-length" and int(v) > self.max_body:
                raise BadRequest(f"body of {int(v)} bytes is over {self.max_body}", 413)
        body = bytearray()
        while True:
            part = await self._event(timeout)
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > self.max_body:
                    raise BadRequest(f"body over {self.max_body} bytes", 413)
            elif isinstance(part, h11.EndOfMessage):
                break
            else:
                raise ClientGone()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers]
        return Incoming(
            event.method.decode("ascii"), event.target.decode("latin-1"), headers, bytes(body)
        )

    async def watch(self) -> None:
        """Read what the client sends while an answer streams: pipelined requests are kept
        (bounded) for later; returns when the client closes its side."""
        while True:
            data = await self.reader.read(_READ)
            if not data:
                return
            self._buffered += len(data)
            if self._buffered > self._max_buffer:
                return  # more queued behind one answer than a request may be: drop it
            self._conn.receive_data(data)

    # -- writing -------------------------------------------------------------------------

    async def _send(self, event: Any) -> None:
        data = self._conn.send(event)
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def answer(self, status: int, body: dict[str, Any]) -> None:
        """A whole JSON answer of the proxy's own (a refusal, an error); the connection
        closes after it."""
        data = json.dumps(body).encode()
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(data))),
            ("connection", "close"),
        ]
        try:
            await self._send(h11.Response(status_code=status, headers=headers))
            await self._send(h11.Data(data=data))
            await self._send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            pass  # the connection is past answering (a broken request): it is closed

    async def start(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        kept = [(k, v) for k, v in headers if k.lower() in _ANSWER_HEADERS]
        await self._send(h11.Response(status_code=status, headers=kept))

    async def data(self, chunk: bytes) -> None:
        await self._send(h11.Data(data=chunk))

    async def end(self) -> None:
        await self._send(h11.EndOfMessage())

    def switch(self, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        """Answer 101 and leave HTTP; the client's bytes already read after its request."""
        kept = [(b"connection", b"Upgrade"), (b"upgrade", b"tcp")]
        kept += [(k, v) for k, v in headers if k.lower() == b"content-type"]
        data = self._conn.send(h11.InformationalResponse(status_code=101, headers=kept))
        if data:
            self.writer.write(data)
        return bytes(self._conn.trailing_data[0])

    def next_cycle(self) -> bool:
        """Get ready for the next request on this connection; False when none may follow."""
        conn = self._conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            return True
        return False


async def open_engine(engine: Endpoint) -> EngineExchange:
    """A fresh connection to the engine, for one exchange."""
    if engine.socket:
        reader, writer = await asyncio.open_unix_connection(engine.socket, limit=_READ)
    else:
        reader, writer = await asyncio.open_connection(engine.host, engine.port, limit=_READ)
    return EngineExchange(reader, writer)


class EngineExchange:
    """One checked request to the engine and its answer (an h11 client connection)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._conn = h11.Connection(h11.CLIENT)
        self.switched = False

    async def send(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> None:
        head = [("host", "docker"), *headers]
        if body is not None:
            head.append(("content-length", str(len(body))))
        out = self._conn.send(h11.Request(method=method, target=target, headers=head))
        if body:
            out += self._conn.send(h11.Data(data=body))
        out += self._conn.send(h11.EndOfMessage())
        self.writer.write(out)
        await self.writer.drain()

    async def _event(self) -> Any:
        while True:
            event = self._conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self._conn.receive_data(await self.reader.read(_READ))

    async def answer(self) -> tuple[int, list[tuple[bytes, bytes]]]:
        """The engine's status and headers; ``switched`` when it answered 101."""
        while True:
            event = await self._event()
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    self.switched = True
                    return 101, list(event.headers)
                continue  # 100 Continue and friends
            if isinstance(event, h11.Response):
                return event.status_code, list(event.headers)
            raise h11.RemoteProtocolError("the engine closed before answering")

    async def body(self) -> AsyncIterator[bytes]:
        """The answer's body as it comes (streams: logs, events, wait)."""
        while True:
            event = await self._event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return

    @property
    def leftover(self) -> bytes:
        """The engine's raw-stream bytes that came with its 101."""
        return bytes(self._conn.trailing_data[0])

    def close(self) -> None:
        self.writer.close()


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await src.read(_READ):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()  # a half-close goes on (stdin's EOF, the end of output)


async def splice(
    client: ClientSide, engine: EngineExchange, to_engine: bytes, to_client: bytes
) -> None:
    """Relay a switched connection both ways until the engine ends its output.

    The client's half-close is passed on (stdin's EOF) and output keeps flowing; when the
    engine's output ends, the client gets the end too. Both relays are awaited, never
    left to the garbage collector.
    """
    with contextlib.suppress(ConnectionError, OSError):
        if to_client:
            client.writer.write(to_client)
        if to_engine:
            engine.writer.write(to_engine)
        await asyncio.gather(client.writer.drain(), engine.writer.drain())
    up = asyncio.ensure_future(_pump(client.reader, engine.writer))
    down = asyncio.ensure_future(_pump(engine.reader, client.writer))
    try:
        await down
    finally:
        up.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
