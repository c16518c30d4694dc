"""One client connection of the scoped Docker API: requests read, checked, relayed.

Each request on a client connection is read whole by h11 (:mod:`swarmless.proxy.http`:
strict framing, bounded head and body) and judged (:mod:`swarmless.proxy.admission`). A
refusal is answered here, 403 (404 for a container that is not the caller's, exactly as
for one that does not exist) with ``{"message": "... (rule NAME)"}``, what the Docker SDK
shows. An allowed request is rebuilt from the verdict and sent alone on a fresh
connection to the engine; the answer is relayed as it comes, so streams (logs, wait,
events) flow. Keep-alive and pipelining work: the next request is read only once an
answer is complete. Attach and exec start switch to a raw stream only when the client
asked for ``Upgrade: tcp`` and the engine answered 101; then bytes are relayed both ways
and a half-close is passed on (stdin EOF).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

import h11
import httpx

from swarmless.engine import Endpoint
from swarmless.proxy import policy
from swarmless.proxy.http import (
    BadRequest,
    ClientGone,
    ClientSide,
    EngineExchange,
    Incoming,
    open_engine,
    splice,
)
from swarmless.proxy.policy import Verdict

__all__ = ["HEAD_TIMEOUT", "MAX_BODY", "MAX_HEAD", "Decide", "Handle", "serve_client"]

log = logging.getLogger("swarmless.proxy")

#: Limits on what a client sends: the request head, and a body (a tar for archive PUT).
MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
#: How long a request may take to arrive, and a kept-alive connection may sit idle.
HEAD_TIMEOUT = 30.0

#: The verdict on a request from a peer address, held while the request is forwarded
#: (:meth:`swarmless.proxy.admission.Admission.decide`).
Decide = Callable[[Incoming, str], AbstractAsyncContextManager[Verdict]]
#: Answers an allowed request itself (an endpoint the proxy emulates: ``GET /nodes``,
#: children on a Swarm); True/False as :func:`_one` (may the connection go on), None: not
#: one of its own, forward it to the engine.
Handle = Callable[[Verdict, Incoming, ClientSide], Awaitable[bool | None]]


async def serve_client(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    decide: Decide,
    engine: Endpoint,
    handle: Handle | None = None,
) -> None:
    """Answer the requests of one client connection until it ends, then close it; the
    allowed requests ``handle`` answers itself are not forwarded."""
    peer = writer.get_extra_info("peername")
    client = ClientSide(reader, writer, max_head=MAX_HEAD, max_body=MAX_BODY)
    try:
        while True:
            try:
                incoming = await client.next_request(HEAD_TIMEOUT)
            except BadRequest as e:
                message = f"swarmless proxy refused this request: {e} (rule http)"
                await client.answer(e.status, {"message": message})
                return
            if incoming is None:
                return
            address = str(peer[0]) if peer else ""
            if not await _one(client, incoming, address, decide, engine, handle):
                return
            if not client.next_cycle():
                return
    except (ClientGone, ConnectionError, OSError, TimeoutError, h11.ProtocolError):
        pass
    except Exception:
        log.exception("scoped Docker API: unexpected error")
    finally:
        writer.close()


async def _one(
    client: ClientSide,
    incoming: Incoming,
    peer: str,
    decide: Decide,
    engine: Endpoint,
    handle: Handle | None,
) -> bool:
    """Answer one request; False when the connection cannot go on."""
    try:
        async with decide(incoming, peer) as verdict:
            if not verdict.allowed:
                await client.answer(verdict.status, {"message": verdict.message})
                return False
            if verdict.hijack and not incoming.wants_upgrade:
                message = policy.refuse(
                    "http", "attach and exec start need 'Connection: Upgrade, Upgrade: tcp'"
                ).message
                await client.answer(400, {"message": message})
                return False
            if handle is not None:
                done = await handle(verdict, incoming, client)
                if done is not None:
                    return done
            return await _forward(verdict, incoming, client, engine)
    except (httpx.HTTPError, OSError, h11.ProtocolError) as e:
        if isinstance(e, ConnectionError) and client.writer.is_closing():
            raise
        await client.answer(503, {"message": f"swarmless proxy: engine error: {e}"})
        return False


async def _forward(
    verdict: Verdict, incoming: Incoming, client: ClientSide, engine: Endpoint
) -> bool:
    agent = (incoming.header("user-agent") or ["swarmless-proxy"])[0][:200]
    headers = [("user-agent", agent)]
    if verdict.hijack:
        headers += [("connection", "Upgrade"), ("upgrade", "tcp")]
    else:
        headers.append(("connection", "close"))
    if verdict.body is not None:
        kind = "application/x-tar" if verdict.rule == "archive-put" else "application/json"
        headers.append(("content-type", kind))
    exchange = await open_engine(engine)
    try:
        await exchange.send(verdict.method, verdict.url(), headers, verdict.body)
        status, answer = await exchange.answer()
        log.debug("%s %s -> %s", verdict.method, verdict.url()[:200], status)
        if exchange.switched:
            to_engine = client.switch(answer)
            await splice(client, exchange, to_engine, exchange.leftover)
            return False
        await client.start(status, answer)
        watch = asyncio.ensure_future(client.watch())
        relay = asyncio.ensure_future(_relay(exchange, client))
        try:
            done, _ = await asyncio.wait({watch, relay}, return_when=asyncio.FIRST_COMPLETED)
            if relay not in done:
                return False  # the client went away in the middle of a stream
            relay.result()
        finally:
            watch.cancel()
            relay.cancel()
            await asyncio.gather(watch, relay, return_exceptions=True)
        return not verdict.hijack
    finally:
        exchange.close()


async def _relay(exchange: EngineExchange, client: ClientSide) -> None:
    async for chunk in exchange.body():
        await client.data(chunk)
    await client.end()
