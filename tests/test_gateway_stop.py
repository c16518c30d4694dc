"""A gateway that stops leaves none of its containers, even those it was starting when
the stop began (the engine slow to create them): the stop waits for its work in flight
(starts, removals) and removes what that work made."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.conftest import handler_image
from tests.gateway_harness import RunningGateway
from tests.waiting import wait_until

HANDLERS = """
def handle(event, context):
    return "ok"
"""


@pytest.fixture(scope="module")
def image(build_image: Callable[..., str]) -> str:
    return handler_image(build_image, "gateway-stop", HANDLERS)


def test_a_gateway_that_stops_while_starting_containers_leaves_none(
    engine: docker.DockerClient, labels: dict[str, str], image: str, tmp_path: Path
) -> None:
    """The engine answers the workers' creates only once the stop has begun: they are
    made after the stop removed the containers it knew of. Before, nothing waited for
    those starts; they ran on after the stop, or were cut off by its end with their
    container made, and it stayed, running (CI: 4 left by a gateway's clean stop)."""
    gw = RunningGateway(tmp_path, labels)
    creating = threading.Event()

    def slow(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("labels", {}).get("swarmless.kind") == "worker":
            creating.set()
            deadline = time.monotonic() + 60
            while not gw.dispatcher.closing and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.5)  # past the stop's removals of the workers it knew of
        return create(*args, **kwargs)

    try:
        gw.start()
        create = gw.backend.client.api.create_container
        gw.backend.client.api.create_container = slow  # type: ignore[method-assign]
        gw.client().deploy(
            {
                "name": "stop",
                "image": image,
                "mode": "warm",
                "handler": "handler:handle",
                "min_containers": 2,
            }
        )
        wait_until(creating.is_set, 60, "a worker's create to begin")
        gw.shutdown()
        # None is left, and none comes (a start still running behind the stop).
        seen = set(gw.containers(engine))
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            seen.update(gw.containers(engine))
            time.sleep(0.05)
        assert sorted(seen) == []
    finally:
        gw.stop(engine)
