"""Async invocations end to end: durable queue, retries, dead letter, callbacks, crash safety."""

from __future__ import annotations

import contextlib
import http.server
import itertools
import json
import os
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import httpx
import pytest

import swarmless
from tests.conftest import BUSYBOX, handler_image
from tests.gateway_harness import TOKEN, GatewayProcess, RunningGateway, free_port
from tests.networks import remove_network
from tests.waiting import wait_until

HANDLERS = """
import os, time, urllib.request

def handle(event, context):
    time.sleep(float(os.environ.get("DELAY", "0.05")))
    witness = os.environ.get("WITNESS")
    if witness:
        req = urllib.request.Request(witness, data=context.call_id.encode(), method="POST")
        urllib.request.urlopen(req, timeout=5).read()
    return {"call": context.call_id, "body": event["body"].decode()}
"""


class Sink:
    """An HTTP server that remembers what was POSTed to it (a witness, a callback target)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        lock = threading.Lock()
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    sink.posts.append((dict(self.headers), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def image(build_image: Callable[..., str]) -> str:
    return handler_image(build_image, "async-warm", HANDLERS)


@pytest.fixture(scope="module")
def gw(
    engine: docker.DockerClient, labels: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    # The callback receivers of these tests listen on loopback, refused by default.
    g = RunningGateway(
        tmp_path_factory.mktemp("gw-async"), labels, callback_allow="127.0.0.1"
    ).start()
    yield g
    g.stop(engine)


def deploy(gw: RunningGateway, **spec: object) -> None:
    gw.client().deploy(spec)


def wait_final(client: swarmless.Client, call_id: str, timeout: float = 60) -> str:
    def final() -> str | None:
        status = client.gateway.invocation(call_id).status
        return status if status in ("succeeded", "dead", "failed", "timeout") else None

    return wait_until(final, timeout, f"{call_id} to be final", interval=0.1)


def sdk(gw: RunningGateway) -> swarmless.Client:
    return swarmless.from_env(gateway_url=gw.url, token=TOKEN)


def test_spawn_result_status_logs(gw: RunningGateway, image: str) -> None:
    deploy(gw, name="work", image=image, mode="warm", handler="handler:handle")
    client = sdk(gw)
    inv = client.spawn("work", b"hello async")
    assert inv.status in ("queued", "running", "succeeded")
    result = inv.result(timeout=60)
    assert result.json() == {"call": inv.id, "body": "hello async"}
    assert result.call_id == inv.id
    rec = inv.record
    assert (rec.status, rec.kind, rec.attempt) == ("succeeded", "async", 1)
    # From any process: only the id is needed.
    again = swarmless.Invocation.from_id(inv.id, client.gateway)
    assert again.result().json()["call"] == inv.id
    # Fan-out.
    outs = client.map("work", [1, 2, 3], timeout=60)
    assert [json.loads(o.json()["body"]) for o in outs] == [1, 2, 3]


def test_async_http_contract(gw: RunningGateway, image: str) -> None:
    deploy(gw, name="work", image=image, mode="warm", handler="handler:handle")
    with gw.http(token=None) as http:
        r = http.post("/async-function/work/sub?x=1", content=b"b")
        assert r.status_code == 202
        assert r.json() == {"call_id": r.headers["x-call-id"], "status": "queued"}
        missing = http.post("/async-function/nope", content=b"b")
        assert missing.status_code == 404  # not a 202 for a function that does not exist
        bad = http.post("/async-function/work", headers={"X-Callback-Url": "ftp://x"})
        assert bad.status_code == 400
    deploy(gw, name="secretwork", image=image, mode="warm", handler="handler:handle", private=True)
    with gw.http(token=None) as http:
        assert http.post("/async-function/secretwork", content=b"x").status_code == 401
    with gw.http() as http:
        assert http.post("/async-function/secretwork", content=b"x").status_code == 202


def test_idempotency_key_queues_once(gw: RunningGateway, image: str) -> None:
    deploy(gw, name="work", image=image, mode="warm", handler="handler:handle")
    client = sdk(gw)
    a = client.spawn("work", b"1", idempotency_key="order-42")
    b = client.spawn("work", b"2", idempotency_key="order-42")
    assert a.id == b.id
    assert a.result(timeout=60).json()["body"] == "1"


def test_retries_then_dead_letter_then_redrive(gw: RunningGateway) -> None:
    deploy(
        gw,
        name="flaky",
        image=BUSYBOX,
        command=["sh", "-c", "echo 'db down' >&2; exit 7"],
        retries=2,
        backoff=0.2,
    )
    client = sdk(gw)
    inv = client.spawn("flaky", b"")
    assert wait_final(client, inv.id) == "dead"
    rec = inv.record
    assert rec.attempt == 3
    assert "dead after 3 attempt(s)" in (rec.error or "")
    assert "db down" in (rec.error or "")
    dead = client.gateway.invocations(status="dead", function="flaky")
    assert inv.id in {d.id for d in dead}
    with pytest.raises(swarmless.FunctionFailed, match="dead"):
        inv.result(timeout=5)
    # Fix the function, redrive the dead call: it succeeds.
    deploy(gw, name="flaky", image=BUSYBOX, command=["echo", "recovered"], retries=2)
    inv.retry()
    assert inv.result(timeout=60).body == b"recovered\n"
    assert inv.status == "succeeded"


def test_callbacks_delivered_and_failures_recorded(gw: RunningGateway, image: str) -> None:
    deploy(gw, name="work", image=image, mode="warm", handler="handler:handle")
    sink = Sink()
    try:
        client = sdk(gw)
        inv = client.spawn("work", b"cb", callback_url=sink.url)
        gw.wait_for(lambda: len(sink.posts) == 1, 60, "the callback")
        headers, body = sink.posts[0]
        assert headers["X-Call-Id"] == inv.id
        assert headers["X-Swarmless-Status"] == "succeeded"
        assert json.loads(body)["body"] == "cb"
        gw.wait_for(lambda: (inv.record.callback or "").startswith("delivered 200"), 10)
    finally:
        sink.close()
    # A callback nobody answers: recorded, the call still succeeded, the runner lives on.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    inv = client.spawn("work", b"x", callback_url=f"http://127.0.0.1:{dead_port}/")
    gw.wait_for(lambda: (inv.record.callback or "").startswith("failed"), 30, "callback failure")
    assert inv.status == "succeeded"
    assert client.spawn("work", b"after").result(timeout=60).json()["body"] == "after"


def test_async_concurrency_limits_parallel_work(gw: RunningGateway, image: str) -> None:
    deploy(
        gw,
        name="serial",
        image=image,
        mode="warm",
        handler="handler:handle",
        env={"DELAY": "0.3"},
        async_concurrency=1,
        max_containers=3,
    )
    client = sdk(gw)
    calls = [client.spawn("serial", str(i).encode()) for i in range(4)]
    for c in calls:
        c.result(timeout=60)
    spans = sorted((c.record.started_at or 0, c.record.finished_at or 0) for c in calls)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end - 5, spans  # one at a time


def test_schedule_fires_and_is_listed(gw: RunningGateway, image: str) -> None:
    deploy(
        gw,
        name="ticker",
        image=image,
        mode="warm",
        handler="handler:handle",
        schedule="* * * * * */2",  # every 2 seconds (croniter's seconds field)
    )
    client = sdk(gw)
    listed = client.gateway.schedules()
    assert [s["function"] for s in listed] == ["ticker"]
    assert listed[0]["next_fire"]
    gw.wait_for(
        lambda: any(r.status == "succeeded" for r in client.gateway.invocations(function="ticker")),
        30,
        "a scheduled call",
    )
    client.gateway.remove("ticker")


# -- crash safety ---------------------------------------------------------------------------


def _enqueue_all(url: str, headers: dict[str, str], name: str, n: int) -> list[str]:
    """Queue ``n`` async calls quickly (32 at a time), in order of their bodies."""
    import asyncio

    async def main() -> list[str]:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http:
            sem = asyncio.Semaphore(32)

            async def one(i: int) -> str:
                async with sem:
                    r = await http.post(f"/async-function/{name}", content=str(i).encode())
                    assert r.status_code == 202, r.text
                    return r.headers["x-call-id"]

            return list(await asyncio.gather(*(one(i) for i in range(n))))

    return asyncio.run(main())


@pytest.mark.slow
def test_gateway_sigkill_loses_nothing(
    engine: docker.DockerClient, image: str, tmp_path: Path
) -> None:
    instance = f"test-crash-{os.getpid()}"
    network = engine.networks.create(
        f"swarmless-{instance}", driver="bridge", labels={"swarmless.managed": "true"}
    )
    network.reload()
    bridge_ip = network.attrs["IPAM"]["Config"][0]["Gateway"]
    witness = Sink(bridge_ip)
    gateway = GatewayProcess(tmp_path, instance, network.name, free_port())
    n = 500
    try:
        gateway.start()
        headers = {"Authorization": f"Bearer {gateway.token}"}
        with httpx.Client(base_url=gateway.url, headers=headers, timeout=30) as http:
            r = http.post(
                "/system/functions",
                json={
                    "name": "durable",
                    "image": image,
                    "mode": "warm",
                    "handler": "handler:handle",
                    "env": {"WITNESS": witness.url, "DELAY": "0.1"},
                    "concurrency": 2,
                    "max_containers": 2,
                    "retries": 5,
                    "backoff": 0.2,
                    "timeout": 10,
                },
            )
            assert r.status_code == 201, r.text
            ids = _enqueue_all(gateway.url, headers, "durable", n)
        # Kill the gateway mid-way, without warning.
        wait_until(lambda: len(witness.posts) >= n // 5, 120, f"{n // 5} calls run")
        gateway.kill()
        seen_at_kill = len(witness.posts)
        assert seen_at_kill < n, "the work finished before the kill: make it slower"
        gateway.start()
        statuses: dict[str, str] = {}
        with httpx.Client(base_url=gateway.url, headers=headers, timeout=30) as http:

            def all_final() -> bool:
                rows = http.get(
                    "/invocations", params={"function": "durable", "limit": 2000}
                ).json()
                statuses.clear()
                statuses.update({r["id"]: r["status"] for r in rows})
                return all(statuses.get(i) in ("succeeded", "dead") for i in ids)

            with contextlib.suppress(AssertionError):  # the asserts below say what is missing
                wait_until(all_final, 240, f"all {n} calls final", interval=0.5)
        assert set(ids) <= set(statuses), "a call was lost from the records"
        not_final = [i for i in ids if statuses[i] not in ("succeeded", "dead")]
        assert not not_final, f"{len(not_final)} calls not final: {not_final[:5]}"
        executed = Counter(body.decode() for _, body in witness.posts)
        missing = [i for i in ids if statuses[i] == "succeeded" and executed[i] == 0]
        assert not missing, f"{len(missing)} succeeded calls never ran"
        duplicates = sum(c - 1 for c in executed.values() if c > 1)
        print(
            f"\n[crash] {n} async calls, SIGKILL after {seen_at_kill} ran: "
            f"{sum(s == 'succeeded' for s in statuses.values())} succeeded, "
            f"{sum(s == 'dead' for s in statuses.values())} dead, "
            f"{duplicates} duplicate executions (at-least-once)"
        )
    finally:
        gateway.stop()
        witness.close()
        for c in engine.api.containers(
            all=True, filters={"label": f"swarmless.gateway={instance}"}
        ):
            engine.api.remove_container(c["Id"], force=True)
        remove_network(engine, network)
    leftover = engine.api.containers(all=True, filters={"label": f"swarmless.gateway={instance}"})
    assert leftover == []


def test_worker_killed_mid_async_call_is_retried(
    gw: RunningGateway, image: str, engine: docker.DockerClient
) -> None:
    deploy(
        gw, name="longjob", image=image, mode="warm", handler="handler:handle", env={"DELAY": "2"}
    )
    client = sdk(gw)
    inv = client.spawn("longjob", b"x")

    def pool_ready() -> bool:
        pool = gw.dispatcher.pools.get("longjob")
        return pool is not None and any(w.busy for w in pool.workers.values())

    gw.wait_for(pool_ready, 30, "the call running")
    busy = next(w for w in gw.dispatcher.pools["longjob"].workers.values() if w.busy)
    engine.api.kill(busy.container)
    assert inv.result(timeout=60).json()["call"] == inv.id
    assert inv.record.attempt >= 2
