"""A local registry for the test Swarm (``swarmless registry up``), for tests and benches.

The registry runs on the host's engine, published on 127.0.0.1:PORT (where the host's
engine pushes: Docker trusts 127.0.0.0/8 over plain HTTP) and on the host's address on the
nodes' bridge, GATEWAY:PORT (where the nodes pull; scripts/swarm-cluster.sh trust makes
their engines accept it over plain HTTP, with a reload, no restart). One registry, two
names: the content, and so every digest, is the same under both.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors

from swarmless import registry_local
from swarmless.config import Settings
from tests.swarm_harness import SCRIPT, Cluster, wait_for

NODES_NETWORK = "swarmless-swarm-nodes"


def nodes_gateway(cluster: Cluster) -> str:
    """The host's address on the nodes' bridge (what the nodes reach it by)."""
    ipam = cluster.host.api.inspect_network(NODES_NETWORK)["IPAM"]["Config"][0]
    # Made with --subnet only: the gateway is the subnet's first address.
    return str(ipam.get("Gateway") or next(ipaddress.ip_network(ipam["Subnet"]).hosts()))


def free_port(*hosts: str) -> int:
    """A port free on every one of ``hosts`` (asked of the first, checked on the others)."""
    for _ in range(20):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = int(s.getsockname()[1])
        ok = True
        for host in hosts[1:]:
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError:
                    ok = False
        if ok:
            return port
    raise RuntimeError(f"no port free on all of {hosts}")


def node_engine(cluster: Cluster, name: str, timeout: float = 60) -> docker.DockerClient:
    """Node ``name``'s engine with a patient client (a busy machine answers slowly; the
    harness's own clients give up after 5 s, for nodes that may be dead)."""
    return docker.DockerClient(
        base_url=f"tcp://{cluster.ip(name)}:2375", version="1.41", timeout=int(timeout)
    )


def trust(*addresses: str, remove: bool = False) -> None:
    """scripts/swarm-cluster.sh trust|untrust ADDRESS... (bounded)."""
    done = subprocess.run(
        ["bash", str(SCRIPT), "untrust" if remove else "trust", *addresses],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"swarm-cluster.sh trust failed:\n{done.stderr[-2000:]}")


def credentials(folder: Path, user: str, password: str) -> tuple[Path, Path]:
    """(an htpasswd file with ``user``'s bcrypt entry, a file holding ``password``)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # bcrypt from the C library (libxcrypt); gone in Python 3.13

    folder.mkdir(parents=True, exist_ok=True)
    htpasswd = folder / "htpasswd"
    htpasswd.write_text(f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n")
    secret = folder / "password"
    secret.write_text(password + "\n")
    return htpasswd, secret


@contextlib.contextmanager
def cluster_registry(
    cluster: Cluster,
    name: str,
    data_dir: Path,
    labels: dict[str, str],
    *,
    user: str | None = None,
) -> Iterator[Settings]:
    """A registry named ``name`` for the cluster; yields the settings that push to it
    (``registry`` the nodes' address, ``registry_push`` the host's), removed after with
    its volume, and the nodes no longer trusting it. With ``user``, it asks for
    credentials, and the settings have them (a random password, in a file)."""
    gateway = nodes_gateway(cluster)
    port = free_port("127.0.0.1", gateway)
    htpasswd = secret = None
    if user is not None:
        htpasswd, secret = credentials(data_dir / "auth", user, uuid.uuid4().hex)
    settings = Settings.load(
        instance=name,
        data_dir=data_dir,
        registry=f"{gateway}:{port}",
        registry_push=f"127.0.0.1:{port}",
        registry_username=user,
        registry_password_file=secret,
    )
    registry_local.up(
        cluster.host,
        settings,
        name=name,
        listen=[f"127.0.0.1:{port}", f"{gateway}:{port}"],
        labels=labels,
        htpasswd=htpasswd,
    )
    try:
        trust(settings.registry)
        yield settings
    finally:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            trust(settings.registry, remove=True)
        registry_local.down(cluster.host, settings, name=name, volume=True)


def remove_from_node(engine: docker.DockerClient, reference: str, timeout: float = 60) -> None:
    """Remove image ``reference`` from a node's engine once no container there uses it
    (Swarm removes a removed service's containers a moment later); gone already is fine."""
    try:
        image_id = engine.api.inspect_image(reference)["Id"]
    except docker.errors.ImageNotFound:
        return

    def unused() -> bool:
        return not engine.api.containers(all=True, filters={"ancestor": image_id})

    wait_for(unused, timeout, f"no container of {reference} on the node")
    with contextlib.suppress(docker.errors.ImageNotFound):
        engine.api.remove_image(reference)


def has_image(engine: docker.DockerClient, reference: str) -> bool:
    """Whether a node's engine holds ``reference`` (a name or an id)."""
    try:
        engine.api.inspect_image(reference)
    except docker.errors.ImageNotFound:
        return False
    return True
