"""Start the scoped Docker API that fits the gateway's backend (one engine, or a Swarm)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import docker.errors
import httpx

from swarmless.config import Settings
from swarmless.exceptions import SwarmlessError
from swarmless.proxy.server import DockerProxy
from swarmless.proxy.swarm_server import SwarmProxy
from swarmless.proxy.tokens import CallerTokens
from swarmless.records import ChildOutcome
from swarmless.spec import FunctionSpec

__all__ = ["start_proxy"]

log = logging.getLogger("swarmless.proxy")


async def start_proxy(
    settings: Settings,
    backend: Any,
    functions: Mapping[str, tuple[FunctionSpec, int]],
    tokens: CallerTokens,
    on_child: Callable[[ChildOutcome], None] | None = None,
) -> DockerProxy | None:
    """Start the scoped Docker API beside ``backend`` when it serves one
    (``Backend.scoped_docker_api``): children on its engine, or as services on its Swarm
    (``scoped_docker_swarm``); None otherwise.

    The allowlist is the images of the deployed ``functions`` (a live mapping: name ->
    spec and version) plus ``settings.proxy_images``. The backend gets ``tokens`` from
    the gateway's wiring (``Backend.use_caller_tokens``), not from here. ``on_child`` hears
    how each child of a one-shot or cgi call ended (for the call's record).
    """
    if not backend.scoped_docker_api:
        return None

    def spec_of(name: str) -> FunctionSpec | None:
        found = functions.get(name)
        return found[0] if found else None

    def images() -> list[str]:
        return [s.image for s, _ in functions.values() if s.image]

    kind = SwarmProxy if getattr(backend, "scoped_docker_swarm", False) else DockerProxy
    proxy = kind(
        settings=settings,
        tokens=tokens,
        spec_of=spec_of,
        images=images,
        labels=backend.extra_labels,
        on_child=on_child,
    )
    try:
        await proxy.start(backend.runtime_host(), settings.proxy_port)
    except (OSError, httpx.HTTPError, docker.errors.DockerException, SwarmlessError) as e:
        log.error("the scoped Docker API could not start: %s", e)
        await proxy.close()
        return None
    return proxy
