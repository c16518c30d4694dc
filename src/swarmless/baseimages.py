"""The local base images of the Node.js and Go templates, built on first use.

No registry is needed: like ``swarmless/python:bookworm`` (Debian bookworm, debootstrapped
by ``scripts/base-images.sh``), they hold Debian's own packages, installed with apt on top
of that Python base::

    swarmless/node:bookworm     nodejs (Node.js 18)           cgi and oneshot functions
    swarmless/golang:bookworm   golang-go (Go 1.19), CGO off   the build stage of a Go
                                                               function FROM scratch

Each carries the hash of its recipe (label ``swarmless.recipe``): :func:`ensure` builds an
image that is missing or was built from another recipe, and leaves the others alone.
``swarmless build`` calls it for every ``FROM`` it is about to build on;
``python -m swarmless.baseimages node`` (or ``scripts/base-images.sh node``) builds one
ahead of time.

>>> ensure(client, "swarmless/node:bookworm")  # doctest: +SKIP
'sha256:...'
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import sys
from collections.abc import Callable

import docker
import docker.errors

from swarmless.exceptions import ImageNotFound, SwarmlessError

__all__ = ["PYTHON_BASE", "RECIPES", "Recipe", "ensure", "is_current", "main"]

#: The Debian base they are built on (its apt reaches Debian's mirror).
PYTHON_BASE = "swarmless/python:bookworm"
_CLEAN = "rm -rf /var/lib/apt/lists/* /var/cache/apt/* /usr/share/doc/* /usr/share/man/*"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A base image: Debian packages (and settings) on top of :data:`PYTHON_BASE`."""

    lang: str
    image: str
    packages: tuple[str, ...]
    env: tuple[str, ...] = ()

    def dockerfile(self) -> str:
        lines = [
            f"FROM {PYTHON_BASE}",
            "RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
            f"--no-install-recommends {' '.join(self.packages)} && {_CLEAN}",
        ]
        lines += [f"ENV {e}" for e in self.env]
        return "\n".join(lines) + "\n"

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.dockerfile().encode()).hexdigest()[:12]


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
_BY_LANG = {r.lang: r for r in RECIPES.values()}


def is_current(client: docker.DockerClient, image: str) -> bool:
    """Whether ``image`` (one of :data:`RECIPES`) is present and built from today's recipe."""
    recipe = RECIPES[image]
    try:
        labels = client.api.inspect_image(image)["Config"].get("Labels") or {}
    except docker.errors.ImageNotFound:
        return False
    return bool(labels.get("swarmless.recipe") == recipe.hash)


def ensure(
    client: docker.DockerClient, image: str, progress: Callable[[str], None] | None = None
) -> str | None:
    """Build ``image`` when it is one of :data:`RECIPES` and missing or out of date; returns
    the id of what was built, None when nothing was (not ours, or already current)."""
    recipe = RECIPES.get(image)
    if recipe is None or is_current(client, image):
        return None
    try:
        client.api.inspect_image(PYTHON_BASE)
    except docker.errors.ImageNotFound:
        raise ImageNotFound(
            PYTHON_BASE,
            f"{image} is built on it: build it first (make images, or scripts/base-images.sh)",
        ) from None
    from swarmless.build import BuildError, follow

    if progress is not None:
        progress(f"building the base image {image} (Debian's {', '.join(recipe.packages)})")
    labels = {"swarmless.base": recipe.lang, "swarmless.recipe": recipe.hash}
    stream = client.api.build(
        fileobj=io.BytesIO(recipe.dockerfile().encode()),
        tag=image,
        rm=True,
        forcerm=True,
        pull=False,
        labels=labels,
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


def main(argv: list[str] | None = None) -> int:
    """``python -m swarmless.baseimages node|go``: build those base images if needed."""
    from swarmless.config import Settings
    from swarmless.engine import connect

    args = sys.argv[1:] if argv is None else argv
    unknown = [a for a in args if a not in _BY_LANG]
    if not args or unknown:
        print(f"usage: python -m swarmless.baseimages {'|'.join(_BY_LANG)} ...", file=sys.stderr)
        return 2
    client = connect(Settings.load().docker_host)
    try:
        for lang in args:
            image = _BY_LANG[lang].image
            try:
                built = ensure(client, image, lambda line: print(line, file=sys.stderr))
            except SwarmlessError as e:
                print(f"base-images: {e.message}", file=sys.stderr)
                return 1
            print(f"base-images: {image} {'built' if built else 'present'}", file=sys.stderr)
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
