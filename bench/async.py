"""Async invocations: enqueue rate, enqueue-to-start delay, async drain vs sync drain.

    .venv/bin/python bench/async.py [--calls 2000] [--clients 64] [--rounds 5]
                                    [--start-samples 200] [--enqueue-rounds 5]
                                    [--enqueue-seconds 5] [--enqueue-connections 32]
                                    [--store sqlite|postgres] [--pg-url URL]
                                    [--drain-only] [--prefix bench] [--json PATH]

Starts a gateway as its own process, deploys a warm no-op function with its containers
kept ready, and measures over loopback. The store: ``--store sqlite`` (the default, a file
in a temporary directory) or ``--store postgres``: a database of its own, created for the
run on the server at ``--pg-url`` (``scripts/postgres.sh`` starts the project's one and
prints its URL, the default) and dropped at the end. ``--drain-only`` measures the drain
alone (no enqueue-to-start samples, no enqueue rounds). ``--prefix`` names what the run
creates (instance ``PREFIX-async-PID``, image ``PREFIX-bench/async-noop``, database
``PREFIX_async_PID``), so that runs side by side never touch each other's objects.

- enqueue rate: async calls accepted (durable, 202) per second under a flood from
  ``wrk`` (C, one thread, ``--enqueue-connections`` keep-alive connections, so the load
  generator does not starve the gateway of the 2 cores; ``apt-get install -y wrk``),
  ``--enqueue-seconds`` a round; every 202's id is then checked to be in the store (a
  row of its queue, or a record once the call succeeded). Two kinds of rounds alternate:
  ``held``, calls of a function whose one container is busy, so they wait in the queue
  (the intake alone: **the target, >= 3,000/s on SQLite**), and ``run``, calls of the
  no-op function while its 4 warm containers run them as they come (printed beside it,
  with the rate the whole machine's CPU per accepted-and-run call allows on these cores:
  running 3,000 no-op calls a second is more than this 2-core machine runs even as sync
  calls, so that figure is bound by the running, not by the intake). CPU per accepted
  call: the whole machine, the gateway process, the worker containers, wrk;
- enqueue-to-start delay with a free warm container (calls sent one at a time), beside
  the same delay of sync calls, samples alternating: ``started_at - queued_at`` from the
  records of both; target async p50 <= 10 ms;
- drain time of ``--calls`` no-op async calls vs the same number of sync calls over the
  same warm containers; target ratio <= 1.3. Both on the **same clock, the client's**
  (``time.monotonic``): from the first request sent to the moment the client knows the
  last call finished (sync: the last answer; async: the store has no queued nor running
  call of the function left, polled every 5 ms once the last accepted call's result is
  there). Rounds alternate (async, sync, sync, async, ...); the medians are compared. The
  same ratio from the records' own timestamps (first ``queued_at`` to last
  ``finished_at``, both kinds) is printed beside it as a check. A round (its async and
  its sync drain) during which the hypervisor stole more than 5% of the machine's CPU time
  is run again, three tries at most, the calmest kept (``_common.calm``; the JSON keeps the
  rounds discarded and the share stolen during each one kept);
- the same drain rounds again with a light client, printed beside, no target: ``wrk`` (C,
  one thread, the same ``--clients`` connections, exactly ``--calls`` requests; skipped
  without wrk). The Python client's 64 threads spend about as much CPU per call as the
  gateway, on the same 2 cores; with wrk the gateway's own cost of an async call against
  a sync one shows (``NAME-light-client ratio X``).

Each target prints one line ``NAME ratio X (target OP Y: PASS|FAIL)``. Everything it
starts carries ``swarmless.bench=async`` or the gateway's instance (``bench-...``) and is
removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import http.client
import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import docker
import httpx

from _common import (
    Gateway,
    build_image,
    calm,
    check,
    children_cpu,
    container_cpu,
    exit_on_sigterm,
    gateway,
    host_cpu,
    pct,
    proc_cpu,
    target,
    write_json,
)
from enqueue_load import STORED, have_wrk, python_enqueue, stored_ids, wrk_enqueue

#: The function's image (``--prefix`` names it: ``PREFIX-bench/async-noop``).
IMAGE = "swarmless-bench/async-noop:latest"
#: The default ``--pg-url``: what ``scripts/postgres.sh`` prints.
PG_URL = "postgresql://postgres@127.0.0.1:54329/swarmless"
HANDLER = (
    "import time\n\n\ndef handle(event, context):\n    return b'ok'\n\n\n"
    "def hold(event, context):\n    time.sleep(900)\n    return b'ok'\n"
)
FINAL = ("succeeded", "failed", "timeout", "dead", "cancelled")


@dataclasses.dataclass
class Answer:
    status_code: int
    headers: dict[str, str]


def fire(url: str, path: str, n: int, clients: int) -> list[Answer]:
    """``n`` POSTs from ``clients`` threads, each with its own keep-alive connection.

    (httpx's async pool is the bottleneck at 64 connections: ~150 req/s here.)
    """
    parts = urllib.parse.urlsplit(url)
    next_i = iter(range(n))
    lock = threading.Lock()
    answers: list[Answer | None] = [None] * n

    def worker() -> None:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=120)
        while True:
            with lock:
                i = next(next_i, None)
            if i is None:
                break
            conn.request("POST", path, body=str(i).encode())
            r = conn.getresponse()
            r.read()
            answers[i] = Answer(r.status, {k.lower(): v for k, v in r.getheaders()})
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return [a for a in answers if a is not None]


#: The light client of the drain (``wrk``, C, one thread): exactly ``DRAIN_CALLS`` requests
#: over its keep-alive connections (each request waits for a reservation in ``delay()``;
#: past the count a connection sleeps), then, once every answer came, each one's status
#: and call id to ``DRAIN_OUT`` and exit (the summary of a run that went to its duration
#: means answers were missing).
LIGHT_LUA = r"""
wrk.method = "POST"
wrk.body = "1"
local limit = tonumber(os.getenv("DRAIN_CALLS"))
local reserved, got, lines = 0, 0, {}
function delay()
  if reserved >= limit then return 3600000 end
  reserved = reserved + 1
  return 0
end
function response(status, headers, body)
  got = got + 1
  lines[got] = status .. " " .. (headers["x-call-id"] or headers["X-Call-Id"] or "")
  if got >= limit then
    local f = assert(io.open(os.getenv("DRAIN_OUT"), "w"))
    f:write(table.concat(lines, "\n"), "\n")
    f:close()
    os.exit(0)
  end
end
"""


def fire_light(url: str, path: str, n: int, clients: int) -> list[Answer]:
    """:func:`fire` with ``wrk`` as the client (:data:`LIGHT_LUA`): ``n`` POSTs over
    ``clients`` keep-alive connections from one C thread, which leaves the cores to the
    gateway (the Python client's threads use about as much CPU per call as the gateway)."""
    with tempfile.TemporaryDirectory(prefix="swarmless-bench-drain-") as tmp:
        script, out = Path(tmp) / "drain.lua", Path(tmp) / "drain.out"
        script.write_text(LIGHT_LUA)
        proc = subprocess.run(
            ["wrk", "-t1", f"-c{clients}", "-d300s", "--timeout", "60s", "-s", str(script),
             url + path],
            capture_output=True, text=True, timeout=330, check=False,
            env={**os.environ, "DRAIN_CALLS": str(n), "DRAIN_OUT": str(out)},
        )  # fmt: skip
        check(
            proc.returncode == 0 and out.exists(),
            f"wrk did not get {n} answers ({proc.returncode}): {proc.stdout[-400:]}"
            f"{proc.stderr[-400:]}",
        )
        answers = []
        for line in out.read_text().splitlines():
            status, _, call_id = line.partition(" ")
            answers.append(Answer(int(status), {"x-call-id": call_id} if call_id else {}))
    return answers


def records(http: httpx.Client, ids: set[str], timeout: float) -> list[dict[str, Any]]:
    """Poll until every call in ``ids`` is final; their records."""
    deadline = time.monotonic() + timeout
    while True:
        rows = http.get("/invocations", params={"function": "noop", "limit": 10000}).json()
        mine = [r for r in rows if r["id"] in ids]
        if len(mine) == len(ids) and all(r["status"] in FINAL for r in mine):
            return mine
        if time.monotonic() > deadline:
            raise SystemExit(f"calls not final after {timeout}s: {len(mine)} of {len(ids)} seen")
        time.sleep(0.2)


def record(http: httpx.Client, call_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        r = http.get(f"/invocations/{call_id}")
        if r.status_code == 200 and r.json().get("status") in FINAL:
            return dict(r.json())
        if time.monotonic() > deadline:
            raise SystemExit(f"no final record of {call_id} after 10 s")
        time.sleep(0.02)


@contextlib.contextmanager
def pg_database(server_url: str, name: str) -> Iterator[str]:
    """A database ``name`` of its own on the PostgreSQL server at ``server_url``, created
    for the run and dropped at its end (with the connections still open to it); its URL."""
    check(re.fullmatch(r"[a-z][a-z0-9_]{0,62}", name) is not None, name)
    base = server_url.rsplit("/", 1)[0]

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(f"{base}/postgres", timeout=10)
        try:
            await conn.execute(sql, timeout=60)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def pg_stored_ids(url: str, function: str) -> set[str]:
    """Ids of the async calls of ``function`` in the PostgreSQL store at ``url``: in its
    queue, or recorded (``enqueue_load.STORED``)."""

    async def read() -> set[str]:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            rows = await conn.fetch(STORED.format(p="$1"), function)
            return {str(r[0]) for r in rows}
        finally:
            await conn.close()

    return asyncio.run(read())


def pending(http: httpx.Client) -> bool:
    """Any call of the function still queued or running in the store."""
    for status in ("queued", "running"):
        r = http.get("/invocations", params={"function": "noop", "status": status, "limit": 1})
        if r.json():
            return True
    return False


def start_delays(http: httpx.Client, samples: int) -> dict[str, list[float]]:
    """Queue-to-start of single calls with a free warm container, async and sync alternating."""
    out: dict[str, list[float]] = {"async": [], "sync": []}
    for i in range(samples):
        for kind in ("async", "sync") if i % 2 == 0 else ("sync", "async"):
            if kind == "async":
                r = http.post("/async-function/noop", content=str(i).encode())
                call_id = r.headers["x-call-id"]
                res = http.get(f"/invocations/{call_id}/result", params={"wait": "10"})
                check(res.status_code == 200, res.text)
            else:
                r = http.post("/function/noop", content=str(i).encode())
                check(r.status_code == 200, r.text)
                call_id = r.headers["x-call-id"]
            row = record(http, call_id)
            out[kind].append(float(row["started_at"] - row["queued_at"]))
    return out


def warm_state(http: httpx.Client) -> None:
    """A drain sample counts only if it runs on the 4 warm containers, ready and idle
    before and after it (as the gateway counts them; idle within 10 s of its end)."""
    want = {"ready": 4, "starting": 0, "draining": 0, "paused": 0, "busy": 0, "in_flight": 0}
    deadline = time.monotonic() + 10
    while True:
        counts = http.get("/system/functions/noop").json()["containers"]
        if {k: int(counts.get(k, 0)) for k in want} == want:
            return
        check(time.monotonic() < deadline, f"drain sample not on 4 idle warm containers: {counts}")
        time.sleep(0.05)


def drain(
    http: httpx.Client,
    url: str,
    kind: str,
    calls: int,
    clients: int,
    gw_pid: int = 0,
    workers: Callable[[], float] | None = None,
    light: bool = False,
) -> dict[str, float]:
    """One round: ``calls`` calls of ``kind``, timed on the client's monotonic clock.

    The sample is checked: the 4 warm containers ready and idle before and after it, every
    call succeeded, warm (not cold), on at most those 4 containers, and no call made
    beyond those sent (the records since the round began). CPU over the round, per
    call: the whole machine, the gateway process (``gw_pid``), the client (this process:
    its HTTP threads and its polling; and ``wrk`` when ``light``: :func:`fire_light` sends
    the calls) and the worker containers (``workers``, their cgroups' CPU seconds so far)."""
    send = fire_light if light else fire
    warm_state(http)
    since = int(time.time() * 1000)  # the records' clock: every call of the round after it
    busy0, total0 = host_cpu()
    gw0 = proc_cpu(gw_pid) if gw_pid else 0.0
    me0 = proc_cpu(os.getpid()) + children_cpu()
    wk0 = workers() if workers else 0.0
    t0 = time.monotonic()
    if kind == "sync":
        answered = send(url, "/function/noop", calls, clients)
        t_end = time.monotonic()
        check(len(answered) == calls, (len(answered), calls))
        check(all(r.status_code == 200 for r in answered), {r.status_code for r in answered})
        accepted_in = t_end - t0
    else:
        answered = send(url, "/async-function/noop", calls, clients)
        accepted_in = time.monotonic() - t0
        codes = {r.status_code for r in answered}
        check(len(answered) == calls and codes == {202}, codes)
        last = answered[-1].headers["x-call-id"]
        http.get(f"/invocations/{last}/result", params={"wait": "300"}, timeout=330)
        deadline = time.monotonic() + 600
        while pending(http):
            if time.monotonic() > deadline:
                raise SystemExit("async calls still pending after 600 s")
            time.sleep(0.005)
        t_end = time.monotonic()
    busy1, total1 = host_cpu()
    gw1 = proc_cpu(gw_pid) if gw_pid else 0.0
    me1 = proc_cpu(os.getpid()) + children_cpu()
    wk1 = workers() if workers else 0.0
    ids = {r.headers["x-call-id"] for r in answered}
    check(len(ids) == calls, f"{calls - len(ids)} calls answered without an id of their own")
    rows = records(http, ids, 600)
    made = http.get("/invocations", params={"function": "noop", "limit": 10000}).json()
    made = [r for r in made if r["queued_at"] >= since]
    check(len(made) == calls, f"{len(made)} calls made in a round of {calls} sent")
    bad = [r["status"] for r in rows if r["status"] != "succeeded"]
    check(not bad, f"{len(bad)} calls did not succeed: {set(bad)}")
    cold = sum(1 for r in rows if r.get("cold"))
    used = {r.get("container") for r in rows}
    check(not cold and len(used) <= 4 and None not in used, f"{cold} cold, containers {used}")
    warm_state(http)
    first = min(int(r["queued_at"]) for r in rows)
    last_done = max(int(r["finished_at"]) for r in rows)
    return {
        "client_seconds": t_end - t0,
        "server_seconds": (last_done - first) / 1000,
        "accepted_seconds": accepted_in,
        "containers_used": len(used),
        "machine_cpu_us_per_call": (busy1 - busy0) / calls * 1e6,
        "gateway_cpu_us_per_call": (gw1 - gw0) / calls * 1e6,
        "client_cpu_us_per_call": (me1 - me0) / calls * 1e6,
        "workers_cpu_us_per_call": (wk1 - wk0) / calls * 1e6,
        "machine_busy": (busy1 - busy0) / max(1e-9, total1 - total0),
    }


#: The enqueue rounds' second function: one container, one call at a time, each call
#: sleeping: what is accepted waits in the queue (intake alone, nothing runs meanwhile).
HOLD = {
    "name": "hold",
    "image": IMAGE,
    "mode": "warm",
    "handler": "handler:hold",
    "concurrency": 1,
    "min_containers": 1,
    "max_containers": 1,
    "async_concurrency": 1,
    "timeout": 900,
    "retries": 0,
    "idle_timeout": 900,
    "queue_size": 200_000,
}


def enqueue_burst(
    engine: docker.DockerClient,
    gw: Gateway,
    function: str,
    args: argparse.Namespace,
    tmp: Path,
) -> dict[str, Any]:
    """One flood of ``/async-function/FUNCTION`` by ``wrk`` (``--enqueue-seconds``,
    ``--enqueue-connections`` keep-alive connections, one thread; Python threads if wrk is
    not installed), then the proof: every
    202's id is in the store, a row of its queue or a record (read beside the running
    gateway; a call that succeeded keeps its record, not its queue row), and the calls
    written beyond them are at most the connections (calls in
    flight when wrk stopped). CPU seconds over the flood, per call accepted: the whole
    machine (``/proc/stat``), the gateway process, the gateway's worker containers (their
    cgroups), the load generator (wrk, or this process's threads without it); *other* is
    the rest (the engine, the kernel, other tenants)."""
    assert gw.data is not None
    pg_url = getattr(args, "store_url", None)
    db = gw.data / "swarmless.db"

    def rows_of() -> set[str]:
        return pg_stored_ids(pg_url, function) if pg_url else stored_ids(db, function)

    flt = {"label": f"swarmless.gateway={gw.instance}"}
    cids = [c["Id"] for c in engine.api.containers(filters=flt)]
    before = rows_of()

    def cpu() -> tuple[float, float, float, float, float]:
        busy, total = host_cpu()
        workers = sum(container_cpu(engine, c) for c in cids)
        # the load generator: wrk (a waited child), or this process's threads without it
        return busy, total, proc_cpu(gw.pid), workers, children_cpu() + proc_cpu(os.getpid())

    url = f"{gw.url}/async-function/{function}"
    c0 = cpu()
    if have_wrk():
        burst = wrk_enqueue(url, args.enqueue_connections, args.enqueue_seconds, tmp)
    else:
        burst = python_enqueue(url, args.enqueue_connections, args.enqueue_seconds)
    c1 = cpu()
    rows = rows_of()
    accepted = set(burst.ids)
    check(len(accepted) == burst.accepted, ("202s without an id", burst.accepted))
    lost = accepted - rows
    check(not lost, f"{len(lost)} calls answered 202 are not in the store")
    extra = rows - before - accepted
    check(len(extra) <= args.enqueue_connections, ("rows beyond the 202s", len(extra)))
    n = max(1, burst.accepted)
    us = {
        "machine": (c1[0] - c0[0]) / n * 1e6,
        "gateway": (c1[2] - c0[2]) / n * 1e6,
        "workers": (c1[3] - c0[3]) / n * 1e6,
        "load": (c1[4] - c0[4]) / n * 1e6,
    }
    us["other"] = us["machine"] - us["gateway"] - us["workers"] - us["load"]
    return {
        "function": function,
        "accepted": burst.accepted,
        "answers": burst.requests,
        "seconds": burst.seconds,
        "rate": burst.rate,
        "p50_ms": burst.p50_ms,
        "p99_ms": burst.p99_ms,
        "other_statuses": burst.other,
        "socket_errors": burst.socket_errors,
        "rows_beyond_202s": len(extra),
        "machine_busy": (c1[0] - c0[0]) / max(1e-9, c1[1] - c0[1]),
        "cpu_us_per_accept": us,
        "loadavg": os.getloadavg()[0],
    }


def enqueue_rounds(
    engine: docker.DockerClient, gw: Gateway, http: httpx.Client, args: argparse.Namespace
) -> dict[str, list[dict[str, Any]]]:
    """The enqueue rate, two kinds of rounds alternating (:func:`enqueue_burst` each):

    - ``run``: calls of ``noop`` while its 4 warm containers run what is accepted, as it
      comes (the gateway accepts and runs at once, as under a real burst); each round
      starts with nothing of it pending. The target is judged on these.
    - ``held``: calls of ``hold`` (:data:`HOLD`), whose one container is busy the whole
      time: what is accepted waits in the queue, so the gateway only accepts.
    """
    http.post("/system/functions", json=HOLD).raise_for_status()
    out: dict[str, list[dict[str, Any]]] = {"run": [], "held": []}
    try:
        deadline = time.monotonic() + 120
        while http.get("/system/functions/hold").json()["containers"].get("ready", 0) < 1:
            if time.monotonic() > deadline:
                raise SystemExit("the hold function's container not ready after 120 s")
            time.sleep(0.2)
        with tempfile.TemporaryDirectory(prefix="swarmless-bench-enqueue-") as tmp:
            for i in range(args.enqueue_rounds):
                for kind in ("run", "held") if i % 2 == 0 else ("held", "run"):
                    if kind == "run":
                        deadline = time.monotonic() + 300
                        while pending(http):
                            if time.monotonic() > deadline:
                                raise SystemExit("async calls still pending after 300 s")
                            time.sleep(0.05)
                    fn = "noop" if kind == "run" else "hold"
                    got = enqueue_burst(engine, gw, fn, args, Path(tmp))
                    out[kind].append(got)
                    us = got["cpu_us_per_accept"]
                    print(
                        f"  enqueue round {i + 1} {kind:<4}: {got['accepted']} accepted (202)"
                        f" in {got['seconds']:.2f} s = {got['rate']:,.0f}/s, every one a row"
                        f" of the queue (+{got['rows_beyond_202s']} in flight at the end);"
                        f" p50 {got['p50_ms']:.1f} ms p99 {got['p99_ms']:.1f} ms; other"
                        f" answers {got['other_statuses'] or 'none'}; CPU us/accept machine"
                        f" {us['machine']:.0f} (gateway {us['gateway']:.0f}, workers"
                        f" {us['workers']:.0f}, load generator {us['load']:.0f}, other"
                        f" {us['other']:.0f});"
                        f" machine busy {got['machine_busy']:.0%}, load {got['loadavg']:.2f}",
                        flush=True,
                    )
    finally:
        with contextlib.suppress(httpx.HTTPError):
            http.delete("/system/functions/hold")
    return out


def measure(engine: docker.DockerClient, gw: Gateway, args: argparse.Namespace) -> dict[str, Any]:
    url, token = gw.url, gw.token
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as http:
        spec = {
            "name": "noop",
            "image": IMAGE,
            "mode": "warm",
            "handler": "handler:handle",
            "concurrency": 4,
            "min_containers": 4,
            "max_containers": 4,
            "idle_timeout": 600,
            "queue_size": 100_000,
        }
        http.post("/system/functions", json=spec).raise_for_status()
        # Warm up: every container ready, connections open.
        deadline = time.monotonic() + 120
        while http.get("/system/functions/noop").json()["containers"].get("ready", 0) < 4:
            if time.monotonic() > deadline:
                raise SystemExit("4 ready containers not there after 120 s")
            time.sleep(0.2)
        fire(url, "/function/noop", 200, args.clients)
        fire(url, "/async-function/noop", 200, args.clients)
        while pending(http):
            time.sleep(0.1)

        flt = {"label": f"swarmless.gateway={gw.instance}"}
        cids = [c["Id"] for c in engine.api.containers(filters=flt)]

        def workers() -> float:
            return sum(container_cpu(engine, cid) for cid in cids)

        delays: dict[str, list[float]] = {"async": [], "sync": []}
        if not args.drain_only:
            print(f"enqueue-to-start, {args.start_samples} samples of each...", flush=True)
            delays = start_delays(http, args.start_samples)
        discarded: list[dict[str, Any]] = []
        stolen: list[float] = []

        def drain_rounds(light: bool) -> dict[str, list[dict[str, float]]]:
            """``--rounds`` interleaved pairs (async, sync; then sync, async; ...)."""
            rounds: dict[str, list[dict[str, float]]] = {"async": [], "sync": []}
            what = "light-client drain" if light else "drain"
            for i in range(args.rounds):

                def pair(i: int = i) -> dict[str, dict[str, float]]:
                    sides: dict[str, dict[str, float]] = {}
                    for kind in ("async", "sync") if i % 2 == 0 else ("sync", "async"):
                        sides[kind] = got = drain(
                            http, url, kind, args.calls, args.clients, gw.pid, workers, light
                        )
                        print(
                            f"  round {i + 1} {kind:<5} {what} {got['client_seconds']:.2f} s"
                            f" client clock ({args.calls / got['client_seconds']:.0f} calls/s),"
                            f" {got['server_seconds']:.2f} s by the records"
                            f" (all answered in {got['accepted_seconds']:.2f} s); CPU us/call"
                            f" machine {got['machine_cpu_us_per_call']:.0f}, gateway"
                            f" {got['gateway_cpu_us_per_call']:.0f}, client"
                            f" {got['client_cpu_us_per_call']:.0f}, workers"
                            f" {got['workers_cpu_us_per_call']:.0f}; machine busy"
                            f" {got['machine_busy']:.0%}",
                            flush=True,
                        )
                    return sides

                sides, share = calm(pair, f"{what} round {i + 1}", discarded)
                stolen.append(share)
                for kind, got in sides.items():
                    rounds[kind].append(got)
            return rounds

        rounds = drain_rounds(light=False)
        light: dict[str, list[dict[str, float]]] = {"async": [], "sync": []}
        if have_wrk():
            print(f"the drain again with wrk -t1 -c{args.clients} as the client...", flush=True)
            light = drain_rounds(light=True)
        else:
            print("wrk not found: no light-client drain (apt-get install -y wrk)", flush=True)
        drained = {"discarded": discarded, "stolen": stolen, "light_drains": light}
        if args.drain_only:
            return {"start_delays_ms": delays, "drains": rounds, "enqueue": {}, **drained}
        print(
            f"enqueue rate: {args.enqueue_rounds} rounds of {args.enqueue_seconds:g} s of each"
            f" kind, {'wrk -t1' if have_wrk() else 'Python threads,'}"
            f" -c{args.enqueue_connections}...",
            flush=True,
        )
        enqueues = enqueue_rounds(engine, gw, http, args)
    return {"start_delays_ms": delays, "drains": rounds, "enqueue": enqueues, **drained}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="drain rounds of each kind")
    parser.add_argument("--start-samples", type=int, default=200)
    parser.add_argument("--enqueue-rounds", type=int, default=5, help="enqueue-rate rounds")
    parser.add_argument("--enqueue-seconds", type=float, default=5.0)
    parser.add_argument("--enqueue-connections", type=int, default=32)
    parser.add_argument("--json", help="write the numbers here")
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--pg-url", default=PG_URL, help="the PostgreSQL server (--store postgres)")
    parser.add_argument(
        "--drain-only", action="store_true", help="only the drain rounds (async vs sync)"
    )
    parser.add_argument(
        "--prefix", default="bench", help="names what the run creates (lowercase, a-z0-9-)"
    )
    args = parser.parse_args()
    if not (
        0 < args.calls <= 20_000
        and 0 < args.clients <= 256
        and 0 < args.rounds <= 20
        and 0 < args.start_samples <= 2000
    ):
        parser.error("--calls 1..20000, --clients 1..256, --rounds 1..20, --start-samples 1..2000")
    if not (
        0 < args.enqueue_rounds <= 20
        and 0 < args.enqueue_seconds <= 60
        and 0 < args.enqueue_connections <= 256
    ):
        parser.error(
            "--enqueue-rounds 1..20, --enqueue-seconds 1..60, --enqueue-connections 1..256"
        )
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,30}", args.prefix):
        parser.error("--prefix: lowercase letters, digits and '-', starting with a letter")
    if not have_wrk() and not args.drain_only:
        print(
            "wrk not found: the enqueue rate is measured with Python threads, heavier on a"
            " small machine (apt-get install -y wrk for the light load generator)",
            flush=True,
        )
    exit_on_sigterm()
    global IMAGE
    IMAGE = f"{args.prefix}-bench/async-noop:latest"
    HOLD["image"] = IMAGE
    instance = f"{args.prefix}-async-{os.getpid()}"
    engine = docker.from_env()
    build_image(engine, IMAGE, HANDLER, "async")
    try:
        with contextlib.ExitStack() as stack:
            env: dict[str, str] = {}
            args.store_url = None
            if args.store == "postgres":
                args.store_url = stack.enter_context(
                    pg_database(args.pg_url, instance.replace("-", "_"))
                )
                env["SWARMLESS_STORE_URL"] = args.store_url
            gw = stack.enter_context(gateway(engine, "async", instance=instance, env=env))
            result = measure(engine, gw, args)
    finally:
        with contextlib.suppress(docker.errors.DockerException):
            engine.images.remove(IMAGE, force=True)
    result["store"] = args.store
    report(args, result)
    write_json(args.json, result)


def drain_target(store: str) -> str:
    """The drain target's name: ``async-drain-vs-sync`` on SQLite (the default store),
    ``async-drain-vs-sync-postgres`` on PostgreSQL (both have the same goal, issue 16)."""
    return "async-drain-vs-sync" + ("" if store == "sqlite" else f"-{store}")


def light_report(args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    """Print the light-client drain (wrk as the client), if it ran; its summary."""
    light = result.get("light_drains") or {}
    if not (light.get("async") and light.get("sync")):
        return {"drain_light_ratio": None}
    med = {
        kind: {
            k: statistics.median(r[k] for r in light[kind])
            for k in ("client_seconds", "gateway_cpu_us_per_call", "machine_busy")
        }
        for kind in ("async", "sync")
    }
    a, s = med["async"], med["sync"]
    ratio = a["client_seconds"] / s["client_seconds"]
    print(
        f"drain with a light client (wrk -t1 -c{args.clients}, medians): async"
        f" {a['client_seconds']:.2f} s, sync {s['client_seconds']:.2f} s; gateway CPU us/call"
        f" async {a['gateway_cpu_us_per_call']:.0f}, sync {s['gateway_cpu_us_per_call']:.0f};"
        f" machine busy async {a['machine_busy']:.0%}, sync {s['machine_busy']:.0%}"
    )
    name = f"{drain_target(args.store)}-light-client"
    print(f"{name} ratio {ratio:.2f} (wrk as the client; no target)")
    return {
        "drain_light_ratio": ratio,
        "drain_light_async_s": a["client_seconds"],
        "drain_light_sync_s": s["client_seconds"],
        "drain_light_gateway_cpu_us": {
            "async": a["gateway_cpu_us_per_call"],
            "sync": s["gateway_cpu_us_per_call"],
        },
    }


def report(args: argparse.Namespace, result: dict[str, Any]) -> None:
    calls = args.calls
    d = result["drains"]
    a_client = statistics.median(r["client_seconds"] for r in d["async"])
    s_client = statistics.median(r["client_seconds"] for r in d["sync"])
    a_server = statistics.median(r["server_seconds"] for r in d["async"])
    s_server = statistics.median(r["server_seconds"] for r in d["sync"])
    print(f"async bench: {calls} calls, {args.clients} clients, 4 warm containers x concurrency 4")
    print(f"store: {args.store}")
    if args.drain_only:
        for kind in ("async", "sync"):
            rounds = ", ".join(f"{r['client_seconds']:.2f}" for r in d[kind])
            print(
                f"drain {kind}: median {a_client if kind == 'async' else s_client:.2f} s"
                f" (rounds {rounds}) client clock"
            )
        print(f"ratio by the records (check): {a_server / s_server:.2f}")
        result["targets"] = [target(drain_target(args.store), a_client / s_client, "<=", 1.3)]
        result["summary"] = {
            "drain_async_s": a_client,
            "drain_sync_s": s_client,
            "drain_ratio_records": a_server / s_server,
            "store": args.store,
            **light_report(args, result),
        }
        return
    enq = result["enqueue"]
    enqueue = statistics.median(r["rate"] for r in enq["run"])
    held = statistics.median(r["rate"] for r in enq["held"])
    enq_cpu = {
        kind: {
            k: statistics.median(r["cpu_us_per_accept"][k] for r in enq[kind])
            for k in enq[kind][0]["cpu_us_per_accept"]
        }
        for kind in ("run", "held")
    }
    delays = result["start_delays_ms"]
    ap50, ap99 = pct(delays["async"], 50), pct(delays["async"], 99)
    sp50, sp99 = pct(delays["sync"], 50), pct(delays["sync"], 99)
    print(
        f"enqueue-to-start:  async p50 {ap50:.1f} ms p99 {ap99:.1f} ms | sync queue-to-start"
        f" p50 {sp50:.1f} ms p99 {sp99:.1f} ms  (n={len(delays['async'])} each)"
    )
    print(
        f"drain async:       {a_client:.2f} s ({calls / a_client:.0f} calls/s) client clock;"
        f" {a_server:.2f} s by the records"
    )
    print(
        f"drain sync:        {s_client:.2f} s ({calls / s_client:.0f} calls/s) client clock;"
        f" {s_server:.2f} s by the records"
    )
    print(f"ratio by the records (check): {a_server / s_server:.2f}")
    for kind, what, rate in (
        ("run", "calls run as they come", enqueue),
        ("held", "calls wait (function busy)", held),
    ):
        u = enq_cpu[kind]
        rates = ", ".join(f"{r['rate']:,.0f}" for r in enq[kind])
        print(
            f"enqueue, {what}: {rate:,.0f} accepted/s (median of {rates}), every 202 in"
            f" the store; CPU us/accept: machine {u['machine']:.0f}, gateway"
            f" {u['gateway']:.0f}, workers {u['workers']:.0f}, load generator {u['load']:.0f}"
        )
    cores = os.cpu_count() or 1
    run_ceiling = cores * 1e6 / enq_cpu["run"]["machine"]
    print(
        f"enqueue while running: at {enq_cpu['run']['machine']:.0f} us of the machine's CPU"
        f" per call accepted and run, {cores} cores run at most {run_ceiling:,.0f} calls/s;"
        f" sync no-op calls drained at {calls / s_client:,.0f}/s in this run"
    )
    result["targets"] = [
        target("async-enqueue-rate", held, ">=", 3000, "calls/s"),
        target("async-enqueue-to-start-p50", ap50, "<=", 10, "ms"),
        target(drain_target(args.store), a_client / s_client, "<=", 1.3),
    ]
    result["summary"] = {
        "drain_async_s": a_client,
        "drain_sync_s": s_client,
        "drain_ratio_records": a_server / s_server,
        "enqueue_per_s": enqueue,
        "enqueue_run_ceiling_per_s": run_ceiling,
        "sync_drain_per_s": calls / s_client,
        "enqueue_cpu_us": enq_cpu["run"],
        "enqueue_held_per_s": held,
        "enqueue_held_cpu_us": enq_cpu["held"],
        "enqueue_loadgen": "wrk -t1" if have_wrk() else "Python threads (no wrk)",
        "start_async_p50_ms": ap50,
        "start_sync_p50_ms": sp50,
        **light_report(args, result),
    }


if __name__ == "__main__":
    main()
