"""The gateway lease, one replica's side: try for it, hold it, step down, follow the holder.

Every replica tries for the store's ``gateway:<instance>`` lease (:mod:`swarmless.store.lease`)
every ``ttl / 5`` seconds; the one that holds it starts as the active gateway, the others
follow its URL. When to take an expired lease, and when a holder that cannot renew must
step down, is the protocol in :mod:`swarmless.gateway.replicas`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import httpx

from swarmless.exceptions import GatewayUnavailable, SwarmlessError
from swarmless.store import Store
from swarmless.store.lease import LeaseState

__all__ = ["ReplicaLease"]

log = logging.getLogger("swarmless.gateway.replicas")

#: Seconds between two warnings about a lease that cannot be renewed.
_WARN_EVERY = 10.0

#: Tries in a row (over at least a ``ttl``) whose ``/healthz`` probe timed out before a
#: holder that does not refuse connections counts as gone.
_SILENT_TRIES = 3


class ReplicaLease:
    """The lease loop of one replica: whether it is the active one, and who is."""

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
        http: httpx.AsyncClient,
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
        #: Asks a holder whose lease expired whether it still answers.
        self._http = http
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
        #: The expired holder's URL, since when its ``/healthz`` has not answered in time,
        #: and how many tries in a row it did not.
        self._silent: tuple[str, float, int] | None = None
        #: Why the store did not answer the last try for the lease (None: it did).
        self.store_error: str | None = None
        self._changed = asyncio.Event()
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[None] | None = None

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
            if not state.expired:
                self._silent = None
            if state.holder != self.holder and state.expired and not self._holding:
                if not await self._holder_gone(state.url):
                    self._warn(
                        f"the gateway lease of {state.url} expired, but it still answers as "
                        "the active replica, or has not stopped answering for long (its "
                        "store is slow or unreachable): not taking over"
                    )
                else:
                    asked = time.monotonic()
                    state = await self._acquire(take_expired=True)
        except (TimeoutError, SwarmlessError) as e:
            self._store_failed(str(e) or "the store did not answer in time")
            return
        if self._done:  # closed while it waited on the store: the answer is stale
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
        replica may take it over before we find out (see :mod:`swarmless.gateway.replicas`)."""
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

    async def _holder_gone(self, url: str) -> bool:
        """Whether the replica at ``url``, whose lease expired, is gone: it refuses the
        connection (or none is made in time) or answers as not active, or its ``/healthz``
        has not answered in time for :data:`_SILENT_TRIES` tries in a row spanning a whole
        ``ttl``. One answer that comes late is not enough: a holder on a busy machine may
        answer late, and taking its lease then makes two active replicas."""
        if url == self.me:
            return True
        try:
            r = await self._http.get(f"{url}/healthz", timeout=min(1.0, self.ttl / 5))
            answers = r.status_code == 200 and r.json().get("role") in ("active", "starting")
        except httpx.ConnectTimeout:  # no one at that address (a dead container's IP)
            answers = False
        except httpx.TimeoutException:  # connected, not answered in time: late, or hung
            now = time.monotonic()
            if self._silent is None or self._silent[0] != url:
                self._silent = (url, now, 0)
            since, tries = self._silent[1], self._silent[2] + 1
            self._silent = (url, since, tries)
            return tries >= _SILENT_TRIES and now - since >= self.ttl
        except (httpx.HTTPError, ValueError, AttributeError):
            answers = False
        self._silent = None
        return not answers

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
        """Stop trying; give the lease up if we hold it, so a standby takes over at once.
        A try already waiting on the store then acts on nothing it is told."""
        self._done = True
        for task in (self._task, self._starting):
            if task is not None:
                task.cancel()
        if self._holding:
            self._holding = self.active = False
            with contextlib.suppress(SwarmlessError):
                await self.store.release_lease(self.lease, self.holder)

    async def next_leader(self, deadline: float) -> str:
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

    def unreachable(self, url: str) -> None:
        """The holder at ``url`` refused a connection: wait for the lease to name the next
        one (and ask the store now)."""
        if self.leader_url == url:
            self.leader_url = None
        self._poke.set()
