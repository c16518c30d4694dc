"""The scoped Docker API on a real 3-node Swarm: a function's children as services.

A ``docker: scoped`` one-shot function (an image with the Docker SDK and swarmless) runs
on a node; through its ``DOCKER_HOST`` it starts children (swarmless/busybox) on chosen
nodes with docker-py and swarmless's ``run()``, reads their output and exit codes, and
tries what it may not. Every check of placement and reaping is made on the manager.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import BUSYBOX
from tests.swarm_harness import Cluster, SwarmGateway, wait_for
from tests.test_proxy import sdk_image  # noqa: F401  (the image with the Docker SDK)

pytestmark = [pytest.mark.swarm, pytest.mark.slow]

#: What the function runs: one scenario, named by its first argument; one JSON line out.
SCRIPT = r"""
import json, os, socket, sys, threading, time
import docker, docker.errors
import swarmless

BUSYBOX = os.environ["CHILD_IMAGE"]
c = docker.from_env(version="1.41")
api = c.api
scenario, args = sys.argv[1], sys.argv[2:]
out = {"node": os.environ.get("SWARMLESS_NODE")}


def refused(fn):
    try:
        fn()
    except docker.errors.APIError as e:
        return [e.status_code, str(e.explanation)]
    return None


def raw(method, path, body=None):
    url = api._url(path)
    return api._result(api._post(url, data=body) if method == "POST" else api._get(url))


if scenario == "place":
    hosts = sorted(n.attrs["Description"]["Hostname"] for n in c.nodes.list())
    out["nodes"] = [n.attrs for n in c.nodes.list()]
    kids = {}
    for h in hosts:
        k = c.containers.run(BUSYBOX, ["sh", "-c", f"echo out-{h}; echo err-{h} >&2; exit 7"],
                             environment=["A=1", f"constraint:node=={h}"], detach=True)
        kids[h] = k.id
    out["kids"] = kids
    codes, logs, env = {}, {}, {}
    for h, kid in kids.items():
        k = c.containers.get(kid)
        codes[h] = k.wait()["StatusCode"]
        logs[h] = [k.logs(stdout=True, stderr=False).decode(),
                   k.logs(stdout=False, stderr=True).decode()]
        k.reload()
        env[h] = [k.attrs["Config"]["Env"], k.attrs["Node"]["Name"], k.attrs["State"]["Status"]]
    out["codes"], out["logs"], out["env"] = codes, logs, env
    # docker-py's run() to completion, and swarmless's own
    t0 = time.monotonic()
    out["run"] = c.containers.run(
        BUSYBOX, ["echo", "hello", "from", "docker-py"], remove=True).decode()
    out["run_s"] = time.monotonic() - t0
    try:
        c.containers.run(BUSYBOX, ["sh", "-c", "echo bad >&2; exit 3"], remove=True)
    except docker.errors.ContainerError as e:
        out["run_error"] = [e.exit_status, e.stderr.decode()]
    t0 = time.monotonic()
    out["swarmless_run"] = swarmless.from_env().run(BUSYBOX, ["echo", "swarmless"], text=True)
    out["swarmless_run_s"] = time.monotonic() - t0
    # a server child: its address on the function network, reached from here
    server = c.containers.run(
        BUSYBOX, ["sh", "-c", "while true; do echo pong | nc -l -p 7000; done"],
        environment=[f"constraint:node!={out['node']}"], detach=True)
    ip = ""
    for _ in range(300):
        server.reload()
        nets = server.attrs["NetworkSettings"]["Networks"]
        ip = next(iter(nets.values()))["IPAddress"] if nets else ""
        if server.status == "running" and ip:
            break
        time.sleep(0.2)
    out["server"] = [server.attrs["Node"]["Name"], ip, list(nets), server.id]
    got = b""
    for _ in range(100):
        try:
            with socket.create_connection((ip, 7000), timeout=2) as s:
                got = s.recv(100)
            if got:
                break
        except OSError:
            time.sleep(0.2)
    out["pong"] = got.decode()
    server.kill()
    out["killed"] = server.wait()["StatusCode"]
    out["list"] = sorted(k.id for k in c.containers.list(all=True))

elif scenario == "cap":
    results = []
    def one():
        try:
            results.append(api.create_container(BUSYBOX, ["true"])["Id"])
        except docker.errors.APIError as e:
            results.append(f"refused {e.status_code} {e.explanation}")
    threads = [threading.Thread(target=one) for _ in range(int(args[0]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["results"] = results
    out["listed"] = len(c.containers.list(all=True))

elif scenario == "detach":
    for i in range(int(args[0])):
        c.containers.run(BUSYBOX, ["sleep", "300"], detach=True)
    out["kids"] = [k.id for k in c.containers.list()]
    if len(args) > 1:
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
        time.sleep(float(args[1]))

elif scenario == "attack":
    other = json.loads(args[0])
    a = {}
    for ref in other:
        a[f"inspect {ref}"] = refused(lambda: api.inspect_container(ref))
        a[f"kill {ref}"] = refused(lambda: api.kill(ref))
        a[f"logs {ref}"] = refused(lambda: api.logs(ref))
        a[f"remove {ref}"] = refused(lambda: api.remove_container(ref, force=True))
        a[f"wait {ref}"] = refused(lambda: api.wait(ref))
    a["list"] = [k.id for k in c.containers.list(all=True)]
    a["image"] = refused(lambda: c.containers.create("swarmless-test/not-allowed:1", ["true"]))
    a["services"] = refused(lambda: raw("GET", "/services"))
    a["tasks"] = refused(lambda: raw("GET", "/tasks"))
    a["info"] = refused(lambda: c.info())
    a["node inspect"] = refused(lambda: raw("GET", "/nodes/self"))
    a["bad limit"] = refused(lambda: raw("GET", "/containers/json?limit=abc"))
    a["odd filter"] = refused(lambda: c.containers.list(filters={"before": "x"}))
    a["exec"] = None
    kid = c.containers.create(BUSYBOX, ["sleep", "30"])
    a["exec"] = refused(lambda: api.exec_create(kid.id, ["true"]))
    a["top"] = refused(lambda: api.top(kid.id))
    a["rename"] = refused(lambda: api.rename(kid.id, "x-y"))
    kid.remove(force=True)
    bad_env = {
        "soft": ["constraint:node==~x"],
        "label": ["constraint:storage==ssd"],
        "affinity": ["affinity:container==x"],
        "inject": ["constraint:node==a,node.role==manager"],
        "newline": ["constraint:node==a\nnode.role==manager"],
        "unknown": ["constraint:node==no-such-node"],
    }
    for name, env in bad_env.items():
        a[f"env {name}"] = refused(lambda: c.containers.create(BUSYBOX, ["true"], environment=env))
    a["big env"] = refused(
        lambda: c.containers.create(BUSYBOX, ["true"], environment=["X=" + "x" * 300_000]))
    a["tty"] = refused(lambda: c.containers.create(BUSYBOX, ["true"], tty=True))
    a["stdin"] = refused(lambda: c.containers.create(BUSYBOX, ["true"], stdin_open=True))
    a["privileged"] = refused(lambda: c.containers.create(BUSYBOX, ["true"], privileged=True))
    a["host network"] = refused(lambda: c.containers.create(BUSYBOX, ["true"], network_mode="host"))
    a["swarmless label"] = refused(lambda: c.containers.create(
        BUSYBOX, ["true"], labels={"swarmless.parent": other[0] if other else "x"}))
    # raw HTTP: smuggling and a body too large
    host, port = os.environ["DOCKER_HOST"][len("tcp://"):].split("/", 1)[0].split(":")
    prefix = "/" + os.environ["DOCKER_HOST"].split("/", 3)[3]
    def send(data):
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(data)
            got = b""
            while True:
                part = s.recv(65536)
                if not part:
                    return got.decode("latin-1")
                got += part
    body = b'{"Image": "' + BUSYBOX.encode() + b'"}'
    a["smuggle"] = send(
        f"POST {prefix}/v1.41/containers/create HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Transfer-Encoding: chunked\r\n\r\n".encode() + body)[:200]
    a["pipelined"] = send(
        f"GET {prefix}/v1.41/containers/json HTTP/1.1\r\nHost: x\r\n\r\n"
        f"GET {prefix}/v1.41/services HTTP/1.1\r\nHost: x\r\n\r\n".encode()).count("rule services")
    a["no token"] = send(b"GET /v1.41/containers/json HTTP/1.1\r\nHost: x\r\n\r\n")[:200]
    # this call's token, used by a child on another node: refused
    url = "http://" + os.environ["DOCKER_HOST"][len("tcp://"):] + "/v1.41/containers/json"
    thief = c.containers.run(
        BUSYBOX, ["sh", "-c", f"wget -S -O- {url} 2>&1; true"],
        environment=[f"constraint:node!={out['node']}"], detach=True)
    thief.wait()
    a["stolen token"] = thief.logs().decode()
    thief.remove()
    out["attacks"] = a

print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def gw(
    cluster: Cluster,
    labels: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    sdk_image: str,  # noqa: F811
) -> Iterator[SwarmGateway]:
    cluster.load(sdk_image, BUSYBOX)
    g = SwarmGateway(
        cluster, tmp_path_factory.mktemp("swarm-kids"), labels, proxy_images=(BUSYBOX,)
    ).start()
    for name, timeout, children_timeout in (
        ("kids", 120, 30.0),
        ("orphans", 120, 0.0),
        ("killed", 12, 0.0),
    ):
        g.deploy(
            name=name,
            image=sdk_image,
            mode="oneshot",
            command=["python3", "-c", SCRIPT],
            env={"CHILD_IMAGE": BUSYBOX},
            docker="scoped",
            timeout=timeout,
            children_timeout=children_timeout,
        )
    yield g
    g.stop()
    assert g.services() == []


def _call(gw: SwarmGateway, function: str, *args: str, status: int = 200) -> dict[str, Any]:
    with gw.http(token=None) as http:
        r = http.post(f"/function/{function}", headers={"X-Swarmless-Args": json.dumps(list(args))})
    assert r.status_code == status, r.text
    out: dict[str, Any] = json.loads(r.text.strip().splitlines()[-1]) if status == 200 else {}
    out["call"] = r.headers["x-call-id"]
    return out


def _children(gw: SwarmGateway, **labels: str) -> list[dict[str, Any]]:
    return gw.services(**{"swarmless.kind": "child", **labels})


def _node_of(cluster: Cluster, service: str) -> str:
    api = cluster.manager.api
    hosts = {n["ID"]: n["Description"]["Hostname"] for n in api.nodes()}
    tasks = api.tasks(filters={"service": service})
    return hosts[tasks[0]["NodeID"]]


def test_children_on_chosen_nodes_with_output_and_exit_codes(
    gw: SwarmGateway, cluster: Cluster
) -> None:
    cluster.wait_ready(3)  # other tests of the session take nodes down and back
    out = _call(gw, "kids", "place")
    hosts = sorted(cluster.names)
    # GET /nodes: every node, six fields each, nothing else.
    assert sorted(n["Description"]["Hostname"] for n in out["nodes"]) == hosts
    for n in out["nodes"]:
        assert set(n) == {"ID", "Description", "Status", "Spec"}
        assert set(n["Description"]) == {"Hostname"}
        assert set(n["Status"]) == {"State", "Addr"}
        assert set(n["Spec"]) == {"Availability", "Role"}
        assert n["Status"]["State"] == "ready"
    # One child on each node, each where it was asked to run (the manager says so).
    assert sorted(out["kids"]) == hosts
    for host, kid in out["kids"].items():
        assert _node_of(cluster, kid) == host
        assert out["codes"][host] == 7
        assert out["logs"][host] == [f"out-{host}\n", f"err-{host}\n"]
        env, node, status = out["env"][host]
        assert "A=1" in env
        assert not any(e.startswith("constraint:") for e in env)
        assert (node, status) == (host, "exited")
    assert out["run"] == "hello from docker-py\n"
    assert out["run_error"] == [3, "bad\n"]
    assert out["swarmless_run"] == "swarmless\n"
    print(
        f"\na child run to completion on the Swarm: docker-py {out['run_s']:.2f}s, "
        f"swarmless run() {out['swarmless_run_s']:.2f}s"
    )
    # A child on another node, reached at its address on the function network.
    server_node, ip, networks, server = out["server"]
    assert server_node != out["node"]
    assert networks == [gw.settings.network]
    assert ip
    assert out["pong"] == "pong\n"
    assert out["killed"] == 137
    # Listed: its own children still there (the run() ones removed themselves).
    assert sorted(out["list"]) == sorted([*out["kids"].values(), server])
    # The parent ended: its children go after its children_timeout (30 s), not before.
    left = {s["ID"] for s in _children(gw, **{"swarmless.parent-call": out["call"]})}
    assert set(out["kids"].values()) <= left
    wait_for(
        lambda: not _children(gw, **{"swarmless.parent-call": out["call"]}),
        90,
        "the children removed after children_timeout",
    )
    # Every child's end is in the call's record: exit codes, the kill.
    with gw.http() as http:
        detached = http.get(f"/invocations/{out['call']}").json()["detached"]
    codes = {d["container"]: d["exit_code"] for d in detached}
    for kid in out["kids"].values():
        assert codes[kid[:12]] == 7
    assert codes[server[:12]] == 137
    assert len(detached) == 7, detached  # 3 kids, the server, 3 run() to completion


def test_the_cap_holds_under_concurrent_creates(gw: SwarmGateway) -> None:
    out = _call(gw, "orphans", "cap", "26")
    made = [r for r in out["results"] if not r.startswith("refused")]
    refused = [r for r in out["results"] if r.startswith("refused")]
    assert len(made) == 20, out["results"]
    assert len(refused) == 6
    assert all("rule max-children" in r for r in refused), refused
    assert out["listed"] == 20
    wait_for(
        lambda: not _children(gw, **{"swarmless.parent-call": out["call"]}),
        60,
        "the created children removed with their parent",
    )


def test_children_die_with_a_parent_that_ends(gw: SwarmGateway, cluster: Cluster) -> None:
    out = _call(gw, "orphans", "detach", "2")
    assert len(out["kids"]) == 2
    wait_for(
        lambda: not _children(gw, **{"swarmless.parent-call": out["call"]}),
        30,
        "the children removed once their parent ended",
    )
    # Nothing of them is left on any node either.
    wait_for(
        lambda: not any(cluster.containers(f"swarmless.parent-call={out['call']}").values()),
        30,
        "the children's containers gone from the nodes",
    )


def test_children_die_with_a_parent_that_is_killed(gw: SwarmGateway) -> None:
    result: dict[str, Any] = {}
    # The parent starts two children, then sleeps past its function's timeout (12 s).
    t = threading.Thread(
        target=lambda: result.update(_call(gw, "killed", "detach", "2", "300", status=504))
    )
    t.start()
    try:
        parent = wait_for(
            lambda: gw.services(**{"swarmless.function": "killed"}), 60, "the parent's service"
        )[0]["ID"]

        def kids() -> list[str]:
            found = [s["ID"] for s in _children(gw, **{"swarmless.parent": parent})]
            return found if len(found) == 2 else []

        assert wait_for(kids, 60, "the killed function's two children")
    finally:
        t.join(90)
    assert result.get("call")  # answered 504: the call was killed at its timeout
    wait_for(
        lambda: not _children(gw, **{"swarmless.parent": parent}),
        30,
        "the children removed once their parent was killed",
    )

    # The call's record says its two children were killed by swarmless.
    def detached() -> list[dict[str, Any]]:
        with gw.http() as http:
            found = http.get(f"/invocations/{result['call']}").json().get("detached") or []
        return list(found) if len(found) == 2 else []

    ended = wait_for(detached, 20, "the children's ends in the call's record")
    assert all(d["killed"] for d in ended), ended
    assert all("killed" in d["error"] for d in ended), ended


def test_nothing_else_is_visible_or_reachable(gw: SwarmGateway) -> None:
    # Another call's children (kept for 30 s after it), and that call's own service.
    first = _call(gw, "kids", "detach", "1")
    theirs = first["kids"]
    assert theirs
    others = [*theirs, *(s["ID"] for s in gw.services(**{"swarmless.function": "kids"}))]
    out = _call(gw, "orphans", "attack", json.dumps(others))
    a = out["attacks"]
    for ref in others:
        for what in ("inspect", "kill", "logs", "remove", "wait"):
            status, message = a[f"{what} {ref}"]
            assert status == 404, (what, ref, message)
    assert a["list"] == []
    assert a["image"][0] == 403
    assert "rule image" in a["image"][1]
    for what in ("services", "tasks", "info"):
        assert a[what][0] == 403, (what, a[what])
    assert a["node inspect"][0] == 403
    assert a["bad limit"][0] == 400, a["bad limit"]
    assert a["odd filter"][0] == 400, a["odd filter"]
    for what in ("exec", "top", "rename"):
        assert a[what] is not None
        assert a[what][0] in (403, 404), (what, a[what])
    for name in ("soft", "label", "affinity", "inject", "newline", "unknown"):
        status, message = a[f"env {name}"]
        assert status == 400, (name, message)
        assert "constraint" in message
    assert a["big env"][0] == 413, a["big env"]
    for what in ("tty", "stdin", "privileged", "host network"):
        assert a[what][0] == 403, (what, a[what])
    assert a["swarmless label"][0] == 403
    assert a["smuggle"].startswith("HTTP/1.1 400"), a["smuggle"]
    assert a["pipelined"] == 1
    assert "HTTP/1.1 403" in a["no token"]
    assert "403" in a["stolen token"], a["stolen token"]
    assert "[" not in a["stolen token"]  # no listing came back
    # The other call's child is untouched.
    assert {s["ID"] for s in _children(gw)} >= set(theirs)


def test_children_go_when_the_gateway_stops(
    cluster: Cluster,
    labels: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    sdk_image: str,  # noqa: F811
) -> None:
    cluster.load(sdk_image, BUSYBOX)
    g = SwarmGateway(
        cluster, tmp_path_factory.mktemp("swarm-kids-stop"), labels, proxy_images=(BUSYBOX,)
    ).start()
    try:
        g.deploy(
            name="keeper",
            image=sdk_image,
            mode="oneshot",
            command=["python3", "-c", SCRIPT],
            env={"CHILD_IMAGE": BUSYBOX},
            docker="scoped",
            timeout=120,
            children_timeout=600,  # they would outlive the call by ten minutes
        )
        out = _call(g, "keeper", "detach", "1")
        assert [s["ID"] for s in _children(g)] == out["kids"]
        g.shutdown()
        # The proxy removed them itself (the harness's stop() below removes the rest).
        wait_for(lambda: not _children(g), 15, "the children removed by the stopping gateway")
    finally:
        g.stop()
