"""What travels through a warm pool: a :class:`Call` and its :class:`Result`, the
:class:`Worker` holding it, a :class:`Waiter` (a poller waiting for its next call) and
:data:`RETIRE` (the answer that tells a worker to exit).

:class:`~swarmless.dispatch.pool.WarmPool` moves them; :mod:`~swarmless.dispatch.pool`
re-exports every name here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Literal, Protocol

from swarmless.records import InvocationRecord

__all__ = ["RETIRE", "Call", "Result", "Retire", "Waiter", "Worker", "WorkerState"]

WorkerState = Literal["starting", "ready", "paused", "draining", "gone"]


class Retire:
    """The answer to a poll that tells the worker to finish and exit (HTTP 410)."""

    def __repr__(self) -> str:
        return "RETIRE"


RETIRE = Retire()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Result:
    """What a worker answered for one call."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    error: str | None = None
    exit_code: int | None = None


@dataclasses.dataclass(eq=False, kw_only=True)
class Call:
    """One invocation travelling through a pool."""

    record: InvocationRecord
    #: The JSON event header (method, path, query, headers) sent to the worker.
    event: bytes
    body: bytes
    #: Monotonic deadline, and the same instant in epoch ms for the worker.
    deadline: float
    deadline_ms: int
    future: asyncio.Future[Result]
    queued: float = dataclasses.field(default_factory=time.monotonic)
    worker: Worker | None = None

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def finished(self) -> bool:
        return self.future.done()


@dataclasses.dataclass(eq=False, kw_only=True)
class Worker:
    """A warm container as the gateway sees it."""

    id: str
    token: str
    function: str
    version: int
    container: str | None = None
    #: When its container's start returned (monotonic; None: not yet).
    launched_at: float | None = None
    state: WorkerState = "starting"
    created: float = dataclasses.field(default_factory=time.monotonic)
    ready_at: float | None = None
    last_active: float = dataclasses.field(default_factory=time.monotonic)
    #: When it was last handed a call or answered one (None: it never served one).
    last_call: float | None = None
    in_hand: dict[str, Call] = dataclasses.field(default_factory=dict)

    @property
    def busy(self) -> bool:
        return bool(self.in_hand)


class Waiter(Protocol):
    """A poller of ``worker`` waiting for its next call."""

    @property
    def worker(self) -> Worker: ...

    def live(self) -> bool:
        """Whether it still waits (its connection is open, nothing was handed to it)."""
        ...

    def deliver(self, got: Call | Retire) -> None:
        """Hand it ``got`` (it then no longer waits); called only while :meth:`live`."""
        ...
