"""Build a function folder into an image, with the Docker Engine's own (legacy) builder.

The build context is made in memory, as a tar::

    Dockerfile           generated (unless the folder has its own, or the spec names one
                         with ``dockerfile:``: then the folder is the context, as is, and
                         that Dockerfile is used unchanged)
    function/...         the user's folder (minus .git, __pycache__, .venv, *.pyc)
    swarmless/...        the runtime and the in-function client (swarmless/__init__.py +
                         runtime/), so that ``swarmless.from_env()`` works in every function
    swarmless-ca.pem     the CA bundle, when one is given

and the generated Dockerfile is, for a warm function with a requirements.txt::

    FROM <base>
    WORKDIR /function
    COPY swarmless/ /opt/swarmless/swarmless/
    ENV PYTHONPATH=/opt/swarmless
    RUN <python3 >= 3.10 or a clear error> && python3 -m compileall -q /opt/swarmless
    COPY function/requirements.txt /function/requirements.txt
    COPY swarmless-ca.pem /etc/swarmless-ca.pem
    RUN <venv present or a clear error> && python3 -m venv /opt/venv && \\
        SSL_CERT_FILE=... PIP_CERT=... /opt/venv/bin/pip install --no-cache-dir -r requirements.txt
    ENV PATH=/opt/venv/bin:$PATH VIRTUAL_ENV=/opt/venv
    COPY function/ /function/
    CMD ["python3", "-m", "swarmless.runtime"]

The packages go into a virtual environment (Debian's Python refuses ``pip install`` into
the system, PEP 668); its ``python3`` comes first on ``PATH``, so the runtime and the
handler see them. The layer is cached by the engine on the content of requirements.txt
(and of the CA bundle): editing the code does not reinstall, editing requirements.txt
does. The local base ``swarmless/python:bookworm`` has pip and venv, and so has an
upstream ``python:3.x-slim``: the Dockerfile is the same on both.

``cgi`` and ``oneshot`` functions get no Python check, so a shell function builds on
``swarmless/busybox`` (which has no Python); their ``CMD`` is the function's ``command``
when one is given. A base image of :data:`RECIPES` (Node.js, Go: Debian packages on the
local Python base) that is not on the engine yet, or was built from another recipe, is
built first, whether a generated or the folder's own Dockerfile names it.

>>> client = swarmless.engine.connect()                         # doctest: +SKIP
>>> build_function(Path("hello"), tag="swarmless-fn/hello:latest", mode="warm",
...                client=client, base_image="swarmless/python:bookworm")  # doctest: +SKIP
'sha256:...'
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import docker
import docker.errors

from swarmless.engine import LABEL_FUNCTION, managed_labels, translate
from swarmless.exceptions import ImageNotFound, InvalidArgument, SwarmlessError
from swarmless.runtime.package import INIT as PACKAGE_INIT

__all__ = [
    "BUILD_MODES",
    "PYTHON_BASE",
    "RECIPES",
    "BuildError",
    "Recipe",
    "base_is_current",
    "base_of",
    "build_function",
    "dockerfile",
    "dockerfile_bases",
    "ensure_base",
    "follow",
    "own_dockerfile",
    "runtime_files",
    "system_ca_bundle",
]

BUILD_MODES: tuple[str, ...] = ("warm", "cgi", "oneshot")

#: Never sent to the engine: version control, caches, virtual environments.
_SKIP_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", ".venv", ".mypy_cache", ".tox"})
_SKIP_SUFFIXES = (".pyc", ".pyo")

#: Exit codes of the generated checks, so their failures read as advice, not as a log.
_NO_PYTHON = 97
_NO_PIP = 98
_NO_PIP_HINT = (
    "the base image {base} has no pip and venv, so requirements.txt cannot be installed: "
    "rebuild the local base (make images, or scripts/base-images.sh: an image built before "
    "pip was added is built again), use a base image with them (e.g. "
    "SWARMLESS_BASE_IMAGE=python:3.11-slim where a registry can be pulled from), or vendor "
    "the packages into the function folder"
)
_NO_PYTHON_HINT = (
    "warm functions run the swarmless runtime, which needs python3 >= 3.10 in the base "
    "image, and {base} has none: use a Python base (e.g. swarmless/python:bookworm)"
)
_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
#: The legacy builder colours a RUN's stderr; the colour codes are noise in an error.
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: The builder's own chatter between steps, not output of the step.
_CHATTER = (
    " ---> ",
    "Removing intermediate container",
    "Successfully built",
    "Successfully tagged",
)
_CA_PATH = "/etc/swarmless-ca.pem"
_VENV = "/opt/venv"
#: Where the host's own CA bundle usually is (Debian, Fedora, Alpine, macOS with Homebrew...).
_SYSTEM_CA = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
)
_FROM = re.compile(r"^\s*FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?\s*$", re.IGNORECASE)


class BuildError(SwarmlessError):
    """An image build failed; ``step`` is the failing Dockerfile step, ``output`` its log."""

    code = "build_failed"

    def __init__(self, summary: str, *, step: str = "", output: str = "") -> None:
        tail = "\n".join(output.splitlines()[-30:])
        super().__init__(f"{summary}\n{tail}" if tail else summary)
        #: One line: what failed and why (the message adds the end of the step's output).
        self.summary = summary
        self.step = step
        self.output = output


def system_ca_bundle() -> Path | None:
    """This machine's CA bundle (``SSL_CERT_FILE``, else the usual places), or None.

    pip in a build container trusts it too, so that requirements install behind a proxy
    that re-signs TLS as well as they do here.
    """
    import os

    for candidate in (os.environ.get("SSL_CERT_FILE", ""), *_SYSTEM_CA):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


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


def runtime_files() -> dict[str, bytes]:
    """What a function image carries of swarmless: ``swarmless/__init__.py`` (the package
    face of a function container, :mod:`swarmless.runtime.package`) and the runtime's
    modules, keyed by their path under ``/opt/swarmless``."""
    runtime = Path(__file__).parent / "runtime"
    files = {"swarmless/__init__.py": PACKAGE_INIT.encode()}
    for path in sorted(runtime.glob("*.py")):
        files[f"swarmless/runtime/{path.name}"] = path.read_bytes()
    return files


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
            f"exit {_NO_PYTHON}; }}"
        )
        lines.append(f"RUN {check} && python3 -m compileall -q /opt/swarmless")
    if requirements:
        env = f"SSL_CERT_FILE={_CA_PATH} PIP_CERT={_CA_PATH} " if ca_bundle else ""
        check = (
            "python3 -c 'import ensurepip, venv' >/dev/null 2>&1 "
            f"|| {{ echo 'swarmless: no pip and venv in the base image' >&2; exit {_NO_PIP}; }}"
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


_generate = dockerfile  # build_function's parameter of that name hides the function


def _skip(rel: Path) -> bool:
    return any(part in _SKIP_DIRS for part in rel.parts) or rel.name.endswith(_SKIP_SUFFIXES)


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Owner and time say nothing about the function and would only break the build cache.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def _add_folder(tar: tarfile.TarFile, folder: Path, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if _skip(rel):
            continue
        arcname = f"{prefix}{rel.as_posix()}"
        tar.add(path, arcname=arcname, recursive=False, filter=_normalise)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = _normalise(tarfile.TarInfo(name))
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def _context(folder: Path, *, generated: str | None, ca_bundle: Path | None) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        if generated is None:
            _add_folder(tar, folder, "")
        else:
            _add_bytes(tar, "Dockerfile", generated.encode())
            folder_entry = _normalise(tarfile.TarInfo("function"))
            folder_entry.type, folder_entry.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(folder_entry)  # COPY function/ needs it even for an empty folder
            _add_folder(tar, folder, "function/")
            for name, data in runtime_files().items():
                _add_bytes(tar, name, data)
            if ca_bundle is not None:
                _add_bytes(tar, "swarmless-ca.pem", ca_bundle.read_bytes())
    buf.seek(0)
    return buf


def _function_name(tag: str) -> str:
    repo = tag.rsplit("@", 1)[0]
    last = repo.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def build_function(
    context_dir: Path,
    *,
    tag: str | None,
    mode: str,
    client: docker.DockerClient,
    base_image: str,
    ca_bundle: Path | None = None,
    progress: Callable[[str], None] | None = None,
    labels: dict[str, str] | None = None,
    function: str | None = None,
    command: Sequence[str] | None = None,
    dockerfile: str | None = None,
) -> str:
    """Build the function folder ``context_dir`` into ``tag``; returns the image id.

    ``mode`` is ``warm`` (the swarmless runtime is added and is the image's command),
    ``cgi`` or ``oneshot`` (``command``, when given, becomes the image's command). A
    ``requirements.txt`` is installed with pip into a virtual environment (trusting
    ``ca_bundle`` when given); a folder with its own ``Dockerfile`` (or the one
    ``dockerfile`` names, a path inside the folder) is built as is. The base images of
    :data:`RECIPES` it names are built first when missing. ``progress``
    receives every line of build output (``Step N/M : ...`` starts a step). The image is
    labelled ``swarmless.managed=true`` and ``swarmless.function=<function>`` (default: the
    last part of ``tag``'s repository) plus ``labels``. ``tag=None`` leaves the image
    untagged (its id is what names it: ``swarmless deploy`` tags it once every function of
    the file has passed its checks).

    Raises :class:`BuildError` with the failing step's output, :class:`ImageNotFound` when
    the base image is missing, :class:`InvalidArgument` for a bad folder or mode.
    """
    folder = Path(context_dir)
    if not folder.is_dir():
        raise InvalidArgument(f"build context {folder} is not a directory")
    if mode not in BUILD_MODES:
        raise InvalidArgument(f"mode must be one of {', '.join(BUILD_MODES)}, got {mode!r}")
    if ca_bundle is not None and not Path(ca_bundle).is_file():
        raise InvalidArgument(f"CA bundle {ca_bundle} is not a file")
    own = own_dockerfile(folder, dockerfile)
    generated = None
    requirements = (folder / "requirements.txt").is_file()
    if own is None:
        generated = _generate(
            base_image=base_image,
            mode=mode,
            requirements=requirements,
            ca_bundle=ca_bundle is not None and requirements,
            command=command,
        )
        bases = [base_image]
    else:
        bases = dockerfile_bases(own.read_text(errors="replace"))
    _ensure_bases(client, bases, progress)
    context = _context(folder, generated=generated, ca_bundle=ca_bundle if requirements else None)
    name = function or (labels or {}).get(LABEL_FUNCTION) or (tag and _function_name(tag)) or ""
    more = {"function": name} if name else {}
    all_labels = managed_labels("image", labels, **more)
    shown = tag or f"the image of {name or folder.name}"
    with translate(image=bases[-1] if bases else base_image):
        stream = client.api.build(
            fileobj=context,
            custom_context=True,
            tag=tag,
            dockerfile=own.relative_to(folder).as_posix() if own is not None else None,
            rm=True,
            forcerm=True,
            pull=False,
            labels=all_labels,
            decode=True,
        )
        image_id = follow(stream, base_image=base_image, tag=shown, progress=progress)
        if not image_id:
            if tag is None:
                raise BuildError(f"building {shown} gave no image id")
            image_id = str(client.api.inspect_image(tag)["Id"])
    return image_id


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


def base_of(
    folder: Path, *, base_image: str, dockerfile: str | None = None
) -> tuple[str, list[str]]:
    """What an image built from ``folder`` is based on: the final ``FROM`` and every image
    the build uses (one for a generated Dockerfile, each stage's for the folder's own)."""
    own = own_dockerfile(Path(folder), dockerfile)
    if own is None:
        return base_image, [base_image]
    bases = dockerfile_bases(own.read_text(errors="replace"))
    images = [b for b in bases if not b.startswith("stage ")]
    return (bases[-1] if bases else "?"), images


def _ensure_bases(
    client: docker.DockerClient, bases: Sequence[str], progress: Callable[[str], None] | None
) -> None:
    for image in dict.fromkeys(bases):
        if image in RECIPES:
            ensure_base(client, image, progress)


# -- the base images of the Node.js and Go templates -------------------------------------

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


def follow(
    stream: Iterable[dict[str, Any]],
    *,
    base_image: str,
    tag: str,
    progress: Callable[[str], None] | None,
) -> str:
    """Read a build's JSON stream; the image id, or raise with the failing step."""
    step = ""
    step_no = 0
    output: list[str] = []
    image_id = ""
    for chunk in stream:
        if "error" in chunk:
            _fail(str(chunk["error"]), step, step_no, output, base_image=base_image, tag=tag)
        aux = chunk.get("aux")
        if isinstance(aux, dict) and aux.get("ID"):
            image_id = str(aux["ID"])
        text = chunk.get("stream") or chunk.get("status") or ""
        for raw in str(text).splitlines():
            line = _ANSI.sub("", raw).rstrip()
            if not line:
                continue
            m = _STEP.match(line)
            if m:
                step, step_no, output = m[3], int(m[1]), []
            elif not line.startswith(_CHATTER):
                output.append(line)
            if progress is not None:
                progress(line)
    return image_id


def _fail(
    error: str,
    step: str,
    step_no: int,
    output: list[str],
    *,
    base_image: str,
    tag: str,
) -> None:
    error = error.strip()
    if step.upper().startswith("FROM "):
        image = step.split()[1] if len(step.split()) > 1 else base_image
        raise ImageNotFound(image, error)
    # The generated checks' own failures: the advice says it all, their output adds nothing.
    if f"returned a non-zero code: {_NO_PIP}" in error:
        raise BuildError(_NO_PIP_HINT.format(base=base_image), step=step)
    if f"returned a non-zero code: {_NO_PYTHON}" in error:
        raise BuildError(_NO_PYTHON_HINT.format(base=base_image), step=step)
    summary = f"building {tag} failed at step {step_no} ({step}): {error}"
    raise BuildError(summary, step=step, output="\n".join(output))
