"""A frozen Docker Engine: it accepts connections and never answers, then thaws.

The gateway under test reaches the real engine through a relay on loopback (its
``docker_host`` is ``tcp://127.0.0.1:PORT``). Frozen, the relay behaves as a SIGSTOPped
``dockerd``: new connections are accepted and never answered, and the ones open stall
(what was sent waits); thawed, everything goes on where it stopped. The shared engine
itself is never stopped.

What must hold while it is frozen: no call hangs. A call that needs the engine gets
``503 engine_unavailable`` within the gateway's ``engine_timeout`` (the first one finds it
out; the heartbeat finds it out by itself meanwhile), then at once; a warm function that
has a ready container still answers (it needs no engine); ``/healthz`` answers. Thawed,
the gateway finds the engine again by itself and every kind of call runs.

Docker objects: instance ``hrel-...``, label ``swarmless.test=helper-rel``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import docker
import httpx
import pytest

from swarmless.backends.docker import HEARTBEAT_EVERY
from swarmless.gateway.active import RESYNC_AGAIN
from tests.conftest import BUSYBOX, PYTHON
from tests.reliability.own_gateway import OwnGateway, OwnSwarmGateway, remove_own
from tests.swarm_harness import Cluster
from tests.waiting import wait_until

pytestmark = pytest.mark.fault

#: The gateway's engine_timeout in this test (seconds).
ENGINE_TIMEOUT = 10.0


class FreezableEngine:
    """A loopback TCP address relaying to an engine (its Unix socket, or ``tcp://HOST:PORT``),
    freezable at will."""

    def __init__(self, target: str = "/var/run/docker.sock") -> None:
        self.target = target
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(256)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.thawed = threading.Event()
        self.thawed.set()
        self.closed = False
        #: Connections accepted while frozen (each one never answered until the thaw).
        self.accepted_frozen = 0
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="hrel-relay")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def freeze(self) -> None:
        self.thawed.clear()

    def thaw(self) -> None:
        self.thawed.set()

    def close(self) -> None:
        self.closed = True
        self.thawed.set()
        self._thread.join(5)
        self.listener.close()
        with self._lock:
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self.thawed.is_set():
                self.accepted_frozen += 1
            with self._lock:
                self._socks.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        self.thawed.wait()  # frozen: accepted, never answered
        if self.closed:
            return
        try:
            if self.target.startswith("tcp://"):
                host, _, port = self.target.removeprefix("tcp://").rpartition(":")
                upstream = socket.create_connection((host, int(port)), timeout=10)
                upstream.settimeout(None)
            else:
                upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                upstream.connect(self.target)
        except OSError:
            conn.close()
            return
        with self._lock:
            self._socks.append(upstream)
        threading.Thread(target=self._pump, args=(upstream, conn), daemon=True).start()
        self._pump(conn, upstream)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        """One direction; its end is passed on as a half-close (an attach sends stdin,
        half-closes, and reads the output after)."""
        try:
            while True:
                data = src.recv(1 << 16)
                self.thawed.wait()  # frozen: what was sent (or its end) waits
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
        except OSError:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def timed(http: httpx.Client, path: str, body: bytes = b"") -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    r = http.post(path, content=body)
    return r, time.monotonic() - t0


def thaw_and_recover(gw: OwnGateway, relay: FreezableEngine, http: httpx.Client) -> None:
    """Thaw; the gateway finds the engine again by itself and every kind of call runs."""
    relay.thaw()
    wait_until(lambda: gw.backend.engine_down is None, 60, "the engine found after the thaw")
    for name in ("once", "cold", "warm"):
        r = wait_until(
            lambda name=name: http.post(f"/function/{name}", content=b"after"),
            60,
            f"{name} answering after the thaw",
            ok=lambda r: r.status_code != 503,
        )
        assert (r.status_code, r.content) == (200, b"after"), (name, r.text)


def test_a_frozen_engine_is_found_and_calls_get_503_instead_of_hanging(
    engine: docker.DockerClient, tmp_path: Path
) -> None:
    relay = FreezableEngine()
    gw = OwnGateway(tmp_path, docker_host=relay.url, engine_timeout=ENGINE_TIMEOUT)
    # No call may wait longer than the engine's timeout, three times over (create, then
    # what the call does after), plus a margin for a loaded machine: then it hangs.
    bound = ENGINE_TIMEOUT * 3 + 15
    try:
        gw.start()
        with gw.http(timeout=bound) as http:
            functions = [
                {"name": "once", "image": BUSYBOX, "mode": "oneshot", "command": ["cat"]},
                {
                    "name": "warm",
                    "image": PYTHON,
                    "mode": "warm",
                    "command": ["cat"],
                    "min_containers": 1,
                },
                {"name": "cold", "image": PYTHON, "mode": "warm", "command": ["cat"]},
            ]
            for spec in functions:
                r = http.post("/system/functions", json={**spec, "timeout": 30})
                assert r.status_code == 201, r.text
            for name in ("once", "warm"):
                r = http.post(f"/function/{name}", content=b"before")
                assert (r.status_code, r.content) == (200, b"before"), r.text

            # 1. Frozen while nothing calls: the heartbeat finds it by itself.
            relay.freeze()
            t0 = time.monotonic()
            wait_until(
                lambda: gw.backend.engine_down is not None,
                HEARTBEAT_EVERY + ENGINE_TIMEOUT + 15,
                "the heartbeat to declare the engine down",
            )
            found = time.monotonic() - t0
            refused = []
            for path in ("/function/once", "/function/cold"):
                r, took = timed(http, path, b"frozen")
                assert r.status_code == 503, (path, r.text)
                assert r.json()["error"] == "engine_unavailable", r.text
                assert "does not reply" in r.json()["message"], r.text
                refused.append(took)
            # A warm container that is up needs no engine: it still answers.
            r, warm = timed(http, "/function/warm", b"still")
            assert (r.status_code, r.content) == (200, b"still"), r.text
            assert httpx.get(f"{gw.url}/healthz", timeout=5).status_code == 200
            thaw_and_recover(gw, relay, http)

            # 2. Frozen under a call: that call gets 503 within engine_timeout (bounded by
            # the client's timeout: a hang fails it), and declares the engine down.
            relay.freeze()
            r, first = timed(http, "/function/once", b"frozen")
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "engine_unavailable", r.text
            assert gw.backend.engine_down is not None
            r, after_first = timed(http, "/function/once", b"frozen")
            assert r.status_code == 503, r.text
            assert relay.accepted_frozen > 0, "nothing reached the frozen engine"
            thaw_and_recover(gw, relay, http)

        # Nothing is left of the calls refused meanwhile: a create the frozen engine took
        # in runs when it thaws, and the gateway removes what nobody owns.
        def leftovers() -> list[str]:
            flt = [f"swarmless.gateway={gw.instance}", "swarmless.function=once"]
            return [c["Id"] for c in engine.api.containers(all=True, filters={"label": flt})]

        wait_until(
            lambda: not leftovers(), RESYNC_AGAIN + 30, "no one-shot container left", interval=0.5
        )
        print(
            f"\n[frozen engine] engine_timeout {ENGINE_TIMEOUT:g} s: idle, the heartbeat found "
            f"it in {found:.1f} s, then calls got 503 in "
            f"{', '.join(f'{t * 1000:.0f} ms' for t in refused)}, a ready warm container "
            f"answered in {warm * 1000:.0f} ms; under a call: 503 after {first:.1f} s, the "
            f"next in {after_first * 1000:.0f} ms; {relay.accepted_frozen} connection(s) "
            "reached the frozen engine; recovered by itself both times"
        )
    finally:
        relay.thaw()
        gw.stop(engine)
        remove_own(engine, gw.instance)
        relay.close()


@pytest.mark.swarm
def test_a_frozen_swarm_manager_is_found_and_calls_get_503(
    cluster: Cluster, swarm_warm_image: str, tmp_path: Path
) -> None:
    """The Swarm backend's poller (twice a second, each poll bounded by engine_timeout)
    finds a frozen manager: calls that need a service get 503 at once; thawed, it serves."""
    relay = FreezableEngine(cluster.manager_url)
    gw = OwnSwarmGateway(cluster, tmp_path, docker_host=relay.url, engine_timeout=ENGINE_TIMEOUT)
    try:
        gw.start()
        gw.deploy(name="up", image=BUSYBOX, mode="oneshot", command=["tr", "a-z", "A-Z"])
        with gw.http(token=None, timeout=ENGINE_TIMEOUT * 3 + 15) as http:
            r = http.post("/function/up", content=b"before")
            assert (r.status_code, r.content) == (200, b"BEFORE"), r.text
            relay.freeze()
            t0 = time.monotonic()
            wait_until(
                lambda: gw.backend.engine_down is not None,
                ENGINE_TIMEOUT + 15,
                "the poller to declare the manager down",
            )
            found = time.monotonic() - t0
            r, took = timed(http, "/function/up", b"frozen")
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "engine_unavailable", r.text
            relay.thaw()
            wait_until(lambda: gw.backend.engine_down is None, 60, "the manager found again")
            r = wait_until(
                lambda: http.post("/function/up", content=b"after"),
                60,
                "a call after the thaw",
                ok=lambda r: r.status_code != 503,
            )
            assert (r.status_code, r.content) == (200, b"AFTER"), r.text
        print(
            f"\n[frozen engine] Swarm manager frozen: found in {found:.1f} s "
            f"(engine_timeout {ENGINE_TIMEOUT:g} s), then a one-shot call got 503 in "
            f"{took * 1000:.0f} ms; served again after the thaw"
        )
    finally:
        relay.thaw()
        gw.stop()
        relay.close()
