"""The framed runtime connection (``POST /runtime/connect``), its guarantees, on a real server.

The gateway's HTTP protocol (uvicorn's httptools, plus the upgrade) serves a real
:class:`RuntimeAPI` over a real :class:`WorkerRegistry` and :class:`WarmPool`; the worker is
this test, speaking frames on a socket (the 101 parsed by h11). Nothing here needs the
engine: the registry's backend is built but never started. The runtime's own side of the
protocol runs in every warm container of the other suites (tests/test_gateway.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import h11
import uvicorn

from swarmless.backends.docker import DockerBackend
from swarmless.config import Settings
from swarmless.dispatch.background import Background
from swarmless.dispatch.pool import Call, Result, WarmPool
from swarmless.dispatch.recorder import Recorder
from swarmless.dispatch.workers import WorkerRegistry
from swarmless.gateway import runtime_frames
from swarmless.gateway.runtime_api import RuntimeAPI
from swarmless.gateway.runtime_frames import upgrade_protocol
from swarmless.records import InvocationRecord, new_call_id, now_ms
from swarmless.runtime import frames, poll_frames
from swarmless.runtime.config import RuntimeConfig
from swarmless.runtime.poll_common import Refused
from swarmless.runtime.poll_frames import Channel
from swarmless.spec import FunctionSpec
from swarmless.store import Store

LONG_POLL = 0.5


class Client:
    """A worker's poller on a framed connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def send(self, kind: int, meta: dict[str, Any] | None = None, body: bytes = b"") -> None:
        raw = json.dumps(meta).encode() if meta else b""
        self.writer.write(frames.frame(kind, raw, body))

    async def read(self, skip_idle: bool = True) -> tuple[int, dict[str, Any], bytes]:
        while True:
            kind, meta_len, body_len = frames.HEAD.unpack(
                await asyncio.wait_for(self.reader.readexactly(frames.HEAD.size), 10)
            )
            meta = json.loads(await self.reader.readexactly(meta_len)) if meta_len else {}
            body = await self.reader.readexactly(body_len)
            if kind == frames.IDLE and skip_idle:
                self.send(frames.ALIVE)
                continue
            return kind, meta, body

    def close(self) -> None:
        self.writer.close()


async def hello(port: int, raw: bytes) -> tuple[bytes, Client]:
    """A new connection whose first bytes are ``raw`` (a HELLO frame, or one that is
    not): the answer's head as read (empty: closed unanswered) and the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    head = b""
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        head = await asyncio.wait_for(reader.readexactly(frames.HEAD.size), 10)
    return head, Client(reader, writer)


def hello_frame(token: str) -> bytes:
    return frames.frame(frames.HELLO, json.dumps({"token": token}).encode())


async def closed(client: Client) -> bool:
    """Whether the gateway closed the connection without another byte."""
    try:
        return await asyncio.wait_for(client.reader.read(1), 10) == b""
    except ConnectionError:
        return True


async def upgrade(port: int, token: str) -> tuple[int, Client | None]:
    """``POST /runtime/connect``: the answer's status, and the framed client on a 101."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    headers = [
        ("Host", "gw"),
        ("Authorization", f"Bearer {token}"),
        ("Connection", "Upgrade"),
        ("Upgrade", frames.UPGRADE),
        ("Content-Length", "0"),
    ]
    request = h11.Request(method="POST", target=frames.PATH, headers=headers)
    writer.write(conn.send(request) + conn.send(h11.EndOfMessage()))
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await asyncio.wait_for(reader.read(65536), 10))
            continue
        assert isinstance(event, h11.InformationalResponse | h11.Response), event
        break
    if event.status_code != 101:
        writer.close()
        return event.status_code, None
    assert conn.our_state is h11.SWITCHED_PROTOCOL
    assert conn.trailing_data == (b"", False)  # nothing before the first NEXT
    return 101, Client(reader, writer)


def new_call(body: bytes, timeout: float = 30.0) -> Call:
    rec = InvocationRecord(id=new_call_id(), function="f", mode="warm", queued_at=now_ms())
    return Call(
        record=rec,
        event=b'{"method":"POST","path":"/x","query":"","headers":[]}',
        body=body,
        deadline=time.monotonic() + timeout,
        deadline_ms=now_ms() + int(timeout * 1000),
        future=asyncio.get_running_loop().create_future(),
    )


async def eventually(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def serve(
    tmp_path: Path,
    test: Callable[..., Awaitable[None]],
    *,
    standby: bool = False,
    plain: bool = False,
) -> None:
    """``test(port, workers, pool, store)`` against the gateway's HTTP protocol serving a
    real runtime API: the active gateway's, a ``standby``'s (no runtime API of its own: it
    takes no HELLO and no upgrade), or ``plain`` uvicorn's (an older gateway: it knows
    neither; ``/runtime/next`` only)."""

    async def main() -> None:
        settings = Settings.load(data_dir=tmp_path, instance="test-frames")
        store = await Store.open(settings.store)
        background = Background()
        workers = WorkerRegistry(DockerBackend(settings), background)
        recorder = Recorder(store, background)
        api = RuntimeAPI(workers, recorder, long_poll=LONG_POLL)
        spec = FunctionSpec(name="f", image="x", mode="warm", handler="h:h", max_output=1000)
        pool = WarmPool(spec, 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        protocol = upgrade_protocol(lambda: None if standby else api)
        config = uvicorn.Config(
            api, http="httptools" if plain else protocol, lifespan="off", log_level="warning"
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        await eventually(lambda: server.started, "the server")
        try:
            await test(sock.getsockname()[1], workers, pool, store)
        finally:
            server.should_exit = True
            await task
            await store.close()

    asyncio.run(main())


def test_one_exchange_per_call_and_its_guarantees(tmp_path: Path) -> None:
    async def test(port: int, workers: WorkerRegistry, pool: WarmPool, store: Store) -> None:
        worker = workers.new(pool)
        assert (await upgrade(port, "not-a-worker"))[0] == 401
        status, client = await upgrade(port, worker.token)
        assert status == 101
        assert client is not None

        # A call waits in the queue until the poller asks; then one CALL frame.
        queued = new_call(b"first")
        pool.submit(queued)
        client.send(frames.NEXT)
        kind, meta, body = await client.read()
        assert kind == frames.CALL
        assert meta["id"] == queued.id
        assert body == b"first"
        assert meta["event"]["path"] == "/x"
        assert meta["deadline"] == queued.deadline_ms
        assert worker.state == "ready"
        assert queued.id in worker.in_hand

        # Its logs and result come back; the same NEXT waits for the next call, which is
        # handed over at once when it arrives (the poller is counted as polling).
        client.send(frames.LOGS, {"id": queued.id, "stdout": 3}, b"outerr")
        client.send(
            frames.NEXT,
            {"id": queued.id, "status": 201, "headers": [["x-a", "1"]]},
            b"answer",
        )
        result = await asyncio.wait_for(queued.future, 10)
        assert result == Result(status=201, headers=[("x-a", "1")], body=b"answer")
        await eventually(lambda: pool.polling() == {worker.id}, "the poller to wait")
        handed = new_call(b"second")
        pool.submit(handed)
        kind, meta, _ = await client.read()
        assert kind == frames.CALL
        assert meta["id"] == handed.id

        # A result over max_output fails its call (502) and is dropped, never held; the
        # connection goes on: the next call is handed over on it.
        client.send(frames.NEXT, {"id": handed.id}, b"x" * 5000)
        failed = await asyncio.wait_for(handed.future, 10)
        assert failed.status == 502
        assert failed.error is not None
        assert "max_output" in failed.error
        third = new_call(b"third")
        pool.submit(third)
        kind, meta, _ = await client.read()
        assert kind == frames.CALL
        assert meta["id"] == third.id

        # An answer HTTP cannot carry fails as a 502 naming why.
        client.send(frames.NEXT, {"id": third.id, "status": 101})
        bad = await asyncio.wait_for(third.future, 10)
        assert bad.status == 101
        assert bad.error is not None
        assert "200 to 599" in bad.error

        # A poller whose connection drops while it waits is forgotten: the next call is
        # queued, not handed to it.
        await eventually(lambda: pool.polling() == {worker.id}, "the poller to wait")
        client.close()
        await eventually(lambda: not pool.polling(), "the dropped poller forgotten")
        kept = new_call(b"kept")
        pool.submit(kept)
        assert list(pool.pending) == [kept]

        # A new connection takes it; retiring the worker answers its next NEXT with RETIRE.
        status, client = await upgrade(port, worker.token)
        assert client is not None
        client.send(frames.NEXT)
        kind, meta, _ = await client.read()
        assert kind == frames.CALL
        assert meta["id"] == kept.id
        pool.retire(worker)
        client.send(frames.NEXT, {"id": kept.id}, b"done")
        assert (await asyncio.wait_for(kept.future, 10)).body == b"done"
        assert (await client.read())[0] == frames.RETIRE

        # A gone worker's token opens nothing: its next NEXT is REFUSED, its upgrade 401.
        pool.gone(worker)
        workers.forget(worker)
        client.send(frames.NEXT)
        assert (await client.read())[0] == frames.REFUSED
        assert (await upgrade(port, worker.token))[0] == 401

    serve(tmp_path, test)


def test_a_silent_poller_is_taken_for_gone(tmp_path: Path) -> None:
    async def test(port: int, workers: WorkerRegistry, pool: WarmPool, store: Store) -> None:
        worker = workers.new(pool)
        _, client = await upgrade(port, worker.token)
        assert client is not None
        client.send(frames.NEXT)
        await eventually(lambda: pool.polling() == {worker.id}, "the poller to wait")
        # Answering IDLE keeps it: after several windows it still waits.
        for _ in range(3):
            kind, _, _ = await client.read(skip_idle=False)
            assert kind == frames.IDLE
            client.send(frames.ALIVE)
        assert pool.polling() == {worker.id}
        # Not answering: its connection is closed (IDLE frames until then), and the
        # worker is no longer counted as polling.
        for _ in range(40):  # two windows are four IDLE frames at most: 40 is far beyond
            try:
                kind, _, _ = await client.read(skip_idle=False)
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            assert kind == frames.IDLE
        else:
            raise AssertionError("the gateway kept the silent poller's connection open")
        await eventually(lambda: not pool.polling(), "the silent poller forgotten")

    serve(tmp_path, test)


def test_a_hello_opens_the_framed_connection_without_http(tmp_path: Path) -> None:
    """A connection whose first bytes are a HELLO frame with a live worker's token is
    answered WELCOME and is framed from then on; frames sent right behind the HELLO, in the
    same write, are read as such."""

    async def test(port: int, workers: WorkerRegistry, pool: WarmPool, store: Store) -> None:
        worker = workers.new(pool)
        queued = new_call(b"first")
        pool.submit(queued)
        head, client = await hello(port, hello_frame(worker.token) + frames.frame(frames.NEXT))
        assert frames.HEAD.unpack(head) == (frames.WELCOME, 0, 0)
        kind, meta, body = await client.read()
        assert kind == frames.CALL
        assert meta["id"] == queued.id
        assert body == b"first"
        client.send(frames.NEXT, {"id": queued.id, "status": 200}, b"answer")
        assert (await asyncio.wait_for(queued.future, 10)).body == b"answer"
        await eventually(lambda: pool.polling() == {worker.id}, "the poller to wait")
        # The same guarantees as an upgraded connection: retired, then gone, its next NEXT
        # is REFUSED and the connection closed.
        pool.retire(worker)
        assert (await client.read())[0] == frames.RETIRE
        pool.gone(worker)
        workers.forget(worker)
        client.send(frames.NEXT)
        assert (await client.read())[0] == frames.REFUSED
        assert await closed(client)

    serve(tmp_path, test)


def test_a_hello_is_checked_and_bounded(tmp_path: Path, monkeypatch: Any) -> None:
    """An unknown token is REFUSED; a HELLO that is not one (meta not JSON, no token, a
    body, meta over the limit) or that never ends is closed unanswered, the last once
    ``HELLO_TIMEOUT`` ran out. HTTP on the same port is not affected."""
    monkeypatch.setattr(runtime_frames, "HELLO_TIMEOUT", 0.5)

    async def test(port: int, workers: WorkerRegistry, pool: WarmPool, store: Store) -> None:
        worker = workers.new(pool)
        head, client = await hello(port, hello_frame("not-a-worker"))
        assert frames.HEAD.unpack(head) == (frames.REFUSED, 0, 0)
        assert await closed(client)
        bad = [
            frames.frame(frames.HELLO, b"{not json"),
            frames.frame(frames.HELLO, b'{"token": 7}'),
            frames.frame(frames.HELLO, b"[]"),
            frames.frame(frames.HELLO, json.dumps({"token": worker.token}).encode(), b"x"),
            frames.HEAD.pack(frames.HELLO, frames.HELLO_LIMIT + 1, 0),
        ]
        for raw in bad:
            head, client = await hello(port, raw)
            assert head == b"", (raw[:40], head)
        # Half a HELLO, then nothing: closed once HELLO_TIMEOUT ran out.
        t0 = time.monotonic()
        head, client = await hello(port, hello_frame(worker.token)[:12])
        assert head == b""
        assert time.monotonic() - t0 >= 0.5
        # Not one of those reached the pool, and the worker's own HELLO still works.
        assert not pool.polling()
        head, client = await hello(port, hello_frame(worker.token))
        assert frames.HEAD.unpack(head) == (frames.WELCOME, 0, 0)
        client.close()
        status, upgraded = await upgrade(port, worker.token)
        assert status == 101
        assert upgraded is not None
        upgraded.close()

    serve(tmp_path, test)


def test_a_standby_answers_a_hello_unavailable(tmp_path: Path) -> None:
    async def test(port: int, workers: WorkerRegistry, pool: WarmPool, store: Store) -> None:
        worker = workers.new(pool)
        head, client = await hello(port, hello_frame(worker.token))
        assert frames.HEAD.unpack(head) == (frames.UNAVAILABLE, 0, 0)
        assert await closed(client)

    serve(tmp_path, test, standby=True)


def channel_call(port: int, token: str, pool: WarmPool, imports: bool = False) -> str:
    """The runtime's own :class:`Channel` (in a thread, as a poller) takes one call;
    the call's id."""
    config = RuntimeConfig(api=f"http://127.0.0.1:{port}", token=token)
    channel = Channel(config, lambda: None)
    try:
        status, handed = channel.exchange(None)
        while status == 204:
            status, handed = channel.exchange(None)
        assert status == 200, status
        assert handed is not None
        return handed[0]
    finally:
        channel.close()


def test_the_runtime_says_hello_and_falls_back_to_http(tmp_path: Path) -> None:
    """The runtime's channel opens its framed connection with a HELLO (no HTTP client
    imported for it), keeps to HTTP on a standby (UNAVAILABLE, then the upgrade's 503:
    ``/runtime/next``) and on an older gateway (its 400 to the HELLO), and stops on a
    refused token."""
    probe = (
        "import sys, swarmless.runtime.loop; "
        "print(sorted(m for m in ('http.client', 'email.parser', 'ssl') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout

    def check(standby: bool = False, plain: bool = False) -> None:
        async def test(port: int, workers: WorkerRegistry, pool: WarmPool, store: Store) -> None:
            worker = workers.new(pool)
            queued = new_call(b"one")
            pool.submit(queued)
            got = await asyncio.to_thread(channel_call, port, worker.token, pool)
            assert got == queued.id
            if not (standby or plain):
                with contextlib.suppress(Refused):
                    await asyncio.to_thread(channel_call, port, "not-a-worker", pool)
                    raise AssertionError("a refused token did not raise Refused")

        serve(tmp_path / f"{standby}-{plain}", test, standby=standby, plain=plain)

    check()
    check(standby=True)
    check(plain=True)


def test_a_poller_connects_without_the_idna_codec() -> None:
    """The HELLO's connection looks its host up as bytes: CPython runs a ``str`` host
    through the ``idna`` codec, an import of about 9 ms at every container start. A
    numeric address and a name both connect; neither imports ``encodings.idna``."""
    probe = (
        "import socket, sys\n"
        "from swarmless.runtime.poll_common import connect\n"
        "server = socket.socket(); server.bind(('127.0.0.1', 0)); server.listen()\n"
        "port = server.getsockname()[1]\n"
        "for host in ('127.0.0.1', 'localhost'):\n"
        "    connect(host, port, 5).close()\n"
        "try:\n"
        "    connect('127.0.0.1', 1, 5)\n"
        "except OSError as e:\n"
        "    print(type(e).__name__)\n"
        "print('encodings.idna' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["ConnectionRefusedError", "False"], out.stdout + out.stderr


def test_a_hello_to_a_server_that_does_not_know_it_is_given_up(monkeypatch: Any) -> None:
    """A server that reads HTTP by lines answers the HELLO 400 at once (its meta ends with
    CRLF CRLF); one that waits silently is given up after ``HELLO_WAIT``. Either way the
    channel asks with HTTP from then on."""

    class Lines(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    lines = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Lines)
    threading.Thread(target=lines.serve_forever, daemon=True).start()
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel does), never reads
    try:
        # Waiting 60 s would mean the 400 did not come at once; 0.5 s is the silent one's.
        for port, wait in ((lines.server_address[1], 60.0), (silent.getsockname()[1], 0.5)):
            monkeypatch.setattr(poll_frames, "HELLO_WAIT", wait)
            channel = Channel(RuntimeConfig(api=f"http://127.0.0.1:{port}", token="t"), print)
            t0 = time.monotonic()
            assert channel._say_hello() is False
            took = time.monotonic() - t0
            assert channel._direct is None
            assert took < 60.0 if wait == 60.0 else took >= 0.5, (port, took)
            channel.close()
    finally:
        lines.shutdown()
        lines.server_close()
        silent.close()
