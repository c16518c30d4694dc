"""Build a function folder into an image, with the Docker Engine's own (legacy) builder.

The build context is made in memory, as a tar::

    Dockerfile           generated (unless the folder has its own: then the folder is the
                         context, as is, and its Dockerfile is used unchanged)
    function/...         the user's folder (minus .git, __pycache__, .venv, *.pyc)
    swarmless/...        warm mode: the runtime (an empty swarmless/__init__.py + runtime/)
    swarmless-ca.pem     the CA bundle, when one is given

and the generated Dockerfile is, for a warm function with a requirements.txt::

    FROM <base>
    WORKDIR /function
    COPY swarmless/ /opt/swarmless/swarmless/
    ENV PYTHONPATH=/opt/swarmless
    RUN <python3 >= 3.10 or a clear error> && python3 -m compileall -q /opt/swarmless
    COPY function/requirements.txt /function/requirements.txt
    COPY swarmless-ca.pem /etc/swarmless-ca.pem
    RUN <pip present or a clear error> && SSL_CERT_FILE=... PIP_CERT=... \\
        python3 -m pip install --no-cache-dir -r requirements.txt
    COPY function/ /function/
    CMD ["python3", "-m", "swarmless.runtime"]

``cgi`` and ``oneshot`` functions get neither the runtime nor a Python check, so a shell
function builds on ``swarmless/busybox`` (which has no Python); their ``CMD`` is the
function's ``command`` when one is given.

>>> client = swarmless.engine.connect()                         # doctest: +SKIP
>>> build_function(Path("hello"), tag="swarmless-fn/hello:latest", mode="warm",
...                client=client, base_image="swarmless/python:bookworm")  # doctest: +SKIP
'sha256:...'
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import docker

from swarmless.engine import LABEL_FUNCTION, managed_labels, translate
from swarmless.exceptions import ImageNotFound, InvalidArgument, SwarmlessError

__all__ = ["BUILD_MODES", "BuildError", "build_function", "dockerfile", "runtime_files"]

BUILD_MODES: tuple[str, ...] = ("warm", "cgi", "oneshot")

#: Never sent to the engine: version control, caches, virtual environments.
_SKIP_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", ".venv", ".mypy_cache", ".tox"})
_SKIP_SUFFIXES = (".pyc", ".pyo")

#: Exit codes of the generated checks, so their failures read as advice, not as a log.
_NO_PYTHON = 97
_NO_PIP = 98
_NO_PIP_HINT = (
    "the base image {base} has no pip, so requirements.txt cannot be installed: use a base "
    "image with pip (e.g. SWARMLESS_BASE_IMAGE=python:3.11-slim) or vendor the packages "
    "into the function folder"
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


def runtime_files() -> dict[str, bytes]:
    """What a warm image carries of swarmless: ``swarmless/__init__.py`` (empty) and the
    runtime's modules, keyed by their path under ``/opt/swarmless``."""
    runtime = Path(__file__).parent / "runtime"
    files = {"swarmless/__init__.py": b""}
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
    lines = [f"FROM {base_image}", "WORKDIR /function"]
    if mode == "warm":
        check = (
            "python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' "
            f"|| {{ echo 'swarmless: no python3 >= 3.10 in the base image' >&2; "
            f"exit {_NO_PYTHON}; }}"
        )
        lines += [
            "COPY swarmless/ /opt/swarmless/swarmless/",
            "ENV PYTHONPATH=/opt/swarmless",
            f"RUN {check} && python3 -m compileall -q /opt/swarmless",
        ]
    if requirements:
        env = f"SSL_CERT_FILE={_CA_PATH} PIP_CERT={_CA_PATH} " if ca_bundle else ""
        check = (
            "python3 -m pip --version >/dev/null 2>&1 "
            f"|| {{ echo 'swarmless: no pip in the base image' >&2; exit {_NO_PIP}; }}"
        )
        lines.append("COPY function/requirements.txt /function/requirements.txt")
        if ca_bundle:
            lines.append(f"COPY swarmless-ca.pem {_CA_PATH}")
        lines.append(
            f"RUN {check} && {env}python3 -m pip install --no-cache-dir "
            "--disable-pip-version-check -r requirements.txt"
        )
    lines.append("COPY function/ /function/")
    if mode == "warm":
        lines.append('CMD ["python3", "-m", "swarmless.runtime"]')
    elif command:
        lines.append(f"CMD {json.dumps(list(command))}")
    return "\n".join(lines) + "\n"


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


def _context(
    folder: Path, *, generated: str | None, runtime: bool, ca_bundle: Path | None
) -> io.BytesIO:
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
            if runtime:
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
    tag: str,
    mode: str,
    client: docker.DockerClient,
    base_image: str,
    ca_bundle: Path | None = None,
    progress: Callable[[str], None] | None = None,
    labels: dict[str, str] | None = None,
    function: str | None = None,
    command: Sequence[str] | None = None,
) -> str:
    """Build the function folder ``context_dir`` into ``tag``; returns the image id.

    ``mode`` is ``warm`` (the swarmless runtime is added and is the image's command),
    ``cgi`` or ``oneshot`` (``command``, when given, becomes the image's command). A
    ``requirements.txt`` is installed with pip (through ``ca_bundle`` when given); a
    folder with its own ``Dockerfile`` is built as is. ``progress`` receives every line of
    build output (``Step N/M : ...`` starts a step). The image is labelled
    ``swarmless.managed=true`` and ``swarmless.function=<function>`` (default: the last
    part of ``tag``'s repository) plus ``labels``.

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
    own = (folder / "Dockerfile").is_file()
    generated = None
    if not own:
        generated = dockerfile(
            base_image=base_image,
            mode=mode,
            requirements=(folder / "requirements.txt").is_file(),
            ca_bundle=ca_bundle is not None,
            command=command,
        )
    context = _context(folder, generated=generated, runtime=mode == "warm", ca_bundle=ca_bundle)
    name = function or (labels or {}).get(LABEL_FUNCTION) or _function_name(tag)
    all_labels = managed_labels("image", labels, function=name)
    with translate(image=base_image):
        stream = client.api.build(
            fileobj=context,
            custom_context=True,
            tag=tag,
            rm=True,
            forcerm=True,
            pull=False,
            labels=all_labels,
            decode=True,
        )
        image_id = _follow(stream, base_image=base_image, tag=tag, progress=progress)
        if not image_id:
            image_id = str(client.api.inspect_image(tag)["Id"])
    return image_id


def _follow(
    stream: Iterable[dict[str, Any]],
    *,
    base_image: str,
    tag: str,
    progress: Callable[[str], None] | None,
) -> str:
    """Read the build's JSON stream; the image id, or raise with the failing step."""
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
