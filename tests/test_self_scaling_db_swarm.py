"""The self-scaling database (examples/self-scaling-db) on the 3-node test Swarm.

The primary runs as a warm ``docker: scoped`` function (a Swarm service on some node); its
controller reads ``GET /nodes`` through the scoped API and starts its replicas as children
(one-shot services) on the other nodes. Under a bounded write load through the front end,
the node of one replica is killed (its Docker-in-Docker container, as the other node-loss
tests do): the controller sees the node down, starts a replica on a live node, which
catches up (same rows as the primary, replayed to the primary's LSN), and every write
that was acknowledged is on the primary and on the new replica. The node is restarted
after.
"""

from __future__ import annotations

import secrets
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from tests.swarm_harness import Cluster, SwarmGateway
from tests.waiting import wait_until

# The image reaches the nodes through the session's registry first (~2 min on a new one).
pytestmark = [pytest.mark.swarm, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "self-scaling-db"))

import selfscaling as db  # noqa: E402

#: The write load's bounds: at most this many writes, for at most this long.
MAX_WRITES = 3000
MAX_LOAD_S = 240.0


@pytest.fixture(scope="module")
def image(engine: docker.DockerClient, cluster: Cluster) -> str:
    tag = db.build_image(engine)
    cluster.load(tag)
    return tag


@pytest.fixture(scope="module")
def gw(
    cluster: Cluster,
    labels: dict[str, str],
    image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SwarmGateway]:
    cluster.wait_ready(3, 120)
    g = SwarmGateway(cluster, tmp_path_factory.mktemp("selfdb-swarm"), labels).start()
    try:
        client = g.client()
        try:
            db.deploy(client, db.specs(image, secrets.token_hex(12), replicas=2, fsync=False))
        finally:
            client.close()
        yield g
    finally:
        g.stop()
        assert g.services() == [], "services left by the stopped gateway"


class Writes:
    """Writes through the front end from one thread, bounded in count and time; keeps the
    ids the front end acknowledged and every failure."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.acked: list[int] = []
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True, name="selfdb-writes")

    def run(self) -> None:
        deadline = time.monotonic() + MAX_LOAD_S
        with httpx.Client(base_url=self.url, timeout=30) as http:
            for i in range(MAX_WRITES):
                if self.stop.is_set() or time.monotonic() > deadline:
                    return
                try:
                    r = http.post(f"/function/{db.FRONT}/write", content=f"w{i}")
                except httpx.HTTPError as e:
                    self.failed.append(f"{i}: {type(e).__name__}: {e}")
                    continue
                if r.status_code == 200:
                    self.acked.append(int(r.json()["id"]))
                else:
                    self.failed.append(f"{i}: {r.status_code} {r.text[:200]}")

    def __enter__(self) -> Writes:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the write load did not stop"


def _read(http: httpx.Client, query: str) -> dict[str, Any]:
    r = http.get(f"/function/{db.FRONT}/read?{query}", timeout=60)
    assert r.status_code == 200, f"read {query}: {r.status_code} {r.text}"
    answer: dict[str, Any] = r.json()
    return answer


def test_a_replicas_node_dies_under_writes_and_a_new_replica_catches_up(
    gw: SwarmGateway, cluster: Cluster
) -> None:
    manager = cluster.names[0]
    with gw.http() as http:
        view = db.wait_for(
            http,
            lambda v: v if len(db.streaming(v)) == 2 else None,
            300,
            "the primary with two streaming replicas",
        )
        primary_node = view["primary"]["node"]
        nodes = {r["name"]: r["node"] for r in view["replicas"]}
        # GET /nodes gave the controller the three nodes; it kept the replicas off its own.
        assert {n["hostname"] for n in view["nodes"]} >= set(cluster.names), view["nodes"]
        assert primary_node in cluster.names, view["primary"]
        assert primary_node not in nodes.values(), (primary_node, nodes)
        assert len(set(nodes.values())) == 2, nodes
        # The node to kill: a replica's, neither the manager (the Swarm's only one) nor
        # the primary's (always true here: the replicas are on the other two nodes).
        victim, victim_node = next(
            (name, node) for name, node in sorted(nodes.items()) if node != manager
        )

        killed = False
        try:
            with Writes(gw.url) as writes:
                wait_until(lambda: len(writes.acked) >= 50, 120, "50 writes acknowledged")
                cluster.host.api.kill(victim_node)
                killed, killed_at = True, time.monotonic()
                at = len(writes.acked)

                def replaced(v: dict[str, Any]) -> dict[str, Any] | None:
                    live = db.streaming(v)
                    fresh = [r for r in live if r["name"] not in nodes]
                    ok = len(live) == 2 and fresh and all(r["node"] != victim_node for r in live)
                    return v if ok else None

                view = db.wait_for(
                    http, replaced, 240, f"a new replica streaming after {victim_node} died"
                )
                streaming_after = time.monotonic() - killed_at
                (new,) = [r for r in db.streaming(view) if r["name"] not in nodes]
                # Writes went on while the node was away and the new replica caught up.
                wait_until(lambda: len(writes.acked) >= at + 50, 120, "50 more writes")
            assert writes.acked, writes.failed[:5]
        finally:
            if killed:
                cluster.restart_node(victim_node)

        assert any(f"replica {victim} on {victim_node} lost" in e for e in view["events"]), view
        assert new["node"] in set(cluster.names) - {victim_node}
        primary = _read(http, "replica=primary&ids")
        got = _read(http, f"replica={new['name']}&after={primary['replay_lsn']}&ids")
        assert got["in_recovery"] is True
        # No acknowledged write lost: each is on the primary and on the new replica, which
        # replayed up to the primary's position (``after``) and holds exactly its rows.
        # (A write the front end failed, e.g. while its own container was on the dead
        # node, was not acknowledged: it may or may not be there.)
        assert set(writes.acked) <= set(primary["ids"])
        assert got["ids"] == primary["ids"]
        print(
            f"\nkilled {victim_node} (replica {victim}); new replica {new['name']} on "
            f"{new['node']}, streaming {streaming_after:.1f}s after the kill (polled every "
            f"0.5s); {len(writes.acked)} writes acknowledged, "
            f"{len(writes.failed)} failed {writes.failed[:3]}; rows on primary and new replica: "
            f"{got['count']}\n" + "\n".join(view["events"])
        )
