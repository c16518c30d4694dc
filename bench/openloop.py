"""Open-loop load at a fixed rate: latency measured from when each request was *due*.

    python bench/openloop.py URL RATE SECONDS [--max-connections 256] [--body TEXT]

A closed-loop client (wrk, a keep-alive loop) sends the next request only once the last one
answered: when the server stalls, the client stalls with it and the requests it would have
sent meanwhile are never measured (coordinated omission). Here the send times are fixed in
advance (``RATE`` per second, evenly spaced, for ``SECONDS``); each request's latency runs
from its scheduled time to its last response byte, so a request that waited for a free
connection, or was sent late because the client was behind, is charged that wait.

Keep-alive connections are reused; a new one is opened when none is free, up to
``--max-connections`` (then requests wait for one, still charged from their due time).
HTTP is spoken with h11. Prints one ``RESULT {json}`` line: the latencies (seconds, in
send order), the errors, the achieved rate and how late the sends were.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
import urllib.parse

import h11


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h11 = h11.Connection(our_role=h11.CLIENT)

    async def call(self, host: str, path: str, body: bytes) -> int:
        """One request; the response status. Raises on a broken connection."""
        headers = [
            ("Host", host),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
        ]
        out = self.h11.send(h11.Request(method="POST", target=path, headers=headers))
        out += self.h11.send(h11.Data(data=body)) + self.h11.send(h11.EndOfMessage())
        self.writer.write(out)
        status = 0
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                data = await self.reader.read(65536)
                self.h11.receive_data(data)
                if not data:
                    raise ConnectionError("server closed the connection")
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("connection closed")
        self.h11.start_next_cycle()
        return status

    def close(self) -> None:
        self.writer.close()


async def run(url: str, rate: float, duration: float, max_conns: int, body: bytes) -> dict:
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path or "/"
    authority = f"{host}:{port}"
    idle: list[Conn] = []
    opened = 0
    free = asyncio.Condition()
    n = max(1, round(rate * duration))
    latencies: list[float] = [0.0] * n
    late: list[float] = [0.0] * n
    errors = 0

    async def get_conn() -> Conn:
        nonlocal opened
        async with free:
            while not idle and opened >= max_conns:
                await free.wait()
            if idle:
                return idle.pop()
            opened += 1
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            async with free:
                opened -= 1
                free.notify()
            raise
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return Conn(reader, writer)

    async def put_conn(conn: Conn | None) -> None:
        nonlocal opened
        async with free:
            if conn is None:
                opened -= 1
            else:
                idle.append(conn)
            free.notify()

    async def one(i: int, due: float) -> None:
        nonlocal errors
        late[i] = time.perf_counter() - due
        conn: Conn | None = None
        try:
            conn = await get_conn()
            status = await conn.call(authority, path, body)
            if not 200 <= status < 300:
                errors += 1
        except (OSError, ConnectionError, h11.ProtocolError):
            errors += 1
            if conn is not None:
                conn.close()
            conn = None
        latencies[i] = time.perf_counter() - due
        await put_conn(conn)

    tasks = []
    t0 = time.perf_counter() + 0.05
    for i in range(n):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    for conn in idle:
        conn.close()
    late_sorted = sorted(late)
    return {
        "rate": rate,
        "duration": duration,
        "requests": n,
        "errors": errors,
        "achieved_rate": n / elapsed,
        "connections": opened,
        "late_p99": late_sorted[min(n - 1, int(0.99 * (n - 1)))],
        "latencies": latencies,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url")
    parser.add_argument("rate", type=float)
    parser.add_argument("seconds", type=float)
    parser.add_argument("--max-connections", type=int, default=256)
    parser.add_argument("--body", default='{"name":"Ada"}')
    args = parser.parse_args()
    if not (0 < args.rate <= 20_000 and 0 < args.seconds <= 600):
        parser.error("rate must be in (0, 20000], seconds in (0, 600]")
    result = asyncio.run(
        run(args.url, args.rate, args.seconds, args.max_connections, args.body.encode())
    )
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
