"""A node that joins the Swarm mid-test serves a function within seconds.

The node is made anew (its engine has no image at all), joins as a worker, and a function
placed on it runs there: its image pulled from the cluster's local registry, by digest.
The time from the join to the first answer is printed (a figure, not an assertion).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from pathlib import Path

import docker
import docker.errors
import pytest

from swarmless.build import build_function
from swarmless.registry import push_image, registry_reference
from tests.conftest import PYTHON, SESSION, SWARM_HANDLER
from tests.registry_harness import cluster_registry, has_image, node_engine
from tests.swarm_harness import Cluster, SwarmGateway

NEW = 4


@pytest.mark.swarm
@pytest.mark.slow
def test_a_node_joined_mid_test_serves_a_function_within_seconds(
    engine: docker.DockerClient,
    cluster: Cluster,
    labels: dict[str, str],
    tmp_path: Path,
) -> None:
    name = f"swarmless-join-{SESSION}"
    folder = tmp_path / "fn"
    folder.mkdir()
    (folder / "handler.py").write_text(f"{SWARM_HANDLER}\nRUN = {uuid.uuid4().hex!r}\n")
    tag = f"swarmless-join-fn/where:{SESSION}"
    image_id = build_function(
        folder, tag=tag, mode="warm", client=engine, base_image=PYTHON, labels=labels
    )
    names = [tag]  # what this test names on the engine, removed at the end
    try:
        with cluster_registry(cluster, name, tmp_path / "reg", labels) as settings:
            # The push names the image in the registry too (as `docker push` needs).
            names.append(registry_reference(tag, settings.registry_push or settings.registry))
            ref = push_image(engine, tag, settings=settings)
            gw = SwarmGateway(cluster, tmp_path / "gw", labels, registry=settings.registry)
            gw.start()
            try:
                # Serving on the three nodes before anything joins.
                gw.deploy(name="before", image=ref, mode="warm", handler="handler:where")
                with gw.http(token=None, timeout=120) as http:
                    r = http.post("/function/before", content=b"")
                assert r.status_code == 200, r.text
                assert r.json()["node"] in cluster.names

                started = time.monotonic()
                new = cluster.add_node(NEW, str(settings.registry))
                joined = time.monotonic()
                assert new in cluster.ready_nodes()
                node = node_engine(cluster, new)
                try:
                    assert not has_image(node, ref)
                    gw.deploy(
                        name="joined",
                        image=ref,
                        mode="warm",
                        handler="handler:where",
                        placement=[f"node.hostname == {new}"],
                    )
                    with gw.http(token=None, timeout=120) as http:
                        r = http.post("/function/joined", content=b"")
                    served = time.monotonic()
                    assert r.status_code == 200, r.text
                    assert r.json()["node"] == new
                    # The bits built here, pulled from the registry by the new node.
                    assert node.api.inspect_image(ref)["Id"] == image_id
                    # The function that ran before still answers.
                    with gw.http(token=None, timeout=60) as http:
                        assert http.post("/function/before", content=b"").status_code == 200
                finally:
                    node.close()
                print(
                    f"\n{new}: made and joined in {joined - started:.1f} s; its first call "
                    f"answered {served - joined:.1f} s after it joined (deploy, pull, start)"
                )
            finally:
                gw.stop()
    finally:
        with contextlib.suppress(Exception):
            cluster.remove_node(NEW)
        for image in names:
            with contextlib.suppress(docker.errors.DockerException):
                engine.api.remove_image(image)
