"""The poller's framed connection: one exchange per call, without HTTP on the way.

:class:`Channel` asks its gateway to upgrade the poller's connection
(``POST /runtime/connect``, :meth:`~swarmless.runtime.poll_http.HttpChannel.upgrade`) and
then sends a NEXT frame (the result in hand, after a LOGS frame of its prints) and reads a
CALL, IDLE, RETIRE or REFUSED frame for its answer (200, 204, 410, 401), the frames of
:mod:`~swarmless.runtime.frames`. A gateway that answers anything but 101 (an older one, a
standby replica) is asked again after :data:`FRAMED_RETRY` seconds; until then the channel
uses ``/runtime/next`` (:class:`~swarmless.runtime.poll_http.HttpChannel`).
"""

from __future__ import annotations

import contextlib
import json
import time

from swarmless.runtime import frames
from swarmless.runtime.poll_http import HttpChannel, Refused, Retry, cut

TYPE_CHECKING = False
if TYPE_CHECKING:
    import io
    import socket
    from collections.abc import Callable

    from swarmless.runtime.config import RuntimeConfig
    from swarmless.runtime.invocation import Result
    from swarmless.runtime.poll_http import Handed

__all__ = ["FRAMED_RETRY", "Channel"]

#: Seconds a poller keeps to ``/runtime/next`` after its gateway refused the framed
#: connection, before it asks again.
FRAMED_RETRY = 30.0
_NEXT = frames.frame(frames.NEXT)
#: Up to this size a result's body is joined to its frame's head (one send, one copy).
_JOIN_LIMIT = 64 << 10
_ALIVE = frames.frame(frames.ALIVE)


class Channel(HttpChannel):
    """A poller's connection to its gateway: framed when the gateway offers it, else
    ``POST /runtime/next``."""

    def __init__(self, config: RuntimeConfig, contact: Callable[[], None]) -> None:
        super().__init__(config, contact)
        # The framed connection (None: not open), its reader, and whether a NEXT sent on
        # it waits for its answer.
        self._sock: socket.socket | None = None
        self._reader: io.BufferedReader | None = None
        self._asked = False
        #: Monotonic time before which the poller does not ask for frames again.
        self._http_until = 0.0

    def exchange(self, pending: Result | None) -> tuple[int, Handed | None]:
        """Deliver ``pending`` (if any) and take the gateway's answer: 200 with a call,
        204, or 410; raises Retry, Refused or Dropped."""
        got = self._frame_next(pending) if time.monotonic() >= self._http_until else None
        if got is None:
            if pending is not None and (pending.stdout or pending.stderr):
                self.send_logs(pending)
            got = self.post_next(pending)
        return got

    def close(self) -> None:
        self._drop_framed()
        super().close()

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
        """Ask for the framed connection on this poller's connection: True once it is."""
        resp = self.upgrade()
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
            raise Retry("the upgraded connection has no socket")
        self._sock, self._reader = sock, reader
        self._asked = False
        return True

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
