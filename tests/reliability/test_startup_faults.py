"""The store is away when the gateway starts, and the gateway starts anyway.

A real PostgreSQL of this test's own (stopped before the gateway starts, started later)
and a real SQLite file locked by another process. What must hold: ``swarmless up`` keeps
running, ``/healthz`` and what needs the store answer ``503 gateway_unavailable`` saying
why, the store is tried again with a bounded backoff (a log line each try, never a busy
loop), and once it answers the gateway serves by itself. The async runner's start-up (it
gives back the calls a crashed gateway held) outlasts an outage longer than one durable
write waits (``db.DURABLE_RETRY``: 60 s, cut to 10 s in that test, which the store reads at
each write: the same give-up, reached sooner) instead of ending.

Docker objects: instance names start ``hrel-``, and carry ``swarmless.test=helper-rel``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from swarmless.dispatch.async_runner import AsyncRunner
from swarmless.exceptions import SwarmlessError
from swarmless.gateway.app import STORE_RETRY_MAX
from swarmless.gateway.callbacks import CallbackPolicy
from swarmless.records import InvocationRecord, new_call_id, now_ms
from swarmless.store import Store
from swarmless.store import db as store_db
from tests.conftest import BUSYBOX
from tests.gateway_harness import GatewayProcess, free_port
from tests.networks import remove_network
from tests.reliability.own_gateway import LABELS, OwnGateway, remove_own
from tests.reliability.test_store_faults import Cluster
from tests.waiting import wait_until

pytestmark = pytest.mark.fault


@pytest.fixture
def pg() -> Iterator[tuple[Cluster, str]]:
    """A PostgreSQL cluster of this test alone (stopping it touches no other test)."""
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


def health(url: str) -> httpx.Response:
    return httpx.get(f"{url}/healthz", timeout=5)


def test_up_starts_with_postgres_down_answers_503_and_serves_once_it_is_back(
    engine: docker.DockerClient, tmp_path: Path, pg: tuple[Cluster, str]
) -> None:
    cluster, url = pg
    cluster.stop()
    instance = f"hrel-{uuid.uuid4().hex[:8]}"
    network = engine.networks.create(
        f"swarmless-{instance}", driver="bridge", labels={"swarmless.managed": "true", **LABELS}
    )
    gateway = GatewayProcess(
        tmp_path, instance, network.name, free_port(), {"SWARMLESS_STORE_URL": url}
    )
    log = tmp_path / "gateway.log"
    try:
        # It answers at once, 503 (GatewayProcess.start waits for a 200: not here).
        with log.open("ab") as out:
            gateway.proc = subprocess.Popen(
                [sys.executable, "-m", "swarmless", "up", "--log-level", "warning"],
                env=gateway.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(
            lambda: health(gateway.url).status_code,
            60,
            "the gateway process to answer",
            interval=0.1,
            ignore=(httpx.HTTPError,),
        )
        assert gateway.proc.poll() is None, log.read_text()[-2000:]
        r = health(gateway.url)
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["error"] == "gateway_unavailable"
        assert "not ready" in body["message"], body
        assert "cannot open the store at postgresql" in body["message"], body
        assert int(r.headers["retry-after"]) >= 1
        headers = {"Authorization": f"Bearer {gateway.token}"}
        with httpx.Client(base_url=gateway.url, headers=headers, timeout=10) as http:
            for method, path in (
                ("GET", "/system/functions"),
                ("POST", "/async-function/hello"),
                ("POST", "/function/hello"),
                ("GET", "/invocations"),
            ):
                r = http.request(method, path)
                assert r.status_code == 503, (method, path, r.text)
                assert r.json()["error"] == "gateway_unavailable", r.text
                assert r.headers.get("retry-after"), r.headers

            # Tries again, with a growing, bounded pause, a line each: no busy loop.
            def tries() -> list[float]:
                text = log.read_text(errors="replace")
                return [
                    float(p)
                    for p in re.findall(r"store still unavailable.*next try in ([0-9.]+) s", text)
                ]

            # Three tries show the pause growing (0.5 s doubling: 1, 2, 4); a fourth would
            # only make PostgreSQL's return wait 8 s for the next try.
            pauses = wait_until(
                lambda: tries(), 30, "retries of the store", ok=lambda p: len(p) >= 3
            )
            assert pauses == sorted(pauses), pauses
            assert pauses[0] < pauses[-1], pauses
            assert all(0 < p <= STORE_RETRY_MAX for p in pauses), pauses
            down_for = time.monotonic()
            cluster.start()
            # Serves by itself once the store answers: no restart.
            wait_until(
                lambda: health(gateway.url).json().get("role") == "active",
                STORE_RETRY_MAX + 30,
                "the gateway active once PostgreSQL is back",
                interval=0.2,
                ignore=(httpx.HTTPError,),
            )
            ready_after = time.monotonic() - down_for
            assert gateway.proc.poll() is None
            spec = {
                "name": "echo",
                "image": BUSYBOX,
                "mode": "oneshot",
                "command": ["cat"],
            }
            r = http.post("/system/functions", json=spec)
            assert r.status_code == 201, r.text
            r = http.post("/function/echo", content=b"back")
            assert (r.status_code, r.content) == (200, b"back"), r.text
            r = http.post("/async-function/echo", content=b"queued")
            assert r.status_code == 202, r.text
            call = r.headers["x-call-id"]
            wait_until(
                lambda: http.get(f"/invocations/{call}").json()["status"] == "succeeded",
                60,
                "the async call",
            )
        print(
            f"\n[startup faults] PostgreSQL down at start: 503 with a reason meanwhile, "
            f"{len(pauses)}+ tries (pauses {pauses} s), ready {ready_after:.1f} s after "
            "it came back"
        )
    finally:
        gateway.stop()
        remove_own(engine, instance)
        remove_network(engine, network)


@contextlib.contextmanager
def locked(db: Path) -> Iterator[None]:
    """Another process's exclusive lock on the SQLite file (every write of it waits)."""
    holder = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        yield
        holder.execute("COMMIT")
    finally:
        holder.close()


def test_gateway_starts_with_its_sqlite_file_locked_and_serves_once_it_is_free(
    engine: docker.DockerClient, tmp_path: Path
) -> None:
    gw = OwnGateway(tmp_path)
    try:
        with locked(tmp_path / "swarmless.db"):
            gw.start()  # answers at once (not ready), rather than exiting
            r = health(gw.url)
            assert r.status_code == 503, r.text
            assert "locked" in r.json()["message"], r.text
            with gw.http() as http:
                assert http.get("/system/functions").status_code == 503
            assert gw.gateway.fatal is None
        wait_until(
            lambda: health(gw.url).json().get("role") == "active",
            STORE_RETRY_MAX + 30,
            "active once the lock is gone",
            interval=0.1,
        )
        with gw.http() as http:
            assert http.get("/system/functions").json() == []
        assert gw.gateway.replicas is not None
        assert gw.gateway.replicas.active
    finally:
        gw.stop(engine)


class _NoEngine:
    """What the runner asks of its dispatcher before it claims anything: nothing deployed,
    the engine up (the runner's start-up never reaches a container)."""

    engine_down: str | None = None
    closing = False
    functions: dict[str, Any] = {}


#: How long one durable write waits for the database in the outage test (the store's own
#: 60 s, cut: a write gives up the same way after 10 s, the outage outlasts that).
DURABLE_RETRY = 10.0


def test_async_runner_start_up_outlasts_a_store_outage_longer_than_a_durable_write(
    pg: tuple[Cluster, str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call leased by this gateway before it stopped; the store is away when it starts
    again for longer than DURABLE_RETRY: the runner keeps trying, then gives the call back."""
    cluster, url = pg
    monkeypatch.setattr(store_db, "DURABLE_RETRY", DURABLE_RETRY)
    owner = f"hrel-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        store = await Store.open(url, connect_timeout=2)
        try:
            rec = InvocationRecord(
                id=new_call_id(), function="f", mode="warm", kind="async", queued_at=now_ms()
            )
            await store.enqueue(rec, method="POST", path="", query="", headers=[], body=b"x")
            assert [c.id for c in await store.claim(owner, {"f": (1, 600_000)})] == [rec.id]
            cluster.stop()
            runner = AsyncRunner(
                _NoEngine(),  # type: ignore[arg-type]
                store,
                owner=owner,
                callbacks=CallbackPolicy(allow=()),
            )
            task = asyncio.ensure_future(runner.run())
            t0 = time.monotonic()
            while time.monotonic() - t0 < DURABLE_RETRY + 10:
                assert not task.done(), f"the runner ended: {task.exception()!r}"
                await asyncio.sleep(0.5)
            tried = [r for r in caplog.records if "cannot take back" in r.getMessage()]
            assert tried, "no line said the runner is still trying"
            cluster.start()
            # The call it held is given back: another owner can claim it (its lease of 10
            # minutes has not passed: only the runner's take-back frees it).
            deadline = time.monotonic() + 90
            while True:
                assert not task.done(), f"the runner ended: {task.exception()!r}"
                claimed = []
                with contextlib.suppress(SwarmlessError):  # the store may not answer yet
                    claimed = await store.claim("other", {"f": (1, 60_000)})
                if claimed:
                    assert [c.id for c in claimed] == [rec.id]
                    break
                assert time.monotonic() < deadline, "the held call was never given back"
                await asyncio.sleep(0.5)
            assert any("answers again" in r.getMessage() for r in caplog.records)
            await runner.stop(5)
            await asyncio.wait_for(task, 10)
        finally:
            await store.close()

    with caplog.at_level(logging.WARNING, logger="swarmless.async"):
        asyncio.run(main())
