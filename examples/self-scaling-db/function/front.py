"""The read/write front end: writes go to the primary, reads to a streaming replica.

A WSGI app (a warm swarmless function, ``handler: front:app``). Where the primary and its
replicas are is the primary's own answer (its function, called through the gateway,
cached for a second): addresses on the function network, which replicas stream.

- ``POST /write`` (body: text): one row on the primary; answers its id and the primary's
  WAL position after the commit (``lsn``).
- ``GET /read[?after=LSN][&replica=NAME][&ids]``: the row count and the highest id (and
  with ``ids`` every id), read on a streaming replica (round robin, or the one named;
  ``primary`` names the primary, to compare). With ``after`` the replica is first given up
  to 5 s to replay that far (read your writes); one that does not is a 504.
- ``GET /status``: the primary's view (replicas, nodes, events).

Settings: ``SELFDB_PRIMARY`` (the primary's function name, default ``selfdb``),
``SELFDB_PASSWORD`` (the ``postgres`` role's), and what swarmless gives every function
container (``SWARMLESS_GATEWAY_URL``, ``SWARMLESS_TOKEN``).
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
import urllib.parse
import urllib.request
from typing import Any

import psycopg2

PRIMARY_FUNCTION = os.environ.get("SELFDB_PRIMARY", "selfdb")
PASSWORD = os.environ.get("SELFDB_PASSWORD", "")
GATEWAY = os.environ.get("SWARMLESS_GATEWAY_URL", "").rstrip("/")
TOKEN = os.environ.get("SWARMLESS_TOKEN", "")
CATCH_UP = 5.0

_lock = threading.Lock()
_topology: tuple[float, dict[str, Any]] = (0.0, {})
_turn = itertools.count()


class Unavailable(Exception):
    """503: no primary or no streaming replica now."""


def topology(fresh: bool = False) -> dict[str, Any]:
    """The primary's status (one call of its function), at most a second old."""
    global _topology
    with _lock:
        at, known = _topology
        if known and not fresh and time.monotonic() - at < 1.0:
            return known
    request = urllib.request.Request(f"{GATEWAY}/function/{PRIMARY_FUNCTION}")
    if TOKEN:
        request.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(request, timeout=10) as answer:
        found: dict[str, Any] = json.loads(answer.read())
    with _lock:
        _topology = (time.monotonic(), found)
    return found


def forget() -> None:
    """Ask the primary anew next time (a member went away)."""
    global _topology
    with _lock:
        _topology = (0.0, {})


def connect(host: str) -> Any:
    conn = psycopg2.connect(
        host=host, user="postgres", password=PASSWORD, dbname="postgres", connect_timeout=5
    )
    conn.autocommit = True
    return conn


def write(body: str) -> dict[str, Any]:
    top = topology()
    host = (top.get("primary") or {}).get("host")
    if not top.get("ready") or not host:
        raise Unavailable("the primary is not ready")
    conn = connect(host)
    try:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO items (body) VALUES (%s) RETURNING id", (body,))
            (row_id,) = cur.fetchone()
            cur.execute("SELECT pg_current_wal_lsn()::text")
            (lsn,) = cur.fetchone()
    finally:
        conn.close()
    return {"id": row_id, "lsn": lsn, "primary": host}


def read(after: str | None, name: str | None, ids: bool = False) -> dict[str, Any]:
    top = topology()
    streaming = [r for r in top.get("replicas", []) if r["state"] == "streaming" and r["host"]]
    if name == "primary":  # to compare with (the primary is the writes' place)
        primary = top.get("primary") or {}
        streaming = [{"name": "primary", "node": primary.get("node"), "host": primary.get("host")}]
    elif name:
        streaming = [r for r in streaming if r["name"] == name]
    if not streaming or not streaming[0]["host"]:
        forget()
        raise Unavailable(f"no streaming replica{' named ' + name if name else ''}")
    replica = streaming[next(_turn) % len(streaming)]
    conn = connect(replica["host"])
    try:
        with conn.cursor() as cur:
            if after:
                deadline = time.monotonic() + CATCH_UP
                while True:
                    cur.execute(
                        "SELECT coalesce(pg_last_wal_replay_lsn(), pg_current_wal_lsn()) "
                        ">= %s::pg_lsn",
                        (after,),
                    )
                    if cur.fetchone()[0]:
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{replica['name']} did not replay {after} in time")
                    time.sleep(0.05)
            cur.execute(
                "SELECT count(*), coalesce(max(id), 0), "
                "coalesce(pg_last_wal_replay_lsn(), pg_current_wal_lsn())::text, "
                "pg_is_in_recovery() FROM items"
            )
            count, max_id, lsn, recovering = cur.fetchone()
            found = None
            if ids:
                cur.execute("SELECT id FROM items ORDER BY id")
                found = [row[0] for row in cur.fetchall()]
    finally:
        conn.close()
    return {
        **({"ids": found} if ids else {}),
        "replica": replica["name"],
        "node": replica["node"],
        "count": count,
        "max_id": max_id,
        "replay_lsn": lsn,
        "in_recovery": recovering,
    }


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    path = environ.get("PATH_INFO") or "/"
    method = environ.get("REQUEST_METHOD", "GET")
    query = dict(urllib.parse.parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
    try:
        if method == "POST" and path == "/write":
            size = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(size).decode("utf-8", "replace")
            status, answer = "200 OK", write(body)
        elif method == "GET" and path == "/read":
            status, answer = (
                "200 OK",
                read(query.get("after"), query.get("replica"), "ids" in query),
            )
        elif method == "GET" and path == "/status":
            status, answer = "200 OK", topology(fresh=True)
        else:
            status = "404 Not Found"
            answer = {
                "error": "POST /write, GET /read[?after=LSN][&replica=NAME][&ids], GET /status"
            }
    except Unavailable as e:
        status, answer = "503 Service Unavailable", {"error": str(e)}
    except TimeoutError as e:
        status, answer = "504 Gateway Timeout", {"error": str(e)}
    except (psycopg2.Error, OSError) as e:  # a member went away: ask the primary anew
        forget()
        status, answer = "503 Service Unavailable", {"error": f"{type(e).__name__}: {e}"}
    data = json.dumps(answer).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]
