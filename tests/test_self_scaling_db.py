"""The self-scaling database (examples/self-scaling-db) on one engine: real PostgreSQL, real
children through the scoped Docker API.

The primary is a warm ``docker: scoped`` function whose controller starts its own streaming
replicas as child containers; the front end writes to the primary and reads from replicas.
Here: the primary comes up with two streaming replicas, rows written through the front end
are on each replica, a replica container killed from outside is noticed (its slot dropped)
and replaced by a new one that catches up (same row count, replayed up to the primary's
LSN), and every child goes with the gateway.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from tests.conftest import SESSION
from tests.gateway_harness import RunningGateway
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "self-scaling-db"))

import selfscaling as db  # noqa: E402

# The first run builds the image (one apt step from Debian's mirror).
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def image(engine: docker.DockerClient) -> str:
    return db.build_image(engine)


@pytest.fixture(scope="module")
def gw(
    engine: docker.DockerClient,
    labels: dict[str, str],
    image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningGateway]:
    g = RunningGateway(
        tmp_path_factory.mktemp("selfdb"),
        labels,
        network=f"swarmless-test-selfdb-{SESSION}",
    ).start()
    try:
        client = g.client()
        try:
            db.deploy(client, db.specs(image, secrets.token_hex(12), replicas=2, fsync=False))
        finally:
            client.close()
        yield g
    finally:
        g.shutdown()
        # The gateway's stop kills the primary and its children: a child may still be in
        # the engine's "removing" state a moment after.
        try:
            wait_until(lambda: not g.containers(engine), 60, "every container of the gateway gone")
        finally:
            g.stop(engine)


def _front(http: httpx.Client, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    r = http.request(method, f"/function/{db.FRONT}{path}", timeout=60, **kwargs)
    assert r.status_code == 200, f"{method} {path}: {r.status_code} {r.text}"
    answer: dict[str, Any] = r.json()
    return answer


def _replica_of(view: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((r for r in view.get("replicas", []) if r["name"] == name), None)


def test_replicas_stream_and_a_killed_one_is_replaced(
    gw: RunningGateway, engine: docker.DockerClient
) -> None:
    with gw.http() as http:
        view = db.wait_for(
            http,
            lambda v: v if len(db.streaming(v)) == 2 else None,
            240,
            "the primary with two streaming replicas",
        )
        first = {r["name"] for r in view["replicas"]}
        # Children of the primary, on this gateway's network, labelled as its own.
        for name in first:
            c = engine.containers.get(name)
            assert c.labels["swarmless.kind"] == "child"
            assert c.labels["selfdb.role"] == "replica"

        written = [_front(http, "POST", "/write", content=f"row {i}") for i in range(40)]
        last = written[-1]
        assert [w["id"] for w in written] == sorted({w["id"] for w in written})
        for name in first:
            got = _front(http, "GET", f"/read?after={last['lsn']}&replica={name}")
            assert got["in_recovery"] is True, got
            assert (got["count"], got["max_id"]) == (40, last["id"]), got
        # Reads without a name go round the replicas.
        seen = {_front(http, "GET", "/read")["replica"] for _ in range(4)}
        assert seen == first

        victim = sorted(first)[0]
        slot = _replica_of(view, victim)
        assert slot is not None
        engine.containers.get(victim).kill()

        def replaced(v: dict[str, Any]) -> dict[str, Any] | None:
            names = {r["name"] for r in db.streaming(v)}
            fresh = names - first
            return v if len(names) == 2 and victim not in names and fresh else None

        view = db.wait_for(http, replaced, 240, "a new replica streaming in the killed one's place")
        (new,) = {r["name"] for r in db.streaming(view)} - first
        assert any(f"replica {victim}" in e and "lost" in e for e in view["events"]), view
        # The dead replica's slot is dropped (else the primary would keep its WAL forever).
        wait_until(
            lambda: any(f"dropped the slot {slot['slot']}" in e for e in db.status(http)["events"]),
            60,
            "the lost replica's slot dropped",
        )

        more = [_front(http, "POST", "/write", content=f"after {i}") for i in range(10)]
        last = more[-1]
        primary_lsn = db.status(http)["primary"]["lsn"]
        got = _front(http, "GET", f"/read?after={primary_lsn}&replica={new}")
        assert (got["count"], got["max_id"]) == (50, last["id"]), got
        assert got["replica"] == new

    # The killed container is gone (removed by the controller, not left exited).
    wait_until(
        lambda: not engine.api.containers(all=True, filters={"name": victim}),
        60,
        "the killed replica's container removed",
    )
