"""A Docker Engine that is away when the gateway starts: ``swarmless up`` does not exit.
It serves at once, ``/healthz`` and what needs the engine answer 503 ``engine_unavailable``
with the reason, the engine is tried again with a bounded backoff (a log line each try),
and once it answers the gateway serves by itself.

The engine is reached through a loopback TCP relay to its Unix socket (``DOCKER_HOST`` is
``tcp://127.0.0.1:PORT``): nothing listens there at start (refused), the relay is started
on that port later; or the relay is there but frozen (accepts, never answers) until it
thaws. The real engine is never stopped. Docker objects: instance names
start ``h5rel-``, and carry ``swarmless.test=h5rel``.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import docker
import httpx
import pytest

from swarmless.gateway.lifecycle import STORE_RETRY_MAX
from tests.conftest import BUSYBOX, handler_image
from tests.gateway_harness import GatewayProcess, free_port
from tests.reliability.h5_harness import remove_own
from tests.reliability.test_frozen_engine import FreezableEngine
from tests.waiting import wait_until

pytestmark = pytest.mark.fault


class LateRelay(FreezableEngine):
    """:class:`FreezableEngine` (never frozen here) on a port chosen before it started."""

    def __init__(self, port: int, target: str = "/var/run/docker.sock") -> None:
        self.target = target
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(256)
        self.listener.settimeout(0.2)
        self.port = port
        self.thawed = threading.Event()
        self.thawed.set()
        self.closed = False
        self.accepted_frozen = 0
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="h5rel-relay")
        self._thread.start()


def health(url: str) -> httpx.Response:
    return httpx.get(f"{url}/healthz", timeout=5)


def start_up(gateway: GatewayProcess, log: Path) -> Callable[[], int]:
    """``swarmless up`` of ``gateway``; returns a probe: /healthz's status, an
    AssertionError with the log's tail if the process exited."""
    with log.open("ab") as out:
        gateway.proc = subprocess.Popen(
            [sys.executable, "-m", "swarmless", "up", "--log-level", "warning"],
            env=gateway.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def answers() -> int:
        assert gateway.proc is not None
        if gateway.proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise AssertionError(f"swarmless up exited ({gateway.proc.returncode}):\n{tail}")
        return health(gateway.url).status_code

    return answers


def engine_tries(log: Path) -> list[float]:
    """The pauses the gateway's log announces after each try of the engine."""
    text = log.read_text(errors="replace")
    found = re.findall(r"engine still unavailable.*next try in ([0-9.]+) s", text)
    return [float(p) for p in found]


HANDLER = """
def handle(event, context):
    return b"warm"
"""


def test_up_waits_for_an_engine_away_at_start_and_serves_once_it_answers(
    engine: docker.DockerClient, tmp_path: Path, build_image: Callable[..., str]
) -> None:
    image = handler_image(build_image, "h5rel-engine-startup", HANDLER)
    engine_port = free_port()
    instance = f"h5rel-{uuid.uuid4().hex[:8]}"
    gateway = GatewayProcess(
        tmp_path,
        instance,
        f"swarmless-{instance}",
        free_port(),
        {
            "SWARMLESS_DOCKER_HOST": f"tcp://127.0.0.1:{engine_port}",
            "SWARMLESS_ENGINE_TIMEOUT": "10",
        },
    )
    log = tmp_path / "gateway.log"
    relay: LateRelay | None = None
    try:
        answers = start_up(gateway, log)
        wait_until(answers, 60, "the gateway to answer", interval=0.1, ignore=(httpx.HTTPError,))
        r = health(gateway.url)
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["error"] == "engine_unavailable", body
        assert "not ready" in body["message"], body
        assert "Connection refused" in body["message"], body
        assert body["address"].endswith(f":{engine_port}"), body
        assert int(r.headers["retry-after"]) >= 1
        headers = {"Authorization": f"Bearer {gateway.token}"}
        with httpx.Client(base_url=gateway.url, headers=headers, timeout=30) as http:
            for method, path in (("GET", "/system/functions"), ("POST", "/function/echo")):
                r = http.request(method, path)
                assert r.status_code == 503, (method, path, r.text)
                assert r.json()["error"] == "engine_unavailable", r.text

            # Tried again, with a growing, bounded pause, a line each: no busy loop.
            pauses = wait_until(
                lambda: engine_tries(log), 30, "retries of the engine", ok=lambda p: len(p) >= 3
            )
            assert pauses == sorted(pauses), pauses
            assert pauses[0] < pauses[-1], pauses
            assert all(0 < p <= STORE_RETRY_MAX for p in pauses), pauses
            assert answers() == 503

            relay = LateRelay(engine_port)
            back = time.monotonic()
            wait_until(
                lambda: health(gateway.url).json().get("role") == "active",
                STORE_RETRY_MAX + 30,
                "the gateway active once the engine answers",
                interval=0.2,
                ignore=(httpx.HTTPError,),
            )
            ready_after = time.monotonic() - back
            assert gateway.proc.poll() is None
            spec = {"name": "echo", "image": BUSYBOX, "mode": "oneshot", "command": ["cat"]}
            r = http.post("/system/functions", json=spec)
            assert r.status_code == 201, r.text
            r = http.post("/function/echo", content=b"engine back")
            assert (r.status_code, r.content) == (200, b"engine back"), r.text
            # A warm container reaches the gateway on the functions' network: the gateway
            # listens there too once the engine told it where that is.
            spec = {"name": "warm", "image": image, "mode": "warm", "handler": "handler:handle"}
            r = http.post("/system/functions", json=spec)
            assert r.status_code == 201, r.text
            r = http.post("/function/warm", content=b"call", timeout=120)
            assert (r.status_code, r.content) == (200, b"warm"), r.text
        print(
            f"\n[engine startup] engine away at start: 503 engine_unavailable meanwhile, "
            f"{len(pauses)}+ tries (pauses {pauses} s), ready {ready_after:.1f} s after "
            "it answered"
        )
    finally:
        gateway.stop()  # through the relay: its containers are removed on the way out
        if relay is not None:
            relay.close()
        remove_own(engine, instance)


def test_up_waits_for_an_engine_frozen_at_start_and_serves_once_it_thaws(
    engine: docker.DockerClient, tmp_path: Path
) -> None:
    relay = FreezableEngine()
    relay.freeze()  # accepts, never answers
    instance = f"h5rel-{uuid.uuid4().hex[:8]}"
    gateway = GatewayProcess(
        tmp_path,
        instance,
        f"swarmless-{instance}",
        free_port(),
        {"SWARMLESS_DOCKER_HOST": relay.url, "SWARMLESS_ENGINE_TIMEOUT": "5"},
    )
    log = tmp_path / "gateway.log"
    try:
        started = time.monotonic()
        answers = start_up(gateway, log)
        wait_until(answers, 60, "the gateway to answer", interval=0.1, ignore=(httpx.HTTPError,))
        first_answer = time.monotonic() - started
        r = health(gateway.url)
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["error"] == "engine_unavailable", body
        assert "does not reply" in body["message"], body
        assert relay.accepted_frozen >= 1
        wait_until(lambda: engine_tries(log), 60, "a retry of the engine", ok=bool)
        relay.thaw()
        thawed = time.monotonic()
        wait_until(
            lambda: health(gateway.url).json().get("role") == "active",
            STORE_RETRY_MAX + 60,
            "the gateway active once the engine thawed",
            interval=0.2,
            ignore=(httpx.HTTPError,),
        )
        ready_after = time.monotonic() - thawed
        headers = {"Authorization": f"Bearer {gateway.token}"}
        with httpx.Client(base_url=gateway.url, headers=headers, timeout=60) as http:
            spec = {"name": "echo", "image": BUSYBOX, "mode": "oneshot", "command": ["cat"]}
            r = http.post("/system/functions", json=spec)
            assert r.status_code == 201, r.text
            r = http.post("/function/echo", content=b"thawed")
            assert (r.status_code, r.content) == (200, b"thawed"), r.text
        print(
            f"\n[engine startup] engine frozen at start (engine_timeout 5 s): first answer "
            f"(503) {first_answer:.1f} s after the start, active {ready_after:.1f} s after "
            "the thaw"
        )
    finally:
        relay.thaw()
        gateway.stop()
        relay.close()
        remove_own(engine, instance)
