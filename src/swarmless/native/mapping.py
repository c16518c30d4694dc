"""``map`` and ``starmap``: many calls in few round trips, with bounded memory both sides.

Inputs are read lazily and sent in *batches*: one HTTP exchange runs a batch item after
item in one container. A batch starts small (the first results come back fast) and grows
(at most fourfold a step) towards about :data:`TARGET_SECONDS` of round trip and
:data:`TARGET_BYTES` of pickled arguments, so 100,000 tiny inputs cost a few dozen
exchanges. At most ``max_concurrency`` batches are in flight (default: twice what the pool
can run at once, ``max_containers * concurrency``, so that a container finds its next
batch waiting); the worker stops a batch after its budget and replies with what it ran,
and the rest is sent again. Results are handed over batch by
batch, in input order (``order=True``, held back while an earlier batch runs, at most
:data:`HOLD` of them) or as they come; the generator does not read more input while its
consumer is not reading results: back-pressure, both sides.

A batch that fails as a whole (its container died, its deadline passed) is split and its
calls sent one by one, so each gets its own outcome. A terminal shows a progress bar.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from swarmless.exceptions import InvalidArgument, PayloadTooLarge, QueueFull, SwarmlessError
from swarmless.runtime import native as wire

if TYPE_CHECKING:
    from swarmless.native._types import FunctionLike

__all__ = ["Mapper"]

FIRST_BATCH = 8
MAX_BATCH = 50_000
TARGET_SECONDS = 0.25
TARGET_BYTES = 1 << 20
#: Results held back (order=True) before no more batches are sent.
HOLD = 100_000

Call = tuple[tuple[Any, ...], dict[str, Any]]
#: One result as handed over: (reply item, what the call printed or None).
Result = tuple[tuple[Any, ...], tuple[str, str] | None]


async def _next(agen: AsyncIterator[list[Result]]) -> list[Result]:
    return await agen.__anext__()


class Mapper:
    """One ``map``: its inputs, options and batching state."""

    def __init__(
        self,
        function: FunctionLike,
        iterable: Iterable[Any],
        *,
        order: bool = True,
        max_concurrency: int | None = None,
        return_exceptions: bool = False,
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        if max_concurrency is not None and (
            not isinstance(max_concurrency, int) or max_concurrency < 1
        ):
            raise InvalidArgument(
                f"max_concurrency must be an integer >= 1, got {max_concurrency!r}"
            )
        self.function = function
        self.iterable = iterable
        self.order = order
        opts = function.options
        # By default two batches per slot: a container finds the next one waiting.
        self.width = max_concurrency or max(1, 2 * opts.max_containers * opts.concurrency)
        self.return_exceptions = return_exceptions
        self.kwargs = dict(kwargs or {})
        self.size = FIRST_BATCH
        self.budget = min(1.0, opts.timeout / 4)
        try:
            self.total: int | None = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            self.total = None

    # -- the two faces --------------------------------------------------------------------

    def sync(self) -> Iterator[Any]:
        runner = self.function.app.runner
        agen = self.batches()
        bar = _Progress.start(self.function.name, self.total)
        try:
            while True:
                try:
                    chunk = runner.run(_next(agen))
                except StopAsyncIteration:
                    return
                for result in chunk:
                    yield self._value(result)
                bar.advance(len(chunk))
        finally:
            bar.stop()
            runner.run(agen.aclose())

    async def aio(self) -> AsyncIterator[Any]:
        runner = self.function.app.runner
        agen = self.batches()
        try:
            while True:
                try:
                    chunk = await runner.wrap(_next(agen))
                except StopAsyncIteration:
                    return
                for result in chunk:
                    yield self._value(result)
        finally:
            await runner.wrap(agen.aclose())

    def _value(self, result: Result) -> Any:
        item, logs = result
        if logs is None and item[0] == wire.OK:
            return item[1]  # the common case, cheaply
        reply = {"items": [item], "logs": {0: logs} if logs is not None else {}}
        return self.function.outcome(reply, 0, raising=not self.return_exceptions)

    # -- the core (on the runner's loop) --------------------------------------------------

    async def batches(self) -> AsyncGenerator[list[Result], None]:
        """Lists of results, as batches complete (see the module docstring)."""
        inputs = iter(self.iterable)
        taken = 0
        exhausted = False
        again: collections.deque[tuple[int, list[Call], bool]] = collections.deque()
        flying: dict[asyncio.Task[Any], tuple[int, list[Call], bool]] = {}
        held: dict[int, Result] = {}
        next_out = 0
        try:
            while True:
                while len(flying) < self.width and len(held) < HOLD:
                    if again:
                        start, calls, single = again.popleft()
                    elif not exhausted:
                        calls = self._take(inputs)
                        if not calls:
                            exhausted = True
                            continue
                        start, single = taken, False
                        taken += len(calls)
                    else:
                        break
                    task = asyncio.ensure_future(self._send(calls))
                    flying[task] = (start, calls, single)
                if not flying:
                    break
                done, _ = await asyncio.wait(flying, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    start, calls, single = flying.pop(task)
                    self._settle(task, start, calls, single, held, again)
                out: list[Result] = []
                if self.order:
                    while next_out in held:
                        out.append(held.pop(next_out))
                        next_out += 1
                else:
                    out = [held.pop(i) for i in sorted(held)]
                if out:
                    yield out
        finally:
            for task in flying:
                task.cancel()

    def _take(self, inputs: Iterator[Any]) -> list[Call]:
        calls: list[Call] = []
        for args in inputs:
            if not isinstance(args, tuple | list):
                raise InvalidArgument(
                    f"starmap takes an iterable of argument tuples, got {type(args).__name__}"
                )
            calls.append((tuple(args), self.kwargs))
            if len(calls) >= self.size:
                break
        return calls

    async def _send(self, calls: list[Call]) -> tuple[dict[str, Any], float]:
        started = time.monotonic()
        while True:
            try:
                reply = await self.function.send(calls, self.budget)
            except QueueFull as e:  # more batches than the pool queues: wait, then again
                await asyncio.sleep(min(5.0, max(0.05, e.retry_after)))
                continue
            return reply, time.monotonic() - started

    def _settle(
        self,
        task: asyncio.Task[Any],
        start: int,
        calls: list[Call],
        single: bool,
        held: dict[int, Result],
        again: collections.deque[tuple[int, list[Call], bool]],
    ) -> None:
        error = task.exception()
        if isinstance(error, PayloadTooLarge) and len(calls) > 1:
            half = len(calls) // 2
            self.size = max(1, half)
            again.appendleft((start + half, calls[half:], single))
            again.appendleft((start, calls[:half], single))
            return
        if error is not None:
            if isinstance(error, InvalidArgument) or not isinstance(error, SwarmlessError):
                raise error  # the caller's mistake, or ours: not one call's outcome
            if len(calls) > 1 and not single:
                for i in reversed(range(len(calls))):
                    again.appendleft((start + i, [calls[i]], True))
                return
            for i in range(len(calls)):
                held[start + i] = ((wire.ERROR, error, {}), None)
            return
        reply, seconds = task.result()
        items = reply["items"]
        logs = reply["logs"]
        for i, item in enumerate(items):
            held[start + i] = (item, logs.get(i))
        if len(items) < len(calls):
            again.appendleft((start + len(items), calls[len(items) :], single))
        self._grow(len(items), seconds, int(reply.get("sent_bytes") or 0) / len(calls))

    def _grow(self, ran: int, seconds: float, bytes_per_call: float) -> None:
        if ran < self.size:
            return  # a short batch says little about the next
        per_call = max(seconds / ran, 1e-7)
        by_bytes = TARGET_BYTES / max(bytes_per_call, 1.0)
        want = min(TARGET_SECONDS / per_call, by_bytes, MAX_BATCH, self.size * 4)
        if self.total is not None:  # enough batches to keep every slot busy to the end
            want = min(want, max(1, self.total // (4 * self.width)))
        self.size = max(1, int(want))


class _Progress:
    """A Rich progress bar on a terminal's stderr; nothing elsewhere."""

    def __init__(self, bar: Any, task: Any) -> None:
        self._bar = bar
        self._task = task

    @classmethod
    def start(cls, name: str, total: int | None) -> _Progress:
        if not sys.stderr.isatty():
            return cls(None, None)
        from rich.progress import Progress

        bar = Progress(transient=True)
        task = bar.add_task(f"{name}.map", total=total)
        bar.start()
        return cls(bar, task)

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
