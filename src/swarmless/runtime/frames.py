"""The framed runtime connection: one persistent connection per poller, one exchange per call.

A poller opens it one of two ways:

- **HELLO** (no HTTP on the way): a new connection to the runtime API's host and port whose
  first bytes are a HELLO frame, meta ``{"token": <worker token>}``. The gateway tells it
  from an HTTP request by its first byte (a frame type, never a letter of an HTTP method)
  and answers WELCOME (frames from then on), REFUSED (the token opens nothing: exit 1, as
  401) or UNAVAILABLE (not the active gateway), and closes on anything else. A runtime
  that gets no WELCOME (UNAVAILABLE, an older gateway's 400, a closed connection, 10 s of
  silence) asks with HTTP instead; it ends the meta with CRLF CRLF (JSON whitespace), so a
  server that reads HTTP by lines answers 400 at once. The runtime then needs no HTTP
  client to start: its start is shorter (``http.client`` and its imports are a third of
  the runtime's import time).
- **Upgrade**: ``POST /runtime/connect`` carrying its worker token and
  ``Upgrade: swarmless-runtime/1`` (``Connection: Upgrade``). A gateway that speaks it
  answers ``101 Switching Protocols`` and from then on both sides send frames; any other
  answer leaves the poller on ``POST /runtime/next`` (401: the token is refused, as
  there).

The gateway sends nothing after the WELCOME or the 101 before the poller's first frame
(docs/runtime-api.md, "The framed connection").

A frame is a 9-byte head (type, then the lengths of its meta and its body, big-endian),
the meta (a JSON object, UTF-8; empty means ``{}``) and the body (raw bytes)::

    poller -> gateway
      HELLO  the first frame of a connection opened without HTTP: meta {"token"}
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
      WELCOME the answer to HELLO: the connection is framed from now on
      UNAVAILABLE the answer to HELLO of a gateway that is not the active one (a standby
             replica): ask with HTTP

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
    "HELLO",
    "HELLO_LIMIT",
    "IDLE",
    "LOGS",
    "META_LIMIT",
    "NEXT",
    "PATH",
    "REFUSED",
    "RETIRE",
    "UNAVAILABLE",
    "UPGRADE",
    "WELCOME",
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

#: The largest meta of a HELLO frame (a token is 40-odd bytes).
HELLO_LIMIT = 4096

NEXT = 1
LOGS = 2
ALIVE = 3
HELLO = 4
CALL = 11
RETIRE = 12
IDLE = 13
REFUSED = 14
WELCOME = 15
UNAVAILABLE = 16


def frame(kind: int, meta: bytes = b"", body: bytes = b"") -> bytes:
    """One frame, ready to send."""
    return HEAD.pack(kind, len(meta), len(body)) + meta + body
