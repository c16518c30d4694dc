"""One event loop in a thread of its own, where every native call's I/O happens.

The async core runs there; the sync faces wait for it (:meth:`Runner.run`) and the async
faces await it from any loop (:meth:`Runner.wrap`), so the httpx client is only ever used
on the loop that made it (a notebook's own loop, a test's, ...). Sync and async twins of a
method are one implementation: :class:`Twin` is the sync call with an ``aio`` attribute.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Generic, ParamSpec, TypeVar

__all__ = ["Runner", "Twin"]

T = TypeVar("T")
A = TypeVar("A")
P = ParamSpec("P")


class Runner:
    """A daemon thread running an event loop (started on first use)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                threading.Thread(target=run, name=self._name, daemon=True).start()
                ready.wait()
                self._loop = loop
            return self._loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for it here (a sync face)."""
        loop = self.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coro.close()
            raise RuntimeError("a sync native call made on the native loop itself: use .aio")
        return self.submit(coro).result()

    async def wrap(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and await it from the caller's loop (an async face)."""
        loop = self.loop
        if asyncio.get_running_loop() is loop:
            return await coro
        return await asyncio.wrap_future(self.submit(coro))

    def close(self) -> None:
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)


class Twin(Generic[P, T, A]):
    """A sync method with its async twin as ``.aio``: ``f.remote(x)``, ``await
    f.remote.aio(x)``."""

    def __init__(self, sync: Callable[P, T], aio: Callable[P, A]) -> None:
        self._sync = sync
        self.aio = aio
        self.__doc__ = sync.__doc__

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._sync(*args, **kwargs)
