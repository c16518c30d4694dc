"""Records and logs of sync calls, written behind the calls, in a bounded buffer.

Invocation records of sync calls are many and small: :meth:`WriteBehind.record` only
buffers (a later record with the same id replaces an earlier one) and a background task
upserts what is buffered in one transaction every ``flush_interval`` (50 ms) or as soon
as ``batch_size`` (500) records wait. Reads of one record see the buffer.

Nothing buffered is lost on purpose: a batch that fails because the database is busy or
away goes back to the buffer and is retried with backoff, and ``close`` writes what is
left. Only a record the database refuses outright (a value out of range, say) is dropped,
alone, and logged in full, so one bad record cannot hold back the others.

The buffer is bounded (``max_records`` records, ``max_log_bytes`` of logs): while the
database is away it fills, and once full a new record (or log) is dropped and counted
(:attr:`WriteBehind.lost_records`, :attr:`WriteBehind.lost_logs`, the gateway's metrics),
so sync calls keep running without their records; async calls, which must be written
before they are accepted, are refused with 503 meanwhile (:meth:`_check_room`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from swarmless.exceptions import GatewayUnavailable, InvalidArgument, SwarmlessError
from swarmless.records import InvocationRecord
from swarmless.store.db import RETRY_AFTER, Database, refused
from swarmless.store.schema import invocation_logs, invocations

__all__ = ["WriteBehind"]

log = logging.getLogger("swarmless.store")

_Row = dict[str, Any]
#: Seconds between two warnings about dropped rows.
_WARN_EVERY = 10.0


class WriteBehind(Database):
    """The write-behind buffer of the store (a part of :class:`~swarmless.store.Store`)."""

    def _init_buffer(
        self, *, flush_interval: float, batch_size: int, max_records: int, max_log_bytes: int
    ) -> None:
        self._interval = flush_interval
        self._batch_size = batch_size
        self._max_records = max_records
        self._max_log_bytes = max_log_bytes
        # Buffered rows by id, and the batch being written (still visible to readers).
        self._pending: dict[str, _Row] = {}
        self._pending_logs: dict[str, _Row] = {}
        self._inflight: dict[str, _Row] = {}
        self._inflight_logs: dict[str, _Row] = {}
        self._log_bytes = 0
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Records and logs dropped because the buffer was full (the database away).
        self.lost_records = 0
        self.lost_logs = 0
        self._warned = 0.0

    @property
    def buffered(self) -> int:
        """Records and logs waiting to be written."""
        return (
            len(self._pending)
            + len(self._inflight)
            + len(self._pending_logs)
            + len(self._inflight_logs)
        )

    @property
    def buffer_full(self) -> bool:
        """Whether a new record would be dropped."""
        return len(self._pending) + len(self._inflight) >= self._max_records

    def _check_room(self) -> None:
        super()._check_room()
        if self.buffer_full:
            raise GatewayUnavailable(
                f"the gateway's store is behind: {self.buffered} records wait to be written "
                "(the database is slow or away); retry later",
                retry_after=RETRY_AFTER,
            )

    def _start_buffer(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._write_behind(), name="swarmless-store-writer"
        )

    def _lost(self, what: str) -> None:
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY:
            self._warned = now
            log.error(
                "store: the write-behind buffer is full (%d records, %d MiB of logs): %s "
                "dropped (%d records, %d logs so far); the database is slow or away",
                len(self._pending) + len(self._inflight),
                self._log_bytes >> 20,
                what,
                self.lost_records,
                self.lost_logs,
            )

    def record(self, rec: InvocationRecord) -> None:
        """Buffer a record to be written soon (write-behind); returns at once.

        The record is copied now: change it and call again to record the change. Call it
        from the event loop's thread. A full buffer drops a new record (counted).
        """
        if self._closed:
            raise SwarmlessError("the store is closed")
        if not isinstance(rec, InvocationRecord) or not rec.id:
            raise InvalidArgument(f"not an invocation record with an id: {rec!r}")
        known = rec.id in self._pending or rec.id in self._inflight
        if not known and self.buffer_full:
            self.lost_records += 1
            self._lost(f"the record of {rec.id}")
            return
        self._pending[rec.id] = rec.to_dict()
        self._watchers.changed(rec.id)
        self._wake.set()
        if len(self._pending) >= self._batch_size:
            self._full.set()

    def keep_logs(self, call_id: str, stdout: bytes, stderr: bytes) -> None:
        """Buffer the output of one invocation (written behind, like records)."""
        if self._closed:
            raise SwarmlessError("the store is closed")
        size = len(stdout) + len(stderr)
        old = self._pending_logs.get(call_id)
        held = 0 if old is None else len(old["stdout"]) + len(old["stderr"])
        if self._log_bytes - held + size > self._max_log_bytes and size > held:
            self.lost_logs += 1
            self._lost(f"the logs of {call_id}")
            return
        self._pending_logs[call_id] = {
            "id": call_id,
            "stdout": bytes(stdout),
            "stderr": bytes(stderr),
        }
        self._log_bytes += size - held
        self._wake.set()

    async def flush(self) -> None:
        """Write everything buffered now."""
        async with self._turn():
            if not self._pending and not self._pending_logs:
                return
            self._inflight, self._pending = self._pending, {}
            self._inflight_logs, self._pending_logs = self._pending_logs, {}
            try:
                with self._translated():
                    await self._write_batch(self._inflight, self._inflight_logs)
                self._answered()
            except BaseException:
                # Back to the buffer; what was recorded meanwhile is newer and wins.
                for source, target in (
                    (self._inflight, self._pending),
                    (self._inflight_logs, self._pending_logs),
                ):
                    for key, row in source.items():
                        target.setdefault(key, row)
                raise
            finally:
                self._inflight, self._inflight_logs = {}, {}
                self._log_bytes = sum(
                    len(r["stdout"]) + len(r["stderr"]) for r in self._pending_logs.values()
                )

    async def _write_batch(self, rows: dict[str, _Row], logs: dict[str, _Row]) -> None:
        """Upsert a batch in one transaction; rows written (or dropped) leave the dicts.

        The rows go straight to the driver (:meth:`~swarmless.store.db.Database._executemany_all`:
        no per-row work of SQLAlchemy on the event loop's thread, where every sync call is
        served): on SQLite one trip to the driver's thread for both tables, on PostgreSQL
        one statement. A batch the database refuses is written again row by row."""
        work = [
            (self._upsert(invocations, "id"), list(rows.values())),
            (self._upsert(invocation_logs, "id"), list(logs.values())),
        ]
        try:
            async with self._begin(self._writer) as conn, self._gathered(conn):
                await self._executemany_all(conn, work)
        except Exception as e:
            if not refused(e):
                raise
            log.warning("store: the database refused a batch (%s); writing it row by row", e)
        else:
            rows.clear()
            logs.clear()
            return
        for table, batch in ((invocations, rows), (invocation_logs, logs)):
            for key, row in list(batch.items()):
                try:
                    async with self._begin(self._writer) as conn:
                        await conn.execute(self._upsert(table, "id"), [row])
                except Exception as e:
                    if not refused(e):
                        raise
                    log.error("store: dropping a row the database refuses (%s): %r", e, row)
                del batch[key]

    async def _write_behind(self) -> None:
        failures = 0
        while True:
            await self._wake.wait()
            if not self._stopping.is_set() and len(self._pending) < self._batch_size:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._interval)
            self._wake.clear()
            self._full.clear()
            if self._stopping.is_set():
                return  # close() writes what is left
            try:
                await self.flush()
                failures = 0
            except Exception as e:
                failures += 1
                delay = min(5.0, 0.1 * 2 ** min(failures, 6))
                log.warning(
                    "store: writing %d buffered rows failed (%s); retrying in %.1fs",
                    self.buffered,
                    e,
                    delay,
                    exc_info=failures == 1 and not isinstance(e, GatewayUnavailable),
                )
                self._wake.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)

    async def _stop_buffer(self) -> None:
        """Stop the background task and write what is left, retrying for a few seconds."""
        self._stopping.set()
        self._wake.set()
        self._full.set()
        if self._task is not None:
            try:
                await self._task
            except Exception:
                log.exception("store: the write-behind task failed")
        for attempt in range(6):
            try:
                await self.flush()
                return
            except Exception as e:
                if attempt == 5:
                    n = len(self._pending) + len(self._pending_logs)
                    raise SwarmlessError(f"store closed with {n} rows not written: {e}") from e
                await asyncio.sleep(0.1 * 2**attempt)

    def _buffered_record(self, call_id: str) -> _Row | None:
        return self._pending.get(call_id) or self._inflight.get(call_id)

    def _buffered_logs(self, call_id: str) -> _Row | None:
        return self._pending_logs.get(call_id) or self._inflight_logs.get(call_id)
