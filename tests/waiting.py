"""Waiting in tests: on an observable condition, with a deadline, never a bare sleep.

A test that needs something to have happened (a record written, a container gone, a
poller waiting) asks for it again until it holds, and fails after ``timeout`` seconds
saying what it waited for and what it saw last::

    wait_until(lambda: client.invocation(call_id).status == "succeeded", 10, "the record")
    rec = wait_until(lambda: client.invocation(call_id), 10, "the record", ok=lambda r: r.cold)

The short pause between two asks is a poll interval, not synchronisation.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["eventually", "wait_until"]

T = TypeVar("T")


def wait_until(
    probe: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = 0.05,
    ok: Callable[[T], object] = bool,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``probe()`` until ``ok`` holds for its value (by default: until the value
    is truthy) and return that value; raise ``AssertionError`` after ``timeout`` seconds.

    Exceptions of the types in ``ignore`` count as "not yet" (a node that is away, a
    server still starting); any other exception propagates at once.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = probe()
        except ignore as e:
            last = e
        else:
            if ok(value):
                return value
            last = value
        if time.monotonic() >= deadline:
            raise _timed_out(timeout, what, last)
        time.sleep(interval)


async def eventually(
    probe: Callable[[], T | Awaitable[T]],
    timeout: float,
    what: str,
    *,
    interval: float = 0.02,
    ok: Callable[[T], object] = bool,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """:func:`wait_until` inside an event loop: ``probe`` may be a coroutine function,
    and the loop runs other tasks between two asks."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            got = probe()
            value: T = await got if inspect.isawaitable(got) else got
        except ignore as e:
            last = e
        else:
            if ok(value):
                return value
            last = value
        if time.monotonic() >= deadline:
            raise _timed_out(timeout, what, last)
        await asyncio.sleep(interval)


def _timed_out(timeout: float, what: str, last: object) -> AssertionError:
    seen = repr(last)
    seen = seen if len(seen) <= 500 else f"{seen[:500]}..."
    return AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {seen})")
