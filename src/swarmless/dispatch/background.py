"""Background work of the dispatch parts: tasks that nobody awaits, held and watched.

A task made with ``create_task`` and not kept may be garbage-collected mid-flight, and its
failure goes unseen: :class:`Background` keeps a strong reference until it is done and logs
what it raised. The dispatcher, the worker registry, the recorder and the reconcilers
share one (given to each by the gateway's wiring). A gateway that stops waits for it to
settle (:meth:`Background.settle`): a container start still running would otherwise make
its container after the stop, and nobody would remove it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

__all__ = ["Background"]

log = logging.getLogger("swarmless.dispatch")


class Background:
    """Runs coroutines in the background, keeping a reference and logging failures."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)

    def __len__(self) -> int:
        return len(self._tasks)

    async def settle(self, timeout: float) -> int:
        """Wait (``timeout`` at most) until no task runs, those the running ones spawn
        meanwhile included; returns how many still run then."""
        end = time.monotonic() + timeout
        while self._tasks:
            left = end - time.monotonic()
            if left <= 0:
                break
            await asyncio.wait(set(self._tasks), timeout=left)
        return len(self._tasks)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed: %s", task.exception())
