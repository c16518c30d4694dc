"""Background work of the dispatch parts: tasks that nobody awaits, held and watched.

A task made with ``create_task`` and not kept may be garbage-collected mid-flight, and its
failure goes unseen: :class:`Background` keeps a strong reference until it is done and logs
what it raised. The dispatcher, the worker registry, the recorder and the reconcilers
share one (given to each by the gateway's wiring).
"""

from __future__ import annotations

import asyncio
import logging
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


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed: %s", task.exception())
