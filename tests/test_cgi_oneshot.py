"""One-shot containers of cgi and oneshot calls are removed after the answer, on every
path: a call that succeeds, one whose command cannot be executed, one that fails; and a
gateway that stops right after its calls leaves none behind."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.conftest import BUSYBOX
from tests.gateway_harness import RunningGateway
from tests.waiting import wait_until

CGI = "cat >/dev/null; printf 'Content-Type: text/plain\\r\\n\\r\\n%s' \"$QUERY_STRING\""


@pytest.fixture
def gw(
    engine: docker.DockerClient, labels: dict[str, str], tmp_path: Path
) -> Iterator[RunningGateway]:
    g = RunningGateway(tmp_path, labels).start()
    yield g
    g.stop(engine)


def deploy(gw: RunningGateway, **spec: object) -> None:
    with gw.http() as http:
        r = http.post("/system/functions", json=spec)
        assert r.status_code in (200, 201), r.text


def test_cgi_container_goes_after_the_answer(
    gw: RunningGateway, engine: docker.DockerClient
) -> None:
    deploy(gw, name="q", image=BUSYBOX, mode="cgi", command=["sh", "-c", CGI])
    with gw.http(token=None) as http:
        r = http.post("/function/q?a=1", content=b"body")
    assert r.status_code == 200, r.text
    assert r.text == "a=1"
    call = r.headers["x-call-id"]
    wait_until(lambda: not gw.containers(engine, **{"swarmless.call": call}), 30, "removal")
    record = gw.client().invocation(call)
    assert record.container  # it ran in a container of its own, now removed
    assert record.exit_code == 0


def test_oneshot_failures_leave_no_container(
    gw: RunningGateway, engine: docker.DockerClient
) -> None:
    deploy(gw, name="missing", image=BUSYBOX, mode="oneshot", command=["/no/such/command"])
    deploy(gw, name="fails", image=BUSYBOX, mode="oneshot", command=["sh", "-c", "exit 3"])
    with gw.http(token=None) as http:
        missing = http.post("/function/missing")
        fails = http.post("/function/fails")
    assert missing.status_code >= 400
    assert fails.status_code >= 400
    assert gw.client().invocation(fails.headers["x-call-id"]).exit_code == 3

    def gone(name: str) -> bool:
        return not gw.containers(engine, **{"swarmless.function": name})

    for name in ("missing", "fails"):
        wait_until(functools.partial(gone, name), 30, f"the container of {name} to go")


def test_stop_waits_for_the_removals(gw: RunningGateway, engine: docker.DockerClient) -> None:
    """The gateway stops right after answering: the removals it had started still finish
    before it is gone (nothing is left for the harness or the next gateway to remove)."""
    deploy(gw, name="quick", image=BUSYBOX, mode="oneshot", command=["echo", "hi"])
    with gw.http(token=None) as http:
        for _ in range(3):
            assert http.post("/function/quick").content == b"hi\n"
    gw.shutdown()
    assert gw.containers(engine) == []
