"""The framed runtime connection: one persistent connection per poller, one exchange per call.

A poller asks for it with ``POST /runtime/connect`` carrying its worker token and
``Upgrade: swarmless-runtime/1`` (``Connection: Upgrade``). A gateway that speaks it answers
``101 Switching Protocols`` and from then on both sides send frames (docs/runtime-api.md,
"The framed connection"); any other answer leaves the poller on ``POST /runtime/next``
(401: the token is refused, as there). The gateway sends nothing after the 101 before the
poller's first frame.

A frame is a 9-byte head (type, then the lengths of its meta and its body, big-endian),
the meta (a JSON object, UTF-8; empty means ``{}``) and the body (raw bytes)::

    poller -> gateway
      NEXT   ready for a call; meta: the result of the previous call, if any
             ({"id", "status", "headers", "error", "exit_code"}), body: the result's body
      LOGS   what a call printed, sent before its result: meta {"id", "stdout": n},
             body: n bytes of stdout then the stderr (no answer)
      ALIVE  the answer to IDLE: the poller is there (no answer)
    gateway -> poller
      CALL   meta {"id", "deadline" (epoch ms), "event"}, body: the request body
      RETIRE finish what you hold and exit 0 (as 410)
      IDLE   no call came for a while: the gateway is there (as 204); answer ALIVE
      REFUSED the token opens nothing any more: exit 1 (as 401)

The gateway answers every NEXT with exactly one CALL, RETIRE or REFUSED, in its own time;
IDLE may come any time before it. A waiting poller that has not answered an IDLE within
two long-poll windows is taken for gone: its connection is closed (as a long poll that was
never renewed). Standard library only: this module is the runtime's and
the gateway's (it imports it), so both always agree.
"""

from __future__ import annotations

import struct

__all__ = [
    "ALIVE",
    "CALL",
    "HEAD",
    "IDLE",
    "LOGS",
    "META_LIMIT",
    "NEXT",
    "PATH",
    "REFUSED",
    "RETIRE",
    "UPGRADE",
    "frame",
]

#: The protocol's name in the ``Upgrade`` header.
UPGRADE = "swarmless-runtime/1"
#: The path of the upgrade request (below the runtime API's base URL).
PATH = "/runtime/connect"
#: type (1 byte), meta length, body length (4 bytes each).
HEAD = struct.Struct(">BII")
#: The largest meta of any frame (a result's headers are in it).
META_LIMIT = 1 << 20

NEXT = 1
LOGS = 2
ALIVE = 3
CALL = 11
RETIRE = 12
IDLE = 13
REFUSED = 14


def frame(kind: int, meta: bytes = b"", body: bytes = b"") -> bytes:
    """One frame, ready to send."""
    return HEAD.pack(kind, len(meta), len(body)) + meta + body
