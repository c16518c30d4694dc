"""A standby replica's forwarding: every request it does not answer itself goes to the
active replica (the URL the lease names), streamed both ways.

A request that could not be delivered (the holder's address refuses it) waits for the next
holder and is sent again; one already delivered is never sent twice: if the holder dies
with it, the caller gets a 503 ``gateway_unavailable``, like a call on a single gateway
that died. A standby holds no more of a request's body than the active replica would
accept (``body_limit``). A forwarded request carries :data:`FORWARDED_BY`: the holder
answers it itself, never forwards it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import httpx

from swarmless.exceptions import GatewayUnavailable, SwarmlessError
from swarmless.gateway.asgi import ClientGone, Message, Receive, Scope, Send, read_body, send_error
from swarmless.gateway.replica_lease import ReplicaLease

__all__ = ["FORWARDED_BY", "Forwarder"]

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
#: Added to forwarded requests: the holder answers them itself, never forwards them again.
FORWARDED_BY = b"x-swarmless-forwarded-by"


class Forwarder:
    """Sends requests to the replica that holds ``lease`` (or hands them back once this
    replica holds it)."""

    def __init__(
        self,
        lease: ReplicaLease,
        http: httpx.AsyncClient,
        body_limit: Callable[[str], Awaitable[int]],
    ) -> None:
        self.lease = lease
        self._http = http
        #: The largest body a request to this path may have.
        self._body_limit = body_limit

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
            deadline = time.monotonic() + self.lease.ttl * 2 + 10
            if await self.lease.next_leader(deadline) == self.lease.me:
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

    async def _deliver(self, scope: Scope, body: bytes, deadline: float) -> httpx.Response | None:
        """The holder's streamed answer; None if this replica became the holder."""
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        target = path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        headers = [(k, v) for k, v in scope["headers"] if k not in _HOP]
        client = scope.get("client")
        if client:
            headers.append((b"x-forwarded-for", str(client[0]).encode()))
        headers.append((FORWARDED_BY, self.lease.me.encode()))
        while True:
            url = await self.lease.next_leader(deadline)
            if url == self.lease.me:
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
                self.lease.unreachable(url)  # wait for the lease to name the next one
                await asyncio.sleep(min(0.2, self.lease.ttl / 10))
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
