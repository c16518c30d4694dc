"""What a swarm service is made of, part of :class:`~swarmless.backends.swarm.SwarmBackend`.

Functions over the Docker API client that build the pieces of a function's service: its
task template (image, command, environment, resources, placement, restart condition
``none``, the function network) and its secrets. A secret the gateway holds (``swarmless
secret create``) becomes the Swarm secret ``swarmless-NAME-<sha256 prefix>``: Swarm
secrets cannot change, so a new value is a new secret, and containers started after the
change get it; older versions that no service uses any more are removed.

An image in a registry is run by its digest (:func:`pinned_image`): the digest the
manager's copy was pulled by when the deploy pinned it, so that every node pulls those
bits, whatever its tag says by then.

They are called from the backend's thread pool (the Docker SDK is synchronous) and hold
no state of their own.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types

from swarmless.backends.swarm_limits import SwarmLimits
from swarmless.engine import LABEL_GATEWAY, LABEL_MANAGED, managed_labels
from swarmless.exceptions import SwarmlessError
from swarmless.registry import has_domain, split_reference
from swarmless.spec import FunctionSpec

__all__ = [
    "LABEL_SECRET",
    "create_service",
    "pinned_image",
    "remove_secret_versions",
    "secret_name",
    "secret_refs",
    "task_template",
    "unmanaged_secrets",
]

#: On Swarm secrets made from a gateway secret: the name functions know it by.
LABEL_SECRET = "swarmless.secret"


def secret_name(name: str, data: bytes) -> str:
    """The Swarm secret that holds this value of the gateway's secret ``name``."""
    return f"swarmless-{name[:40]}-{hashlib.sha256(data).hexdigest()[:12]}"


def secret_refs(
    api: Any, spec: FunctionSpec, *, data_dir: Path, labels: Mapping[str, str]
) -> list[docker.types.SecretReference]:
    """The function's secrets as Swarm secrets, mounted at ``/run/secrets/NAME``.

    A secret the gateway holds (in ``data_dir/secrets``) is made a Swarm secret (with
    ``labels``) unless that value already is one; a name the gateway does not hold is
    looked up in Swarm as is (``docker secret create NAME FILE``).
    """
    refs = []
    for name in spec.secrets:
        path = data_dir / "secrets" / name
        if path.is_file():
            data = path.read_bytes()
            swarm_name = secret_name(name, data)
            sid = _secret_id(api, swarm_name)
            if sid is None:
                try:
                    created = api.create_secret(
                        swarm_name, data, labels={**labels, LABEL_SECRET: name}
                    )
                    sid = str(created["ID"])
                except docker.errors.APIError:  # created meanwhile by another call
                    sid = _secret_id(api, swarm_name)
        else:
            swarm_name = name
            sid = _secret_id(api, name)
        if sid is None:
            raise SwarmlessError(
                f"secret {name!r} does not exist: swarmless secret create {name} FILE "
                f"(or docker secret create {name} FILE on a manager)"
            )
        refs.append(docker.types.SecretReference(sid, swarm_name, filename=name))
    return refs


def _secret_id(api: Any, name: str) -> str | None:
    for s in api.secrets(filters={"name": name}):
        if s["Spec"]["Name"] == name:
            return str(s["ID"])
    return None


def remove_secret_versions(api: Any, name: str, *, instance: str, keep: str = "") -> None:
    """Remove the Swarm secrets ``instance`` made from ``name`` (but ``keep``); one that a
    service still uses stays."""
    flt = [f"{LABEL_SECRET}={name}", f"{LABEL_GATEWAY}={instance}"]
    for s in api.secrets(filters={"label": flt}):
        if s["Spec"]["Name"] != keep:
            with contextlib.suppress(docker.errors.APIError):
                api.remove_secret(s["ID"])


def unmanaged_secrets(api: Any) -> list[str]:
    """The names of the Swarm's secrets that swarmless did not make."""
    return [
        str(s["Spec"]["Name"])
        for s in api.secrets()
        if LABEL_MANAGED not in (s["Spec"].get("Labels") or {})
    ]


def secret_labels(extra: Mapping[str, str], instance: str) -> dict[str, str]:
    """The labels of a Swarm secret made by gateway ``instance``."""
    return {**extra, **managed_labels("secret"), LABEL_GATEWAY: instance}


def pinned_image(api: Any, spec: FunctionSpec) -> str:
    """What a service of ``spec`` runs: ``spec.image`` by digest when it is in a registry.

    A name that has a digest already, or names no registry (an image the nodes were given
    by hand), is kept. Otherwise the manager's copy of the image (``spec.image_id``, which
    the deploy pulled and pinned) says by which digest it came from that repository
    (``RepoDigests``); when it does not (never pushed or pulled), the name is kept.
    """
    image = spec.image or ""
    if "@" in image or not has_domain(image):
        return image
    repo, _, _ = split_reference(image)
    try:
        attrs = api.inspect_image(spec.image_id or image)
    except docker.errors.NotFound:
        return image
    for ref in attrs.get("RepoDigests") or []:
        if str(ref).partition("@")[0] == repo:
            return str(ref)
    return image


def task_template(
    spec: FunctionSpec,
    *,
    network: str,
    labels: Mapping[str, str],
    env: Mapping[str, str],
    command: list[str] | None,
    args: list[str] | None,
    secrets: list[docker.types.SecretReference],
    stop_grace: float,
    configs: list[docker.types.ConfigReference] | None = None,
    avoid: Sequence[str] = (),
    image: str | None = None,
    limits: SwarmLimits | None = None,
    oneshot: bool = False,
) -> docker.types.TaskTemplate:
    """One container of ``spec`` (of ``image``: default ``spec.image``) on ``network``,
    never restarted, kept off the nodes in ``avoid``; the task's node and name are in its
    environment. Its resources and log size: ``limits`` (:mod:`.swarm_limits`; None: the
    spec's CPUs and memory only); ``oneshot`` tasks' logs hold their answer."""
    env = {
        **env,
        "SWARMLESS_NODE": "{{.Node.Hostname}}",
        "SWARMLESS_TASK": "{{.Task.Name}}",
    }
    container = docker.types.ContainerSpec(
        image=image or spec.image or "",
        command=command,
        args=args,
        env=[f"{k}={v}" for k, v in env.items()],
        labels=dict(labels),
        secrets=secrets or None,
        configs=configs,
        stop_grace_period=int(stop_grace * 1e9),
        init=False,
    )
    limits = limits or SwarmLimits()
    return docker.types.TaskTemplate(
        container,
        resources=limits.resources(spec),
        log_driver=limits.log_config(spec, oneshot=oneshot),
        restart_policy=docker.types.RestartPolicy(condition="none"),
        placement=docker.types.Placement(
            constraints=[*spec.placement, *(f"node.id != {node}" for node in avoid)],
            preferences=[("spread", label) for label in spec.spread],
        )
        or None,
        networks=[docker.types.NetworkAttachmentConfig(spec.network or network)],
    )


def create_service(
    api: Any, name: str, template: docker.types.TaskTemplate, labels: Mapping[str, str]
) -> str:
    """Create a one-replica service reached by DNS round robin; returns its id."""
    # No image resolution here: an image in a registry comes by digest (pinned_image), and
    # one that is not runs as each node has it. The registry's credentials, if any, go
    # with the request (X-Registry-Auth, from the client's login).
    created = api.create_service(
        template,
        name=name,
        labels=dict(labels),
        mode=docker.types.ServiceMode("replicated", replicas=1),
        endpoint_spec=docker.types.EndpointSpec(mode="dnsrr"),
    )
    return str(created["ID"])
