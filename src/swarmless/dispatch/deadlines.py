"""The deadlines of warm calls: one event-loop timer for every call in flight.

The :class:`~swarmless.dispatch.dispatcher.Dispatcher` adds a warm call's future when it
hands the call to its pool and discards it when the answer comes; a call that is still
waiting at its deadline gets a :class:`TimeoutError` (a 504 at the gateway).
"""

from __future__ import annotations

import asyncio
import math
import time

from swarmless.dispatch.pool import Result

__all__ = ["Deadlines"]


class Deadlines:
    """The deadlines of the warm calls waiting for their answer, with one timer for all of
    them, set at the earliest: a call costs a dict entry, not a timer of the event loop.
    Each firing expires what is due (its future gets a TimeoutError) and sets the timer at
    the next deadline; answered calls leave the table at once, so it holds only the calls
    in flight."""

    def __init__(self) -> None:
        self._calls: dict[asyncio.Future[Result], float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._at = math.inf

    def add(self, future: asyncio.Future[Result], deadline: float) -> None:
        """``future`` gets a TimeoutError at ``deadline`` (monotonic) unless done before."""
        self._calls[future] = deadline
        if deadline < self._at:
            self._arm(deadline)

    def discard(self, future: asyncio.Future[Result]) -> None:
        self._calls.pop(future, None)

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._at = at
        delay = max(0.0, at - time.monotonic())
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer, self._at = None, math.inf
        now = time.monotonic()
        after = math.inf
        for future, at in list(self._calls.items()):
            if at <= now:
                del self._calls[future]
                if not future.done():
                    future.set_exception(TimeoutError())
            elif at < after:
                after = at
        if after < math.inf:
            self._arm(after)
