"""examples/stack.yml deployed on the 3-node test Swarm: two gateway replicas on PostgreSQL.

Everything runs inside the cluster: the gateway image (scripts/gateway-image.sh) and a
PostgreSQL image (the voting app's, built from Debian packages) are loaded onto the nodes,
the stack is deployed with ``docker stack deploy``, and the test talks to each replica on
its node's published port. The active replica's container is killed under load.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import docker
import httpx
import pytest

from tests.conftest import SESSION
from tests.gateway_harness import CallLoad, all_ended
from tests.swarm_harness import Cluster, GatewayStack, gateway_stack, wait_for

pytestmark = [pytest.mark.swarm, pytest.mark.slow]

TOKEN = f"stack-token-{SESSION}"


@pytest.fixture(scope="module")
def stack(
    engine: docker.DockerClient, cluster: Cluster, swarm_warm_image: str
) -> Iterator[GatewayStack]:
    with gateway_stack(engine, cluster, f"stk{SESSION}", TOKEN) as s:
        yield s


def test_the_stack_survives_its_active_replica_killed_under_load(
    stack: GatewayStack, swarm_warm_image: str
) -> None:
    roles = stack.roles()
    active = next(n for n, r in roles.items() if r == "active")
    standby = next(n for n, r in roles.items() if r == "standby")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    via = stack.urls[standby]
    http = httpx.Client(headers=headers, timeout=60)
    spec = {
        "name": "slow",
        "image": swarm_warm_image,
        "mode": "warm",
        "handler": "handler:slow",
        "min_containers": 2,
        "timeout": 20,
        "retries": 5,
        "backoff": 0.3,
    }
    r = http.post(f"{via}/system/functions", json=spec)
    assert r.status_code == 201, r.text
    # The first call starts containers on the cluster: give it time.
    for url in (via, stack.urls[active]):
        r = http.post(f"{url}/function/slow", content=b"0", timeout=120)
        assert r.status_code == 200, r.text
    queued = [
        http.post(f"{via}/async-function/slow", content=b"0.05").headers["x-call-id"]
        for _ in range(30)
    ]
    with CallLoad(f"{via}/function/slow", headers, b"0.01") as load:
        wait_for(lambda: load.ok >= 10, 30, "calls served before the kill")
        (victim,) = stack.gateway_containers(active)
        stack.cluster.engine(active).api.kill(victim)
        t_kill = time.monotonic()
        wait_for(lambda: stack.roles().get(standby) == "active", 30, "the standby took over")
        took = time.monotonic() - t_kill
        ok_then = load.ok
        wait_for(lambda: load.ok >= ok_then + 10, 60, "calls served again")
        resumed = time.monotonic() - t_kill
    print(
        f"\n[stack] active replica's container killed: the standby active after {took:.1f} s, "
        f"calls resumed after {resumed:.1f} s; outcomes {dict(load.outcomes)}"
    )
    assert not load.bad, load.bad[:3]
    wait_for(lambda: all_ended(http, via, "slow", queued), 90, "every queued call ended")
    # Swarm restarts the killed task; it comes back as a standby of the new active one.
    wait_for(lambda: stack.roles().get(active) == "standby", 90, "the killed replica back")
    r = http.post(f"{stack.urls[active]}/function/slow", content=b"0")
    assert r.status_code == 200, r.text
    http.close()
