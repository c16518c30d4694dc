"""A stopping scoped Docker API answers the creates in flight before it removes children.

The full suite once left a child behind: the gateway stopped while a function's create was
on its way to the engine, the proxy cancelled the relay and listed the children before the
engine had made it, and the engine made it afterwards, seen by no one. Now the stop closes
admission first (:meth:`swarmless.proxy.admission.Admission.close`): creates are refused
(503) from then on, and the stop waits for those in flight (the ``decide`` block that
forwards them) to end before it goes on.

The caller is a real container on the engine (the token's worker label, the gateway's
instance label), looked up through the real :class:`EngineView`; the create itself is not
forwarded (the ``async with`` block stands for the forward), so nothing is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator

import docker
import pytest

from swarmless.config import Settings
from swarmless.engine import endpoint
from swarmless.labels import LABEL_GATEWAY
from swarmless.proxy.admission import Admission
from swarmless.proxy.engine_view import EngineView
from swarmless.proxy.http import Incoming
from swarmless.proxy.tokens import PATH_PREFIX, CallerTokens
from swarmless.spec import FunctionSpec
from tests.conftest import BUSYBOX, SESSION

INSTANCE = f"test-proxy-stop-{SESSION}"
SPEC = FunctionSpec(name="maker", image=BUSYBOX, docker="scoped")


@pytest.fixture
def caller(
    engine: docker.DockerClient, labels: dict[str, str]
) -> Iterator[tuple[CallerTokens, str, str]]:
    """A running container holding a worker grant: (tokens, its token, its address)."""
    tokens = CallerTokens()
    worker = uuid.uuid4().hex[:12]
    grant, _ = tokens.grant(SPEC, worker_id=worker)
    box = engine.containers.run(
        BUSYBOX,
        ["sleep", "300"],
        detach=True,
        labels={**labels, LABEL_GATEWAY: INSTANCE, "swarmless.worker": worker},
    )
    try:
        box.reload()
        ip = box.attrs["NetworkSettings"]["IPAddress"]
        assert ip, "the caller container has no address on the default bridge"
        yield tokens, grant.token, ip
    finally:
        box.remove(force=True)


def _create(token: str) -> Incoming:
    body = json.dumps({"Image": BUSYBOX, "Cmd": ["true"]}).encode()
    target = f"{PATH_PREFIX}{token}/v1.41/containers/create"
    return Incoming("POST", target, [("content-type", "application/json")], body)


@contextlib.asynccontextmanager
async def _create_in_flight(caller: tuple[CallerTokens, str, str]) -> AsyncIterator[Admission]:
    """An admission (on the real engine) with one create of ``caller`` allowed and in
    flight for the block's duration."""
    tokens, token, ip = caller
    settings = Settings(instance=INSTANCE)
    view = EngineView(endpoint(settings.docker_host), instance=INSTANCE, images=lambda: [BUSYBOX])
    admission = Admission(
        settings=settings,
        tokens=tokens,
        spec_of=lambda name: SPEC if name == SPEC.name else None,
        engine=view,
        labels={LABEL_GATEWAY: INSTANCE},
    )
    try:
        async with admission.decide(_create(token), ip) as first:
            assert first.allowed, first.message
            yield admission
    finally:
        await view.close()


def test_a_stop_waits_for_the_create_in_flight_and_refuses_new_ones(
    caller: tuple[CallerTokens, str, str],
) -> None:
    token, ip = caller[1:]

    async def scenario() -> None:
        async with _create_in_flight(caller) as admission:
            closing = asyncio.create_task(admission.close(timeout=120))
            for _ in range(50):  # let it run as far as it can: to its wait
                await asyncio.sleep(0)
            assert not closing.done(), "the stop went on with a create in flight"
            async with admission.decide(_create(token), ip) as second:
                assert not second.allowed
                assert second.status == 503, second
                assert "the gateway is stopping" in second.message, second.message
            assert not closing.done()
        # The create in flight was answered: the stop goes on.
        await asyncio.wait_for(closing, 30)

    asyncio.run(scenario())


def test_a_stop_waits_for_creates_a_bounded_time(
    caller: tuple[CallerTokens, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with _create_in_flight(caller) as admission:
            with caplog.at_level(logging.WARNING, logger="swarmless.proxy"):
                await asyncio.wait_for(admission.close(timeout=0.05), 30)
        assert "1 container creates still unanswered" in caplog.text, caplog.text

    asyncio.run(scenario())
