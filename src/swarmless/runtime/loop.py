"""The pollers and the life of the runtime process.

Each of ``SWARMLESS_CONCURRENCY`` poller threads owns one keep-alive connection and loops::

    result = None
    forever:
        POST /runtime/next  (carrying result, when there is one)
        200 -> run the invocation, result = its result
        204 -> poll again
        410 -> retired: drain, then the process exits 0
        401 -> the token is refused: the process exits 1

A poller first asks its gateway to upgrade the connection to frames
(:mod:`~swarmless.runtime.frames`, ``POST /runtime/connect``): the same loop, a NEXT frame
for the request and a CALL, IDLE, RETIRE or REFUSED frame for its answer (200, 204, 410,
401), without HTTP on the way. A gateway that answers anything but 101 (an older one, a
standby replica) is asked again after ``FRAMED_RETRY`` seconds; until then the poller uses
``/runtime/next``.

Draining: on 410 (or SIGTERM) no poller starts a new poll without a result in hand; pollers
that are running a call finish it and deliver its result (the gateway answers 410 again),
and pollers waiting in a long poll take what it answers (410 from a retiring gateway, or a
call, which they run and deliver). The process exits 0 when every poller has ended, or
``DRAIN_GRACE`` seconds after the last call in hand was delivered (a gateway that does not
know the container is stopping, on SIGTERM, may hold the long polls for 25 s).

Connection errors and 5xx answers are retried with capped, jittered backoff, re-sending the
result in hand (the gateway ignores a result for a call it has already finished). After
``SWARMLESS_RUNTIME_GIVE_UP`` seconds (60) without any 200/204 from the gateway, the
process exits 1.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import socket
import threading
import time
import urllib.parse

from swarmless.runtime import capture, frames
from swarmless.runtime.config import RuntimeConfig, log
from swarmless.runtime.handlers import FailedHandler, Handler, load_handler, run_handler
from swarmless.runtime.invocation import Call, Result, error_result

TYPE_CHECKING = False
if TYPE_CHECKING:
    import io

__all__ = ["Poller", "Runtime", "RuntimeConfig", "main", "serve"]

#: Socket timeout of a poll: longer than the gateway's long-poll window (about 25 s).
POLL_TIMEOUT = 70.0
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
#: Once drained, how long pollers still in a long poll may take to come back.
DRAIN_GRACE = 2.0
#: Seconds a poller keeps to ``/runtime/next`` after its gateway refused the framed
#: connection, before it asks again.
FRAMED_RETRY = 30.0


class _HTTPConnection(http.client.HTTPConnection):
    """Keep-alive connection with Nagle off.

    http.client sends a request's headers and body in two writes; without TCP_NODELAY the
    body waits for the ACK of the headers, which the gateway delays by 40 ms. Python sets
    the option itself only from 3.11.4 on; Debian bookworm ships 3.11.2.
    """

    def connect(self) -> None:
        super().connect()
        _no_delay(self.sock)


class _HTTPSConnection(http.client.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _no_delay(self.sock)


def _no_delay(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):  # not every socket family has the option
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Runtime:
    """The shared state of the pollers: draining, calls in hand, last contact, exit code."""

    def __init__(self, config: RuntimeConfig, handler: Handler) -> None:
        self.config = config
        self.handler = handler
        self._cond = threading.Condition()
        self._finished = threading.Event()
        self.stopping = False
        self.exit_code: int | None = None
        self.busy = 0
        self.last_contact = time.monotonic()

    # -- state changes, all under the condition -----------------------------------------

    def contact(self) -> None:
        self.last_contact = time.monotonic()

    def gave_up(self) -> bool:
        return time.monotonic() - self.last_contact > self.config.give_up

    def took_call(self) -> None:
        with self._cond:
            self.busy += 1

    def delivered(self) -> None:
        with self._cond:
            self.busy -= 1
            # Only a draining process waits for the count (run()): waking its main thread
            # on every call would cost a thread switch per call.
            if self.stopping:
                self._cond.notify_all()

    def poller_ended(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def retire(self, why: str) -> None:
        """Drain: finish the calls in hand, then exit 0."""
        with self._cond:
            if not self.stopping:
                log(f"retiring ({why})")
            self.stopping = True
            self._cond.notify_all()

    def finish(self, code: int, why: str) -> None:
        """Stop now with ``code``."""
        with self._cond:
            if self.exit_code is None:
                log(f"exiting {code}: {why}")
                self.exit_code = code
            self._finished.set()
            self._cond.notify_all()

    def sleep(self, seconds: float) -> None:
        """Sleep, waking early when the process is finishing."""
        self._finished.wait(seconds)

    # -- the process --------------------------------------------------------------------

    def run(self) -> int:
        """Start the pollers and wait until retired (0) or failed (1)."""
        pollers = [Poller(self, i) for i in range(self.config.concurrency)]
        for p in pollers:
            p.start()
        idle_since: float | None = None
        with self._cond:
            while True:
                if self.exit_code is not None:
                    return self.exit_code
                if not any(p.is_alive() for p in pollers):
                    self.exit_code = 0 if self.stopping else 1
                    return self.exit_code
                # The timeout only bounds how long a poller that died unexpectedly goes
                # unnoticed; every normal change notifies.
                wait = 5.0
                if self.stopping and self.busy == 0:
                    # Drained. Pollers still in a long poll end on their own (a retiring
                    # gateway answers them 410 at once); without one, give them a grace.
                    now = time.monotonic()
                    idle_since = idle_since or now
                    wait = idle_since + DRAIN_GRACE - now
                    if wait <= 0:
                        self.exit_code = 0
                        return 0
                else:
                    idle_since = None
                self._cond.wait(wait)


class Poller(threading.Thread):
    """One poll loop with its own keep-alive connection."""

    def __init__(self, runtime: Runtime, index: int) -> None:
        super().__init__(name=f"swarmless-poller-{index}", daemon=True)
        self.rt = runtime
        config = runtime.config
        parts = urllib.parse.urlsplit(config.api)
        self._prefix = parts.path.rstrip("/")
        self._conn: http.client.HTTPConnection
        if parts.scheme == "https":
            self._conn = _HTTPSConnection(parts.hostname or "", parts.port, timeout=POLL_TIMEOUT)
        else:
            self._conn = _HTTPConnection(parts.hostname or "", parts.port, timeout=POLL_TIMEOUT)
        self._auth = f"Bearer {config.token}"
        self._used = False
        # The framed connection (None: not open), its reader, and whether a NEXT sent on
        # it waits for its answer.
        self._sock: socket.socket | None = None
        self._reader: io.BufferedReader | None = None
        self._asked = False
        #: Monotonic time before which the poller does not ask for frames again.
        self._http_until = 0.0

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # a bug of ours: say so, and let the process end
            log(f"{self.name} crashed: {type(e).__name__}: {e}")
            self.rt.finish(1, f"{self.name} crashed")
            raise
        finally:
            self._drop_framed()
            self._conn.close()
            self.rt.poller_ended()

    def _loop(self) -> None:
        rt = self.rt
        pending: Result | None = None
        backoff = BACKOFF_MIN
        while True:
            if rt.exit_code is not None or (pending is None and rt.stopping):
                return
            try:
                got = self._frame_next(pending) if time.monotonic() >= self._http_until else None
                if got is None:
                    if pending is not None and (pending.stdout or pending.stderr):
                        self._send_logs(pending)
                    got = self._post_next(pending)
                status, call = got
            except _Retry as e:
                if rt.gave_up():
                    silence = f"{rt.config.give_up:g}s"
                    rt.finish(1, f"no contact with {rt.config.api} for {silence} (last: {e})")
                    return
                rt.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            except _Refused as e:
                rt.finish(1, str(e))
                return
            except _Dropped:
                pending = None
                rt.delivered()
                rt.sleep(backoff)
                continue
            backoff = BACKOFF_MIN
            if status == 200:
                rt.took_call()  # before delivered(): the count never drops to 0 in between
            if pending is not None:
                pending = None
                rt.delivered()
            if status == 200:
                assert call is not None
                pending = self._run(*call)
            elif status == 410:
                rt.retire("the gateway answered 410")

    # -- requests -----------------------------------------------------------------------

    def _request(
        self, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        headers["Authorization"] = self._auth
        for attempt in (1, 2):
            reused = self._used
            try:
                self._conn.request("POST", self._prefix + path, body=body, headers=headers)
                resp = self._conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as e:
                self._conn.close()
                self._used = False
                # A kept-alive connection the server closed meanwhile: retry once, at once.
                stale = isinstance(e, ConnectionResetError | BrokenPipeError)
                if attempt == 1 and reused and stale:
                    continue
                raise _Retry(f"{type(e).__name__}: {e}") from e
            self._used = True
            if resp.will_close:
                self._conn.close()
                self._used = False
            status = resp.status
            if status == 401:
                raise _Refused(f"the gateway refused the worker token (401 on {path})")
            if status >= 500 or status == 429:
                raise _Retry(f"HTTP {status} on {path}")
            return status, resp.headers, data
        raise AssertionError("unreachable")

    def _post_next(self, pending: Result | None) -> tuple[int, _Handed | None]:
        headers = pending.request_headers() if pending is not None else {}
        body = pending.body if pending is not None else b""
        status, resp_headers, data = self._request("/runtime/next", body, headers)
        if status in (200, 204, 410):
            if status != 410:
                self.rt.contact()
            if status != 200:
                return status, None
            call_id = resp_headers.get("X-Swarmless-Call-Id") or ""
            try:
                event = json.loads(resp_headers.get("X-Swarmless-Event") or "{}")
            except ValueError as e:
                event = e
            return 200, (call_id, resp_headers.get("X-Swarmless-Deadline"), event, data)
        # Another 4xx: the gateway will not take this request as it is.
        log(f"/runtime/next answered {status}: {data[:200]!r}")
        if pending is None:
            raise _Retry(f"HTTP {status} on /runtime/next")  # counts towards giving up
        if pending.error is None:
            # A result it will never take (too large, ...): send the caller why instead.
            pending.status, pending.headers = 500, []
            pending.error = f"the gateway refused the result (HTTP {status})"
            pending.body = data[:4096]
            raise _Retry(f"HTTP {status} on /runtime/next")
        raise _Dropped

    # -- the framed connection --------------------------------------------------------

    def _frame_next(self, pending: Result | None) -> tuple[int, _Handed | None] | None:
        """One exchange on the framed connection (opened first if need be); None when the
        gateway refused frames (the poller keeps to ``/runtime/next`` for a while)."""
        if self._sock is None and not self._open_framed():
            return None
        try:
            if not self._asked:
                self._send_frames(pending)
                self._asked = True
            kind, meta, body = self._read_frame()
        except (OSError, ValueError) as e:
            self._drop_framed()
            raise _Retry(f"framed connection: {type(e).__name__}: {e}") from e
        if kind == frames.CALL:
            self._asked = False
            self.rt.contact()
            deadline = meta.get("deadline")
            return 200, (str(meta.get("id") or ""), deadline, meta.get("event"), body)
        if kind == frames.IDLE:
            self.rt.contact()
            try:
                self._sock.sendall(_ALIVE)  # type: ignore[union-attr]
            except OSError as e:
                self._drop_framed()
                raise _Retry(f"framed connection: {type(e).__name__}: {e}") from e
            return 204, None
        if kind == frames.RETIRE:
            self._asked = False
            return 410, None
        self._drop_framed()
        if kind == frames.REFUSED:
            raise _Refused("the gateway refused the worker token (REFUSED frame)")
        raise _Retry(f"the gateway sent a frame of unknown type {kind}")

    def _open_framed(self) -> bool:
        """Ask for the framed connection on this poller's connection: True once it is."""
        resp = self._upgrade()
        if resp is None:
            self._http_until = time.monotonic() + FRAMED_RETRY
            return False
        sock = self._conn.sock
        # The response's buffered reader goes on reading the frames (the gateway sends
        # nothing before the first NEXT, but nothing it buffered would be lost either).
        reader, resp.fp = resp.fp, None  # type: ignore[assignment]
        self._conn.sock = None  # the HTTP connection reconnects if it is ever used again
        self._used = False
        if sock is None or reader is None:
            raise _Retry("the upgraded connection has no socket")
        self._sock, self._reader = sock, reader
        self._asked = False
        return True

    def _upgrade(self) -> http.client.HTTPResponse | None:
        """``POST /runtime/connect``: the 101 response, or None when the gateway answered
        anything else but 401 (_Refused)."""
        headers = {
            "Authorization": self._auth,
            "Connection": "Upgrade",
            "Upgrade": frames.UPGRADE,
        }
        for attempt in (1, 2):
            reused = self._used
            try:
                self._conn.request("POST", self._prefix + frames.PATH, body=b"", headers=headers)
                resp = self._conn.getresponse()
                if resp.status == 101:
                    return resp
                resp.read()
            except (OSError, http.client.HTTPException) as e:
                self._conn.close()
                self._used = False
                stale = isinstance(e, ConnectionResetError | BrokenPipeError)
                if attempt == 1 and reused and stale:
                    continue
                raise _Retry(f"{type(e).__name__}: {e}") from e
            self._used = True
            if resp.will_close:
                self._conn.close()
                self._used = False
            if resp.status == 401:
                raise _Refused(f"the gateway refused the worker token (401 on {frames.PATH})")
            return None
        raise AssertionError("unreachable")

    def _drop_framed(self) -> None:
        reader, sock = self._reader, self._sock
        self._reader = self._sock = None
        self._asked = False
        for closable in (reader, sock):
            if closable is not None:
                with contextlib.suppress(OSError):
                    closable.close()

    def _send_frames(self, pending: Result | None) -> None:
        assert self._sock is not None
        if pending is None:
            self._sock.sendall(_NEXT)
            return
        parts = []
        if pending.stdout or pending.stderr:
            out = _cut(pending.stdout).encode("utf-8", "replace")
            err = _cut(pending.stderr).encode("utf-8", "replace")
            meta = json.dumps({"id": pending.call_id, "stdout": len(out)}).encode()
            parts.append(frames.frame(frames.LOGS, meta, out + err))
        result: dict[str, object] = {"id": pending.call_id, "status": pending.status}
        if pending.headers:
            result["headers"] = [[str(k), str(v)] for k, v in pending.headers]
        if pending.error is not None:
            result["error"] = pending.error
        if pending.exit_code is not None:
            result["exit_code"] = pending.exit_code
        meta = json.dumps(result).encode()
        body = pending.body
        if len(body) <= _JOIN_LIMIT:
            parts.append(frames.frame(frames.NEXT, meta, body))
            self._sock.sendall(b"".join(parts) if len(parts) > 1 else parts[0])
        else:  # a large body is sent as it is, never copied
            parts.append(frames.HEAD.pack(frames.NEXT, len(meta), len(body)) + meta)
            self._sock.sendall(b"".join(parts))
            self._sock.sendall(body)
        pending.stdout = pending.stderr = ""

    def _read_frame(self) -> tuple[int, dict[str, object], bytes]:
        kind, meta_len, body_len = frames.HEAD.unpack(self._read(frames.HEAD.size))
        meta = json.loads(self._read(meta_len)) if meta_len else {}
        if not isinstance(meta, dict):
            raise ValueError("a frame's meta is not a JSON object")
        return kind, meta, self._read(body_len)

    def _read(self, size: int) -> bytes:
        assert self._reader is not None
        data = self._reader.read(size)
        while len(data) < size:
            more = self._reader.read(size - len(data))
            if not more:
                raise ConnectionResetError("the gateway closed the framed connection")
            data += more
        return data

    def _send_logs(self, result: Result) -> None:
        payload = json.dumps({"stdout": _cut(result.stdout), "stderr": _cut(result.stderr)}).encode(
            "utf-8"
        )
        path = "/runtime/logs/" + urllib.parse.quote(result.call_id, safe="")
        status, _, data = self._request(path, payload, {"Content-Type": "application/json"})
        if status >= 300:
            log(f"logs of {result.call_id} refused ({status}): {data[:200]!r}")
        result.stdout = result.stderr = ""

    # -- one invocation -----------------------------------------------------------------

    def _run(self, call_id: str, raw_deadline: object, event: object, body: bytes) -> Result:
        try:
            if isinstance(event, ValueError):
                raise event
            deadline = int(str(raw_deadline)) / 1000 if raw_deadline else None
            if not isinstance(event, dict):
                raise ValueError("the call's event is not a JSON object")
        except ValueError as e:
            return error_result(call_id, e, status=400)
        inv = Call(call_id, event, body, deadline)
        if deadline is not None and time.time() > deadline:
            return Result(call_id, status=504, error="the deadline passed before the call started")
        return run_handler(self.rt.handler, inv)


#: A framed call as the loop runs it: id, deadline (epoch ms), event (a ValueError when it
#: could not be parsed), body.
_Handed = tuple[str, object, object, bytes]
_NEXT = frames.frame(frames.NEXT)
#: Up to this size a result's body is joined to its frame's head (one send, one copy).
_JOIN_LIMIT = 64 << 10
_ALIVE = frames.frame(frames.ALIVE)


def _cut(text: str) -> str:
    """At most 1 MiB of UTF-8, cut on a character boundary."""
    data = text.encode("utf-8", "replace")
    if len(data) <= capture.LOG_LIMIT:
        return text
    return data[: capture.LOG_LIMIT].decode("utf-8", "ignore")


class _Retry(Exception):
    """A failure worth retrying after a backoff (connection error, 5xx, 429)."""


class _Refused(Exception):
    """The gateway refused the token: stop."""


class _Dropped(Exception):
    """A result the gateway will not take even as an error: give it up."""


def serve(config: RuntimeConfig) -> int:
    """Load the handler and serve until retired; the process's exit status."""
    # Before the handler is imported: a logging handler it sets up at import time then
    # writes through the router too, so its records land in each call's log.
    capture.install()
    handler = load_handler(
        config.handler_kind,
        config.handler,
        workdir=config.workdir,
        function=config.function,
        concurrency=config.concurrency,
    )
    if isinstance(handler, FailedHandler):
        log(handler.message)
    runtime = Runtime(config, handler)
    _on_signals(runtime)
    return runtime.run()


def _on_signals(runtime: Runtime) -> None:
    import signal

    def drain(signum: int, frame: object) -> None:
        runtime.retire(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, drain)


def main() -> int:
    """Entry point of ``python -m swarmless.runtime``."""
    try:
        config = RuntimeConfig.from_env()
    except ValueError as e:
        log(f"cannot start: {e}")
        return 1
    # The token is the runtime's, not the function's: keep it out of handler code and
    # out of the environment of forked commands.
    os.environ.pop("SWARMLESS_WORKER_TOKEN", None)
    return serve(config)
