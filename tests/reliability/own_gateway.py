"""A gateway in the test process with this suite's own names: instance ``hrel-...`` and the
label ``swarmless.test=helper-rel`` on everything it creates, removed by those only."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import docker

from tests.gateway_harness import RunningGateway
from tests.swarm_harness import Cluster, SwarmGateway

#: On every Docker object these suites make (with an instance named ``hrel-...``).
LABELS = {"swarmless.test": "helper-rel"}


class OwnGateway(RunningGateway):
    """:class:`~tests.gateway_harness.RunningGateway` named ``PREFIX-...`` (``hrel-...``),
    labelled :attr:`labels` (LABELS); a suite with names of its own sets both."""

    PREFIX = "hrel"
    labels: dict[str, str] = LABELS

    def __init__(self, data_dir: Path, **settings: Any) -> None:
        super().__init__(data_dir, self.labels, instance_prefix=self.PREFIX, **settings)


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
        super().__init__(cluster, data_dir, LABELS, instance_prefix="hrel", **settings)
