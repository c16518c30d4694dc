"""The Dockerfile of a function image: the one generated for a folder (the shape is in
:mod:`swarmless.build`'s docstring), the folder's own, and the images one builds on."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from swarmless.exceptions import InvalidArgument

__all__ = ["NO_PIP", "NO_PYTHON", "dockerfile", "dockerfile_bases", "own_dockerfile"]

#: Exit codes of the generated checks, so their failures read as advice, not as a log
#: (:mod:`swarmless.build_output` turns them into it).
NO_PYTHON = 97
NO_PIP = 98

_CA_PATH = "/etc/swarmless-ca.pem"
_VENV = "/opt/venv"
_FROM = re.compile(r"^\s*FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?\s*$", re.IGNORECASE)


def dockerfile_bases(text: str) -> list[str]:
    """The images a Dockerfile builds on, in order (``FROM`` lines; a stage named before
    is not an image, ``scratch`` is kept): the last one is the final image's base."""
    bases: list[str] = []
    stages: set[str] = set()
    for line in text.splitlines():
        m = _FROM.match(line)
        if m is None:
            continue
        image = m[1]
        bases.append(image if image.lower() not in stages else f"stage {image}")
        if m[2]:
            stages.add(m[2].lower())
    return bases


def dockerfile(
    *,
    base_image: str,
    mode: str,
    requirements: bool = False,
    ca_bundle: bool = False,
    command: Sequence[str] | None = None,
) -> str:
    """The Dockerfile generated for a function folder (see the module docstring)."""
    lines = [
        f"FROM {base_image}",
        "WORKDIR /function",
        # Every function carries the runtime's client: swarmless.from_env() works in it.
        "COPY swarmless/ /opt/swarmless/swarmless/",
        "ENV PYTHONPATH=/opt/swarmless",
    ]
    if mode == "warm":
        check = (
            "python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' "
            f"|| {{ echo 'swarmless: no python3 >= 3.10 in the base image' >&2; "
            f"exit {NO_PYTHON}; }}"
        )
        lines.append(f"RUN {check} && python3 -m compileall -q /opt/swarmless")
    if requirements:
        env = f"SSL_CERT_FILE={_CA_PATH} PIP_CERT={_CA_PATH} " if ca_bundle else ""
        check = (
            "python3 -c 'import ensurepip, venv' >/dev/null 2>&1 "
            f"|| {{ echo 'swarmless: no pip and venv in the base image' >&2; exit {NO_PIP}; }}"
        )
        lines.append("COPY function/requirements.txt /function/requirements.txt")
        if ca_bundle:
            lines.append(f"COPY swarmless-ca.pem {_CA_PATH}")
        lines += [
            f"RUN {check} && python3 -m venv {_VENV} && {env}{_VENV}/bin/pip install "
            "--no-cache-dir --disable-pip-version-check -r requirements.txt",
            f"ENV PATH={_VENV}/bin:$PATH VIRTUAL_ENV={_VENV}",
        ]
    lines.append("COPY function/ /function/")
    if mode == "warm":
        lines.append('CMD ["python3", "-m", "swarmless.runtime"]')
    elif command:
        lines.append(f"CMD {json.dumps(list(command))}")
    return "\n".join(lines) + "\n"


def own_dockerfile(folder: Path, dockerfile: str | None = None) -> Path | None:
    """The folder's own Dockerfile: the one ``dockerfile`` names (it must exist, inside the
    folder), else ``Dockerfile`` when there is one, else None (one is generated)."""
    if dockerfile is None:
        path = folder / "Dockerfile"
        return path if path.is_file() else None
    path = (folder / dockerfile).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise InvalidArgument(f"dockerfile {dockerfile!r} is outside the build folder {folder}")
    if not path.is_file():
        raise InvalidArgument(f"dockerfile {dockerfile!r}: no such file in {folder}")
    return folder / dockerfile
