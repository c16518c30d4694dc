"""Shared pieces of the benchmarks: a gateway process, a function image, percentiles."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx

PYTHON = os.environ.get("SWARMLESS_BASE_IMAGE", "swarmless/python:bookworm")


def build_image(engine: docker.DockerClient, tag: str, handler: str, label: str) -> str:
    """An image FROM the Python base with ``handler`` as /function/handler.py."""
    dockerfile = f"FROM {PYTHON}\nCOPY handler.py /function/handler.py\nWORKDIR /function\n"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("Dockerfile", dockerfile.encode()), ("handler.py", handler.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    engine.images.build(
        fileobj=buf, custom_context=True, tag=tag, rm=True, labels={"swarmless.bench": label}
    )
    return tag


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


class Gateway:
    """A ``swarmless up`` process with its own data dir, network and instance name."""

    def __init__(self, url: str, token: str, instance: str) -> None:
        self.url, self.token, self.instance = url, token, instance

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@contextlib.contextmanager
def gateway(engine: docker.DockerClient, name: str) -> Iterator[Gateway]:
    """Start a gateway process; on exit stop it and remove all it created."""
    instance = f"bench-{name}-{os.getpid()}"
    data = Path(tempfile.mkdtemp(prefix=f"swarmless-bench-{name}-"))
    port = free_port()
    env = {
        **os.environ,
        "SWARMLESS_DATA_DIR": str(data),
        "SWARMLESS_INSTANCE": instance,
        "SWARMLESS_NETWORK": f"swarmless-{instance}",
        "SWARMLESS_PORT": str(port),
    }
    log = open(data / "gateway.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "swarmless", "up", "--log-level", "warning"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"gateway did not start; see {data / 'gateway.log'}")
            time.sleep(0.1)
        yield Gateway(url, (data / "token").read_text().strip(), instance)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        flt = {"label": f"swarmless.gateway={instance}"}
        for c in engine.api.containers(all=True, filters=flt):
            with contextlib.suppress(docker.errors.DockerException):
                engine.api.remove_container(c["Id"], force=True)
        with contextlib.suppress(docker.errors.DockerException):
            engine.networks.get(f"swarmless-{instance}").remove()
