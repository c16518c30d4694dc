"""The async runner: takes due calls from the durable queue and runs them.

It claims calls per function up to the function's ``async_concurrency`` (default: its
``max_containers x concurrency``, so async work never takes every container from sync
traffic when set lower), runs each through the same :class:`Dispatcher` as sync calls
(same containers, same deadline), and writes the outcome durably:

- success: record ``succeeded``, the answer kept for ``Invocation.result()``;
- failure with retries left: back to the queue after an exponential backoff with jitter
  (``backoff x 2^(attempt-1) x [0.5, 1.5)``), the record saying why;
- retries spent, or older than ``max_age``: ``dead`` (the dead letter), redrivable;
- the Docker Engine does not answer: back to the queue, not counted as an attempt (and
  nothing is claimed until it answers again: the wiring wakes the runner then).

Then the callback, if one was asked for: the result is POSTed to ``X-Callback-Url`` with
its own bounded retries; what happened is written on the record, and a failing callback
never fails the call or the runner. A gateway that restarts gives back the leases it held
when it died (they run again: at-least-once). A call whose runs were lost that way
:data:`POISON_STARTS` times goes to the dead letter instead of running again: it may be
what brings the gateway down, and start-up must not be crash-looped by the calls it takes
back (the count: the call's claims less the attempts whose outcome was written).

Each try checks the callback where it goes (:class:`CallbackTargets`, the gateway's
:class:`~swarmless.gateway.callbacks.CallbackPolicy`): the URL, then every address its host
resolves to; the request then goes to a checked address itself, never to a second lookup
of the name. A refused callback is not tried again: the record says ``failed: refused:``
and why. Redirects: ``307`` and ``308`` (which keep the POST and its body) are followed,
at most :data:`MAX_REDIRECTS`, each target checked as the first; any other ``3xx`` is not
followed and recorded as a failure. Callbacks go out directly (no ``HTTP_PROXY``) on
connections that are not reused, and the receiver's answer body is never read.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
from collections.abc import Mapping, Sequence
from typing import Protocol

import httpx

from swarmless.dispatch.dispatcher import Dispatcher
from swarmless.dispatch.request import Request
from swarmless.exceptions import (
    EngineUnavailable,
    FunctionNotFound,
    InvalidArgument,
    QueueFull,
    SwarmlessError,
)
from swarmless.records import InvocationRecord, now_ms
from swarmless.spec import FunctionSpec
from swarmless.store import Claimed, Store, StoredResult

__all__ = ["AsyncRunner", "CallbackTargets"]

log = logging.getLogger("swarmless.async")

#: While calls run, how long the runner lets finished slots gather before it claims.
COALESCE = 0.003

#: Callback delivery: tries and the first pause between them (doubling).
CALLBACK_TRIES = 3
CALLBACK_PAUSE = 0.5
#: Redirects (307/308) a callback follows.
MAX_REDIRECTS = 3
#: Runs of one call lost with their gateway (killed, crashed) before it is dead.
POISON_STARTS = 3
#: Seconds between two tries to take back the calls held before a restart (doubling).
TAKE_BACK_MIN = 1.0
TAKE_BACK_MAX = 30.0


class CallbackTargets(Protocol):
    """Where a callback may go (the gateway's ``CallbackPolicy``)."""

    def check_url(self, url: str) -> httpx.URL:
        """The parsed URL; :class:`InvalidArgument` when it is refused."""
        ...

    async def resolve(
        self, url: httpx.URL
    ) -> Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """Every address of ``url``'s host, each checked (:class:`InvalidArgument` when one
        is refused; ``OSError`` when the name does not resolve)."""
        ...


class _Undelivered(Exception):
    """A callback that will not be delivered by trying again (a redirect not followed)."""


def async_limit(spec: FunctionSpec) -> int:
    """How many async calls of a function run at once."""
    return spec.async_concurrency or spec.max_containers * spec.concurrency


class AsyncRunner:
    """Moves async calls from the queue through the dispatcher, durably."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        store: Store,
        *,
        owner: str,
        callbacks: CallbackTargets,
        idle_poll: float = 0.5,
    ) -> None:
        self.dispatcher = dispatcher
        self.callbacks = callbacks
        self.store = store
        self.owner = owner
        self.idle_poll = idle_poll
        #: Set when a call is queued: the runner claims at once.
        self._wake = asyncio.Event()
        #: Calls running per function.
        self._running: dict[str, int] = {}
        self._slot_held: dict[str, bool] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Callbacks: straight to the checked address (no proxy from the environment), and
        # no connection kept: one made for a name is never reused for another on that address.
        self._http = httpx.AsyncClient(
            timeout=10.0,
            trust_env=False,
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        #: Calls waiting per function, refreshed as the runner goes (metrics, ls).
        self._queued: dict[str, int] = {}
        self._stopping = False

    # -- what collaborators ask ------------------------------------------------------------

    def accepted(self, function: str) -> None:
        """A call of ``function`` was queued here: count it (until the next refresh of the
        counts) and claim at once."""
        self._queued[function] = self._queued.get(function, 0) + 1
        self._wake.set()

    def wake_up(self) -> None:
        """Claim now rather than at the next idle poll (a redrive, a schedule that fired)."""
        self._wake.set()

    def waiting(self, function: str) -> int:
        """Async calls of ``function`` waiting in the queue, as last counted."""
        return self._queued.get(function, 0)

    def counts(self, function: str) -> dict[str, int]:
        """Async calls of ``function`` queued and running (for metrics and ``ls``)."""
        return {
            "async_queued": self._queued.get(function, 0),
            "async_running": self._running.get(function, 0),
        }

    # -- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        await self._take_back()
        while not self._stopping:
            self._wake.clear()
            if self.dispatcher.engine_down is not None:  # nothing could run: claim nothing
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.idle_poll)
                continue
            claimed = await self._claim()
            if claimed:
                continue  # there may be more; claim again before sleeping
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.idle_poll)
            if any(self._running.values()):
                # Busy: let a few more calls finish, then claim their slots in one
                # transaction rather than one each (an idle runner claims at once).
                await asyncio.sleep(COALESCE)

    async def _take_back(self) -> None:
        """Give back the calls this gateway held when it stopped, before claiming any. The
        store may be away at start for longer than one try waits: try again (a bounded
        backoff, a line each try) for as long as it takes, never give up the runner."""
        pause, tries = TAKE_BACK_MIN, 0
        while not self._stopping:
            try:
                released = await self.store.release(self.owner)
            except SwarmlessError as e:
                tries += 1
                log.error(
                    "cannot take back the async calls held before a restart (try %d): %s; "
                    "no async call is claimed until then; next try in %g s",
                    tries,
                    e.message,
                    pause,
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, TAKE_BACK_MAX)
                continue
            if released:
                log.warning(
                    "took back %d async call(s) this gateway held when it stopped", released
                )
            if tries:
                log.warning("async runner: the store answers again (after %d failed tries)", tries)
            return

    async def _claim(self) -> list[Claimed]:
        wants: dict[str, tuple[int, int]] = {}
        for name, (spec, _) in self.dispatcher.functions.items():
            free = async_limit(spec) - self._running.get(name, 0)
            if free > 0:
                wants[name] = (free, int((spec.timeout + 30) * 1000))
        try:
            claimed = await self.store.claim(self.owner, wants)
        except SwarmlessError as e:
            log.error("claiming async calls failed: %s", e.message)
            await asyncio.sleep(1)
            return []
        for call in claimed:
            self._running[call.function] = self._running.get(call.function, 0) + 1
            task = asyncio.get_running_loop().create_task(self._run(call))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return claimed

    async def _run(self, call: Claimed) -> None:
        self._slot_held[call.id] = True
        try:
            await self._execute(call)
        except Exception:
            log.exception("async call %s: unexpected failure (it stays leased and reruns)", call.id)
        finally:
            self._free_slot(call)

    def _free_slot(self, call: Claimed) -> None:
        """The call no longer needs a container: its slot can be claimed again (the
        durable write of its outcome goes on; its lease covers it until then)."""
        if self._slot_held.pop(call.id, False):
            self._running[call.function] -= 1
            self._wake.set()

    async def _execute(self, call: Claimed) -> None:
        rec = InvocationRecord(
            id=call.id,
            function=call.function,
            mode="",
            kind="async",
            queued_at=call.enqueued_at,
            attempt=call.attempt,
            request_size=len(call.body),
            parent=call.parent,
            late=call.late,
        )
        try:
            spec, _ = self.dispatcher.get(call.function)
        except FunctionNotFound as e:
            rec.status, rec.error = "dead", e.message
            rec.finished_at = now_ms()
            await self.store.finish(rec)
            return
        rec.mode = spec.mode
        lost = await self._lost_runs(call)
        if lost >= POISON_STARTS:
            rec.status = "dead"
            rec.error = (
                f"dead after {lost} runs lost with their gateway (killed or crashed while "
                "the call ran): not run again, it may be what stops the gateway; redrive it "
                "once that is fixed"
            )
            rec.finished_at = now_ms()
            log.error("async call %s: %s", call.id, rec.error)
            await self.store.finish(rec)
            await self._callback(call, rec, None)
            return
        if now_ms() - call.enqueued_at > spec.max_age * 1000:
            rec.status = "dead"
            rec.error = f"older than max_age ({spec.max_age:g}s) before it could run"
            rec.finished_at = now_ms()
            await self.store.finish(rec)
            await self._callback(call, rec, None)
            return
        request = Request(
            method=call.method,
            path=call.path,
            query=call.query,
            headers=call.headers,
            body=call.body,
        )
        try:
            response = await self.dispatcher.invoke(call.function, request, record=rec)
        except SwarmlessError as e:
            self._free_slot(call)
            await self._failed(call, rec, spec, e)
            return
        self._free_slot(call)
        result = StoredResult(status=response.status, headers=response.headers, body=response.body)
        await self.store.finish(rec, result)
        await self._callback(call, rec, result)

    async def _lost_runs(self, call: Claimed) -> int:
        """How many earlier runs of ``call`` ended with no outcome written (their gateway
        died): its claims before this one, less the attempt of the last failure written
        (read only when the claims alone could reach :data:`POISON_STARTS`)."""
        before = call.attempt - 1
        if before < POISON_STARTS:
            return 0
        try:
            stored = await self.store.get_invocation(call.id)
        except SwarmlessError as e:
            log.error("async call %s: could not read its record: %s", call.id, e.message)
            return 0
        written = stored.attempt if stored is not None and stored.error else 0
        return before - written

    async def _failed(
        self, call: Claimed, rec: InvocationRecord, spec: FunctionSpec, e: SwarmlessError
    ) -> None:
        # Too busy, shutting down, or no engine is not the function's fault: retry soon,
        # not counted.
        not_counted = isinstance(e, QueueFull | EngineUnavailable) or self.dispatcher.closing
        if not_counted or call.attempt <= spec.retries:
            delay = 1.0 if not_counted else spec.backoff * 2 ** (call.attempt - 1)
            delay *= 0.5 + random.random()
            rec.status = "queued"
            rec.error = f"attempt {call.attempt} failed: {e.message}"
            if not_counted:
                rec.attempt -= 1
            await self.store.retry_later(rec, now_ms() + int(delay * 1000), uncount=not_counted)
            return
        rec.status = "dead"
        rec.error = f"dead after {call.attempt} attempt(s): {e.message}"
        await self.store.finish(rec)
        await self._callback(call, rec, None)

    async def _callback(
        self, call: Claimed, rec: InvocationRecord, result: StoredResult | None
    ) -> None:
        if not call.callback_url:
            return
        headers = {
            "X-Call-Id": rec.id,
            "X-Swarmless-Function": rec.function,
            "X-Swarmless-Status": rec.status,
        }
        body = b""
        if result is not None:
            headers.update({f"X-Function-{k}": v for k, v in result.headers[:20]})
            headers["X-Function-Status"] = str(result.status)
            body = result.body
        elif rec.error:
            body = rec.error.encode()
        outcome = ""
        pause = CALLBACK_PAUSE
        for attempt in range(1, CALLBACK_TRIES + 1):
            try:
                status = await self._deliver(call.callback_url, body, headers)
                if status < 500:
                    outcome = f"delivered {status} (try {attempt})"
                    break
                outcome = f"failed: HTTP {status} after {attempt} tries"
            except InvalidArgument as e:
                outcome = f"failed: refused: {e.message}"
                break
            except _Undelivered as e:
                outcome = f"failed: {e}"
                break
            except (httpx.HTTPError, OSError) as e:
                outcome = f"failed: {type(e).__name__} after {attempt} tries"
            if attempt < CALLBACK_TRIES:
                await asyncio.sleep(pause)
                pause *= 2
        rec.callback = outcome
        try:
            await self.store.save(rec)
        except SwarmlessError as e:
            log.error("could not record the callback of %s: %s", rec.id, e.message)

    async def _deliver(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        """POST a callback to ``url`` (checked, redirects followed as the module says);
        the receiver's status."""
        target = url
        for hop in range(MAX_REDIRECTS + 1):
            try:
                parsed = self.callbacks.check_url(target)
                addresses = await self.callbacks.resolve(parsed)
            except InvalidArgument as e:
                if hop:
                    raise InvalidArgument(f"redirect to {target}: {e.message}") from None
                raise
            status, location = await self._post_to(parsed, addresses, body, headers)
            if status in (307, 308) and location:
                target = str(parsed.join(location))
                continue
            if 300 <= status < 400:
                raise _Undelivered(
                    f"HTTP {status}: the redirect to {location or '(none)'!r} is not followed "
                    "(a callback follows 307 and 308 only, which keep the POST)"
                )
            return status
        raise _Undelivered(f"more than {MAX_REDIRECTS} redirects")

    async def _post_to(
        self,
        url: httpx.URL,
        addresses: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address],
        body: bytes,
        headers: Mapping[str, str],
    ) -> tuple[int, str]:
        """POST to ``url`` at one of ``addresses`` (checked; tried in turn while they refuse
        the connection); the status and the ``Location`` header."""
        host = url.raw_host.decode("ascii")
        sent = {**headers, "Host": url.netloc.decode("ascii")}
        extensions = {"sni_hostname": host} if url.scheme == "https" else {}
        failed: httpx.ConnectError | None = None
        for addr in addresses:
            pinned = url.copy_with(host=str(addr))
            try:
                async with self._http.stream(
                    "POST", pinned, content=body, headers=sent, extensions=extensions
                ) as r:
                    return r.status_code, r.headers.get("location", "")
            except httpx.ConnectError as e:
                failed = e
        raise failed or OSError(f"{host!r} has no address to connect to")

    async def refresh_counts(self) -> None:
        with contextlib.suppress(SwarmlessError):
            self._queued = await self.store.queued_counts()

    def stop_claiming(self) -> None:
        """Take no more calls from the queue (the gateway is shutting down)."""
        self._stopping = True
        self._wake.set()

    async def stop(self, timeout: float) -> None:
        """Stop claiming; wait (bounded) for the calls running; the rest stay leased."""
        self._stopping = True
        self._wake.set()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        await self._http.aclose()
