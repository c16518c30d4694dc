"""Function images through a registry: the names they get there, and the push.

With ``settings.registry`` set (docs/swarm-production.md), ``swarmless build`` and
``swarmless deploy`` push every image they build::

    swarmless-fn/hello:latest                  the image as the spec names it
    <registry_push>/swarmless-fn/hello:latest  tagged and pushed by this machine's engine
    <registry>/swarmless-fn/hello@sha256:...   what the function is deployed with

The last one is a *digest* reference: content-addressed, so every Swarm node that pulls it
runs the same bits, whatever the tag points at later. ``registry_push`` exists for a
registry this machine reaches by another name than the nodes do (``swarmless registry up``
serves on 127.0.0.1, which every engine trusts, and on an address the nodes reach); the
content, and so the digest, is the same under both names.

Credentials are a user name and a file holding the password (a mounted Docker secret, or a
file only the operator reads): the password is read when it is needed, handed to the
engine in its ``X-Registry-Auth`` header, and never written to a log or a setting.

>>> registry_reference("swarmless-fn/hello", "127.0.0.1:5000")
'127.0.0.1:5000/swarmless-fn/hello:latest'
>>> registry_reference("registry.example.com/team/hello:2", "10.0.0.5:5000")
'10.0.0.5:5000/team/hello:2'
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import docker.errors

from swarmless.exceptions import SwarmlessError

if TYPE_CHECKING:
    import docker

    from swarmless.config import Settings

__all__ = [
    "RegistryError",
    "credentials",
    "digest_reference",
    "has_domain",
    "push_image",
    "registry_reference",
    "split_reference",
]

#: What the engine says when it spoke HTTPS to a registry that serves plain HTTP.
_PLAIN_HTTP = "server gave HTTP response to HTTPS client"


class RegistryError(SwarmlessError):
    """A push to (or a login at) the registry failed; the message says what to do."""

    code = "registry_failed"


def has_domain(name: str) -> bool:
    """Whether an image name starts with a registry host (Docker's rule: the first part
    has a dot or a port, or is ``localhost``)."""
    first, sep, _ = name.partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


def split_reference(image: str) -> tuple[str, str, str]:
    """``image`` as (repository, tag, digest); the tag is empty when a digest is given and
    no tag, else ``latest`` by default."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = ""
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    if not tag and not digest:
        tag = "latest"
    return name, tag, digest


def registry_reference(image: str, registry: str) -> str:
    """The name ``image`` gets in ``registry`` (its own registry host, if any, replaced)."""
    repo, tag, _ = split_reference(image)
    if repo == registry or repo.startswith(f"{registry}/"):
        return f"{repo}:{tag or 'latest'}"
    if has_domain(repo):
        repo = repo.partition("/")[2]
    return f"{registry}/{repo}:{tag or 'latest'}"


def digest_reference(image: str, registry: str, digest: str) -> str:
    """``<registry>/<repository>@<digest>``: what every node pulls, whatever the tag does."""
    repo, _, _ = split_reference(registry_reference(image, registry))
    return f"{repo}@{digest}"


def credentials(settings: Settings) -> dict[str, str] | None:
    """The registry's credentials (``auth_config`` of the Docker SDK), or None without a
    user name. The password is read from ``registry_password_file`` now."""
    if not settings.registry_username:
        return None
    password = ""
    if settings.registry_password_file is not None:
        try:
            password = settings.registry_password_file.read_text().strip()
        except OSError as e:
            raise RegistryError(
                f"registry_password_file {settings.registry_password_file}: {e.strerror}"
            ) from None
    return {"username": settings.registry_username, "password": password}


def _hint(error: str, address: str) -> str:
    if _PLAIN_HTTP in error:
        return (
            f"; the registry at {address} serves plain HTTP: the engine must trust it "
            f'("insecure-registries": ["{address}"] in its daemon.json; an address on '
            "127.0.0.0/8 is trusted by default) or the registry must serve TLS"
        )
    if "connection refused" in error or "no such host" in error or "i/o timeout" in error:
        return f"; is a registry running at {address}? (swarmless registry status)"
    if "auth" in error.lower():  # unauthorized, authentication required, no basic auth...
        return (
            "; set registry_username and registry_password_file (a file holding the "
            "password) in the settings"
        )
    return ""


def _follow(stream: Iterable[dict[str, Any]], progress: Callable[[str], None] | None) -> str:
    """Read a push's JSON stream; the pushed manifest's digest, or raise its error."""
    digest = ""
    for chunk in stream:
        if "error" in chunk:
            raise RegistryError(str(chunk["error"]).strip())
        aux = chunk.get("aux")
        if isinstance(aux, dict) and aux.get("Digest"):
            digest = str(aux["Digest"])
        status = chunk.get("status")
        if progress is not None and status:
            layer = chunk.get("id")
            progress(f"{layer}: {status}" if layer else str(status))
    return digest


def push_image(
    client: docker.DockerClient,
    image: str,
    *,
    settings: Settings,
    source: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> str:
    """Tag ``source`` (an image id or name; default ``image``) as ``image`` is named in
    ``settings.registry_push`` (else ``registry``), push it, and return the digest
    reference the nodes pull: ``<settings.registry>/<repository>@sha256:...``.

    Raises :class:`RegistryError` (with what to do: trust the address, start a registry,
    give credentials) when the push fails, :class:`SwarmlessError` when no registry is set.
    """
    if not settings.registry:
        raise SwarmlessError("no registry is set (settings.registry, SWARMLESS_REGISTRY)")
    push_to = settings.registry_push or settings.registry
    target = registry_reference(image, push_to)
    repo, tag, _ = split_reference(target)
    auth = credentials(settings)
    try:
        client.api.inspect_image(target)
        tagged_here = False
    except docker.errors.ImageNotFound:
        tagged_here = True
    except docker.errors.DockerException as e:
        raise RegistryError(f"pushing {target} failed: {e}") from None
    try:
        client.api.tag(source or image, repo, tag, force=True)
        stream = client.api.push(repo, tag, auth_config=auth, stream=True, decode=True)
        digest = _follow(stream, progress)
    except docker.errors.ImageNotFound:
        raise RegistryError(f"no image {source or image} on the engine to push") from None
    except (docker.errors.APIError, RegistryError) as e:
        why = e.explanation if isinstance(e, docker.errors.APIError) else e.message
        why = str(why or e)
        if tagged_here:  # a failed push leaves no name behind that it made
            with contextlib.suppress(docker.errors.DockerException):
                client.api.remove_image(target, noprune=True)
        raise RegistryError(f"pushing {target} failed: {why}{_hint(why, push_to)}") from None
    except docker.errors.DockerException as e:
        raise RegistryError(f"pushing {target} failed: {e}") from None
    if not digest:
        raise RegistryError(f"pushing {target} gave no digest (an engine older than 1.10?)")
    return digest_reference(image, settings.registry, digest)
