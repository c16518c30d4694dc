"""The base images of the Node.js and Go templates: Debian packages on the local Python
base, built on first use (and again when their recipe changed)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Callable, Sequence

import docker
import docker.errors

from swarmless.build_output import BuildError, follow
from swarmless.exceptions import ImageNotFound

__all__ = ["PYTHON_BASE", "RECIPES", "Recipe", "base_is_current", "ensure_base", "ensure_bases"]

#: The Debian base the other local bases are built on (its apt reaches Debian's mirror).
PYTHON_BASE = "swarmless/python:bookworm"
_APT_CLEAN = "rm -rf /var/lib/apt/lists/* /var/cache/apt/* /usr/share/doc/* /usr/share/man/*"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A local base image: Debian packages (and settings) on top of :data:`PYTHON_BASE`."""

    lang: str
    image: str
    packages: tuple[str, ...]
    env: tuple[str, ...] = ()

    def dockerfile(self) -> str:
        lines = [
            f"FROM {PYTHON_BASE}",
            "RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
            f"--no-install-recommends {' '.join(self.packages)} && {_APT_CLEAN}",
        ]
        lines += [f"ENV {e}" for e in self.env]
        return "\n".join(lines) + "\n"

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.dockerfile().encode()).hexdigest()[:12]


#: The base images built on first use (:func:`ensure_base`), by name.
RECIPES: dict[str, Recipe] = {
    r.image: r
    for r in (
        Recipe("node", "swarmless/node:bookworm", ("nodejs",), ("NODE_ENV=production",)),
        Recipe(
            "go",
            "swarmless/golang:bookworm",
            ("golang-go",),
            # Static binaries (for FROM scratch), and no module download at build time.
            ("CGO_ENABLED=0", "GOFLAGS=-trimpath", "GOPROXY=off", "GOTOOLCHAIN=local"),
        ),
    )
}


def base_is_current(client: docker.DockerClient, image: str) -> bool:
    """Whether ``image`` (one of :data:`RECIPES`) is there, built from today's recipe."""
    try:
        labels = client.api.inspect_image(image)["Config"].get("Labels") or {}
    except docker.errors.ImageNotFound:
        return False
    return bool(labels.get("swarmless.recipe") == RECIPES[image].hash)


def ensure_base(
    client: docker.DockerClient, image: str, progress: Callable[[str], None] | None = None
) -> str | None:
    """Build ``image`` when it is one of :data:`RECIPES` and missing or built from another
    recipe (label ``swarmless.recipe``); the id of what was built, None when nothing was."""
    recipe = RECIPES.get(image)
    if recipe is None or base_is_current(client, image):
        return None
    try:
        client.api.inspect_image(PYTHON_BASE)
    except docker.errors.ImageNotFound:
        raise ImageNotFound(
            PYTHON_BASE,
            f"{image} is built on it: build it first (make images, or scripts/base-images.sh)",
        ) from None
    if progress is not None:
        progress(f"building the base image {image} (Debian's {', '.join(recipe.packages)})")
    stream = client.api.build(
        fileobj=io.BytesIO(recipe.dockerfile().encode()),
        tag=image,
        rm=True,
        forcerm=True,
        pull=False,
        labels={"swarmless.base": recipe.lang, "swarmless.recipe": recipe.hash},
        decode=True,
    )
    try:
        image_id = follow(stream, base_image=PYTHON_BASE, tag=image, progress=progress)
    except BuildError as e:
        raise BuildError(
            f"the base image {image} could not be built (apt-get install of Debian's "
            f"{', '.join(recipe.packages)}): {e.summary}",
            step=e.step,
            output=e.output,
        ) from None
    return image_id or str(client.api.inspect_image(image)["Id"])


def ensure_bases(
    client: docker.DockerClient, bases: Sequence[str], progress: Callable[[str], None] | None
) -> None:
    """Build the images of :data:`RECIPES` among ``bases`` that are missing or stale."""
    for image in dict.fromkeys(bases):
        if image in RECIPES:
            ensure_base(client, image, progress)
