"""Every pull is bounded, not only a deploy's on one engine (test_pull_timeout.py): a
registry that accepts connections and never answers costs a bounded wait and a clear
timeout on each path that pulls, through the one pull (``run_steps.pull_image``):

- a one-shot or cgi call whose image left the engine after its deploy (pulled within
  ``pull_timeout``, or the call's timeout when that is shorter: 504 naming which);
- ``Client.run`` and the 2016 ``dockerrun`` face on it (``settings.pull_timeout``);
- a deploy on the swarm backend (pulled by the manager; needs the test Swarm).

Before, each of these pulled with docker-py's unbounded pull: the engine's own answer
(~25 s for a listener that never answers, its ping's deadline) came back as ImageNotFound,
and a registry that answers the ping and then stalls (:func:`ping_only`) held the
pull for ever (``Client.run`` still waiting after 150 s).

Docker objects: instance names start ``h-pull-`` and carry the label ``h-pull=1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import docker.errors
import h11
import pytest

import swarmless
from swarmless.backends.swarm import SwarmBackend
from swarmless.compat import dockerrun
from swarmless.config import Settings
from swarmless.exceptions import InvocationTimeout
from tests.conftest import BUSYBOX
from tests.registry_harness import nodes_gateway
from tests.reliability.own_gateway import OwnGateway
from tests.reliability.test_pull_timeout import frozen_registry
from tests.swarm_harness import Cluster

pytestmark = pytest.mark.fault

#: On every Docker object these tests make (with an instance named ``h-pull-...``).
LABELS = {"h-pull": "1"}


class PullGateway(OwnGateway):
    """:class:`~tests.reliability.own_gateway.OwnGateway` named ``h-pull-...``."""

    PREFIX = "h-pull"
    labels = LABELS


@pytest.fixture
def gateway(engine: docker.DockerClient, tmp_path: Path) -> Iterator[PullGateway]:
    gw = PullGateway(tmp_path, pull_timeout=3).start()
    yield gw  # what follows runs whether the test passed or not
    gw.stop(engine)


def test_a_call_whose_image_left_the_engine_pulls_within_its_bound(
    gateway: PullGateway, engine: docker.DockerClient
) -> None:
    """Deployed while its image was there; then the image is gone and the registry frozen:
    a oneshot call (timeout 60 s) waits pull_timeout (3 s), a cgi call (timeout 2 s) its
    own timeout; each answers 504 naming what ran out, and no container is left."""
    with frozen_registry() as (port, accepted), gateway.http(timeout=120) as http:
        image = f"127.0.0.1:{port}/h-pull/gone:latest"
        engine.images.get(BUSYBOX).tag(image)
        try:
            for name, mode, timeout in (("one", "oneshot", 60), ("web", "cgi", 2)):
                spec = {"name": name, "image": image, "mode": mode, "command": ["cat"]}
                r = http.post("/system/functions", json={**spec, "timeout": timeout})
                assert r.status_code == 201, r.text
        finally:
            engine.images.remove(image)  # the tag only: busybox stays
        r = http.post("/function/one", content=b"x")
        assert r.status_code == 504, r.text
        assert r.json()["error"] == "timeout", r.text
        assert "pull_timeout" in r.json()["message"], r.text
        assert image in r.json()["message"], r.text
        r = http.post("/function/web", content=b"x")
        assert r.status_code == 504, r.text
        message = r.json()["message"]
        assert "'web' did not finish within 2s" in message, r.text
        assert image in message, r.text
        assert accepted, "the engine never reached the frozen registry"
        assert gateway.containers(engine) == []


def test_client_run_pulls_within_pull_timeout(engine: docker.DockerClient) -> None:
    with frozen_registry() as (port, accepted):
        image = f"127.0.0.1:{port}/h-pull/frozen:latest"
        with swarmless.from_env(pull_timeout=2) as client:
            with pytest.raises(InvocationTimeout, match="pull_timeout") as info:
                client.run(image, ["true"], labels=LABELS)
            assert image in info.value.message
            assert info.value.timeout == 2
            with pytest.raises(InvocationTimeout, match="pull_timeout"):
                client.run(image, ["true"], detach=True, labels=LABELS)
        assert accepted, "the engine never reached the frozen registry"
    assert not engine.api.containers(all=True, filters={"label": "h-pull=1"})


def ping_only(targets: list[str]) -> Callable[[socket.socket], None]:
    """A registry's side of one connection (for :func:`frozen_registry`): it answers the
    engine's ping (``GET /v2/``) and nothing else (a manifest asked for waits for ever);
    the request targets it reads go to ``targets``. The engine gives up on no such pull
    by itself."""

    def serve(conn: socket.socket) -> None:
        http = h11.Connection(h11.SERVER)
        try:
            while True:
                event = http.next_event()
                if event is h11.NEED_DATA:
                    http.receive_data(conn.recv(65536))
                    continue
                if isinstance(event, h11.Request):
                    targets.append(event.target.decode())
                    if event.target != b"/v2/":
                        return  # read, never answered (the connection stays open)
                    headers = [
                        ("docker-distribution-api-version", "registry/2.0"),
                        ("content-type", "application/json"),
                        ("content-length", "2"),
                    ]
                    conn.sendall(http.send(h11.Response(status_code=200, headers=headers)))
                    conn.sendall(http.send(h11.Data(data=b"{}")) + http.send(h11.EndOfMessage()))
                elif isinstance(event, h11.EndOfMessage):
                    http.start_next_cycle()
                else:  # ConnectionClosed, PAUSED
                    return
        except h11.ProtocolError:  # not HTTP (the engine tries TLS first): refused at once
            conn.close()
        except OSError:
            return

    return serve


def test_client_run_gives_up_on_a_registry_that_stalls_after_its_ping() -> None:
    """What no engine deadline ends: the registry answers the ping, then holds the
    manifest's request (before, ``Client.run`` waited for ever)."""
    targets: list[str] = []
    with frozen_registry(serve=ping_only(targets)) as (port, _):
        image = f"127.0.0.1:{port}/h-pull/stalled:latest"
        with swarmless.from_env(pull_timeout=3) as client:
            t0 = time.monotonic()
            with pytest.raises(InvocationTimeout, match="pull_timeout"):
                client.run(image, ["true"], labels=LABELS)
            took = time.monotonic() - t0
    assert "/v2/" in targets, targets
    assert any("/manifests/" in t for t in targets), targets
    print(f"\n[pull timeout] stalling registry: gave up after {took:.1f} s (pull_timeout 3 s)")


def test_dockerrun_pulls_within_pull_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 2016 face: its ``timeout`` bounds each Engine API request (as docker-py's did,
    which never bounded a pull); ``SWARMLESS_PULL_TIMEOUT`` bounds the pull."""
    monkeypatch.setenv("SWARMLESS_PULL_TIMEOUT", "2")
    with frozen_registry() as (port, _):
        client = dockerrun.from_env(timeout=30)
        try:
            with pytest.raises(InvocationTimeout, match="took over 2 s"):
                client.run(f"127.0.0.1:{port}/h-pull/frozen:latest", "true", labels=LABELS)
        finally:
            client.close()


@pytest.mark.swarm
def test_a_swarm_deploy_pulls_within_pull_timeout(cluster: Cluster, tmp_path: Path) -> None:
    """The swarm backend's pull (by the manager) is the same bounded one: the registry is
    on the host's side of the nodes' bridge, where the manager reaches it."""
    host = nodes_gateway(cluster)
    instance = f"h-pull-{uuid.uuid4().hex[:8]}"
    settings = Settings.load(
        tmp_path / "none.yml",
        data_dir=tmp_path / "data",
        instance=instance,
        backend="swarm",
        docker_host=cluster.manager_url,
        network=f"swarmless-swarm-{instance}",
        pull_timeout=3,
    )

    async def scenario(image: str) -> None:
        backend = SwarmBackend(settings, labels=LABELS)
        await backend.start()
        try:
            t0 = time.monotonic()
            with pytest.raises(InvocationTimeout, match="pull_timeout"):
                await backend.ensure_image(image)
            print(f"\n[pull timeout] swarm manager: gave up after {time.monotonic() - t0:.1f} s")
        finally:
            await backend.close()

    with frozen_registry(host) as (port, accepted):
        try:
            asyncio.run(scenario(f"{host}:{port}/h-pull/frozen:latest"))
        finally:
            with contextlib.suppress(docker.errors.DockerException):
                cluster.manager.networks.get(settings.network).remove()
        assert accepted, "the manager never reached the frozen registry"
