"""Scaling against the real engine: burst from zero, ramp and back to zero, paused buffer,
OOM recorded, restart leaves exactly the desired set; the reconciler's plans and their
reasons (start, scale-down, rollout, crash backoff) as ``describe`` shows them."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from swarmless.exceptions import FunctionFailed, WaitTimeout
from tests.conftest import BUSYBOX, handler_image
from tests.gateway_harness import GatewayProcess, RunningGateway, free_port
from tests.networks import remove_network
from tests.waiting import wait_until

HANDLERS = """
import os, time

def handle(event, context):
    time.sleep(float(event["body"] or b"0"))
    return {"host": os.uname().nodename}

def hog(event, context):
    blocks = []
    while True:
        blocks.append(bytearray(8 * 1024 * 1024))
"""


@pytest.fixture(scope="module")
def image(build_image: Callable[..., str]) -> str:
    return handler_image(build_image, "scaling", HANDLERS)


@pytest.fixture(scope="module")
def gw(
    engine: docker.DockerClient, labels: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    g = RunningGateway(tmp_path_factory.mktemp("gw-scaling"), labels).start()
    yield g
    g.stop(engine)


def running(gw: RunningGateway, engine: docker.DockerClient, fn: str) -> int:
    return len(gw.containers(engine, **{"swarmless.function": fn}))


def call(gw: RunningGateway, fn: str, body: bytes = b"0", timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{gw.url}/function/{fn}", content=body, timeout=timeout)


def test_burst_of_50_from_zero_all_succeed(
    gw: RunningGateway, image: str, engine: docker.DockerClient
) -> None:
    gw.client().deploy(
        {
            "name": "burst",
            "image": image,
            "mode": "warm",
            "handler": "handler:handle",
            "max_containers": 5,
            "concurrency": 2,
        }
    )
    assert running(gw, engine, "burst") == 0
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(lambda _: call(gw, "burst", b"0.2").status_code, range(50)))
    assert codes == [200] * 50
    assert 1 <= running(gw, engine, "burst") <= 5  # never above max_containers


def test_ramp_up_then_back_to_zero(
    gw: RunningGateway, image: str, engine: docker.DockerClient
) -> None:
    gw.client().deploy(
        {
            "name": "ramp",
            "image": image,
            "mode": "warm",
            "handler": "handler:handle",
            "max_containers": 4,
            "idle_timeout": 2,
        }
    )
    peak = 0
    deadline = time.monotonic() + 8
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        while time.monotonic() < deadline:
            list(pool.map(lambda _: call(gw, "ramp", b"0.3"), range(8)))
            peak = max(peak, running(gw, engine, "ramp"))
    assert peak >= 3, f"scaled up to {peak} only"
    gw.wait_for(lambda: running(gw, engine, "ramp") == 0, 60, "scale to zero")
    assert call(gw, "ramp").status_code == 200  # and back from zero


def test_paused_buffer_thaws_on_demand(
    gw: RunningGateway, image: str, engine: docker.DockerClient
) -> None:
    gw.client().deploy(
        {
            "name": "frozen",
            "image": image,
            "mode": "warm",
            "handler": "handler:handle",
            "buffer": 1,
            "paused_buffer": True,
            "idle_timeout": 300,
        }
    )
    assert call(gw, "frozen").status_code == 200

    def paused() -> bool:
        ids = gw.containers(engine, **{"swarmless.function": "frozen"})
        return any(engine.api.inspect_container(i)["State"]["Paused"] for i in ids)

    gw.wait_for(paused, 30, "the idle container paused")
    pool = gw.dispatcher.pools["frozen"]
    assert pool.counts()["paused"] >= 1
    t0 = time.perf_counter()
    r = call(gw, "frozen")
    thaw_ms = (time.perf_counter() - t0) * 1000
    assert r.status_code == 200
    print(f"\n[scaling] first call from a paused container: {thaw_ms:.0f} ms")
    rec = gw.client().invocation(r.headers["x-call-id"])
    assert rec.cold is False  # no container start


def test_oom_is_recorded(gw: RunningGateway, image: str) -> None:
    gw.client().deploy(
        {
            "name": "hog",
            "image": image,
            "mode": "warm",
            "handler": "handler:hog",
            "memory": "48m",
            "timeout": 30,
        }
    )
    r = call(gw, "hog")
    assert r.status_code == 502
    assert "OOM" in r.json()["message"]
    client = gw.client()
    call_id = r.headers["x-call-id"]
    gw.wait_for(lambda: client.invocation(call_id).status == "failed", 10, "record")
    rec = client.invocation(call_id)
    assert "OOM-killed" in (rec.error or "")
    assert rec.exit_code == 137


def test_queue_bound_answers_429_at_once(gw: RunningGateway, image: str) -> None:
    gw.client().deploy(
        {
            "name": "tight",
            "image": image,
            "mode": "warm",
            "handler": "handler:handle",
            "max_containers": 1,
            "queue_size": 2,
            "timeout": 30,
        }
    )
    assert call(gw, "tight").status_code == 200  # one ready container
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(call, gw, "tight", b"1.5") for _ in range(8)]
        client = gw.client()
        gw.wait_for(
            lambda: client.function("tight")["containers"]["queued"] >= 2,
            10,
            "a full queue (2 calls)",
        )
        t0 = time.perf_counter()
        r = call(gw, "tight", b"0")
        assert r.status_code == 429
        assert time.perf_counter() - t0 < 1.0  # at once, never a hang
        assert int(r.headers["retry-after"]) >= 1
        codes = [f.result().status_code for f in futures]
    assert codes.count(200) >= 3
    assert set(codes) <= {200, 429}


def planned(gw: RunningGateway, fn: str) -> list[dict[str, Any]]:
    """The actions of the recent plans ``describe`` shows, oldest first."""
    scale = gw.client().function(fn)["scale"]
    return [a for p in scale["recent"] for a in p["actions"]]


def test_describe_shows_the_plans_and_their_reasons(
    gw: RunningGateway, image: str, engine: docker.DockerClient
) -> None:
    client = gw.client()
    client.deploy(
        {
            "name": "planned",
            "image": image,
            "mode": "warm",
            "handler": "handler:handle",
            "idle_timeout": 2,
        }
    )
    assert call(gw, "planned").status_code == 200
    gw.wait_for(lambda: running(gw, engine, "planned") == 0, 60, "scale to zero")
    actions = planned(gw, "planned")
    start = next(a for a in actions if a["action"] == "start")
    assert start["reason"].startswith(f"0 -> {start['count']}: ")  # the policy's reason follows
    retire = next(a for a in actions if a["action"] == "retire")
    assert retire["cause"] == "scale-down"
    assert "idle" in retire["reason"]
    scale = client.function("planned")["scale"]
    assert scale["desired"] == 0
    assert scale["reason"].startswith("idle")


def test_rollout_is_planned_and_recorded(
    gw: RunningGateway, image: str, engine: docker.DockerClient
) -> None:
    spec: dict[str, Any] = {
        "name": "rolled",
        "image": image,
        "mode": "warm",
        "handler": "handler:handle",
        "min_containers": 1,
    }
    client = gw.client()
    client.deploy(spec)
    gw.wait_for(lambda: gw.dispatcher.pools["rolled"].counts()["ready"] == 1, 60, "one ready")
    (old,) = gw.containers(engine, **{"swarmless.function": "rolled"})
    version = client.deploy({**spec, "env": {"V": "2"}})["version"]

    def replaced() -> bool:
        ids = gw.containers(engine, **{"swarmless.function": "rolled"})
        return len(ids) == 1 and old not in ids

    gw.wait_for(replaced, 60, "the old version replaced")
    rollout = [a for a in planned(gw, "rolled") if a.get("cause") == "rollout"]
    assert [a["action"] for a in rollout] == ["retire"]
    assert rollout[0]["reason"] == f"rollout: version {version - 1} replaced by {version}"
    assert call(gw, "rolled").status_code == 200


def test_crash_backoff_is_planned_and_recorded(gw: RunningGateway) -> None:
    """A warm function on an image without Python: every start fails, the plans back off."""
    gw.client().deploy(
        {
            "name": "crashing",
            "image": BUSYBOX,
            "mode": "warm",
            "handler": "handler:handle",
            "idle_timeout": 5,
        }
    )
    r = call(gw, "crashing")
    assert r.status_code == 502
    assert "could not start a container" in r.json()["message"]

    def backed_off() -> bool:
        return any(a["action"] == "back-off" for a in planned(gw, "crashing"))

    gw.wait_for(backed_off, 30, "a back-off in the recorded plans")
    back_off = next(a for a in planned(gw, "crashing") if a["action"] == "back-off")
    assert "crash(es) in a row" in back_off["reason"]
    assert "could not start a container" in back_off["reason"]
    assert 0 < back_off["for_s"] <= 30


def test_scale_with_wait_answers_when_exactly_that_many_are_ready(
    gw: RunningGateway, image: str, engine: docker.DockerClient
) -> None:
    """``scale --wait``: the answer comes when the function runs exactly N containers, all
    ready (each takes a call at once, no other starts), up from zero and down; a wait too
    short is a 504 that leaves the pin; bad waits are 400s."""
    gw.client().deploy(
        {
            "name": "waited",
            "image": image,
            "mode": "warm",
            "handler": "handler:handle",
            "max_containers": 3,
            "idle_timeout": 600,
        }
    )
    flt = {"label": [f"swarmless.gateway={gw.instance}", "swarmless.function=waited"]}

    def up() -> int:
        return len(engine.api.containers(filters=flt))  # running ones only

    def listed() -> int:
        return len(engine.api.containers(all=True, filters=flt))

    assert up() == 0
    described = gw.client().scale("waited", 3, wait=120)
    c = described["containers"]
    assert (c["ready"], c["starting"], c["draining"]) == (3, 0, 0), c
    assert described["scale"]["pinned"] == 3
    assert up() == 3
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: call(gw, "waited", b"0.5"), range(3)))
    assert [r.status_code for r in answers] == [200] * 3
    assert len({r.json()["host"] for r in answers}) == 3  # one call in each, none queued
    assert len(gw.containers(engine, **{"swarmless.function": "waited"})) == 3  # none more

    c = gw.client().scale("waited", 1, wait=120)["containers"]
    assert (c["ready"], c["starting"], c["draining"]) == (1, 0, 0), c
    assert up() == listed() == 1  # the others stopped and removed

    with gw.http() as http:
        r = http.post("/system/scale/waited", json={"replicas": 3, "wait": 0.001})
        assert r.status_code == 504, r.text
        assert r.json()["error"] == "wait_timeout"
        assert "of 3 containers ready after 0.001s" in r.json()["message"]
        assert "stays pinned to 3" in r.json()["message"]
        assert gw.client().function("waited")["scale"]["pinned"] == 3
        for body in (
            {"replicas": 1, "wait": -1},
            {"replicas": 1, "wait": "5"},
            {"replicas": 1, "wait": True},
            {"replicas": 1, "wait": 3601},
            {"replicas": None, "wait": 5},
        ):
            r = http.post("/system/scale/waited", json=body)
            assert r.status_code == 400, (body, r.text)
            assert "wait" in r.json()["message"]
    assert gw.client().function("waited")["scale"]["pinned"] == 3

    c = gw.client().scale("waited", 0, wait=120)["containers"]
    assert (c["ready"], c["starting"], c["draining"], c["paused"]) == (0, 0, 0, 0), c
    assert listed() == 0


def test_scale_with_wait_fails_when_a_container_cannot_start(gw: RunningGateway) -> None:
    """A warm function on an image without Python: the wait ends with the start's failure
    (502), not at its deadline."""
    gw.client().deploy(
        {"name": "never-ready", "image": BUSYBOX, "mode": "warm", "handler": "handler:handle"}
    )
    t0 = time.monotonic()
    with pytest.raises(FunctionFailed, match="could not start a container") as e:
        gw.client().scale("never-ready", 1, wait=300)
    assert "failed before it was ready" in e.value.message
    assert time.monotonic() - t0 < 300
    with pytest.raises(WaitTimeout, match="0 of 2 containers ready"):
        gw.client().scale("never-ready", 2, wait=0.001)
    gw.client().scale("never-ready", None)


def test_restart_leaves_exactly_the_desired_set(
    engine: docker.DockerClient, image: str, tmp_path: Path
) -> None:
    """A gateway killed with its containers running; the next one removes the orphans and
    runs exactly the desired set (no double capacity)."""
    instance = f"test-restart-{os.getpid()}"
    network = f"swarmless-{instance}"
    gateway = GatewayProcess(tmp_path, instance, network, free_port())

    def ours() -> set[str]:
        flt = {"label": [f"swarmless.gateway={instance}", "swarmless.function=kept"]}
        return {c["Id"] for c in engine.api.containers(filters=flt)}

    try:
        gateway.start()
        headers = {"Authorization": f"Bearer {gateway.token}"}
        spec = {
            "name": "kept",
            "image": image,
            "mode": "warm",
            "handler": "handler:handle",
            "min_containers": 2,
        }
        httpx.post(f"{gateway.url}/system/functions", json=spec, headers=headers).raise_for_status()
        wait_until(lambda: len(ours()) == 2, 60, "2 containers", interval=0.2)
        before = ours()
        assert len(before) == 2
        gateway.kill()  # SIGKILL: no drain, no cleanup
        assert ours() == before  # orphans, still running
        gateway.start()

        # The orphans are removed, and the new gateway starts 2 containers of its own.
        def replaced() -> bool:
            now = ours()
            return len(now) == 2 and not now & before

        wait_until(replaced, 60, "2 new containers in place of the orphans", interval=0.2)
        assert httpx.post(f"{gateway.url}/function/kept", timeout=30).status_code == 200
    finally:
        gateway.stop()
        flt = {"label": f"swarmless.gateway={instance}"}
        for c in engine.api.containers(all=True, filters=flt):
            with contextlib.suppress(docker.errors.DockerException):
                engine.api.remove_container(c["Id"], force=True)
        remove_network(engine, network)


def test_a_lone_first_call_starts_one_container(
    gw: RunningGateway, image: str, engine: docker.DockerClient
) -> None:
    """With room to scale, one call from zero starts one container: not one more for the
    utilisation's headroom while it waits, nor after its answer (the averages still
    remember it); the plans until the function is back at zero hold one start of one."""
    gw.client().deploy(
        {
            "name": "lone",
            "image": image,
            "mode": "warm",
            "handler": "handler:handle",
            "max_containers": 10,
            "idle_timeout": 2,
        }
    )
    assert call(gw, "lone").status_code == 200

    def back_to_zero() -> bool:
        retired = any(a["action"] == "retire" for a in planned(gw, "lone"))
        return retired and running(gw, engine, "lone") == 0

    gw.wait_for(back_to_zero, 90, "the function back at zero")
    starts = [a for a in planned(gw, "lone") if a["action"] == "start"]
    assert [a["count"] for a in starts] == [1], starts
