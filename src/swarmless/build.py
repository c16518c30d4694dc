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

The parts: :mod:`swarmless.build_dockerfile` (the Dockerfile), :mod:`swarmless.build_context`
(the tar sent to the engine), :mod:`swarmless.build_output` (the build's stream, its
errors), :mod:`swarmless.build_bases` (the Node.js and Go base images); this module builds
with them and re-exports their names, so every import path is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import docker

from swarmless.build_bases import PYTHON_BASE, RECIPES, Recipe, base_is_current, ensure_base
from swarmless.build_bases import ensure_bases as _ensure_bases
from swarmless.build_context import make_context as _context
from swarmless.build_context import runtime_files, system_ca_bundle
from swarmless.build_dockerfile import dockerfile, dockerfile_bases, own_dockerfile
from swarmless.build_output import BuildError, follow
from swarmless.engine import LABEL_FUNCTION, managed_labels, translate
from swarmless.exceptions import InvalidArgument

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

_generate = dockerfile  # build_function's parameter of that name hides the function


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
