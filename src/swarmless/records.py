"""What is recorded of every invocation.

One :class:`InvocationRecord` per call: the gateway creates it when the call arrives, the
dispatcher fills in timings as it moves, and the store keeps it (sync calls written behind
in batches, async calls durably before they are accepted). Logs (the stdout and stderr of
that invocation alone) are stored beside it, keyed by the same id, and so is how each child
container the call started (scoped Docker API) ended: one :class:`ChildOutcome` each.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from typing import Any, Literal

__all__ = ["STATUSES", "ChildOutcome", "InvocationRecord", "Status", "new_call_id", "now_ms"]

Status = Literal["queued", "running", "succeeded", "failed", "timeout", "dead", "cancelled"]
STATUSES: tuple[str, ...] = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "timeout",
    "dead",
    "cancelled",
)


def new_call_id() -> str:
    """A call id: sortable by time (ms, hex) then random, e.g. ``0193b2c4d5e6-9f8a7b6c5d4e``.

    Ids are names, not credentials (every route that reads a call needs a token), so a
    fast PRNG seeded from the OS is enough: no system call per invocation.
    """
    return f"{int(time.time() * 1000):012x}-{_random.getrandbits(48):012x}"


_random = random.Random(int.from_bytes(os.urandom(16), "big"))


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch (what records store)."""
    return int(time.time() * 1000)


@dataclasses.dataclass(kw_only=True)
class InvocationRecord:
    """One invocation of a deployed function, as the store keeps it."""

    id: str
    function: str
    mode: str
    status: Status = "queued"
    #: ``sync`` or ``async``
    kind: str = "sync"
    #: Timings, epoch ms.
    queued_at: int = 0
    started_at: int | None = None
    finished_at: int | None = None
    #: Durations, ms: waiting for a container, starting one (cold), running the call.
    wait_ms: float | None = None
    init_ms: float | None = None
    run_ms: float | None = None
    cold: bool | None = None
    container: str | None = None
    attempt: int = 1
    exit_code: int | None = None
    #: HTTP status answered (sync) or recorded (async).
    http_status: int | None = None
    request_size: int = 0
    response_size: int | None = None
    error: str | None = None
    #: The call that made this one (function-to-function calls).
    parent: str | None = None
    #: Async calls: what became of the callback (``delivered 200``, ``failed: ...``).
    callback: str | None = None
    #: A scheduled call fired after its time (the gateway was down when it was due).
    late: bool = False

    def to_dict(self) -> dict[str, Any]:
        # Every field is a plain value: a shallow copy is the deep one (and 30x cheaper
        # than dataclasses.asdict on the hot path of every call).
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InvocationRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChildOutcome:
    """How one child container of a call ended (it may outlive the call: the spec's
    ``children_timeout``)."""

    #: The call whose container started the child.
    call_id: str
    #: The child's container id (12 hex digits, as records show containers).
    container: str
    image: str | None = None
    exit_code: int | None = None
    #: Epoch ms; None when its start was not seen.
    started_at: int | None = None
    finished_at: int
    duration_ms: float | None = None
    #: Killed by swarmless: still running ``children_timeout`` seconds after its caller
    #: exited.
    killed: bool = False
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """What ``GET /invocations/{id}`` shows of it (under ``detached``)."""
        out = dataclasses.asdict(self)
        del out["call_id"]
        return out
