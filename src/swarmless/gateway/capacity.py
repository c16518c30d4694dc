"""What the engine can give a function, checked when the function is deployed.

A spec can be valid on its own and still impossible here and now: ``cpus: 4`` on a
2-CPU host, ``memory: 512g`` on a 16 GiB one, a ``network`` that does not exist, a
``schedule`` with no time left to fire (``0 0 30 2 *``: there is no 30 February). Docker
refuses the first ones only when a container is created, which would make every call of
the function fail. :func:`check_deployable` asks the engine (once a minute at most) and
refuses such a spec with a :class:`~swarmless.exceptions.SpecError` naming the field (422).
These rules depend on the host and the clock, not on the spec alone: a spec stored earlier
still loads (the scheduler skips a schedule that cannot fire, and says why).

On a Swarm the limit is the largest node's (a container runs on one node); a backend that
is not an engine backend (a test's fake) has no limits to check.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import docker

from swarmless.backends.base import Backend, EngineBackend
from swarmless.engine import translate
from swarmless.exceptions import SpecError
from swarmless.spec import FunctionSpec, NeverFires, next_fire

__all__ = ["Capacity", "EngineCapacity", "check_deployable"]

#: How long the engine's answer is reused (its CPUs and memory do not change often).
TTL = 60.0


@dataclasses.dataclass(frozen=True)
class Capacity:
    """The most one container can get: CPUs and bytes of memory."""

    cpus: float
    memory: int


class EngineCapacity:
    """The engine's capacity, asked at most once per :data:`TTL` seconds."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._cached: tuple[float, Capacity | None] | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> Capacity | None:
        """The capacity, or None when the backend has no engine to ask."""
        if not isinstance(self.backend, EngineBackend):
            return None
        async with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < TTL:
                return self._cached[1]
            found = await asyncio.to_thread(_capacity, self.backend)
            self._cached = (time.monotonic(), found)
            return found

    async def network_exists(self, name: str) -> bool:
        if not isinstance(self.backend, EngineBackend):
            return True
        backend = self.backend

        def look() -> bool:
            with translate(api=backend.client.api):
                try:
                    backend.client.api.inspect_network(name)
                except docker.errors.NotFound:
                    return False
            return True

        return await asyncio.to_thread(look)


def _capacity(backend: EngineBackend) -> Capacity | None:
    with translate(api=backend.client.api):
        info: dict[str, Any] = backend.client.api.info()
        swarm = info.get("Swarm") or {}
        if backend.settings.backend == "swarm" and swarm.get("ControlAvailable"):
            nodes = backend.client.api.nodes()
            res = [(n.get("Description") or {}).get("Resources") or {} for n in nodes]
            cpus = max((int(r.get("NanoCPUs") or 0) / 1e9 for r in res), default=0.0)
            memory = max((int(r.get("MemoryBytes") or 0) for r in res), default=0)
            return Capacity(cpus=cpus, memory=memory) if cpus > 0 and memory > 0 else None
    ncpu, mem = info.get("NCPU"), info.get("MemTotal")
    if not isinstance(ncpu, int) or not isinstance(mem, int) or ncpu < 1 or mem < 1:
        return None
    return Capacity(cpus=float(ncpu), memory=mem)


async def check_deployable(spec: FunctionSpec, capacity: EngineCapacity) -> None:
    """SpecError naming each field this engine cannot honour (CPUs, memory, network) and a
    schedule that never fires."""
    errors: dict[str, str] = {}
    if spec.schedule is not None:
        try:
            next_fire(spec.schedule, spec.timezone, int(time.time() * 1000))
        except NeverFires:
            errors["schedule"] = (
                f"never fires: {spec.schedule!r} names no time that will come "
                f"(in {spec.timezone}), like 30 February"
            )
    limits = await capacity.get()
    if limits is not None:
        if spec.cpus is not None and spec.cpus > limits.cpus:
            errors["cpus"] = (
                f"must be at most {limits.cpus:g}, the CPUs of the engine's largest host; "
                f"got {spec.cpus:g}"
            )
        if spec.memory is not None and spec.memory > limits.memory:
            errors["memory"] = (
                f"must be at most {limits.memory} bytes ({limits.memory / 1024**3:.1f} GiB), "
                f"the memory of the engine's largest host; got {spec.memory}"
            )
    if spec.network is not None and not await capacity.network_exists(spec.network):
        errors["network"] = (
            f"no network {spec.network!r} on the engine: create it first "
            f"(docker network create {spec.network}) or leave network out"
        )
    if errors:
        raise SpecError(errors)
