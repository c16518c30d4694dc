"""``swarmless registry up|down|status``: a real registry for machines that reach none.

The registry is Debian's ``docker-registry`` package (the CNCF distribution, 2.8) in an
image built from the local Python base, ``swarmless/registry:bookworm``: nothing is pulled
from a registry to make it. Where the engine can pull, ``--image registry:2`` runs the
upstream image instead (same settings, through ``REGISTRY_*`` variables).

One container per instance, ``swarmless-registry`` (``swarmless-registry-<instance>``
beside ``default``), its blobs on the volume ``<name>-data`` that ``down`` keeps unless
told otherwise. Its port is published on the addresses given (default
``127.0.0.1:5000``): plain HTTP, which Docker engines accept from 127.0.0.0/8 only unless
told to trust the address (``insecure-registries``, docs/swarm-production.md); an
address on 127.0.0.1 is also out of reach of anyone else on the network. With an
htpasswd file (bcrypt) the registry asks for credentials.

The container and the volume carry ``swarmless.registry=true``, the instance and its
owner id (:mod:`swarmless.ownership`), and ``down`` removes only what carries all three,
as the container's own labels (not inherited from an image).

>>> reg = up(client, Settings.load(), listen=["127.0.0.1:5000"])   # doctest: +SKIP
>>> reg.state, reg.listen                                           # doctest: +SKIP
('running', ('127.0.0.1:5000',))
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import ipaddress
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import docker
import docker.errors

from swarmless.build import PYTHON_BASE, follow
from swarmless.config import Settings
from swarmless.engine import translate
from swarmless.exceptions import ImageNotFound, InvalidArgument, SwarmlessError
from swarmless.labels import LABEL_INSTANCE, LABEL_OWNER, managed_labels
from swarmless.ownership import ownership_labels, select_containers

__all__ = [
    "IMAGE",
    "LABEL_REGISTRY",
    "LocalRegistry",
    "container_name",
    "down",
    "ensure_image",
    "parse_listen",
    "status",
    "up",
]

#: The image built from Debian's docker-registry package on the local Python base.
IMAGE = "swarmless/registry:bookworm"
#: On the registry's container and volume.
LABEL_REGISTRY = "swarmless.registry"
#: On the container: a hash of how it was asked for (a different ``up`` makes it anew).
_LABEL_CONFIG = "swarmless.registry-config"
_PORT = 5000
_DATA = "/var/lib/docker-registry"
_HTPASSWD = "/etc/docker/registry/htpasswd"
_CONFIG = f"""\
version: 0.1
log:
  level: info
  fields:
    service: registry
storage:
  filesystem:
    rootdirectory: {_DATA}
  delete:
    enabled: true
http:
  addr: :{_PORT}
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
"""


def _dockerfile() -> str:
    config = _CONFIG.replace("\n", "\\n")
    return (
        f"FROM {PYTHON_BASE}\n"
        "RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
        "--no-install-recommends docker-registry && rm -rf /var/lib/apt/lists/* "
        "/var/cache/apt/* /usr/share/doc/* /usr/share/man/*\n"
        # Debian's own config asks for an htpasswd file at a directory; ours asks for none
        # (credentials come with --htpasswd, through REGISTRY_AUTH_* variables).
        f"RUN printf '{config}' > /etc/docker/registry/config.yml\n"
        f"VOLUME {_DATA}\n"
        f"EXPOSE {_PORT}\n"
        "USER docker-registry\n"
        'CMD ["docker-registry", "serve", "/etc/docker/registry/config.yml"]\n'
    )


def _recipe_hash() -> str:
    return hashlib.sha256(_dockerfile().encode()).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class LocalRegistry:
    """A local registry's container as ``status`` sees it."""

    name: str
    #: ``running``, ``exited``, ... or ``absent``.
    state: str
    #: ``HOST:PORT`` it is published on.
    listen: tuple[str, ...] = ()
    image: str = ""
    volume: str = ""
    id: str = ""
    #: Whether it asks for credentials (an htpasswd file).
    auth: bool = False


def container_name(settings: Settings) -> str:
    """``swarmless-registry``, or ``swarmless-registry-<instance>`` beside ``default``."""
    base = "swarmless-registry"
    return base if settings.instance == "default" else f"{base}-{settings.instance}"


def parse_listen(entry: str) -> tuple[str, int]:
    """``HOST:PORT`` (an IP address; ``[v6]:PORT``) or a bare ``PORT`` (on 127.0.0.1)."""
    text = entry.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise InvalidArgument(
            f"listen: {entry!r} is not IP:PORT (e.g. 127.0.0.1:5000 or 10.0.0.5:5000)"
        ) from None
    if not 0 < number < 65536:
        raise InvalidArgument(f"listen: port {number} is out of range")
    return host, number


def ensure_image(client: docker.DockerClient, progress: Callable[[str], None] | None = None) -> str:
    """Build :data:`IMAGE` unless it is there from today's recipe; returns its id."""
    with contextlib.suppress(docker.errors.ImageNotFound):
        found = client.api.inspect_image(IMAGE)
        if (found["Config"].get("Labels") or {}).get("swarmless.recipe") == _recipe_hash():
            return str(found["Id"])
    try:
        client.api.inspect_image(PYTHON_BASE)
    except docker.errors.ImageNotFound:
        raise ImageNotFound(
            PYTHON_BASE,
            f"{IMAGE} is built on it: build it first (make images, or scripts/base-images.sh)",
        ) from None
    if progress is not None:
        progress(f"building {IMAGE} (Debian's docker-registry on {PYTHON_BASE})")
    stream = client.api.build(
        fileobj=io.BytesIO(_dockerfile().encode()),
        tag=IMAGE,
        rm=True,
        forcerm=True,
        pull=False,
        labels={"swarmless.base": "registry", "swarmless.recipe": _recipe_hash()},
        decode=True,
    )
    image_id = follow(stream, base_image=PYTHON_BASE, tag=IMAGE, progress=progress)
    return image_id or str(client.api.inspect_image(IMAGE)["Id"])


def _proof(settings: Settings) -> dict[str, str | None]:
    owner = ownership_labels(settings)
    if LABEL_OWNER not in owner:
        raise SwarmlessError(
            f"no owner id in {settings.data_dir} (swarmless.ownership): the registry could "
            "not be told apart from another user's; check that directory is writable"
        )
    return {LABEL_REGISTRY: "true", **owner}


def _ours(client: docker.DockerClient, settings: Settings, name: str) -> dict[str, Any] | None:
    """The registry container ``name`` of this instance (its own labels prove it), or None;
    SwarmlessError when something else has that name."""
    selection = select_containers(client.api, _proof(settings))
    for found in selection.owned:
        if found.name == name:
            return dict(client.api.inspect_container(found.id))
    with contextlib.suppress(docker.errors.NotFound):
        other = client.api.inspect_container(name)
        raise SwarmlessError(
            f"a container named {name} exists and is not this instance's registry "
            f"({str(other['Id'])[:12]}); remove it yourself or use another --name"
        )
    return None


def _describe(attrs: Mapping[str, Any]) -> LocalRegistry:
    ports = (attrs.get("HostConfig") or {}).get("PortBindings") or {}
    listen = []
    for binding in ports.get(f"{_PORT}/tcp") or []:
        host = binding.get("HostIp") or "0.0.0.0"
        host = f"[{host}]" if ":" in host else host
        listen.append(f"{host}:{binding.get('HostPort')}")
    env = (attrs.get("Config") or {}).get("Env") or []
    volume = next(
        (m.get("Name", "") for m in attrs.get("Mounts") or [] if m.get("Destination") == _DATA),
        "",
    )
    return LocalRegistry(
        name=str(attrs.get("Name", "")).lstrip("/"),
        state=str((attrs.get("State") or {}).get("Status", "")),
        listen=tuple(listen),
        image=str((attrs.get("Config") or {}).get("Image", "")),
        volume=volume,
        id=str(attrs.get("Id", "")),
        auth=any(e.startswith("REGISTRY_AUTH=") for e in env),
    )


def status(
    client: docker.DockerClient, settings: Settings, *, name: str | None = None
) -> LocalRegistry:
    """This instance's registry container as it is (``state="absent"`` when there is none)."""
    name = name or container_name(settings)
    with translate(api=client.api):
        attrs = _ours(client, settings, name)
    return LocalRegistry(name=name, state="absent") if attrs is None else _describe(attrs)


def up(
    client: docker.DockerClient,
    settings: Settings,
    *,
    listen: Sequence[str] = ("127.0.0.1:5000",),
    name: str | None = None,
    image: str | None = None,
    htpasswd: Path | None = None,
    labels: Mapping[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
    timeout: float = 30.0,
) -> LocalRegistry:
    """Run the registry (idempotent): the same request on a running one changes nothing; a
    different one (addresses, image, credentials) makes its container anew on the same
    volume. Waits until it listens; returns it as :func:`status` would.

    ``listen``: ``IP:PORT`` addresses to publish it on. ``image``: another registry image
    (``registry:2`` where the engine can pull); default :data:`IMAGE`, built if need be.
    ``htpasswd``: a file of bcrypt credentials (``htpasswd -Bbn USER PASSWORD``), mounted
    read-only. ``labels``: more labels on the container and volume.
    """
    if not listen:
        raise InvalidArgument("listen: give at least one IP:PORT")
    bindings = [parse_listen(entry) for entry in listen]
    if htpasswd is not None and not Path(htpasswd).is_file():
        raise InvalidArgument(f"htpasswd: {htpasswd} is not a file")
    name = name or container_name(settings)
    proof = _proof(settings)
    all_labels = {
        **managed_labels("registry"),
        **dict(labels or {}),
        **{k: str(v) for k, v in proof.items()},
    }
    with translate(api=client.api, image=image or IMAGE):
        if image is None:
            image = IMAGE
            image_id = ensure_image(client, progress)
        else:
            try:
                image_id = str(client.api.inspect_image(image)["Id"])
            except docker.errors.ImageNotFound:
                if progress is not None:
                    progress(f"pulling {image}")
                client.images.pull(image)
                image_id = str(client.api.inspect_image(image)["Id"])
        asked = "|".join(
            [image_id, *(f"{h}:{p}" for h, p in sorted(bindings)), str(htpasswd or "")]
        )
        config = hashlib.sha256(asked.encode()).hexdigest()[:16]
        current = _ours(client, settings, name)
        if current is not None:
            same = (current["Config"].get("Labels") or {}).get(_LABEL_CONFIG) == config
            if same and current["State"]["Running"]:
                return _describe(current)
            if same:
                client.api.start(current["Id"])
                return _wait(client, current["Id"], timeout)
            client.api.remove_container(current["Id"], force=True)
        volume = f"{name}-data"
        _ensure_volume(client, volume, all_labels)
        env = {
            # Both images read these (ours has them in its config file too).
            "REGISTRY_HTTP_ADDR": f":{_PORT}",
            "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": _DATA,
        }
        binds = {volume: {"bind": _DATA, "mode": "rw"}}
        if htpasswd is not None:
            env |= {
                "REGISTRY_AUTH": "htpasswd",
                "REGISTRY_AUTH_HTPASSWD_REALM": "swarmless",
                "REGISTRY_AUTH_HTPASSWD_PATH": _HTPASSWD,
            }
            binds[str(Path(htpasswd).resolve())] = {"bind": _HTPASSWD, "mode": "ro"}
        ports: dict[int, list[tuple[str, int]]] = {_PORT: list(bindings)}
        created = client.api.create_container(
            image,
            name=name,
            labels={**all_labels, _LABEL_CONFIG: config},
            environment=env,
            ports=[_PORT],
            host_config=client.api.create_host_config(
                binds=binds,
                port_bindings=ports,
                restart_policy={"Name": "unless-stopped"},
                log_config={"Type": "json-file", "Config": {"max-size": "10m", "max-file": "2"}},
            ),
        )
        try:
            client.api.start(created["Id"])
        except docker.errors.APIError as e:
            with contextlib.suppress(docker.errors.APIError):
                client.api.remove_container(created["Id"], force=True)
            raise SwarmlessError(
                f"the registry could not start on {', '.join(listen)}: {e.explanation or e} "
                "(a port in use? another address: --listen IP:PORT)"
            ) from None
        return _wait(client, created["Id"], timeout)


def _ensure_volume(client: docker.DockerClient, volume: str, labels: Mapping[str, str]) -> None:
    try:
        found = client.api.inspect_volume(volume)
    except docker.errors.NotFound:
        client.api.create_volume(volume, labels=dict(labels))
        return
    mine = found.get("Labels") or {}
    if any(mine.get(k) != labels.get(k) for k in (LABEL_REGISTRY, LABEL_INSTANCE, LABEL_OWNER)):
        raise SwarmlessError(
            f"a volume named {volume} exists and is not this instance's registry data; "
            "remove it yourself or use another --name"
        )


def _wait(client: docker.DockerClient, container: str, timeout: float) -> LocalRegistry:
    """Until the registry logs that it listens (bounded); SwarmlessError with its log if
    it stopped or never did."""
    deadline = time.monotonic() + timeout
    while True:
        attrs = client.api.inspect_container(container)
        logs = client.api.logs(container, stdout=True, stderr=True, tail=50).decode(
            "utf-8", "replace"
        )
        if attrs["State"]["Running"] and "listening on" in logs:
            return _describe(attrs)
        if not attrs["State"]["Running"] or time.monotonic() > deadline:
            tail = "\n".join(logs.splitlines()[-10:])
            why = "stopped" if not attrs["State"]["Running"] else f"not listening after {timeout}s"
            raise SwarmlessError(f"the registry {why}:\n{tail}")
        time.sleep(0.2)


def down(
    client: docker.DockerClient,
    settings: Settings,
    *,
    name: str | None = None,
    volume: bool = False,
) -> list[str]:
    """Remove this instance's registry container (and with ``volume`` its data); what was
    removed, by name (empty when there was nothing: idempotent). Only objects carrying
    ``swarmless.registry=true`` and this instance's labels are touched."""
    name = name or container_name(settings)
    proof = _proof(settings)
    removed = []
    with translate(api=client.api):
        for found in select_containers(client.api, proof).owned:
            if found.name == name:
                client.api.remove_container(found.id, force=True)
                removed.append(name)
        if volume:
            flt = [f"{k}={v}" for k, v in proof.items()]
            for v in (client.api.volumes(filters={"label": flt}) or {}).get("Volumes") or []:
                if v["Name"] == f"{name}-data":
                    client.api.remove_volume(v["Name"], force=True)
                    removed.append(v["Name"])
    return removed
