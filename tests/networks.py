"""Removing a test's own Docker network once its containers are gone.

The engine may still hold an endpoint of a container for a moment after the container
was removed (its network released by the engine's clean-up of the exit, which runs on
its own; seen in a suite run: "has active endpoints" right after every container of the
instance was gone, and no endpoint left a little later). So a network is removed again
until that passes, with a deadline; what still holds it then is named.
"""

from __future__ import annotations

from typing import Any

import docker

from tests.waiting import wait_until

__all__ = ["remove_network"]


def remove_network(engine: docker.DockerClient, network: Any, timeout: float = 30.0) -> None:
    """Remove ``network`` (a network object, a name or an id) of ``engine``; gone already
    is fine. Other refusals than endpoints still held raise at once."""
    ident = getattr(network, "id", network)

    def removed() -> bool:
        try:
            engine.api.remove_network(ident)
        except docker.errors.NotFound:
            return True
        except docker.errors.APIError as e:
            if "active endpoints" not in str(e):
                raise
            return False
        return True

    try:
        wait_until(removed, timeout, f"network {ident} removed (no endpoint left)")
    except AssertionError as e:
        try:
            held = engine.api.inspect_network(ident).get("Containers") or {}
        except docker.errors.DockerException as why:
            held = {"inspect failed": str(why)}
        raise AssertionError(f"{e}; endpoints still there: {held}") from None
