"""Every bad input gets a clear 4xx with a JSON body naming the problem, never a 500, a hang
or a dropped connection; one schedule that cannot fire does not stop the others.

Each case here was once a 500 (or worse) of a real gateway: a non-JSON scale body, a call
id that cannot be a header value, an impossible cron, ``?wait=nan``, a function deployed
with more CPUs than the host has (every call then failed). They run against a real
gateway on the real engine.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from swarmless.dispatch.scheduler import Scheduler
from swarmless.spec import FunctionSpec
from swarmless.store import Store
from tests.conftest import BUSYBOX, PYTHON
from tests.gateway_harness import TOKEN, RunningGateway


@pytest.fixture(scope="module")
def gw(
    engine: docker.DockerClient, labels: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    g = RunningGateway(tmp_path_factory.mktemp("bad-input"), labels).start()
    yield g
    g.stop(engine)


def _error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The JSON error body of ``r``, checked: its status, ``error`` code and message."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body["message"], str)
    assert body["message"]
    if code is not None:
        assert body["error"] == code, body
    return body


def _deploy(http: httpx.Client, **spec: Any) -> httpx.Response:
    return http.post("/system/functions", json={"image": BUSYBOX, "command": ["cat"], **spec})


def test_scale_with_a_body_that_is_not_json(gw: RunningGateway) -> None:
    with gw.http() as http:
        r = _deploy(http, name="bad-warm", mode="warm", handler="x:y", image=PYTHON)
        assert r.status_code == 201, r.text
        body = _error(http.post("/system/scale/bad-warm", content=b"not json"), 400)
        assert "JSON" in body["message"]
        body = _error(http.post("/system/scale/bad-warm", json={"replica": 2}), 400)
        assert "replicas" in body["message"]
        _error(http.post("/system/scale/bad-warm", json={"replicas": 10**6}), 400)
        _error(http.post("/system/scale/bad-warm", content=b"[" * 100_000), 400)
        _error(http.post("/system/scale/nope", json={"replicas": 1}), 404, "function_not_found")
        assert http.delete("/system/functions/bad-warm").status_code == 204


@pytest.mark.parametrize("raw", ["%E2%82%AC", "a%0Bb", "a%00b", "%FF", "x" * 2000])
def test_call_ids_that_cannot_be_headers(gw: RunningGateway, raw: str) -> None:
    with gw.http() as http:
        for suffix in ("", "/logs", "/result"):
            r = http.get(f"/invocations/{raw}{suffix}")
            body = _error(r, 404, "invocation_not_found")
            assert "x-call-id" not in r.headers or r.headers["x-call-id"].isprintable()
            assert body["call_id"]
        _error(http.post(f"/invocations/{raw}/retry"), 404)


def test_a_raw_request_with_a_vertical_tab_gets_an_answer(gw: RunningGateway) -> None:
    """The request that once got no reply at all (the call id went into a header)."""
    host, port = gw.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            f"GET /invocations/a%0Bb HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 404 "), answer[:200]
    assert b'"invocation_not_found"' in answer


def test_wait_must_be_a_number_of_seconds(gw: RunningGateway) -> None:
    with gw.http(timeout=10) as http:
        assert _deploy(http, name="bad-echo").status_code in (200, 201)
        call_id = http.post("/async-function/bad-echo", content=b"x").json()["call_id"]
        for wait in ("nan", "NaN", "-1", "abc", "-inf"):
            body = _error(http.get(f"/invocations/{call_id}/result?wait={wait}"), 400)
            assert "wait" in body["message"]
        r = http.get(f"/invocations/{call_id}/result?wait=inf")  # capped at 60 s, not forever
        assert r.status_code in (200, 202)
        assert http.delete("/system/functions/bad-echo").status_code == 204


def test_callback_url_that_is_not_a_url(gw: RunningGateway) -> None:
    with gw.http() as http:
        assert _deploy(http, name="bad-cb").status_code in (200, 201)
        for url in ("http://[", "http://", "ftp://example.com/", "http://a b/"):
            r = http.post("/async-function/bad-cb", headers={"X-Callback-Url": url}, content=b"")
            assert "X-Callback-Url" in _error(r, 400)["message"]
        assert http.delete("/system/functions/bad-cb").status_code == 204


def test_specs_the_engine_could_not_run_are_refused_at_deploy(
    gw: RunningGateway, engine: docker.DockerClient
) -> None:
    info = engine.info()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"cpus": info["NCPU"] + 1}, "cpus"),
        ({"memory": info["MemTotal"] + 1024**3}, "memory"),
        ({"memory": 10**30}, "memory"),
        ({"memory": "1e30"}, "memory"),
        ({"env": {"A": "x\x00y"}}, "env"),
        ({"env": {"A\x1b": "x"}}, "env"),
        ({"network": "swarmless-no-such-network"}, "network"),
        ({"schedule": "0 0 30 2 *"}, "schedule"),
        ({"schedule": "0 0 31 4 *", "timezone": "Europe/Paris"}, "schedule"),
        ({"image": "Not/An:Image:"}, "image"),
        ({"timeout": float("inf")}, "timeout"),
    ]
    with gw.http() as http:
        for change, field in cases:
            r = http.post(
                "/system/functions",
                content=_json({"name": "bad-spec", "image": BUSYBOX, "command": ["cat"], **change}),
                headers={"content-type": "application/json"},
            )
            body = _error(r, 422, "invalid_spec")
            assert set(body["fields"]) == {field}, (change, body)
        assert http.get("/system/functions/bad-spec").status_code == 404
        assert http.post("/function/bad-spec").status_code == 404


def _json(value: Any) -> bytes:
    """JSON as Python writes it (``Infinity`` for inf: what a careless client sends)."""
    return json.dumps(value).encode()


def test_bodies_that_are_not_specs(gw: RunningGateway) -> None:
    with gw.http() as http:
        for content in (b"", b"{", b"[]", b"null", b'"x"', b"\xff\xfe", b"[" * 100_000):
            r = http.post("/system/functions", content=content)
            assert r.status_code in (400, 422), (content[:20], r.status_code, r.text)
            _error(r, r.status_code)
        big = b'{"name": "x", "image": "busybox", "env": {"A": "' + b"a" * 2_000_000 + b'"}}'
        assert "bytes" in _error(http.post("/system/functions", content=big), 400)["message"]
        r = http.put("/system/functions/bad-x", json={"name": "other", "image": BUSYBOX})
        _error(r, 404)
        r = http.put("/system/secrets/Bad_Name", content=b"x")
        _error(r, 400)
        r = http.put("/system/secrets/ok-name", content=b"x" * (512 * 1024 + 1))
        _error(r, 400)


# -- schedules ----------------------------------------------------------------------------


def _spec(name: str, schedule: str) -> FunctionSpec:
    return FunctionSpec(name=name, image=BUSYBOX, command=["true"], schedule=schedule)


def test_a_schedule_that_never_fires_is_skipped_the_others_fire(tmp_path: Path) -> None:
    """The scheduler over a real store holding a cron with no 30 February (stored by an
    older gateway): that one is skipped with its error, every other one fires."""

    async def scenario() -> None:
        store = await Store.open(f"sqlite:///{tmp_path / 'store.db'}")
        try:
            functions = {
                "never": (_spec("never", "0 0 30 2 *"), 1),
                "minutely": (_spec("minutely", "* * * * *"), 1),
                "hourly": (_spec("hourly", "0 * * * *"), 1),
            }
            scheduler = Scheduler(store, functions)
            start = 1_800_000_000_000  # a whole hour
            assert await scheduler.tick(start) == []  # first sight: counting starts now
            assert set(scheduler.errors) == {"never"}
            assert "never fires" in scheduler.errors["never"]
            fired = await scheduler.tick(start + 3_600_000)
            assert len(fired) == 2  # minutely (latest slot) and hourly, never not
            records = {r.function for r in await store.list_invocations(limit=10)}
            assert records == {"minutely", "hourly"}
            listed = {s.function: s for s in await scheduler.list()}
            assert listed["never"].next_fire is None
            assert listed["never"].error is not None
            assert "never fires" in listed["never"].error
            assert listed["minutely"].error is None
            assert listed["minutely"].next_fire is not None
            del functions["never"]  # removed: its error goes with it
            await scheduler.tick(start + 3_700_000)
            assert scheduler.errors == {}
        finally:
            await store.close()

    asyncio.run(scenario())


def test_a_stored_impossible_cron_does_not_stop_the_gateways_schedules(
    engine: docker.DockerClient, labels: dict[str, str], tmp_path: Path
) -> None:
    """A gateway started over a store that holds an impossible cron (as an older gateway
    accepted it) lists it with its error and still fires the other schedules."""
    g = RunningGateway(tmp_path, labels)

    async def seed() -> None:
        store = await Store.open(g.settings.store)
        try:
            await store.put_function(_spec("sched-never", "0 0 30 2 *"))
            # Every second (croniter's sixth field is the second).
            await store.put_function(_spec("sched-often", "* * * * * *"))
        finally:
            await store.close()

    asyncio.run(seed())
    g.start()
    try:
        with g.http() as http:
            listed = {s["function"]: s for s in http.get("/system/schedules").json()}
            assert listed["sched-never"]["next_fire"] is None
            assert "never fires" in (listed["sched-never"]["error"] or "")
            assert listed["sched-often"]["error"] is None

            def fired() -> bool:
                rows = http.get("/invocations", params={"function": "sched-often"}).json()
                return len(rows) >= 2

            g.wait_for(fired, timeout=30, what="the every-second schedule to fire twice")
            assert http.get("/invocations", params={"function": "sched-never"}).json() == []
    finally:
        g.stop(engine)
