"""Per-invocation output capture for handlers that run in this process.

With several poller threads, ``print()`` from two invocations at once must land in two
different logs. :func:`install` replaces ``sys.stdout`` and ``sys.stderr`` by a
:class:`Router` that looks up the calling thread's :class:`Capture` (set by
:func:`capturing`) and writes there, or to the original stream when the thread captures
nothing (the runtime's own messages, threads a handler started itself).
"""

from __future__ import annotations

import io
import sys
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO

__all__ = ["LOG_LIMIT", "Capture", "Router", "capturing", "install"]

#: Each stream of one invocation's log is cut at this many characters (the API's 1 MiB).
LOG_LIMIT = 1 << 20

_local = threading.local()


class Capture:
    """The text one invocation wrote to one stream, cut at :data:`LOG_LIMIT`."""

    __slots__ = ("_parts", "_size", "truncated")

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._size = 0
        self.truncated = False

    def write(self, text: str) -> None:
        room = LOG_LIMIT - self._size
        if room <= 0:
            self.truncated = True
            return
        if len(text) > room:
            text = text[:room]
            self.truncated = True
        self._parts.append(text)
        self._size += len(text)

    def getvalue(self) -> str:
        return "".join(self._parts)


class Router(io.TextIOBase):
    """A text stream that writes to the calling thread's capture, else to ``original``."""

    def __init__(self, original: TextIO, slot: str) -> None:
        super().__init__()
        self._original = original
        self._slot = slot

    def _target(self) -> Capture | None:
        captures: tuple[Capture, Capture] | None = getattr(_local, "captures", None)
        if captures is None:
            return None
        return captures[0] if self._slot == "stdout" else captures[1]

    def write(self, s: str) -> int:
        target = self._target()
        if target is None:
            return self._original.write(s)
        target.write(s)
        return len(s)

    def flush(self) -> None:
        if self._target() is None:
            self._original.flush()

    def isatty(self) -> bool:
        return self._target() is None and self._original.isatty()

    def fileno(self) -> int:
        return self._original.fileno()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._original.encoding

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return self._original.errors

    @property
    def buffer(self) -> object:
        # Bytes written here bypass the capture (they go to the container's log).
        return self._original.buffer


def install() -> None:
    """Route ``sys.stdout`` and ``sys.stderr`` through thread-aware routers (once)."""
    if not isinstance(sys.stdout, Router):
        sys.stdout = Router(sys.stdout, "stdout")
    if not isinstance(sys.stderr, Router):
        sys.stderr = Router(sys.stderr, "stderr")


class capturing:
    """``with capturing() as (out, err):`` captures this thread's prints into two buffers."""

    __slots__ = ("_saved", "captures")

    def __init__(self) -> None:
        self.captures = (Capture(), Capture())
        self._saved: tuple[Capture, Capture] | None = None

    def __enter__(self) -> tuple[Capture, Capture]:
        self._saved = getattr(_local, "captures", None)
        _local.captures = self.captures
        return self.captures

    def __exit__(self, *exc: object) -> None:
        _local.captures = self._saved
