"""A light load of async calls, and the proof that what was accepted is in the store.

:func:`wrk_enqueue` floods ``POST /async-function/NAME`` with ``wrk`` (C, one thread,
keep-alive connections: a fraction of a Python client's CPU per request, so on a 2-core
machine the gateway, not the load generator, is what is measured). Its Lua script counts
the answers by status and keeps the ``X-Call-Id`` of every ``202``. :func:`stored_ids`
reads the ids of the function's async calls in the gateway's SQLite store, rows of its
queue or records (a read-only connection beside the running gateway): every call
answered 202 must be there.

``wrk`` is Debian's package: ``apt-get install -y wrk``. Without it, :func:`python_enqueue`
is the fallback (keep-alive ``http.client`` connections from threads): heavier, so on a
small machine it takes CPU from the gateway it measures; the benchmark says which it used.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import re
import shutil
import sqlite3
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

#: The script: POST the body, count statuses, keep the ids of the 202s (per thread),
#: and at the end write one JSON line (counts, latency) and the ids, one a line, to the
#: file named by ``ENQUEUE_OUT``.
LUA = r"""
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) ids = {}; n = 0; statuses = {} end
function response(status, headers, body)
  if status == 202 then
    n = n + 1
    ids[n] = headers["x-call-id"] or headers["X-Call-Id"] or ""
  else
    statuses[status] = (statuses[status] or 0) + 1
  end
end
function done(summary, latency, requests)
  local f = assert(io.open(os.getenv("ENQUEUE_OUT"), "w"))
  local other, accepted = {}, 0
  local all = {}
  for _, t in ipairs(threads) do
    local got = t:get("ids")
    for i = 1, #got do all[#all + 1] = got[i] end
    accepted = accepted + t:get("n")
    for s, c in pairs(t:get("statuses")) do
      other[#other + 1] = string.format('"%d": %d', s, c)
    end
  end
  f:write(string.format(
    '{"requests": %d, "duration_us": %d, "accepted": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"socket_errors": %d, "other": {%s}}\n',
    summary.requests, summary.duration, accepted, latency:percentile(50),
    latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout, table.concat(other, ", ")))
  for i = 1, #all do f:write(all[i], "\n") end
  f:close()
end
"""


@dataclasses.dataclass
class Burst:
    """One fixed-duration flood of async calls, as ``wrk`` saw it."""

    #: Answers received (any status), and of them 202s.
    requests: int
    accepted: int
    seconds: float
    p50_ms: float
    p99_ms: float
    #: {status: count} of answers other than 202; connect/read/write/timeout errors.
    other: dict[str, int]
    socket_errors: int
    ids: list[str]

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def wrk_enqueue(
    url: str,
    connections: int,
    seconds: float,
    workdir: Path,
    threads: int = 1,
    delay_ms: int = 0,
) -> Burst:
    """``connections`` keep-alive connections POSTing to ``url`` for ``seconds``; with
    ``delay_ms``, each connection waits that long after an answer before its next request
    (a load below the gateway's ceiling, for its CPU per call at a moderate rate)."""
    script = workdir / "enqueue.lua"
    pause = f"function delay() return {int(delay_ms)} end\n" if delay_ms > 0 else ""
    script.write_text(LUA + pause)
    out = workdir / "enqueue.out"
    out.unlink(missing_ok=True)
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    env = {**os.environ, "ENQUEUE_OUT": str(out)}
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=seconds + 60, check=False, env=env
    )
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(
            f"wrk failed ({proc.returncode}): {proc.stdout[-500:]}{proc.stderr[-500:]}"
        )
    head, _, rest = out.read_text().partition("\n")
    r = json.loads(head)
    ids = [ln for ln in rest.splitlines() if ln]
    return Burst(
        requests=r["requests"],
        accepted=r["accepted"],
        seconds=r["duration_us"] / 1e6,
        p50_ms=r["p50_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        other={str(k): int(v) for k, v in r["other"].items()},
        socket_errors=r["socket_errors"],
        ids=ids,
    )


def python_enqueue(url: str, connections: int, seconds: float) -> Burst:
    """The fallback of :func:`wrk_enqueue`: ``connections`` threads, each POSTing on its
    own keep-alive connection until ``seconds`` have passed."""
    parts = urllib.parse.urlsplit(url)
    lock = threading.Lock()
    ids: list[str] = []
    other: dict[str, int] = {}
    latencies: list[float] = []
    errors = [0]
    t0 = time.monotonic()
    stop_at = t0 + seconds

    def worker() -> None:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
        mine: list[str] = []
        lat: list[float] = []
        seen: dict[str, int] = {}
        try:
            while time.monotonic() < stop_at:
                t = time.monotonic()
                conn.request(
                    "POST", parts.path, body=b"{}", headers={"Content-Type": "application/json"}
                )
                r = conn.getresponse()
                r.read()
                lat.append(time.monotonic() - t)
                if r.status == 202:
                    mine.append(r.getheader("x-call-id") or "")
                else:
                    seen[str(r.status)] = seen.get(str(r.status), 0) + 1
        except OSError:
            with lock:
                errors[0] += 1
        finally:
            conn.close()
            with lock:
                ids.extend(mine)
                latencies.extend(lat)
                for k, v in seen.items():
                    other[k] = other.get(k, 0) + v

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    took = time.monotonic() - t0
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, round(p * (len(latencies) - 1)))] * 1000

    return Burst(
        requests=len(latencies),
        accepted=len(ids),
        seconds=took,
        p50_ms=pct(0.5) if latencies else 0.0,
        p99_ms=pct(0.99) if latencies else 0.0,
        other=other,
        socket_errors=errors[0],
        ids=ids,
    )


#: The async calls of a function the store holds: a row of its queue, or an async record
#: (both written in the transaction that accepts a call; a call that succeeded keeps its
#: record, and its queue row is deleted unless it has an idempotency key).
STORED = (
    "SELECT id FROM async_queue WHERE function = {p}"
    " UNION SELECT id FROM invocations WHERE function = {p} AND kind = 'async'"
)


def stored_ids(db: Path, function: str) -> set[str]:
    """Ids of the async calls of ``function`` in the SQLite store at ``db`` (read-only):
    in its queue, or recorded (:data:`STORED`)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute(STORED.format(p="?"), (function, function))
        return {str(r[0]) for r in rows}
    finally:
        conn.close()


def valid_id(call_id: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9-]{1,100}", call_id) is not None
