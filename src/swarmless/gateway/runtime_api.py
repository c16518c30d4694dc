"""The runtime API: warm containers pull their next call here (docs/runtime-api.md).

``POST /runtime/next`` carries the result of the previous call and answers with the next
one: one round trip per call. While a poll waits, the handler also listens for the
worker's disconnect; a call handed to a poller that went away goes back to the queue.
A runtime that can asks instead for a framed connection (``POST /runtime/connect``, an
HTTP upgrade, :mod:`swarmless.gateway.runtime_frames`): one exchange per call and no
HTTP at all on it; both ways share this module's checks of a result (:func:`make_result`).

It asks the worker registry whose token a request carries
(:class:`~swarmless.dispatch.workers.WorkerRegistry`), takes calls from and hands results
to that worker's :class:`~swarmless.dispatch.pool.WarmPool`, and gives the logs a worker
sends to the :class:`~swarmless.dispatch.recorder.Recorder`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Protocol

from swarmless.dispatch.pool import RETIRE, Call, Result, Worker
from swarmless.dispatch.recorder import Recorder
from swarmless.dispatch.request import NO_BODY, answer_problem
from swarmless.dispatch.workers import WorkerRegistry
from swarmless.exceptions import PayloadTooLarge
from swarmless.gateway.asgi import ClientGone as ClientGone
from swarmless.gateway.asgi import (
    Receive,
    Scope,
    Send,
    bearer,
    disconnected,
    header,
    read_body,
    send_response,
)

__all__ = ["LOGS_LIMIT", "LONG_POLL", "RuntimeAPI", "make_result"]

log = logging.getLogger("swarmless.runtime_api")

#: How long a poll waits for work before answering 204.
LONG_POLL = 25.0
#: The largest body of a worker's logs (the runtime sends 1 MiB per stream at most, as
#: JSON); a result's limit is its function's ``max_output``.
LOGS_LIMIT = 16 << 20
_JSON = [(b"content-type", b"application/json")]


class Idler(Protocol):
    """A framed connection as the runtime API's heartbeat sees it."""

    def idle(self, now: float, silent_after: float) -> None:
        """Tell the poller the gateway is here, if it waits; close its connection when it
        has been silent for ``silent_after`` seconds."""
        ...


class RuntimeAPI:
    """Raw ASGI app for ``/runtime/next`` and ``/runtime/logs/{call_id}``."""

    def __init__(
        self, workers: WorkerRegistry, recorder: Recorder, *, long_poll: float = LONG_POLL
    ) -> None:
        self._workers = workers
        self._recorder = recorder
        self.long_poll = long_poll
        #: Open framed connections (runtime_frames.FramedWorker), told IDLE every
        #: ``long_poll`` while they wait; one timer for all of them.
        self._framed: set[Idler] = set()
        self._beat: asyncio.TimerHandle | None = None

    def framed_opened(self, conn: Idler) -> None:
        self._framed.add(conn)
        if self._beat is None:
            self._beat = asyncio.get_running_loop().call_later(self.long_poll, self._idle)

    def framed_closed(self, conn: Idler) -> None:
        self._framed.discard(conn)

    def _idle(self) -> None:
        now = time.monotonic()
        for conn in list(self._framed):
            conn.idle(now, 2 * self.long_poll)
        self._beat = None
        if self._framed:
            self._beat = asyncio.get_running_loop().call_later(self.long_poll, self._idle)

    @property
    def workers(self) -> WorkerRegistry:
        """Whose token a worker presents."""
        return self._workers

    @property
    def recorder(self) -> Recorder:
        """Where a worker's logs go."""
        return self._recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = bearer(scope)
        found = self._workers.for_token(token) if token else None
        if found is None:
            await send_response(
                send, 401, b'{"error":"unauthorized","message":"unknown worker token"}', _JSON
            )
            return
        worker, pool = found
        path: str = scope["path"]
        logs = path.startswith("/runtime/logs/")
        done_id = None if logs else header(scope, b"x-swarmless-result-for")
        limit = LOGS_LIMIT if logs else pool.spec.max_output
        try:
            body = await read_body(scope, receive, limit)
        except ClientGone:
            return
        except PayloadTooLarge:
            # Not one byte more is held: the call fails now, the worker hears why (its
            # runtime then sends an error in its place, which finds the call finished).
            what = "logs" if logs else "result"
            message = f"its {what} is over the limit of {limit} bytes" + (
                "" if logs else " (max_output)"
            )
            if done_id:
                failed = Result(status=502, headers=[], body=b"", error=message)
                pool.complete(worker, done_id, failed)
            body = json.dumps({"error": "payload_too_large", "message": message}).encode()
            await send_response(send, 413, body, _JSON)
            return
        if logs:
            await self._logs(worker, path[len("/runtime/logs/") :], body, send)
            return
        if path != "/runtime/next" or scope["method"] != "POST":
            await send_response(send, 404, b'{"error":"not_found"}', _JSON)
            return
        if done_id:
            pool.complete(worker, done_id, _result(scope, body))
        got = pool.take(worker)  # work waiting already: no long poll, no tasks
        if got is not None:
            await self._answer(send, got)
            return
        poll = asyncio.ensure_future(pool.next(worker, self.long_poll))
        if not poll.done():
            gone = asyncio.ensure_future(disconnected(receive))
            await asyncio.wait({poll, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not poll.done():  # the worker went away while it waited: forget the poll
                poll.cancel()
                await asyncio.gather(poll, return_exceptions=True)
                return
            gone.cancel()
            if gone.done() and not gone.cancelled() and isinstance(poll.result(), Call):
                pool.requeue(poll.result())  # type: ignore[arg-type]
                return
        await self._answer(send, poll.result())

    async def _answer(self, send: Send, got: Call | object | None) -> None:
        if got is None:
            await send_response(send, 204, b"")
        elif got is RETIRE:
            await send_response(send, 410, b'{"error":"retired"}', _JSON)
        else:
            assert isinstance(got, Call)
            await send_response(
                send,
                200,
                got.body,
                [
                    (b"x-swarmless-call-id", got.id.encode()),
                    (b"x-swarmless-deadline", str(got.deadline_ms).encode()),
                    (b"x-swarmless-event", got.event),
                ],
            )

    async def _logs(self, worker: Worker, call_id: str, body: bytes, send: Send) -> None:
        try:
            data = json.loads(body)
            stdout = str(data.get("stdout", "")).encode()
            stderr = str(data.get("stderr", "")).encode()
        except (ValueError, AttributeError):
            await send_response(send, 400, b'{"error":"invalid_argument"}', _JSON)
            return
        if call_id not in worker.in_hand:
            await send_response(
                send, 404, b'{"error":"not_found","message":"not your call"}', _JSON
            )
            return
        self._recorder.logs(call_id, stdout, stderr)
        await send_response(send, 204, b"")


def _result(scope: Scope, body: bytes) -> Result:
    headers_text = header(scope, b"x-swarmless-result-headers")
    error = header(scope, b"x-swarmless-error")
    pairs: object = []
    if headers_text:
        try:
            pairs = json.loads(headers_text)
        except ValueError:
            pairs = headers_text  # not a list: named in the error
    exit_text = header(scope, b"x-swarmless-exit-code")
    return make_result(
        header(scope, b"x-swarmless-result-status") or "200",
        pairs,
        error,
        int(exit_text) if exit_text and exit_text.lstrip("-").isdigit() else None,
        body,
    )


def make_result(
    status_value: object, pairs: object, error: str | None, exit_code: int | None, body: bytes
) -> Result:
    """A worker's result as the caller gets it: a status that is not a number, headers that
    are not ``[name, value]`` pairs, or an answer HTTP cannot carry (:func:`answer_problem`)
    fail the call with a 502 naming why, never later as a dropped connection."""
    headers: list[tuple[str, str]] = []
    malformed = not isinstance(pairs, list)
    if isinstance(pairs, list):
        try:
            headers = [(str(k), str(v)) for k, v in pairs]
        except (ValueError, TypeError):
            malformed = True
    if malformed:
        error = error or f"the runtime sent malformed result headers: {str(pairs)[:100]!r}"
    status = 502
    if isinstance(status_value, int) and not isinstance(status_value, bool):
        status = status_value
    else:
        try:
            status = int(str(status_value))
        except ValueError:
            error = error or f"it answered a status that is not a number: {status_value!r:.40}"
    if error is None:
        error = answer_problem(status, headers)
        if status in NO_BODY:
            body = b""
    return Result(status=status, headers=headers, body=body, error=error, exit_code=exit_code)
