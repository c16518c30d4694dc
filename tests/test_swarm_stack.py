"""examples/stack.yml deployed on the 3-node test Swarm: two gateway replicas on PostgreSQL.

Everything runs inside the cluster: the gateway image (scripts/gateway-image.sh) and a
PostgreSQL image (the voting app's, built from Debian packages) are loaded onto the nodes,
the stack is deployed with ``docker stack deploy``, and the test talks to each replica on
its node's published port. The active replica's container is killed under load.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import docker
import httpx
import pytest

from swarmless.build import build_function
from tests.conftest import PYTHON, ROOT, SESSION
from tests.swarm_harness import Cluster, wait_for

pytestmark = [pytest.mark.swarm, pytest.mark.slow]

TOKEN = f"stack-token-{SESSION}"
STACK = f"stk{SESSION}"
HANDLER = """
import os, time

def hello(event, context):
    time.sleep(float(event["body"] or b"0"))
    return {"node": os.environ.get("SWARMLESS_NODE", "?")}
"""


@dataclass
class Stack:
    cluster: Cluster
    instance: str
    #: Node name -> the URL of the gateway replica published there.
    urls: dict[str, str]
    function_image: str

    def health(self) -> dict[str, dict[str, object]]:
        """The /healthz of each replica that answers, by node."""
        out = {}
        for node, url in self.urls.items():
            with contextlib.suppress(httpx.HTTPError, ValueError):
                r = httpx.get(f"{url}/healthz", timeout=2)
                if r.status_code == 200:
                    out[node] = r.json()
        return out

    def roles(self) -> dict[str, str]:
        return {node: str(h.get("role")) for node, h in self.health().items()}

    def gateway_containers(self, node: str) -> list[str]:
        flt = {"label": f"com.docker.swarm.service.name={STACK}_gateway"}
        return [c["Id"] for c in self.cluster.engine(node).api.containers(filters=flt)]


def _docker(cluster: Cluster, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["docker", "-H", cluster.manager_url, *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def stack(
    engine: docker.DockerClient, cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    gateway_image = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gateway-image.sh"), f"swarmless-test/gateway:{SESSION}"],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout.strip()
    sys.path.insert(0, str(ROOT / "examples" / "voting-app"))
    import votingapp

    postgres_image = votingapp.build_images(engine).postgres
    folder = tmp_path_factory.mktemp("stack-fn")
    (folder / "handler.py").write_text(HANDLER)
    function_image = f"swarmless-test/stack-fn:{SESSION}"
    build_function(
        folder,
        tag=function_image,
        mode="warm",
        client=engine,
        base_image=PYTHON,
        labels={"swarmless.test": SESSION},
    )
    cluster.load(gateway_image, postgres_image, function_image)
    manager = cluster.manager
    db_node = cluster.names[2]
    node = manager.nodes.get(db_node)
    spec = node.attrs["Spec"]
    spec["Labels"] = {**spec.get("Labels", {}), "swarmless.postgres": "true"}
    node.update(spec)
    instance = f"stack-{SESSION}"
    env = {
        "SWARMLESS_TOKEN": TOKEN,
        "SWARMLESS_PG_PASSWORD": f"pw-{SESSION}",
        "SWARMLESS_GATEWAY_IMAGE": gateway_image,
        "SWARMLESS_POSTGRES_IMAGE": postgres_image,
        # The replicas run on the workers (one per node) and drive the manager over TCP.
        "SWARMLESS_MANAGER": cluster.manager_url,
        "SWARMLESS_GATEWAY_NODES": "node.role == worker",
        "SWARMLESS_NETWORK": f"swarmless-stack-{SESSION}",
        "SWARMLESS_INSTANCE": instance,
        "SWARMLESS_LEASE_TTL": "3",
    }
    stack_file = ROOT / "examples" / "stack.yml"
    try:
        _docker(
            cluster,
            "stack",
            "deploy",
            "--resolve-image",
            "never",
            "-c",
            str(stack_file),
            STACK,
            env=env,
        )
        workers = [n for n in cluster.names if n != cluster.names[0]]
        s = Stack(
            cluster, instance, {n: f"http://{cluster.ip(n)}:8080" for n in workers}, function_image
        )
        wait_for(
            lambda: sorted(s.roles().values()) == ["active", "standby"],
            180,
            f"one active and one standby gateway replica (saw {s.roles()})",
        )
        yield s
    finally:
        _teardown(cluster, instance, env["SWARMLESS_NETWORK"], db_node)


def _teardown(cluster: Cluster, instance: str, network: str, db_node: str) -> None:
    api = cluster.manager.api
    with contextlib.suppress(AssertionError):
        _docker(cluster, "stack", "rm", STACK)
    # The gateways remove their function services on a clean stop; a killed one cannot.
    for s in api.services(filters={"label": f"swarmless.gateway={instance}"}):
        with contextlib.suppress(docker.errors.DockerException):
            api.remove_service(s["ID"])
    with contextlib.suppress(AssertionError):
        wait_for(
            lambda: (
                not any(
                    cluster.engine(n).api.containers(
                        all=True, filters={"label": f"com.docker.stack.namespace={STACK}"}
                    )
                    for n in cluster.names
                )
            ),
            60,
            "the stack's containers gone",
        )
    for n in cluster.names:
        node_api = cluster.engine(n).api
        for v in (
            node_api.volumes(filters={"label": f"com.docker.stack.namespace={STACK}"}) or {}
        ).get("Volumes") or []:
            with contextlib.suppress(docker.errors.DockerException):
                node_api.remove_volume(v["Name"], force=True)
    with contextlib.suppress(docker.errors.DockerException):
        api.remove_network(network)
    node = cluster.manager.nodes.get(db_node)
    spec = node.attrs["Spec"]
    spec.get("Labels", {}).pop("swarmless.postgres", None)
    with contextlib.suppress(docker.errors.DockerException):
        node.update(spec)


def test_the_stack_survives_its_active_replica_killed_under_load(stack: Stack) -> None:
    roles = stack.roles()
    active = next(n for n, r in roles.items() if r == "active")
    standby = next(n for n, r in roles.items() if r == "standby")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    via = stack.urls[standby]
    http = httpx.Client(headers=headers, timeout=60)
    spec = {
        "name": "hello",
        "image": stack.function_image,
        "mode": "warm",
        "handler": "handler:hello",
        "min_containers": 2,
        "timeout": 20,
        "retries": 5,
        "backoff": 0.3,
    }
    r = http.post(f"{via}/system/functions", json=spec)
    assert r.status_code == 201, r.text
    # The first call starts containers on the cluster: give it time.
    for url in (via, stack.urls[active]):
        r = http.post(f"{url}/function/hello", content=b"0", timeout=120)
        assert r.status_code == 200, r.text
    queued = [
        http.post(f"{via}/async-function/hello", content=b"0.05").headers["x-call-id"]
        for _ in range(30)
    ]
    outcomes: Counter[str] = Counter()
    bad: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def load() -> None:
        with httpx.Client(headers=headers, timeout=60) as c:
            t_end = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < t_end:
                try:
                    r = c.post(f"{via}/function/hello", content=b"0.01")
                except httpx.HTTPError as e:
                    with lock:
                        bad.append(f"transport error from the standby: {e!r}")
                    continue
                with lock:
                    if r.status_code == 200:
                        outcomes["ok"] += 1
                    elif r.status_code == 503 and r.json()["error"] == "gateway_unavailable":
                        outcomes["gateway_unavailable"] += 1
                    else:
                        outcomes[f"{r.status_code} {r.json().get('error')}"] += 1
                        bad.append(r.text)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: outcomes["ok"] >= 10, 30, "calls served before the kill")
        (victim,) = stack.gateway_containers(active)
        stack.cluster.engine(active).api.kill(victim)
        t_kill = time.monotonic()
        wait_for(lambda: stack.roles().get(standby) == "active", 30, "the standby took over")
        took = time.monotonic() - t_kill
        ok_then = outcomes["ok"]
        wait_for(lambda: outcomes["ok"] >= ok_then + 10, 60, "calls served again")
        resumed = time.monotonic() - t_kill
    finally:
        stop.set()
        for t in threads:
            t.join(90)
    print(
        f"\n[stack] active replica's container killed: the standby active after {took:.1f} s, "
        f"calls resumed after {resumed:.1f} s; outcomes {dict(outcomes)}"
    )
    assert not bad, bad[:3]

    def final() -> bool:
        rows = http.get(f"{via}/invocations", params={"function": "hello", "limit": 5000})
        status = {r["id"]: r["status"] for r in rows.json()}
        return all(status.get(i) in ("succeeded", "dead") for i in queued)

    wait_for(final, 90, "every queued async call finished")
    # Swarm restarts the killed task; it comes back as a standby of the new active one.
    wait_for(lambda: stack.roles().get(active) == "standby", 90, "the killed replica back")
    r = http.post(f"{stack.urls[active]}/function/hello", content=b"0")
    assert r.status_code == 200, r.text
    http.close()
