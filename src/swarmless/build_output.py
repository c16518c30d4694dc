"""Following a build: the engine's JSON stream read step by step, and a failure told as
:class:`BuildError` with the failing step and its output (the generated checks' failures
as advice)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from swarmless.build_dockerfile import NO_PIP, NO_PYTHON
from swarmless.exceptions import ImageNotFound, SwarmlessError

__all__ = ["BuildError", "follow"]

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
    if f"returned a non-zero code: {NO_PIP}" in error:
        raise BuildError(_NO_PIP_HINT.format(base=base_image), step=step)
    if f"returned a non-zero code: {NO_PYTHON}" in error:
        raise BuildError(_NO_PYTHON_HINT.format(base=base_image), step=step)
    summary = f"building {tag} failed at step {step_no} ({step}): {error}"
    raise BuildError(summary, step=step, output="\n".join(output))
