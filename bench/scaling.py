"""Scaling: first calls from zero, zero to ten, paused vs cold, idle memory, a step load.

    .venv/bin/python bench/scaling.py [--reps 5] [--samples 5] [--first-samples N]
                                      [--step-seconds 15] [--only PART ...] [--json PATH]

One run, a gateway process of its own, loopback only. Prints, each against a baseline
measured in the same run, rounds interleaved (ours, baseline, baseline, ours, ...):

- the first call of a warm function with no container vs ``run()`` of the same image (a
  one-liner importing and calling the same handler), and ``run()`` on the function network
  for context, in rotating order; target ratio <= 1.1. Each first call is to a function
  deployed just before with room to scale (``max_containers`` 10), checked cold in the
  engine (no container of it before, the record says cold); the engine's create events
  for the function from the call until 1.5 s after its answer are counted: a single first
  call must create one container (``scaling-single-first-call containers N``). Each
  sample's phases come from the engine's events on the same wall clock: ``create`` (from
  the request to the create event), ``start``, then ``ready`` (the runtime asked for work,
  the record's start) and ``answered`` for ours, ``exited`` and the rest for ``run()``;
- zero to 10 ready containers (``POST /system/scale``, until all 10 asked for work) vs
  the engine's own rate: 10 containers of the same image created and started in parallel
  threads with the Docker SDK, with the create options of the function's containers (read
  from one the gateway started: network, binds, limits, environment) and a command that
  only waits; target ratio <= 1.1 (ours also includes each runtime's Python start and
  first poll). Each round of ours starts with no container of the function in the engine
  and counts the engine's create events (10, no more). The timeline of both (ready count
  over time) is kept for the report;
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

Each target prints one line ``NAME ratio X (target OP Y: PASS|FAIL)`` (a count:
``NAME containers N (...)``); the 1-minute load average at the start and the end is
printed and kept. Everything is labelled ``swarmless.bench=scaling`` or the gateway's
instance (``bench-...``) and removed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import http.client as http_client
import json
import os
import statistics
import threading
import time
from typing import Any

import docker
import httpx

import swarmless
from _common import (
    build_image,
    calm,
    check,
    container_cpu,
    container_states,
    exit_on_sigterm,
    gateway,
    host_cpu,
    pct,
    proc_cpu,
    target,
    write_json,
)

IMAGE = f"swarmless-bench/scaling:{os.getpid()}"
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


def cpu_line(cpu: dict[str, list[dict[str, float]]]) -> str:
    """The median CPU seconds per zero-to-ten round, ours beside the engine's."""

    def med(kind: str, key: str) -> str:
        got = [r[key] for r in cpu[kind] if key in r]
        return f"{statistics.median(got):.2f}" if got else "-"

    return (
        f"machine {med('ours', 'machine')} / {med('engine', 'machine')}, the ten containers "
        f"{med('ours', 'containers')} / {med('engine', 'containers')}, the gateway "
        f"{med('ours', 'gateway')}"
    )


def create_options(
    engine: docker.DockerClient, http: httpx.Client, instance: str
) -> dict[str, Any]:
    """The create options of a container of function ``ten`` as the gateway made it (one
    started and inspected): its environment, binds (the runtime package), limits, network
    and name length, for the baseline to create its containers with the same."""
    http.post("/system/scale/ten", json={"replicas": 1}).raise_for_status()
    flt = {"label": [f"swarmless.gateway={instance}", "swarmless.function=ten"]}
    running: list[dict[str, Any]] = []
    said: set[str] = set()

    def one_ready_and_listed() -> bool:
        # Both views at once: in one CI run the gateway counted a ready container the
        # engine's list did not show (the container gone in between; the gateway starts
        # another for the one replica asked, so waiting for both holds).
        nonlocal running
        if containers(http, "ten").get("ready", 0) < 1:
            return False
        running = engine.api.containers(filters=flt)
        if not running:
            states = str([c["State"] for c in engine.api.containers(all=True, filters=flt)])
            if states not in said:
                said.add(states)
                print(f"  (the gateway counts one ready; the engine runs none: {states})")
        return bool(running)

    wait(one_ready_and_listed)
    info = engine.api.inspect_container(running[0]["Id"])
    http.post("/system/scale/ten", json={"replicas": 0}).raise_for_status()
    wait(lambda: not engine.api.containers(all=True, filters=flt), 60)
    cfg, hc = info["Config"], info["HostConfig"]
    host: dict[str, Any] = {"NetworkMode": hc["NetworkMode"], "Binds": hc.get("Binds") or []}
    for key in ("NanoCpus", "PidsLimit", "LogConfig", "Memory"):
        if hc.get(key):
            host[key] = hc[key]
    return {"env": cfg.get("Env") or [], "host": host, "workdir": cfg.get("WorkingDir")}


def engine_parallel_start(
    engine: docker.DockerClient, n: int, options: dict[str, Any], tag: str
) -> tuple[float, list[float], dict[str, float]]:
    """The engine's own rate: n containers of the image created and started at once, in
    threads, with the create options of the function's containers (``create_options``:
    the same network, binds, limits, environment), a command that only waits. The total
    time, when each container's start returned (seconds from the beginning), and the CPU
    seconds of the whole machine until the last start and of the containers themselves
    (their cgroups, read before they are removed)."""
    ids: list[str] = []
    created: list[float] = []
    started: list[float] = []
    lock = threading.Lock()
    host = engine.api.create_host_config(network_mode=options["host"]["NetworkMode"])
    host.update(options["host"])
    cpu: dict[str, float] = {}
    busy0 = host_cpu()[0]
    t0 = time.perf_counter()

    def one(i: int) -> None:
        c = engine.api.create_container(
            IMAGE,
            command=["python3", "-c", "import time; time.sleep(60)"],
            environment=options["env"],
            working_dir=options["workdir"],
            labels={"swarmless.bench": "scaling", "swarmless.bench-sample": tag},
            host_config=host,
            name=f"swarmless-base-{tag}-{i}-{os.getpid()}",
        )
        with lock:
            ids.append(c["Id"])
            created.append(time.perf_counter() - t0)
        engine.api.start(c["Id"])
        with lock:
            started.append(time.perf_counter() - t0)

    try:
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            list(pool.map(one, range(n)))
        took = time.perf_counter() - t0
        cpu["machine"] = host_cpu()[0] - busy0
        cpu["containers"] = sum(container_cpu(engine, cid) for cid in ids)
        print(
            f"  engine {took * 1000:.0f} ms: the last create at {max(created) * 1000:.0f} ms,"
            f" the last start at {max(started) * 1000:.0f} ms; CPU s: machine"
            f" {cpu['machine']:.2f}, containers {cpu['containers']:.2f}"
            + (" (warm-up)" if tag == "warm-up" else ""),
            flush=True,
        )
    finally:
        for cid in ids:
            with contextlib.suppress(docker.errors.DockerException):
                engine.api.remove_container(cid, force=True)
    return took, sorted(started), cpu


class ReadyCount:
    """The ready count of a function, looked at through one keep-alive connection of the
    standard library's HTTP client: a look costs the machine little CPU beside the starts
    it watches (httpx costs the client about 1 ms a request)."""

    def __init__(self, http: httpx.Client, name: str) -> None:
        url = httpx.URL(str(http.base_url))
        self._conn = http_client.HTTPConnection(url.host, url.port, timeout=30)
        self._path = f"/system/functions/{name}"
        self._headers = {"Authorization": http.headers["Authorization"]}

    def ready(self) -> int:
        self._conn.request("GET", self._path, headers=self._headers)
        resp = self._conn.getresponse()
        body = resp.read()
        check(resp.status == 200, (resp.status, body[:200]))
        return int(json.loads(body)["containers"].get("ready", 0))

    def close(self) -> None:
        self._conn.close()


def zero_to_ten(
    http: httpx.Client,
    engine: docker.DockerClient,
    events: EngineEvents,
    instance: str,
    reps: int,
    gw_pid: int = 0,
) -> dict[str, Any]:
    """Rounds alternate: ours, engine, engine, ours, ... after one round of each, not
    counted (the engine's caches, the gateway's first starts of the function). Each round
    of ours begins with no container of the function in the engine, and the engine's
    create events of the round are counted (10 expected, no more). Ours is timed by one
    request, ``POST /system/scale`` with ``"wait"``: the gateway answers once all ten have
    asked for work (checked in its answer), woken by each; the plot's timeline samples the
    ready count every 100 ms beside it.

    The CPU of each round, in seconds: the whole machine (until ten ready; the engine's:
    until its last start), the ten containers' own (their cgroups, before they go) and,
    for ours, the gateway process (``gw_pid``). On 2 cores the rounds keep the machine
    busy, so what the containers burn in boot shows in the time.

    A pair of rounds (ours and the engine's) during which the hypervisor stole more than 5%
    of the machine's CPU time is run again, three tries at most, the calmest kept
    (``_common.calm``); ``discarded`` and ``stolen`` (per pair kept) say so."""
    options = create_options(engine, http, instance)
    ours: list[float] = []
    base: list[float] = []
    created: list[int] = []
    timelines: dict[str, list[list[float]]] = {"ours": [], "engine": []}
    cpu: dict[str, list[dict[str, float]]] = {"ours": [], "engine": []}
    flt = {"label": [f"swarmless.gateway={instance}", "swarmless.function=ten"]}
    labels = {"swarmless.gateway": instance, "swarmless.function": "ten"}
    look = ReadyCount(http, "ten")

    def round_ours(counted: bool) -> tuple[float, int, list[float], dict[str, float]]:
        wait(lambda: not engine.api.containers(all=True, filters=flt), 60)
        line: list[tuple[float, int]] = [(0.0, 0)]
        answered = threading.Event()

        def sample() -> None:
            # the timeline of the plot only: the ready count every 100 ms while the scale
            # waits (the time measured is the scale's answer, not these looks)
            while not answered.wait(0.1):
                ready = look.ready()
                if ready != line[-1][1]:
                    line.append((time.perf_counter() - t0, ready))

        busy0, gw0 = host_cpu()[0], proc_cpu(gw_pid) if gw_pid else 0.0
        wall0, t0 = time.time(), time.perf_counter()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        # one request: the gateway answers once all ten are ready (``"wait"``), woken by
        # each container's first ask for work; nothing polls it for the time
        r = http.post("/system/scale/ten", json={"replicas": 10, "wait": 120})
        took = time.perf_counter() - t0
        answered.set()
        sampler.join()
        check(r.status_code == 200, ("zero to ten: the scale did not end ready", r.text[:300]))
        counts = r.json()["containers"]
        check(counts["ready"] == 10 and counts["starting"] == 0, counts)
        line.append((took, 10))
        used = {"machine": host_cpu()[0] - busy0}
        if gw_pid:
            used["gateway"] = proc_cpu(gw_pid) - gw0
        used["containers"] = sum(
            container_cpu(engine, c["Id"]) for c in engine.api.containers(filters=flt)
        )
        evs = events.wait_for(labels, wall0, ("create", "start"))
        creates = [t - wall0 for t, a, _ in evs if a == "create" and t <= wall0 + took]
        starts = [t - wall0 for t, a, _ in evs if a == "start" and t <= wall0 + took]
        print(
            f"  ours {took * 1000:.0f} ms: {len(creates)} created, the last create at "
            f"{max(creates, default=0) * 1000:.0f} ms, the last start at "
            f"{max(starts, default=0) * 1000:.0f} ms; CPU s: "
            + ", ".join(f"{k} {v:.2f}" for k, v in used.items())
            + ("" if counted else " (warm-up)"),
            flush=True,
        )
        http.post("/system/scale/ten", json={"replicas": 0}).raise_for_status()
        wait(lambda: not engine.api.containers(all=True, filters=flt), 60)
        # the time each container became ready, as the engine baseline's list
        times: list[float] = []
        for t, n in line[1:]:
            times += [t] * max(0, n - len(times))
        time.sleep(1)
        return took, len(creates), times, used

    round_ours(counted=False)
    engine_parallel_start(engine, 10, options, "warm-up")
    time.sleep(1)
    discarded: list[dict[str, Any]] = []
    stolen: list[float] = []
    for rep in range(reps):
        order = ("ours", "engine") if rep % 2 == 0 else ("engine", "ours")

        def pair(rep: int = rep, order: tuple[str, str] = order) -> dict[str, Any]:
            got: dict[str, Any] = {}
            for kind in order:
                if kind == "ours":
                    got["ours"] = round_ours(counted=True)
                else:
                    got["engine"] = engine_parallel_start(engine, 10, options, f"ten-{rep}")
                    time.sleep(1)
            return got

        got, share = calm(pair, f"zero to ten round {rep + 1}", discarded)
        stolen.append(share)
        took, n_created, times, used = got["ours"]
        ours.append(took)
        created.append(n_created)
        timelines["ours"].append(times)
        cpu["ours"].append(used)
        took, started, used = got["engine"]
        base.append(took)
        timelines["engine"].append(started)
        cpu["engine"].append(used)
    look.close()
    return {
        "ours": ours,
        "engine": base,
        "timelines": timelines,
        "created": created,
        "cpu": cpu,
        "discarded": discarded,
        "stolen": stolen,
    }


class EngineEvents:
    """The engine's container events (create, start, die, destroy), read in a thread:
    what the engine itself did and when (its clock is this host's wall clock)."""

    def __init__(self, engine: docker.DockerClient) -> None:
        self._stream = engine.events(
            decode=True,
            filters={"type": "container", "event": ["create", "start", "die", "destroy"]},
        )
        self._seen: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(Exception):  # closed: the stream ends
            for ev in self._stream:
                with self._lock:
                    self._seen.append(ev)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._stream.close()

    def of(
        self, labels: dict[str, str], since: float, until: float
    ) -> list[tuple[float, str, str]]:
        """(wall time, action, container id) of the containers carrying ``labels``."""
        out = []
        with self._lock:
            seen = list(self._seen)
        for ev in seen:
            attrs = ev.get("Actor", {}).get("Attributes", {})
            t = int(ev.get("timeNano", 0)) / 1e9
            if since <= t <= until and all(attrs.get(k) == v for k, v in labels.items()):
                out.append((t, str(ev.get("Action")), str(ev.get("id", ""))[:12]))
        return sorted(out)

    def wait_for(
        self, labels: dict[str, str], since: float, actions: tuple[str, ...], timeout: float = 5
    ) -> list[tuple[float, str, str]]:
        """The events of ``labels`` since ``since``, once each of ``actions`` was seen."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.of(labels, since, time.time() + 1)
            if {a for _, a, _ in got} >= set(actions) or time.monotonic() > deadline:
                return got
            time.sleep(0.01)


#: ``run()``'s command: the handler imported and called once, its answer on stdout.
RUN_ONCE = (
    "import sys; from handler import handle; sys.stdout.buffer.write(handle({'body': b''}, None))"
)
#: Where warm containers have the bytecode of the runtime's imports (swarmless.runtime.bytecode).
BYTECODE_MOUNT = "/opt/swarmless-pyc"
#: Seconds after a first call's answer during which a second container would still count
#: (a planner step or two: the gateway plans every second).
COUNT_GRACE = 1.5


def first_call_vs_run(
    http: httpx.Client,
    engine: docker.DockerClient,
    events: EngineEvents,
    instance: str,
    samples: int,
) -> dict[str, Any]:
    """The first call of a warm function with no container vs ``run()`` of the same image
    (and, for context, ``run()`` on the function network), in rotating order, on the
    client's clocks (``perf_counter`` for the latency, the wall clock to place the engine's
    events: create, start, the runtime asking for work, the answer).

    Each first call is to a function deployed just before with room to scale
    (``max_containers`` 10): no container of it existed (checked in the engine), and the
    engine's create events for it are counted from the call until ``COUNT_GRACE`` seconds
    after its answer. Both sides are warmed up first: a ``run()`` (the page cache) and one
    first call of a function of the image (the image's one-time bytecode build, done in
    the background at deploy: its end is awaited, and each sample says whether its
    container had the bytecode mounted)."""
    client = swarmless.from_env()
    cmd = ["python3", "-c", RUN_ONCE]
    network = f"swarmless-{instance}"
    check(client.run(IMAGE, cmd, labels={"swarmless.bench": "scaling"}) == b"ok", "run()")
    since = time.time()
    deploy(http, name="first-warm-up", max_containers=1, idle_timeout=600)
    check(http.post("/function/first-warm-up", content=b"0").status_code == 200, "warm-up")
    http.delete("/system/functions/first-warm-up").raise_for_status()
    # the build container goes once the bytecode is in place
    building = {"swarmless.instance": instance, "swarmless.kind": "bytecode"}
    seen = events.wait_for(building, since, ("destroy",), timeout=120)
    built = any(a == "destroy" for _, a, _ in seen)
    print(f"  the image's bytecode build: {'done' if built else 'not seen'}", flush=True)
    out: dict[str, Any] = {"first": [], "run": [], "run-net": [], "samples": [], "containers": []}
    kinds = ["first", "run", "run-net"]
    for i in range(samples):
        for kind in kinds:
            if kind != "first":
                tag = {"swarmless.bench": "scaling", "swarmless.bench-sample": f"{kind}-{i}"}
                wall0, t0 = time.time(), time.perf_counter()
                got = client.run(
                    IMAGE, cmd, labels=tag, network=network if kind == "run-net" else None
                )
                took = time.perf_counter() - t0
                check(got == b"ok", got)
                evs = events.wait_for(tag, wall0, ("create", "start", "die"))
                at = {a: t for t, a, _ in reversed(evs)}  # the first of each
                out[kind].append(took)
                marks = [("create", at.get("create")), ("start", at.get("start"))]
                out["samples"].append(
                    {
                        "kind": kind,
                        "seconds": took,
                        "phases": _phases(wall0, wall0 + took, [*marks, ("exited", at.get("die"))]),
                    }
                )
                continue
            name = f"first-{i}"
            deploy(http, name=name, max_containers=10, idle_timeout=600)
            labels = {"swarmless.gateway": instance, "swarmless.function": name}
            flt = [f"{k}={v}" for k, v in labels.items()]
            before = container_states(engine, flt)
            wall0, t0 = time.time(), time.perf_counter()
            r = http.post(f"/function/{name}", content=b"0")
            took = time.perf_counter() - t0
            wall1 = wall0 + took
            check(r.status_code == 200 and r.content == b"ok", (r.status_code, r.text))
            rec = call_record(http, r.headers["x-call-id"])
            time.sleep(max(0.0, wall1 + COUNT_GRACE - time.time()))
            evs = events.wait_for(labels, wall0, ("create", "start"))
            # in the order the engine created them
            created = list(
                dict.fromkeys(
                    cid for t, a, cid in evs if a == "create" and t <= wall1 + COUNT_GRACE
                )
            )
            after = container_states(engine, flt)
            # the container that served it: the record's short id (or its worker's id
            # when it asked for work before its start returned), else the first created
            served = str(rec.get("container") or "")
            mine = [c for c in created if c.startswith(served) or served.startswith(c)]
            cid = (mine or created or [""])[0]
            mounts: list[str] = []
            with contextlib.suppress(docker.errors.DockerException):
                mounts = [m["Destination"] for m in engine.api.inspect_container(cid)["Mounts"]]
            http.delete(f"/system/functions/{name}").raise_for_status()
            at = {a: t for t, a, c in reversed(evs) if c == cid}
            ready = rec["started_at"] / 1000 if rec.get("started_at") else None
            cold = not before and rec.get("cold") is True
            sample = {
                "kind": "first",
                "was": "cold" if cold else "not cold",
                "seconds": took,
                "engine_before": before,
                "engine_after": after,
                "created": created,
                "record_cold": rec.get("cold"),
                "bytecode": BYTECODE_MOUNT in mounts,
                "phases": _phases(
                    wall0,
                    wall1,
                    [("create", at.get("create")), ("start", at.get("start")), ("ready", ready)],
                ),
            }
            out["samples"].append(sample)
            if cold:
                out["first"].append(took)
                out["containers"].append(len(created))
            else:
                print(f"warning: first call {name} was not cold: {before} {rec}", flush=True)
        kinds = kinds[1:] + kinds[:1]  # each kind in each position in turn
    return out


def _phases(t0: float, t1: float, marks: list[tuple[str, float | None]]) -> dict[str, float | None]:
    """Milliseconds of each phase: from the previous mark (the request) to this one, and
    from the last mark to the answer (``answered``)."""
    out: dict[str, float | None] = {}
    prev: float | None = t0
    for name, t in marks:
        out[name] = (t - prev) * 1000 if t is not None and prev is not None else None
        prev = t
    out["answered"] = (t1 - prev) * 1000 if prev is not None else None
    return out


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


SECTIONS = ("first", "ten", "paused", "memory", "step")


def count_target(name: str, value: int, goal: int) -> dict[str, object]:
    """The one line of a count's target (``NAME containers N (target <= G: PASS)``)."""
    ok = value <= goal
    print(f"{name} containers {value} (target <= {goal}: {'PASS' if ok else 'FAIL'})", flush=True)
    return {
        "name": name,
        "unit": "containers",
        "value": value,
        "op": "<=",
        "target": goal,
        "pass": ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=5, help="zero-to-ten rounds of each side")
    parser.add_argument("--samples", type=int, default=5, help="cold and paused first calls")
    parser.add_argument(
        "--first-samples", type=int, default=0, help="first calls vs run() (default: --samples)"
    )
    parser.add_argument("--step-seconds", type=float, default=15.0)
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run only these parts (repeat; default: all)",
    )
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args()
    first_samples = args.first_samples or args.samples
    if not (
        0 < args.reps <= 20
        and 0 < args.samples <= 50
        and 0 < first_samples <= 50
        and 2 <= args.step_seconds <= 120
    ):
        parser.error("--reps 1..20, --samples 1..50, --first-samples 1..50, --step-seconds 2..120")
    only = set(args.only or SECTIONS)
    exit_on_sigterm()
    engine = docker.from_env()
    build_image(engine, IMAGE, HANDLER, "scaling")
    result: dict[str, Any] = {"targets": [], "loadavg": [os.getloadavg()[0]]}
    events = EngineEvents(engine)
    try:
        with (
            gateway(engine, "scaling") as gw,
            httpx.Client(base_url=gw.url, headers=gw.headers, timeout=120) as http,
        ):
            if "first" in only:
                print("first call from zero vs run() (interleaved, engine-checked)...", flush=True)
                fc = first_call_vs_run(http, engine, events, gw.instance, first_samples)
                result["first_call"] = fc
                report_first_calls(fc)
                if not fc["first"]:
                    raise SystemExit("no first call was checked cold: no ratio to print")
                ours, base = statistics.median(fc["first"]), statistics.median(fc["run"])
                result["targets"].append(
                    target("scaling-first-call-vs-run", ours / base, "<=", 1.1)
                )
                result["targets"].append(
                    count_target("scaling-single-first-call", max(fc["containers"]), 1)
                )

            if "ten" in only:
                print("zero to ten (interleaved with the engine's parallel start)...", flush=True)
                deploy(http, name="ten", max_containers=10, idle_timeout=600)
                ten = zero_to_ten(http, engine, events, gw.instance, args.reps, gw.pid)
                ours, base = statistics.median(ten["ours"]), statistics.median(ten["engine"])
                print(f"zero to 10 ready:    {ours * 1000:.0f} ms (median of {args.reps})")
                print(f"engine, 10 parallel: {base * 1000:.0f} ms (create+start, median)")
                print("CPU s per round (medians), ours / engine: " + cpu_line(ten["cpu"]))
                result["zero_to_ten"] = ten
                result["targets"].append(target("scaling-zero-to-ten", ours / base, "<=", 1.1))

            if "paused" in only:
                print("cold vs paused first calls (interleaved, engine-checked)...", flush=True)
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
                print(
                    f"first call from paused: {thaw * 1000:.0f} ms (median of {len(cp['paused'])})"
                )
                result["targets"].append(target("scaling-paused-vs-cold", thaw / cold, "<=", 0.1))

            if "memory" in only:
                print("idle memory...", flush=True)
                mem = idle_memory(http, engine, gw.instance)
                result["idle_memory"] = mem
                print(f"idle warm container: cgroup {mem['cgroup_mb']:.1f} MB")
                result["targets"].append(target("scaling-idle-rss", mem["rss_mb"], "<=", 30, "MB"))

            if "step" in only:
                print("step load 1 -> 32 clients...", flush=True)
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
        events.close()
        with contextlib.suppress(docker.errors.DockerException):
            engine.images.remove(IMAGE, force=True)
    result["loadavg"].append(os.getloadavg()[0])
    print(
        f"load average (1 min) at start and end: {result['loadavg'][0]:.2f}, "
        f"{result['loadavg'][1]:.2f}"
    )
    write_json(args.json, result)


def report_first_calls(fc: dict[str, Any]) -> None:
    """Each sample with its phases, and the medians of each side's phases."""
    for s in fc["samples"]:
        ph = "  ".join(
            f"{k} {v:6.1f}" if v is not None else f"{k}      ?" for k, v in s["phases"].items()
        )
        extra = ""
        if s["kind"] == "first":
            states = ",".join(sorted(set(s["engine_before"].values()))) or "none"
            extra = (
                f"  (engine before: {states}; created {len(s['created'])}; "
                f"bytecode {'mounted' if s['bytecode'] else 'NOT mounted'})"
            )
        print(f"  {s['kind']:<7} {s['seconds'] * 1000:7.1f} ms  {ph}{extra}", flush=True)
    for kind in ("first", "run", "run-net"):
        rows = [s["phases"] for s in fc["samples"] if s["kind"] == kind]
        if not rows:
            continue
        med = {
            k: statistics.median(v for r in rows if (v := r.get(k)) is not None)
            for k in rows[0]
            if any(r.get(k) is not None for r in rows)
        }
        total = statistics.median(fc[kind]) * 1000 if fc[kind] else float("nan")
        shown = ", ".join(f"{k} {v:.0f}" for k, v in med.items())
        print(f"{kind:<7} median {total:.0f} ms; phases (ms, medians): {shown}", flush=True)
    print(f"containers created per first call: {fc['containers']}", flush=True)


if __name__ == "__main__":
    main()
