"""result: live percentages and the total, a WSGI app (same two modes as vote).

``GET /`` is a page that polls ``GET /data.json`` (this function's own JSON endpoint) every
``POLL_MS`` milliseconds; each answer says which container served it, so in cgi mode the
id changes on every poll and in warm mode it stays while the container lives. The database
is ``DATABASE_URL``; a warm container keeps its connection between calls.
"""

from __future__ import annotations

import html
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import psycopg2

OPTIONS = {"a": os.environ.get("OPTION_A", "Cats"), "b": os.environ.get("OPTION_B", "Dogs")}
POLL_MS = int(os.environ.get("POLL_MS", "1000"))
CONTAINER = socket.gethostname()
COUNT = "SELECT vote, count(*) FROM votes GROUP BY vote"

StartResponse = Callable[..., Any]
_conn: Any = None
_lock = threading.Lock()


def counts() -> dict[str, int]:
    """Votes per option, on the connection this container keeps (reconnecting once)."""
    global _conn
    with _lock:
        for attempt in (1, 2):
            try:
                if _conn is None or _conn.closed:
                    _conn = psycopg2.connect(os.environ["DATABASE_URL"], connect_timeout=3)
                    _conn.autocommit = True
                with _conn.cursor() as cur:
                    cur.execute(COUNT)
                    found = dict(cur.fetchall())
                return {key: int(found.get(key, 0)) for key in OPTIONS}
            except psycopg2.OperationalError:
                _conn = None
                if attempt == 2:
                    raise
    raise AssertionError("unreachable")


def tally(votes: dict[str, int]) -> dict[str, Any]:
    """Percentages that add up to 100 (50/50 before the first vote, as in the original)."""
    total = sum(votes.values())
    a = round(100 * votes["a"] / total) if total else 50
    return {
        "options": OPTIONS,
        "votes": votes,
        "percent": {"a": a, "b": 100 - a},
        "total": total,
        "container": CONTAINER,
        "at": int(time.time() * 1000),
    }


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """``GET /`` the page, ``GET /data.json`` the numbers."""
    prefix = (
        environ.get("SCRIPT_NAME") or f"/function/{os.environ.get('SWARMLESS_FUNCTION', 'result')}"
    )
    path = environ.get("PATH_INFO") or "/"
    if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
        return _answer(start_response, "405 Method Not Allowed", b"GET only\n", "text/plain")
    if path == "/data.json":
        try:
            body = tally(counts())
        except (psycopg2.Error, KeyError) as e:
            reason = " ".join(str(e).split()) or type(e).__name__
            error = {"error": f"the database did not answer: {reason}", "container": CONTAINER}
            return _json(start_response, "503 Service Unavailable", error)
        return _json(start_response, "200 OK", body)
    if path == "/":
        return _answer(start_response, "200 OK", _page(prefix).encode(), "text/html; charset=utf-8")
    return _answer(start_response, "404 Not Found", b"not found\n", "text/plain")


def _json(start_response: StartResponse, status: str, data: dict[str, Any]) -> list[bytes]:
    return _answer(start_response, status, json.dumps(data).encode(), "application/json")


def _answer(
    start_response: StartResponse, status: str, body: bytes, content_type: str
) -> list[bytes]:
    start_response(
        status,
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ],
    )
    return [body]


def _page(prefix: str) -> str:
    a, b = (html.escape(OPTIONS[k]) for k in ("a", "b"))
    data = json.dumps(f"{prefix}/data.json")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{a} vs {b}: results</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{{font-family:system-ui,sans-serif;background:#f4f4f4;margin:0;text-align:center;color:#333}}
main{{max-width:32em;margin:3em auto;background:#fff;padding:2em;border-radius:8px}}
.row{{display:flex;height:4em;border-radius:6px;overflow:hidden;margin:1em 0}}
.bar{{display:flex;align-items:center;justify-content:center;color:#fff;font-size:1.4em;
 transition:flex-grow .4s;min-width:3.5em}}
#bar-a{{background:#2196f3}} #bar-b{{background:#00cbca}}
.labels{{display:flex;justify-content:space-between;font-size:1.2em}}
#state,footer{{color:#888;font-size:.85em}}
</style></head>
<body><main>
<h1>{a} vs {b}</h1>
<div class="labels"><span>{a}</span><span>{b}</span></div>
<div class="row">
<div class="bar" id="bar-a" style="flex-grow:1"><span id="a-percent">50%</span></div>
<div class="bar" id="bar-b" style="flex-grow:1"><span id="b-percent">50%</span></div></div>
<p><span id="total">0</span> <span id="total-unit">votes</span></p>
<p id="state">waiting for the first numbers ...</p>
<footer>Numbers served by container <span id="container">-</span></footer>
</main>
<script>
const DATA = {data}, EVERY = {POLL_MS};
const $ = (id) => document.getElementById(id);
async function poll() {{
  try {{
    const r = await fetch(DATA, {{cache: "no-store"}});
    const d = await r.json();
    if (!r.ok) throw new Error(d.error || ("HTTP " + r.status));
    $("a-percent").textContent = d.percent.a + "%";
    $("b-percent").textContent = d.percent.b + "%";
    $("bar-a").style.flexGrow = Math.max(d.percent.a, 1);
    $("bar-b").style.flexGrow = Math.max(d.percent.b, 1);
    $("total").textContent = d.total;
    $("total-unit").textContent = d.total === 1 ? "vote" : "votes";
    $("container").textContent = d.container;
    $("state").textContent = "updated " + new Date(d.at).toLocaleTimeString();
  }} catch (e) {{
    $("state").textContent = "no numbers: " + e.message;
  }} finally {{
    setTimeout(poll, EVERY);
  }}
}}
poll();
</script>
</body></html>
"""
