"""``python -m swarmless.baseimages node|go``: build the base images of the Node.js and Go
templates ahead of time (``swarmless build`` builds them on first use).

No registry is needed: like ``swarmless/python:bookworm`` (Debian bookworm, debootstrapped
by ``scripts/base-images.sh``), they hold Debian's own packages, installed with apt on top
of that Python base::

    swarmless/node:bookworm     nodejs (Node.js 18)           cgi and oneshot functions
    swarmless/golang:bookworm   golang-go (Go 1.19), CGO off   the build stage of a Go
                                                               function FROM scratch

Each carries the hash of its recipe (label ``swarmless.recipe``): one that is missing or
was built from another recipe is built, the others are left alone. The recipes are
:data:`swarmless.build.RECIPES`.
"""

from __future__ import annotations

import sys

from swarmless.build import RECIPES, ensure_base
from swarmless.exceptions import SwarmlessError

__all__ = ["main"]

_BY_LANG = {r.lang: r.image for r in RECIPES.values()}


def main(argv: list[str] | None = None) -> int:
    """Build the base images of the languages in ``argv`` if needed; the exit status."""
    from swarmless.config import Settings
    from swarmless.engine import connect

    args = sys.argv[1:] if argv is None else argv
    if not args or any(a not in _BY_LANG for a in args):
        print(f"usage: python -m swarmless.baseimages {'|'.join(_BY_LANG)} ...", file=sys.stderr)
        return 2
    client = connect(Settings.load().docker_host)
    try:
        for lang in args:
            image = _BY_LANG[lang]
            try:
                built = ensure_base(client, image, lambda line: print(line, file=sys.stderr))
            except SwarmlessError as e:
                print(f"base-images: {e.message}", file=sys.stderr)
                return 1
            print(f"base-images: {image} {'built' if built else 'present'}", file=sys.stderr)
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
