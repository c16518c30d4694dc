"""Functions on a real 3-node Docker Swarm (Docker-in-Docker nodes made by the fixture).

The gateway runs in the test process on the host and talks to the Swarm manager
(swarmless-node-1) over TCP; every function container runs on a node, as a Swarm task.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import docker.errors
import pytest

from tests.conftest import BUSYBOX, SESSION
from tests.swarm_harness import Cluster, SwarmGateway, wait_for

pytestmark = [pytest.mark.swarm, pytest.mark.slow]


@pytest.fixture(scope="module")
def gw(
    cluster: Cluster, labels: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SwarmGateway]:
    g = SwarmGateway(cluster, tmp_path_factory.mktemp("swarm-gw"), labels).start()
    yield g
    g.stop()
    assert g.services() == []


def _nodes_of(gw: SwarmGateway, name: str) -> list[str]:
    """The node of each running container of function ``name``."""
    placement = gw.backend.placement()
    services = gw.services(**{"swarmless.function": name})
    return [placement[s["ID"]] for s in services if s["ID"] in placement]


def test_warm_replicas_spread_and_serve_from_other_nodes(
    gw: SwarmGateway, swarm_warm_image: str
) -> None:
    gw.deploy(name="where", image=swarm_warm_image, mode="warm", handler="handler:slow")
    t0 = time.monotonic()
    gw.scale("where", 3)
    wait_for(lambda: gw.ready("where") == 3, 60, "3 ready workers")
    scale_s = time.monotonic() - t0
    nodes = _nodes_of(gw, "where")
    assert len(nodes) == 3
    assert len(set(nodes)) == 3, f"replicas not spread over the nodes: {nodes}"

    # Three callers at once, each call 0.3 s long: a free worker takes the next call (the
    # most recently freed first), so only overlapping calls show the spread.
    def call(_: int) -> str:
        with gw.http(token=None) as http:
            return str(http.post("/function/where", content=b"0.3").json()["node"])

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        served = Counter(pool.map(call, range(15)))
    # The gateway's engine is the manager (node 1): calls are served on the other nodes too.
    assert set(served) - {"swarmless-node-1"}, served
    assert len(served) >= 2, served
    print(f"\nscale 0->3: {scale_s:.2f}s; calls served by {dict(served)}")


def test_oneshot_runs_as_a_swarm_task(gw: SwarmGateway, swarm_warm_image: str) -> None:
    gw.deploy(name="upper", image=BUSYBOX, mode="oneshot", command=["tr", "a-z", "A-Z"])
    with gw.http(token=None) as http:
        t0 = time.monotonic()
        r = http.post("/function/upper", content=b"hello swarm")
        took = time.monotonic() - t0
        assert r.status_code == 200, r.text
        assert r.content == b"HELLO SWARM"
        call = r.headers["x-call-id"]
    with gw.http() as http:
        rec = http.get(f"/invocations/{call}").json()
    assert rec["status"] == "succeeded"
    assert rec["container"]  # the service that ran it
    # Nothing of the call is left: no service, no stdin config.
    wait_for(lambda: not gw.services(**{"swarmless.call": call}), 10, "the call's service gone")
    configs = gw.cluster.manager.api.configs(filters={"label": f"swarmless.call={call}"})
    assert configs == []
    print(f"\noneshot call on the swarm: {took:.2f}s")

    gw.deploy(name="args", image=BUSYBOX, mode="oneshot", command=["sh", "-c"])
    with gw.http(token=None) as http:
        r = http.post(
            "/function/args",
            headers={"X-Swarmless-Args": '["echo on $SWARMLESS_NODE; echo oops >&2; exit 3"]'},
        )
    assert r.status_code == 502
    assert "status 3" in r.json()["message"]
    assert "oops" in r.json()["message"]


def test_oneshot_timeout_removes_the_task(gw: SwarmGateway, swarm_warm_image: str) -> None:
    gw.deploy(name="sleepy", image=BUSYBOX, mode="oneshot", command=["sleep", "60"], timeout=2)
    with gw.http(token=None) as http:
        t0 = time.monotonic()
        r = http.post("/function/sleepy")
        took = time.monotonic() - t0
    assert r.status_code == 504, r.text
    assert took < 6
    wait_for(lambda: not gw.services(**{"swarmless.function": "sleepy"}), 10, "the service removed")


def test_placement_limits_and_secrets(gw: SwarmGateway, swarm_warm_image: str) -> None:
    name = f"swarmless-test-{SESSION}"
    with gw.http() as http:
        assert http.put(f"/system/secrets/{name}", content=b"s3cret value").status_code == 204
    gw.deploy(
        name="pinned",
        image=BUSYBOX,
        mode="oneshot",
        command=["sh", "-c", f"echo $SWARMLESS_NODE; cat /run/secrets/{name}"],
        placement=["node.hostname == swarmless-node-2"],
        memory="64m",
        cpus=0.5,
        secrets=[name],
    )
    with gw.http(token=None) as http:
        r = http.post("/function/pinned")
    assert r.status_code == 200, r.text
    assert r.text == "swarmless-node-2\ns3cret value"
    # Swarm secrets cannot change: a new value is a new Swarm secret, the next call sees it.
    with gw.http() as http:
        assert http.put(f"/system/secrets/{name}", content=b"new value").status_code == 204
        r = http.post("/function/pinned")
    assert r.text == "swarmless-node-2\nnew value"
    # The warm path gets the same spec: look at the service Swarm was given.
    gw.deploy(
        name="limited",
        image=swarm_warm_image,
        mode="warm",
        handler="handler:where",
        placement=["node.hostname != swarmless-node-1"],
        spread=["node.labels.zone"],
        memory="96m",
        cpus=0.25,
        secrets=[name],
        min_containers=1,
    )
    wait_for(lambda: gw.ready("limited") == 1, 60, "a ready worker")
    [svc] = gw.services(**{"swarmless.function": "limited"})
    task = svc["Spec"]["TaskTemplate"]
    assert task["Placement"]["Constraints"] == ["node.hostname != swarmless-node-1"]
    assert task["Placement"]["Preferences"] == [
        {"Spread": {"SpreadDescriptor": "node.labels.zone"}}
    ]
    reserved = {"NanoCPUs": 250_000_000, "MemoryBytes": 96 * 2**20}
    assert task["Resources"]["Reservations"] == reserved
    # Limited as reserved, and the default PIDs limit (swarmless.backends.swarm_limits).
    assert task["Resources"]["Limits"] == {**reserved, "Pids": gw.settings.function_pids}
    [secret] = task["ContainerSpec"]["Secrets"]
    assert secret["File"]["Name"] == name  # /run/secrets/<name>
    assert secret["SecretName"].startswith(f"swarmless-{name}-")  # one Swarm secret per value
    assert svc["Spec"]["EndpointSpec"]["Mode"] == "dnsrr"
    assert task["ContainerSpec"]["Labels"]["swarmless.function"] == "limited"
    assert _nodes_of(gw, "limited") != ["swarmless-node-1"]
    with gw.http() as http:
        assert http.delete("/system/functions/limited").status_code == 204
        assert http.delete("/system/functions/pinned").status_code == 204
        wait_for(lambda: not gw.services(**{"swarmless.function": "limited"}), 20, "removed")
        assert http.delete(f"/system/secrets/{name}").status_code == 204
    made = {"label": [f"swarmless.secret={name}", f"swarmless.gateway={gw.instance}"]}
    wait_for(lambda: not gw.cluster.manager.api.secrets(filters=made), 10, "secrets removed")


def test_removing_a_function_leaves_nothing(gw: SwarmGateway, swarm_warm_image: str) -> None:
    gw.deploy(name="gone", image=swarm_warm_image, mode="warm", handler="handler:where")
    gw.scale("gone", 2)
    wait_for(lambda: gw.ready("gone") == 2, 60, "2 ready workers")
    label = "swarmless.function=gone"
    assert sum(len(v) for v in gw.cluster.containers(label).values()) == 2
    with gw.http() as http:
        assert http.delete("/system/functions/gone").status_code == 204
    wait_for(lambda: not gw.services(**{"swarmless.function": "gone"}), 20, "services removed")
    wait_for(lambda: not any(gw.cluster.containers(label).values()), 30, "containers on the nodes")


@pytest.mark.parametrize("how", ["disconnect", "kill"])
def test_node_lost_while_calls_continue(gw: SwarmGateway, swarm_warm_image: str, how: str) -> None:
    """A node killed or cut off: sync calls fail only within their timeout, then succeed;
    async calls queued as it goes all end, succeeded or dead."""
    cluster = gw.cluster
    timeout = 8.0
    fn = f"steady-{how}"
    gw.deploy(name=fn, image=swarm_warm_image, mode="warm", handler="handler:slow", timeout=timeout)
    gw.scale(fn, 3)
    wait_for(lambda: gw.ready(fn) == 3, 60, "3 ready workers")
    assert "swarmless-node-3" in _nodes_of(gw, fn)

    results: list[tuple[float, float, int, str]] = []  # (sent, took, status, node or error)

    def call(http_client: object) -> None:
        import httpx

        assert isinstance(http_client, httpx.Client)
        sent = time.monotonic()
        r = http_client.post(f"/function/{fn}", content=b"0.3")
        took = time.monotonic() - sent
        body = r.json()
        results.append((sent, took, r.status_code, body.get("node") or body.get("message", "")))

    killed_at = 0.0
    ip = ""
    seen: dict[str, float] = {}  # first time the gateway saw: "gone", "replaced"
    queued: list[str] = []  # async calls submitted just before the node goes

    def watch() -> None:
        while "replaced" not in seen and time.monotonic() < start + 60:
            if killed_at:
                nodes = _nodes_of(gw, fn)
                if "swarmless-node-3" not in nodes and "gone" not in seen:
                    seen["gone"] = time.monotonic() - killed_at
                if "gone" in seen and gw.ready(fn) == 3 and len(nodes) == 3:
                    seen["replaced"] = time.monotonic() - killed_at
            time.sleep(0.05)

    start = time.monotonic()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with (
            gw.http(token=None, timeout=30) as http,
            concurrent.futures.ThreadPoolExecutor(6) as pool,
        ):
            end = start + 20  # bounded: 20 s of calls, at most 6 at a time
            futures = []
            while time.monotonic() < end:
                if not queued and time.monotonic() - start > 2.5:
                    queued = [
                        http.post(f"/async-function/{fn}", content=b"0.3").headers["x-call-id"]
                        for _ in range(20)
                    ]
                if not killed_at and time.monotonic() - start > 3:
                    if how == "kill":
                        cluster.host.api.kill("swarmless-node-3")
                    else:
                        ip = cluster.cut_off("swarmless-node-3")
                    killed_at = time.monotonic()
                futures.append(pool.submit(call, http))
                time.sleep(0.1)
                if len(futures) > 6:
                    futures.pop(0).result()
            for f in futures:
                f.result()
        watcher.join(40)
        assert "replaced" in seen, f"no replacement worker on a live node: {seen}"
    finally:
        if killed_at and how == "kill":
            cluster.restart_node("swarmless-node-3")
        elif killed_at:
            cluster.reconnect_node("swarmless-node-3", ip)
    with gw.http() as http:
        # Every async call ends: run (again, if its worker was lost with it) or dead.
        def ended() -> dict[str, str] | None:
            status = {i: http.get(f"/invocations/{i}").json()["status"] for i in queued}
            return status if all(v in ("succeeded", "dead") for v in status.values()) else None

        final = wait_for(ended, 60, "every async call succeeded or dead")
        assert http.delete(f"/system/functions/{fn}").status_code == 204
    failed = [r for r in results if r[2] != 200]
    for _sent, took, status, what in failed:
        assert took <= timeout + 1.5, (status, took, what)
        assert status in (502, 504), (status, what)
        assert what, "a failed call says why"
    after = [r for r in results if r[0] > killed_at + 3 + timeout]
    assert after
    assert all(r[2] == 200 for r in after), after
    assert not any(r[3] == "swarmless-node-3" for r in results if r[0] > killed_at + 0.5)
    served_after = Counter(r[3] for r in after)
    print(
        f"\nnode {how}: {len(results)} calls, {len(failed)} failed; "
        f"worker seen gone after {seen['gone']:.1f}s, replaced (3 ready on live nodes) after "
        f"{seen['replaced']:.1f}s; slowest call {max(r[1] for r in results):.1f}s; "
        f"served after: {dict(served_after)}; async calls: {dict(Counter(final.values()))}"
    )


def test_the_engines_log_complaints_are_not_the_output_and_their_node_is_avoided(
    cluster: Cluster, labels: dict[str, str], tmp_path: Path
) -> None:
    """The manager's log broker writes ``Error grabbing logs: ...`` into a task's log
    stream when it cannot get the node's logs (seen after a node restart). Through a proxy
    of the manager's API that splices the complaint into the streams: a complaint that
    goes away is never taken for the function's output; one that stays fails the call
    saying so, and the next one-shot calls avoid that node."""
    import asyncio
    import uuid

    from swarmless.backends.swarm import SwarmBackend
    from swarmless.config import Settings
    from swarmless.exceptions import FunctionFailed
    from swarmless.spec import FunctionSpec
    from tests.swarm_harness import EngineProxy

    complaint = (
        b"Error grabbing logs: rpc error: code = Unknown desc = warning: incomplete log "
        b"stream. some logs could not be retrieved for the following reasons: node "
        b"k3x7 is not available"
    )
    cluster.load(BUSYBOX)
    proxy = EngineProxy(cluster.manager_url, complaint)
    instance = f"test-logs-{uuid.uuid4().hex[:6]}"
    network = f"swarmless-swarm-{instance}"
    settings = Settings.load(
        data_dir=tmp_path,
        backend="swarm",
        docker_host=proxy.url,
        instance=instance,
        network=network,
    )
    backend = SwarmBackend(settings, labels=labels)
    spec = FunctionSpec(
        name="partial",
        image=BUSYBOX,
        mode="oneshot",
        command=["printf", "partial"],
        placement=("node.role == worker",),
    )

    async def call() -> bytes:
        result = await backend.run_once(
            spec, call_id=uuid.uuid4().hex[:12], args=[], env={}, stdin=b"", timeout=60
        )
        assert result.exit_code == 0, result
        return result.stdout + result.stderr

    async def main() -> None:
        await backend.start()
        try:
            # Complained about twice (the first stdout and stderr asked for), then whole.
            proxy.spoil = 2
            assert await call() == b"partial"
            assert proxy.logs_requests >= 4  # asked again
            # Always complained about: the call fails, naming the node and the complaint.
            proxy.spoil = None
            with pytest.raises(FunctionFailed) as failed:
                await call()
            message = str(failed.value)
            host = message.split("the call ran on node ")[1].split(",")[0]
            assert host in cluster.names, message
            assert "the Swarm manager could not deliver its output" in message
            assert "node k3x7 is not available" in message
            # The next calls stay off that node, as long as their own placement allows.
            node_id = next(
                n["ID"] for n in cluster.manager.api.nodes() if n["Description"]["Hostname"] == host
            )
            proxy.spoil = 0
            assert await call() == b"partial"
            placement = proxy.created[-1]["TaskTemplate"]["Placement"]
            assert placement["Constraints"] == ["node.role == worker", f"node.id != {node_id}"]
        finally:
            await backend.close()

    try:
        asyncio.run(main())
    finally:
        proxy.close()
        with contextlib.suppress(docker.errors.DockerException):
            cluster.manager.api.remove_network(network)
