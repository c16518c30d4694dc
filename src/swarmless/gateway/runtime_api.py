"""The runtime API: warm containers pull their next call here (docs/runtime-api.md).

``POST /runtime/next`` carries the result of the previous call and answers with the next
one: one round trip per call. While a poll waits, the handler also listens for the
worker's disconnect; a call handed to a poller that went away goes back to the queue.

It asks the worker registry whose token a request carries
(:class:`~swarmless.dispatch.workers.WorkerRegistry`), takes calls from and hands results
to that worker's :class:`~swarmless.dispatch.pool.WarmPool`, and gives the logs a worker
sends to the :class:`~swarmless.dispatch.recorder.Recorder`.
"""

from __future__ import annotations

import asyncio
import json
import logging

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
    header,
    read_body,
    send_response,
)

__all__ = ["LOGS_LIMIT", "LONG_POLL", "RuntimeAPI"]

log = logging.getLogger("swarmless.runtime_api")

#: How long a poll waits for work before answering 204.
LONG_POLL = 25.0
#: The largest body of a worker's logs (the runtime sends 1 MiB per stream at most, as
#: JSON); a result's limit is its function's ``max_output``.
LOGS_LIMIT = 16 << 20
_JSON = [(b"content-type", b"application/json")]


class RuntimeAPI:
    """Raw ASGI app for ``/runtime/next`` and ``/runtime/logs/{call_id}``."""

    def __init__(
        self, workers: WorkerRegistry, recorder: Recorder, *, long_poll: float = LONG_POLL
    ) -> None:
        self._workers = workers
        self._recorder = recorder
        self.long_poll = long_poll

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
            gone = asyncio.ensure_future(_disconnected(receive))
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


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _result(scope: Scope, body: bytes) -> Result:
    status_text = header(scope, b"x-swarmless-result-status") or "200"
    headers_text = header(scope, b"x-swarmless-result-headers")
    error = header(scope, b"x-swarmless-error")
    exit_text = header(scope, b"x-swarmless-exit-code")
    headers: list[tuple[str, str]] = []
    if headers_text:
        try:
            headers = [(str(k), str(v)) for k, v in json.loads(headers_text)]
        except (ValueError, TypeError):
            error = error or f"the runtime sent malformed result headers: {headers_text[:100]!r}"
    try:
        status = int(status_text)
    except ValueError:
        error = error or f"it answered a status that is not a number: {status_text[:40]!r}"
        status = 502
    if error is None:
        # What cannot be sent as an HTTP answer fails here (502 naming why), never later
        # as a dropped connection.
        error = answer_problem(status, headers)
        if status in NO_BODY:
            body = b""
    return Result(
        status=status,
        headers=headers,
        body=body,
        error=error,
        exit_code=int(exit_text) if exit_text and exit_text.lstrip("-").isdigit() else None,
    )
