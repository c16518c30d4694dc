"""A gateway in the test process with this suite's own names: instance ``hrel-...`` and the
label ``swarmless.test=helper-rel`` on everything it creates, removed by those only."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Any

import docker

from swarmless.backends.docker import DockerBackend
from swarmless.backends.swarm import SwarmBackend
from swarmless.config import Settings
from swarmless.gateway.app import Gateway
from swarmless.gateway.server import GatewayServer
from tests.gateway_harness import TOKEN, RunningGateway
from tests.swarm_harness import Cluster, SwarmGateway

#: On every Docker object these suites make (with an instance named ``hrel-...``).
LABELS = {"swarmless.test": "helper-rel"}


class OwnGateway(RunningGateway):
    """:class:`~tests.gateway_harness.RunningGateway` named ``PREFIX-...`` (``hrel-...``),
    labelled :attr:`labels` (LABELS); a suite with names of its own sets both."""

    PREFIX = "hrel"
    labels: dict[str, str] = LABELS

    def __init__(self, data_dir: Path, **settings: Any) -> None:
        # Not RunningGateway's __init__: it names the instance test-...; the rest is its.
        self.instance = f"{self.PREFIX}-{uuid.uuid4().hex[:8]}"
        settings.setdefault("network", f"swarmless-{self.instance}")
        self.settings = Settings.load(
            data_dir=data_dir, host="127.0.0.1", port=0, instance=self.instance, **settings
        )
        self.backend = DockerBackend(self.settings, labels=self.labels)
        self.gateway = Gateway(self.settings, backend=self.backend, token=TOKEN, drain_timeout=5)
        self.server = GatewayServer(self.gateway)
        self._thread = None
        self._error = None
        self.url = ""


def remove_own(engine: docker.DockerClient, instance: str) -> None:
    """Remove the containers of gateway ``instance`` (named ``hrel-...``: ours only)."""
    assert instance.startswith("hrel-"), instance
    flt = [f"swarmless.gateway={instance}"]
    for c in engine.api.containers(all=True, filters={"label": flt}):
        with contextlib.suppress(docker.errors.DockerException):
            engine.api.remove_container(c["Id"], force=True)


class OwnSwarmGateway(SwarmGateway):
    """:class:`~tests.swarm_harness.SwarmGateway` named ``hrel-...``, labelled LABELS."""

    def __init__(self, cluster: Cluster, data_dir: Path, **settings: Any) -> None:
        # Not SwarmGateway's __init__: it names the instance test-...; the rest is its.
        self.cluster = cluster
        self.instance = f"hrel-{uuid.uuid4().hex[:8]}"
        settings.setdefault("docker_host", cluster.manager_url)
        self.settings = Settings.load(
            data_dir=data_dir,
            host="127.0.0.1",
            port=0,
            instance=self.instance,
            network=f"swarmless-swarm-{self.instance}",
            backend="swarm",
            **settings,
        )
        self.backend = SwarmBackend(self.settings, labels=LABELS)
        self.gateway = Gateway(self.settings, backend=self.backend, token=TOKEN, drain_timeout=5)
        self.server = GatewayServer(self.gateway)
        self._thread = None
        self._error = None
        self.url = ""
