"""The native call's wire format, and the caller's side of it (the host SDK and nested
calls inside a container share it): encode a call, decode a reply, raise a remote
exception, print a call's remote output. The format and the container's side are described
in :mod:`~swarmless.runtime.native`, which re-exports every name here.

Standard library only, like the rest of the runtime.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import pickle
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "CALL_MAGIC",
    "ERROR",
    "GENERATOR",
    "OK",
    "PYTHON",
    "REPLY_MAGIC",
    "RemoteError",
    "decode_reply",
    "emit_logs",
    "encode_call",
    "hash_of",
    "raise_remote",
]

CALL_MAGIC = b"SWN1C"
REPLY_MAGIC = b"SWN1R"
OK, GENERATOR, ERROR = 0, 1, 2
#: The Python of this interpreter: cloudpickle's code objects need the same minor version.
PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"


class RemoteError(Exception):
    """An exception raised in the container that cannot be rebuilt here (its class does not
    exist on this side, or it would not pickle): its type name, message and traceback."""

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.remote_message = message
        self.remote_traceback = traceback


def encode_call(
    key: bytes,
    *,
    fn: str,
    code_hash: str,
    code: bytes | None,
    args: bytes,
    budget: float,
) -> bytes:
    """The signed body of one call (or batch): ``args`` is the cloudpickle of a list of
    ``(args, kwargs)``."""
    payload = pickle.dumps(
        {"py": PYTHON, "fn": fn, "hash": code_hash, "code": code, "args": args, "budget": budget},
        protocol=5,
    )
    return CALL_MAGIC + hmac.new(key, payload, hashlib.sha256).digest() + payload


def decode_reply(body: bytes) -> dict[str, Any]:
    """A reply's items and logs; a body that is not a reply raises :class:`RemoteError`."""
    if not body.startswith(REPLY_MAGIC):
        text = body[:2000].decode("utf-8", "replace")
        raise RemoteError("NativeProtocolError", f"the pool did not answer a native reply: {text}")
    reply: dict[str, Any] = pickle.loads(body[len(REPLY_MAGIC) :])
    return reply


def raise_remote(exc: BaseException | None, info: dict[str, str]) -> None:
    """Raise what the container raised: the same exception when it was rebuilt, else a
    :class:`RemoteError`; either way with the remote traceback as a note (and in
    ``remote_traceback``)."""
    tb = info.get("traceback", "")
    if exc is None:
        exc = RemoteError(info.get("type", "Exception"), info.get("message", ""), tb)
    else:
        with contextlib.suppress(AttributeError):  # not on a class with __slots__
            exc.remote_traceback = tb  # type: ignore[attr-defined]
    if tb and hasattr(exc, "add_note"):
        exc.add_note(f"\nRemote traceback (in the container):\n{tb.rstrip()}")
    raise exc


def emit_logs(logs: dict[int, tuple[str, str]], index: int) -> None:
    """Print what the call at ``index`` printed in the container, here."""
    found = logs.get(index)
    if found is None:
        return
    out, err = found
    if out:
        sys.stdout.write(out)
        sys.stdout.flush()
    if err:
        sys.stderr.write(err)
        sys.stderr.flush()


def hash_of(code: bytes) -> str:
    """The key loaded code is cached by (32 hex digits of SHA-256)."""
    return hashlib.sha256(code).hexdigest()[:32]
