"""The poller's framed connection: one exchange per call, without HTTP on the way.

:class:`Channel` opens a connection to its gateway's runtime API with a HELLO frame (no
HTTP: a runtime that gets its WELCOME never imports an HTTP client, a third of its start)
or, when the gateway takes no HELLO (UNAVAILABLE from a standby, an older gateway, an
``https`` runtime API or one below a path), asks for the upgrade (``POST
/runtime/connect``, :meth:`~swarmless.runtime.poll_http.HttpChannel.upgrade`). Then it
sends a NEXT frame (the result in hand, after a LOGS frame of its prints) and reads a
CALL, IDLE, RETIRE or REFUSED frame for its answer (200, 204, 410, 401), the frames of
:mod:`~swarmless.runtime.frames`. A gateway that takes neither (a standby replica) is asked
again after :data:`FRAMED_RETRY` seconds; until then the channel uses ``/runtime/next``
(:class:`~swarmless.runtime.poll_http.HttpChannel`).
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import urllib.parse

from swarmless.runtime import frames
from swarmless.runtime.poll_common import POLL_TIMEOUT, Refused, Retry, connect, cut, no_delay

TYPE_CHECKING = False
if TYPE_CHECKING:
    import io
    from collections.abc import Callable

    from swarmless.runtime.config import RuntimeConfig
    from swarmless.runtime.invocation import Result
    from swarmless.runtime.poll_common import Handed
    from swarmless.runtime.poll_http import HttpChannel

__all__ = ["FRAMED_RETRY", "Channel"]

#: Seconds a poller keeps to ``/runtime/next`` after its gateway refused the framed
#: connection, before it asks again.
FRAMED_RETRY = 30.0
_NEXT = frames.frame(frames.NEXT)
#: Up to this size a result's body is joined to its frame's head (one send, one copy).
_JOIN_LIMIT = 64 << 10
_ALIVE = frames.frame(frames.ALIVE)
#: Seconds a HELLO waits for its answer: the gateway answers at once; a server that is
#: silent for this long (waiting for more bytes) is taken for one that does not know it.
HELLO_WAIT = 10.0


class Channel:
    """A poller's connection to its gateway: framed when the gateway offers it, else
    ``POST /runtime/next``."""

    def __init__(self, config: RuntimeConfig, contact: Callable[[], None]) -> None:
        self._config = config
        self._contact = contact
        parts = urllib.parse.urlsplit(config.api)
        #: Where a HELLO goes (None: the runtime API takes none: https, or below a path).
        self._direct: tuple[str, int] | None = None
        if parts.scheme == "http" and not parts.path.strip("/") and parts.hostname:
            self._direct = (parts.hostname, parts.port or 80)
        # The meta ends with CRLF CRLF (JSON whitespace): a server that reads HTTP by lines
        # (not the gateway) sees a bad request line and answers 400 at once.
        meta = json.dumps({"token": config.token}).encode() + b"\r\n\r\n"
        self._hello = frames.frame(frames.HELLO, meta)
        #: The HTTP side, made (and ``http.client`` imported) when first needed.
        self._http: HttpChannel | None = None
        # The framed connection (None: not open), its reader, and whether a NEXT sent on
        # it waits for its answer.
        self._sock: socket.socket | None = None
        self._reader: io.BufferedReader | None = None
        self._asked = False
        #: Monotonic time before which the poller does not ask for frames again.
        self._http_until = 0.0
        #: Monotonic time before which it sends no HELLO (a standby answered UNAVAILABLE).
        self._hello_until = 0.0

    def exchange(self, pending: Result | None) -> tuple[int, Handed | None]:
        """Deliver ``pending`` (if any) and take the gateway's answer: 200 with a call,
        204, or 410; raises Retry, Refused or Dropped."""
        got = self._frame_next(pending) if time.monotonic() >= self._http_until else None
        if got is None:
            http = self._http_side()
            if pending is not None and (pending.stdout or pending.stderr):
                http.send_logs(pending)
            got = http.post_next(pending)
        return got

    def close(self) -> None:
        self._drop_framed()
        if self._http is not None:
            self._http.close()

    def _http_side(self) -> HttpChannel:
        if self._http is None:
            from swarmless.runtime.poll_http import HttpChannel

            self._http = HttpChannel(self._config, self._contact)
        return self._http

    def _frame_next(self, pending: Result | None) -> tuple[int, Handed | None] | None:
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
            raise Retry(f"framed connection: {type(e).__name__}: {e}") from e
        if kind == frames.CALL:
            self._asked = False
            self._contact()
            deadline = meta.get("deadline")
            return 200, (str(meta.get("id") or ""), deadline, meta.get("event"), body)
        if kind == frames.IDLE:
            self._contact()
            try:
                self._sock.sendall(_ALIVE)  # type: ignore[union-attr]
            except OSError as e:
                self._drop_framed()
                raise Retry(f"framed connection: {type(e).__name__}: {e}") from e
            return 204, None
        if kind == frames.RETIRE:
            self._asked = False
            return 410, None
        self._drop_framed()
        if kind == frames.REFUSED:
            raise Refused("the gateway refused the worker token (REFUSED frame)")
        raise Retry(f"the gateway sent a frame of unknown type {kind}")

    def _open_framed(self) -> bool:
        """Open the framed connection: with a HELLO, else with the upgrade on this
        poller's HTTP connection. True once it is open."""
        if self._direct is not None and time.monotonic() >= self._hello_until and self._say_hello():
            return True
        http = self._http_side()
        resp = http.upgrade()
        if resp is None:
            self._http_until = time.monotonic() + FRAMED_RETRY
            return False
        sock = http.taken_socket()
        # The response's buffered reader goes on reading the frames (the gateway sends
        # nothing before the first NEXT, but nothing it buffered would be lost either).
        reader, resp.fp = resp.fp, None  # type: ignore[assignment]
        if sock is None or reader is None:
            raise Retry("the upgraded connection has no socket")
        self._sock, self._reader = sock, reader
        self._asked = False
        return True

    def _say_hello(self) -> bool:
        """A new connection opened with a HELLO frame: True once the gateway answered
        WELCOME; False when it takes no HELLO (the caller asks with HTTP: for
        :data:`FRAMED_RETRY` seconds after UNAVAILABLE, from then on after anything else).
        Refused on REFUSED, Retry when the gateway cannot be reached."""
        assert self._direct is not None
        try:
            sock = connect(*self._direct, POLL_TIMEOUT)
        except OSError as e:
            raise Retry(f"{type(e).__name__}: {e}") from e
        no_delay(sock)
        reader = sock.makefile("rb")
        kind = None
        try:
            sock.sendall(self._hello)
            sock.settimeout(HELLO_WAIT)  # a server that waits for more does not know HELLO
            head = reader.read(frames.HEAD.size)
            sock.settimeout(POLL_TIMEOUT)
            if len(head) == frames.HEAD.size:
                kind, meta_len, body_len = frames.HEAD.unpack(head)
                if meta_len or body_len:  # not an answer to a HELLO (an HTTP 400, ...)
                    kind = None
        except TimeoutError:
            kind = None
        except OSError as e:
            reader.close()
            sock.close()
            raise Retry(f"{type(e).__name__}: {e}") from e
        if kind == frames.WELCOME:
            self._sock, self._reader = sock, reader
            self._asked = False
            return True
        reader.close()
        sock.close()
        if kind == frames.REFUSED:
            raise Refused("the gateway refused the worker token (REFUSED frame)")
        if kind == frames.UNAVAILABLE:  # a standby: it may be the active one later
            self._hello_until = time.monotonic() + FRAMED_RETRY
        else:  # a gateway that does not know HELLO (an older one: its 400, or a close)
            self._direct = None
        return False

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
            out = cut(pending.stdout).encode("utf-8", "replace")
            err = cut(pending.stderr).encode("utf-8", "replace")
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
