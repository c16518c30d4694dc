"""Scaling on a real 3-node Swarm: a warm function 0 -> 12 vs `docker service scale` to 12.

    .venv/bin/python bench/swarm.py [--rounds 3] [--replicas 12] [--no-kill] [--keep]
        [--no-scale] [--no-cold-pull] [--no-stack]

Starts the test cluster (scripts/swarm-cluster.sh up; removed at the end unless --keep),
builds a warm function image and loads it onto every node, and runs a gateway with the
swarm backend in this process. Each round, interleaved:

- ours: pin the function to N containers (``POST /system/scale``) and time until N workers
  have asked the gateway for work (ready to serve), then back to 0;
- plain: ``docker service scale`` (detached) of a plain service of the same image, on the
  same overlay network, to N, and time until Swarm reports N tasks running, then back to 0.

Ours is one service per container (see swarmless.backends.swarm for why), and counts until
each container's runtime has polled the gateway, a step later than "running".

Prints both medians and the ratio ours/plain (target <= 1.2). Then (unless --no-kill) it
kills a node under a steady load of calls and reports how long until the function has its
workers back on live nodes and the slowest call around the kill (target: below the
dispatcher heartbeat period plus 5 s, i.e. 6 s with the cluster's 1 s heartbeat).

Then (unless --no-cold-pull) a cold start on a node that never had the image: a local
registry (``swarmless registry up``, tests/registry_harness.py) holds a function image whose
every layer is new (its base is the Python base exported and imported again, so no node has
any of it), and node 3 (a worker) pulls it, interleaved, once per sample each way:

- ours: the first call of a warm function pinned to node 3 and deployed by digest, from the
  call sent until its answer (the worker service created, the image pulled, the container
  started, its runtime polled the gateway and ran the call);
- plain: ``docker service create`` of the same digest on node 3, until the program in its
  container is up: it fetches a URL of the bench on the host (as ours' runtime reaches the
  gateway); the time Swarm says the task is running, earlier, is printed beside it.

Before each sample node 3 holds no layer of the image (checked with its engine), after it
the image; the whole machine's CPU use during each sample is printed beside it. Prints
``swarm_cold_pull ratio X (target 1.2: PASS|FAIL)``, the ratio of the medians ours/plain.

Then (unless --no-stack) it deploys examples/stack.yml (two gateway replicas on the
workers, PostgreSQL) and measures warm no-op calls/s with the load split between the two
replicas vs all of it sent to the active one (wrk, or the asyncio client; interleaved).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import docker
import docker.errors

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the cluster and gateway helpers of the tests

from bench._common import host_cpu  # noqa: E402
from bench.gateway_processes import (  # noqa: E402
    BODY,
    WRK_SCRIPT,
    Load,
    python_load,
    wrk_load,
)
from tests.registry_harness import (  # noqa: E402
    cluster_registry,
    has_image,
    node_engine,
    nodes_gateway,
    remove_from_node,
)
from tests.swarm_harness import Cluster, SwarmGateway, gateway_stack, wait_for  # noqa: E402

from swarmless.build import build_function  # noqa: E402
from swarmless.registry import push_image  # noqa: E402

IMAGE = "swarmless-bench/swarm-warm:latest"
HANDLER = """
import os, time

def where(event, context):
    time.sleep(float(event["body"] or b"0"))
    return {"node": os.environ.get("SWARMLESS_NODE", "?")}

def noop(event, context):
    return b"ok"
"""
LABELS = {"swarmless.bench": "swarm"}


def ours(gw: SwarmGateway, n: int) -> float:
    t0 = time.perf_counter()
    gw.scale("bench", n)
    wait_for(lambda: gw.ready("bench") >= n, 120, f"{n} ready workers")
    took = time.perf_counter() - t0
    gw.scale("bench", 0)
    wait_for(lambda: not gw.services(**{"swarmless.function": "bench"}), 60, "scaled to 0")
    return took


def plain(cluster: Cluster, name: str, n: int) -> float:
    api = cluster.manager.api
    host = cluster.manager_url
    t0 = time.perf_counter()
    subprocess.run(
        ["docker", "-H", host, "service", "scale", "--detach", f"{name}={n}"],
        check=True,
        capture_output=True,
    )

    def running() -> bool:
        tasks = api.tasks(filters={"service": name, "desired-state": "running"})
        return sum(t["Status"]["State"] == "running" for t in tasks) >= n

    wait_for(running, 120, f"{n} running tasks")
    took = time.perf_counter() - t0
    subprocess.run(
        ["docker", "-H", host, "service", "scale", "--detach", f"{name}=0"],
        check=True,
        capture_output=True,
    )
    wait_for(lambda: not api.tasks(filters={"service": name, "desired-state": "running"}), 60, "0")
    return took


def node_kill(gw: SwarmGateway) -> tuple[float, float, int, int]:
    """(s until 3 workers on live nodes, slowest call s, calls, failed calls)."""
    cluster = gw.cluster
    gw.scale("bench", 3)
    wait_for(lambda: gw.ready("bench") == 3, 60, "3 ready workers")
    placement = gw.backend.placement
    victim = next(
        placement()[s["ID"]]
        for s in gw.services(**{"swarmless.function": "bench"})
        if placement().get(s["ID"]) not in (None, "swarmless-node-1")
    )
    took: list[tuple[float, int]] = []

    def call() -> None:
        t0 = time.perf_counter()
        with gw.http(token=None, timeout=30) as http:
            r = http.post("/function/bench", content=b"0.2")
        took.append((time.perf_counter() - t0, r.status_code))

    killed = 0.0
    back = 0.0
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        end = time.monotonic() + 15  # bounded: 15 s of calls
        futures = []
        while time.monotonic() < end:
            if not killed and end - time.monotonic() < 12:
                cluster.host.api.kill(victim)
                killed = time.monotonic()
            if killed and not back:
                nodes = [
                    gw.backend.placement().get(s["ID"])
                    for s in gw.services(**{"swarmless.function": "bench"})
                ]
                if gw.ready("bench") == 3 and victim not in nodes and None not in nodes:
                    back = time.monotonic() - killed
            futures.append(pool.submit(call))
            time.sleep(0.1)
        for f in futures:
            f.result()
    cluster.restart_node(victim)
    gw.scale("bench", 0)
    failed = sum(1 for _, status in took if status != 200)
    return back, max(t for t, _ in took), len(took), failed


COLD_NODE = "swarmless-node-3"
COLD_BASE = "swarmless-bench/cold-base:latest"
COLD_IMAGE = "swarmless-bench/cold-pull:latest"


def cold_image(host: docker.DockerClient, tmp: Path) -> tuple[str, int]:
    """A warm function image none of whose layers any node has: its base is the Python
    base exported and imported again (one new layer, same files). (image id, bytes)."""
    cid = host.api.create_container("swarmless/python:bookworm", labels=LABELS)["Id"]
    try:
        export = subprocess.Popen(["docker", "export", cid], stdout=subprocess.PIPE)
        subprocess.run(
            ["docker", "import", "-c", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:"
             "/usr/bin:/sbin:/bin", "-c", "ENV LANG=C.UTF-8", "-c", "ENV PYTHONUNBUFFERED=1",
             "-c", "LABEL swarmless.bench=swarm", "-", COLD_BASE],
            stdin=export.stdout, check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        export.wait(60)
    finally:
        host.api.remove_container(cid, force=True)
    (tmp / "handler.py").write_text(HANDLER + f"\nBUILT = {time.time()!r}\n")
    image_id = build_function(
        tmp, tag=COLD_IMAGE, mode="warm", client=host, base_image=COLD_BASE, labels=LABELS
    )
    return image_id, int(host.api.inspect_image(image_id)["Size"])


def _sample(
    node: docker.DockerClient, ref: str, image_id: str, run: Callable[[], float]
) -> tuple[float, float]:
    """One cold start: the node holds none of the image before, the image after; (seconds,
    the machine's CPU busy share during it)."""
    if has_image(node, ref) or has_image(node, image_id):
        raise AssertionError(f"{COLD_NODE} holds the image before a cold sample")
    busy0, total0 = host_cpu()
    took = run()
    busy1, total1 = host_cpu()
    if node.api.inspect_image(ref)["Id"] != image_id:
        raise AssertionError(f"{COLD_NODE} does not hold the image after a cold sample")
    return took, (busy1 - busy0) / max(total1 - total0, 1e-9)


def cold_pull(
    host: docker.DockerClient, cluster: Cluster, gw: SwarmGateway, rounds: int
) -> tuple[list[tuple[float, float]], list[tuple[float, float]], list[float], int]:
    """(ours, plain) samples of (seconds, CPU busy share), the plain tasks' seconds until
    Swarm said running, and the image's bytes."""
    node = node_engine(cluster, COLD_NODE)
    with (
        tempfile.TemporaryDirectory() as tmp,
        cluster_registry(cluster, "swarmless-reg-bench", Path(tmp) / "reg", LABELS) as settings,
    ):
        image_id, size = cold_image(host, Path(tmp))
        ref = push_image(host, COLD_IMAGE, settings=settings)
        gw.deploy(
            name="coldpull",
            image=ref,
            mode="warm",
            handler="handler:noop",
            placement=[f"node.hostname == {COLD_NODE}"],
            idle_timeout=300,
        )

        def ours() -> float:
            gw.scale("coldpull", None)  # the autoscaler's: none until a call comes
            t0 = time.perf_counter()
            with gw.http(token=None, timeout=300) as http:
                r = http.post("/function/coldpull", content=b"")
            took = time.perf_counter() - t0
            if r.status_code != 200:
                raise AssertionError(f"the cold call failed: {r.status_code} {r.text}")
            gw.scale("coldpull", 0)
            wait_for(
                lambda: not gw.services(**{"swarmless.function": "coldpull"}), 60, "scaled to 0"
            )
            return took

        # Where plain containers say their program is up: an HTTP server on the host's
        # address on the nodes' bridge (as ours' runtime reaches the gateway there).
        arrived: dict[str, float] = {}

        class Ready(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                arrived.setdefault(self.path.strip("/"), time.perf_counter())
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        ready = ThreadingHTTPServer((nodes_gateway(cluster), 0), Ready)
        threading.Thread(target=ready.serve_forever, daemon=True).start()
        ready_url = f"http://{ready.server_address[0]}:{ready.server_address[1]}"
        running_s: list[float] = []

        def plain() -> float:
            name = "swarmless-reg-bench-plain"
            api = cluster.manager.api
            token = uuid.uuid4().hex
            program = (
                f"import urllib.request as u; u.urlopen('{ready_url}/{token}', timeout=60); "
                "import time; time.sleep(3600)"
            )
            t0 = time.perf_counter()
            subprocess.run(
                ["docker", "-H", cluster.manager_url, "service", "create", "--detach", "-q",
                 "--name", name, "--constraint", f"node.hostname == {COLD_NODE}",
                 "--restart-condition", "none", "--no-resolve-image",
                 "--endpoint-mode", "dnsrr", "--network", gw.settings.network,
                 "--label", "swarmless.bench=swarm", ref, "python3", "-c", program],
                check=True, capture_output=True, timeout=120,
            )  # fmt: skip

            def running() -> bool:
                tasks = api.tasks(filters={"service": name})
                return any(t["Status"]["State"] == "running" for t in tasks)

            wait_for(running, 300, "the plain task running")
            running_s.append(time.perf_counter() - t0)
            wait_for(lambda: token in arrived, 120, "the plain container's program up")
            took = arrived[token] - t0
            subprocess.run(
                ["docker", "-H", cluster.manager_url, "service", "rm", name],
                check=True,
                capture_output=True,
                timeout=60,
            )
            return took

        a: list[tuple[float, float]] = []
        b: list[tuple[float, float]] = []
        try:
            for i in range(rounds):
                pair = [("ours", a, ours), ("plain", b, plain)]
                for which, samples, run in pair if i % 2 == 0 else pair[::-1]:
                    remove_from_node(node, ref)
                    samples.append(_sample(node, ref, image_id, run))
                    took, cpu = samples[-1]
                    also = f", task running at {running_s[-1]:.2f}s" if which == "plain" else ""
                    print(
                        f"cold pull round {i + 1}: {which} {took:.2f}s{also} (machine CPU "
                        f"busy {cpu:.0%})",
                        flush=True,
                    )
        finally:
            ready.shutdown()
            ready.server_close()
            with gw.http() as http:
                http.delete("/system/functions/coldpull")
            wait_for(lambda: not gw.services(**{"swarmless.function": "coldpull"}), 60, "removed")
            for name in cluster.names:
                other = node_engine(cluster, name)
                remove_from_node(other, ref)
                other.close()
            for local in (COLD_IMAGE, f"{settings.registry_push}/{COLD_IMAGE}", COLD_BASE):
                with contextlib.suppress(docker.errors.DockerException):
                    host.api.remove_image(local)
            node.close()
    return a, b, running_s, size


def stack_throughput(
    host: docker.DockerClient, cluster: Cluster, seconds: float, reps: int
) -> tuple[Load, Load]:
    """(all load to the active replica, load split over both): medians of ``reps`` runs."""
    import httpx

    token = "bench-stack-token"
    script = Path(tempfile.mkdtemp()) / "post.lua"
    script.write_text(WRK_SCRIPT % BODY.decode())

    def load(urls: list[str], connections: int) -> Load:
        with concurrent.futures.ThreadPoolExecutor(len(urls)) as pool:
            runs = list(
                pool.map(
                    lambda u: (
                        wrk_load(u + "/function/noop", connections // len(urls), seconds, script)
                        if shutil.which("wrk")
                        else python_load(u + "/function/noop", connections // len(urls), seconds)
                    ),
                    urls,
                )
            )
        return Load(
            rps=sum(r.rps for r in runs),
            p50=statistics.median(r.p50 for r in runs),
            p99=max(r.p99 for r in runs),
            requests=sum(r.requests for r in runs),
            errors=sum(r.errors for r in runs),
        )

    with gateway_stack(host, cluster, "benchstk", token) as stack:
        active, standby = stack.url_of("active"), stack.url_of("standby")
        spec = {
            "name": "noop",
            "image": IMAGE,
            "mode": "warm",
            "handler": "handler:noop",
            "min_containers": 4,
            "max_containers": 4,
            "concurrency": 4,
        }
        with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
            r = http.post(f"{active}/system/functions", json=spec)
            r.raise_for_status()
            wait_for(lambda: http.post(f"{active}/function/noop").status_code == 200, 120, "noop")
        load([active, standby], 16)  # warm-up
        one: list[Load] = []
        two: list[Load] = []
        for i in range(reps):
            order = [(one, [active]), (two, [active, standby])]
            for samples, urls in order if i % 2 == 0 else order[::-1]:
                samples.append(load(urls, 16))
    pick = lambda xs: sorted(xs, key=lambda x: x.rps)[len(xs) // 2]  # noqa: E731
    return pick(one), pick(two)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=12)
    parser.add_argument("--no-kill", action="store_true")
    parser.add_argument("--no-scale", action="store_true", help="skip the 0 -> N scaling")
    parser.add_argument(
        "--no-cold-pull", action="store_true", help="skip the cold start through a registry"
    )
    parser.add_argument("--no-stack", action="store_true", help="skip the replicas' throughput")
    parser.add_argument("--keep", action="store_true", help="leave the cluster up")
    args = parser.parse_args()
    host = docker.from_env()
    cluster = Cluster(host, "swarmless.bench=swarm").up()
    gw = None
    plain_name = "swarmless-swarm-bench-plain"
    try:
        # The scaling, node-kill and stack parts run IMAGE, loaded onto every node.
        scaled = not (args.no_scale and args.no_kill and args.no_stack)
        if scaled:
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "handler.py").write_text(HANDLER)
                build_function(
                    Path(tmp),
                    tag=IMAGE,
                    mode="warm",
                    client=host,
                    base_image="swarmless/python:bookworm",
                    labels=LABELS,
                )
            cluster.load(IMAGE)
        gw = SwarmGateway(cluster, Path(tempfile.mkdtemp()), LABELS).start()
        if scaled:
            gw.deploy(
                name="bench", image=IMAGE, mode="warm", handler="handler:where", idle_timeout=1
            )
            subprocess.run(
                ["docker", "-H", cluster.manager_url, "service", "create", "--detach", "-q",
                 "--name", plain_name, "--replicas", "0", "--no-resolve-image",
                 "--endpoint-mode", "dnsrr", "--network", gw.settings.network,
                 "--label", "swarmless.bench=swarm", IMAGE,
                 "python3", "-c", "import time; time.sleep(3600)"],
                check=True, capture_output=True,
            )  # fmt: skip
        a: list[float] = []
        b: list[float] = []
        if not args.no_scale:
            # One untimed round of each: images in the page cache, connections open.
            ours(gw, 2)
            plain(cluster, plain_name, 2)
        for i in range(0 if args.no_scale else args.rounds):
            pair = [("ours", a), ("plain", b)]
            if i % 2:
                pair.reverse()
            for which, samples in pair:
                if which == "ours":
                    samples.append(ours(gw, args.replicas))
                else:
                    samples.append(plain(cluster, plain_name, args.replicas))
                print(f"round {i + 1}: {which} 0->{args.replicas}: {samples[-1]:.2f}s", flush=True)
        if not args.no_scale:
            m_ours, m_plain = statistics.median(a), statistics.median(b)
            ratio = m_ours / m_plain
            print(f"swarmless scale 0->{args.replicas} (workers ready) median: {m_ours:.2f}s")
            print(f"docker service scale to {args.replicas} (tasks running) median: {m_plain:.2f}s")
            ok = "PASS" if ratio <= 1.2 else "FAIL"
            print(f"ratio ours/plain: {ratio:.2f}  (target <= 1.2: {ok})")
        if not args.no_cold_pull:
            cold_ours, cold_plain, running, size = cold_pull(host, cluster, gw, args.rounds)
            c_ours = statistics.median(t for t, _ in cold_ours)
            c_plain = statistics.median(t for t, _ in cold_plain)
            c_running = statistics.median(running)
            ratio = c_ours / c_plain
            print(
                f"cold start on {COLD_NODE} without the image ({size / 1e6:.0f} MB, every "
                f"layer pulled from the local registry), median: ours (call sent to answer) "
                f"{c_ours:.2f}s; docker service create until its program is up "
                f"{c_plain:.2f}s (until Swarm says running: {c_running:.2f}s, ratio "
                f"{c_ours / c_running:.2f})"
            )
            ok = "PASS" if ratio <= 1.2 else "FAIL"
            print(f"swarm_cold_pull ratio {ratio:.2f} (target 1.2: {ok})")
        if not args.no_stack:
            one, two = stack_throughput(host, cluster, 5, max(1, args.rounds))
            print(
                f"gateway stack on the Swarm, warm no-op calls at 16 connections: all to the "
                f"active replica {one.rps:.0f}/s (p50 {one.p50 * 1000:.1f} ms), split over "
                f"both replicas {two.rps:.0f}/s (p50 {two.p50 * 1000:.1f} ms): "
                f"ratio {two.rps / one.rps:.2f}x (reported; one replica dispatches)"
            )
    finally:
        if gw is not None:
            gw.stop()
        subprocess.run(
            ["docker", "-H", cluster.manager_url, "service", "rm", plain_name],
            capture_output=True,
            check=False,
        )
        if not args.keep:
            cluster.down()
        with contextlib.suppress(docker.errors.ImageNotFound):
            host.images.remove(IMAGE, force=True)


if __name__ == "__main__":
    main()
