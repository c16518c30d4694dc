"""The async runner: takes due calls from the durable queue and runs them.

It runs calls per function up to the function's ``async_concurrency`` (default: its
``max_containers x concurrency``, so async work never takes every container from sync
traffic when set lower), each through the same :class:`Dispatcher` as sync calls (same
containers, same deadline; with the default, a few more wait in the pool's queue, see
:func:`in_flight_limit`), and writes the outcome durably:

- success: record ``succeeded``, the answer kept for ``Invocation.result()``;
- failure with retries left: back to the queue after an exponential backoff with jitter
  (``backoff x 2^(attempt-1) x [0.5, 1.5)``), the record saying why;
- retries spent, or older than ``max_age``: ``dead`` (the dead letter), redrivable;
- the Docker Engine does not answer: back to the queue, not counted as an attempt (and
  nothing is claimed until it answers again: the wiring wakes the runner then).

How calls reach it, with as few store round trips as a call can have:

- **handed over at accept**: a call accepted by this gateway (:meth:`AsyncRunner.submit`)
  while the runner has room and nothing of its function waits in the store is written
  already claimed by this gateway, in the transaction that accepts it (group-committed with
  the calls accepted with it), and kept in memory: it starts without being read back;
- **claimed in batches**: otherwise the runner claims due calls in one transaction per
  batch (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), up to :data:`AHEAD` times the
  function's limit held: the calls beyond its free slots wait in memory (their bodies
  :data:`~swarmless.store.queue.CLAIM_BYTES` at most in all) and start the moment a slot
  frees. A claim is made once fewer calls than the limit wait in memory, so a busy runner
  claims many calls at a time, not one per slot that frees;
- **outcomes group-committed**: the store gathers the outcomes that end together into one
  transaction (bounded; a call's slot is free before its outcome is written). An outcome
  not yet committed when the gateway dies is not lost: the call is still leased, and runs
  again once its lease passes (at once when this gateway restarts). At-least-once.

A lease covers the wait in memory too: ``AHEAD x timeout + 30 s`` (a call in memory has
fewer than ``AHEAD - 1`` rounds of the function's limit before it, each round ending
within the timeout). A long lease delays nothing after a crash: a gateway that restarts,
or the replica that takes over (same instance), takes back its calls at once. A gateway
that stops gives back the calls it holds but has not started, not counted as attempts.

Then the callback, if one was asked for: the result is POSTed to ``X-Callback-Url`` with
its own bounded retries; what happened is written on the record, and a failing callback
never fails the call or the runner. A gateway that restarts gives back the leases it held
when it died (they run again: at-least-once). A call whose runs were lost that way
:data:`POISON_STARTS` times goes to the dead letter instead of running again: it may be
what brings the gateway down, and start-up must not be crash-looped by the calls it takes
back (the count: the call's claims less the attempts whose outcome was written; a call
held in memory, not started, when its gateway was killed counts as such a run).

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
import collections
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
from swarmless.store.queue import CLAIM_BYTES

__all__ = ["AsyncRunner", "CallbackTargets"]

log = logging.getLogger("swarmless.async")

#: While calls run, how long the runner lets finished slots gather before it claims.
COALESCE = 0.003
#: Calls held per function (running and waiting in memory), as a multiple of its limit.
AHEAD = 8
#: A lease is ``AHEAD x timeout`` plus this (seconds).
LEASE_SLACK = 30.0

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


def in_flight_limit(spec: FunctionSpec) -> int:
    """How many async calls of a function the runner hands to the dispatcher at once: its
    :func:`async_limit`, and with the default limit (every container's capacity) half as
    many again, which wait in the pool's queue: a worker that answers a call then gets
    the next one in the same exchange instead of asking for it again (as under sync
    load). Never more running at once than the limit."""
    limit = async_limit(spec)
    return limit if spec.async_concurrency else limit + max(1, limit // 2)


def lease_ms(spec: FunctionSpec) -> int:
    """How long a claim of a call of ``spec`` lasts: its wait in memory and its run."""
    return int((AHEAD * spec.timeout + LEASE_SLACK) * 1000)


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
        #: Calls claimed (or handed over) and not started yet, per function, oldest first.
        self._ahead: dict[str, collections.deque[Claimed]] = {}
        self._ahead_bytes = 0
        #: Calls handed over at accept whose transaction has not committed yet.
        self._incoming: dict[str, int] = {}
        #: Every call this runner holds (waiting, running, outcome being written): a
        #: claim that returns one of them again (its lease ran out) does not run it twice.
        self._held: set[str] = set()
        #: Functions whose due calls may wait in the store, not claimed: a call was queued
        #: there, or the last claim got all it asked for. Claims are for these (and for
        #: every function at each idle poll: retries come due, other replicas queue).
        self._backlog: set[str] = set()
        self._sweep = True
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

    async def submit(
        self,
        rec: InvocationRecord,
        *,
        method: str,
        path: str,
        query: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[str, bool]:
        """Queue an async call durably (:meth:`Store.enqueue`); returns (call id, created).

        With room here and nothing of its function waiting in the store, the call is
        written claimed by this gateway and kept in memory: it starts without a claim.
        """
        name = rec.function
        found = self.dispatcher.functions.get(name)
        room = (
            found is not None
            and not self._stopping
            and self.dispatcher.engine_down is None
            and name not in self._backlog
            and self._ahead_bytes + len(body) <= CLAIM_BYTES
            and self._held_count(name) < AHEAD * async_limit(found[0])
        )
        if not room or found is None:
            call_id, created = await self.store.enqueue(
                rec,
                method=method,
                path=path,
                query=query,
                headers=headers,
                body=body,
                callback_url=callback_url,
                idempotency_key=idempotency_key,
            )
            if created:
                self.accepted(name)
            return call_id, created
        self._incoming[name] = self._incoming.get(name, 0) + 1
        self._ahead_bytes += len(body)
        enqueued = asyncio.ensure_future(
            self.store.enqueue(
                rec,
                method=method,
                path=path,
                query=query,
                headers=headers,
                body=body,
                callback_url=callback_url,
                idempotency_key=idempotency_key,
                leased_to=(self.owner, lease_ms(found[0])),
            )
        )

        def settled(done: asyncio.Future[tuple[str, bool]]) -> None:
            # Runs whether or not the caller is still there: a call written claimed by
            # this gateway is always taken in hand.
            self._incoming[name] -= 1
            self._ahead_bytes -= len(body)
            if done.cancelled() or done.exception() is not None:
                return
            call_id, created = done.result()
            if not created:
                return
            self._queued[name] = self._queued.get(name, 0) + 1
            self._take(
                Claimed(
                    id=call_id,
                    function=name,
                    method=method,
                    path=path,
                    query=query,
                    headers=list(headers),
                    body=body,
                    callback_url=callback_url,
                    parent=rec.parent,
                    late=rec.late,
                    enqueued_at=rec.queued_at,
                    attempt=1,
                )
            )

        enqueued.add_done_callback(settled)
        result: tuple[str, bool] = await asyncio.shield(enqueued)
        return result

    def accepted(self, function: str) -> None:
        """A call of ``function`` was queued in the store (not through :meth:`submit`):
        count it (until the next refresh of the counts) and claim at once."""
        self._queued[function] = self._queued.get(function, 0) + 1
        self._backlog.add(function)
        self._wake.set()

    def wake_up(self) -> None:
        """Claim now rather than at the next idle poll (a redrive, a schedule that fired)."""
        self._sweep = True
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
            wants = self._wants(self._sweep)
            self._sweep = False
            if wants and await self._claim(wants):
                continue  # there may be more; claim again before sleeping
            try:
                await asyncio.wait_for(self._wake.wait(), self.idle_poll)
            except TimeoutError:
                self._sweep = True
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

    def _held_count(self, name: str) -> int:
        """Calls of ``name`` running, waiting in memory, or being handed over."""
        ahead = self._ahead.get(name)
        return (
            self._running.get(name, 0) + (len(ahead) if ahead else 0) + self._incoming.get(name, 0)
        )

    def _wants(self, sweep: bool) -> dict[str, tuple[int, int]]:
        """What to claim now: function -> (how many, lease ms). A function is claimed for
        once fewer calls than its limit wait in memory, up to :data:`AHEAD` times its limit
        held; only if it may have calls waiting in the store, or on a ``sweep``."""
        if self._ahead_bytes >= CLAIM_BYTES:
            return {}
        wants: dict[str, tuple[int, int]] = {}
        for name, (spec, _) in self.dispatcher.functions.items():
            if not sweep and name not in self._backlog:
                continue
            limit = async_limit(spec)
            ahead = self._ahead.get(name)
            if ahead and len(ahead) >= limit:
                continue
            room = AHEAD * limit - self._held_count(name)
            if room > 0:
                wants[name] = (room, lease_ms(spec))
        return wants

    async def _claim(self, wants: dict[str, tuple[int, int]]) -> list[Claimed]:
        try:
            claimed = await self.store.claim(
                self.owner, wants, max_bytes=CLAIM_BYTES - self._ahead_bytes
            )
        except SwarmlessError as e:
            log.error("claiming async calls failed: %s", e.message)
            await asyncio.sleep(1)
            return []
        got: dict[str, int] = {}
        for call in claimed:
            got[call.function] = got.get(call.function, 0) + 1
            if call.id in self._held:  # its lease ran out while held here: not twice
                log.warning("async call %s: claimed again while held here (lease ran out)", call.id)
                continue
            self._take(call)
        for name, (n, _) in wants.items():
            if got.get(name, 0) < n:
                self._backlog.discard(name)  # the store has no more due: claim on news
            else:
                self._backlog.add(name)
        return claimed

    def _take(self, call: Claimed) -> None:
        """Hold ``call`` (claimed or handed over) and start it if a slot is free."""
        self._held.add(call.id)
        self._ahead.setdefault(call.function, collections.deque()).append(call)
        self._ahead_bytes += len(call.body)
        self._start(call.function)

    def _start(self, name: str) -> None:
        """Start the calls of ``name`` waiting in memory, as many as it has free slots."""
        ahead = self._ahead.get(name)
        if not ahead or self._stopping:
            return
        found = self.dispatcher.functions.get(name)
        limit = in_flight_limit(found[0]) if found is not None else 1
        loop = asyncio.get_running_loop()
        while ahead and self._running.get(name, 0) < limit:
            call = ahead.popleft()
            self._ahead_bytes -= len(call.body)
            self._running[name] = self._running.get(name, 0) + 1
            self._slot_held[call.id] = True
            self.store.mark_running(call.id)
            task = loop.create_task(self._run(call))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if not ahead:
            del self._ahead[name]

    async def _run(self, call: Claimed) -> None:
        try:
            await self._execute(call)
        except Exception:
            log.exception("async call %s: unexpected failure (it stays leased and reruns)", call.id)
        finally:
            self._free_slot(call)
            self._held.discard(call.id)

    def _free_slot(self, call: Claimed) -> None:
        """The call no longer needs a container: the next call in memory starts, and its
        slot can be claimed again (the durable write of its outcome goes on; its lease
        covers it until then)."""
        if self._slot_held.pop(call.id, False):
            self._running[call.function] -= 1
            self._start(call.function)
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
        """Stop claiming; give back the calls held but not started; wait (bounded) for the
        calls running; the rest stay leased."""
        self._stopping = True
        self._wake.set()
        await self._give_back()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        await self._give_back()  # claimed meanwhile (a claim that was under way)
        await self._http.aclose()

    async def _give_back(self) -> None:
        """The calls waiting in memory go back to the store, claimable at once, their
        attempt not counted (if that fails, they run again once their lease passes, or at
        once when this gateway restarts)."""
        calls = [call for ahead in self._ahead.values() for call in ahead]
        self._ahead.clear()
        self._ahead_bytes = 0
        if not calls:
            return
        ids = [call.id for call in calls]
        self._held.difference_update(ids)
        try:
            back = await self.store.give_back(self.owner, ids)
        except SwarmlessError as e:
            log.warning("could not give back %d async call(s) not started: %s", len(ids), e.message)
            return
        log.info("gave back %d async call(s) claimed but not started", back)
