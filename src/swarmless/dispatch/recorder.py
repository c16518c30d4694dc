"""Writing what happened: invocation records and per-call logs, behind the calls.

A sync call is never slowed by the store: its record is handed to the store's
write-behind buffer (:meth:`~swarmless.store.Store.record`), its logs written in the
background, each stream cut at :data:`LOG_LIMIT`. An async call's record is written
durably by the async runner instead, with the call's fate.
"""

from __future__ import annotations

from swarmless.dispatch.background import Background
from swarmless.records import InvocationRecord
from swarmless.store import Store

__all__ = ["LOG_LIMIT", "Recorder"]

#: Output kept per stream in an invocation's logs.
LOG_LIMIT = 1 << 20


class Recorder:
    """Records and logs of invocations, written behind."""

    def __init__(self, store: Store, background: Background) -> None:
        self._store = store
        self._background = background

    def record(self, rec: InvocationRecord) -> None:
        """Keep ``rec`` as it is now (write-behind: returns at once)."""
        self._store.record(rec)

    def logs(self, call_id: str, stdout: bytes, stderr: bytes) -> None:
        """Keep what call ``call_id`` printed (bounded; written in the background)."""
        if stdout or stderr:
            self._background.spawn(
                self._store.put_logs(call_id, stdout[:LOG_LIMIT], stderr[:LOG_LIMIT])
            )

    async def flush(self) -> None:
        """Write everything buffered now."""
        await self._store.flush()
