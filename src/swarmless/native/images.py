"""The images native functions run in: one generic image, and one per requirement set.

No image is built per function. The *generic* image is the base Python image (settings'
``base_image``, swarmless/python:bookworm) plus cloudpickle, copied from this interpreter
(pure Python: no network), built once per base and cloudpickle version and tagged
``swarmless-native/python:<digest>``; the build checks that the image's Python has this
interpreter's minor version (cloudpickle's code objects need it). A function given
``requirements=[...]`` gets a layer on top of it, built once per requirement set
(``swarmless-native/deps:<digest>``): pip (this interpreter's own copy, pure Python too)
installs them from the package index, trusting the CA bundle pip trusts here
(``SWARMLESS_CA_BUNDLE``, else ``PIP_CERT``, ``SSL_CERT_FILE``, the system bundle).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import cloudpickle

from swarmless.exceptions import InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:
    import docker

__all__ = ["ca_bundle", "generic_image", "requirements_image"]

_lock = threading.Lock()
_REPO = "swarmless-native"
#: Exit code of the generated Python check, so its failure reads as advice.
_WRONG_PYTHON = 96
_SITE = "python3 -c 'import site; print(site.getsitepackages()[0])'"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _have(client: docker.DockerClient, tag: str) -> bool:
    import docker.errors

    try:
        client.api.inspect_image(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def _build(client: docker.DockerClient, folder: Path, tag: str, base: str) -> None:
    from swarmless.build import BuildError, build_function

    try:
        build_function(folder, tag=tag, mode="warm", client=client, base_image=base)
    except BuildError as e:
        if f"non-zero code: {_WRONG_PYTHON}" in str(e):
            py = f"{sys.version_info[0]}.{sys.version_info[1]}"
            raise BuildError(
                f"the base image {base} has no Python {py}, and cloudpickle needs the same "
                f"minor version here and in the container: run this program with the "
                f"image's Python, or give a base image with Python {py} (settings.base_image)",
                step=e.step,
            ) from None
        raise


def generic_image(client: docker.DockerClient, base: str) -> str:
    """The generic image for ``base`` (built on first use); its tag."""
    py = f"{sys.version_info[0]}.{sys.version_info[1]}"
    tag = f"{_REPO}/python:{_digest(base, py, cloudpickle.__version__)}"
    with _lock:
        if _have(client, tag):
            return tag
        check = (
            "python3 -c 'import sys; "
            f"sys.exit(sys.version_info[:2] != {tuple(sys.version_info[:2])})'"
            f" || {{ echo 'swarmless: the image has no Python {py}' >&2; exit {_WRONG_PYTHON}; }}"
        )
        dockerfile = (
            f"FROM {base}\n"
            "COPY cloudpickle/ /tmp/swarmless-native/cloudpickle/\n"
            f'RUN {check} && site="$({_SITE})" && mkdir -p "$site" '
            '&& mv /tmp/swarmless-native/cloudpickle "$site/" && rm -rf /tmp/swarmless-native '
            '&& python3 -m compileall -q "$site/cloudpickle"\n'
        )
        with tempfile.TemporaryDirectory(prefix="swarmless-native-") as tmp:
            folder = Path(tmp)
            (folder / "Dockerfile").write_text(dockerfile)
            src = Path(cloudpickle.__file__).parent
            shutil.copytree(
                src, folder / "cloudpickle", ignore=shutil.ignore_patterns("__pycache__")
            )
            _build(client, folder, tag, base)
    return tag


def ca_bundle() -> Path | None:
    """The CA certificates pip trusts on this machine (see the module docstring)."""
    for name in ("SWARMLESS_CA_BUNDLE", "PIP_CERT", "SSL_CERT_FILE"):
        value = os.environ.get(name)
        if value and Path(value).is_file():
            return Path(value)
    system = Path("/etc/ssl/certs/ca-certificates.crt")
    return system if system.is_file() else None


def _check(requirements: Sequence[str]) -> list[str]:
    reqs = sorted({r.strip() for r in requirements if isinstance(r, str) and r.strip()})
    bad = [r for r in requirements if not isinstance(r, str) or not r.strip()]
    for r in reqs:
        if r.startswith("-") or any(c in r for c in "\n\r\0"):
            bad.append(r)
    if bad or not reqs:
        raise InvalidArgument(
            f"requirements must be a list of requirement strings like 'six==1.16.0', got "
            f"{list(requirements)!r}"
        )
    return reqs


def requirements_image(
    client: docker.DockerClient, generic: str, requirements: Sequence[str]
) -> str:
    """The generic image plus ``requirements`` (built once per set); its tag."""
    reqs = _check(requirements)
    tag = f"{_REPO}/deps:{_digest(generic, *reqs)}"
    with _lock:
        if _have(client, tag):
            return tag
        import pip

        ca = ca_bundle()
        env = "SSL_CERT_FILE=/etc/swarmless-ca.pem PIP_CERT=/etc/swarmless-ca.pem " if ca else ""
        lines = [f"FROM {generic}", "COPY pip/ /tmp/swarmless-pip/pip/"]
        if ca is not None:
            lines.append("COPY swarmless-ca.pem /etc/swarmless-ca.pem")
        lines.append(
            f"RUN {env}PYTHONPATH=/tmp/swarmless-pip python3 -m pip install --no-cache-dir "
            "--disable-pip-version-check --root-user-action=ignore --break-system-packages "
            f"--no-warn-script-location {' '.join(shlex.quote(r) for r in reqs)} "
            "&& rm -rf /tmp/swarmless-pip"
        )
        with tempfile.TemporaryDirectory(prefix="swarmless-native-") as tmp:
            folder = Path(tmp)
            (folder / "Dockerfile").write_text("\n".join(lines) + "\n")
            shutil.copytree(
                Path(pip.__file__).parent,
                folder / "pip",
                ignore=shutil.ignore_patterns("__pycache__"),
            )
            if ca is not None:
                shutil.copyfile(ca, folder / "swarmless-ca.pem")
            _build(client, folder, tag, generic)
    return tag
