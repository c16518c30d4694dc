"""What the scoped Docker API asks a Swarm manager: look-ups and children's services.

The Swarm's counterpart of :class:`~swarmless.proxy.engine_view.EngineView`, through the
Docker SDK (its calls run in a small thread pool of their own). Every service it lists or
acts on is this gateway instance's (``swarmless.gateway=<instance>``); a child is a service
labelled ``swarmless.kind=child`` and ``swarmless.parent=<the parent's service id>`` by the
policy, and only service labels prove anything (a container inherits its image's labels,
a service does not).

Who calls: a function container's connections reach the gateway from its node's address
(the overlay's traffic to the outside is masqueraded by the node), so a caller is its
token plus one of its task's node address and its own addresses on its networks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import docker
import docker.errors
import docker.types

from swarmless.labels import LABEL_GATEWAY, LABEL_KIND, LABEL_PARENT
from swarmless.proxy.nodes import node_row
from swarmless.proxy.rules import Target, normalize_image
from swarmless.proxy.swarm_spec import LABEL_STARTED, LABEL_STATE, TERMINAL, Child, is_child

__all__ = ["SwarmView"]

T = TypeVar("T")

#: Seconds a listing of the Swarm's nodes is reused.
NODES_TTL = 2.0


def latest(tasks: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The newest of a service's tasks."""
    if not tasks:
        return None
    return max(tasks, key=lambda t: ((t.get("Version") or {}).get("Index", 0), t["CreatedAt"]))


class SwarmView:
    """The Swarm as the scoped Docker API sees it (one gateway instance's services)."""

    def __init__(
        self, client: docker.DockerClient, *, instance: str, images: Callable[[], Iterable[str]]
    ) -> None:
        self.client = client
        self.api = client.api
        self.instance = instance
        self.images = images
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="swarmless-swarm-proxy")
        self._nodes: tuple[float, list[dict[str, Any]]] = (0.0, [])
        #: Parent -> children it created that no listing has shown yet: the manager lists
        #: a new service some time after creating it, and the cap counts them meanwhile.
        self._unlisted: dict[str, set[str]] = {}

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` (a Docker SDK call) in the view's thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    # -- nodes -------------------------------------------------------------------------

    async def nodes(self, fresh: bool = False) -> list[dict[str, Any]]:
        """The cluster's nodes, each as :func:`~swarmless.proxy.nodes.node_row`."""
        at, rows = self._nodes
        if fresh or time.monotonic() - at > NODES_TTL:
            rows = [node_row(n) for n in await self.run(self.api.nodes)]
            self._nodes = (time.monotonic(), rows)
        return rows

    # -- admission's questions ---------------------------------------------------------

    def _own(self, *labels: str) -> dict[str, Any]:
        return {"label": [f"{LABEL_GATEWAY}={self.instance}", *labels]}

    async def caller(self, key: str, value: str) -> tuple[str, frozenset[str]] | None:
        """The function service labelled ``key=value`` whose task runs, and the addresses
        its connections may come from (its node's, its own)."""
        found = await self.run(self.api.services, filters=self._own(f"{key}={value}"))
        found = [s for s in found if not is_child(s)]
        if len(found) != 1:
            return None
        sid = str(found[0]["ID"])
        task = latest(await self.run(self.api.tasks, filters={"service": sid}))
        if task is None or (task.get("Status") or {}).get("State") != "running":
            return None
        addresses = {
            str(a).partition("/")[0]
            for n in task.get("NetworksAttachments") or []
            for a in n.get("Addresses") or []
        }
        node = {n["ID"]: n for n in await self.nodes()}.get(str(task.get("NodeID")))
        if node is None:
            node = {n["ID"]: n for n in await self.nodes(fresh=True)}.get(str(task.get("NodeID")))
        if node is not None and node["Status"]["Addr"]:
            addresses.add(node["Status"]["Addr"])
        return sid, frozenset(a for a in addresses if a)

    async def allowed_images(self) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
        """Normalised allowed names -> the name as allowed (the nodes resolve it)."""
        return {normalize_image(n): n for n in set(self.images())}, {}

    async def container(self, ref: str) -> Target | None:
        """The service ``ref`` names (id, name or id prefix) when it is a child of this
        instance; labels as its service carries them."""
        child = await self.child(ref)
        if child is None:
            return None
        return Target(id=child.id, labels=child.labels)

    async def exec_container(self, exec_id: str) -> Target | None:
        return None  # no exec on a Swarm: the route is refused

    async def children(self, caller: str) -> tuple[int, int]:
        """The caller's children now (asked afresh), those created but not listed yet
        included: (not exited, exited)."""
        rows = await self.child_rows(f"{LABEL_PARENT}={caller}")
        exited = sum(1 for c in rows if c.ended)
        unlisted = self._unlisted.get(caller, set())
        unlisted -= {c.id for c in rows}
        if not unlisted:
            self._unlisted.pop(caller, None)
        return len(rows) - exited + len(unlisted), exited

    def forget(self, parent: str) -> None:
        """``parent`` is gone: its unlisted children are the sweep's now."""
        self._unlisted.pop(parent, None)

    # -- children -------------------------------------------------------------------------

    def inspect(self, ref: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.api.inspect_service(ref)
        except docker.errors.APIError:
            return None  # no such service (or an ambiguous prefix): not yours
        return found

    async def child(self, ref: str) -> Child | None:
        """The child service ``ref`` names, with its newest task; None unless it is a
        child of this gateway instance."""
        service = await self.run(self.inspect, ref)
        labels = ((service or {}).get("Spec") or {}).get("Labels") or {}
        if service is None or labels.get(LABEL_GATEWAY) != self.instance:
            return None
        if labels.get(LABEL_KIND) != "child":
            return None
        tasks = await self.run(self.api.tasks, filters={"service": str(service["ID"])})
        return await self.read(service, tasks)

    async def read(self, service: Mapping[str, Any], tasks: Sequence[Mapping[str, Any]]) -> Child:
        task = latest([t for t in tasks if t.get("ServiceID") == service["ID"]])
        node_id = str((task or {}).get("NodeID") or "")
        nodes = {n["ID"]: n for n in await self.nodes()} if node_id else {}
        node = nodes.get(node_id)
        down = (
            node is not None
            and node["Status"]["State"] != "ready"
            and ((task or {}).get("Status") or {}).get("State") not in TERMINAL
        )
        return Child(service, task, node, node_down=down)

    async def child_rows(self, *labels: str) -> list[Child]:
        """This instance's children with ``labels``, each with its newest task."""
        for attempt in range(3):
            services = await self.run(
                self.api.services, filters=self._own(f"{LABEL_KIND}=child", *labels)
            )
            services = [s for s in services if is_child(s)]
            if not services:
                return []
            try:
                tasks = await self.run(
                    self.api.tasks, filters={"service": [s["ID"] for s in services]}
                )
            except docker.errors.NotFound:
                # A service removed between the two questions (a child reaped meanwhile):
                # the manager answers 404 for the whole filter. Ask both again.
                if attempt == 2:
                    raise
                continue
            return [await self.read(s, tasks) for s in services]
        raise AssertionError("unreachable")

    async def create(
        self, name: str, template: docker.types.TaskTemplate, labels: dict[str, str]
    ) -> str:
        """A child service with 0 replicas (``docker create``) of the parent its labels
        name; its id."""
        created = await self.run(
            self.api.create_service,
            template,
            name=name,
            labels=labels,
            mode=docker.types.ServiceMode("replicated", replicas=0),
            endpoint_spec=docker.types.EndpointSpec(mode="dnsrr"),
        )
        sid = str(created["ID"])
        if len(self._unlisted) < 10_000:
            self._unlisted.setdefault(labels.get(LABEL_PARENT, ""), set()).add(sid)
        return sid

    async def scale(self, child: Child, replicas: int, state: str) -> None:
        """Set a child's replicas (1: start, 0: kill) and its state label, at the version
        it was read at: a change made meanwhile fails the update (APIError)."""
        spec = child.service["Spec"]
        labels = {**(spec.get("Labels") or {}), LABEL_STATE: state}
        if state == "started":
            labels[LABEL_STARTED] = str(int(time.time() * 1000))
        await self.run(
            self.api.update_service,
            child.id,
            version=int(child.service["Version"]["Index"]),
            labels=labels,
            mode=docker.types.ServiceMode("replicated", replicas=replicas),
            fetch_current_spec=True,
        )

    async def remove(self, service_id: str) -> None:
        def remove() -> None:
            with contextlib.suppress(docker.errors.NotFound):
                self.api.remove_service(service_id)

        await self.run(remove)
        for unlisted in self._unlisted.values():
            unlisted.discard(service_id)

    async def logs(self, child: Child, params: Mapping[str, str], limit: int) -> bytes:
        """A child's log as the manager serves it (multiplexed frames, as a container's
        log), at most ``limit`` bytes."""

        def read() -> bytes:
            url = f"{self.api.base_url}/v{self.api.api_version}/services/{child.id}/logs"
            held = bytearray()
            with self.api.get(url, params=dict(params), stream=True, timeout=60) as r:
                if r.status_code != 200:
                    return b""
                for chunk in r.iter_content(65536):
                    held += chunk
                    if len(held) >= limit:
                        break
            return bytes(held[:limit])

        return await self.run(read)
