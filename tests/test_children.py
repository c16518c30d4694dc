"""Child containers outlive their caller (``children_timeout``), and their end is on its record.

A one-shot call of a ``docker: scoped`` function starts a detached child through the scoped
Docker API and exits at once, as the 2016 vote page did: the child goes on, and how it ended
(exit code, duration) shows on the call's record (``GET /invocations/{id}``, ``detached``).
A child still running ``children_timeout`` seconds after its caller exited is killed, and
that is a failure on the record. Orphans whose parent's death went unseen get the same
timeout from the sweep.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import docker
import pytest

from swarmless.engine import endpoint
from swarmless.proxy import Caller, ProxyRequest, check
from swarmless.proxy.children import ChildWatch
from swarmless.proxy.engine_view import EngineView
from tests.conftest import BUSYBOX, SESSION
from tests.gateway_harness import RunningGateway
from tests.test_proxy import sdk_image  # noqa: F401  (the image with the Docker SDK)
from tests.waiting import wait_until

FIRE = (
    "import docker, sys; c = docker.from_env(); "
    "k = c.containers.run('swarmless/busybox:latest', ['sh', '-c', sys.argv[1]], "
    "detach=True, auto_remove=True); print(k.id)"
)


# -- what the policy forces ---------------------------------------------------------------


def _create(caller: Caller, labels: dict[str, str]) -> Any:
    body = json.dumps({"Image": "swarmless/busybox", "Labels": labels}).encode()
    images = {"docker.io/swarmless/busybox:latest": "sha256:" + "b" * 64}
    return check(
        ProxyRequest(
            "POST",
            "/v1.41/containers/create",
            "",
            body,
            caller,
            images=images,
            image_labels={
                "sha256:" + "b" * 64: {
                    "swarmless.parent-call": "forged",
                    "swarmless.children-timeout": "9",
                }
            },
        )
    )


def test_a_child_carries_its_call_and_timeout_and_cannot_forge_them() -> None:
    caller = Caller(
        container="c" * 64, function="f", network="n", call_id="call-1", children_timeout=30
    )
    v = _create(caller, {"app": "x"})
    assert v.allowed, v.message
    labels = json.loads(v.body)["Labels"]
    assert labels["swarmless.parent-call"] == "call-1"
    assert labels["swarmless.children-timeout"] == "30"
    # A warm worker's child names no call; what its image carries is blanked.
    warm = Caller(container="c" * 64, function="f", network="n")
    labels = json.loads(_create(warm, {}).body)["Labels"]
    assert labels["swarmless.parent-call"] == ""
    assert labels["swarmless.children-timeout"] == "0"
    for forged in ("swarmless.parent-call", "swarmless.children-timeout"):
        assert _create(caller, {forged: "x"}).rule == "labels"


# -- against the engine -------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(
    engine: docker.DockerClient, labels: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Any:
    g = RunningGateway(
        tmp_path_factory.mktemp("children"),
        labels,
        network=f"swarmless-test-children-{SESSION}",
        proxy_images=(BUSYBOX,),
    ).start()
    yield g
    g.stop(engine)


def _deploy_firing(gw: RunningGateway, name: str, image: str, *, children_timeout: int) -> None:
    """Deploy ``name``: a one-shot ``docker: scoped`` function that fires a detached child."""
    with gw.http() as http:
        r = http.post(
            "/system/functions",
            json={
                "name": name,
                "image": image,
                "command": ["python3", "-c", FIRE],
                "docker": "scoped",
                "children_timeout": children_timeout,
            },
        )
        assert r.status_code in (200, 201), r.text


def _fire(gw: RunningGateway, name: str, child: str) -> tuple[str, str]:
    """Call ``name`` (which starts a detached child running ``child``): (call id, child id)."""
    with gw.http(token=None, timeout=120) as http:
        r = http.post(f"/function/{name}", headers={"X-Swarmless-Args": json.dumps([child])})
    assert r.status_code == 200, r.text
    return r.headers["x-call-id"], r.text.strip()


def _detached(gw: RunningGateway, call_id: str) -> Any:
    with gw.http() as http:
        r = http.get(f"/invocations/{call_id}")
    return r.json() if r.status_code == 200 and r.json().get("detached") else None


def _running(engine: docker.DockerClient, cid: str) -> bool:
    found = engine.api.containers(filters={"id": cid})
    return bool(found) and found[0]["State"] == "running"


def test_a_detached_child_outlives_its_call_and_its_end_is_recorded(
    gw: RunningGateway,
    engine: docker.DockerClient,
    sdk_image: str,  # noqa: F811
) -> None:
    _deploy_firing(gw, "fire", sdk_image, children_timeout=30)
    call_id, child = _fire(gw, "fire", "sleep 2; echo done; exit 3")
    assert _running(engine, child), "the child died with its caller"
    rec = wait_until(lambda: _detached(gw, call_id), 60, "the child's end on the call's record")
    assert rec["status"] == "succeeded"
    assert rec["error"] is None
    (ended,) = rec["detached"]
    assert ended["container"] == child[:12]
    assert ended["exit_code"] == 3
    assert ended["killed"] is False
    assert ended["error"] == f"child container {child[:12]} exited with status 3"
    assert 1500 <= ended["duration_ms"] < 30_000
    assert ended["finished_at"] >= ended["started_at"]
    # The list shows it too.
    with gw.http() as http:
        listed = http.get("/invocations", params={"function": "fire"}).json()
    assert [r["detached"] for r in listed if r["id"] == call_id] == [rec["detached"]]


def test_a_child_still_running_at_children_timeout_is_killed_and_the_call_fails(
    gw: RunningGateway,
    engine: docker.DockerClient,
    sdk_image: str,  # noqa: F811
) -> None:
    _deploy_firing(gw, "hang", sdk_image, children_timeout=2)
    t0 = time.monotonic()
    call_id, child = _fire(gw, "hang", "sleep 300")
    rec = wait_until(lambda: _detached(gw, call_id), 60, "the killed child on the record")
    assert time.monotonic() - t0 >= 2.0
    wait_until(lambda: not _exists(engine, child), 10, "the killed child to be removed")
    (ended,) = rec["detached"]
    assert ended["killed"] is True
    assert ended["exit_code"] == 137
    assert "still running 2s after its caller exited (children_timeout): killed" in rec["error"]
    assert rec["error"] == ended["error"]


def test_orphans_whose_parent_died_unseen_get_the_timeout_too(
    engine: docker.DockerClient, labels: dict[str, str]
) -> None:
    instance = f"test-orphans-{SESSION}"
    child = engine.containers.run(
        BUSYBOX,
        ["sleep", "300"],
        detach=True,
        labels={
            **labels,
            "swarmless.managed": "true",
            "swarmless.gateway": instance,
            "swarmless.kind": "child",
            "swarmless.parent": "0" * 64,  # no such container
            "swarmless.parent-call": "call-x",
            "swarmless.children-timeout": "2",
        },
    )
    reports: list[Any] = []

    async def main() -> None:
        view = EngineView(endpoint(None), instance=instance, images=lambda: [])
        watch = ChildWatch(view, report=reports.append)
        try:
            t0 = time.monotonic()
            await watch.sweep()  # first seen orphaned: the timeout starts now
            assert _running(engine, child.id)
            while time.monotonic() - t0 < 2.0:
                await watch.sweep()
                assert _running(engine, child.id)
                await asyncio.sleep(0.2)
            assert await watch.sweep() == 1  # it counts the child it found (and removes it)
            assert not _running(engine, child.id)
            # The engine's die event, as the proxy would pass it on: reported as killed.
            watch.child_event(
                "die",
                {
                    "Actor": {
                        "ID": child.id,
                        "Attributes": {"exitCode": "137", "swarmless.parent-call": "call-x"},
                    }
                },
            )
        finally:
            await watch.close()
            await view.close()

    try:
        asyncio.run(main())
    finally:
        if _exists(engine, child.id):
            child.remove(force=True)
    (report,) = reports
    assert (report.call_id, report.killed, report.exit_code) == ("call-x", True, 137)
    assert "still running 2s after its caller exited" in (report.error or "")


def _exists(engine: docker.DockerClient, cid: str) -> bool:
    return bool(engine.api.containers(all=True, filters={"id": cid}))


def test_the_sweep_asks_the_engine_only_while_a_child_may_exist(
    gw: RunningGateway,
    engine: docker.DockerClient,
    sdk_image: str,  # noqa: F811
) -> None:
    """The orphan sweep lists the engine's children every few seconds only while one may
    exist (children are made only through the scoped API): it stops once a sweep found none
    and no create was asked for, starts again at the next create, and stops again once
    that child is gone."""
    assert gw.gateway.active is not None
    proxy = gw.gateway.active.proxy
    assert proxy is not None
    _deploy_firing(gw, "fire-once", sdk_image, children_timeout=30)
    wait_until(lambda: not proxy.may_have_children, 60, "the sweep to find no child and rest")
    call_id, child = _fire(gw, "fire-once", "sleep 1")
    assert proxy.may_have_children  # a create was asked for: the sweep looks again
    wait_until(lambda: _detached(gw, call_id), 60, "the child's end on the call's record")
    wait_until(lambda: not engine.api.containers(all=True, filters={"id": child}), 60, "gone")
    wait_until(lambda: not proxy.may_have_children, 60, "the sweep to rest again")
