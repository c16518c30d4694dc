"""Scaling: zero to ten, paused vs cold first calls, idle memory, recovery from a step load.

    .venv/bin/python bench/scaling.py [--reps 3] [--samples 5] [--step-seconds 15]
                                      [--json PATH]

One run, a gateway process of its own, loopback only. Prints, each against a baseline
measured in the same run, rounds interleaved (ours, baseline, baseline, ours, ...):

- zero to 10 ready containers (``swarmless scale fn 10``, until all 10 asked for work) vs
  the engine's own rate: 10 containers of the same image created and started in parallel
  with the Docker SDK on the same network; target ratio <= 1.1 (ours also includes each
  runtime's Python start and first poll). The timeline of both (ready count over time) is
  kept for the report;
- first-call latency from a paused buffer vs from zero (a cold start); target <= 0.1x.
  Every sample is checked against the engine, not the gateway: a *paused* sample is taken
  only once every container of the function is ``paused`` in the engine (none running),
  and its record must name one of those containers and say it was not cold; a *cold*
  sample only once the function has no live container at all, and its record must say
  cold. A sample that fails its check is reported under the kind it really was and left
  out of the ratio;
- idle memory of a warm Python container: RSS of the runtime process inside it (target
  <= 30 MB) and the container's cgroup usage;
- a step load from 1 to 32 concurrent clients: time until the p99 latency of a 0.5 s
  window is back under 2x its steady (1 client) value.

Each target prints one line ``NAME ratio X (target OP Y: PASS|FAIL)``. Everything is
labelled ``swarmless.bench=scaling`` or the gateway's instance (``bench-...``) and removed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import statistics
import threading
import time
from typing import Any

import docker
import httpx

from _common import (
    build_image,
    check,
    container_states,
    exit_on_sigterm,
    gateway,
    pct,
    target,
    write_json,
)

IMAGE = "swarmless-bench/scaling:latest"
HANDLER = """
import time

def handle(event, context):
    time.sleep(float(event["body"] or b"0"))
    return b"ok"
"""
ALIVE = ("running", "paused", "restarting", "created")


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


def engine_parallel_start(
    engine: docker.DockerClient, n: int, network: str
) -> tuple[float, list[float]]:
    """The engine's own rate: n containers of the image created and started at once, on
    the same network as the function's (a user-defined bridge costs more than the default).
    The total time and when each container's start returned (seconds from the beginning)."""
    ids: list[str] = []
    started: list[float] = []
    lock = threading.Lock()
    t0 = time.perf_counter()

    def one(_: int) -> None:
        c = engine.api.create_container(
            IMAGE,
            command=["python3", "-c", "import time; time.sleep(60)"],
            labels={"swarmless.bench": "scaling", "swarmless.test": "helper-bench"},
            host_config=engine.api.create_host_config(network_mode=network),
        )
        with lock:
            ids.append(c["Id"])
        engine.api.start(c["Id"])
        with lock:
            started.append(time.perf_counter() - t0)

    try:
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            list(pool.map(one, range(n)))
        took = time.perf_counter() - t0
    finally:
        for cid in ids:
            with contextlib.suppress(docker.errors.DockerException):
                engine.api.remove_container(cid, force=True)
    return took, sorted(started)


def zero_to_ten(
    http: httpx.Client, engine: docker.DockerClient, network: str, reps: int
) -> dict[str, Any]:
    """Rounds alternate: ours, engine, engine, ours, ..."""
    engine_parallel_start(engine, 2, network)  # warm the engine's caches
    ours: list[float] = []
    base: list[float] = []
    timelines: dict[str, list[list[float]]] = {"ours": [], "engine": []}
    for rep in range(reps):
        order = ("ours", "engine") if rep % 2 == 0 else ("engine", "ours")
        for kind in order:
            if kind == "engine":
                took, started = engine_parallel_start(engine, 10, network)
                base.append(took)
                timelines["engine"].append(started)
                continue
            line: list[tuple[float, int]] = [(0.0, 0)]
            t0 = time.perf_counter()
            http.post("/system/scale/ten", json={"replicas": 10}).raise_for_status()
            deadline = t0 + 120
            while True:
                ready = containers(http, "ten").get("ready", 0)
                now = time.perf_counter() - t0
                if ready != line[-1][1]:
                    line.append((now, ready))
                if ready >= 10:
                    break
                if time.perf_counter() > deadline:
                    raise SystemExit("zero to ten: not 10 ready after 120 s")
                time.sleep(0.01)
            ours.append(time.perf_counter() - t0)
            # the time each container became ready, as the engine baseline's list
            times: list[float] = []
            for t, n in line[1:]:
                times += [t] * max(0, n - len(times))
            timelines["ours"].append(times)
            http.post("/system/scale/ten", json={"replicas": 0}).raise_for_status()
            wait(lambda: sum(containers(http, "ten").get(k, 0) for k in ("ready", "starting")) == 0)
            time.sleep(1)
    return {"ours": ours, "engine": base, "timelines": timelines}


def call_record(http: httpx.Client, call_id: str) -> dict[str, Any]:
    """An invocation's record (written behind: ask again until it is final)."""
    deadline = time.monotonic() + 10
    while True:
        r = http.get(f"/invocations/{call_id}")
        if r.status_code == 200 and r.json().get("status") == "succeeded":
            return dict(r.json())
        if time.monotonic() > deadline:
            return {}
        time.sleep(0.05)


def cold_vs_paused(
    http: httpx.Client, engine: docker.DockerClient, instance: str, samples: int
) -> dict[str, Any]:
    """Interleaved first calls: from zero (cold) and from a paused buffer, each checked."""
    deploy(http, name="cold", idle_timeout=1)
    deploy(http, name="paused", buffer=1, paused_buffer=True, idle_timeout=600)
    check(http.post("/function/paused", content=b"0").status_code == 200, "first call of paused")

    def labels(fn: str) -> list[str]:
        return [f"swarmless.gateway={instance}", f"swarmless.function={fn}"]

    def alive(fn: str) -> dict[str, str]:
        return {k: v for k, v in container_states(engine, labels(fn)).items() if v in ALIVE}

    out: dict[str, Any] = {"cold": [], "paused": [], "samples": []}
    for i in range(samples):
        for kind in ("cold", "paused") if i % 2 == 0 else ("paused", "cold"):
            if kind == "cold":
                wait(lambda: not alive("cold"), 120)
                before = container_states(engine, labels("cold"))
            else:

                def all_paused() -> bool:
                    states = alive("paused")
                    return bool(states) and all(v == "paused" for v in states.values())

                wait(all_paused, 120)
                before = container_states(engine, labels("paused"))
            t0 = time.perf_counter()
            r = http.post(f"/function/{kind}", content=b"0")
            took = time.perf_counter() - t0
            check(r.status_code == 200, (r.status_code, r.text))
            rec = call_record(http, r.headers["x-call-id"])
            served_by = rec.get("container")
            if kind == "cold":
                really = "cold" if rec.get("cold") is True and served_by not in before else "warm"
            else:
                was = before.get(str(served_by))
                if rec.get("cold") is True:
                    really = "cold"
                elif was == "paused":
                    really = "paused"
                else:
                    really = "warm"
            out["samples"].append(
                {
                    "asked": kind,
                    "was": really,
                    "seconds": took,
                    "container": served_by,
                    "engine_states_before": before,
                    "record_cold": rec.get("cold"),
                }
            )
            if really == kind:
                out[kind].append(took)
    return out


def idle_memory(http: httpx.Client, engine: docker.DockerClient, instance: str) -> dict[str, float]:
    flt = {"label": [f"swarmless.gateway={instance}", "swarmless.function=ten"]}
    http.post("/system/scale/ten", json={"replicas": 1}).raise_for_status()
    wait(lambda: containers(http, "ten").get("ready", 0) >= 1)
    time.sleep(1)
    cid = engine.api.containers(filters=flt)[0]["Id"]
    status = engine.containers.get(cid).exec_run(["cat", "/proc/1/status"]).output
    rss_kb = next(
        int(line.split()[1]) for line in status.decode().splitlines() if line.startswith("VmRSS")
    )
    stats = engine.api.stats(cid, stream=False)
    mem = stats["memory_stats"]
    cgroup = mem.get("usage", 0) - mem.get("stats", {}).get("cache", 0)
    return {"rss_mb": rss_kb / 1024, "cgroup_mb": cgroup / 2**20}


def step_load(http: httpx.Client, url: str, seconds: float) -> dict[str, Any]:
    deploy(http, name="step", max_containers=10, concurrency=4, min_containers=1, idle_timeout=600)
    http.post("/function/step", content=b"0.02")
    latencies: list[tuple[float, float]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
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
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(30)
    recovered = None
    window = 0.5
    t = t_step
    while t < t_step + seconds - window:
        inside = [lat for s, lat in latencies if t <= s < t + window]
        if inside and pct(inside, 99) < 2 * steady:
            recovered = t - t_step
            break
        t += 0.1
    return {
        "steady_p99": steady,
        "recovered_after": recovered,
        "containers": containers(http, "step").get("ready", 0),
        "calls": len(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=3, help="zero-to-ten rounds of each side")
    parser.add_argument("--samples", type=int, default=5, help="cold and paused first calls")
    parser.add_argument("--step-seconds", type=float, default=15.0)
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args()
    if not (0 < args.reps <= 20 and 0 < args.samples <= 50 and 2 <= args.step_seconds <= 120):
        parser.error("--reps 1..20, --samples 1..50, --step-seconds 2..120")
    exit_on_sigterm()
    engine = docker.from_env()
    build_image(engine, IMAGE, HANDLER, "scaling")
    result: dict[str, Any] = {"targets": []}
    try:
        with (
            gateway(engine, "scaling") as gw,
            httpx.Client(base_url=gw.url, headers=gw.headers, timeout=120) as http,
        ):
            print("1/4 zero to ten (interleaved with the engine's parallel start)...", flush=True)
            deploy(http, name="ten", max_containers=10, idle_timeout=600)
            network = f"swarmless-{gw.instance}"
            ten = zero_to_ten(http, engine, network, args.reps)
            ours, base = statistics.median(ten["ours"]), statistics.median(ten["engine"])
            print(f"zero to 10 ready:    {ours * 1000:.0f} ms (median of {args.reps})")
            print(f"engine, 10 parallel: {base * 1000:.0f} ms (create+start, median)")
            result["zero_to_ten"] = ten
            result["targets"].append(target("scaling-zero-to-ten", ours / base, "<=", 1.1))

            print("2/4 cold vs paused first calls (interleaved, engine-checked)...", flush=True)
            cp = cold_vs_paused(http, engine, gw.instance, args.samples)
            result["first_calls"] = cp
            for s in cp["samples"]:
                states = ",".join(sorted(set(s["engine_states_before"].values()))) or "none"
                print(
                    f"  asked {s['asked']:<6} was {s['was']:<6} {s['seconds'] * 1000:7.1f} ms"
                    f"  (engine before: {states}; record cold={s['record_cold']})"
                )
            if not cp["paused"] or not cp["cold"]:
                raise SystemExit("no checked paused or cold sample: the ratio would be a lie")
            cold, thaw = statistics.median(cp["cold"]), statistics.median(cp["paused"])
            print(f"first call from zero:   {cold * 1000:.0f} ms (median of {len(cp['cold'])})")
            print(f"first call from paused: {thaw * 1000:.0f} ms (median of {len(cp['paused'])})")
            result["targets"].append(target("scaling-paused-vs-cold", thaw / cold, "<=", 0.1))

            print("3/4 idle memory...", flush=True)
            mem = idle_memory(http, engine, gw.instance)
            result["idle_memory"] = mem
            print(f"idle warm container: cgroup {mem['cgroup_mb']:.1f} MB")
            result["targets"].append(target("scaling-idle-rss", mem["rss_mb"], "<=", 30, "MB"))

            print("4/4 step load 1 -> 32 clients...", flush=True)
            step = step_load(http, gw.url, args.step_seconds)
            result["step"] = step
            recovered = step["recovered_after"]
            print(
                f"step 1 -> 32 clients: steady p99 {step['steady_p99'] * 1000:.1f} ms; "
                + (
                    f"p99 back under 2x after {recovered:.1f} s"
                    if recovered is not None
                    else f"p99 not back under 2x within {args.step_seconds:g} s"
                )
                + f"; containers now {step['containers']}"
            )
    finally:
        with contextlib.suppress(docker.errors.DockerException):
            engine.images.remove(IMAGE, force=True)
    write_json(args.json, result)


if __name__ == "__main__":
    main()
