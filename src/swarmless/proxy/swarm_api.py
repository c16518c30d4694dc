"""The container API of children on a Swarm, emulated over services (the proxy's answers).

Each request the policy allowed (:mod:`swarmless.proxy.admission`: the caller, its own
children only, limits, allow-list, the cap reserved atomically) is answered here, never
forwarded: a child is a one-replica service (:mod:`swarmless.proxy.swarm_spec`).

Emulated: ``_ping``, ``version``, ``GET /nodes``, ``POST /containers/create`` (a service
with 0 replicas, placed by ``constraint:node==`` / ``!=``), ``start`` (scaled to 1),
``wait``, ``logs`` (``follow``: the whole log once the child ended), ``GET
/containers/{id}/json``, ``kill`` and ``stop`` (scaled to 0: SIGTERM then SIGKILL at
once), ``DELETE /containers/{id}``, ``GET /containers/json`` (own children), ``attach``
for output only (the whole output once the child ended), ``POST /images/create`` (nothing
to do: each node pulls when a child starts) and image inspect (the manager's copy).
Everything else is refused, 403 ``rule swarm``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

import docker.errors

from swarmless.labels import LABEL_FUNCTION, LABEL_PARENT
from swarmless.proxy import nodes, policy
from swarmless.proxy.http import ClientSide, Incoming
from swarmless.proxy.rules import Refused, Verdict, parse_json
from swarmless.proxy.swarm_spec import NOT_RUN, Child, inspect_shape, list_row, task_spec
from swarmless.proxy.swarm_view import SwarmView
from swarmless.spec import FunctionSpec

__all__ = ["MAX_LOG", "MAX_SPEC", "SwarmAPI"]

log = logging.getLogger("swarmless.proxy")

#: The largest create body a child service may be made of (a service spec lives in the
#: managers' Raft log: a large one slows the whole cluster).
MAX_SPEC = 256 * 1024
#: The most of a child's log one answer carries.
MAX_LOG = 16 * 1024 * 1024
#: How often a wait looks at the child again.
POLL = 0.5
#: How long ``start`` waits for Swarm to run the child (a node may pull its image).
START_WAIT = 120.0
#: How long ``stop`` waits for the child to end.
STOP_WAIT = 30.0
_LOGS_ERROR = b"Error grabbing logs: "
_PATH = re.compile(r"^(?:/v[0-9.]+)?/containers/([A-Za-z0-9]+)(?:/([a-z]+))?$")
_TRUE = ("1", "true", "True")


def _refusal(rule: str, reason: str) -> str:
    return policy.refuse(rule, reason).message


def frames(data: bytes) -> tuple[bytes, bool]:
    """A multiplexed log without the engine's ``Error grabbing logs`` frames (and without
    a cut last frame); and whether there was such a frame."""
    out = bytearray()
    bad = False
    at = 0
    while at + 8 <= len(data):
        size = struct.unpack(">I", data[at + 4 : at + 8])[0]
        if at + 8 + size > len(data):
            break
        payload = data[at + 8 : at + 8 + size]
        if payload.startswith(_LOGS_ERROR):
            bad = True
        else:
            out += data[at : at + 8 + size]
        at += 8 + size
    return bytes(out), bad


class SwarmAPI:
    """Answers the allowed requests of the scoped API on a Swarm (a relay ``Handle``)."""

    def __init__(
        self,
        view: SwarmView,
        *,
        spec_of: Callable[[str], FunctionSpec | None],
        gone: Callable[[Child], None],
    ) -> None:
        self.view = view
        self.spec_of = spec_of
        #: Told of a child the caller removed (its outcome is reported once).
        self.gone = gone
        self._locks: dict[str, asyncio.Lock] = {}

    async def handle(self, verdict: Verdict, incoming: Incoming, client: ClientSide) -> bool:
        try:
            return await self._answer(verdict, client)
        except Refused as e:
            status = 400 if e.rule in ("constraint", "query", "swarm-stdin") else 403
            await client.answer(status, {"message": _refusal(e.rule, e.reason)})
            return False
        except docker.errors.APIError as e:
            status = e.status_code if e.status_code in (400, 404, 409) else 503
            message = f"swarmless proxy: the Swarm manager said: {e.explanation or e}"
            await client.answer(status, {"message": message})
            return False
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            # A value of a shape the checks did not foresee: refused, never acted on.
            reason = f"the request has a value of an unexpected type ({e})"
            await client.answer(400, {"message": _refusal("json", reason)})
            return False

    def _lock(self, ref: str) -> asyncio.Lock:
        if len(self._locks) > 4096:
            self._locks = {k: v for k, v in self._locks.items() if v.locked()}
        return self._locks.setdefault(ref, asyncio.Lock())

    async def _answer(self, verdict: Verdict, client: ClientSide) -> bool:
        rule = verdict.rule
        query = dict(parse_qsl(verdict.query, keep_blank_values=True))
        if rule == "ping":
            await client.start(200, [(b"content-type", b"text/plain"), (b"content-length", b"2")])
            await client.data(b"OK")
            await client.end()
            return True
        if rule == "version":
            return await nodes.reply(client, 200, await self.view.run(self.view.api.version))
        if rule == "nodes":
            return await nodes.reply(
                client, 200, nodes.filtered(await self.view.nodes(fresh=True), verdict.query)
            )
        if rule == "create":
            return await self._create(verdict, client, query)
        if rule == "pull":
            line = {"status": "swarmless: each Swarm node pulls the image when a child starts"}
            return await nodes.reply(client, 200, line)
        if rule == "image-inspect":
            ref = verdict.path.split("/images/", 1)[1][: -len("/json")]
            return await nodes.reply(
                client, 200, await self.view.run(self.view.api.inspect_image, ref)
            )
        if rule == "list":
            return await self._list(verdict, client, query)
        m = _PATH.match(verdict.path)
        handlers = {
            "inspect": self._inspect,
            "start": self._start,
            "wait": self._wait,
            "logs": self._logs,
            "kill": self._kill,
            "stop": self._kill,
            "remove": self._remove,
            "attach": self._attach,
        }
        if m is None or rule not in handlers:
            raise Refused(
                "swarm", f"{verdict.method} {rule} is not emulated for children on a Swarm"
            )
        child = await self.view.child(m[1])
        if child is None:  # gone since the policy looked
            await client.answer(404, {"message": f"No such container: {m[1]}"})
            return False
        return await handlers[rule](child, client, query, rule)

    # -- create and list ----------------------------------------------------------------------

    async def _create(self, verdict: Verdict, client: ClientSide, query: dict[str, str]) -> bool:
        body = verdict.body or b""
        if len(body) > MAX_SPEC:
            message = _refusal(
                "size", f"a child's create body of {len(body)} bytes is over {MAX_SPEC}"
            )
            await client.answer(413, {"message": message})
            return False
        config = parse_json(body, "create")
        labels = config.get("Labels") or {}
        parent = await self.view.run(self.view.inspect, labels.get(LABEL_PARENT, ""))
        function = (((parent or {}).get("Spec") or {}).get("Labels") or {}).get(LABEL_FUNCTION)
        spec = self.spec_of(function or "")
        hosts = {n["Description"]["Hostname"] for n in await self.view.nodes(fresh=True)}
        for op, host in verdict.placement:
            if op == "==" and host not in hosts:
                raise Refused(
                    "constraint", f"constraint:node=={host}: no node {host!r} in the Swarm"
                )
        where = [*(spec.placement if spec else ()), *nodes.constraints(verdict.placement)]
        template, service_labels = task_spec(config, network="", constraints=where)
        name = query.get("name", "").lstrip("/") or f"swarmless-child-{secrets.token_hex(6)}"
        sid = await self.view.create(name, template, service_labels)
        return await nodes.reply(client, 201, {"Id": sid, "Warnings": []})

    async def _list(self, verdict: Verdict, client: ClientSide, query: dict[str, str]) -> bool:
        raw = json.loads(query.get("filters") or "{}")
        parent = ""
        wanted: dict[str, list[str]] = {}
        for key, values in raw.items():
            if key == "label":
                own = [v for v in values if v.startswith(f"{LABEL_PARENT}=")]
                parent = own[-1].partition("=")[2] if own else parent
                wanted["label"] = [v for v in values if v not in own]
            elif key in ("status", "name", "id"):
                wanted[key] = values
            else:
                raise Refused("query", f"containers filter {key!r}: only label, status, name, id")
        if not parent:  # the policy adds it: without it, nothing is the caller's
            return await nodes.reply(client, 200, [])
        rows = []
        for child in await self.view.child_rows(f"{LABEL_PARENT}={parent}"):
            if query.get("all") not in _TRUE and child.status != "running":
                continue
            if _passes(child, wanted):
                rows.append(list_row(child))
        rows.sort(key=lambda r: -int(r["Created"]))
        limit = int(query.get("limit") or -1)
        return await nodes.reply(client, 200, rows[:limit] if limit > 0 else rows)

    # -- one child --------------------------------------------------------------------------

    async def _inspect(
        self, child: Child, client: ClientSide, query: dict[str, str], _: str
    ) -> bool:
        return await nodes.reply(client, 200, inspect_shape(child))

    async def _start(self, child: Child, client: ClientSide, query: dict[str, str], _: str) -> bool:
        async with self._lock(child.id):
            child = await self.view.child(child.id) or child
            if child.ended:
                raise Refused("swarm", "a child that ended on a Swarm does not start again")
            if child.started:
                return await nodes.reply(client, 304)
            await self.view.scale(child, 1, "started")
        # As docker start: back once it runs (or ended already), not while Swarm places it.
        deadline = time.monotonic() + START_WAIT
        found: Child | None = child
        while time.monotonic() < deadline:
            found = await self.view.child(child.id)
            if found is None or found.ended or found.status == "running":
                break
            await asyncio.sleep(POLL)
        if found is not None and found.ended and found.exit_code == NOT_RUN:
            message = f"swarmless proxy: Swarm could not run the child: {found.error or '?'}"
            await client.answer(500, {"message": message})
            return False
        return await nodes.reply(client, 204)

    async def _kill(
        self, child: Child, client: ClientSide, query: dict[str, str], rule: str
    ) -> bool:
        async with self._lock(child.id):
            child = await self.view.child(child.id) or child
            if not child.started or child.ended:
                if rule == "stop":
                    return await nodes.reply(client, 304)
                message = f"Container {child.id} is not running"
                await client.answer(409, {"message": message})
                return False
            if child.labels.get("swarmless.child-state") != "killed":
                await self.view.scale(child, 0, "killed")
        if rule == "stop":
            deadline = time.monotonic() + STOP_WAIT
            while time.monotonic() < deadline:
                found = await self.view.child(child.id)
                if found is None or found.ended:
                    break
                await asyncio.sleep(POLL)
        return await nodes.reply(client, 204)

    async def _remove(
        self, child: Child, client: ClientSide, query: dict[str, str], _: str
    ) -> bool:
        if child.started and not child.ended and query.get("force") not in _TRUE:
            message = (
                f"You cannot remove a running container {child.id}. Stop the container "
                "before attempting removal or force remove"
            )
            await client.answer(409, {"message": message})
            return False
        await self.view.remove(child.id)
        self.gone(child)
        return await nodes.reply(client, 204)

    async def _until_ended(
        self, child: Child, client: ClientSide, condition: str = ""
    ) -> Child | None:
        """Wait until ``child`` ended (None: it was removed), or the client left (raises
        ConnectionError)."""
        watch = asyncio.ensure_future(client.watch())  # returns when the client closes
        try:
            while True:
                if condition != "removed" and (
                    child.ended or (condition in ("", "not-running") and not child.started)
                ):
                    return child
                done, _ = await asyncio.wait({watch}, timeout=POLL)
                if done:
                    raise ConnectionError("the client went away")
                found = await self.view.child(child.id)
                if found is None:
                    return None
                child = found
        finally:
            watch.cancel()
            with contextlib.suppress(BaseException):
                await watch

    async def _wait(self, child: Child, client: ClientSide, query: dict[str, str], _: str) -> bool:
        condition = query.get("condition", "")
        if condition not in ("", "not-running", "next-exit", "removed"):
            raise Refused("query", f"wait condition {condition!r}")
        ended = await self._until_ended(child, client, condition)
        code = ended.exit_code if ended is not None else child.exit_code
        error = ended.error if ended is not None else ""
        body = {"StatusCode": code, "Error": {"Message": error} if error else None}
        return await nodes.reply(client, 200, body)

    async def _output(self, child: Child, stdout: bool, stderr: bool, **more: str) -> bytes:
        """The child's log as multiplexed frames, asked again for a while when the manager
        could not get a node's part of it."""
        params = {"stdout": str(int(stdout)), "stderr": str(int(stderr)), **more}
        for attempt in range(6):
            data, bad = frames(await self.view.logs(child, params, MAX_LOG))
            if not bad or attempt == 5:
                return data
            await asyncio.sleep(0.2 * (attempt + 1))
        return b""

    async def _logs(self, child: Child, client: ClientSide, query: dict[str, str], _: str) -> bool:
        stdout, stderr = query.get("stdout") in _TRUE, query.get("stderr") in _TRUE
        if not (stdout or stderr):
            raise Refused("query", "you must choose at least one stream (stdout, stderr)")
        if query.get("until"):
            raise Refused("query", "logs until= is not available for children on a Swarm")
        more = {k: query[k] for k in ("timestamps", "tail", "since", "details") if query.get(k)}
        if query.get("follow") in _TRUE:
            child = await self._until_ended(child, client, "next-exit") or child
        data = await self._output(child, stdout, stderr, **more)
        await client.start(
            200,
            [
                (b"content-type", b"application/vnd.docker.raw-stream"),
                (b"content-length", str(len(data)).encode()),
            ],
        )
        await client.data(data)
        await client.end()
        return True

    async def _attach(
        self, child: Child, client: ClientSide, query: dict[str, str], _: str
    ) -> bool:
        if query.get("stdin") in _TRUE:
            raise Refused("swarm-stdin", "a child on a Swarm takes no stdin (attach stdin=1)")
        stdout, stderr = query.get("stdout") in _TRUE, query.get("stderr") in _TRUE
        client.switch([(b"content-type", b"application/vnd.docker.raw-stream")])
        with contextlib.suppress(ConnectionError, OSError):
            ended = await self._until_ended(child, client, "next-exit")
            if ended is not None and (stdout or stderr):
                client.writer.write(await self._output(ended, stdout, stderr))
                await client.writer.drain()
        return False


def _passes(child: Child, wanted: Mapping[str, list[str]]) -> bool:
    labels = child.labels

    def one(key: str, value: str) -> bool:
        if key == "label":
            k, eq, v = value.partition("=")
            return k in labels and (not eq or labels[k] == v)
        if key == "status":
            return child.status == value
        if key == "name":
            return value.lstrip("/") in child.name
        return child.id.startswith(value)

    return all(one(key, value) for key, values in wanted.items() for value in values)


def describe(child: Child) -> dict[str, Any]:
    """A child as a log line shows it."""
    return {"id": child.id[:12], "status": child.status, "code": child.exit_code}
