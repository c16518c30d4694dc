"""Scaling: zero to ten, paused vs cold first calls, idle memory, recovery from a step load.

    .venv/bin/python bench/scaling.py

One run, a gateway process of its own, loopback only. Prints, each against a baseline
measured in the same run:

- zero to 10 ready containers (``swarmless scale fn 10``, until all 10 asked for work) vs
  the engine's own rate: 10 containers of the same image created and started in parallel
  with the Docker SDK on the same network; target ratio <= 1.2 (ours also includes each
  runtime's Python start and first poll);
- first-call latency from a paused buffer vs from zero (a cold start); target <= 0.1x;
- idle memory of a warm Python container: RSS of the runtime process inside it (target
  <= 30 MB) and the container's cgroup usage;
- a step load from 1 to 32 concurrent clients: time until the p99 latency of a 0.5 s
  window is back under 2x its steady (1 client) value.

Everything is labelled ``swarmless.bench=scaling`` or the gateway's instance and removed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import statistics
import threading
import time

import docker
import httpx

from _common import build_image, gateway, pct

IMAGE = "swarmless-bench/scaling:latest"
HANDLER = """
import time

def handle(event, context):
    time.sleep(float(event["body"] or b"0"))
    return b"ok"
"""


def deploy(http: httpx.Client, **spec: object) -> None:
    body = {"image": IMAGE, "mode": "warm", "handler": "handler:handle", **spec}
    http.post("/system/functions", json=body).raise_for_status()


def containers(http: httpx.Client, name: str) -> dict[str, int]:
    return dict(http.get(f"/system/functions/{name}").json()["containers"])


def wait(predicate: object, timeout: float = 120) -> float:
    t0 = time.perf_counter()
    while not predicate():  # type: ignore[operator]
        if time.perf_counter() - t0 > timeout:
            raise SystemExit("timed out")
        time.sleep(0.01)
    return time.perf_counter() - t0


def engine_parallel_start(engine: docker.DockerClient, n: int, network: str) -> float:
    """The engine's own rate: n containers of the image created and started at once, on
    the same network as the function's (a user-defined bridge costs more than the default)."""
    ids: list[str] = []
    lock = threading.Lock()

    def one(_: int) -> None:
        c = engine.api.create_container(
            IMAGE,
            command=["python3", "-c", "import time; time.sleep(60)"],
            labels={"swarmless.bench": "scaling"},
            host_config=engine.api.create_host_config(network_mode=network),
        )
        engine.api.start(c["Id"])
        with lock:
            ids.append(c["Id"])

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        list(pool.map(one, range(n)))
    took = time.perf_counter() - t0
    for cid in ids:
        with contextlib.suppress(docker.errors.DockerException):
            engine.api.remove_container(cid, force=True)
    return took


def main() -> None:
    engine = docker.from_env()
    build_image(engine, IMAGE, HANDLER, "scaling")
    ok = {True: "PASS", False: "FAIL"}
    try:
        with (
            gateway(engine, "scaling") as gw,
            httpx.Client(base_url=gw.url, headers=gw.headers, timeout=120) as http,
        ):
            print("1/4 zero to ten...", flush=True)
            deploy(http, name="ten", max_containers=10, idle_timeout=600)
            network = f"swarmless-{gw.instance}"
            engine_parallel_start(engine, 2, network)  # warm the engine's caches
            baseline = statistics.median(
                engine_parallel_start(engine, 10, network) for _ in range(3)
            )
            samples = []
            for _ in range(3):
                t0 = time.perf_counter()
                http.post("/system/scale/ten", json={"replicas": 10}).raise_for_status()
                wait(lambda: containers(http, "ten").get("ready", 0) >= 10)
                samples.append(time.perf_counter() - t0)
                http.post("/system/scale/ten", json={"replicas": 0}).raise_for_status()
                wait(
                    lambda: (
                        sum(containers(http, "ten").get(k, 0) for k in ("ready", "starting")) == 0
                    )
                )
                time.sleep(1)
            ours = statistics.median(samples)
            print(f"zero to 10 ready:    {ours * 1000:.0f} ms (median of 3)")
            print(f"engine, 10 parallel: {baseline * 1000:.0f} ms (create+start, median of 3)")
            print(f"  ratio {ours / baseline:.2f}  (target <= 1.2: {ok[ours / baseline <= 1.2]})")

            print("2/4 cold vs paused first calls...", flush=True)
            deploy(http, name="cold", idle_timeout=1)
            colds = []
            for _ in range(3):
                wait(lambda: containers(http, "cold").get("ready", 0) == 0)
                t0 = time.perf_counter()
                assert http.post("/function/cold", content=b"0").status_code == 200
                colds.append(time.perf_counter() - t0)
                wait(lambda: sum(containers(http, "cold").values()) == 0, 60)
            deploy(http, name="paused", buffer=1, paused_buffer=True, idle_timeout=600)
            http.post("/function/paused", content=b"0")
            thaws = []
            for _ in range(3):
                wait(lambda: containers(http, "paused").get("paused", 0) >= 1, 60)
                t0 = time.perf_counter()
                assert http.post("/function/paused", content=b"0").status_code == 200
                thaws.append(time.perf_counter() - t0)
            cold, thaw = statistics.median(colds), statistics.median(thaws)
            print(f"first call from zero:   {cold * 1000:.0f} ms (median of 3)")
            print(f"first call from paused: {thaw * 1000:.0f} ms (median of 3)")
            print(f"  ratio {thaw / cold:.2f}  (target <= 0.1: {ok[thaw / cold <= 0.1]})")

            print("3/4 idle memory...", flush=True)
            flt = {"label": [f"swarmless.gateway={gw.instance}", "swarmless.function=ten"]}
            http.post("/system/scale/ten", json={"replicas": 1}).raise_for_status()
            wait(lambda: containers(http, "ten").get("ready", 0) >= 1)
            time.sleep(1)
            cid = engine.api.containers(filters=flt)[0]["Id"]
            status = engine.containers.get(cid).exec_run(["cat", "/proc/1/status"]).output
            rss_kb = next(
                int(line.split()[1])
                for line in status.decode().splitlines()
                if line.startswith("VmRSS")
            )
            stats = engine.api.stats(cid, stream=False)
            cgroup = stats["memory_stats"].get("usage", 0) - stats["memory_stats"].get(
                "stats", {}
            ).get("cache", 0)
            print(
                f"idle warm container: runtime RSS {rss_kb / 1024:.1f} MB "
                f"(target <= 30: {ok[rss_kb / 1024 <= 30]}), cgroup {cgroup / 2**20:.1f} MB"
            )

            print("4/4 step load 1 -> 32 clients...", flush=True)
            deploy(
                http,
                name="step",
                max_containers=10,
                concurrency=4,
                min_containers=1,
                idle_timeout=600,
            )
            http.post("/function/step", content=b"0.02")
            latencies: list[tuple[float, float]] = []
            lock = threading.Lock()
            stop = threading.Event()

            def client() -> None:
                with httpx.Client(base_url=gw.url, timeout=60) as c:
                    while not stop.is_set():
                        t0 = time.perf_counter()
                        c.post("/function/step", content=b"0.02")
                        with lock:
                            latencies.append((t0, time.perf_counter() - t0))

            threads = [threading.Thread(target=client)]
            threads[0].start()
            time.sleep(3)
            with lock:
                steady = pct([lat for _, lat in latencies], 99)
            t_step = time.perf_counter()
            for _ in range(31):
                threads.append(threading.Thread(target=client))
                threads[-1].start()
            time.sleep(15)
            stop.set()
            for t in threads:
                t.join(30)
            recovered = None
            window = 0.5
            t = t_step
            while t < t_step + 15 - window:
                inside = [lat for s, lat in latencies if t <= s < t + window]
                if inside and pct(inside, 99) < 2 * steady:
                    recovered = t - t_step
                    break
                t += 0.1
            peak = containers(http, "step")
            print(
                f"step 1 -> 32 clients: steady p99 {steady * 1000:.1f} ms; "
                + (
                    f"p99 back under 2x after {recovered:.1f} s"
                    if recovered is not None
                    else "p99 not back under 2x within 15 s"
                )
                + f"; containers now {peak.get('ready', 0)}"
            )
    finally:
        with contextlib.suppress(docker.errors.DockerException):
            engine.images.remove(IMAGE, force=True)


if __name__ == "__main__":
    main()
