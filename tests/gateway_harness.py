"""A real gateway for tests: uvicorn on a free loopback port, in a thread of the test process.

Each harness has its own data directory, its own function network and its own instance
name, so it never touches the containers of another gateway on the same engine; every
container it starts also carries the test session's label.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import httpx

from swarmless.backends.base import Backend
from swarmless.backends.docker import DockerBackend
from swarmless.config import Settings
from swarmless.gateway.app import Gateway
from swarmless.gateway.server import GatewayServer, loop_factory
from swarmless.sdk.gateway import GatewayClient
from tests.networks import remove_network
from tests.waiting import wait_until

TOKEN = "test-admin-token"


class RunningGateway:
    """Start with ``start()``; ``stop()`` drains and removes every container it started.

    The instance is named ``<instance_prefix>-<8 hex digits>`` (a suite's own prefix keeps
    its objects apart); it listens on 127.0.0.1 on a free port unless ``settings`` say
    otherwise."""

    def __init__(
        self,
        data_dir: Path,
        labels: dict[str, str],
        *,
        backend_class: Callable[..., Backend] = DockerBackend,
        network_prefix: str = "swarmless-",
        instance_prefix: str = "test",
        **settings: Any,
    ) -> None:
        self.instance = f"{instance_prefix}-{uuid.uuid4().hex[:8]}"
        #: The function network is the harness's own name, removed by :meth:`stop` on a
        #: deadline (:func:`~tests.networks.remove_network`). One given by name is removed
        #: only if nothing holds it then: it may be another's, in use (the voting app's).
        self.own_network = "network" not in settings
        settings.setdefault("network", f"{network_prefix}{self.instance}")
        settings = {"host": "127.0.0.1", "port": 0, **settings}
        self.settings = Settings.load(data_dir=data_dir, instance=self.instance, **settings)
        self.backend = backend_class(self.settings, labels=labels)
        self.gateway = Gateway(self.settings, backend=self.backend, token=TOKEN, drain_timeout=5)
        self.server = GatewayServer(self.gateway)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.url = ""

    def start(self) -> RunningGateway:
        def run() -> None:
            try:
                # The event loop `swarmless up` runs on (uvloop), not asyncio.run's.
                with asyncio.Runner(loop_factory=loop_factory()) as runner:
                    runner.run(self.server.serve())
            except BaseException as e:  # surfaced by start()/stop()
                self._error = e

        thread = self._thread = threading.Thread(target=run, daemon=True, name=self.instance)
        thread.start()

        def started() -> bool:
            if self._error is not None or not thread.is_alive():
                raise RuntimeError(f"gateway did not start: {self._error!r}")
            return bool(self.server.started)

        wait_until(started, 60, "the gateway to start", interval=0.02)
        self.url = f"http://127.0.0.1:{self.server.port}"
        return self

    def client(self, token: str | None = TOKEN) -> GatewayClient:
        return GatewayClient(Settings.load(gateway_url=self.url, token=token))

    def http(self, token: str | None = TOKEN, timeout: float = 60) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    @property
    def dispatcher(self) -> Any:
        return self.gateway.dispatcher

    def containers(self, engine: docker.DockerClient, **labels: str) -> list[str]:
        """Ids of this gateway's containers (with ``labels``), running or not."""
        flt = [f"swarmless.gateway={self.instance}"] + [f"{k}={v}" for k, v in labels.items()]
        return [c["Id"] for c in engine.api.containers(all=True, filters={"label": flt})]

    def wait_for(self, predicate: Any, timeout: float = 30, what: str = "condition") -> None:
        """:func:`tests.waiting.wait_until`, with this harness's defaults."""
        wait_until(predicate, timeout, what)

    def shutdown(self) -> None:
        """Stop serving (the gateway drains and removes its containers) and wait for it."""
        self.server.stop()
        if self._thread is not None:
            self._thread.join(60)

    def stop(self, engine: docker.DockerClient | None = None) -> None:
        """:meth:`shutdown`, then remove whatever of this gateway is left on ``engine``."""
        self.shutdown()
        if engine is not None:
            for cid in self.containers(engine):
                with contextlib.suppress(docker.errors.DockerException):
                    engine.api.remove_container(cid, force=True)
            if self.own_network:
                remove_network(engine, self.settings.network)
            else:  # given: removed if nothing holds it (else its owner does: the voting app)
                with contextlib.suppress(docker.errors.DockerException):
                    engine.networks.get(self.settings.network).remove()
        if self._error is not None:
            raise self._error


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GatewayProcess:
    """``swarmless up`` as a real process, killable with SIGKILL."""

    def __init__(
        self,
        data_dir: Path,
        instance: str,
        network: str,
        port: int,
        env: dict[str, str] | None = None,
    ) -> None:
        self.env = {
            **os.environ,
            "SWARMLESS_DATA_DIR": str(data_dir),
            "SWARMLESS_INSTANCE": instance,
            "SWARMLESS_NETWORK": network,
            "SWARMLESS_PORT": str(port),
            **(env or {}),
        }
        self.url = f"http://127.0.0.1:{port}"
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.data_dir / "gateway.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "swarmless", "up", "--log-level", "warning"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        proc = self.proc

        def answers() -> bool:
            if proc.poll() is not None:
                tail = (self.data_dir / "gateway.log").read_text(errors="replace")[-3000:]
                raise AssertionError(f"the gateway process exited ({proc.returncode}):\n{tail}")
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200

        wait_until(
            answers,
            60,
            f"the gateway process to answer at {self.url}/healthz",
            interval=0.1,
            ignore=(httpx.HTTPError,),
        )

    @property
    def token(self) -> str:
        return self.env.get("SWARMLESS_TOKEN") or (self.data_dir / "token").read_text().strip()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class CallLoad:
    """Sync calls to one URL from a few threads, bounded in time, while a test breaks
    something: counts the outcomes, and keeps every failure that is not a gateway's clear
    ``503 gateway_unavailable`` (a transport error, another status) in ``bad``."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        body: bytes,
        *,
        threads: int = 3,
        seconds: float = 60,
    ) -> None:
        self.url, self.headers, self.body, self.seconds = url, headers, body, seconds
        self.outcomes: Counter[str] = Counter()
        self.bad: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def __enter__(self) -> CallLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.seconds + 30)

    @property
    def ok(self) -> int:
        return self.outcomes["ok"]

    def _run(self) -> None:
        with httpx.Client(headers=self.headers, timeout=60) as c:
            end = time.monotonic() + self.seconds
            while not self._stop.is_set() and time.monotonic() < end:
                try:
                    r = c.post(self.url, content=self.body)
                except httpx.HTTPError as e:
                    with self._lock:
                        self.bad.append(f"transport error: {e!r}")
                    continue
                with self._lock:
                    if r.status_code == 200:
                        self.outcomes["ok"] += 1
                    elif r.status_code == 503 and r.json()["error"] == "gateway_unavailable":
                        self.outcomes["gateway_unavailable"] += 1
                    else:
                        self.outcomes[f"{r.status_code} {r.json().get('error')}"] += 1
                        self.bad.append(r.text)


def all_ended(http: httpx.Client, url: str, function: str, ids: list[str]) -> bool:
    """Whether every call of ``ids`` (async calls of ``function``) succeeded or is dead."""
    rows = http.get(f"{url}/invocations", params={"function": function, "limit": 5000})
    status = {r["id"]: r["status"] for r in rows.json()}
    return all(status.get(i) in ("succeeded", "dead") for i in ids)
