"""Property tests for the scoped Docker API: arbitrary bytes, paths and bodies.

Whatever a function container sends, the proxy's request reader either returns requests or
refuses with :class:`BadRequest` (never another exception), and the policy either refuses
with a named rule or allows a request whose rebuilt body keeps every invariant the
policy promises (no host resources, capped limits, forced labels, the caller's network).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from swarmless.proxy.http import BadRequest, ClientGone, ClientSide
from swarmless.proxy.policy import Caller, ProxyRequest, Target, check, normalize_image

pytestmark = pytest.mark.security

CALLER = Caller(container="c" * 64, function="fn", network="net", max_children=5)
IMAGE = "swarmless/busybox:latest"
IMAGES = {normalize_image(IMAGE): "sha256:" + "b" * 64}
FORCED = {
    "swarmless.managed": "true",
    "swarmless.kind": "child",
    "swarmless.parent": CALLER.container,
}


class _Sink:
    """The writer end ClientSide answers on (collects the bytes)."""

    def __init__(self) -> None:
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        self.out += data

    async def drain(self) -> None:
        return None


async def _read_all(stream: bytes) -> list[Any]:
    reader = asyncio.StreamReader()
    reader.feed_data(stream)
    reader.feed_eof()
    client = ClientSide(reader, _Sink(), max_head=4096, max_body=65536)  # type: ignore[arg-type]
    got: list[Any] = []
    for _ in range(50):
        try:
            incoming = await client.next_request(timeout=5)
        except (BadRequest, ClientGone) as e:
            got.append(e)
            return got
        if incoming is None:
            return got
        got.append(incoming)
        await client.answer(403, {"message": "no"})
        if not client.next_cycle():
            return got
    return got


_HEAD_PIECES = st.sampled_from(
    [
        b"POST /_swarmless/t/v1.41/containers/create HTTP/1.1\r\n",
        b"GET /v1.41/containers/json HTTP/1.1\r\n",
        b"Host: docker\r\n",
        b"Content-Length: 5\r\n",
        b"Content-Length: \xd9\xa3\r\n",
        b"Content-Length: -1\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n",
        b" folded\r\n",
        b"X: \x00\r\n",
        b"Upgrade: tcp\r\nConnection: Upgrade\r\n",
        b"\r\n",
        b"5\r\nhello\r\n0\r\n\r\n",
        b"ffffffffffffffffffff\r\n",
        b"hello",
        b"\n",
    ]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_HEAD_PIECES, st.binary(max_size=64)), max_size=12))
@example([b"GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: \xd9\xa3\r\n\r\n"])
@example([b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n\r\n"])
def test_any_byte_stream_is_read_or_refused(pieces: list[bytes]) -> None:
    got = asyncio.run(_read_all(b"".join(pieces)))
    for item in got:
        assert isinstance(item, BadRequest | ClientGone) or item.method.isascii()


def test_pipelined_requests_are_read_one_at_a_time() -> None:
    one = b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"
    smuggled = b"POST /containers/create HTTP/1.1\r\nHost: docker\r\nContent-Length: 2\r\n\r\n{}"
    got = asyncio.run(_read_all(one + smuggled))
    # the proxy's own answers close the connection: the second request is never read
    assert len(got) == 1
    assert got[0].target == "/_ping"


def test_non_ascii_content_length_is_a_400() -> None:
    got = asyncio.run(_read_all(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: \xd9\xa3\r\n\r\n"))
    assert len(got) == 1
    assert isinstance(got[0], BadRequest)
    assert got[0].status == 400


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=20,
)
_FIELDS = st.sampled_from(
    [
        "Image",
        "Cmd",
        "Labels",
        "Env",
        "HostConfig",
        "NetworkingConfig",
        "Volumes",
        "User",
        "Privileged",
        "Binds",
        "Mounts",
        "Tmpfs",
        "NetworkMode",
        "PidMode",
        "CapAdd",
        "Memory",
        "NanoCpus",
        "PidsLimit",
        "SecurityOpt",
        "Devices",
        "EndpointsConfig",
        "Aliases",
        "privileged",
        "swarmless.parent",
    ]
)
_BODY = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.sampled_from([IMAGE, "/", ""]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_FIELDS, inner, max_size=6),
    max_leaves=25,
)


def _create(body: Any, **kw: Any) -> ProxyRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return ProxyRequest("POST", "/v1.41/containers/create", "", raw, CALLER, images=IMAGES, **kw)


def _invariants(forwarded: bytes) -> None:
    config = json.loads(forwarded)
    host = config["HostConfig"]
    for field in ("Binds", "Privileged", "CapAdd", "Devices", "PortBindings", "VolumesFrom"):
        assert not host.get(field), field
    assert 0 < host["Memory"] <= CALLER.memory
    assert 0 < host["NanoCpus"] <= CALLER.cpus * 1e9
    assert 0 < host["PidsLimit"] <= CALLER.pids
    assert host["NetworkMode"] in (CALLER.network, "none")
    for mode in ("PidMode", "IpcMode", "UTSMode", "UsernsMode"):
        assert "host" not in str(host.get(mode, "")), mode
    for mount in host.get("Mounts") or []:
        assert mount["Type"] == "tmpfs"
    labels = config["Labels"]
    for key, value in FORCED.items():
        assert labels[key] == value
    assert config["Image"] == IMAGES[normalize_image(IMAGE)]
    for endpoint in config["NetworkingConfig"]["EndpointsConfig"].values():
        for alias in endpoint["Aliases"]:
            assert alias.startswith(f"{CALLER.function}-")


@settings(max_examples=600, deadline=None)
@given(st.one_of(_BODY, st.dictionaries(st.text(max_size=10), _JSON, max_size=6)))
def test_any_create_body_is_refused_or_forwarded_safely(body: Any) -> None:
    verdict = check(_create(body))
    if verdict.allowed:
        assert verdict.body is not None
        _invariants(verdict.body)
    else:
        assert verdict.status in (400, 403, 404)
        assert verdict.message.endswith(f"(rule {verdict.rule})")


_HOST_FIELDS = [
    "Binds",
    "VolumeDriver",
    "VolumesFrom",
    "Privileged",
    "CapAdd",
    "Capabilities",
    "Devices",
    "PortBindings",
    "PublishAllPorts",
    "Links",
    "Sysctls",
    "Ulimits",
    "CpuPeriod",
    "CpuQuota",
    "CpuShares",
    "BlkioWeight",
    "CpusetCpus",
    "Init",
    "AutoRemove",
    "CapDrop",
    "Dns",
    "DnsOptions",
    "DnsSearch",
    "ExtraHosts",
    "GroupAdd",
    "ReadonlyRootfs",
    "Tmpfs",
    "ConsoleSize",
    "OomScoreAdj",
    "ShmSize",
    "Memory",
    "MemorySwap",
    "NanoCpus",
    "PidsLimit",
    "NetworkMode",
    "PidMode",
    "IpcMode",
    "UTSMode",
    "UsernsMode",
    "CgroupnsMode",
    "SecurityOpt",
    "Runtime",
    "Isolation",
    "MaskedPaths",
    "ReadonlyPaths",
    "RestartPolicy",
    "LogConfig",
    "Mounts",
]


@settings(max_examples=800, deadline=None)
@given(
    st.dictionaries(st.sampled_from(_HOST_FIELDS), _JSON, max_size=5),
    st.dictionaries(
        st.sampled_from(["Aliases", "IPAddress", "Links"]),
        _JSON,
        max_size=2,
    ),
)
def test_any_host_config_is_refused_or_forwarded_safely(
    host: dict[str, Any], endpoint: dict[str, Any]
) -> None:
    body = {
        "Image": IMAGE,
        "HostConfig": host,
        "NetworkingConfig": {"EndpointsConfig": {"net": endpoint}},
    }
    verdict = check(_create(body))
    if verdict.allowed:
        assert verdict.body is not None
        _invariants(verdict.body)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {"Image": st.just(IMAGE)},
        optional={
            "HostConfig": st.dictionaries(_FIELDS, _JSON, max_size=4),
            "Labels": st.dictionaries(st.text(max_size=15), st.text(max_size=5), max_size=4),
        },
    ),
    st.dictionaries(
        st.sampled_from(["swarmless.parent", "swarmless.call", "swarmless.worker", "x"]),
        st.text(max_size=8),
        max_size=4,
    ),
)
def test_image_labels_never_reach_a_child(body: dict[str, Any], inherited: dict[str, str]) -> None:
    image_id = IMAGES[normalize_image(IMAGE)]
    verdict = check(_create(body, image_labels={image_id: inherited}))
    if not verdict.allowed:
        return
    assert verdict.body is not None
    labels = json.loads(verdict.body)["Labels"]
    for key in inherited:
        if key.startswith("swarmless."):
            assert labels[key] == FORCED.get(key, "")


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        alphabet=st.characters(codec="latin-1", exclude_characters="?#"), min_size=1, max_size=60
    ),
    st.sampled_from(["GET", "POST", "DELETE", "PUT", "HEAD"]),
    st.text(max_size=40),
)
def test_any_path_is_refused_or_names_an_own_child(path: str, method: str, query: str) -> None:
    stranger = Target(id="d" * 64, labels={"swarmless.kind": "child", "swarmless.parent": "x"})
    verdict = check(ProxyRequest(method, "/" + path, query, b"", CALLER, target=stranger))
    if verdict.allowed:
        # only endpoints that name no container, or pulls/inspects of allowed images
        assert stranger.id not in verdict.path


def test_not_yours_and_unknown_get_the_same_answer() -> None:
    stranger = Target(id="d" * 64, labels={"swarmless.kind": "child", "swarmless.parent": "x"})
    path = "/v1.41/containers/abc/json"
    a = check(ProxyRequest("GET", path, "", b"", CALLER, target=stranger))
    b = check(ProxyRequest("GET", path, "", b"", CALLER, target=None))
    assert (a.allowed, a.status, a.message) == (b.allowed, b.status, b.message)
    assert a.status == 404
    assert "ddd" not in a.message


@pytest.mark.parametrize(
    "options",
    ["rbind", "dev,suid,exec", "size=1g,exec,dev", "bind", "X-mount.mkdir", "size=64m,suid"],
)
def test_tmpfs_options_outside_the_fixed_set_are_refused(options: str) -> None:
    verdict = check(_create({"Image": IMAGE, "HostConfig": {"Tmpfs": {"/t": options}}}))
    assert not verdict.allowed


def test_plain_tmpfs_options_are_allowed() -> None:
    verdict = check(
        _create({"Image": IMAGE, "HostConfig": {"Tmpfs": {"/t": "size=64m,noexec,mode=1777"}}})
    )
    assert verdict.allowed, verdict.message


@pytest.mark.parametrize("alias", ["db", "gateway", "fnx", "fn-", "other-fn-1"])
def test_network_aliases_outside_the_callers_prefix_are_refused(alias: str) -> None:
    body = {
        "Image": IMAGE,
        "NetworkingConfig": {"EndpointsConfig": {"net": {"Aliases": [alias]}}},
    }
    verdict = check(_create(body))
    assert not verdict.allowed
    assert verdict.rule == "name"


def test_an_alias_under_the_callers_prefix_is_allowed() -> None:
    body = {
        "Image": IMAGE,
        "NetworkingConfig": {"EndpointsConfig": {"net": {"Aliases": ["fn-cache"]}}},
    }
    assert check(_create(body)).allowed


def test_refusals_do_not_list_the_allowlist() -> None:
    verdict = check(_create({"Image": "alpine"}))
    assert not verdict.allowed
    assert "busybox" not in verdict.message


def test_the_cap_counts_children_in_flight_and_exited_ones_apart() -> None:
    body = {"Image": IMAGE}
    assert not check(_create(body, children=CALLER.max_children)).allowed
    assert check(_create(body, children=CALLER.max_children - 1)).allowed
    assert check(_create(body, exited=CALLER.max_children - 1)).allowed
    refused = check(_create(body, exited=CALLER.max_children))
    assert not refused.allowed
    assert "remove" in refused.reason


def test_a_detached_exec_start_does_not_switch_protocols() -> None:
    own = Target(
        id="e" * 64,
        labels={
            "swarmless.kind": "child",
            "swarmless.parent": CALLER.container,
            "swarmless.managed": "true",
        },
    )
    path = "/v1.41/exec/" + "f" * 64 + "/start"
    detached = check(ProxyRequest("POST", path, "", b'{"Detach": true}', CALLER, target=own))
    attached = check(ProxyRequest("POST", path, "", b'{"Detach": false}', CALLER, target=own))
    assert detached.allowed
    assert attached.allowed
    assert not detached.hijack
    assert attached.hijack


def test_unknown_query_parameters_are_refused() -> None:
    own = Target(
        id="e" * 64,
        labels={
            "swarmless.kind": "child",
            "swarmless.parent": CALLER.container,
            "swarmless.managed": "true",
        },
    )
    path = "/v1.41/containers/abc/start"
    assert check(ProxyRequest("POST", path, "detachKeys=ctrl-x", b"", CALLER, target=own)).allowed
    assert not check(ProxyRequest("POST", path, "HostConfig=1", b"", CALLER, target=own)).allowed
    create = ProxyRequest(
        "POST", "/v1.41/containers/create", "name=fn-x&foo=1", b'{"Image": "busybox"}', CALLER
    )
    assert not check(create).allowed
