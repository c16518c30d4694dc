"""Shared fixtures: a real Docker Engine, test images built locally, cleanup by label.

Every container a test starts carries ``swarmless.test=<session id>`` (through the
``labels`` fixture) or the session's instance (``swarmless.instance=test-<session id>``:
plain runs); the session fixture removes whatever of those is left and fails the run if a
swarmless container leaked, or a swarmless network named with the session id (the name
tests give a network of their own). It touches nothing else on the engine.
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import docker
import pytest
import requests

import swarmless

if TYPE_CHECKING:
    from tests.gateway_harness import RunningGateway
    from tests.swarm_harness import Cluster

SESSION = uuid.uuid4().hex[:8]
#: The instance of every plain ``run()`` of this session (and of any gateway a test starts
#: without naming one): the leak check below knows this session's containers by it, not by
#: what other sessions on the engine might also carry.
SESSION_INSTANCE = f"test-{SESSION}"
os.environ["SWARMLESS_INSTANCE"] = SESSION_INSTANCE
BUSYBOX = "swarmless/busybox:latest"
PYTHON = os.environ.get("SWARMLESS_BASE_IMAGE", "swarmless/python:bookworm")


#: The markers of tests that run for minutes: their files start first on a worker.
LONG = ("slow", "soak", "fuzz", "bench")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """How ``make test`` runs the suite (scripts/pytest.sh): the files that use the Swarm
    test cluster alone (``SWARMLESS_TEST_PART=cluster``, one process), and the others
    (``SWARMLESS_TEST_PART=engine``) on 2 pytest-xdist workers, a file to a worker
    (``--dist loadfile``: its module fixtures made once). The cluster's nodes have fixed
    names, one cluster per engine, and its tests kill and cut off nodes: they do not share
    the machine with another worker. Each worker is a session of its own (its own id,
    labels and clean-up); under xdist the files with long tests come first, so that the
    last file a worker takes is a short one."""
    swarm = {i.path for i in items if "cluster" in getattr(i, "fixturenames", ())}
    part = os.environ.get("SWARMLESS_TEST_PART")
    if part in ("cluster", "engine"):
        keep: list[pytest.Item] = []
        drop: list[pytest.Item] = []
        for item in items:
            (keep if (item.path in swarm) == (part == "cluster") else drop).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep
    if os.environ.get("PYTEST_XDIST_WORKER"):  # every worker collects, and sorts alike
        long = {i.path for i in items if any(i.get_closest_marker(m) for m in LONG)}
        items.sort(key=lambda i: i.path not in long)  # stable: the order within each kept


@pytest.fixture(scope="session")
def engine() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as e:
        pytest.exit(f"no Docker Engine answers ({e}); run `make test`, which starts one", 2)
    for image in (BUSYBOX, PYTHON):
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            pytest.exit(f"base image {image} missing; run scripts/base-images.sh", 2)
    started = time.time()
    yield client
    # Only what this session made: other sessions may share the engine.
    leaked = [
        c
        for c in client.api.containers(all=True, filters={"label": "swarmless.managed=true"})
        if c["Created"] >= started - 1 and _ours(c["Labels"])
    ]
    for c in leaked:
        with contextlib.suppress(docker.errors.DockerException):
            client.api.remove_container(c["Id"], force=True)
    # Networks named with this session (tests name the networks they give a gateway so;
    # the harness removes those only when nothing holds them): what a test left.
    networks = sorted(
        n["Name"]
        for n in client.api.networks()
        if n["Name"].startswith("swarmless") and SESSION in n["Name"]
    )
    for name in networks:
        with contextlib.suppress(docker.errors.DockerException):
            client.api.remove_network(name)
    client.close()
    # Enough to tell which test left each: its kind, function, instance and image.
    keys = ("swarmless.kind", "swarmless.function", "swarmless.instance", "swarmless.gateway")
    seen = [
        (c["Names"], c["Image"], c["Status"], {k: c["Labels"][k] for k in keys if k in c["Labels"]})
        for c in leaked
    ]
    assert not leaked, f"swarmless containers left behind: {seen} (and networks: {networks})"
    assert not networks, f"swarmless networks left behind: {networks}"


def _ours(labels: dict[str, str]) -> bool:
    """Made by this session: labelled with it, or of its instance (plain ``run()``s).

    Never "any swarmless container without a gateway label": other sessions and users of
    the engine make those too.
    """
    return (
        labels.get("swarmless.test") == SESSION
        or labels.get("swarmless.instance") == SESSION_INSTANCE
    )


@pytest.fixture(scope="session")
def labels() -> dict[str, str]:
    return {"swarmless.test": SESSION}


@pytest.fixture
def gateway(
    tmp_path: Path, labels: dict[str, str], engine: docker.DockerClient
) -> Iterator[RunningGateway]:
    """A gateway of the test's own (tests/gateway_harness.py), stopped at the end: its
    containers and networks removed."""
    from tests.gateway_harness import RunningGateway

    gw = RunningGateway(tmp_path / "gw", labels).start()
    yield gw
    gw.stop(engine)


@pytest.fixture
def client(engine: docker.DockerClient) -> Iterator[swarmless.Client]:
    c = swarmless.from_env()
    yield c
    c.close()


def _context(dockerfile: str, files: dict[str, str | bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in {"Dockerfile": dockerfile, **files}.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


@pytest.fixture(scope="session")
def build_image(engine: docker.DockerClient) -> Iterator[Callable[..., str]]:
    """Build a small test image from a Dockerfile text and files; removed at the end."""
    built: list[str] = []

    def build(tag: str, dockerfile: str, files: dict[str, str | bytes] | None = None) -> str:
        name = f"swarmless-test/{tag}:{SESSION}"
        engine.images.build(
            fileobj=_context(dockerfile, files or {}),
            custom_context=True,
            tag=name,
            rm=True,
            forcerm=True,
            labels={"swarmless.test": SESSION},
        )
        built.append(name)
        return name

    yield build
    for name in built:
        # An engine too busy to answer within the client's timeout (other sessions share
        # it) leaves the image behind, labelled with this session: not a failed test.
        with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
            engine.images.remove(name, force=True)


def handler_image(build_image: Callable[..., str], tag: str, handler: str) -> str:
    """An image FROM the Python base with ``handler`` as /function/handler.py (warm
    functions name ``handler:<callable>``)."""
    dockerfile = f"FROM {PYTHON}\nCOPY handler.py /function/handler.py\nWORKDIR /function\n"
    return build_image(tag, dockerfile, {"handler.py": handler})


# -- PostgreSQL ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The throwaway cluster of scripts/postgres.sh (started, installed if need be)."""
    from tests.postgres_harness import cluster_url

    try:
        return cluster_url()
    except RuntimeError as e:
        pytest.skip(str(e))


@pytest.fixture
def postgres_database(postgres_url: str) -> Iterator[str]:
    """The URL of an empty PostgreSQL database, dropped after the test."""
    from tests.postgres_harness import database

    with database(postgres_url, f"swarmless_test_{uuid.uuid4().hex[:12]}") as url:
        yield url


# -- the Swarm cluster ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def cluster(engine: docker.DockerClient) -> Iterator[Cluster]:
    """The 3-node Docker-in-Docker Swarm (scripts/swarm-cluster.sh), up for the session."""
    from tests.swarm_harness import cluster_session

    with cluster_session(engine, f"swarmless.test={SESSION}") as c:
        yield c


#: The functions of the warm test image on the Swarm (node and task from the environment).
SWARM_HANDLER = """
import os, time

def where(event, context):
    return {"node": os.environ.get("SWARMLESS_NODE", "?"), "task": os.environ.get("SWARMLESS_TASK")}

def slow(event, context):
    time.sleep(float(event["body"] or b"0.5"))
    return {"node": os.environ.get("SWARMLESS_NODE", "?")}
"""


@pytest.fixture(scope="session")
def swarm_warm_image(
    engine: docker.DockerClient, cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A warm function image (``handler:where``, ``handler:slow``) on every node."""
    from swarmless.build import build_function

    folder = tmp_path_factory.mktemp("swarm-fn")
    (folder / "handler.py").write_text(SWARM_HANDLER)
    tag = f"swarmless-test/swarm-warm:{SESSION}"
    build_function(
        folder,
        tag=tag,
        mode="warm",
        client=engine,
        base_image=PYTHON,
        labels={"swarmless.test": SESSION},
    )
    cluster.load(tag, BUSYBOX)
    yield tag
    engine.images.remove(tag, force=True)
