"""Callbacks of async calls: an outcome POSTed to ``X-Callback-Url``, checked, bounded.

The result is POSTed with its own bounded retries (:data:`CALLBACK_TRIES`); what happened
is written on the record, and a failing callback never fails the call or the runner.

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
import ipaddress
import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

import httpx

from swarmless.exceptions import InvalidArgument, SwarmlessError
from swarmless.records import InvocationRecord
from swarmless.store import Claimed, Store, StoredResult

__all__ = ["CALLBACK_PAUSE", "CALLBACK_TRIES", "MAX_REDIRECTS", "CallbackSender", "CallbackTargets"]

log = logging.getLogger("swarmless.async")

#: Callback delivery: tries and the first pause between them (doubling).
CALLBACK_TRIES = 3
CALLBACK_PAUSE = 0.5
#: Redirects (307/308) a callback follows.
MAX_REDIRECTS = 3


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


class CallbackSender:
    """Delivers the callbacks of async calls and records what happened."""

    def __init__(self, store: Store, targets: CallbackTargets) -> None:
        self.store = store
        self.targets = targets
        # Straight to the checked address (no proxy from the environment), and no
        # connection kept: one made for a name is never reused for another on that address.
        self._http = httpx.AsyncClient(
            timeout=10.0,
            trust_env=False,
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    async def send(self, call: Claimed, rec: InvocationRecord, result: StoredResult | None) -> None:
        """Deliver the outcome of ``call`` to its callback URL, if it asked for one, and
        write on its record what happened (a failing callback fails nothing else)."""
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
                parsed = self.targets.check_url(target)
                addresses = await self.targets.resolve(parsed)
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

    async def aclose(self) -> None:
        """Close the connections of callbacks (the runner stops)."""
        await self._http.aclose()
