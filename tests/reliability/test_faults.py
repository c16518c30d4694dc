"""Faults under sync and async load, and what the gateway makes of them.

- The Docker Engine restarted (its dockerd killed, held down a few seconds, started again):
  calls that need a container are answered 503 ``engine_unavailable`` at once, async
  calls are still accepted; once it is back the gateway finds what died, removes what
  nobody owns and serves again by itself.
- The gateway SIGKILLed, then started again; the gateway SIGTERMed (it drains once,
  within ``drain_timeout``, and answers the calls it stops waiting for).
- A warm container killed (or crashing) mid-call: the caller gets a 502 with the
  container's exit reason; the call runs again only when the function is idempotent.
- A call that brings its gateway down each time it runs ends in the dead letter.
- A ready worker whose death went unheard is checked against the engine and replaced.

Each load test checks three figures, and prints them (``pytest -s`` or ``-rP``): every
accepted async call is accounted for (it ended ``succeeded`` or ``dead``), every sync
caller got an answer (an HTTP status within its timeout; when the gateway is SIGKILLed,
the calls in flight see their connection cut, all a dead process can do), and no
container is left that nobody owns once the gateway recovered (none at all after it stops).

The engine restart runs against an engine of its own: a Docker-in-Docker node (the image
of scripts/swarm-cluster.sh, one node, no swarm), whose dockerd the test kills. The host's
engine is shared with other tests and is never restarted. Load loops are bounded in count
and in time; every wait is on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest

from swarmless.backends.docker import DockerBackend
from swarmless.config import Settings
from swarmless.dispatch.background import Background
from swarmless.dispatch.dispatcher import Dispatcher
from swarmless.dispatch.oneshot import OneShotCalls
from swarmless.dispatch.recorder import Recorder
from swarmless.dispatch.workers import WorkerRegistry
from swarmless.scaling.reconciler import Reconciler
from swarmless.spec import FunctionSpec
from swarmless.store import Store
from tests.conftest import BUSYBOX, SESSION, handler_image
from tests.gateway_harness import TOKEN, GatewayProcess, RunningGateway, free_port
from tests.networks import remove_network
from tests.waiting import eventually, wait_until

pytestmark = pytest.mark.fault

ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": f"Bearer {TOKEN}"}

HANDLERS = """
import os, time

def handle(event, context):
    body = event["body"] or b""
    if body.startswith(b"sleep:"):
        time.sleep(float(body[6:]))
    return {"host": os.uname().nodename, "body": body.decode()}

def crash(event, context):
    os._exit(3)
"""


@pytest.fixture(scope="module")
def image(build_image: Callable[..., str]) -> str:
    return handler_image(build_image, "faults", HANDLERS)


# -- load ---------------------------------------------------------------------------------


class Load:
    """Sync calls from a few threads and async submissions from one, against one function,
    until stopped, ``seconds`` passed, or the counts are reached.

    Sync outcomes are counted by status and error code (``transport: refused`` when no
    gateway listened: nothing was sent; ``transport: cut`` when the connection broke with
    the request sent); a caller that got nothing within its timeout is a hang. A client
    that is refused or told 503 waits ``pause`` before its next call, as a real one would.
    """

    def __init__(
        self,
        url: str,
        function: str,
        *,
        body: bytes = b"sleep:0.2",
        sync_threads: int = 3,
        seconds: float = 150,
        max_sync: int = 3000,
        max_async: int = 300,
        async_every: float = 0.05,
        timeout: float = 60,
        pause: float = 0.05,
    ) -> None:
        self.url = url
        self.function = function
        self.body = body
        self.seconds = seconds
        self.max_sync, self.max_async = max_sync, max_async
        self.async_every, self.timeout, self.pause = async_every, timeout, pause
        self.sync: Counter[str] = Counter()
        self.samples: dict[str, str] = {}
        self.hangs: list[str] = []
        #: When each cut happened (monotonic).
        self.cuts: list[float] = []
        self.accepted: list[str] = []
        self.refused: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._end = 0.0
        self._threads = [threading.Thread(target=self._sync) for _ in range(sync_threads)]
        self._threads.append(threading.Thread(target=self._async))

    def __enter__(self) -> Load:
        self._end = time.monotonic() + self.seconds
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 30)

    def running(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self._end

    @property
    def ok(self) -> int:
        with self._lock:
            return self.sync["200"]

    def _count(self, outcome: str, sample: str = "") -> None:
        with self._lock:
            self.sync[outcome] += 1
            if sample:
                self.samples.setdefault(outcome, sample[:500])

    def _sync(self) -> None:
        with httpx.Client(timeout=self.timeout) as http:
            while self.running() and sum(self.sync.values()) < self.max_sync:
                try:
                    r = http.post(f"{self.url}/function/{self.function}", content=self.body)
                except httpx.ConnectError:
                    self._count("transport: refused")
                    self._stop.wait(self.pause)
                    continue
                except httpx.TimeoutException as e:
                    with self._lock:
                        self.hangs.append(repr(e))
                    continue
                except httpx.TransportError as e:
                    self._count("transport: cut", repr(e))
                    with self._lock:
                        self.cuts.append(time.monotonic())
                    continue
                code = "" if r.status_code == 200 else _error_code(r)
                self._count(f"{r.status_code} {code}".strip(), "" if code == "" else r.text)
                if r.status_code >= 500:
                    self._stop.wait(self.pause)

    def _async(self) -> None:
        with httpx.Client(timeout=self.timeout) as http:
            while self.running() and len(self.accepted) < self.max_async:
                try:
                    r = http.post(f"{self.url}/async-function/{self.function}", content=self.body)
                except httpx.TransportError as e:
                    self.refused[type(e).__name__] += 1
                else:
                    if r.status_code == 202:
                        with self._lock:
                            self.accepted.append(r.headers["x-call-id"])
                    else:
                        self.refused[f"{r.status_code} {_error_code(r)}"] += 1
                self._stop.wait(self.async_every)

    def figures(self, name: str) -> dict[str, Any]:
        out = {
            "sync": dict(self.sync),
            "hangs": len(self.hangs),
            "async accepted": len(self.accepted),
            "async refused": dict(self.refused),
        }
        print(f"\n[{name}] load: {json.dumps(out)}")
        return out


def _error_code(r: httpx.Response) -> str:
    try:
        return str(r.json().get("error"))
    except ValueError:
        return "(not JSON)"


def fates(url: str, ids: list[str], token: str = TOKEN) -> Counter[str]:
    """The status of each async call of ``ids``, counted."""
    out: Counter[str] = Counter()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
        for call_id in ids:
            r = http.get(f"/invocations/{call_id}", timeout=30)
            out[r.json()["status"] if r.status_code == 200 else f"HTTP {r.status_code}"] += 1
    return out


def all_accounted(url: str, ids: list[str], token: str = TOKEN) -> Counter[str] | None:
    """The fates of ``ids`` once every one ended (succeeded or dead); None before."""
    found = fates(url, ids, token)
    return found if set(found) <= {"succeeded", "dead"} else None


# -- a Docker-in-Docker engine that a test may restart -----------------------------------

NODE_IMAGE = os.environ.get("SWARMLESS_NODE_IMAGE", "swarmless/dind-node:bookworm")
NODE_PORT = 2375
#: The node runs its image's entrypoint (iptables and cgroup set-up, then dockerd) again
#: each time dockerd exits, unless the file $HOLD exists: then it waits until it is gone.
NODE_LOOP = (
    'while :; do while [ -e "$HOLD" ]; do sleep 0.1; done; '
    "/usr/local/bin/swarmless-node; echo 'node: dockerd exited' >&2; done"
)


class Node:
    """One Docker-in-Docker engine on its own bridge network, labelled with the session.

    Its ``folder`` (on the host) is mounted at the same path in the node: the gateways
    under test keep their data there, so the runtime package the docker backend
    bind-mounts into warm containers is found by the node's engine too.
    """

    def __init__(self, host: docker.DockerClient, labels: dict[str, str], folder: Path) -> None:
        self.host = host
        self.labels = labels
        self.name = f"swarmless-fault-{SESSION}"
        self.folder = folder
        self.hold = folder / "hold"
        self.ip = ""
        self.host_ip = ""
        self._client: docker.DockerClient | None = None

    def up(self) -> Node:
        done = subprocess.run(
            ["bash", str(ROOT / "scripts" / "swarm-cluster.sh"), "image"],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"no Docker-in-Docker node image: {done.stderr[-1000:]}")
        net = self.host.networks.create(self.name, driver="bridge", labels=self.labels)
        api = self.host.api
        host_config = api.create_host_config(
            network_mode=self.name,
            tmpfs={"/run": "", "/tmp": ""},
            binds=[f"{self.folder}:{self.folder}:ro"],
            **self._security(),
        )
        if not host_config.get("Privileged"):
            host_config.update(MaskedPaths=[], ReadonlyPaths=[])  # systempaths=unconfined
        api.create_container(
            NODE_IMAGE,
            name=self.name,
            hostname=self.name,
            labels=self.labels,
            entrypoint=["/bin/sh", "-c", NODE_LOOP],
            environment={"HOLD": str(self.hold)},
            host_config=host_config,
        )
        api.start(self.name)
        net.reload()
        self.host_ip = net.attrs["IPAM"]["Config"][0]["Gateway"].split("/")[0]
        attrs = self.host.api.inspect_container(self.name)
        self.ip = attrs["NetworkSettings"]["Networks"][self.name]["IPAddress"]
        self.wait_engine(90)
        return self

    def _security(self) -> dict[str, Any]:
        """--privileged where the kernel allows it, else every capability but
        SYS_RESOURCE and no confinement (as scripts/swarm-cluster.sh does)."""
        api = self.host.api
        probe = api.create_container(
            NODE_IMAGE,
            entrypoint=["/bin/true"],
            labels=self.labels,
            host_config=api.create_host_config(privileged=True),
        )["Id"]
        try:
            api.start(probe)
            return {"privileged": True}
        except docker.errors.DockerException:
            return {
                "cap_add": ["ALL"],
                "cap_drop": ["SYS_RESOURCE"],
                "security_opt": ["seccomp=unconfined", "apparmor=unconfined", "label=disable"],
            }
        finally:
            with contextlib.suppress(docker.errors.DockerException):
                api.remove_container(probe, force=True, v=True)  # its image has a VOLUME

    @property
    def url(self) -> str:
        return f"tcp://{self.ip}:{NODE_PORT}"

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = docker.DockerClient(base_url=self.url, version="auto", timeout=30)
        return self._client

    def answers(self) -> bool:
        try:
            with docker.APIClient(base_url=self.url, version="auto", timeout=3) as api:
                return bool(api.ping())
        except docker.errors.DockerException:
            return False
        except OSError:
            return False

    def wait_engine(self, timeout: float) -> None:
        wait_until(self.answers, timeout, f"the engine of {self.name} to answer", interval=0.2)

    def load(self, *images: str) -> None:
        subprocess.run(
            f"docker save {' '.join(images)} | docker -H {self.url} load -q",
            shell=True,
            check=True,
            capture_output=True,
            timeout=600,
        )

    def dockerd_pid(self) -> int:
        """The host pid of the node's dockerd (none: 0)."""
        top = self.host.api.top(self.name, ps_args="-eo pid,comm")
        pids = [int(p[0]) for p in top["Processes"] if p[1] == "dockerd"]
        return pids[0] if pids else 0

    def kill_dockerd(self, held: bool) -> None:
        """SIGKILL the node's dockerd; with ``held``, it is not started again until
        :meth:`release`."""
        pid = self.dockerd_pid()
        assert pid, "the node runs no dockerd"
        if held:
            self.hold.touch()
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not self.answers(), 30, "the node's engine to stop answering")
        if self._client is not None:
            self._client.close()
            self._client = None

    def release(self) -> None:
        self.hold.unlink(missing_ok=True)

    def containers(self, instance: str) -> list[dict[str, Any]]:
        """Containers of the gateway ``instance`` on the node, running or not."""
        flt = {"label": f"swarmless.gateway={instance}"}
        return list(self.client.api.containers(all=True, filters=flt))

    def down(self) -> None:
        self.release()
        if self._client is not None:
            self._client.close()
        with contextlib.suppress(docker.errors.DockerException):
            self.host.api.remove_container(self.name, force=True, v=True)
        remove_network(self.host, self.name)


@pytest.fixture(scope="module")
def node(
    engine: docker.DockerClient,
    labels: dict[str, str],
    image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Node]:
    n = Node(engine, labels, tmp_path_factory.mktemp("fault-node"))
    try:
        n.up()
        n.load(image, BUSYBOX)
        yield n
    finally:
        n.down()


class NodeGateway(RunningGateway):
    """A gateway in a thread of the test process, driving the node's engine over TCP; it
    listens on the host's address on the node's network, where containers reach it."""

    def __init__(self, node: Node, data_dir: Path, labels: dict[str, str]) -> None:
        with socket.socket() as s:
            s.bind((node.host_ip, 0))
            port = int(s.getsockname()[1])
        super().__init__(
            data_dir,
            labels,
            host=node.host_ip,
            port=port,
            docker_host=node.url,
            advertise_url=f"http://{node.host_ip}:{port}",
        )

    def start(self) -> NodeGateway:
        super().start()
        self.url = f"http://{self.settings.host}:{self.server.port}"
        return self


def deploy(url: str, token: str = TOKEN, **spec: Any) -> None:
    r = httpx.post(
        f"{url}/system/functions",
        json=spec,
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    )
    assert r.status_code in (200, 201), r.text


# -- the engine restarted -----------------------------------------------------------------


def test_engine_restart_under_load(node: Node, image: str, labels: dict[str, str]) -> None:
    gw = NodeGateway(node, node.folder / uuid.uuid4().hex[:8], labels).start()
    try:
        _engine_restart(gw, node, image)
    finally:
        gw.stop()
        with contextlib.suppress(docker.errors.DockerException):
            for c in node.containers(gw.instance):
                node.client.api.remove_container(c["Id"], force=True)
            node.client.networks.get(gw.settings.network).remove()


def _engine_restart(gw: NodeGateway, node: Node, image: str) -> None:
    deploy(gw.url, name="echo", image=image, mode="warm", handler="handler:handle",
           min_containers=2, max_containers=4, timeout=30, retries=3)  # fmt: skip
    deploy(gw.url, name="once", image=BUSYBOX, command=["echo", "once"])
    dispatcher = gw.gateway.dispatcher
    assert dispatcher is not None
    pool = dispatcher.pools["echo"]
    wait_until(lambda: pool.counts()["ready"] >= 2, 120, "2 ready workers")
    before = {w.container for w in pool.workers.values()}

    with Load(gw.url, "echo", max_async=200) as load:
        wait_until(lambda: load.ok >= 20 and len(load.accepted) >= 20, 60, "load flowing")
        before_kill = Counter(load.sync)
        node.kill_dockerd(held=True)
        wait_until(lambda: gw.backend.engine_down, 30, "the gateway to see the engine gone")
        # Calls that need a container are refused at once, async calls still accepted.
        t0 = time.monotonic()
        r = httpx.post(f"{gw.url}/function/once", timeout=30)
        refused_in = time.monotonic() - t0
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "engine_unavailable"
        assert "async calls are still queued" in r.json()["message"]
        assert refused_in < 3, f"a call needing a container waited {refused_in:.1f}s"
        accepted_down = len(load.accepted)
        wait_until(lambda: len(load.accepted) >= accepted_down + 40, 30, "async accepted")
        during = dict(Counter(load.sync) - before_kill)
        node.release()
        node.wait_engine(120)
        # Back by itself: the dead workers found and replaced, calls served again.
        wait_until(lambda: gw.backend.engine_down is None, 60, "the gateway to see it back")
        ok_back = load.ok
        wait_until(lambda: load.ok >= ok_back + 20, 120, "sync calls served again")
        load.stop()
    figures = load.figures("engine restart")
    print(f"[engine restart] sync answers while the engine was away: {during}")
    assert load.hangs == [], load.hangs
    allowed = {"200", "502 container_error", "503 engine_unavailable"}
    assert set(load.sync) <= allowed, load.samples
    assert not load.refused, "async calls were refused"

    accounted = wait_until(
        lambda: all_accounted(gw.url, load.accepted), 180, "every accepted async call ended"
    )
    print(f"[engine restart] async: accepted {figures['async accepted']}, fates {accounted}")
    assert sum(accounted.values()) == len(load.accepted)
    assert accounted["succeeded"] == len(load.accepted), accounted

    # The containers of before the restart are gone; what runs belongs to live workers.
    def owned() -> bool:
        live = {w.container for w in pool.workers.values() if w.container}
        on_node = {c["Id"] for c in node.containers(gw.instance)}
        return on_node == live and not (live & before) and pool.counts()["ready"] >= 2

    wait_until(owned, 60, "only live workers' containers on the engine, none of before")
    print(f"[engine restart] orphans after recovery: 0 ({len(pool.workers)} live workers)")
    gw.stop()
    assert node.containers(gw.instance) == [], "containers left after the gateway stopped"


# -- the gateway killed, or stopped -------------------------------------------------------

#: A gateway process with a short drain timeout and the test's labels (``swarmless up``
#: waits 30 s and labels nothing for the test session's cleanup).
LAUNCHER = """
import json, os, sys
from swarmless.backends.docker import DockerBackend
from swarmless.config import Settings
from swarmless.gateway.app import Gateway
from swarmless.gateway.server import run

settings = Settings.load()
backend = DockerBackend(settings, labels=json.loads(os.environ["FAULT_LABELS"]))
gateway = Gateway(settings, backend=backend, token=os.environ["FAULT_TOKEN"],
                  drain_timeout=float(os.environ["FAULT_DRAIN"]))
run(gateway)  # as `swarmless up` runs it: on its event loop (uvloop)
"""


#: How a gateway process ends after a clean SIGTERM: uvicorn re-raises the signal it
#: handled once it has shut down.
EXITED = (0, -signal.SIGTERM)


class Launched(GatewayProcess):
    """The gateway as a real process (SIGKILL, SIGTERM), with ``drain_timeout``."""

    def __init__(self, data_dir: Path, labels: dict[str, str], *, drain: float = 5) -> None:
        instance = f"test-{uuid.uuid4().hex[:8]}"
        self.instance = instance
        super().__init__(
            data_dir,
            instance,
            f"swarmless-{instance}",
            free_port(),
            env={
                "FAULT_LABELS": json.dumps(labels),
                "FAULT_TOKEN": TOKEN,
                "FAULT_DRAIN": str(drain),
            },
        )

    def start(self) -> None:
        log = open(self.data_dir / "gateway.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        wait_until(
            lambda: httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200,
            90,
            "the gateway process to answer",
            ignore=(httpx.HTTPError,),
            interval=0.1,
        )

    @property
    def token(self) -> str:
        return TOKEN

    def containers(self, engine: docker.DockerClient, **labels: str) -> list[dict[str, Any]]:
        flt = [f"swarmless.gateway={self.instance}"] + [f"{k}={v}" for k, v in labels.items()]
        return list(engine.api.containers(all=True, filters={"label": flt}))

    def left(self, engine: docker.DockerClient) -> str:
        """What of this gateway is still on ``engine`` (none: empty), and its log's end."""
        found = self.containers(engine)
        if not found:
            return ""
        seen = [(c["Names"], c["Status"], c["Labels"].get("swarmless.worker")) for c in found]
        log = (self.data_dir / "gateway.log").read_text(errors="replace")[-4000:]
        return f"containers left: {seen}; the gateway's log ends:\n{log}"

    def cleanup(self, engine: docker.DockerClient) -> None:
        self.stop()
        # Its function containers, and its bytecode build containers (a gateway killed
        # during a build leaves its own, labelled with the instance, not the gateway).
        flt = {"label": [f"swarmless.instance={self.instance}"]}
        for c in [*self.containers(engine), *engine.api.containers(all=True, filters=flt)]:
            with contextlib.suppress(docker.errors.DockerException):
                engine.api.remove_container(c["Id"], force=True)
        remove_network(engine, self.env["SWARMLESS_NETWORK"])


def test_gateway_sigkill_under_load(
    engine: docker.DockerClient, image: str, labels: dict[str, str], tmp_path: Path
) -> None:
    gw = Launched(tmp_path, labels)
    try:
        gw.start()
        deploy(gw.url, name="echo", image=image, mode="warm", handler="handler:handle",
               min_containers=2, max_containers=4, timeout=30)  # fmt: skip
        wait_until(lambda: len(gw.containers(engine)) >= 2, 120, "2 containers")
        with Load(gw.url, "echo", max_async=200) as load:
            wait_until(lambda: load.ok >= 20 and len(load.accepted) >= 20, 60, "load flowing")
            old = {c["Id"] for c in gw.containers(engine)}
            t_kill = time.monotonic()
            gw.kill()
            wait_until(lambda: sum(load.refused.values()) >= 5, 30, "submissions refused")
            t_start = time.monotonic()
            gw.start()
            t_up = time.monotonic()
            ok_back = load.ok
            wait_until(lambda: load.ok >= ok_back + 20, 120, "sync calls served again")
            load.stop()
        figures = load.figures("gateway SIGKILL")
        print(
            f"[gateway SIGKILL] cuts at {[round(t - t_kill, 2) for t in load.cuts]} s after "
            f"the kill; restarted at {t_start - t_kill:.2f} s, up at {t_up - t_kill:.2f} s"
        )
        assert load.hangs == [], load.hangs
        # In flight at the kill (or sent on a kept-alive connection the kill closed): cut;
        # while it was down: refused (nothing sent); else 200.
        assert set(load.sync) <= {"200", "transport: cut", "transport: refused"}, load.samples
        assert load.sync["transport: cut"] <= 2 * 3, load.samples  # 3 sync threads

        accounted = wait_until(
            lambda: all_accounted(gw.url, load.accepted), 180, "every accepted async call ended"
        )
        print(f"[gateway SIGKILL] async: accepted {figures['async accepted']}, fates {accounted}")
        assert accounted["succeeded"] == len(load.accepted), accounted

        # The killed gateway's containers were removed by the next one; its own remain.
        def owned() -> bool:
            now = {c["Id"] for c in gw.containers(engine)}
            return len(now) >= 2 and not now & old

        wait_until(owned, 60, "the old gateway's containers removed")
        print("[gateway SIGKILL] orphans after recovery: 0")
        gw.stop()
        assert gw.proc is not None
        assert gw.proc.returncode in EXITED, gw.proc.returncode
        assert not (left := gw.left(engine)), left
    finally:
        gw.cleanup(engine)


def test_gateway_sigterm_drains_once(
    engine: docker.DockerClient, image: str, labels: dict[str, str], tmp_path: Path
) -> None:
    drain = 5.0
    gw = Launched(tmp_path, labels, drain=drain)
    try:
        gw.start()
        deploy(gw.url, name="echo", image=image, mode="warm", handler="handler:handle",
               min_containers=3, max_containers=6, timeout=60)  # fmt: skip
        deploy(gw.url, name="nap", image=BUSYBOX, command=["sleep", "60"], timeout=90)
        wait_until(lambda: len(gw.containers(engine)) >= 3, 120, "3 containers")
        answers: dict[str, httpx.Response | str] = {}

        def call(key: str, path: str, body: bytes) -> None:
            try:
                answers[key] = httpx.post(f"{gw.url}{path}", content=body, timeout=120)
            except httpx.HTTPError as e:
                answers[key] = repr(e)

        calls = {
            "long warm": ("/function/echo", b"sleep:40"),  # outlasts the drain
            "long oneshot": ("/function/nap", b""),  # outlasts the drain
            "short warm": ("/function/echo", b"sleep:2"),  # ends within it
        }
        threads = [threading.Thread(target=call, args=(k, *v)) for k, v in calls.items()]
        for t in threads:
            t.start()
        r = httpx.post(f"{gw.url}/async-function/echo", content=b"sleep:15")
        assert r.status_code == 202
        slow_async = r.headers["x-call-id"]

        def in_flight() -> dict[str, int]:
            got = httpx.get(f"{gw.url}/system/functions", headers=AUTH, timeout=10)
            return {f["name"]: int(f["containers"]["in_flight"]) for f in got.json()}

        try:
            wait_until(
                in_flight, 90, "the 4 calls running", ok=lambda n: n == {"echo": 3, "nap": 1}
            )
        except AssertionError as e:
            raise AssertionError(f"{e}; answers: {answers}") from None
        assert gw.proc is not None
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        late = httpx.post(f"{gw.url}/function/echo", content=b"x", timeout=10)
        gw.proc.wait(60)
        took = time.monotonic() - t0
        for t in threads:
            t.join(30)
        print(f"\n[gateway SIGTERM] exit after {took:.1f}s (drain_timeout {drain:g}s)")
        print(f"[gateway SIGTERM] answers: { {k: _show(v) for k, v in answers.items()} }")
        assert gw.proc.returncode in EXITED, gw.proc.returncode
        # Drained once: the drain, uvicorn's wait and the lifespan share drain_timeout;
        # what is left is removing the containers (before: up to three times it).
        assert took < drain + 4, f"SIGTERM took {took:.1f}s with drain_timeout {drain:g}s"
        assert late.status_code == 503
        assert late.json()["error"] == "gateway_unavailable"
        short = answers["short warm"]
        assert isinstance(short, httpx.Response), short
        assert short.status_code == 200, _show(short)
        for key in ("long warm", "long oneshot"):
            got = answers[key]
            assert isinstance(got, httpx.Response), f"{key}: no answer: {got}"
            assert got.status_code == 504, got.text
            assert "the gateway shut down before" in got.json()["message"]
        assert not (left := gw.left(engine)), f"after SIGTERM: {left}"

        # The async call it stopped waiting for was given back to the queue, not lost.
        gw.start()
        accounted = wait_until(lambda: all_accounted(gw.url, [slow_async]), 90, "it ran")
        assert accounted == Counter(succeeded=1)
        print("[gateway SIGTERM] async: accepted 1, fates", dict(accounted))
    finally:
        gw.cleanup(engine)


def _show(v: httpx.Response | str) -> str:
    return v if isinstance(v, str) else f"{v.status_code} {v.text[:120]}"


def test_a_call_that_kills_its_gateway_goes_to_the_dead_letter(
    engine: docker.DockerClient, image: str, labels: dict[str, str], tmp_path: Path
) -> None:
    gw = Launched(tmp_path, labels)
    try:
        gw.start()
        deploy(gw.url, name="poison", image=image, mode="warm", handler="handler:handle",
               timeout=120, retries=10)  # fmt: skip
        r = httpx.post(f"{gw.url}/async-function/poison", content=b"sleep:100")
        call_id = r.headers["x-call-id"]

        def running() -> int:  # claimed by this gateway, and in a worker's hands
            got = httpx.get(f"{gw.url}/system/functions/poison", headers=AUTH, timeout=10)
            counts = got.json()["containers"]
            return int(counts.get("async_running", 0)) and int(counts["in_flight"])

        for _ in range(3):  # each time the call runs, its gateway dies
            wait_until(running, 60, "the call running")
            gw.kill()
            gw.start()
        dead = wait_until(
            lambda: httpx.get(f"{gw.url}/invocations/{call_id}", headers=AUTH).json(),
            60,
            "the call in the dead letter",
            ok=lambda rec: rec["status"] == "dead",
        )
        print(f"\n[poison call] {dead['status']}: {dead['error']}")
        assert "runs lost with their gateway" in dead["error"]
    finally:
        gw.cleanup(engine)


# -- a warm container dying mid-call ------------------------------------------------------


@pytest.fixture
def gw(
    engine: docker.DockerClient, labels: dict[str, str], tmp_path: Path
) -> Iterator[RunningGateway]:
    g = RunningGateway(tmp_path, labels).start()
    yield g
    g.stop(engine)


def test_container_killed_mid_call_answers_502_with_its_exit_reason(
    gw: RunningGateway, image: str, engine: docker.DockerClient
) -> None:
    deploy(gw.url, name="midcall", image=image, mode="warm", handler="handler:handle", timeout=60)
    pool = gw.dispatcher.pools["midcall"]
    got: list[httpx.Response] = []
    caller = threading.Thread(
        target=lambda: got.append(
            httpx.post(f"{gw.url}/function/midcall", content=b"sleep:30", timeout=90)
        )
    )
    caller.start()
    worker = wait_until(
        lambda: next((w for w in pool.workers.values() if w.busy), None), 60, "a busy worker"
    )
    engine.api.kill(worker.container)
    caller.join(60)
    r = got[0]
    assert r.status_code == 502, r.text
    body = r.json()
    assert body["error"] == "container_error"
    assert body["exit_status"] == 137
    assert "killed" in body["message"]
    assert "not run again" in body["message"]
    call_id = body["call_id"]
    rec = wait_until(lambda: gw.client().invocation(call_id), 10, "its record",
                     ok=lambda x: x.status == "failed")  # fmt: skip
    assert rec.attempt == 1
    assert rec.exit_code == 137


def test_crashing_handler_runs_once_unless_idempotent(gw: RunningGateway, image: str) -> None:
    deploy(gw.url, name="crasher", image=image, mode="warm", handler="handler:crash")
    deploy(gw.url, name="crasher-again", image=image, mode="warm", handler="handler:crash",
           retry_sync=True)  # fmt: skip
    client = gw.client()
    for name, runs in (("crasher", 1), ("crasher-again", 3)):
        r = httpx.post(f"{gw.url}/function/{name}", content=b"x", timeout=90)
        assert r.status_code == 502, r.text
        body = r.json()
        assert body["error"] == "container_error", body
        assert body["exit_status"] == 3, body
        call_id = body["call_id"]
        rec = wait_until(lambda c=call_id: client.invocation(c), 10, "its record",
                         ok=lambda x: x.status == "failed")  # fmt: skip
        print(f"\n[crashing handler] {name}: ran {rec.attempt} time(s): {body['message']}")
        assert rec.attempt == runs
        if runs > 1:
            assert f"run {runs} times" in body["message"]
        else:
            assert "not marked idempotent (retry_sync)" in body["message"]


def test_containers_killed_mid_call_under_load(
    gw: RunningGateway, image: str, engine: docker.DockerClient
) -> None:
    deploy(gw.url, name="busy", image=image, mode="warm", handler="handler:handle",
           min_containers=2, max_containers=4, concurrency=2, timeout=30, retries=3)  # fmt: skip
    pool = gw.dispatcher.pools["busy"]
    wait_until(lambda: pool.counts()["ready"] >= 2, 60, "2 ready workers")
    killed = 0
    with Load(gw.url, "busy", body=b"sleep:0.5", max_async=150) as load:
        wait_until(lambda: load.ok >= 10, 60, "load flowing")
        for _ in range(3):  # 3 containers killed, each while it holds calls
            worker = wait_until(
                lambda: next((w for w in pool.workers.values() if w.busy), None), 30, "busy"
            )
            with contextlib.suppress(docker.errors.NotFound):
                engine.api.kill(worker.container)
                killed += 1
            wait_until(lambda n=load.ok: load.ok >= n + 5, 60, "calls served again")
        load.stop()
    figures = load.figures(f"{killed} containers killed mid-call")
    assert load.hangs == [], load.hangs
    assert set(load.sync) <= {"200", "502 container_error"}, load.samples
    assert load.sync["502 container_error"] <= killed * 2  # what they held, run once
    accounted = wait_until(
        lambda: all_accounted(gw.url, load.accepted), 120, "every accepted async call ended"
    )
    print(f"[killed mid-call] async: accepted {figures['async accepted']}, fates {accounted}")
    assert accounted["succeeded"] == len(load.accepted), accounted

    def owned() -> bool:
        live = {w.container for w in pool.workers.values() if w.container}
        return {c for c in gw.containers(engine, **{"swarmless.function": "busy"})} == live

    wait_until(owned, 30, "only live workers' containers")
    print("[killed mid-call] orphans: 0")


# -- a death nobody heard of ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def _unheard_dispatcher(
    engine: docker.DockerClient, labels: dict[str, str], tmp_path: Path
) -> AsyncIterator[Dispatcher]:
    """The parts of an active gateway of its own instance, but the registry is not
    subscribed to the engine's container events: deaths go unheard. Its containers and
    network go at the end."""
    instance = f"test-{uuid.uuid4().hex[:8]}"
    settings = Settings.load(data_dir=tmp_path, instance=instance, network=f"swarmless-{instance}")
    store = await Store.open(settings.store)
    backend = DockerBackend(settings, labels=labels)
    await backend.start()
    background = Background()
    recorder = Recorder(store, background)
    dispatcher = Dispatcher(
        store=store,
        backend=backend,
        workers=WorkerRegistry(backend, background),  # not subscribed
        oneshot=OneShotCalls(backend, recorder),
        recorder=recorder,
        background=background,
        runtime_url="http://127.0.0.1:9",  # nobody: the runtime retries, unheard
    )
    try:
        yield dispatcher
    finally:
        await dispatcher.close()
        await backend.close()
        await store.close()
        flt = {"label": f"swarmless.gateway={instance}"}
        for c in engine.api.containers(all=True, filters=flt):
            engine.api.remove_container(c["Id"], force=True)
        remove_network(engine, settings.network)


def test_silent_ready_worker_is_checked_and_replaced(
    engine: docker.DockerClient, image: str, labels: dict[str, str], tmp_path: Path
) -> None:
    """The parts of an active gateway, but the registry is not subscribed to the engine's
    container events: a worker whose container is removed stays 'ready' until the
    reconciler, finding it silent for longer than ``silent_after``, asks the engine."""

    async def main() -> None:
        async with _unheard_dispatcher(engine, labels, tmp_path) as dispatcher:
            spec = FunctionSpec(name="quiet", image=image, mode="warm",
                                handler="handler:handle", min_containers=1)  # fmt: skip
            await dispatcher.deploy(spec)
            pool = dispatcher.pools["quiet"]
            rec = Reconciler(dispatcher, pool, silent_after=1.0)
            rec.step(time.monotonic())
            first = await eventually(lambda: _with_container(pool), 60, "a container")
            pool.take(first)  # what the runtime API does on its first poll: ready
            engine.api.remove_container(first.container, force=True)
            await asyncio.sleep(0)  # no event comes: the worker still looks ready
            assert pool.workers[first.id].state == "ready"
            plan = rec.step(time.monotonic() + 5)
            assert [a.kind for a in plan.actions] == ["check"], plan
            await eventually(lambda: first.id not in pool.workers, 30, "the silent worker lost")
            rec.step(time.monotonic())
            second = await eventually(lambda: _with_container(pool), 60, "a replacement")
            assert second.id != first.id

    asyncio.run(main())


def test_a_resync_judges_only_the_workers_whose_container_started_before_its_list(
    engine: docker.DockerClient, image: str, labels: dict[str, str], tmp_path: Path
) -> None:
    """When the engine answers again the gateway lists its containers and forgets the
    workers the list lacks. A worker whose container started after the list was asked for
    is missing from it and healthy: it stays (a slow list killed such a worker; a bench in
    CI saw a ready container vanish). One started before and gone meanwhile is forgotten."""

    async def one_ready(dispatcher: Dispatcher, name: str) -> Any:
        spec = FunctionSpec(name=name, image=image, mode="warm",
                            handler="handler:handle", min_containers=1)  # fmt: skip
        await dispatcher.deploy(spec)
        pool = dispatcher.pools[name]
        Reconciler(dispatcher, pool).step(time.monotonic())
        worker = await eventually(lambda: _with_container(pool), 60, f"a {name} container")
        pool.take(worker)  # what the runtime API does on its first poll: ready
        return pool, worker

    async def main() -> None:
        async with _unheard_dispatcher(engine, labels, tmp_path) as dispatcher:
            gone_pool, gone = await one_ready(dispatcher, "gone-before")
            engine.api.remove_container(gone.container, force=True)  # unheard
            asked = time.monotonic()
            found = await dispatcher.backend.list_containers()
            new_pool, new = await one_ready(dispatcher, "started-after")
            assert new.container not in {c.id for c in found}  # the list cannot know it
            orphans = dispatcher.resync(found, asked=asked)
            assert orphans == []
            assert gone.id not in gone_pool.workers  # gone before the list: forgotten
            assert new_pool.workers.get(new.id) is new, "a healthy new worker was forgotten"
            assert new.state == "ready"
            assert engine.api.inspect_container(new.container)["State"]["Running"]

    asyncio.run(main())


def _with_container(pool: Any) -> Any:
    return next((w for w in pool.workers.values() if w.container), None)
