"""Names for the reliability tests of engine start-up, pulls and the bytecode upkeep: an
instance ``h5rel-...`` and the label ``swarmless.test=h5rel`` on everything they create,
removed by those only."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Any

import docker
import docker.errors

from swarmless.backends.docker import DockerBackend
from swarmless.config import Settings
from swarmless.gateway.app import Gateway
from swarmless.gateway.server import GatewayServer
from tests.gateway_harness import TOKEN, RunningGateway

#: On every Docker object these suites make (with an instance named ``h5rel-...``).
LABELS = {"swarmless.test": "h5rel"}


class H5Gateway(RunningGateway):
    """:class:`~tests.gateway_harness.RunningGateway` named ``h5rel-...``, labelled LABELS."""

    def __init__(self, data_dir: Path, **settings: Any) -> None:
        # Not RunningGateway's __init__: it names the instance test-...; the rest is its.
        self.instance = f"h5rel-{uuid.uuid4().hex[:8]}"
        settings.setdefault("network", f"swarmless-{self.instance}")
        self.settings = Settings.load(
            data_dir=data_dir, host="127.0.0.1", port=0, instance=self.instance, **settings
        )
        self.backend = DockerBackend(self.settings, labels=LABELS)
        self.gateway = Gateway(self.settings, backend=self.backend, token=TOKEN, drain_timeout=5)
        self.server = GatewayServer(self.gateway)
        self._thread = None
        self._error = None
        self.url = ""


def remove_own(engine: docker.DockerClient, instance: str) -> None:
    """Remove the containers and network of instance ``instance`` (``h5rel-...`` only)."""
    assert instance.startswith("h5rel-"), instance
    flt = {"label": [f"swarmless.instance={instance}", "swarmless.test=h5rel"]}
    for c in engine.api.containers(all=True, filters=flt):
        with contextlib.suppress(docker.errors.DockerException):
            engine.api.remove_container(c["Id"], force=True)
    for c in engine.api.containers(all=True, filters={"label": f"swarmless.gateway={instance}"}):
        with contextlib.suppress(docker.errors.DockerException):
            engine.api.remove_container(c["Id"], force=True)
    with contextlib.suppress(docker.errors.DockerException):
        engine.networks.get(f"swarmless-{instance}").remove()
