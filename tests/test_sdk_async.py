"""The asyncio faces end to end: AsyncClient and AsyncGatewayClient against a real gateway
and real containers, every method of their sync twins; and the gateway's errors come back
as the classes (and fields) ``Client.run`` raises for the same failure."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import docker
import pytest

import swarmless
from swarmless.config import Settings
from tests.conftest import BUSYBOX, PYTHON
from tests.gateway_harness import TOKEN, RunningGateway
from tests.waiting import eventually

EXIT3 = ["sh", "-c", "echo oops >&2; exit 3"]


@pytest.fixture(scope="module")
def gw(
    engine: docker.DockerClient, labels: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    g = RunningGateway(tmp_path_factory.mktemp("gw-sdk-async"), labels).start()
    yield g
    g.stop(engine)
    assert g.containers(engine) == []


def settings(gw: RunningGateway) -> Settings:
    return Settings.load(gateway_url=gw.url, token=TOKEN)


def test_async_gateway_client_every_method(gw: RunningGateway) -> None:
    async def main() -> None:
        async with swarmless.AsyncClient(settings=settings(gw)) as client:
            api = client.gateway
            assert isinstance(api, swarmless.AsyncGatewayClient)
            described = await api.deploy({"name": "acat", "image": BUSYBOX, "command": ["cat"]})
            assert (described["name"], described["version"]) == ("acat", 1)
            assert "acat" in [f["name"] for f in await api.functions()]
            assert (await api.function("acat"))["spec"]["command"] == ["cat"]

            # invoke: the function's answer, and its record (written behind).
            answer = await client.invoke("acat", b"hello")
            assert (answer.status, answer.body) == (200, b"hello")
            rec = await eventually(
                lambda: api.invocations(function="acat"),
                30,
                "the sync call's record",
                ok=lambda rows: answer.call_id in [r.id for r in rows],
            )
            assert isinstance(rec[0], swarmless.InvocationRecord)
            one = await api.invocation(answer.call_id)
            assert (one.status, one.kind, one.function) == ("succeeded", "sync", "acat")

            # spawn + result, the handle's record, status and logs.
            inv = await client.spawn("acat", "later")
            assert isinstance(inv, swarmless.AsyncInvocation)
            result = await inv.result(timeout=60)
            assert (result.body, result.call_id) == (b"later", inv.id)
            assert await inv.status() == "succeeded"
            assert (await inv.record()).kind == "async"
            logs = await eventually(
                inv.logs, 30, "logs", ok=lambda out: out.get("stdout") == "later"
            )
            assert logs["stderr"] == ""
            again = swarmless.AsyncInvocation.from_id(inv.id, api)
            assert (await again.result()).body == b"later"
            assert (await api.result(inv.id, timeout=5)).body == b"later"

            # map: one async call per input, sent as JSON, answers in order.
            outs = await client.map("acat", [1, {"a": 2}, None], timeout=60)
            assert [json.loads(o.body) for o in outs] == [1, {"a": 2}, None]

            # secrets and schedules.
            await api.put_secret("sdk-async-secret", b"s3cret")
            assert "sdk-async-secret" in await api.secrets()
            await api.delete_secret("sdk-async-secret")
            assert "sdk-async-secret" not in await api.secrets()
            await api.deploy(
                {"name": "anightly", "image": BUSYBOX, "command": ["true"], "schedule": "0 3 * * *"}
            )
            nightly = [s for s in await api.schedules() if s["function"] == "anightly"]
            assert nightly
            assert nightly[0]["schedule"] == "0 3 * * *"

            # remove: gone for the gateway, and said so with the sync face's error.
            await api.remove("acat")
            await api.remove("anightly")
            with pytest.raises(swarmless.FunctionNotFound) as info:
                await api.function("acat")
            assert info.value.name == "acat"
            with pytest.raises(swarmless.FunctionNotFound):
                await client.invoke("acat", b"x")

    asyncio.run(main())


def test_async_waits_dead_calls_and_retry(gw: RunningGateway) -> None:
    async def main() -> None:
        async with swarmless.AsyncGatewayClient(settings(gw)) as api:
            await api.deploy({"name": "asleep", "image": BUSYBOX, "command": ["sleep", "2"]})
            slow = await api.spawn("asleep")
            with pytest.raises(swarmless.WaitTimeout) as waited:
                await slow.result(timeout=0.2)
            assert (waited.value.invocation, waited.value.timeout) == (slow.id, 0.2)
            assert not isinstance(waited.value, swarmless.InvocationTimeout)  # it goes on
            assert (await slow.result(timeout=60)).status == 200

            await api.deploy({"name": "adead", "image": BUSYBOX, "command": EXIT3, "retries": 0})
            dead = await api.spawn("adead")
            with pytest.raises(swarmless.FunctionFailed) as failed:
                await dead.result(timeout=60)
            assert failed.value.invocation == dead.id
            assert await dead.status() == "dead"
            await dead.retry()
            assert (await dead.record()).status in ("queued", "running", "dead")
            await eventually(dead.status, 30, "the retried call's end", ok=lambda s: s == "dead")
            await api.remove("asleep")
            await api.remove("adead")

    asyncio.run(main())


def test_async_scale_a_warm_function(gw: RunningGateway) -> None:
    async def main() -> None:
        async with swarmless.AsyncGatewayClient(settings(gw)) as api:
            spec = {"name": "awarm", "image": PYTHON, "mode": "warm", "command": ["cat"]}
            await api.deploy(spec)
            pinned = await api.scale("awarm", 1)
            assert pinned["scale"]["pinned"] == 1
            await eventually(
                lambda: api.function("awarm"),
                60,
                "a pinned warm container",
                ok=lambda d: d["containers"].get("ready", 0) >= 1,
            )
            assert (await api.invoke("awarm", b"warm")).body == b"warm"
            assert (await api.scale("awarm", None))["scale"]["pinned"] is None
            await api.deploy({"name": "aonce", "image": BUSYBOX, "command": ["true"]})
            with pytest.raises(swarmless.InvalidArgument, match="only warm functions scale"):
                await api.scale("aonce", 2)
            await api.remove("awarm")
            await api.remove("aonce")

    asyncio.run(main())


def test_gateway_failures_are_container_errors_like_run(
    gw: RunningGateway, client: swarmless.Client, labels: dict[str, str]
) -> None:
    """A function that exits non-zero: the same class and fields from run(), the sync
    gateway client and the async one."""
    with pytest.raises(swarmless.ContainerError) as local:
        client.run(BUSYBOX, EXIT3, labels=labels)
    api = swarmless.GatewayClient(settings(gw))
    api.deploy({"name": "gexit3", "image": BUSYBOX, "command": EXIT3})
    api.deploy({"name": "gwarmexit", "image": PYTHON, "mode": "warm", "command": EXIT3})
    with pytest.raises(swarmless.ContainerError) as remote:
        api.invoke("gexit3")
    with pytest.raises(swarmless.ContainerError) as warm:
        api.invoke("gwarmexit")

    async def via_async() -> swarmless.ContainerError:
        async with swarmless.AsyncClient(settings=settings(gw)) as ac:
            with pytest.raises(swarmless.ContainerError) as info:
                await ac.invoke("gexit3")
            return info.value

    from_async = asyncio.run(via_async())
    for err in (local.value, remote.value, warm.value, from_async):
        assert type(err) is swarmless.ContainerError
        assert (err.exit_status, err.stderr) == (3, b"oops\n"), err
        assert err.status_code == 502
    assert local.value.image == BUSYBOX
    for err in (remote.value, from_async):
        assert err.function == "gexit3"
        assert err.image is None  # a caller is not told how the function is built
        assert err.invocation
        assert "exited with status 3: oops" in str(err)
    assert warm.value.function == "gwarmexit"
    # The record says the same.
    rec = api.invocation(remote.value.invocation or "")
    assert (rec.status, rec.exit_code) == ("failed", 3)
    api.remove("gexit3")
    api.remove("gwarmexit")
    api.close()


def test_sync_spawn_map_and_handles(gw: RunningGateway) -> None:
    client = swarmless.from_env(gateway_url=gw.url, token=TOKEN)
    with client:
        client.gateway.deploy({"name": "scat", "image": BUSYBOX, "command": ["cat"]})
        inv = client.spawn("scat", b"x", idempotency_key="sdk-async-k1")
        same = client.spawn("scat", b"y", idempotency_key="sdk-async-k1")
        assert same.id == inv.id
        assert inv.result(timeout=60).body == b"x"
        assert inv.status == "succeeded"
        assert [o.body for o in client.map("scat", ["a", "b"], timeout=60)] == [b'"a"', b'"b"']
        client.gateway.remove("scat")


def test_async_client_runs_images(client: swarmless.Client, labels: dict[str, str]) -> None:
    async def main() -> None:
        async with swarmless.AsyncClient(settings=client.settings) as ac:
            assert await ac.run(BUSYBOX, ["echo", "hi"], labels=labels) == b"hi\n"
            assert await ac.run(BUSYBOX, ["cat"], stdin="in", text=True, labels=labels) == "in"
            with pytest.raises(swarmless.ContainerError) as info:
                await ac.run(BUSYBOX, EXIT3, labels=labels)
            assert (info.value.exit_status, info.value.stderr) == (3, b"oops\n")
            script = ["sh", "-c", "echo one; echo two"]
            async with await ac.run(BUSYBOX, script, detach=True, labels=labels) as run:
                assert isinstance(run, swarmless.AsyncRun)
                lines = [line async for line in await run.logs(follow=True)]
                assert lines == [b"one\n", b"two\n"]
                assert await run.wait(timeout=15) == 0
                assert await run.done()
                assert await run.result() == b"one\ntwo\n"
            sleeper = await ac.run(BUSYBOX, ["sleep", "30"], detach=True, labels=labels)
            with pytest.raises(swarmless.WaitTimeout):
                await sleeper.wait(timeout=0.3)
            await sleeper.kill()
            assert await sleeper.wait(timeout=15) != 0
            await sleeper.close()

    asyncio.run(main())
