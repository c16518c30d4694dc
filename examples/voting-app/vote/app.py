"""vote: the voting front end, a WSGI app with nothing but the standard library.

Served per request in a fresh container (``mode: cgi``, through ``serve_cgi.py``) or by warm
containers of the swarmless runtime (``mode: warm``, handler ``app:app``): the same image.

A vote is handed to the one-shot **record-vote** task, by one of two paths (``RECORD_PATH``):

- ``spawn`` (default): ``POST $SWARMLESS_GATEWAY_URL/async-function/record-vote``, what
  ``swarmless.from_env().spawn(...)`` sends: durable, retried, recorded; the page answers
  as soon as the call is queued.
- ``docker``: the 2016 call shape, ``swarmless.from_env().run(image, [voter_id, vote],
  detach=True)``, through the scoped Docker API (the function is deployed with
  ``docker: scoped``, so ``DOCKER_HOST`` points at the gateway's proxy). The task container
  is a child of this one; not retried, not recorded as an invocation.
"""

from __future__ import annotations

import contextlib
import html
import http.cookies
import json
import os
import re
import secrets
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

OPTIONS = {"a": os.environ.get("OPTION_A", "Cats"), "b": os.environ.get("OPTION_B", "Dogs")}
RECORD_PATH = os.environ.get("RECORD_PATH", "spawn")
RECORD_FUNCTION = os.environ.get("RECORD_FUNCTION", "record-vote")
RECORD_IMAGE = os.environ.get("RECORD_IMAGE", "")
#: Docker names a container's host after the first 12 hex digits of its id.
CONTAINER = socket.gethostname()
COOKIE_AGE = 365 * 24 * 3600
#: Voter ids and form nonces are 16 hex digits (made here, checked when they come back).
_HEX = re.compile(r"[0-9a-f]{16}")

StartResponse = Callable[..., Any]
_tasks: list[threading.Thread] = []
_client: Any = None


class NotRecorded(Exception):
    """The vote could not be handed to record-vote."""


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI entry point: ``GET /`` shows the ballot, ``POST /`` casts a vote."""
    prefix = (
        environ.get("SCRIPT_NAME") or f"/function/{os.environ.get('SWARMLESS_FUNCTION', 'vote')}"
    )
    path = environ.get("PATH_INFO") or "/"
    method = environ.get("REQUEST_METHOD", "GET")
    cookies = _cookies(environ.get("HTTP_COOKIE", ""))
    voter = cookies.get("voter_id", "")
    if not _HEX.fullmatch(voter):  # a new voter, or a cookie that is not one of ours
        voter = secrets.token_hex(8)
    current = cookies.get("vote") if cookies.get("vote") in OPTIONS else None
    if path != "/":
        return _answer(start_response, "404 Not Found", b"not found\n", "text/plain")
    status, message = "200 OK", ""
    if method == "POST":
        form = urllib.parse.parse_qs(_body(environ).decode("utf-8", "replace"))
        vote = (form.get("vote") or [""])[0]
        if vote not in OPTIONS:
            status, message = "400 Bad Request", f"There is no option {vote!r}."
        else:
            nonce = (form.get("nonce") or [""])[0]
            nonce = nonce if _HEX.fullmatch(nonce) else ""
            try:
                how = record(voter, vote, nonce)
            except NotRecorded as e:
                status, message = "503 Service Unavailable", f"Your vote was not recorded: {e}"
            else:
                current = vote
                message = f"You voted for {OPTIONS[vote]} ({how})."
    elif method not in ("GET", "HEAD"):
        return _answer(start_response, "405 Method Not Allowed", b"GET or POST\n", "text/plain")
    page = _page(prefix, current, message).encode()
    cookie = f"; Path={prefix}; Max-Age={COOKIE_AGE}; HttpOnly; SameSite=Lax"
    headers = [("Set-Cookie", f"voter_id={voter}{cookie}")]
    if current:
        headers.append(("Set-Cookie", f"vote={current}{cookie}"))
    return _answer(start_response, status, page, "text/html; charset=utf-8", headers)


def record(voter: str, vote: str, nonce: str = "") -> str:
    """Hand one vote to record-vote by the configured path; says how, for the page."""
    cast_at = str(int(time.time() * 1000))
    if RECORD_PATH == "docker":
        return _run_task(voter, vote, cast_at)
    return _spawn(voter, vote, cast_at, nonce)


def _spawn(voter: str, vote: str, cast_at: str, nonce: str) -> str:
    gateway = os.environ.get("SWARMLESS_GATEWAY_URL", "").rstrip("/")
    if not gateway:
        raise NotRecorded("SWARMLESS_GATEWAY_URL is not set")
    headers = {"X-Swarmless-Args": json.dumps([voter, vote, cast_at])}
    if nonce:  # the same form sent twice (a reload) queues one call
        headers["Idempotency-Key"] = f"vote-{voter}-{nonce}-{vote}"
    token = os.environ.get("SWARMLESS_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    url = f"{gateway}/async-function/{RECORD_FUNCTION}"
    request = urllib.request.Request(url, data=b"", headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            answer = json.load(r)
    except urllib.error.HTTPError as e:
        detail = e.read()[:300].decode("utf-8", "replace")
        with contextlib.suppress(ValueError, AttributeError):
            detail = json.loads(detail).get("message", detail)
        raise NotRecorded(f"the gateway answered {e.code}: {detail}") from None
    except (OSError, ValueError) as e:
        raise NotRecorded(f"the gateway did not answer: {e}") from None
    return f"queued as call {answer.get('call_id', '?')}"


def _run_task(voter: str, vote: str, cast_at: str) -> str:
    global _client
    try:
        import swarmless  # the SDK, installed in this image; DOCKER_HOST is the scoped API

        if _client is None:
            _client = swarmless.from_env()
        env = {"DATABASE_URL": os.environ.get("DATABASE_URL", "")}
        handle = _client.run(RECORD_IMAGE, [voter, vote, cast_at], detach=True, env=env)
    except Exception as e:  # SwarmlessError, or an SDK that cannot load: say why
        raise NotRecorded(f"record-vote could not start: {e}") from None
    task = threading.Thread(target=_collect, args=(handle, voter), daemon=True)
    task.start()
    _tasks[:] = [*(t for t in _tasks if t.is_alive()), task]
    return f"task container {handle.id[:12]} started"


def _collect(handle: Any, voter: str) -> None:
    """Read a detached task's outcome (its container is removed once read)."""
    try:
        out = handle.result(timeout=60)
        print(f"record-vote {handle.id[:12]} for {voter}: {out.decode().strip()}", file=sys.stderr)
    except Exception as e:
        print(f"record-vote {handle.id[:12]} for {voter} failed: {e}", file=sys.stderr)


def wait_for_tasks(timeout: float = 60.0) -> None:
    """CGI mode: a task container is removed when its parent exits, so wait for them."""
    deadline = time.monotonic() + timeout
    for task in _tasks:
        task.join(max(deadline - time.monotonic(), 0))


def _cookies(header: str) -> dict[str, str]:
    jar = http.cookies.SimpleCookie()
    with contextlib.suppress(http.cookies.CookieError):
        jar.load(header)
    return {name: morsel.value for name, morsel in jar.items()}


def _body(environ: dict[str, Any]) -> bytes:
    try:
        size = min(int(environ.get("CONTENT_LENGTH") or 0), 64 * 1024)
    except ValueError:
        size = 0
    return environ["wsgi.input"].read(size) if size > 0 else b""


def _answer(
    start_response: StartResponse,
    status: str,
    body: bytes,
    content_type: str,
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    start_response(
        status,
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            *(headers or []),
        ],
    )
    return [body]


def _page(prefix: str, current: str | None, message: str) -> str:
    a, b = (html.escape(OPTIONS[k]) for k in ("a", "b"))
    buttons = "".join(
        f'<button id="{key}" type="submit" name="vote" value="{key}"'
        f"{' class=chosen' if current == key else ''}>{html.escape(label)}"
        f"{' &#10003;' if current == key else ''}</button>"
        for key, label in OPTIONS.items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{a} vs {b}!</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{{font-family:system-ui,sans-serif;background:#f4f4f4;margin:0;text-align:center;color:#333}}
main{{max-width:28em;margin:3em auto;background:#fff;padding:2em;border-radius:8px}}
h1{{font-weight:400}} form{{display:flex;gap:1em;justify-content:center}}
button{{font-size:1.4em;padding:.8em 1.2em;border:0;border-radius:6px;cursor:pointer;
 background:#2196f3;color:#fff;flex:1}} button#b{{background:#00cbca}}
button.chosen{{outline:4px solid #333}} #message{{min-height:1.5em}}
footer{{color:#888;font-size:.85em;margin-top:2em}}
</style></head>
<body><main>
<h1>{a} vs {b}!</h1>
<form method="post" action="{html.escape(prefix)}/">
<input type="hidden" name="nonce" value="{secrets.token_hex(8)}">{buttons}</form>
<p id="message">{html.escape(message)}</p>
<p><small>(Tip: you can change your vote)</small></p>
<footer>Processed by container <span id="container">{html.escape(CONTAINER)}</span></footer>
</main></body></html>
"""
