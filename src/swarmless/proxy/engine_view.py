"""What the scoped Docker API asks the engine itself: look-ups and removals (httpx).

Every list is this gateway's own containers (``swarmless.gateway=<instance>``), less
those whose proving labels came from their image; allowed images are looked up by name
at most every ``IMAGE_TTL`` seconds, image labels by id (an id names fixed content).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx

from swarmless.engine import Endpoint
from swarmless.labels import LABEL_GATEWAY, LABEL_KIND, LABEL_PARENT
from swarmless.proxy import policy
from swarmless.proxy.policy import Target

__all__ = ["IMAGE_TTL", "EngineView"]

log = logging.getLogger("swarmless.proxy")

IMAGE_TTL = 5.0
_EXITED = frozenset({"exited", "dead"})


class EngineView:
    """The engine as the proxy sees it (one gateway instance's containers)."""

    def __init__(
        self, engine: Endpoint, *, instance: str, images: Callable[[], Iterable[str]]
    ) -> None:
        transport = (
            httpx.AsyncHTTPTransport(uds=engine.socket)
            if engine.socket
            else httpx.AsyncHTTPTransport()
        )
        base = "http://docker" if engine.socket else f"http://{engine.host}:{engine.port}"
        self.api = httpx.AsyncClient(transport=transport, base_url=base, timeout=30.0)
        self.instance = instance
        #: The names children may run (deployed functions' images and ``proxy_images``).
        self.images = images
        #: Normalised image name -> (when looked up, image id, its labels).
        self._image_facts: dict[str, tuple[float, str, dict[str, str]]] = {}
        self._labels_by_id: dict[str, dict[str, str]] = {}

    async def close(self) -> None:
        await self.api.aclose()

    async def list(self, *labels: str, running: bool = False) -> list[dict[str, Any]]:
        """This gateway's containers with ``labels``, as the engine lists them, less those
        whose proving labels came from their image (a container inherits its image's
        labels: ``LABEL swarmless.gateway=...`` in a Dockerfile proves nothing)."""
        wanted = [f"{LABEL_GATEWAY}={self.instance}", *labels]
        params = {"filters": json.dumps({"label": wanted}), "all": "0" if running else "1"}
        r = await self.api.get("/containers/json", params=params)
        r.raise_for_status()
        rows: list[dict[str, Any]] = r.json()
        proving = [w.partition("=") for w in wanted]
        own = []
        for row in rows:
            inherited = await self.image_labels(str(row.get("ImageID") or ""))
            if inherited is None or any(inherited.get(k) == v for k, _, v in proving if v):
                continue  # fail closed: an image gone, or the labels are the image's
            own.append(row)
        return own

    async def caller(self, key: str, value: str) -> tuple[str, frozenset[str]] | None:
        """The running container labelled ``key=value`` and its addresses (a function
        container's connections come from its address on the function network)."""
        rows = await self.list(f"{key}={value}", running=True)
        if len(rows) != 1:
            return None
        networks = (rows[0].get("NetworkSettings") or {}).get("Networks") or {}
        ips = frozenset(n["IPAddress"] for n in networks.values() if n.get("IPAddress"))
        return str(rows[0]["Id"]), ips

    async def image_labels(self, image_id: str) -> dict[str, str] | None:
        """An image's labels by id (cached: an id names fixed content); None if gone."""
        if image_id in self._labels_by_id:
            return self._labels_by_id[image_id]
        r = await self.api.get(f"/images/{image_id}/json") if image_id else None
        if r is None or r.status_code != 200:
            return None
        labels = dict((r.json().get("Config") or {}).get("Labels") or {})
        if len(self._labels_by_id) >= 1024:
            self._labels_by_id.clear()  # bounded
        self._labels_by_id[image_id] = labels
        return labels

    async def container(self, ref: str) -> Target | None:
        r = await self.api.get(f"/containers/{ref}/json")
        if r.status_code == 404:
            return None
        r.raise_for_status()
        data = r.json()
        labels = dict((data.get("Config") or {}).get("Labels") or {})
        parent = labels.get(LABEL_PARENT)
        if parent is not None:
            # The parent label is what makes a child someone's: one its image carries too
            # proves nothing (the engine copies an image's labels onto its containers),
            # nor does one whose image is gone.
            inherited = await self.image_labels(str(data.get("Image") or ""))
            if inherited is None or inherited.get(LABEL_PARENT) == parent:
                del labels[LABEL_PARENT]
        return Target(id=data["Id"], labels=labels)

    async def exec_container(self, exec_id: str) -> Target | None:
        r = await self.api.get(f"/exec/{exec_id}/json")
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return await self.container(str(r.json().get("ContainerID") or "none"))

    async def allowed_images(self) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
        """Normalised allowed names -> image ids, and image id -> the image's labels
        (each looked up at most every ``IMAGE_TTL`` seconds)."""
        names = set(self.images())
        ids: dict[str, str] = {}
        labels: dict[str, dict[str, str]] = {}
        now = time.monotonic()
        for name in names:
            key = policy.normalize_image(name)
            cached = self._image_facts.get(key)
            if cached is None or now - cached[0] > IMAGE_TTL:
                r = await self.api.get(f"/images/{name}/json")
                data = r.json() if r.status_code == 200 else {}
                config = data.get("Config") or {}
                cached = (now, str(data.get("Id", "")), dict(config.get("Labels") or {}))
                self._image_facts[key] = cached
            ids[key] = cached[1]
            if cached[1]:
                labels[cached[1]] = cached[2]
        for key in set(self._image_facts) - {policy.normalize_image(n) for n in names}:
            del self._image_facts[key]  # no longer allowed: forgotten
        return ids, labels

    async def children(self, caller: str) -> tuple[int, int]:
        """The caller's children on the engine: (not exited, exited)."""
        rows = await self.list(f"{LABEL_PARENT}={caller}")
        exited = sum(1 for c in rows if c.get("State") in _EXITED)
        return len(rows) - exited, exited

    async def remove(self, container_id: str) -> None:
        r = await self.api.delete(f"/containers/{container_id}", params={"force": "1", "v": "1"})
        if r.status_code not in (204, 404, 409):
            log.warning("could not remove child %s: %s", container_id[:12], r.text[:200])

    async def remove_children(self, parent: str | None = None) -> int:
        """Remove the children of ``parent`` (of every container when None)."""
        labels = [f"{LABEL_KIND}=child"]
        if parent is not None:
            labels.append(f"{LABEL_PARENT}={parent}")
        rows = await self.list(*labels)
        await asyncio.gather(*(self.remove(c["Id"]) for c in rows), return_exceptions=True)
        return len(rows)
