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
  slow or unreachable, not the holder) keeps it. A holder that refuses the connection (or
  where no connection is made in time) is gone at once; one that takes the connection
  but does not answer in time only once it has not for three tries in a row over a whole
  ``ttl`` (a busy holder answers late, and is still active).
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

The lease loop is :mod:`~swarmless.gateway.replica_lease`, the forwarding
:mod:`~swarmless.gateway.forward`; :class:`Replicas` is both, with what a standby reads
from the store itself (a function's spec, the async queue's counts).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable

import httpx

from swarmless.gateway.asgi import Receive, Scope, Send
from swarmless.gateway.forward import FORWARDED_BY as FORWARDED_BY
from swarmless.gateway.forward import Forwarder
from swarmless.gateway.replica_lease import ReplicaLease
from swarmless.spec import FunctionSpec
from swarmless.store import Store

__all__ = ["Replicas", "peer_url"]

#: The largest request body a standby replica holds to forward when no function's limit
#: applies (admin routes, the runtime API's results); a call gets its function's max_body.
FORWARD_LIMIT = 256 << 20
#: Seconds a standby trusts a function's spec read from the store (its max_body, whether
#: it is private): a change made on the active replica reaches the standbys within it.
_SPEC_TTL = 2.0


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


class Replicas(ReplicaLease):
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
        http = httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=min(2.0, ttl)),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=200),
        )
        super().__init__(
            store, me, holder=holder, lease=lease, ttl=ttl, lead=lead, lost=lost, http=http
        )
        self._forwarder = Forwarder(self, http, self._body_limit)
        self._specs: dict[str, tuple[FunctionSpec, float]] = {}
        self._counts: dict[str, int] = {}
        self._counted = 0.0

    async def close(self) -> None:
        """Stop trying; give the lease up if we hold it, so a standby takes over at once."""
        await super().close()
        await self._http.aclose()

    async def forward(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """Send this request to the active replica and stream its answer back.

        Returns None when done, or, when this replica became the active one meanwhile, a
        ``receive`` that replays the request's body: the caller serves the request itself.
        """
        return await self._forwarder.forward(scope, receive, send)

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
