"""The self-scaling database on swarmless, as building blocks (``cli.py`` and the tests use them).

- :func:`build_image`: the one image (PostgreSQL 15 from Debian on the voting app's base;
  ``function/``: the primary's controller, the replica's script, the front end), tagged with
  a hash of its build context, so a second build builds nothing;
- :func:`specs`: the two functions, ``selfdb`` (the primary: warm, exactly one container,
  ``docker: scoped``; its handler answers its status) and ``selfdb-front`` (warm WSGI);
- :func:`deploy`, :func:`status`, :func:`wait_for`: deploy them on a gateway, ask the primary
  what it sees, wait (with a deadline) until it sees what a caller wants.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import docker
import httpx

from swarmless.exceptions import SwarmlessError
from swarmless.sdk.gateway import GatewayClient
from swarmless.spec import FunctionSpec

HERE = Path(__file__).resolve().parent
VOTING_APP = HERE.parent / "voting-app"
if str(VOTING_APP) not in sys.path:
    sys.path.insert(0, str(VOTING_APP))

import votingapp  # noqa: E402  (the voting app's image helpers and its base image)

PRIMARY = "selfdb"
FRONT = "selfdb-front"
PYTHON = os.environ.get("SWARMLESS_BASE_IMAGE", "swarmless/python:bookworm")


def build_image(
    engine: docker.DockerClient,
    *,
    python: str = PYTHON,
    say: Callable[[str], None] = lambda _msg: None,
) -> str:
    """The example's image (built when missing; the apt step reaches Debian's mirror once)."""
    try:
        engine.images.get(python)
    except docker.errors.ImageNotFound:
        raise SwarmlessError(
            f"the base image {python} is missing; build it: bash scripts/base-images.sh"
        ) from None
    # Only the voting app's base (Python, psycopg2, the Docker SDK), not its other images.
    base_files = votingapp._files(votingapp.HERE / "images" / "base")
    base = votingapp._build(engine, "base", base_files, {"PYTHON": python}, say)
    files = {
        **votingapp._files(HERE / "image"),
        **votingapp._files(HERE / "function", "function/"),
        **votingapp._runtime_files(),
    }
    tag = votingapp._tag("selfdb", files, {"BASE": base})
    tag = tag.replace(f"{votingapp.IMAGE_REPO}/", "swarmless-selfdb/", 1)
    try:
        engine.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    say(f"building {tag}")
    log: list[str] = []
    for chunk in engine.api.build(
        fileobj=votingapp._tar(files),
        custom_context=True,
        tag=tag,
        buildargs={"BASE": base},
        rm=True,
        forcerm=True,
        decode=True,
    ):
        log.append(str(chunk.get("stream", "")))
        if "error" in chunk:
            tail = "".join(log)[-2000:].strip()
            raise SwarmlessError(f"building {tag} failed: {chunk['error'].strip()}\n{tail}")
    return tag


def specs(
    image: str,
    password: str,
    *,
    replicas: int = 2,
    fsync: bool = True,
    labels: Mapping[str, str] | None = None,
    memory: str = "256m",
) -> list[FunctionSpec]:
    """The primary (one warm container that never idles out) and the front end."""
    extra = {"example": "self-scaling-db", **(labels or {})}
    primary = FunctionSpec(
        name=PRIMARY,
        image=image,
        mode="warm",
        handler="primary:status",
        handler_kind="python",
        env={
            "SELFDB_PASSWORD": password,
            "SELFDB_REPLICAS": str(replicas),
            "SELFDB_IMAGE": image,
            "SELFDB_FSYNC": "on" if fsync else "off",
        },
        docker="scoped",
        min_containers=1,
        max_containers=1,
        concurrency=8,
        memory=memory,
        timeout=30,
        # The replicas die with the primary (0 s): they would have nothing to stream from.
        children_timeout=0,
        labels=extra,
    )
    front = FunctionSpec(
        name=FRONT,
        image=image,
        mode="warm",
        handler="front:app",
        handler_kind="wsgi",
        env={"SELFDB_PRIMARY": PRIMARY, "SELFDB_PASSWORD": password},
        concurrency=8,
        max_containers=2,
        idle_timeout=300,
        timeout=30,
        labels=extra,
    )
    return [primary, front]


def deploy(gateway: GatewayClient, wanted: list[FunctionSpec]) -> None:
    for spec in wanted:
        gateway.deploy(spec)


def status(http: httpx.Client) -> dict[str, Any]:
    """The primary's view (``GET /function/selfdb``); ``{}`` while it does not answer."""
    try:
        r = http.get(f"/function/{PRIMARY}", timeout=30)
    except httpx.HTTPError:
        return {}
    if r.status_code != 200:
        return {}
    found: dict[str, Any] = json.loads(r.content)
    return found


def streaming(view: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [r for r in view.get("replicas", []) if r.get("state") == "streaming"]


def wait_for(
    http: httpx.Client,
    want: Callable[[dict[str, Any]], Any],
    timeout: float,
    what: str,
) -> Any:
    """Poll the primary's status until ``want(view)`` is truthy; its value. A deadline, then
    an error that shows the last view (its events say what the controller did)."""
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = {}
    while True:
        view = status(http)
        if view.get("error"):
            raise SwarmlessError(f"the primary failed: {view['error']}")
        got = want(view) if view else None
        if got:
            return got
        if time.monotonic() > deadline:
            raise SwarmlessError(
                f"{what}: not within {timeout:.0f}s; last view:\n{json.dumps(view, indent=1)}"
            )
        time.sleep(0.5)
