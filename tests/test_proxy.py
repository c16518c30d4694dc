"""The scoped Docker API against the real engine, from inside real function containers.

Every request here is sent from a container of a deployed ``docker: scoped`` function, with
the real Docker SDK for Python (and the real ``docker`` CLI) copied into a test image; the
few transport-level tricks the SDK cannot produce (dot segments, encoded slashes, an old API
version, conflicting framing) are sent as raw HTTP from the same container. The function
tree (``X-Swarmless-Parent``) is exercised with the real swarmless SDK, copied in as well.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

import swarmless
from tests.conftest import BUSYBOX, PYTHON, SESSION
from tests.gateway_harness import RunningGateway
from tests.waiting import wait_until

PREFIX = "swarmless-test-proxy"
SITE = Path(swarmless.__file__).parent.parent
VENV_SITE = Path(docker.__file__).parent.parent
PACKAGES = [
    "docker",
    "requests",
    "urllib3",
    "idna",
    "certifi",
    "charset_normalizer",
    "httpx",
    "httpcore",
    "anyio",
    "h11",
    "yaml",
    "croniter",
    "dateutil",
    "click",
    "rich",
    "pygments",
    "markdown_it",
    "mdurl",
    "typing_extensions.py",
]

PROBE = r'''
import io, json, os, socket, sys, time
import docker, docker.errors, docker.types

ctx = json.loads(sys.stdin.read() or "{}")
B = "swarmless/busybox:latest"


def raw(method, path, body=b"", headers=(), token=None):
    """One raw HTTP/1.1 request to the proxy, after DOCKER_HOST's token prefix."""
    url = os.environ["DOCKER_HOST"][len("tcp://"):]
    hostport, _, prefix = url.partition("/")
    if token is not None:
        prefix = prefix.rsplit("/", 1)[0] + "/" + token if token else ""
    host, port = hostport.split(":")
    s = socket.create_connection((host, int(port)), timeout=20)
    target = f"/{prefix}{path}" if prefix else path
    head = [f"{method} {target} HTTP/1.1", "Host: docker", *headers]
    if body and not any(h.lower().startswith("transfer-encoding") for h in headers):
        head.append(f"Content-Length: {len(body)}")
    s.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    status = int(data.split(b" ", 2)[1])
    payload = data.partition(b"\r\n\r\n")[2]
    try:
        message = json.loads(payload)["message"]
    except Exception:
        message = payload[:300].decode("latin-1")
    return status, message


def outcome(fn):
    try:
        got = fn()
    except docker.errors.APIError as e:
        return {"status": e.status_code, "message": str(e.explanation)}
    except Exception as e:
        return {"status": None, "message": f"{type(e).__name__}: {e}"}
    if isinstance(got, tuple):
        return {"status": got[0], "message": got[1]}
    return {"status": 200, "message": f"ALLOWED: {got!r}"[:300]}


def escapes(c):
    api = c.api
    run = lambda **kw: c.containers.create(B, ["true"], **kw)
    sib, gw, worker = ctx["sibling"], ctx["gateway"], ctx["worker"]
    post_json = lambda body, **kw: api._result(
        api._post(api._url("/containers/create"), data=body,
                  headers={"Content-Type": "application/json"}, **kw), json=True)
    vol_mount = docker.types.Mount(
        "/v", f"{ctx['prefix']}-vol2", type="volume",
        driver_config=docker.types.DriverConfig("local", {"type": "none", "o": "bind",
                                                          "device": "/"}))
    return {
        "privileged": lambda: run(privileged=True),
        "cap_add SYS_ADMIN": lambda: run(cap_add=["SYS_ADMIN"]),
        "bind-mount /": lambda: run(volumes={"/": {"bind": "/host", "mode": "rw"}}),
        "bind-mount the engine socket": lambda: run(
            volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}}),
        "bind mount through Mounts": lambda: run(
            mounts=[docker.types.Mount("/host", "/", type="bind")]),
        "host network": lambda: run(network_mode="host"),
        "host PID": lambda: run(pid_mode="host"),
        "host IPC": lambda: run(ipc_mode="host"),
        "host UTS": lambda: run(uts_mode="host"),
        "host user namespace": lambda: run(userns_mode="host"),
        "a device": lambda: run(devices=["/dev/kmsg:/dev/kmsg:rwm"]),
        "all GPUs": lambda: run(device_requests=[
            docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]),
        "an image not on the list": lambda: c.containers.create(ctx["other_image"], ["true"]),
        "pull an image not on the list": lambda: c.images.pull("alpine", tag="latest"),
        "security-opt apparmor=unconfined": lambda: run(security_opt=["apparmor=unconfined"]),
        "security-opt seccomp=unconfined": lambda: run(security_opt=["seccomp=unconfined"]),
        "sysctls": lambda: run(sysctls={"net.ipv4.ip_forward": "1"}),
        "a 1 TB memory request": lambda: run(mem_limit=1024**4),
        "64 CPUs": lambda: run(nano_cpus=64 * 10**9),
        "publish a port on the host": lambda: run(ports={"80/tcp": 18099}),
        "restart always": lambda: run(restart_policy={"Name": "always"}),
        "volumes_from the gateway's container": lambda: run(volumes_from=[gw]),
        "join the gateway's network namespace": lambda: run(network_mode=f"container:{gw}"),
        "forge the parent label": lambda: run(labels={"swarmless.parent": ctx["worker"]}),
        "a volume with driver options": lambda: c.volumes.create(
            f"{ctx['prefix']}-vol", driver_opts={"type": "none", "o": "bind", "device": "/"}),
        "a volume mount with driver options": lambda: run(mounts=[vol_mount]),
        "inspect a sibling's child": lambda: c.containers.get(sib),
        "kill a sibling's child": lambda: api.kill(sib),
        "remove a sibling's child": lambda: api.remove_container(sib, force=True),
        "read a sibling's child's logs": lambda: api.logs(sib),
        "attach to a sibling's child": lambda: api.attach_socket(
            sib, params={"stdin": 1, "stream": 1}),
        "inspect the gateway's container": lambda: c.containers.get(gw),
        "kill the gateway's container": lambda: api.kill(gw),
        "stop another function's container": lambda: api.stop(worker, timeout=0),
        "exec into another container": lambda: api.exec_create(gw, ["id"]),
        "build an image": lambda: c.images.build(
            fileobj=io.BytesIO(b"FROM swarmless/busybox\n"), tag=f"{ctx['prefix']}-built"),
        "commit a container to an image": lambda: api.commit(gw, repository=ctx["prefix"]),
        "create a service": lambda: c.services.create(B, ["true"], name=f"{ctx['prefix']}-svc"),
        "swarm init": lambda: api.init_swarm(),
        "create a network": lambda: c.networks.create(f"{ctx['prefix']}-net"),
        "connect the gateway to a network": lambda: api.connect_container_to_network(
            gw, ctx["network"]),
        "prune containers": lambda: c.containers.prune(),
        "raise a container's limits (update)": lambda: api.update_container(sib, mem_limit=1024**4),
        "list every image": lambda: c.images.list(),
        "engine info": lambda: c.info(),
        "duplicate JSON keys": lambda: post_json(
            '{"Image": "%s", "HostConfig": {"Privileged": false, "Privileged": true}}' % B),
        "a JSON key in another case": lambda: post_json(
            '{"Image": "%s", "HostConfig": {"privileged": true}}' % B),
        "a chunked body": lambda: post_json(iter([
            b'{"Image": "swarmless/busybox", ', b'"HostConfig": {"Privileged": true}}'])),
        "path trick /v1.41/../containers": lambda: raw(
            "GET", f"/v1.41/../containers/{gw}/json"),
        "URL-encoded segments": lambda: raw("POST", f"/v1.41/containers%2F{gw}%2Fkill"),
        "encoded dot segments": lambda: raw("GET", f"/v1.41/containers/%2e%2e/{gw}/json"),
        "old API version: HostConfig at start": lambda: raw(
            "POST", f"/v1.23/containers/{sib}/start", b'{"Privileged": true, "Binds": ["/:/h"]}',
            ["Content-Type: application/json"]),
        "no token in the path": lambda: raw("GET", f"/v1.41/containers/{gw}/json", token=""),
        "a guessed token": lambda: raw("GET", f"/v1.41/containers/{gw}/json", token="x" * 32),
    }


def smuggling():
    body = b'{"Image": "swarmless/busybox", "HostConfig": {"Privileged": true}}'
    return raw("POST", "/v1.41/containers/create", body,
               ["Content-Type: application/json", "Transfer-Encoding: chunked",
                "Content-Length: 5"])


def allowed(c):
    out = {}
    api = c.api
    me = os.environ["HOSTNAME"]
    out["run"] = c.containers.run(B, ["echo", "hello from a child"], remove=True).decode()
    kid = c.containers.run(B, ["sleep", "60"], detach=True)
    kid2 = c.containers.run(B, ["sleep", "60"], detach=True)
    out["listed"] = sorted(x.id for x in c.containers.list(all=True))
    out["kids"] = sorted([kid.id, kid2.id])
    info = api.inspect_container(kid.id)
    out["labels"] = info["Config"]["Labels"]
    out["memory"] = info["HostConfig"]["Memory"]
    out["nano_cpus"] = info["HostConfig"]["NanoCpus"]
    out["network"] = info["HostConfig"]["NetworkMode"]
    out["parent_is_me"] = info["Config"]["Labels"]["swarmless.parent"].startswith(me)
    out["exec"] = kid.exec_run(["echo", "exec ok"]).output.decode()
    out["privileged exec"] = outcome(lambda: api.exec_create(kid.id, ["id"], privileged=True))
    kid.kill()
    out["wait"] = kid.wait()["StatusCode"]
    kid.remove()
    kid2.remove(force=True)
    out["gone"] = outcome(lambda: c.containers.get(kid.id))
    # stdin and stdout through a hijacked attach (Upgrade: tcp), with the SDK.
    cat = c.containers.create(B, ["cat"], stdin_open=True)
    sock = api.attach_socket(cat.id, params={"stdin": 1, "stdout": 1, "stream": 1})
    cat.start()
    sock._sock.sendall(b"ping through attach\n")
    sock._sock.shutdown(socket.SHUT_WR)
    got = b""
    sock._sock.settimeout(20)
    while chunk := sock._sock.recv(65536):
        got += chunk
    out["attach"] = got[8:].decode("latin-1")  # one stdout frame: 8-byte header
    cat.wait()
    cat.remove()
    # The docker CLI, unchanged: run (attach, wait, remove) through the proxy.
    import subprocess
    cli = subprocess.run(["docker", "run", "--rm", "-i", B, "sh", "-c", "cat; echo cli ok"],
                         input=b"stdin via cli\n", capture_output=True, timeout=60)
    out["cli"] = [cli.returncode, cli.stdout.decode(), cli.stderr.decode()[-300:]]
    # The parent's DOCKER_HOST handed to a child is worth nothing: another address.
    probe = c.containers.run(ctx["self_image"], ["python3", "/app/probe.py", "token-probe"],
                             environment={"DOCKER_HOST": os.environ["DOCKER_HOST"]},
                             detach=True)
    probe.wait()
    out["token from a child"] = json.loads(probe.logs(stdout=True, stderr=False))
    probe.remove()
    return out


def token_probe():
    c = docker.DockerClient(base_url=os.environ["DOCKER_HOST"], version="1.41")
    return outcome(lambda: c.containers.list(all=True))


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "token-probe":
        print(json.dumps(token_probe()))
        sys.exit(0)
    client = docker.from_env()
    if mode == "escapes":
        table = {name: outcome(fn) for name, fn in escapes(client).items()}
        table["conflicting Content-Length and chunked"] = outcome(smuggling)
        print(json.dumps(table))
    elif mode == "allowed":
        print(json.dumps(allowed(client)))
'''

HANDLER = r"""
import json, os
import docker


def make_child(event, context):
    c = docker.from_env()
    kid = c.containers.run("swarmless/busybox:latest", ["sleep", "300"], detach=True)
    return {"child": kid.id, "me": os.environ["HOSTNAME"]}


def call_child(event, context):
    import swarmless
    client = swarmless.from_env(call_id=context.call_id)
    r = client.invoke("leaf", event["body"])
    return {"child_call": r.call_id, "answer": r.text}
"""

CALLER = r"""
import json, os, sys
import swarmless

client = swarmless.from_env()
r = client.invoke("leaf", b"from a one-shot parent")
print(json.dumps({"child_call": r.call_id, "answer": r.text,
                  "parent": os.environ["SWARMLESS_CALL_ID"]}))
"""


def _context() -> io.BytesIO:
    buf = io.BytesIO()
    skip = ("__pycache__",)

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if any(s in info.name for s in skip) else info

    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in PACKAGES:
            tar.add(VENV_SITE / name, arcname=f"site/{name}", filter=clean)
        tar.add(SITE / "swarmless", arcname="site/swarmless", filter=clean)
        tar.add("/usr/local/bin/docker", arcname="docker")
        for name, text in {"probe.py": PROBE, "handler.py": HANDLER, "caller.py": CALLER}.items():
            data = text.encode()
            info = tarfile.TarInfo(f"app/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        dockerfile = (
            f"FROM {PYTHON}\n"
            "COPY site/ /usr/local/lib/python3.11/dist-packages/\n"
            "COPY docker /usr/local/bin/docker\n"
            "COPY app/ /app/\n"
            "WORKDIR /app\n"
        ).encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    buf.seek(0)
    return buf


@pytest.fixture(scope="module")
def sdk_image(engine: docker.DockerClient) -> Iterator[str]:
    """swarmless/python with the Docker SDK, the swarmless SDK and the docker CLI."""
    tag = f"{PREFIX}/sdk:{SESSION}"
    engine.images.build(
        fileobj=_context(),
        custom_context=True,
        tag=tag,
        rm=True,
        forcerm=True,
        labels={"swarmless.test": SESSION},
    )
    yield tag
    with contextlib.suppress(docker.errors.DockerException):
        engine.images.remove(tag, force=True)


@pytest.fixture(scope="module")
def gw(
    engine: docker.DockerClient, labels: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    g = RunningGateway(
        tmp_path_factory.mktemp("proxy"),
        labels,
        network=f"{PREFIX}-{SESSION}",
        proxy_images=(BUSYBOX,),
    ).start()
    yield g
    g.stop(engine)
    assert g.containers(engine) == []


@pytest.fixture(scope="module")
def gateway_container(engine: docker.DockerClient) -> Iterator[str]:
    """Stands for the gateway's own container: swarmless-managed, nobody's child."""
    c = engine.containers.run(
        BUSYBOX,
        ["sleep", "600"],
        detach=True,
        name=f"{PREFIX}-gateway-{SESSION}",
        labels={
            "swarmless.managed": "true",
            "swarmless.kind": "gateway",
            "swarmless.test": SESSION,
        },
    )
    yield c.id
    with contextlib.suppress(docker.errors.DockerException):
        c.remove(force=True)


def deploy(gw: RunningGateway, **spec: Any) -> None:
    with gw.http() as http:
        r = http.post("/system/functions", json=spec)
        assert r.status_code in (200, 201), r.text


def invoke(gw: RunningGateway, name: str, body: bytes = b"", timeout: float = 120) -> Any:
    with gw.http(token=None, timeout=timeout) as http:
        r = http.post(f"/function/{name}", content=body)
    assert r.status_code == 200, r.text
    return r


def children_of(engine: docker.DockerClient, parent: str) -> list[str]:
    flt = {"label": [f"swarmless.parent={parent}"]}
    return [c["Id"] for c in engine.api.containers(all=True, filters=flt)]


def _state(engine: docker.DockerClient, cid: str) -> tuple[str, str]:
    s = engine.api.inspect_container(cid)["State"]
    return s["Status"], s["StartedAt"]


def _names(items: list[Any]) -> set[str]:
    return {
        str(getattr(i, "name", None) or i) for i in items if PREFIX in str(getattr(i, "name", i))
    }


def test_escape_attempts_are_refused(
    gw: RunningGateway,
    engine: docker.DockerClient,
    sdk_image: str,
    gateway_container: str,
) -> None:
    deploy(
        gw,
        name="keeper",
        image=sdk_image,
        mode="warm",
        handler="handler:make_child",
        docker="scoped",
    )
    deploy(
        gw,
        name="escape",
        image=sdk_image,
        command=["python3", "/app/probe.py", "escapes"],
        docker="scoped",
        timeout=120,
    )
    kept = invoke(gw, "keeper").json()
    sibling, worker = kept["child"], engine.api.inspect_container(kept["me"])["Id"]
    watched = [sibling, worker, gateway_container]
    before = {cid: _state(engine, cid) for cid in watched}
    images_before = {t for i in engine.images.list() for t in i.tags if t.startswith(PREFIX)}
    volumes_before = _names(engine.volumes.list())
    networks_before = _names(engine.networks.list())
    # Events are filtered by whole seconds: the setup's stay before t0, the next second.
    set_up = int(time.time())
    wait_until(lambda: int(time.time()) > set_up, 2, "the clock's next whole second")
    t0 = int(time.time())
    ctx = {
        "sibling": sibling,
        "gateway": gateway_container,
        "worker": worker,
        "other_image": PYTHON,
        "prefix": PREFIX,
        "network": gw.settings.network,
    }
    table: dict[str, dict[str, Any]] = invoke(gw, "escape", json.dumps(ctx).encode()).json()
    t1 = int(time.time()) + 1
    report = "\n".join(f"{k:45} {v['status']} {v['message'][:110]}" for k, v in table.items())
    print("\n" + report)
    assert len(table) >= 25
    for name, got in table.items():
        expected = {400} if name == "conflicting Content-Length and chunked" else {403}
        if "own-children" in got["message"]:
            # not the caller's: the same 404 as a container that does not exist
            expected = {404}
            assert "no such container" in got["message"] or "exec instance" in got["message"]
        assert got["status"] in expected, f"{name}: {got}\n{report}"
        assert "(rule " in got["message"], f"{name}: {got}"
    # Nothing changed on the engine.
    assert {cid: _state(engine, cid) for cid in watched} == before
    events = list(engine.events(since=t0, until=t1, decode=True, filters={"container": watched}))
    assert [e.get("status") for e in events] == []
    created = [
        c
        for c in engine.api.containers(all=True, filters={"label": "swarmless.kind=child"})
        if c["Created"] >= t0 and c["Labels"].get("swarmless.test") == SESSION
    ]
    assert created == []
    assert children_of(engine, worker) == [sibling]
    assert {t for i in engine.images.list() for t in i.tags if t.startswith(PREFIX)} == (
        images_before
    )
    assert _names(engine.volumes.list()) == volumes_before
    assert _names(engine.networks.list()) == networks_before
    assert engine.info()["Swarm"]["LocalNodeState"] == "inactive"


def test_allowed_path_with_the_unmodified_sdk_and_cli(
    gw: RunningGateway, engine: docker.DockerClient, sdk_image: str
) -> None:
    deploy(
        gw,
        name="maker",
        image=sdk_image,
        command=["python3", "/app/probe.py", "allowed"],
        docker="scoped",
        timeout=120,
        memory="96m",
        cpus=0.5,
    )
    ctx = {"self_image": sdk_image}
    out = invoke(gw, "maker", json.dumps(ctx).encode()).json()
    assert out["run"] == "hello from a child\n"
    assert out["listed"] == out["kids"]  # only its own children, all of them
    labels = out["labels"]
    assert labels["swarmless.kind"] == "child"
    assert labels["swarmless.managed"] == "true"
    assert labels["swarmless.gateway"] == gw.instance
    assert labels["swarmless.test"] == SESSION
    assert out["parent_is_me"]
    assert out["memory"] == 96 * 1024**2
    assert out["nano_cpus"] == 500_000_000
    assert out["network"] == gw.settings.network
    assert out["exec"] == "exec ok\n"
    assert out["privileged exec"]["status"] == 403
    assert "rule privileged" in out["privileged exec"]["message"]
    assert out["wait"] == 137
    assert out["gone"]["status"] == 404
    assert out["attach"] == "ping through attach\n"
    assert out["cli"][:2] == [0, "stdin via cli\ncli ok\n"], out["cli"]
    probe = out["token from a child"]
    assert probe["status"] == 403
    assert "rule caller" in probe["message"]


def test_children_die_with_their_parent(
    gw: RunningGateway, engine: docker.DockerClient, sdk_image: str
) -> None:
    deploy(
        gw,
        name="keeper2",
        image=sdk_image,
        mode="warm",
        handler="handler:make_child",
        docker="scoped",
        children_timeout=0,
    )
    kept = invoke(gw, "keeper2").json()
    worker = engine.api.inspect_container(kept["me"])["Id"]
    assert children_of(engine, worker) == [kept["child"]]
    assert _state(engine, kept["child"])[0] == "running"
    engine.api.kill(worker)
    gw.wait_for(lambda: children_of(engine, worker) == [], 20, "the child to be removed")


def test_children_die_with_a_one_shot_call_and_the_gateway(
    engine: docker.DockerClient, labels: dict[str, str], sdk_image: str, tmp_path: Path
) -> None:
    g = RunningGateway(
        tmp_path, labels, network=f"{PREFIX}-b-{SESSION}", proxy_images=(BUSYBOX,)
    ).start()
    try:
        # A one-shot call that leaves a child running: with children_timeout 0 the child
        # goes when the call ends (tests/test_children.py: a child outliving its call).
        script = (
            "import docker; c = docker.from_env(); "
            "k = c.containers.run('swarmless/busybox:latest', ['sleep', '300'], detach=True); "
            "print(k.id)"
        )
        deploy(
            g,
            name="leaver",
            image=sdk_image,
            command=["python3", "-c", script],
            docker="scoped",
            children_timeout=0,
        )
        child = invoke(g, "leaver").text.strip()
        g.wait_for(lambda: not exists(engine, child), 20, "the call's child to go")
        # A warm worker's child is removed when the gateway stops.
        deploy(
            g,
            name="keeper3",
            image=sdk_image,
            mode="warm",
            handler="handler:make_child",
            docker="scoped",
        )
        kid = invoke(g, "keeper3").json()["child"]
        assert exists(engine, kid)
    finally:
        g.stop(engine)
    assert not exists(engine, kid)


def exists(engine: docker.DockerClient, cid: str) -> bool:
    return bool(engine.api.containers(all=True, filters={"id": cid}))


def test_unscoped_functions_get_no_docker(gw: RunningGateway, sdk_image: str) -> None:
    deploy(gw, name="plain", image=BUSYBOX, command=["sh", "-c", "echo ${DOCKER_HOST:-none}"])
    assert invoke(gw, "plain").text == "none\n"
    deploy(
        gw,
        name="rooted",
        image=BUSYBOX,
        command=["ls", "/var/run/docker.sock"],
        docker="host-socket",
    )
    assert invoke(gw, "rooted").text == "/var/run/docker.sock\n"


def test_function_to_function_calls_form_a_tree(gw: RunningGateway, sdk_image: str) -> None:
    deploy(gw, name="leaf", image=BUSYBOX, command=["tr", "a-z", "A-Z"], private=True)
    deploy(gw, name="caller", image=sdk_image, command=["python3", "/app/caller.py"])
    deploy(gw, name="warmcaller", image=sdk_image, mode="warm", handler="handler:call_child")
    client = gw.client()
    r = invoke(gw, "caller")
    out = r.json()
    assert out["answer"] == "FROM A ONE-SHOT PARENT"
    assert out["parent"] == r.headers["x-call-id"]
    r2 = invoke(gw, "warmcaller", b"from a warm parent")
    out2 = r2.json()
    assert out2["answer"] == "FROM A WARM PARENT"
    for parent, child in (
        (r.headers["x-call-id"], out["child_call"]),
        (r2.headers["x-call-id"], out2["child_call"]),
    ):
        gw.wait_for(lambda p=parent: client.invocation(p).status == "succeeded", what="record")
        gw.wait_for(lambda c=child: client.invocation(c).status == "succeeded", what="record")
        assert client.invocation(child).parent == parent
        with gw.http() as http:
            assert http.get(f"/invocations/{parent}").json()["children"] == [child]
    # The token of a call that ended is revoked; a private function needs a live one.
    assert r.headers["x-call-id"] not in {g.call_id for g in gw.gateway.callers.grants()}
    with gw.http(token=None) as http:
        assert http.post("/function/leaf", content=b"x").status_code == 401
        r = http.post(
            "/function/leaf", content=b"x", headers={"Authorization": "Bearer not-a-token"}
        )
        assert r.status_code == 401
