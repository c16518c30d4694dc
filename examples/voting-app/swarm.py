"""The voting app on a Docker Swarm: PostgreSQL as a Swarm service, every function container
a Swarm service placed by Swarm (the gateway's ``swarm`` backend, docs/swarm.md).

    examples/voting-app/run.sh swarm-up [--mode warm|cgi] [--manager tcp://HOST:2375]
    examples/voting-app/run.sh swarm-down [--manager ...]

The gateway runs on this machine (backend ``swarm``, talking to one manager's Engine API)
and function containers on the nodes reach it through the pull-based runtime API. Without
``--manager`` (env ``SWARMLESS_DOCKER_HOST``), the repository's 3-node test Swarm is used
(``scripts/swarm-cluster.sh up``) and the images are loaded onto its nodes; a real Swarm
needs the images in a registry its nodes can pull from, or loaded onto each node.

What it makes on the Swarm: the attachable overlay ``swarmless-vote-swarm``, the service
``swarmless-vote-swarm-db`` (PostgreSQL, on a manager, data on the volume
``swarmless-vote-swarm-data`` there, reached by functions by its name), and the functions'
services (named ``swarmless-<function>-<id>``, labelled with the gateway instance).
``swarm-down`` removes all of it; the test Swarm itself stays (scripts/swarm-cluster.sh down).

Votes are recorded through ``spawn`` only: the scoped Docker API (the ``docker`` record
path) runs beside the docker backend, not on a Swarm.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import docker
import docker.errors
import docker.types
from votingapp import EXAMPLE, LABEL, Database, Images, Names

from swarmless.exceptions import SwarmlessError

ROOT = Path(__file__).resolve().parent.parent.parent
CLUSTER = ROOT / "scripts" / "swarm-cluster.sh"
NAMES = Names("swarmless-vote-swarm")


def _cluster(*args: str, timeout: float = 900) -> str:
    done = subprocess.run(
        ["bash", str(CLUSTER), *args], capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise SwarmlessError(f"swarm-cluster.sh {args[0]} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def test_cluster() -> str:
    """Bring up the repository's test Swarm (idempotent); the Engine API of its manager."""
    _cluster("up")
    for line in _cluster("env").splitlines():
        found = re.fullmatch(r"DOCKER_HOST=(\S+)", line.strip())
        if found:
            return found.group(1)
    raise SwarmlessError("swarm-cluster.sh env printed no DOCKER_HOST")


def load_images(images: Images) -> None:
    """Put the function and database images on every node of the test Swarm."""
    _cluster("load", images.postgres, images.vote, images.record_vote, images.result)


def ensure_overlay(manager: docker.DockerClient, name: str, labels: Mapping[str, str]) -> None:
    """The attachable overlay the database and the functions join."""
    try:
        manager.networks.get(name)
    except docker.errors.NotFound:
        with contextlib.suppress(docker.errors.APIError):  # made meanwhile by the gateway
            manager.networks.create(
                name,
                driver="overlay",
                attachable=True,
                labels={"swarmless.managed": "true", LABEL: EXAMPLE, **labels},
            )


def start_database_service(
    manager: docker.DockerClient,
    *,
    image: str,
    names: Names,
    password: str,
    labels: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> Database:
    """PostgreSQL as a service on a manager node (its volume stays there); waits until it
    takes connections."""
    labels = {LABEL: EXAMPLE, **(labels or {})}
    try:
        manager.api.inspect_service(names.db)
    except docker.errors.NotFound:
        container = docker.types.ContainerSpec(
            image,
            env=[f"POSTGRES_PASSWORD={password}"],
            mounts=[
                docker.types.Mount(
                    "/var/lib/postgresql/data", names.volume, type="volume", labels=labels
                )
            ],
            labels=labels,
        )
        template = docker.types.TaskTemplate(
            container,
            restart_policy=docker.types.RestartPolicy(condition="any"),
            placement=docker.types.Placement(constraints=["node.role == manager"]),
            networks=[docker.types.NetworkAttachmentConfig(names.network)],
        )
        manager.api.create_service(
            template,
            name=names.db,
            labels=labels,
            endpoint_spec=docker.types.EndpointSpec(mode="dnsrr"),
        )
    deadline = time.monotonic() + timeout
    while True:
        running = manager.api.containers(
            filters={"label": f"com.docker.swarm.service.name={names.db}", "status": "running"}
        )
        if running:
            probe = ["pg_isready", "-q", "-h", "127.0.0.1", "-d", "votes", "-U", "postgres"]
            code, _ = manager.containers.get(running[0]["Id"]).exec_run(probe)
            if code == 0:
                break
        if time.monotonic() > deadline:
            raise SwarmlessError(f"the database service {names.db} answered not within {timeout}s")
        time.sleep(0.5)
    return Database(
        container=names.db, url=f"postgresql://postgres:{password}@{names.db}:5432/votes"
    )


def remove_swarm(
    manager: docker.DockerClient, names: Names, *, proof: Mapping[str, str]
) -> list[str]:
    """Remove the example's services, network and volume from the Swarm.

    Only the services that carry ``proof`` (the instance's ownership labels, set on the
    service by the gateway or ``swarm-up``; a service's labels are its own, never its
    image's), and the volume and network when they carry it too.
    """
    if not proof:
        return ["(no ownership labels to go by: no service, volume or network removed)"]
    removed: list[str] = []
    flt = [f"{k}={v}" for k, v in proof.items()]
    services = {s["ID"]: s["Spec"]["Name"] for s in manager.api.services(filters={"label": flt})}
    for sid, name in services.items():
        with contextlib.suppress(docker.errors.NotFound):
            manager.api.remove_service(sid)
            removed.append(f"service {name}")
    with contextlib.suppress(docker.errors.NotFound):
        labels = manager.volumes.get(names.volume).attrs.get("Labels") or {}
        if any(labels.get(k) != v for k, v in proof.items()):
            removed.append(f"(left alone: volume {names.volume}, not this deployment's)")
            return removed + _remove_network(manager, names, proof)
    deadline = time.monotonic() + 60
    while True:  # a volume in use cannot go: wait for the database's container to end
        try:
            manager.volumes.get(names.volume).remove()
            removed.append(f"volume {names.volume}")
            break
        except docker.errors.NotFound:
            break
        except docker.errors.APIError:
            if time.monotonic() > deadline:
                removed.append(f"(volume {names.volume} still in use: remove it later)")
                break
            time.sleep(1)
    return removed + _remove_network(manager, names, proof)


def _remove_network(
    manager: docker.DockerClient, names: Names, proof: Mapping[str, str]
) -> list[str]:
    removed: list[str] = []
    with contextlib.suppress(docker.errors.NotFound):
        labels = manager.networks.get(names.network).attrs.get("Labels") or {}
        if any(labels.get(k) != v for k, v in proof.items()):
            return [f"(left alone: network {names.network}, not this deployment's)"]
    deadline = time.monotonic() + 30
    while True:
        try:
            manager.networks.get(names.network).remove()
            removed.append(f"network {names.network}")
            break
        except docker.errors.NotFound:
            break
        except docker.errors.APIError:  # tasks still detaching from it
            if time.monotonic() > deadline:
                removed.append(f"(network {names.network} still in use: remove it later)")
                break
            time.sleep(1)
    return removed
