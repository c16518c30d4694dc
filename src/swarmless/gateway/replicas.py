"""Several gateways on one store: one is active, the others stand by and forward to it.

Replicas of a gateway share a store (PostgreSQL), an instance name and an admin token.
They take turns holding the store's ``gateway:<instance>`` lease (:mod:`swarmless.store.lease`):

- The **holder** is the active gateway: it owns the warm containers and their queues, runs
  the autoscaler, the async queue's runner and the schedules. All of that is one process's
  memory and loops, so nothing acts twice: a call accepted by any replica reaches the one
  dispatcher, and workers pull from it through any replica.
- The **others** answer ``/healthz`` and ``/metrics`` themselves and forward every other
  request to the holder (the URL the lease names), streaming both ways. A request that
  could not be delivered (the holder's address refuses it) waits for the next holder and
  is sent again; one already delivered is never sent twice: if the holder dies with it,
  the caller gets a 503 ``gateway_unavailable``, like a call on a single gateway that died.
- Every replica tries for the lease every ``ttl / 5`` seconds: the holder extends it, the
  others take it once it has expired (``ttl`` after the holder's last renewal: a killed
  holder is replaced within ``ttl`` plus the new holder's start), or at once when the
  holder gave it up on a clean shutdown. Before taking an expired lease, a replica asks
  the holder's ``/healthz``: a holder that still answers as the active one (its store is
  slow or unreachable, not the holder) keeps it.
- A store that is slow or away never ends a gateway by itself. A holder that cannot renew
  keeps serving what needs no store (sync calls; the rest answers 503) and keeps trying,
  **unless another replica stands by** (the lease is contended, see
  :mod:`swarmless.store.lease`): then it stops once it has not renewed for ``ttl / 2``,
  before anyone else may take the lease, and exits for its orchestrator to restart it as
  a standby. Once the store answers again, a holder that finds the lease taken by another
  stops likewise. So there is never more than one active replica: a lone holder is only
  replaced by a replica that finds it not answering, and a contended one steps down
  before its lease can expire.
- The new holder starts like a gateway that restarts after a crash: it removes the
  containers left by the previous one (same instance label), loads the functions from the
  store and picks up the async calls the previous one held.

Replicas give availability, not throughput: one of them dispatches. A single gateway is the
degenerate case: it takes the free lease at once and never forwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable

import httpx

from swarmless.exceptions import GatewayUnavailable, SwarmlessError
from swarmless.gateway.asgi import ClientGone, Message, Receive, Scope, Send, read_body, send_error
from swarmless.spec import FunctionSpec
from swarmless.store import Store
from swarmless.store.lease import LeaseState

__all__ = ["Replicas", "peer_url"]

log = logging.getLogger("swarmless.gateway.replicas")

#: Headers that belong to one hop (RFC 9110 7.6.1), not forwarded either way.
_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
    }
)
#: The largest request body a standby replica holds to forward when no function's limit
#: applies (admin routes, the runtime API's results); a call gets its function's max_body.
FORWARD_LIMIT = 256 << 20
#: Added to forwarded requests: the holder answers them itself, never forwards them again.
FORWARDED_BY = b"x-swarmless-forwarded-by"
#: Seconds a standby trusts a function's spec read from the store (its max_body, whether
#: it is private): a change made on the active replica reaches the standbys within it.
_SPEC_TTL = 2.0
#: Seconds between two warnings about a lease that cannot be renewed.
_WARN_EVERY = 10.0


def peer_url(host: str, port: int, configured: str = "") -> str:
    """Where the other replicas reach this one: ``configured``, else this machine's address
    (listening on every address: the one the host name resolves to, or the one the default
    route leaves from when that is a loopback address, as Debian's 127.0.1.1 is)."""
    if configured:
        return configured.rstrip("/")
    if host in ("", "0.0.0.0", "::"):
        try:
            host = socket.gethostbyname(socket.gethostname())
        except OSError:
            host = "127.0.0.1"
        if ipaddress.ip_address(host).is_loopback:
            with (
                contextlib.suppress(OSError),
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s,
            ):
                s.connect(("192.0.2.1", 9))  # TEST-NET: no packet is sent, a route is chosen
                host = s.getsockname()[0]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Replicas:
    """The lease loop of one replica, and the forwarding of requests to the holder."""

    def __init__(
        self,
        store: Store,
        me: str,
        *,
        holder: str,
        lease: str,
        ttl: float,
        lead: Callable[[], Awaitable[None]],
        lost: Callable[[str], None],
    ) -> None:
        self.store = store
        #: This replica's peer URL: where the others forward to while it is active.
        self.me = me
        #: Its name as a lease holder: the URL, the host and the data directory (a gateway
        #: restarted after a crash is the same holder and takes its lease back at once).
        self.holder = holder
        self.lease = lease
        self.ttl = ttl
        self._lead = lead
        self._lost = lost
        #: The holder's URL as last read (ours when we hold it).
        self.leader_url: str | None = None
        #: True once this replica holds the lease and has started as the active gateway.
        self.active = False
        self._holding = False
        self._done = False
        self._renewed = 0.0
        #: Whether another replica stood by at the last renewal.
        self._contended = False
        self._warned = 0.0
        #: Why the store did not answer the last try for the lease (None: it did).
        self.store_error: str | None = None
        self._changed = asyncio.Event()
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[None] | None = None
        self._specs: dict[str, tuple[FunctionSpec, float]] = {}
        self._counts: dict[str, int] = {}
        self._counted = 0.0
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=min(2.0, ttl)),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=200),
        )

    @property
    def role(self) -> str:
        return "active" if self.active else "starting" if self._holding else "standby"

    # -- the lease ---------------------------------------------------------------------

    async def start(self) -> None:
        """Try once (a lone gateway becomes active before it answers), then keep trying."""
        await self._try()
        self._task = asyncio.get_running_loop().create_task(self._loop())
        if self._starting is not None:
            await self._starting

    async def _loop(self) -> None:
        while not self._done:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self.ttl / 5)
            self._poke.clear()
            await self._try()

    async def _try(self) -> None:
        # The lease runs from before the statement (the store dates it then), and a store
        # that hangs is a store that fails.
        if self._done:
            return
        asked = time.monotonic()
        try:
            state = await self._acquire(take_expired=False)
            if state.holder != self.holder and state.expired and not self._holding:
                if await self._holder_answers(state.url):
                    self._warn(
                        f"the gateway lease of {state.url} expired, but it still answers as "
                        "the active replica (its store is slow or unreachable): not taking over"
                    )
                else:
                    asked = time.monotonic()
                    state = await self._acquire(take_expired=True)
        except (TimeoutError, SwarmlessError) as e:
            self._store_failed(str(e) or "the store did not answer in time")
            return
        if self.store_error is not None:
            log.warning("gateway lease: the store answers again")
            self.store_error = None
        if state.holder == self.holder:
            self._renewed = asked
            self._contended = state.contended
            if not self._holding:
                self._holding = True
                log.info("gateway lease taken: this replica (%s) becomes active", self.me)
                self._set_leader(self.me)
                self._starting = asyncio.get_running_loop().create_task(self._become_active())
            return
        if self._holding:
            self._step_down(f"the gateway lease went to {state.holder}")
            return
        if state.url != self.leader_url:
            log.info("active gateway replica: %s", state.url)
        self._set_leader(state.url)

    async def _acquire(self, *, take_expired: bool) -> LeaseState:
        return await asyncio.wait_for(
            self.store.acquire_lease(
                self.lease, self.holder, self.me, self.ttl, take_expired=take_expired
            ),
            self.ttl / 4,
        )

    def _store_failed(self, why: str) -> None:
        """The lease could not be renewed (or asked for): step down only if another
        replica may take it over before we find out (see the module's docstring)."""
        self.store_error = why
        if not self._holding:
            self._warn(f"gateway lease: {why}")
            return
        unrenewed = time.monotonic() - self._renewed
        if self._contended and unrenewed > self.ttl / 2:
            self._step_down(
                f"cannot renew the gateway lease for {unrenewed:.1f} s ({why}) while another "
                "replica stands by to take it over"
            )
            return
        self._warn(
            f"cannot renew the gateway lease for {unrenewed:.1f} s ({why}); no other replica "
            "stands by: this one keeps serving (calls that need the store get 503) and retries"
        )

    def _warn(self, message: str) -> None:
        """Log ``message`` at most every :data:`_WARN_EVERY` seconds (an outage is long)."""
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY:
            self._warned = now
            log.warning("%s", message)

    async def _holder_answers(self, url: str) -> bool:
        """Whether the replica at ``url`` answers as the active one (or one starting)."""
        if url == self.me:
            return False
        try:
            r = await self._http.get(f"{url}/healthz", timeout=min(1.0, self.ttl / 5))
            return r.status_code == 200 and r.json().get("role") in ("active", "starting")
        except (httpx.HTTPError, ValueError, AttributeError):
            return False

    async def _become_active(self) -> None:
        try:
            await self._lead()
        except Exception as e:
            self._step_down(f"could not start as the active gateway: {e}")
            raise
        self.active = True
        self._changed.set()

    def _set_leader(self, url: str) -> None:
        if url != self.leader_url:
            self.leader_url = url
            self._changed.set()

    def _step_down(self, why: str) -> None:
        log.error("%s: this replica stops (its orchestrator restarts it as a standby)", why)
        self._holding = False
        self.active = False
        self._done = True  # never take the lease again: this process is going away
        self._lost(why)

    async def close(self) -> None:
        """Stop trying; give the lease up if we hold it, so a standby takes over at once."""
        for task in (self._task, self._starting):
            if task is not None:
                task.cancel()
        if self._holding:
            self._holding = self.active = False
            with contextlib.suppress(SwarmlessError):
                await self.store.release_lease(self.lease, self.holder)
        await self._http.aclose()

    async def _next_leader(self, deadline: float) -> str:
        """The holder's URL (ours once we are active), waiting until ``deadline`` for one."""
        while True:
            url = self.leader_url
            if url is not None and url != self.me and not self._holding:
                return url
            if self.active:
                return self.me
            left = deadline - time.monotonic()
            if left <= 0:
                raise GatewayUnavailable(
                    "no active gateway replica: one is starting or taking over; retry",
                    retry_after=1.0,
                )
            self._changed.clear()
            self._poke.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, self.ttl / 5))

    # -- forwarding --------------------------------------------------------------------

    async def forward(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """Send this request to the active replica and stream its answer back.

        Returns None when done, or, when this replica became the active one meanwhile, a
        ``receive`` that replays the request's body: the caller serves the request itself.
        """
        try:
            if any(k == FORWARDED_BY for k, _ in scope["headers"]):
                raise GatewayUnavailable(
                    "this gateway replica is not the active one (yet): retry", retry_after=1.0
                )
            deadline = time.monotonic() + self.ttl * 2 + 10
            if await self._next_leader(deadline) == self.me:
                return receive
            body = await read_body(scope, receive, await self._body_limit(scope["path"]))
            response = await self._deliver(scope, body, deadline)
        except ClientGone:
            return None
        except SwarmlessError as e:
            await send_error(send, e)
            return None
        if response is None:
            return _replay(body, receive)
        try:
            headers = [(k.lower(), v) for k, v in response.headers.raw if k.lower() not in _HOP]
            start = {"type": "http.response.start", "status": response.status_code}
            await send({**start, "headers": headers})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        except httpx.HTTPError as e:  # the holder died mid-answer: the status is sent
            log.warning("active gateway replica failed while answering: %s", e)
        finally:
            await response.aclose()
        return None

    async def _body_limit(self, path: str) -> int:
        """A call's function's max_body, else FORWARD_LIMIT: a standby holds no more of a
        request than the active replica would accept."""
        for prefix in ("/function/", "/async-function/"):
            if path.startswith(prefix):
                spec = await self.spec(path[len(prefix) :].partition("/")[0])
                return spec.max_body if spec is not None else FORWARD_LIMIT
        return FORWARD_LIMIT

    async def spec(self, name: str) -> FunctionSpec | None:
        """Function ``name``'s spec as the store has it (cached ``_SPEC_TTL`` s), or None."""
        now = time.monotonic()
        cached = self._specs.get(name)
        if cached is None or cached[1] < now:
            found = await self.store.get_function(name)
            if found is None:  # not cached: a function deployed a moment ago is found
                return None
            if len(self._specs) > 1024:
                self._specs.clear()
            cached = self._specs[name] = (found[0], now + _SPEC_TTL)
        return cached[0]

    async def waiting(self, name: str) -> int:
        """Async calls of ``name`` queued or running, as the store counts them (cached 1 s)."""
        now = time.monotonic()
        if self._counted < now:
            self._counts = await self.store.queued_counts()
            self._counted = now + 1.0
        return self._counts.get(name, 0)

    def queued(self, name: str) -> None:
        """One more call of ``name`` queued here (counted until the next read)."""
        self._counts[name] = self._counts.get(name, 0) + 1

    async def _deliver(self, scope: Scope, body: bytes, deadline: float) -> httpx.Response | None:
        """The holder's streamed answer; None if this replica became the holder."""
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        target = path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        headers = [(k, v) for k, v in scope["headers"] if k not in _HOP]
        client = scope.get("client")
        if client:
            headers.append((b"x-forwarded-for", str(client[0]).encode()))
        headers.append((FORWARDED_BY, self.me.encode()))
        while True:
            url = await self._next_leader(deadline)
            if url == self.me:
                return None
            request = self._http.build_request(
                scope["method"], url + target, headers=headers, content=body
            )
            try:
                return await self._http.send(request, stream=True)
            except httpx.ConnectError as e:  # nothing was delivered: safe to send again
                if time.monotonic() >= deadline:
                    raise GatewayUnavailable(
                        f"the active gateway replica at {url} does not answer ({e}); retry",
                        retry_after=1.0,
                    ) from e
                log.warning("active gateway replica %s does not answer: %s", url, e)
                if self.leader_url == url:
                    self.leader_url = None  # wait for the lease to name the next one
                self._poke.set()
                await asyncio.sleep(min(0.2, self.ttl / 10))
            except httpx.HTTPError as e:  # delivered, then lost: it may have run
                raise GatewayUnavailable(
                    f"the active gateway replica at {url} failed with the request ({e}); "
                    "it may or may not have run it",
                    retry_after=1.0,
                ) from e


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then what ``receive`` gives (disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
