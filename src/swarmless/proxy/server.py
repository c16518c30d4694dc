"""The scoped Docker API: an HTTP/1.1 proxy between function containers and the engine.

The gateway starts it on the function network's gateway address (its own port). A container
of a ``docker: scoped`` function finds it in ``DOCKER_HOST``, with its token in the path
(:mod:`swarmless.proxy.tokens`), so the Docker SDK for Python and the ``docker`` CLI work
unchanged inside it.

One request per client connection: the request head is parsed strictly (no folded or
malformed headers, one Content-Length or exactly ``Transfer-Encoding: chunked``), the body
read whole (chunked bodies decoded), the caller identified (token, then source address),
the facts the policy needs looked up on the engine, and :func:`swarmless.proxy.policy.check`
asked. A refusal is answered here, 403 with ``{"message": "... (rule NAME)"}`` (what the
Docker SDK shows). An allowed request is rebuilt from the verdict and sent on a fresh
connection to the engine with ``Connection: close``; the answer is relayed byte for byte,
so streams (logs, wait, events) flow as they come. For attach and exec start the engine
hijacks the connection (``Upgrade: tcp`` or not): bytes are then relayed both ways, and a
half-close from the client is passed on (stdin EOF).

Children die with their parent: the proxy follows the engine's ``die`` events of the
gateway's containers and removes the children of every container that exits (a one-shot
call that ends, times out or crashes; a warm worker that stops), sweeps orphans every few
seconds in case an event was missed, and removes all children when the gateway stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlparse

import httpx

from swarmless.config import Settings
from swarmless.labels import LABEL_GATEWAY, LABEL_KIND, LABEL_PARENT
from swarmless.proxy import policy
from swarmless.proxy.policy import Caller, ProxyRequest, Target, Verdict
from swarmless.proxy.tokens import PATH_PREFIX, CallerTokens, Grant
from swarmless.spec import FunctionSpec

__all__ = ["DockerProxy"]

log = logging.getLogger("swarmless.proxy")

#: Limits on what a client sends: the request head, and a body (a tar for archive PUT).
MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
HEAD_TIMEOUT = 30.0
SWEEP_INTERVAL = 5.0
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_METHOD = re.compile(rb"^[A-Z]{1,16}$")
_HEADER_NAME = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_STDIO = ("attach", "exec-start")


class _BadRequest(Exception):
    """The client's HTTP cannot be read unambiguously."""


class _Head:
    __slots__ = ("headers", "method", "path", "query")

    def __init__(self, method: str, path: str, query: str, headers: list[tuple[str, str]]):
        self.method, self.path, self.query, self.headers = method, path, query, headers

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


def _parse_head(raw: bytes) -> _Head:
    lines = raw[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _METHOD.match(parts[0]) or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise _BadRequest("malformed request line")
    target = parts[1].decode("ascii", "replace")
    if not target.startswith("/") or "#" in target or any(ord(c) < 33 for c in target):
        raise _BadRequest("the request target must be a plain path")
    path, _, query = target.partition("?")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _HEADER_NAME.match(name):
            raise _BadRequest("malformed or folded header line")
        value = value.strip(b" \t")
        if any(c in value for c in b"\r\n\0"):
            raise _BadRequest("control characters in a header value")
        headers.append((name.decode().lower(), value.decode("latin-1")))
    return _Head(parts[0].decode(), path, query, headers)


async def _read_body(reader: asyncio.StreamReader, head: _Head) -> bytes:
    lengths = head.header("content-length")
    encodings = head.header("transfer-encoding")
    if encodings:
        if lengths or len(encodings) != 1 or encodings[0].strip().lower() != "chunked":
            raise _BadRequest("only 'Transfer-Encoding: chunked', alone, is understood")
        chunks: list[bytes] = []
        total = 0
        while True:
            line = (await reader.readuntil(b"\r\n"))[:-2]
            size_text = line.split(b";", 1)[0].strip()
            if not size_text or not all(c in b"0123456789abcdefABCDEF" for c in size_text):
                raise _BadRequest("malformed chunk size")
            size = int(size_text, 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers are read and dropped
                return b"".join(chunks)
            total += size
            if total > MAX_BODY:
                raise _BadRequest(f"body over {MAX_BODY} bytes")
            chunks.append(await reader.readexactly(size))
            if await reader.readexactly(2) != b"\r\n":
                raise _BadRequest("a chunk does not end with CRLF")
    if not lengths:
        return b""
    if len(set(lengths)) != 1 or not lengths[0].isdigit():
        raise _BadRequest("conflicting or malformed Content-Length")
    n = int(lengths[0])
    if n > MAX_BODY:
        raise _BadRequest(f"body over {MAX_BODY} bytes")
    return await reader.readexactly(n)


async def _answer(writer: asyncio.StreamWriter, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    reason = {400: "Bad Request", 403: "Forbidden", 404: "Not Found"}.get(status, "Error")
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
        + data
    )
    with contextlib.suppress(ConnectionError):
        await writer.drain()


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, half_close: bool) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except (ConnectionError, OSError):
        return
    if half_close and dst.can_write_eof():
        with contextlib.suppress(OSError):
            dst.write_eof()


def _engine_address(docker_host: str | None) -> tuple[str, str, int]:
    """(``unix``, path, 0) or (``tcp``, host, port) of the engine the gateway uses."""
    address = docker_host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    url = urlparse(address)
    if url.scheme in ("unix", "http+unix"):
        return "unix", (url.netloc + url.path) or "/var/run/docker.sock", 0
    if url.scheme in ("tcp", "http") and url.hostname:
        return "tcp", url.hostname, url.port or 2375
    raise ValueError(f"the scoped Docker API cannot reach an engine at {address!r}")


class DockerProxy:
    """The scoped Docker API of one gateway (``start`` it, then ``close`` it)."""

    def __init__(
        self,
        *,
        settings: Settings,
        tokens: CallerTokens,
        spec_of: Callable[[str], FunctionSpec | None],
        images: Callable[[], Iterable[str]],
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        self.spec_of = spec_of
        self.images = images
        #: Labels forced on every child (the gateway instance, a test session...).
        self.labels = {**(labels or {}), LABEL_GATEWAY: settings.instance}
        self.url = ""
        self._kind, self._host, self._port = _engine_address(settings.docker_host)
        transport = (
            httpx.AsyncHTTPTransport(uds=self._host)
            if self._kind == "unix"
            else httpx.AsyncHTTPTransport()
        )
        base = "http://docker" if self._kind == "unix" else f"http://{self._host}:{self._port}"
        self._api = httpx.AsyncClient(transport=transport, base_url=base, timeout=30.0)
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._callers: dict[str, tuple[str, frozenset[str]]] = {}
        self._image_ids: dict[str, tuple[float, str]] = {}

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, host: str, port: int = 0) -> None:
        """Listen on ``host:port`` (0: a free port) and follow the engine's events."""
        await self._remove_children()  # left by a gateway that crashed
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD)
        bound = self._server.sockets[0].getsockname()
        self.url = f"tcp://{bound[0]}:{bound[1]}"
        self.tokens.docker_url = self.url
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._watch()), loop.create_task(self._sweep())]
        log.info("scoped Docker API on %s", self.url)

    async def close(self) -> None:
        """Stop listening and remove every child container of this gateway."""
        self.tokens.docker_url = None
        if self._server is not None:
            self._server.close()
        for task in [*self._tasks, *self._background]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._background, return_exceptions=True)
        with contextlib.suppress(httpx.HTTPError):
            await self._remove_children()
        await self._api.aclose()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- engine look-ups ---------------------------------------------------------------

    async def _list(self, *labels: str, running: bool = False) -> list[dict[str, Any]]:
        filters = json.dumps({"label": [f"{LABEL_GATEWAY}={self.settings.instance}", *labels]})
        params = {"filters": filters, "all": "0" if running else "1"}
        r = await self._api.get("/containers/json", params=params)
        r.raise_for_status()
        rows: list[dict[str, Any]] = r.json()
        return rows

    async def _container(self, ref: str) -> Target | None:
        r = await self._api.get(f"/containers/{ref}/json")
        if r.status_code == 404:
            return None
        r.raise_for_status()
        data = r.json()
        return Target(id=data["Id"], labels=(data.get("Config") or {}).get("Labels") or {})

    async def _exec_container(self, exec_id: str) -> Target | None:
        r = await self._api.get(f"/exec/{exec_id}/json")
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return await self._container(str(r.json().get("ContainerID") or "none"))

    async def _allowed_images(self) -> dict[str, str]:
        """Normalised allowed names -> image ids (looked up at most every 5 s)."""
        names = {*self.images(), *self.settings.proxy_images}
        out: dict[str, str] = {}
        now = time.monotonic()
        for name in names:
            key = policy.normalize_image(name)
            cached = self._image_ids.get(key)
            if cached is None or now - cached[0] > 5.0:
                r = await self._api.get(f"/images/{name}/json")
                cached = (now, str(r.json().get("Id", "")) if r.status_code == 200 else "")
                self._image_ids[key] = cached
            out[key] = cached[1]
        return out

    async def _caller(self, grant: Grant, peer: str) -> Caller | Verdict:
        spec = self.spec_of(grant.function)
        if spec is None:
            return policy.refuse("caller", f"function {grant.function!r} is not deployed")
        if spec.docker != "scoped":
            return policy.refuse(
                "docker-access", f"function {spec.name!r} has docker: {spec.docker}, not scoped"
            )
        found = self._callers.get(grant.token)
        if found is None:
            key, value = grant.label
            rows = await self._list(f"{key}={value}", running=True)
            if len(rows) != 1:
                return policy.refuse("caller", "the container of this token is not running")
            networks = (rows[0].get("NetworkSettings") or {}).get("Networks") or {}
            ips = frozenset(n["IPAddress"] for n in networks.values() if n.get("IPAddress"))
            found = self._callers[grant.token] = (str(rows[0]["Id"]), ips)
        container, ips = found
        if peer not in ips:
            return policy.refuse(
                "caller", f"this token belongs to another container than the one at {peer}"
            )
        return Caller(
            container=container,
            function=spec.name,
            network=spec.network or self.settings.network,
            memory=spec.memory or self.settings.proxy_memory,
            cpus=spec.cpus or self.settings.proxy_cpus,
            labels=self.labels,
        )

    async def decide(self, head: _Head, body: bytes, peer: str) -> Verdict:
        """Identify the caller, look up the facts, ask the policy."""
        if not head.path.startswith(PATH_PREFIX):
            return policy.refuse(
                "caller", "no swarmless token in the path: use the DOCKER_HOST swarmless set"
            )
        token, _, rest = head.path[len(PATH_PREFIX) :].partition("/")
        grant = self.tokens.lookup(token) if _TOKEN.match(token) else None
        if grant is None:
            return policy.refuse("caller", "unknown or expired swarmless token")
        caller = await self._caller(grant, peer)
        if isinstance(caller, Verdict):
            return caller
        path = "/" + rest
        r = policy.route(head.method, path)
        if isinstance(r, Verdict):
            return r
        target: Target | None = None
        images: dict[str, str] = {}
        children = 0
        if r.endpoint in ("create", "pull", "image-inspect"):
            images = await self._allowed_images()
        elif r.ref is not None:
            exec_route = r.endpoint.startswith("exec-") and r.endpoint != "exec-create"
            target = await (self._exec_container(r.ref) if exec_route else self._container(r.ref))
            if target is None:
                what = "exec instance" if exec_route else "container"
                return Verdict(
                    allowed=False, rule="own-children", reason=f"no such {what}", status=404
                )
        if r.endpoint == "create":
            children = len(await self._list(f"{LABEL_PARENT}={caller.container}"))
        request = ProxyRequest(
            head.method, path, head.query, body, caller, target, images, children
        )
        verdict = policy.check(request)
        if not verdict.allowed:
            log.info(
                "refused %s %s from %s (%s): %s",
                head.method,
                path[:200],
                caller.function,
                caller.container[:12],
                verdict.message,
            )
        return verdict

    # -- connections -------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            try:
                raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
                head = _parse_head(raw)
                body = await asyncio.wait_for(_read_body(reader, head), HEAD_TIMEOUT)
            except _BadRequest as e:
                await _answer(writer, 400, {"message": f"swarmless proxy: {e} (rule http)"})
                return
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            try:
                verdict = await self.decide(head, body, str(peer[0]) if peer else "")
            except httpx.HTTPError as e:
                await _answer(writer, 503, {"message": f"swarmless proxy: engine error: {e}"})
                return
            if not verdict.allowed:
                await _answer(writer, verdict.status, {"message": verdict.message})
                return
            await self._forward(verdict, head, reader, writer)
        except (ConnectionError, OSError):
            pass
        except Exception:
            log.exception("scoped Docker API: unexpected error")
        finally:
            writer.close()

    async def _open_engine(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._kind == "unix":
            return await asyncio.open_unix_connection(self._host)
        return await asyncio.open_connection(self._host, self._port)

    async def _forward(
        self,
        verdict: Verdict,
        head: _Head,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        upgrade = verdict.hijack and any(v.lower() == "tcp" for v in head.header("upgrade"))
        agent = (head.header("user-agent") or ["swarmless-proxy"])[0][:200]
        lines = [
            f"{verdict.method} {verdict.url()} HTTP/1.1",
            "Host: docker",
            f"User-Agent: {agent}",
            "Connection: Upgrade\r\nUpgrade: tcp" if upgrade else "Connection: close",
        ]
        if verdict.body is not None:
            kind = "application/x-tar" if verdict.rule == "archive-put" else "application/json"
            lines += [f"Content-Type: {kind}", f"Content-Length: {len(verdict.body)}"]
        up_reader, up_writer = await self._open_engine()
        try:
            up_writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (verdict.body or b""))
            await up_writer.drain()
            down = asyncio.ensure_future(_pump(up_reader, writer, half_close=False))
            if verdict.hijack:
                # stdin of attach / exec: the client's bytes go on, and so does its EOF.
                up: asyncio.Future[Any] = asyncio.ensure_future(
                    _pump(reader, up_writer, half_close=True)
                )
                await down
            else:
                # Nothing more is expected from the client: its EOF means it went away.
                up = asyncio.ensure_future(reader.read(1))
                await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
                down.cancel()
            up.cancel()
            await asyncio.gather(down, up, return_exceptions=True)
        finally:
            up_writer.close()

    # -- children die with their parent ------------------------------------------------

    async def _remove(self, container_id: str) -> None:
        r = await self._api.delete(f"/containers/{container_id}", params={"force": "1", "v": "1"})
        if r.status_code not in (204, 404, 409):
            log.warning("could not remove child %s: %s", container_id[:12], r.text[:200])

    async def _remove_children(self, parent: str | None = None) -> int:
        """Remove the children of ``parent`` (of every container when None)."""
        labels = [f"{LABEL_KIND}=child"]
        if parent is not None:
            labels.append(f"{LABEL_PARENT}={parent}")
        rows = await self._list(*labels)
        await asyncio.gather(*(self._remove(c["Id"]) for c in rows), return_exceptions=True)
        return len(rows)

    async def _watch(self) -> None:
        filters = json.dumps(
            {
                "type": ["container"],
                "event": ["die"],
                "label": [f"{LABEL_GATEWAY}={self.settings.instance}"],
            }
        )
        while True:
            try:
                async with self._api.stream(
                    "GET", "/events", params={"filters": filters}, timeout=None
                ) as stream:
                    async for line in stream.aiter_lines():
                        if line.strip():
                            self._died(json.loads(line))
            except (httpx.HTTPError, ValueError) as e:
                log.debug("event stream ended (%s); following again", e)
            await asyncio.sleep(1.0)

    def _died(self, event: dict[str, Any]) -> None:
        actor = event.get("Actor") or {}
        attrs: dict[str, str] = actor.get("Attributes") or {}
        if attrs.get(LABEL_KIND) == "child":
            return
        self.tokens.revoke_container(attrs)
        cid = str(actor.get("ID") or event.get("id") or "")
        for token, (container, _) in list(self._callers.items()):
            if container == cid:
                self._callers.pop(token, None)
        if cid:
            self._spawn(self._reap(cid))

    async def _reap(self, parent: str) -> None:
        with contextlib.suppress(httpx.HTTPError):
            n = await self._remove_children(parent)
            if n:
                log.info("removed %d child container(s) of %s", n, parent[:12])

    async def _sweep(self) -> None:
        """Orphans (a parent whose death went unseen) are removed every few seconds."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            with contextlib.suppress(httpx.HTTPError):
                children = await self._list(f"{LABEL_KIND}=child")
                if not children:
                    continue
                running = {c["Id"] for c in await self._list(running=True)}
                for c in children:
                    if (c.get("Labels") or {}).get(LABEL_PARENT) not in running:
                        await self._remove(c["Id"])


async def start_proxy(
    settings: Settings, backend: Any, dispatcher: Any, tokens: CallerTokens
) -> DockerProxy | None:
    """Give ``backend`` the caller tokens and start the scoped Docker API beside it.

    The allowlist is the images of the deployed functions plus ``settings.proxy_images``.
    Every engine backend gives its containers caller tokens; only one that runs them on
    one engine (``scoped_docker_api``) gets the proxy.
    """
    if not hasattr(backend, "callers"):
        return None
    backend.callers = tokens
    if not getattr(backend, "scoped_docker_api", False):
        return None

    def spec_of(name: str) -> FunctionSpec | None:
        found = dispatcher.functions.get(name)
        return found[0] if found else None

    def images() -> list[str]:
        return [s.image for s, _ in dispatcher.functions.values() if s.image]

    proxy = DockerProxy(
        settings=settings,
        tokens=tokens,
        spec_of=spec_of,
        images=images,
        labels=getattr(backend, "extra_labels", None),
    )
    try:
        await proxy.start(backend.runtime_host(), settings.proxy_port)
    except (OSError, httpx.HTTPError) as e:
        log.error("the scoped Docker API could not start: %s", e)
        await proxy.close()
        return None
    return proxy
