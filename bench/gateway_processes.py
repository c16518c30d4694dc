"""The processes bench/gateway.py starts: the two servers it compares and a load client.

    python bench/gateway_processes.py serve direct
    python bench/gateway_processes.py serve gateway DATA_DIR INSTANCE LABEL=VALUE
    python bench/gateway_processes.py load URL CONNECTIONS SECONDS

A server prints ``PORT <n>`` once it answers and stops gracefully on SIGINT; the load
client prints one ``RESULT {json}`` line, as the wrk script of :func:`wrk_load` does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: The no-op handler: the warm function, the direct server and run() all use this text.
HANDLER = 'def handle(event, context):\n    return b"ok"\n'
#: The request body every call sends.
BODY = b'{"name":"Ada"}'
PORT_LINE = re.compile(r"^PORT (\d+)$", re.M)


def pct(samples: list[float], p: int) -> float:
    """The ``p``-th percentile (inclusive method; with few samples p99 is about the max)."""
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[p - 1]


# -- load generation ----------------------------------------------------------------------


@dataclasses.dataclass
class Load:
    """One fixed-duration load run against one URL."""

    rps: float
    p50: float
    p99: float
    requests: int
    errors: int
    #: CPU seconds per request of the server process, and machine busy share (0..1).
    server_cpu: float = 0.0
    host_busy: float = 0.0


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT {\\"requests\\":%%d,\\"duration_us\\":%%d,\\"p50_us\\":%%d,\\"p99_us\\":%%d," ..
    "\\"errors\\":%%d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status + e.connect + e.read + e.write + e.timeout))
end
"""


def wrk_load(url: str, connections: int, duration: float, script: Path) -> Load:
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=False)
    m = re.search(r"^RESULT (\{.*\})$", out.stdout, re.M)
    if out.returncode != 0 or m is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-500:]}{out.stderr[-500:]}")
    r = json.loads(m[1])
    return Load(
        rps=r["requests"] / (r["duration_us"] / 1e6),
        p50=r["p50_us"] / 1e6,
        p99=r["p99_us"] / 1e6,
        requests=r["requests"],
        errors=r["errors"],
    )


def python_load(url: str, connections: int, duration: float) -> Load:
    """The fallback load: this file's ``load`` mode, a keep-alive asyncio client."""
    cmd = [sys.executable, __file__, "load", url, str(connections), str(duration)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=False)
    m = re.search(r"^RESULT (\{.*\})$", out.stdout, re.M)
    if out.returncode != 0 or m is None:
        raise RuntimeError(f"load client failed: {out.stdout[-500:]}{out.stderr[-500:]}")
    return Load(**json.loads(m[1]))


async def _keepalive_client(
    host: str, port: int, path: str, stop_at: float, latencies: list[float], errors: list[int]
) -> None:
    import socket

    reader, writer = await asyncio.open_connection(host, port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY
    try:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            m = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
            await reader.readexactly(int(m[1]) if m else 0)
            latencies.append(time.perf_counter() - t0)
            if not head.startswith(b"HTTP/1.1 2"):
                errors.append(1)
    finally:
        writer.close()


def run_python_load(url: str, connections: int, duration: float) -> None:
    """``load``: print one RESULT line, as the wrk script does."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    latencies: list[float] = []
    errors: list[int] = []

    async def main() -> float:
        t0 = time.perf_counter()
        stop_at = t0 + duration
        await asyncio.gather(
            *(
                _keepalive_client(
                    parts.hostname or "127.0.0.1",
                    parts.port or 80,
                    parts.path,
                    stop_at,
                    latencies,
                    errors,
                )
                for _ in range(connections)
            )
        )
        return time.perf_counter() - t0

    elapsed = asyncio.run(main())
    result = {
        "rps": len(latencies) / elapsed,
        "p50": pct(latencies, 50),
        "p99": pct(latencies, 99),
        "requests": len(latencies),
        "errors": len(errors),
    }
    print("RESULT " + json.dumps(result), flush=True)


# -- the two servers, each in its own process ---------------------------------------------


def serve_direct() -> None:
    """``serve direct``: the no-op handler behind uvicorn, configured as the gateway is."""
    import socket

    import uvicorn

    from swarmless.runtime.handlers import Call, PythonHandler

    namespace: dict[str, Any] = {}
    exec(HANDLER, namespace)
    handler = PythonHandler(namespace["handle"], function="noop")
    counter = iter(range(1 << 62))

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        event = {
            "method": scope["method"],
            "path": scope["path"],
            "query": scope["query_string"].decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        }
        result = handler(Call(f"direct-{next(counter)}", event, b"".join(chunks), None))
        headers = [(k.lower().encode(), v.encode()) for k, v in result.headers]
        headers.append((b"content-length", str(len(result.body)).encode()))
        await send({"type": "http.response.start", "status": result.status, "headers": headers})
        await send({"type": "http.response.body", "body": result.body})

    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    sock.setblocking(False)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        http="httptools",
        loop="none",  # the loop is the Runner's below: uvloop's, as the gateway's
        timeout_keep_alive=60,
    )
    server = uvicorn.Server(config)

    async def main() -> None:
        async def announce() -> None:
            while not server.started and not server.should_exit:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            print(f"PORT {sock.getsockname()[1]}", flush=True)

        task = asyncio.create_task(announce())
        await server.serve(sockets=[sock])
        task.cancel()

    # The same event loop as the gateway's (swarmless.gateway.server.run: uvloop's).
    from swarmless.gateway.server import loop_factory

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(main())


def serve_gateway(data_dir: str, instance: str, label: str) -> None:
    """``serve gateway``: a gateway with its own data dir, network and instance name."""
    from swarmless.backends.docker import DockerBackend
    from swarmless.config import Settings
    from swarmless.gateway.app import Gateway
    from swarmless.gateway.server import run

    key, _, value = label.partition("=")
    settings = Settings.load(
        data_dir=data_dir,
        host="127.0.0.1",
        port=0,
        instance=instance,
        network=f"swarmless-{instance}",
    )
    backend = DockerBackend(settings, labels={key: value})
    token = os.environ["SWARMLESS_BENCH_TOKEN"]
    gateway = Gateway(settings, backend=backend, token=token, drain_timeout=10)

    def started(_gw: Gateway, port: int) -> None:
        print(f"PORT {port}", flush=True)

    run(gateway, started=started)  # what swarmless up runs (uvloop's event loop)


@dataclasses.dataclass
class Server:
    """A server process started by :func:`start_server`."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown (and drain)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_server(name: str, args: list[str], log: Path, env: dict[str, str]) -> Server:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, __file__, "serve", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )
    server = Server(name, proc, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        m = PORT_LINE.search(log.read_text(errors="replace"))
        if m:
            server.port = int(m[1])
            return server
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"{name} did not start:\n{log.read_text(errors='replace')[-2000:]}")


def main(argv: list[str]) -> None:
    if argv[:2] == ["serve", "direct"]:
        serve_direct()
    elif argv[:2] == ["serve", "gateway"] and len(argv) == 5:
        serve_gateway(*argv[2:5])
    elif argv[:1] == ["load"] and len(argv) == 4:
        run_python_load(argv[1], int(argv[2]), float(argv[3]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
