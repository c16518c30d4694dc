"""Waiting for a call to change, in memory: ``GET /invocations/{id}/result?wait=S``.

A client that waits for an async call's result must not cost the store a query every
few milliseconds. The store tells :class:`Watchers` about every record it is given
(buffered, saved or finished) and a waiting request sleeps on an event of its own until
its call's record changes, re-reading the store then (and every ``fallback`` seconds, for
a change written by another process). Watchers are bounded (:data:`MAX_WATCHERS`): past
that, a wait is a slow poll, never an unbounded table::

    with store.watch(call_id) as changed:
        while not final(await store.get_invocation(call_id)):
            await changed.wait(deadline)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

__all__ = ["MAX_WATCHERS", "Change", "Watchers"]

#: Requests waiting at once for a call to change.
MAX_WATCHERS = 10_000


class Change:
    """One waiter's view of one call: :meth:`wait` returns when it changed (or later)."""

    def __init__(self, fallback: float) -> None:
        self._event = asyncio.Event()
        self._fallback = fallback

    def _set(self) -> None:
        self._event.set()

    async def wait(self, deadline: float) -> None:
        """Until the call changed, ``deadline`` (monotonic) passed, or ``fallback``
        seconds went by (then look again anyway); clears for the next wait."""
        left = min(deadline - time.monotonic(), self._fallback)
        if left > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), left)
        self._event.clear()


class Watchers:
    """Who waits for which call (the event loop's thread only)."""

    def __init__(self, *, fallback: float = 5.0, poll: float = 1.0) -> None:
        self._by_call: dict[str, set[Change]] = {}
        self._count = 0
        self._fallback = fallback
        self._poll = poll

    def __len__(self) -> int:
        return self._count

    @contextlib.contextmanager
    def watch(self, call_id: str) -> Iterator[Change]:
        """A :class:`Change` of ``call_id`` for the duration of the block."""
        if self._count >= MAX_WATCHERS:
            yield Change(self._poll)  # never notified: a poll every ``poll`` seconds
            return
        change = Change(self._fallback)
        self._by_call.setdefault(call_id, set()).add(change)
        self._count += 1
        try:
            yield change
        finally:
            self._count -= 1
            waiting = self._by_call.get(call_id)
            if waiting is not None:
                waiting.discard(change)
                if not waiting:
                    del self._by_call[call_id]

    def changed(self, call_id: str) -> None:
        """Call ``call_id``'s record changed: wake whoever waits for it."""
        for change in self._by_call.get(call_id, ()):
            change._set()
