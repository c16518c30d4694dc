"""Image pulls are bounded (``pull_timeout``): a registry that accepts connections and
never answers costs a deploy ``pull_timeout`` seconds and a clear 504, not a request that
hangs, and it is not taken for an engine that does not answer (the gateway stays healthy
and deploys what is on the engine); a pull within the bound still pulls (a local
registry: by tag and by digest).

Docker objects: instance names start ``h5rel-``, and carry ``swarmless.test=h5rel``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from swarmless import registry_local
from swarmless.backends.docker import DockerBackend
from swarmless.config import Settings
from swarmless.exceptions import ImageNotFound
from tests.conftest import BUSYBOX
from tests.registry_harness import free_port
from tests.reliability.h5_harness import LABELS, H5Gateway, remove_own

pytestmark = pytest.mark.fault


@contextlib.contextmanager
def frozen_registry(
    host: str = "127.0.0.1", serve: Callable[[socket.socket], None] | None = None
) -> Iterator[tuple[int, list[socket.socket]]]:
    """A TCP listener on ``host`` that accepts connections and never answers, or hands
    each one to ``serve`` (in a thread of its own)."""
    srv = socket.socket()
    srv.bind((host, 0))
    srv.listen(64)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            accepted.append(conn)
            if serve is not None:
                name = "h5rel-registry-conn"
                threading.Thread(target=serve, args=(conn,), daemon=True, name=name).start()

    thread = threading.Thread(target=accept, daemon=True, name="h5rel-frozen-registry")
    thread.start()
    try:
        yield int(srv.getsockname()[1]), accepted
    finally:
        with contextlib.suppress(OSError):  # wakes the accept() (close() alone does not)
            srv.shutdown(socket.SHUT_RDWR)
        srv.close()
        for conn in accepted:
            with contextlib.suppress(OSError):  # wakes a reader (close() alone does not)
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        thread.join(5)


@pytest.fixture
def gateway(engine: docker.DockerClient, tmp_path: Path) -> Iterator[H5Gateway]:
    gw = H5Gateway(tmp_path, pull_timeout=5).start()
    try:
        yield gw
    finally:
        gw.stop(engine)
        remove_own(engine, gw.instance)


def test_a_frozen_registry_costs_a_deploy_pull_timeout_and_a_clear_504(
    gateway: H5Gateway,
) -> None:
    with frozen_registry() as (port, accepted), gateway.http(timeout=120) as http:
        image = f"127.0.0.1:{port}/h5rel/frozen:latest"
        spec = {"name": "frozen", "image": image, "mode": "oneshot", "command": ["cat"]}
        t0 = time.monotonic()
        r = http.post("/system/functions", json=spec)
        took = time.monotonic() - t0
        assert r.status_code == 504, r.text
        body = r.json()
        assert body["error"] == "timeout", body
        assert "pull_timeout" in body["message"], body
        assert image in body["message"], body
        # Given up by the gateway (its 504 names pull_timeout): the engine alone answers a
        # 500 of its own after ~25 s (its registry ping's deadline), a 422 for the deploy,
        # and a registry that answers that ping and then freezes holds the pull for as
        # long as it likes.
        assert accepted, "the engine never reached the frozen registry"
        # Not an engine that does not answer: healthy, and what is there deploys and runs.
        health = http.get("/healthz")
        assert health.status_code == 200, health.text
        assert health.json()["status"] == "ok", health.text
        spec = {"name": "echo", "image": BUSYBOX, "mode": "oneshot", "command": ["cat"]}
        assert http.post("/system/functions", json=spec).status_code == 201
        r = http.post("/function/echo", content=b"still here")
        assert (r.status_code, r.content) == (200, b"still here"), r.text
        assert http.get("/system/function/frozen").status_code == 404
    print(f"\n[pull timeout] frozen registry: 504 after {took:.1f} s (pull_timeout 5 s)")


@pytest.fixture
def registry(engine: docker.DockerClient, tmp_path: Path) -> Iterator[int]:
    """A local registry of this test (``swarmless/registry:bookworm``) on 127.0.0.1."""
    name = f"h5rel-reg-{uuid.uuid4().hex[:8]}"
    settings = Settings.load(tmp_path / "none.yml", instance=name, data_dir=tmp_path / "reg")
    port = free_port("127.0.0.1")
    try:
        registry_local.up(engine, settings, name=name, listen=[f"127.0.0.1:{port}"], labels=LABELS)
    except Exception as e:  # the registry image is not built here
        pytest.skip(f"no local registry: {e}")
    try:
        yield port
    finally:
        with contextlib.suppress(Exception):
            registry_local.down(engine, settings, name=name, volume=True)


def test_a_pull_within_the_bound_still_pulls_by_tag_and_by_digest(
    engine: docker.DockerClient, registry: int, tmp_path: Path
) -> None:
    repo = f"127.0.0.1:{registry}/h5rel/busybox"
    engine.images.get(BUSYBOX).tag(repo, "t")
    for line in engine.api.push(repo, tag="t", stream=True, decode=True):
        assert "error" not in line, line
    digest = engine.api.inspect_image(f"{repo}:t")["RepoDigests"][0]
    engine.images.remove(f"{repo}:t")  # the tag only: busybox stays
    instance = f"h5rel-{uuid.uuid4().hex[:8]}"
    settings = Settings.load(
        tmp_path / "none.yml",
        data_dir=tmp_path / "data",
        instance=instance,
        network=f"swarmless-{instance}",
        pull_timeout=60,
    )

    async def scenario() -> None:
        backend = DockerBackend(settings, labels=LABELS)
        await backend.start()
        try:
            await backend.ensure_image(f"{repo}:t")
            await backend.ensure_image(digest)
            with pytest.raises(ImageNotFound, match="h5rel/none"):
                await backend.ensure_image(f"127.0.0.1:{registry}/h5rel/none:t")
        finally:
            await backend.close()

    try:
        asyncio.run(scenario())
        assert engine.api.inspect_image(f"{repo}:t")["Id"] == engine.images.get(BUSYBOX).id
    finally:
        with contextlib.suppress(docker.errors.DockerException):
            engine.images.remove(f"{repo}:t")
        remove_own(engine, instance)
