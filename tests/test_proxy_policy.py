"""The scoped Docker API's policy, as a pure function: no engine, no sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from swarmless.proxy.policy import (
    Caller,
    ProxyRequest,
    Target,
    Verdict,
    check,
    normalize_image,
    route,
)

ME = "a" * 64
OTHER = "b" * 64
CHILD = "c" * 64
BUSYBOX = "docker.io/swarmless/busybox:latest"
CALLER = Caller(
    container=ME,
    function="maker",
    network="fnnet",
    memory=128 * 1024**2,
    cpus=0.5,
    labels={"swarmless.gateway": "gw1"},
)
IMAGES = {BUSYBOX: "sha256:" + "1" * 64}


def create(body: Any, *, raw: bytes | None = None, children: int = 0, query: str = "") -> Verdict:
    data = raw if raw is not None else json.dumps(body).encode()
    return check(
        ProxyRequest(
            "POST",
            "/v1.41/containers/create",
            query,
            data,
            CALLER,
            images=IMAGES,
            children=children,
        )
    )


def forwarded(v: Verdict) -> dict[str, Any]:
    assert v.allowed, v.message
    assert v.body is not None
    body: dict[str, Any] = json.loads(v.body)
    return body


def child(labels: dict[str, str] | None = None) -> Target:
    return Target(
        id=CHILD,
        labels=labels
        if labels is not None
        else {
            "swarmless.managed": "true",
            "swarmless.kind": "child",
            "swarmless.parent": ME,
            "swarmless.gateway": "gw1",
        },
    )


def on(
    method: str, path: str, target: Target | None, body: bytes = b"", query: str = ""
) -> Verdict:
    return check(ProxyRequest(method, path, query, body, CALLER, target, IMAGES))


# -- create: what is forced -----------------------------------------------------------------


def test_create_forces_labels_caps_network_and_image_id() -> None:
    v = create({"Image": "swarmless/busybox", "Cmd": ["echo", "hi"], "Labels": {"app": "x"}})
    body = forwarded(v)
    assert v.path == "/v1.41/containers/create"
    assert body["Image"] == IMAGES[BUSYBOX]
    assert body["Cmd"] == ["echo", "hi"]
    assert body["Labels"] == {
        "app": "x",
        "swarmless.gateway": "gw1",
        "swarmless.managed": "true",
        "swarmless.kind": "child",
        "swarmless.parent": ME,
        "swarmless.children-timeout": "0",
    }
    host = body["HostConfig"]
    assert host["Memory"] == 128 * 1024**2
    assert host["MemorySwap"] == host["Memory"]
    assert host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 512
    assert host["NetworkMode"] == "fnnet"


def test_create_keeps_smaller_limits_and_docker_cli_zero_fields() -> None:
    cli_like = {
        "Image": "swarmless/busybox:latest",
        "HostConfig": {
            "Binds": None,
            "ContainerIDFile": "",
            "LogConfig": {"Type": "", "Config": {}},
            "NetworkMode": "default",
            "PortBindings": {},
            "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
            "CapAdd": None,
            "Privileged": False,
            "Devices": [],
            "Memory": 64 * 1024**2,
            "NanoCpus": 0,
            "MaskedPaths": None,
            "KernelMemory": 0,
            "SomeFutureField": None,
        },
    }
    host = forwarded(create(cli_like))["HostConfig"]
    assert host["Memory"] == 64 * 1024**2
    assert "SomeFutureField" not in host
    assert host["NetworkMode"] == "fnnet"


def test_create_canonicalises_key_case() -> None:
    body = forwarded(create({"image": "swarmless/busybox", "hostconfig": {"memory": 1024**2}}))
    assert body["HostConfig"]["Memory"] == 1024**2
    assert "hostconfig" not in body


# -- create: what is refused -----------------------------------------------------------------

REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("privileged", {"Privileged": True}, "privileged"),
    ("cap-add", {"CapAdd": ["SYS_ADMIN"]}, "cap-add"),
    ("capabilities", {"Capabilities": ["CAP_SYS_ADMIN"]}, "cap-add"),
    ("bind root", {"Binds": ["/:/host"]}, "binds"),
    ("bind socket", {"Binds": ["/var/run/docker.sock:/var/run/docker.sock"]}, "binds"),
    ("bind mount", {"Mounts": [{"Type": "bind", "Source": "/", "Target": "/h"}]}, "mounts"),
    (
        "volume mount with driver",
        {
            "Mounts": [
                {
                    "Type": "volume",
                    "Target": "/v",
                    "VolumeOptions": {"DriverConfig": {"Name": "local"}},
                }
            ]
        },
        "mounts",
    ),
    ("volume driver", {"VolumeDriver": "local"}, "volumes"),
    ("volumes from", {"VolumesFrom": ["gateway"]}, "volumes"),
    ("device", {"Devices": [{"PathOnHost": "/dev/sda", "PathInContainer": "/dev/sda"}]}, "devices"),
    ("gpu", {"DeviceRequests": [{"Count": -1, "Capabilities": [["gpu"]]}]}, "devices"),
    ("device rule", {"DeviceCgroupRules": ["c *:* rmw"]}, "devices"),
    ("host network", {"NetworkMode": "host"}, "network"),
    ("bridge network", {"NetworkMode": "bridge"}, "network"),
    ("container network", {"NetworkMode": "container:" + OTHER}, "network"),
    ("host pid", {"PidMode": "host"}, "pid"),
    ("container pid", {"PidMode": "container:" + OTHER}, "pid"),
    ("host ipc", {"IpcMode": "host"}, "ipc"),
    ("host uts", {"UTSMode": "host"}, "uts"),
    ("host userns", {"UsernsMode": "host"}, "userns"),
    ("host cgroupns", {"CgroupnsMode": "host"}, "cgroupns"),
    ("apparmor", {"SecurityOpt": ["apparmor=unconfined"]}, "security-opt"),
    ("seccomp", {"SecurityOpt": ["seccomp=unconfined"]}, "security-opt"),
    ("selinux off", {"SecurityOpt": ["label=disable"]}, "security-opt"),
    ("sysctls", {"Sysctls": {"net.ipv4.ip_forward": "1"}}, "sysctls"),
    ("1 TB", {"Memory": 1024**4}, "memory"),
    ("unlimited swap", {"MemorySwap": -1}, "memory"),
    ("64 cpus", {"NanoCpus": 64 * 10**9}, "cpus"),
    ("cpu quota", {"CpuQuota": 10**9}, "cpus"),
    ("pids", {"PidsLimit": 10**9}, "pids"),
    ("ulimits", {"Ulimits": [{"Name": "nofile", "Soft": 10**6, "Hard": 10**6}]}, "ulimits"),
    ("oom off", {"OomKillDisable": True}, "oom"),
    ("oom shield", {"OomScoreAdj": -1000}, "oom"),
    ("ports", {"PortBindings": {"80/tcp": [{"HostPort": "80"}]}}, "ports"),
    ("publish all", {"PublishAllPorts": True}, "ports"),
    ("links", {"Links": ["gateway:gw"]}, "links"),
    ("cgroup parent", {"CgroupParent": "/"}, "cgroup"),
    ("unmask proc", {"MaskedPaths": []}, "masked-paths"),
    ("restart always", {"RestartPolicy": {"Name": "always"}}, "restart"),
    ("syslog", {"LogConfig": {"Type": "syslog", "Config": {"syslog-address": "x"}}}, "log-config"),
    ("runtime", {"Runtime": "runsc-debug"}, "runtime"),
    ("unknown field", {"FutureEscape": True}, "unknown-field"),
]


@pytest.mark.parametrize(("name", "host", "rule"), REFUSED, ids=[r[0] for r in REFUSED])
def test_create_refused(name: str, host: dict[str, Any], rule: str) -> None:
    v = create({"Image": "swarmless/busybox", "HostConfig": host})
    assert not v.allowed
    assert v.status == 403
    assert v.rule == rule, v.message
    assert v.message.endswith(f"(rule {rule})")


@pytest.mark.parametrize(
    ("body", "rule"),
    [
        ({"Image": "swarmless/python:bookworm"}, "image"),
        ({"Image": "sha256:" + "9" * 64}, "image"),
        ({}, "image"),
        ({"Image": "swarmless/busybox", "Labels": {"swarmless.parent": OTHER}}, "labels"),
        ({"Image": "swarmless/busybox", "Labels": {"swarmless.worker": "w1"}}, "labels"),
        ({"Image": "swarmless/busybox", "Volumes": {"/data": {}}}, "volumes"),
        ({"Image": "swarmless/busybox", "MacAddress": "02:42:ac:11:00:02"}, "network"),
        (
            {
                "Image": "swarmless/busybox",
                "NetworkingConfig": {"EndpointsConfig": {"other": {}}},
            },
            "network",
        ),
        (
            {
                "Image": "swarmless/busybox",
                "NetworkingConfig": {
                    "EndpointsConfig": {"fnnet": {"IPAMConfig": {"IPv4Address": "1.2.3.4"}}}
                },
            },
            "network",
        ),
    ],
)
def test_create_body_refused(body: dict[str, Any], rule: str) -> None:
    v = create(body)
    assert (v.allowed, v.rule) == (False, rule), v.message


def test_create_raw_json_tricks() -> None:
    dup = b'{"Image":"swarmless/busybox","HostConfig":{"Privileged":false,"Privileged":true}}'
    assert create(None, raw=dup).rule == "duplicate-key"
    case_dup = b'{"Image":"swarmless/busybox","HostConfig":{"Privileged":false,"privileged":true}}'
    assert create(None, raw=case_dup).rule == "duplicate-key"
    folded = '{"Image":"swarmless/busybox","HostConfig":{"Privi\u017fleged":true}}'.encode()
    assert create(None, raw=folded).rule == "json"
    assert create(None, raw=b'{"Image": "swarmless/busybox", ').rule == "json"
    assert create(None, raw=b'{"Image":"swarmless/busybox","HostConfig":[]}').rule == "json"
    lower = b'{"image":"swarmless/busybox","hostconfig":{"privileged":true}}'
    assert create(None, raw=lower).rule == "privileged"


def test_max_children() -> None:
    assert create({"Image": "swarmless/busybox"}, children=20).rule == "max-children"
    assert create({"Image": "swarmless/busybox"}, children=19).allowed


# -- paths and endpoints ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "rule"),
    [
        ("GET", "/v1.41/../containers/json", "path"),
        ("GET", "/v1.41/containers/%2e%2e/json", "path"),
        ("POST", "/v1.41/containers%2Fcreate", "path"),
        ("GET", "/v1.41//containers/json", "path"),
        ("GET", "/v1.41/containers/./json", "path"),
        ("GET", "/v1.41/containers\\x/json", "path"),
        ("POST", "/v1.23/containers/x/start", "api-version"),
        ("POST", "/v1.41/build", "build"),
        ("POST", "/v1.41/services/create", "services"),
        ("POST", "/v1.41/swarm/init", "swarm"),
        ("GET", "/v1.41/nodes/self", "nodes"),
        ("POST", "/v1.41/nodes/abc/update", "nodes"),
        ("POST", "/v1.41/secrets/create", "secrets"),
        ("GET", "/v1.41/plugins", "plugins"),
        ("POST", "/v1.41/volumes/create", "volumes"),
        ("POST", "/v1.41/networks/create", "networks"),
        ("POST", "/v1.41/networks/fnnet/connect", "networks"),
        ("POST", "/v1.41/containers/prune", "prune"),
        ("POST", "/v1.41/commit", "commit"),
        ("GET", "/v1.41/info", "info"),
        ("GET", "/v1.41/images/json", "images"),
        ("POST", "/v1.41/containers/x/update", "update"),
        ("POST", "/v1.41/exec/abc/nope", "exec"),
    ],
)
def test_paths_refused(method: str, path: str, rule: str) -> None:
    r = route(method, path)
    assert isinstance(r, Verdict)
    assert (r.allowed, r.rule) == (False, rule)


def test_own_children_only() -> None:
    for method, path in [
        ("GET", "/v1.41/containers/x/json"),
        ("POST", "/v1.41/containers/x/kill"),
        ("DELETE", "/v1.41/containers/x"),
        ("GET", "/v1.41/containers/x/logs"),
        ("POST", "/v1.41/containers/x/wait"),
        ("POST", "/v1.41/containers/x/attach"),
        ("POST", "/v1.41/containers/x/exec"),
    ]:
        sibling = child({**child().labels, "swarmless.parent": OTHER})
        assert on(method, path, sibling).rule == "own-children"
        gateway = child({"swarmless.managed": "true", "swarmless.kind": "worker"})
        assert on(method, path, gateway).rule == "own-children"
        assert on(method, path, None).rule == "own-children"
        v = on(method, path, child())
        assert v.allowed, (method, path, v.message)
        assert CHILD in v.path  # the checked id is what is forwarded, not the name


def test_forwarded_requests() -> None:
    v = on("POST", "/v1.41/containers/x/attach", child(), query="stream=1&stdin=1")
    assert (v.path, v.query, v.hijack) == (
        f"/v1.41/containers/{CHILD}/attach",
        "stream=1&stdin=1",
        True,
    )
    v = on("GET", "/containers/x/logs", child(), query="follow=1&stdout=1")
    assert v.path == f"/containers/{CHILD}/logs"
    assert on("POST", "/v1.41/containers/x/start", child(), b"{}").allowed
    assert on("POST", "/v1.41/containers/x/start", child(), b'{"Privileged":true}').rule == (
        "start-config"
    )
    assert on("DELETE", "/v1.41/containers/x", child(), query="link=1").rule == "links"
    assert on("GET", "/v1.41/containers/x/json", child(), query="a=1&a=2").rule == "query"
    v = on("POST", "/v1.41/containers/x/exec", child(), b'{"Cmd":["id"],"Privileged":true}')
    assert v.rule == "privileged"


def test_list_and_events_are_filtered() -> None:
    v = on("GET", "/v1.41/containers/json", None, query='all=1&filters={"label":["app=x"]}')
    assert v.allowed
    params = dict(p.split("=", 1) for p in v.query.split("&"))
    assert params["all"] == "1"
    from urllib.parse import unquote_plus

    filters = json.loads(unquote_plus(params["filters"]))
    # the caller's own children: its parent label, and this gateway's forced labels
    assert filters["label"] == ["app=x", "swarmless.gateway=gw1", f"swarmless.parent={ME}"]
    v = on("GET", "/v1.41/events", None, query='filters={"label":{"x=1":true}}')
    filters = json.loads(unquote_plus(dict(p.split("=", 1) for p in v.query.split("&"))["filters"]))
    assert filters == {
        "label": ["x=1", "swarmless.gateway=gw1", f"swarmless.parent={ME}"],
        "type": ["container"],
    }


def test_images() -> None:
    assert on(
        "POST", "/v1.41/images/create", None, query="fromImage=swarmless/busybox&tag=latest"
    ).allowed
    assert on("POST", "/v1.41/images/create", None, query="fromImage=alpine").rule == "image"
    assert on("POST", "/v1.41/images/create", None, query="fromSrc=-").rule == "query"
    assert on("GET", "/v1.41/images/swarmless/busybox/json", None).allowed
    assert on("GET", "/v1.41/images/alpine/json", None).rule == "image"


def test_normalize_image() -> None:
    assert normalize_image("busybox") == "docker.io/library/busybox:latest"
    assert normalize_image("swarmless/busybox") == "docker.io/swarmless/busybox:latest"
    assert normalize_image("docker.io/library/busybox:1") == "docker.io/library/busybox:1"
    assert normalize_image("localhost:5000/x") == "localhost:5000/x:latest"
    assert normalize_image("reg.io/a/b@sha256:00") == "reg.io/a/b@sha256:00"
    assert normalize_image("f" * 64) == "sha256:" + "f" * 64
