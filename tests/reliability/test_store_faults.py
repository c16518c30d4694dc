"""The store goes away under load, and the gateway stays: a real SQLite file locked by the
test, and a real PostgreSQL (a throwaway cluster of this test's own) stopped and started.

What must hold meanwhile: the gateway never exits (it stays the active replica), sync
calls keep running, what needs the store answers a clear ``503 gateway_unavailable``,
the write-behind buffer is bounded (dropped records counted), and once the database is
back the gateway recovers by itself with no accepted async call lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import sqlite3
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from swarmless.dispatch.metrics import Metrics
from swarmless.exceptions import GatewayUnavailable
from swarmless.records import InvocationRecord, new_call_id, now_ms
from swarmless.store import Store
from tests.conftest import handler_image
from tests.gateway_harness import TOKEN, CallLoad, GatewayProcess, RunningGateway, free_port
from tests.networks import remove_network
from tests.postgres_harness import ROOT
from tests.waiting import eventually, wait_until

pytestmark = pytest.mark.fault

HANDLER = """
import time

def hello(event, context):
    time.sleep(0.005)
    return {"ok": True}

def slow(event, context):
    time.sleep(3)
    return {"size": len(event["body"])}
"""
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def arec(function: str = "f") -> InvocationRecord:
    return InvocationRecord(
        id=new_call_id(), function=function, mode="warm", kind="async", queued_at=now_ms()
    )


@contextlib.contextmanager
def locked(db: Path) -> Iterator[sqlite3.Connection]:
    """Another process's exclusive lock on the SQLite store (every write of it waits)."""
    holder = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        yield holder
        holder.execute("COMMIT")
    finally:
        holder.close()


# -- the store alone --------------------------------------------------------------------------


def test_a_full_buffer_drops_records_counts_them_and_refuses_async_calls(tmp_path: Path) -> None:
    db = tmp_path / "swarmless.db"

    async def main() -> None:
        store = await Store.open(
            f"sqlite:///{db}", flush_interval=0.01, busy_timeout=0.05, max_buffered=50
        )
        metrics = Metrics()
        metrics.watch_store(store.stats)
        kept = []
        with locked(db):
            for i in range(80):
                r = InvocationRecord(id=new_call_id(), function="f", mode="warm", queued_at=i)
                store.record(r)
                kept.append(r)
            # 50 buffered (still readable), 30 dropped and counted: the calls ran.
            assert store.stats().lost_records == 30
            assert await store.get_invocation(kept[49].id) == kept[49]
            assert await store.get_invocation(kept[50].id) is None
            await eventually(lambda: not store.available, 5, "the store sees the lock")
            # A transaction that only reads (SQLite reads under another's write lock)
            # does not count as the database answering again.
            assert await store.claim("me", {"f": (1, 1000)}) == []
            assert not store.available
            # An async call cannot be written: refused at once, with a reason.
            t0 = time.monotonic()
            with pytest.raises(GatewayUnavailable, match="store") as refused:
                await store.enqueue(arec(), method="POST", path="", query="", headers=[], body=b"x")
            assert time.monotonic() - t0 < 1.0
            assert refused.value.status_code == 503
            assert refused.value.retry_after > 0
            text = metrics.render().decode()
            assert 'swarmless_store_lost_total{kind="records"} 30.0' in text
            assert "swarmless_store_available 0.0" in text
        # The lock is gone: the buffer drains by itself, async calls are taken again.
        await eventually(lambda: store.stats().buffered == 0, 10, "the buffer written")
        await eventually(lambda: store.available, 5, "the store marked up")
        _, created = await store.enqueue(
            arec(), method="POST", path="", query="", headers=[], body=b"x"
        )
        assert created
        assert "swarmless_store_available 1.0" in metrics.render().decode()
        await store.close()
        with sqlite3.connect(db) as conn:
            n = conn.execute("SELECT count(*) FROM invocations WHERE kind = 'sync'").fetchone()[0]
        assert n == 50

    asyncio.run(main())


def test_writes_of_an_outcome_wait_out_a_short_outage(tmp_path: Path) -> None:
    """finish() is retried (bounded) while the database is locked: the outcome is not lost."""
    db = tmp_path / "swarmless.db"

    async def main() -> None:
        async with await Store.open(f"sqlite:///{db}", busy_timeout=0.05) as store:
            rec = arec()
            await store.enqueue(rec, method="POST", path="", query="", headers=[], body=b"x")
            assert await store.claim("me", {"f": (1, 60_000)})
            rec.status = "succeeded"
            with locked(db):
                finishing = asyncio.ensure_future(store.finish(rec))
                await eventually(lambda: not store.available, 5, "a failed try")
                assert not finishing.done()
            await asyncio.wait_for(finishing, 30)
            assert (await store.get_invocation(rec.id)).status == "succeeded"  # type: ignore[union-attr]

    asyncio.run(main())


# -- a gateway under load -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def image(build_image: Callable[..., str]) -> str:
    return handler_image(build_image, "store-faults", HANDLER)


class AsyncLoad:
    """Async calls submitted from a thread (bounded in time): every answer kept."""

    def __init__(self, url: str, seconds: float = 90) -> None:
        self.url, self.seconds = url, seconds
        self.accepted: list[str] = []
        self.outcomes: Counter[str] = Counter()
        self.bad: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> AsyncLoad:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(self.seconds + 30)

    def _run(self) -> None:
        end = time.monotonic() + self.seconds
        with httpx.Client(headers=HEADERS, timeout=60) as c:
            while not self._stop.is_set() and time.monotonic() < end:
                try:
                    r = c.post(f"{self.url}/async-function/hello", content=b"x")
                except httpx.HTTPError as e:
                    self.bad.append(f"transport error: {e!r}")
                    continue
                if r.status_code == 202:
                    self.accepted.append(r.headers["x-call-id"])
                    self.outcomes["accepted"] += 1
                    self._stop.wait(0.02)  # at most ~50 a second
                elif r.status_code == 503 and r.json()["error"] == "gateway_unavailable":
                    self.outcomes["503"] += 1
                    if not r.headers.get("retry-after"):
                        self.bad.append(f"a 503 without Retry-After: {r.text}")
                    self._stop.wait(0.05)  # a client backing off
                else:
                    self.outcomes[str(r.status_code)] += 1
                    self.bad.append(r.text)


def lost_records(http: httpx.Client) -> int:
    text = http.get("/metrics").text
    found = re.search(r'swarmless_store_lost_total\{kind="records"\} ([0-9.]+)', text)
    assert found, text[:500]
    return int(float(found.group(1)))


def outage_under_load(
    gw: RunningGateway, image: str, outage: Callable[[], float], what: str
) -> None:
    """Sync and async load through an outage that ``outage()`` makes (returning when the
    database is back, with the seconds it was away); then everything is accounted for."""
    with gw.http() as http:
        spec = {
            "name": "hello",
            "image": image,
            "mode": "warm",
            "handler": "handler:hello",
            "min_containers": 1,
        }
        assert http.post("/system/functions", json=spec).status_code == 201
        assert http.post("/function/hello").status_code == 200
        url = f"{gw.url}/function/hello"
        with CallLoad(url, HEADERS, b"", threads=2, seconds=90) as load, AsyncLoad(gw.url) as q:
            wait_until(lambda: q.outcomes["accepted"] >= 20, 30, "async calls before")
            ok_before, accepted_before = load.ok, q.outcomes["accepted"]
            away = outage()
            back = time.monotonic()
            ok_during = load.ok - ok_before
            refused = q.outcomes["503"]
            # Recovery: async calls are accepted again, by themselves.
            wait_until(
                lambda: q.outcomes["accepted"] > accepted_before + 5 and q.bad == [],
                30,
                "async calls accepted again",
            )
            recovered = time.monotonic() - back
            assert gw.gateway.replicas is not None
            assert gw.gateway.replicas.active, "the gateway stepped down"
            assert gw.gateway.fatal is None
        assert not load.bad, load.bad[:3]
        assert not q.bad, q.bad[:3]
        assert refused > 0, "no async call was refused while the database was away"
        assert ok_during > 0, "no sync call ran while the database was away"

        # Nothing accepted is lost: every call queued succeeds (the queue drains).
        def ended() -> bool:
            done = http.get("/invocations", params=succeeded).json()
            return set(q.accepted) <= {r["id"] for r in done}

        succeeded = {"function": "hello", "status": "succeeded", "limit": 10_000}
        wait_until(ended, 90, "every accepted async call succeeded")
        lost = lost_records(http)
        records = http.get("/invocations", params=succeeded).json()
        assert len(records) < 10_000, "too many calls for one page: lower the load"
        recorded = sum(1 for r in records if r["kind"] == "sync")
        assert http.get("/healthz").json()["role"] == "active"
        wait_until(lambda: http.get("/healthz").json()["status"] == "ok", 30, "/healthz ok again")
    print(
        f"\n[store faults] {what}: away {away:.1f} s; sync calls {load.ok} ok "
        f"({ok_during} during the outage), {dict(load.outcomes)}; async: "
        f"{len(q.accepted)} accepted, {refused} refused with 503, all {len(q.accepted)} ended; "
        f"recovered {recovered:.2f} s after the database came back; sync records kept "
        f"{recorded} (lost {lost})"
    )
    assert recorded + lost >= load.ok


def test_sqlite_locked_under_load(
    engine: docker.DockerClient, labels: dict[str, str], tmp_path: Path, image: str
) -> None:
    """Another process holds the SQLite file's write lock for several lease lifetimes."""
    gw = RunningGateway(tmp_path, labels, lease_ttl=2).start()
    db = tmp_path / "swarmless.db"

    def outage() -> float:
        t0 = time.monotonic()
        with locked(db):
            # Held well past SQLite's busy timeout (5 s) and the lease's ttl (2 s).
            wait_until(lambda: time.monotonic() - t0 > 9, 15, "the outage's length")
        return time.monotonic() - t0

    try:
        outage_under_load(gw, image, outage, "SQLite locked by another process")
    finally:
        gw.stop(engine)


# -- PostgreSQL ------------------------------------------------------------------------------


class Cluster:
    """A PostgreSQL cluster of this test alone (scripts/postgres.sh with its own port and
    directory), so that stopping it touches no other test's database."""

    def __init__(self) -> None:
        self.dir = Path(f"/var/tmp/swarmless-pg-faults-{uuid.uuid4().hex[:8]}")
        self.env = {
            **os.environ,
            "SWARMLESS_PG_PORT": str(free_port()),
            "SWARMLESS_PG_DIR": str(self.dir),
        }

    def _script(self, *args: str) -> str:
        done = subprocess.run(
            ["bash", str(ROOT / "scripts" / "postgres.sh"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"scripts/postgres.sh {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout.strip()

    def start(self) -> str:
        return self._script().splitlines()[-1]

    def stop(self) -> None:
        self._script("stop")

    def remove(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def pg_cluster() -> Iterator[tuple[Cluster, str]]:
    c = Cluster()
    try:
        url = c.start()
    except RuntimeError as e:
        c.remove()
        pytest.skip(str(e))
    try:
        yield c, url
    finally:
        c.remove()


def test_postgres_stopped_and_started_under_load(
    engine: docker.DockerClient,
    labels: dict[str, str],
    tmp_path: Path,
    image: str,
    pg_cluster: tuple[Cluster, str],
) -> None:
    pg, url = pg_cluster
    gw = RunningGateway(tmp_path, labels, store_url=url, lease_ttl=2).start()

    def health() -> dict[str, Any]:
        return dict(httpx.get(f"{gw.url}/healthz", timeout=10).json())

    def outage() -> float:
        t0 = time.monotonic()
        pg.stop()
        # Alive (a replica keeps its lease on it) but saying its store is away.
        wait_until(lambda: health()["status"] == "degraded", 10, "/healthz saying degraded")
        assert "unavailable" in health()["store"]
        wait_until(lambda: time.monotonic() - t0 > 10, 15, "the outage's length")
        pg.start()
        return time.monotonic() - t0

    try:
        outage_under_load(gw, image, outage, "PostgreSQL stopped and started")
    finally:
        gw.stop(engine)


# -- large calls reclaimed at start-up ---------------------------------------------------------


def test_large_async_bodies_reclaimed_at_start_up_do_not_crash_loop(
    engine: docker.DockerClient, image: str, tmp_path: Path
) -> None:
    """Two 64 MiB async calls are running when the gateway is killed: the restarted
    gateway takes them back (a bounded amount of bodies per claim), stays up, and they end."""
    instance = f"test-big-{uuid.uuid4().hex[:8]}"
    network = engine.networks.create(
        f"swarmless-{instance}", driver="bridge", labels={"swarmless.managed": "true"}
    )
    gateway = GatewayProcess(
        tmp_path, instance, network.name, free_port(), {"SWARMLESS_LEASE_TTL": "2"}
    )
    size = 64 << 20
    try:
        gateway.start()
        headers = {"Authorization": f"Bearer {gateway.token}"}
        with httpx.Client(base_url=gateway.url, headers=headers, timeout=120) as http:
            spec = {
                "name": "big",
                "image": image,
                "mode": "warm",
                "handler": "handler:slow",
                "max_body": 128 << 20,
                "timeout": 60,
                "max_containers": 2,
            }
            assert http.post("/system/functions", json=spec).status_code == 201
            ids = []
            for i in range(2):
                r = http.post("/async-function/big", content=bytes([65 + i]) * size)
                assert r.status_code == 202, r.text
                ids.append(r.headers["x-call-id"])

            def running() -> bool:
                return all(http.get(f"/invocations/{i}").json()["status"] == "running" for i in ids)

            wait_until(running, 60, "both large calls running")
        gateway.kill()
        t0 = time.monotonic()
        gateway.start()
        up = time.monotonic() - t0
        with httpx.Client(base_url=gateway.url, headers=headers, timeout=120) as http:

            def ended() -> bool:
                assert gateway.proc is not None
                assert gateway.proc.poll() is None, "the gateway exited"
                return all(
                    http.get(f"/invocations/{i}").json()["status"] == "succeeded" for i in ids
                )

            wait_until(ended, 120, "both large calls succeeded after the restart")
            took = time.monotonic() - t0
            for i in ids:
                assert http.get(f"/invocations/{i}/result").json() == {"size": size}
            assert http.get("/healthz").json()["role"] == "active"
        print(
            f"\n[store faults] 2 x 64 MiB async calls reclaimed at start-up: healthy after "
            f"{up:.1f} s, both succeeded {took:.1f} s after the restart"
        )
    finally:
        gateway.stop()
        for c in engine.api.containers(
            all=True, filters={"label": f"swarmless.gateway={instance}"}
        ):
            with contextlib.suppress(docker.errors.DockerException):
                engine.api.remove_container(c["Id"], force=True)
        remove_network(engine, network)
