"""Function images through a registry (swarmless.registry, swarmless.registry_local).

- the ``registry`` settings, checked at the edge;
- ``swarmless registry up|down``: a real registry (Debian's docker-registry) on the host's
  engine, idempotent, removing only its own instance's objects, its data kept across a
  new ``up``; a push where the engine does not trust plain HTTP says what to do;
- on the 3-node test Swarm: a function built here and pushed runs on a node that never had
  its image (checked with that node's engine before and after), by digest.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from swarmless import registry_local
from swarmless.build import build_function
from swarmless.config import Settings
from swarmless.exceptions import InvalidArgument
from swarmless.registry import RegistryError, push_image, registry_reference
from tests.conftest import PYTHON, SESSION, SWARM_HANDLER
from tests.registry_harness import (
    cluster_registry,
    credentials,
    free_port,
    has_image,
    node_engine,
    remove_from_node,
)
from tests.swarm_harness import Cluster, SwarmGateway, wait_for

NODE = "swarmless-node-3"  # a worker: the gateway's pins pull onto the manager, not here


# -- settings ------------------------------------------------------------------------------


def test_registry_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWARMLESS_REGISTRY", raising=False)
    yml = tmp_path / "swarmless.yml"
    yml.write_text(
        "settings:\n  registry:\n    address: 10.0.0.5:5000/team\n    push: 127.0.0.1:5000\n"
        "    username: ci\n    password_file: ~/registry-password\n"
    )
    s = Settings.load(yml)
    assert (s.registry, s.registry_push, s.registry_username) == (
        "10.0.0.5:5000/team",
        "127.0.0.1:5000",
        "ci",
    )
    assert s.registry_password_file == Path("~/registry-password").expanduser()
    assert Settings.load(yml, registry="reg.example.com").registry == "reg.example.com"
    yml.write_text("settings:\n  registry: {address: r.example, password: hunter2}\n")
    with pytest.raises(InvalidArgument, match="never written inline"):
        Settings.load(yml)
    for bad in ("http://r.example", "r.example/UPPER", "a b"):
        with pytest.raises(InvalidArgument, match="HOST"):
            Settings.load(tmp_path / "none.yml", registry=bad)
    with pytest.raises(InvalidArgument, match="registry_username"):
        Settings.load(tmp_path / "none.yml", registry="r.example", registry_password_file="/x")
    with pytest.raises(InvalidArgument, match="registry_push"):
        Settings.load(tmp_path / "none.yml", registry_push="127.0.0.1:5000")
    assert (
        registry_reference("swarmless-fn/a", "r.example/t") == "r.example/t/swarmless-fn/a:latest"
    )
    assert registry_reference("other.io:443/x/a:2", "r.example") == "r.example/x/a:2"


# -- the local registry on the host's engine -----------------------------------------------


def _catalog(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/_catalog", timeout=5) as r:
        return list(json.load(r)["repositories"])


@pytest.fixture
def own_settings(tmp_path: Path) -> Iterator[tuple[Settings, str]]:
    """Settings of a throwaway instance and its registry's name; removed after."""
    name = f"swarmless-reg-{SESSION}-{uuid.uuid4().hex[:6]}"
    settings = Settings.load(tmp_path / "none.yml", instance=name, data_dir=tmp_path / "data")
    yield settings, name
    client = docker.from_env()
    with contextlib.suppress(Exception):
        registry_local.down(client, settings, name=name, volume=True)
    client.close()


def test_registry_up_down_idempotent_and_scoped(
    engine: docker.DockerClient,
    own_settings: tuple[Settings, str],
    labels: dict[str, str],
    tmp_path: Path,
) -> None:
    settings, name = own_settings
    port = free_port("127.0.0.1")
    first = registry_local.up(
        engine, settings, name=name, listen=[f"127.0.0.1:{port}"], labels=labels
    )
    assert first.state == "running"
    assert first.listen == (f"127.0.0.1:{port}",)
    again = registry_local.up(
        engine, settings, name=name, listen=[f"127.0.0.1:{port}"], labels=labels
    )
    assert again.id == first.id  # nothing changed, nothing made anew
    attrs = engine.api.inspect_container(first.id)
    assert attrs["Config"]["Labels"]["swarmless.registry"] == "true"
    assert attrs["Config"]["Labels"]["swarmless.instance"] == settings.instance
    assert engine.api.inspect_volume(first.volume)["Labels"]["swarmless.registry"] == "true"

    # A real registry: the host's engine pushes to it on 127.0.0.1 (trusted by default).
    pushed = Settings.load(tmp_path / "none.yml", registry=f"127.0.0.1:{port}")
    image = f"swarmless-reg/busybox:{SESSION}"
    ref = push_image(engine, image, settings=pushed, source="swarmless/busybox:latest")
    assert ref.startswith(f"127.0.0.1:{port}/swarmless-reg/busybox@sha256:")
    assert "swarmless-reg/busybox" in _catalog(port)

    # Another instance's registry, with the same label, is none of this one's business.
    other = Settings.load(
        tmp_path / "none.yml", instance=f"{name}-o", data_dir=tmp_path / "other-data"
    )
    other_port = free_port("127.0.0.1")
    theirs = registry_local.up(
        engine, other, name=f"{name}-o", listen=[f"127.0.0.1:{other_port}"], labels=labels
    )
    try:
        # Asked anew on another port: a new container on the same data.
        moved = free_port("127.0.0.1")
        anew = registry_local.up(
            engine, settings, name=name, listen=[f"127.0.0.1:{moved}"], labels=labels
        )
        assert anew.id != first.id
        assert anew.volume == first.volume
        assert "swarmless-reg/busybox" in _catalog(moved)
        # down removes its own container (and volume when asked), once; the other stays.
        assert registry_local.down(engine, settings, name=name, volume=True) == [
            name,
            first.volume,
        ]
        assert registry_local.down(engine, settings, name=name, volume=True) == []
        assert registry_local.status(engine, settings, name=name).state == "absent"
        # Named as the other's: still not this instance's to remove.
        assert registry_local.down(engine, settings, name=f"{name}-o", volume=True) == []
        assert registry_local.status(engine, other, name=f"{name}-o").state == "running"
        assert engine.api.inspect_container(theirs.id)["State"]["Running"]
    finally:
        registry_local.down(engine, other, name=f"{name}-o", volume=True)
        with contextlib.suppress(docker.errors.ImageNotFound):
            engine.api.remove_image(f"127.0.0.1:{port}/{image}")


def test_a_registry_that_asks_for_credentials(
    engine: docker.DockerClient,
    own_settings: tuple[Settings, str],
    labels: dict[str, str],
    tmp_path: Path,
) -> None:
    settings, name = own_settings
    password = uuid.uuid4().hex
    htpasswd, secret = credentials(tmp_path / "auth", "ci", password)
    port = free_port("127.0.0.1")
    reg = registry_local.up(
        engine, settings, name=name, listen=[f"127.0.0.1:{port}"], labels=labels, htpasswd=htpasswd
    )
    assert reg.auth
    image = f"swarmless-reg/auth:{SESSION}"
    anonymous = Settings.load(tmp_path / "none.yml", registry=f"127.0.0.1:{port}")
    try:
        with pytest.raises(RegistryError, match="registry_username") as refused:
            push_image(engine, image, settings=anonymous, source="swarmless/busybox:latest")
        (tmp_path / "wrong").write_text("not the password\n")
        wrong = Settings.load(
            tmp_path / "none.yml",
            registry=f"127.0.0.1:{port}",
            registry_username="ci",
            registry_password_file=tmp_path / "wrong",
        )
        with pytest.raises(RegistryError, match="registry_username"):
            push_image(engine, image, settings=wrong, source="swarmless/busybox:latest")
        given = Settings.load(
            tmp_path / "none.yml",
            registry=f"127.0.0.1:{port}",
            registry_username="ci",
            registry_password_file=secret,
        )
        ref = push_image(engine, image, settings=given, source="swarmless/busybox:latest")
        assert ref.startswith(f"127.0.0.1:{port}/swarmless-reg/auth@sha256:")
        # The password is in its file only: not in the settings, not in an error.
        assert password not in repr(given)
        assert password not in str(refused.value)
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            engine.api.remove_image(f"127.0.0.1:{port}/{image}")


def test_a_push_the_engine_does_not_trust_says_what_to_do(
    engine: docker.DockerClient, own_settings: tuple[Settings, str], labels: dict[str, str]
) -> None:
    """Plain HTTP on an address outside 127.0.0.0/8: the engine refuses, the error names
    insecure-registries."""
    settings, name = own_settings
    ipam = engine.api.inspect_network("bridge")["IPAM"]["Config"][0]
    # The host's address on docker0 (the bridge's gateway, its subnet's first address).
    bridge = ipam.get("Gateway") or str(next(ipaddress.ip_network(ipam["Subnet"]).hosts()))
    port = free_port("127.0.0.1", bridge)
    registry_local.up(
        engine, settings, name=name, listen=[f"127.0.0.1:{port}", f"{bridge}:{port}"], labels=labels
    )
    untrusted = Settings.load(registry=f"{bridge}:{port}")
    with pytest.raises(RegistryError, match="insecure-registries"):
        push_image(engine, f"swarmless-reg/x:{SESSION}", settings=untrusted, source=PYTHON)
    # The name it gave the image to push is gone with the failed push.
    with pytest.raises(docker.errors.ImageNotFound):
        engine.api.inspect_image(f"{bridge}:{port}/swarmless-reg/x:{SESSION}")


# -- on the Swarm ------------------------------------------------------------------------


def _images(gw: SwarmGateway, function: str) -> set[str]:
    """The images the services of ``function`` run (one service per worker)."""
    services = gw.services(**{"swarmless.function": function})
    assert services, f"no service of {function}"
    return {s["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] for s in services}


@pytest.mark.swarm
@pytest.mark.slow
def test_a_pushed_function_runs_on_a_node_that_never_had_its_image(
    engine: docker.DockerClient,
    cluster: Cluster,
    labels: dict[str, str],
    tmp_path: Path,
) -> None:
    name = f"swarmless-reg-{SESSION}"
    folder = tmp_path / "fn"
    folder.mkdir()
    # Unique content: no node can have this image from an earlier run.
    (folder / "handler.py").write_text(f"{SWARM_HANDLER}\nRUN = {uuid.uuid4().hex!r}\n")
    tag = f"swarmless-reg-fn/where:{SESSION}"
    image_id = build_function(
        folder, tag=tag, mode="warm", client=engine, base_image=PYTHON, labels=labels
    )
    node = node_engine(cluster, NODE)
    ref = ""
    try:
        registry = cluster_registry(cluster, name, tmp_path / "reg", labels, user="swarmless")
        with registry as settings:
            ref = push_image(engine, tag, settings=settings)
            assert ref.startswith(f"{settings.registry}/swarmless-reg-fn/where@sha256:")
            assert not has_image(node, ref)
            assert not has_image(node, image_id)
            # The registry asks for credentials: the node cannot pull on its own.
            with pytest.raises(docker.errors.APIError, match=r"(?i)auth"):
                node.api.pull(ref)
            by_tag = f"{settings.registry}/swarmless-reg-fn/where:{SESSION}"
            gw = SwarmGateway(
                cluster,
                tmp_path / "gw",
                labels,
                registry=settings.registry,
                registry_username=settings.registry_username,
                registry_password_file=settings.registry_password_file,
            ).start()
            try:
                gw.deploy(
                    name="pulled",
                    image=ref,
                    mode="warm",
                    handler="handler:where",
                    placement=[f"node.hostname == {NODE}"],
                )
                with gw.http(token=None, timeout=120) as http:
                    r = http.post("/function/pulled", content=b"")
                assert r.status_code == 200, r.text
                assert r.json()["node"] == NODE
                # The node pulled it from the registry (with the credentials the gateway's
                # service carried): the very bits built here.
                assert has_image(node, ref)
                assert node.api.inspect_image(ref)["Id"] == image_id
                assert _images(gw, "pulled") == {ref}

                # Named by its tag, it still runs by digest: the one the deploy pinned.
                gw.deploy(name="tagged", image=by_tag, mode="warm", handler="handler:where")
                with gw.http(token=None, timeout=120) as http:
                    assert http.post("/function/tagged", content=b"").status_code == 200
                assert _images(gw, "tagged") == {ref}
            finally:
                for local in (tag, f"{settings.registry_push}/swarmless-reg-fn/where:{SESSION}"):
                    with contextlib.suppress(docker.errors.DockerException):
                        engine.api.remove_image(local)
                gw.stop()
                for node_name in cluster.names:
                    other = node_engine(cluster, node_name)
                    with contextlib.suppress(docker.errors.DockerException, AssertionError):
                        remove_from_node(other, ref)
                    with contextlib.suppress(docker.errors.DockerException):
                        other.api.remove_image(by_tag)
                    other.close()
        wait_for(lambda: not has_image(node, ref), 10, "the image gone from the node")
    finally:
        node.close()
        with contextlib.suppress(docker.errors.DockerException):
            engine.api.remove_image(tag)


# -- swarmless build / deploy with a registry ----------------------------------------------


def test_build_and_deploy_push_and_deploy_by_digest(
    engine: docker.DockerClient,
    own_settings: tuple[Settings, str],
    labels: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CLI pushes what it builds, and the gateway is given the digest reference."""
    from click.testing import CliRunner

    from swarmless.cli import main
    from tests.gateway_harness import TOKEN, RunningGateway

    settings, name = own_settings
    port = free_port("127.0.0.1")
    registry_local.up(engine, settings, name=name, listen=[f"127.0.0.1:{port}"], labels=labels)
    image = f"swarmless-reg-cli/hello:{SESSION}"
    folder = tmp_path / "app"
    (folder / "hello").mkdir(parents=True)
    (folder / "hello" / "handler.py").write_text(
        "def hello(event, context):\n    return b'hello from the registry'\n"
    )
    (folder / "swarmless.yml").write_text(
        f"settings:\n  registry: 127.0.0.1:{port}\n"
        f"functions:\n  - name: reghello\n    build: ./hello\n    image: {image}\n"
        "    mode: warm\n    handler: handler:hello\n"
    )
    monkeypatch.chdir(folder)
    for var in ("SWARMLESS_REGISTRY", "SWARMLESS_REGISTRY_PUSH", "SWARMLESS_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    gw = RunningGateway(tmp_path / "gw", labels).start()
    pushed = f"127.0.0.1:{port}/{image}"
    try:
        env = {"SWARMLESS_GATEWAY_URL": gw.url, "SWARMLESS_TOKEN": TOKEN, "COLUMNS": "200"}
        runner = CliRunner(env=env)
        built = runner.invoke(main, ["build", "."], catch_exceptions=False)
        assert built.exit_code == 0, built.output
        assert f"pushed {pushed} -> 127.0.0.1:{port}/swarmless-reg-cli/hello@sha256:" in (
            built.output
        )
        done = runner.invoke(main, ["deploy", "."], catch_exceptions=False)
        assert done.exit_code == 0, done.output
        with gw.http() as http:
            spec = http.get("/system/functions/reghello").json()
            deployed = spec.get("spec", spec)["image"]
        assert deployed.startswith(f"127.0.0.1:{port}/swarmless-reg-cli/hello@sha256:")
        # The digest is the one the registry serves for the tag.
        digests = engine.api.inspect_image(pushed)["RepoDigests"]
        assert deployed in digests
        with gw.http(token=None) as http:
            r = http.post("/function/reghello", content=b"")
        assert r.status_code == 200, r.text
        assert r.content == b"hello from the registry"
        assert "swarmless-reg-cli/hello" in _catalog(port)
    finally:
        gw.stop(engine)
        for local in (image, pushed):
            with contextlib.suppress(docker.errors.ImageNotFound):
                engine.api.remove_image(local, force=True)
