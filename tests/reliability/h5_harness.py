"""Names for the reliability tests of engine start-up, pulls and the bytecode upkeep: an
instance ``h5rel-...`` and the label ``swarmless.test=h5rel`` on everything they create,
removed by those only."""

from __future__ import annotations

import contextlib

import docker
import docker.errors

from tests.networks import remove_network
from tests.reliability.own_gateway import OwnGateway

#: On every Docker object these suites make (with an instance named ``h5rel-...``).
LABELS = {"swarmless.test": "h5rel"}


class H5Gateway(OwnGateway):
    """:class:`~tests.reliability.own_gateway.OwnGateway` named ``h5rel-...``, labelled
    LABELS."""

    PREFIX = "h5rel"
    labels = LABELS


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
    remove_network(engine, f"swarmless-{instance}")
