"""Who is asking the scoped Docker API, and may they: the caller, the facts, the verdict.

A request's path starts with the caller's token (:mod:`swarmless.proxy.tokens`); the token
must be live and belong to the running container at the request's source address, of a
function deployed with ``docker: scoped``. The facts the policy needs (the allowed images,
the container or exec a request names) are looked up on the engine
(:mod:`swarmless.proxy.engine_view`), then :func:`swarmless.proxy.policy.check` decides.

Children are capped per caller atomically: a create reserves its place under the caller's
lock (counting the children on the engine plus the creates in flight) and gives it back
once the engine has answered (the end of :meth:`Admission.decide`'s block). Exited
children stop counting towards ``max_children``; at most as many again may be kept exited
before the caller has to remove some.

A gateway that stops closes admission (:meth:`Admission.close`): creates are refused from
then on, and the stop waits for those in flight to be answered before it removes the
children, so that a create the engine was still making is not left behind, unseen.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Protocol

from swarmless.config import Settings
from swarmless.labels import LABEL_KIND
from swarmless.proxy import policy
from swarmless.proxy.http import Incoming
from swarmless.proxy.policy import Caller, ProxyRequest, Target, Verdict
from swarmless.proxy.tokens import PATH_PREFIX, CallerTokens, Grant
from swarmless.spec import FunctionSpec

__all__ = ["CREATE_SETTLE", "Admission"]

log = logging.getLogger("swarmless.proxy")

#: Seconds a stopping gateway waits for the creates in flight to be answered by the engine.
CREATE_SETTLE = 15.0

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


class View(Protocol):
    """What admission asks of the engine (:class:`~swarmless.proxy.engine_view.EngineView`)
    or of the Swarm (:class:`~swarmless.proxy.swarm_view.SwarmView`)."""

    async def caller(self, key: str, value: str) -> tuple[str, frozenset[str]] | None:
        """The running container (on a Swarm: service) with label ``key=value``, and the
        addresses its connections come from; None unless exactly one runs."""
        ...

    async def allowed_images(self) -> tuple[dict[str, str], dict[str, dict[str, str]]]: ...

    async def container(self, ref: str) -> Target | None: ...

    async def exec_container(self, exec_id: str) -> Target | None: ...

    async def children(self, caller: str) -> tuple[int, int]:
        """The caller's children: (not exited, exited)."""
        ...


class Admission:
    """The verdict on each request of the scoped Docker API of one gateway."""

    def __init__(
        self,
        *,
        settings: Settings,
        tokens: CallerTokens,
        spec_of: Callable[[str], FunctionSpec | None],
        engine: View,
        labels: Mapping[str, str],
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        self.spec_of = spec_of
        self.engine = engine
        #: Labels forced on every child.
        self.labels = labels
        #: token -> the caller's container id and its addresses (until the container dies).
        self._callers: dict[str, tuple[str, frozenset[str]]] = {}
        #: Per caller container: creates in flight, and the lock that counts them.
        self._reserved: dict[str, int] = {}
        self._create_locks: dict[str, asyncio.Lock] = {}
        #: Set while no create is in flight (for every caller); admission closed.
        self._settled = asyncio.Event()
        self._settled.set()
        self._closed = False

    async def close(self, timeout: float = CREATE_SETTLE) -> None:
        """Refuse every create from now on, and wait up to ``timeout`` seconds for those in
        flight to be answered by the engine (a stopping gateway, before it removes the
        children: a create the engine was still making would be left behind)."""
        self._closed = True
        try:
            await asyncio.wait_for(self._settled.wait(), timeout)
        except TimeoutError:
            log.warning(
                "stopping with %d container creates still unanswered after %g s: a container "
                "they make may be left behind (label %s=child)",
                sum(self._reserved.values()),
                timeout,
                LABEL_KIND,
            )

    def forget(self, container: str) -> None:
        """Container ``container`` died: the tokens it used name no caller any more."""
        for token, (found, _) in list(self._callers.items()):
            if found == container:
                self._callers.pop(token, None)

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
            found = await self.engine.caller(*grant.label)
            if found is None:
                return policy.refuse("caller", "the container of this token is not running")
            self._callers[grant.token] = found
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
            call_id=grant.call_id,
            children_timeout=spec.children_timeout,
        )

    @contextlib.asynccontextmanager
    async def decide(self, incoming: Incoming, peer: str) -> AsyncIterator[Verdict]:
        """Identify the caller, look up the facts, ask the policy.

        A create that is allowed holds its place among the caller's children until the
        ``async with`` block (which forwards it) ends.
        """
        path, _, query = incoming.target.partition("?")
        if not path.startswith(PATH_PREFIX):
            yield policy.refuse(
                "caller", "no swarmless token in the path: use the DOCKER_HOST swarmless set"
            )
            return
        token, _, rest = path[len(PATH_PREFIX) :].partition("/")
        grant = self.tokens.lookup(token) if _TOKEN.match(token) else None
        if grant is None:
            yield policy.refuse("caller", "unknown or expired swarmless token")
            return
        caller = await self._caller(grant, peer)
        if isinstance(caller, Verdict):
            yield caller
            return
        path = "/" + rest
        r = policy.route(incoming.method, path)
        if isinstance(r, Verdict):
            yield r
            return
        target: Target | None = None
        images: dict[str, str] = {}
        image_labels: dict[str, dict[str, str]] = {}
        if r.endpoint in ("create", "pull", "image-inspect"):
            images, image_labels = await self.engine.allowed_images()
        elif r.ref is not None:
            exec_route = r.endpoint.startswith("exec-") and r.endpoint != "exec-create"
            target = await (
                self.engine.exec_container(r.ref) if exec_route else self.engine.container(r.ref)
            )
        request = ProxyRequest(
            incoming.method,
            path,
            query,
            incoming.body,
            caller,
            target,
            images,
            image_labels=image_labels,
        )
        if r.endpoint != "create":
            yield _logged(policy.check(request), caller)
            return
        who = caller.container
        lock = self._create_locks.setdefault(who, asyncio.Lock())
        async with lock:
            live, exited = await self.engine.children(who)
            reserved = self._reserved.get(who, 0)
            request = dataclasses.replace(request, children=live + reserved, exited=exited)
            verdict = _logged(policy.check(request), caller)
            log.debug("children of %s: %d live, %d reserved", who[:12], live, reserved)
            if verdict.allowed and self._closed:
                verdict = policy.refuse(
                    "caller", "the gateway is stopping: no new containers", status=503
                )
            if verdict.allowed:
                self._reserved[who] = reserved + 1
                self._settled.clear()
        if not verdict.allowed:
            yield verdict
            return
        try:
            yield verdict
        finally:
            left = self._reserved.get(who, 1) - 1
            if left > 0:
                self._reserved[who] = left
            else:
                self._reserved.pop(who, None)
                if not self._reserved:
                    self._settled.set()


def _logged(verdict: Verdict, caller: Caller) -> Verdict:
    if not verdict.allowed:
        log.info(
            "refused a request of %s (%s): %s",
            caller.function,
            caller.container[:12],
            verdict.message,
        )
    return verdict
