"""Two replicas of one gateway on PostgreSQL: one active, one standby that forwards to it.

Real ``swarmless up`` processes on the local engine (the lease and the forwarding do not
depend on the backend; tests/test_swarm.py runs the same on the Swarm cluster), killed
with SIGKILL under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from swarmless.config import Settings
from swarmless.gateway.replicas import Replicas, peer_url
from swarmless.sdk.gateway import GatewayClient
from swarmless.store.lease import LeaseState
from tests.conftest import SESSION, handler_image
from tests.gateway_harness import CallLoad, GatewayProcess, all_ended, free_port
from tests.networks import remove_network
from tests.waiting import eventually, wait_until

pytestmark = [pytest.mark.slow]

TOKEN = "replicas-admin-token"
HANDLER = """
import os, time

def hello(event, context):
    time.sleep(float(event["body"] or b"0"))
    return {"pid": os.getpid(), "hostname": os.uname().nodename}
"""


@pytest.fixture(scope="module")
def image(build_image: Callable[..., str]) -> str:
    return handler_image(build_image, "replicas", HANDLER)


@pytest.fixture
def replicas(
    engine: docker.DockerClient, postgres_database: str, tmp_path: Path
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    instance = f"test-replicas-{SESSION}-{os.getpid()}"
    network = engine.networks.create(
        f"swarmless-{instance}", driver="bridge", labels={"swarmless.managed": "true"}
    )
    env = {
        "SWARMLESS_STORE_URL": postgres_database,
        "SWARMLESS_TOKEN": TOKEN,
        "SWARMLESS_LEASE_TTL": "3",
    }
    pair = tuple(
        GatewayProcess(tmp_path / name, instance, network.name, free_port(), env)
        for name in ("a", "b")
    )
    for p in pair:
        p.data_dir.mkdir()
    try:
        yield pair[0], pair[1]
    finally:
        for p in pair:
            p.stop()
        # A stopping gateway may still be removing some (409: removal in progress).
        flt = {"label": f"swarmless.gateway={instance}"}
        for c in engine.api.containers(all=True, filters=flt):
            with contextlib.suppress(docker.errors.APIError):
                engine.api.remove_container(c["Id"], force=True)
        wait_for(lambda: not engine.api.containers(all=True, filters=flt), 30, "containers gone")
        remove_network(engine, network)


def health(p: GatewayProcess) -> dict[str, object]:
    r = httpx.get(f"{p.url}/healthz", timeout=5)
    assert r.status_code == 200
    body: dict[str, object] = r.json()
    return body


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``check()`` held (:func:`tests.waiting.wait_until`)."""
    t0 = time.monotonic()
    wait_until(check, timeout, what)
    return time.monotonic() - t0


def test_a_replica_is_reached_at_its_own_address() -> None:
    assert peer_url("127.0.0.1", 8080) == "http://127.0.0.1:8080"
    assert peer_url("0.0.0.0", 8080, "http://gw-1:8080/") == "http://gw-1:8080"
    # Listening everywhere: an address others can reach, not Debian's 127.0.1.1 (when
    # this machine has a route off itself at all).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            pytest.skip("no route off this machine")
    assert not peer_url("0.0.0.0", 8080).startswith("http://127.")


def test_one_active_replica_serves_calls_accepted_by_either(
    replicas: tuple[GatewayProcess, GatewayProcess], image: str
) -> None:
    a, b = replicas
    a.start()
    b.start()
    assert health(a)["role"] == "active"
    assert health(b)["role"] == "standby"
    assert health(b)["active"] == health(a)["active"]
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(headers=headers, timeout=60) as http:
        # Deployed through the standby: it reaches the active replica's memory and store.
        r = http.post(
            f"{b.url}/system/functions",
            json={"name": "hello", "image": image, "mode": "warm", "handler": "handler:hello"},
        )
        assert r.status_code == 201, r.text
        seen = set()
        for p in (a, b, a, b):
            r = http.post(f"{p.url}/function/hello", content=b"0")
            assert r.status_code == 200, r.text
            seen.add(r.json()["hostname"])
        # Warm containers of one pool, whichever replica took the call.
        assert len(seen) <= 2
        # Async through the standby: queued in the shared store, run by the active one.
        r = http.post(f"{b.url}/async-function/hello", content=b"0")
        assert r.status_code == 202, r.text
        call = r.headers["x-call-id"]
        wait_for(
            lambda: http.get(f"{b.url}/invocations/{call}").json()["status"] == "succeeded",
            30,
            "the async call ran",
        )
        # A standby holds no more of a body than the function accepts.
        r = http.post(
            f"{b.url}/system/functions",
            json={"name": "small", "image": image, "mode": "warm", "handler": "handler:hello",
                  "max_body": 100},
        )  # fmt: skip
        assert r.status_code == 201, r.text
        r = http.post(f"{b.url}/function/small", content=b"0" * 1000)
        assert r.status_code == 413
        assert r.json()["error"] == "payload_too_large"
        # Errors travel back unchanged.
        r = http.post(f"{b.url}/function/nope")
        assert r.status_code == 404
        assert r.json()["error"] == "function_not_found"
        r = httpx.get(f"{b.url}/system/functions", timeout=10)
        assert r.status_code == 401
    # swarmless doctor says which replica it reached.
    env = {**os.environ, "SWARMLESS_GATEWAY_URL": b.url, "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "swarmless", "doctor"], env=env, capture_output=True, timeout=60
    )
    row = next(line for line in done.stdout.decode().splitlines() if "gateway" in line)
    assert "standby replica" in row
    assert str(health(a)["active"]) in row


def test_killing_the_active_replica_under_load(
    replicas: tuple[GatewayProcess, GatewayProcess], image: str, engine: docker.DockerClient
) -> None:
    a, b = replicas
    a.start()
    b.start()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    spec = {
        "name": "hello",
        "image": image,
        "mode": "warm",
        "handler": "handler:hello",
        "min_containers": 1,
        "retries": 5,
        "backoff": 0.2,
        "timeout": 10,
    }
    http = httpx.Client(headers=headers, timeout=60)
    assert http.post(f"{b.url}/system/functions", json=spec).status_code == 201
    assert http.post(f"{b.url}/function/hello", content=b"0").status_code == 200
    # Async calls queued before the kill, slow enough that some are still pending.
    queued = [
        http.post(f"{b.url}/async-function/hello", content=b"0.05").headers["x-call-id"]
        for _ in range(40)
    ]
    # Load through the standby (bounded: 4 threads, 25 s at most).
    with CallLoad(f"{b.url}/function/hello", headers, b"0.01", threads=4, seconds=25) as load:
        wait_for(lambda: load.ok >= 20, 10, "calls served through the standby before the kill")
        a.kill()
        t_kill, killed_at = time.monotonic(), time.time()
        # No active replica for about the lease's ttl: the standby still queues async calls
        # (durably, in the store) at once; the next active replica runs them.
        during = [http.post(f"{b.url}/async-function/hello", content=b"0") for _ in range(10)]
        assert all(r.status_code == 202 for r in during), [r.text for r in during]
        queued_during = time.monotonic() - t_kill
        assert queued_during < 2, f"queueing without an active replica took {queued_during:.1f}s"
        queued += [r.headers["x-call-id"] for r in during]
        took = wait_for(lambda: health(b)["role"] == "active", 20, "the standby took over")
        ok_at_takeover = load.ok
        wait_for(lambda: load.ok > ok_at_takeover + 20, 20, "calls served again")
        resumed = time.monotonic() - t_kill
    print(
        f"\n[replicas] active replica killed: standby active after {took:.1f} s, "
        f"calls resumed after {resumed:.1f} s; outcomes {dict(load.outcomes)}; "
        f"10 async calls queued through the standby in {queued_during:.2f} s meanwhile"
    )
    # Calls held by the dead replica may fail (503 gateway_unavailable, saying so); none
    # hangs, none fails in another way.
    assert not load.bad, load.bad[:3]
    # Every async call queued before the kill ends, run by the new active replica.
    wait_for(lambda: all_ended(http, b.url, "hello", queued), 60, "every queued call ended")
    # A client given both replicas' addresses skips the dead one (nothing was sent to it).
    both = GatewayClient(Settings.load(gateway_url=f"{a.url},{b.url}", token=TOKEN))
    assert both.invoke("hello", b"0").status == 200
    both.close()
    # The dead replica's containers were removed: those left are the new active one's.
    instance = a.env["SWARMLESS_INSTANCE"]
    left = engine.api.containers(filters={"label": f"swarmless.gateway={instance}"})
    assert left
    assert all(c["Created"] >= killed_at - 1 for c in left), left
    # The killed replica restarts as a standby and forwards to the new active one.
    a.start()
    assert health(a)["role"] == "standby"
    r = http.post(f"{a.url}/function/hello", content=b"0")
    assert r.status_code == 200, r.text
    # A clean stop hands the lease over at once (no wait for it to expire).
    b.stop()
    handover = wait_for(lambda: health(a)["role"] == "active", 10, "handover on a clean stop")
    assert http.post(f"{a.url}/function/hello", content=b"0").status_code == 200
    print(f"[replicas] clean stop: the standby active after {handover:.1f} s")
    http.close()


class LeaseTable:
    """The store's leases in memory, with the real interface (acquire_lease, release_lease),
    that can hang like a store cut off mid-connection."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.hang = False
        self.calls = 0
        #: What each acquire_lease answered, and to whom.
        self.told: list[tuple[str, LeaseState]] = []

    async def acquire_lease(
        self, name: str, holder: str, url: str, ttl: float, *, take_expired: bool = True
    ) -> LeaseState:
        self.calls += 1
        if self.hang:
            await asyncio.sleep(3600)
        now = time.time() * 1000
        row = self.rows.get(name)
        if row is None or row["holder"] == holder or (take_expired and row["until"] < now):
            contended = row["contended"] if row is not None else 0.0
            row = {"holder": holder, "url": url, "until": now + ttl * 1000}
            self.rows[name] = row | {"contended": contended}
            row = self.rows[name]
        else:
            row["contended"] = now + 3 * ttl * 1000
        state = LeaseState(
            holder=row["holder"],
            url=row["url"],
            until=int(row["until"]),
            contended=row["contended"] > now,
            expired=row["holder"] != holder and row["until"] < now,
        )
        self.told.append((holder, state))
        return state

    async def release_lease(self, name: str, holder: str) -> bool:
        return self.rows.pop(name, None) is not None


async def until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``check()`` held, in the event loop (:func:`tests.waiting.eventually`)."""
    t0 = time.monotonic()
    await eventually(check, timeout, what)
    return time.monotonic() - t0


def lease_replica(store: LeaseTable, me: str, lost: list[str], ttl: float = 1.0) -> Replicas:
    async def lead() -> None:
        return None

    return Replicas(
        store,  # type: ignore[arg-type]
        me,
        holder=me,
        lease="gateway:x",
        ttl=ttl,
        lead=lead,
        lost=lost.append,
    )


def test_a_try_in_flight_when_the_replica_closes_starts_nothing_again() -> None:
    """close() gives the lease up. A try of the lease already waiting on the store then
    (its answer, from before the release, names this replica) must neither hold the lease
    again nor start this replica as the active gateway a second time: a second start
    registered the gateway's gauges twice (DuplicateTimeseries, seen once in a test run)
    and replaced the active gateway that the stop was draining."""

    async def main() -> None:
        store, lost, leads = LeaseTable(), [], []

        async def lead() -> None:
            leads.append(1)

        me = "http://a:1"
        replicas = Replicas(
            store,  # type: ignore[arg-type]
            me,
            holder=me,
            lease="gateway:x",
            ttl=1.0,
            lead=lead,
            lost=lost.append,
        )
        await replicas.start()
        assert replicas.active
        assert leads == [1]
        started = replicas._starting
        real = store.acquire_lease

        async def answered_then_closed(*args: Any, **kwargs: Any) -> LeaseState:
            state = await real(*args, **kwargs)
            await replicas.close()  # the gateway stops while this try waits on the store
            return state

        store.acquire_lease = answered_then_closed  # type: ignore[method-assign]
        await replicas._try()  # what the lease loop was doing
        assert replicas._starting is started, "started as the active gateway again"
        assert not replicas._holding
        assert not replicas.active
        assert leads == [1]
        assert lost == []

    asyncio.run(main())


def test_a_lone_active_replica_keeps_serving_while_its_store_hangs() -> None:
    """No other replica stands by: a store that hangs for several lease lifetimes does not
    end the active one; it renews once the store answers again."""

    async def main() -> None:
        store, lost = LeaseTable(), []
        replicas = lease_replica(store, "http://a:1", lost)
        await replicas.start()
        assert replicas.active
        store.hang = True
        calls = store.calls
        # Five lease lifetimes of tries that hang (each bounded by ttl / 4).
        await until(lambda: store.calls >= calls + 20, 15, "tries while the store hangs")
        assert lost == []
        assert replicas.active
        assert replicas.store_error is not None
        store.hang = False
        await until(lambda: replicas.store_error is None, 5, "the store answers again")
        assert lost == []
        assert replicas.active
        assert store.rows["gateway:x"]["holder"] == "http://a:1"
        await replicas.close()

    asyncio.run(main())


def test_a_lone_holder_steps_down_when_it_finds_its_lease_taken() -> None:
    async def main() -> None:
        store, lost = LeaseTable(), []
        replicas = lease_replica(store, "http://a:1", lost)
        await replicas.start()
        store.hang = True
        calls = store.calls
        await until(lambda: store.calls >= calls + 3, 5, "tries while the store hangs")
        store.rows["gateway:x"].update(holder="http://b:1", url="http://b:1")
        store.hang = False
        await until(lambda: bool(lost), 5, "the holder steps down")
        assert "went to http://b:1" in lost[0]
        assert not replicas.active
        await replicas.close()

    asyncio.run(main())


def test_a_contended_active_replica_steps_down_before_its_lease_expires() -> None:
    """Fencing: with another replica standing by, the holder whose store hangs stops
    before the other may take the lease over."""

    async def main() -> float:
        store, lost = LeaseTable(), []
        replicas = lease_replica(store, "http://a:1", lost)
        await replicas.start()
        assert replicas.active
        # Another replica asks (and is told a holds it): a learns at its next renewal.
        standby = await store.acquire_lease("gateway:x", "http://b:1", "http://b:1", 1.0)
        assert standby.holder == "http://a:1"
        told = store.told
        await until(
            lambda: any(who == "http://a:1" and s.contended for who, s in told),
            5,
            "the holder told of the standby at a renewal",
        )
        store.hang = True
        expires = store.rows["gateway:x"]["until"] / 1000
        await until(lambda: bool(lost), 5, "the holder steps down")
        stepped_down = time.time()
        calls = store.calls
        # It does not try again (the process is going away): a window that must stay empty
        # (2.5 of its retry intervals, ttl / 5), not a wait for something to happen.
        await asyncio.sleep(0.5)
        assert store.calls == calls
        assert "another replica stands by" in lost[0]
        await replicas.close()
        return expires - stepped_down

    margin = asyncio.run(main())
    assert margin > 0, f"stepped down {-margin:.2f} s after the lease expired"


def holder_server(
    before: Callable[[], None] | None = None,
) -> tuple[http.server.ThreadingHTTPServer, str]:
    """An active replica's ``/healthz`` (``before()`` runs before each answer, in the
    server's thread): the server, serving, and its URL."""

    class Holder(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if before is not None:
                before()
            body = json.dumps({"status": "ok", "role": "active"}).encode()
            with contextlib.suppress(OSError):  # a late answer's prober may be gone
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Holder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def expired_lease_of(store: LeaseTable, holder_url: str) -> None:
    """The lease held by ``holder_url``, expired 10 s ago."""
    store.rows["gateway:x"] = {
        "holder": holder_url,
        "url": holder_url,
        "until": time.time() * 1000 - 10_000,
        "contended": 0.0,
    }


def test_a_standby_takes_an_expired_lease_only_from_a_holder_that_does_not_answer() -> None:
    """A lease expired because its holder's store hangs, the holder still up: a standby
    asks the holder's /healthz first and leaves the lease alone while it answers."""

    server, holder_url = holder_server()

    async def main() -> None:
        store, lost = LeaseTable(), []
        expired_lease_of(store, holder_url)
        replicas = lease_replica(store, "http://b:1", lost)
        await replicas.start()
        assert not replicas.active
        assert replicas.leader_url == holder_url
        await until(lambda: store.calls >= 6, 10, "a few more tries")
        assert not replicas.active
        assert store.rows["gateway:x"]["holder"] == holder_url
        server.shutdown()
        server.server_close()
        took = await until(lambda: replicas.active, 10, "the standby takes over")
        print(f"\n[replicas] holder gone: the standby active after {took:.2f} s")
        assert lost == []
        await replicas.close()

    asyncio.run(main())


def test_a_holder_that_answers_late_once_keeps_its_lease_and_one_that_hangs_loses_it() -> None:
    """A holder whose /healthz answers after the probe's timeout is busy, not gone: one
    late answer (the last CI run's failure, on a loaded machine) leaves its expired lease
    alone. A holder that hangs (it accepts, never answers) loses it after three probes in
    a row that timed out, over at least one ``ttl``."""
    ttl = 1.0
    release = threading.Event()
    mode = {"late": 1, "hang": False}
    probes: list[float] = []

    def probed() -> None:
        probes.append(time.monotonic())
        if mode["late"] > 0 or mode["hang"]:
            mode["late"] -= 1
            release.wait(30)  # answers only once the test lets it

    server, holder_url = holder_server(probed)

    async def main() -> None:
        store, lost = LeaseTable(), []
        expired_lease_of(store, holder_url)
        led: list[float] = []

        async def lead() -> None:
            led.append(time.monotonic())

        replicas = Replicas(
            store,  # type: ignore[arg-type]
            "http://b:1",
            holder="http://b:1",
            lease="gateway:x",
            ttl=ttl,
            lead=lead,
            lost=lost.append,
        )
        try:
            # The first probe is held past its timeout: the standby tries again (a second
            # probe, answered at once) instead of taking the lease.
            await replicas.start()
            await until(lambda: len(probes) >= 2, 10, "a second probe after a late one")
            release.set()
            await until(lambda: len(probes) >= 4, 10, "more probes, answered at once")
            assert led == []
            assert not replicas.active
            assert store.rows["gateway:x"]["holder"] == holder_url
            # Now it hangs: every probe held. Taken over, but only after three timeouts.
            release.clear()
            mode["hang"] = True
            hung_at, before = time.monotonic(), len(probes)
            await until(lambda: replicas.active, 20, "the standby takes over a hung holder")
            assert len(probes) - before >= 3, "taken after fewer than three probes"
            assert led[0] - hung_at >= ttl, "taken before the holder was silent a ttl"
            assert store.rows["gateway:x"]["holder"] == "http://b:1"
            print(f"\n[replicas] hung holder: taken over after {led[0] - hung_at:.2f} s")
            assert lost == []
        finally:
            release.set()
            await replicas.close()
            server.shutdown()
            server.server_close()

    asyncio.run(main())
