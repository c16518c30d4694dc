"""Writing what happened: invocation records and per-call logs, behind the calls.

A sync call is never slowed by the store: its record and its logs (each stream cut at
:data:`LOG_LIMIT`) are handed to the store's write-behind buffer
(:meth:`~swarmless.store.Store.record`, :meth:`~swarmless.store.Store.keep_logs`), which
returns at once. The buffer is bounded: while the database is away and the buffer is
full, a call still runs and its record is dropped, counted in the metrics
(``swarmless_store_lost_total``). An async call's record is written durably by the async
runner instead, with the call's fate. How a call's child containers ended (reported by the
scoped Docker API, maybe long after the call) is written beside its record, in the
background.
"""

from __future__ import annotations

import logging

from swarmless.dispatch.background import Background
from swarmless.exceptions import SwarmlessError
from swarmless.records import ChildOutcome, InvocationRecord
from swarmless.store import Store

__all__ = ["LOG_LIMIT", "Recorder"]

log = logging.getLogger("swarmless.dispatch")

#: Output kept per stream in an invocation's logs.
LOG_LIMIT = 1 << 20


class Recorder:
    """Records and logs of invocations, written behind."""

    def __init__(self, store: Store, background: Background) -> None:
        self._store = store
        self._background = background

    def record(self, rec: InvocationRecord) -> None:
        """Keep ``rec`` as it is now (write-behind: returns at once)."""
        try:
            self._store.record(rec)
        except SwarmlessError as e:  # the store is closed: the gateway is stopping
            log.warning("the record of %s was not kept: %s", rec.id, e.message)

    def logs(self, call_id: str, stdout: bytes, stderr: bytes) -> None:
        """Keep what call ``call_id`` printed (bounded; written behind, returns at once)."""
        if stdout or stderr:
            try:
                self._store.keep_logs(call_id, stdout[:LOG_LIMIT], stderr[:LOG_LIMIT])
            except SwarmlessError as e:
                log.warning("the logs of %s were not kept: %s", call_id, e.message)

    def child_ended(self, outcome: ChildOutcome) -> None:
        """Keep how a child container of a call ended (in the background)."""
        self._background.spawn(self._keep_child(outcome))

    async def _keep_child(self, outcome: ChildOutcome) -> None:
        try:
            await self._store.record_child(outcome)
        except SwarmlessError as e:
            log.warning(
                "the end of child %s of call %s was not kept: %s",
                outcome.container,
                outcome.call_id,
                e.message,
            )

    async def flush(self) -> None:
        """Write everything buffered now."""
        await self._store.flush()
