"""The gateway's edge: what of a request reaches a function, and where callbacks may go.

First the pure filter and the callback policy (with hypothesis properties), then the same
rules end to end: a real gateway, real warm, cgi and oneshot containers that echo what they
were given, real callback receivers on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.server
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmless.dispatch.cgi import cgi_environ
from swarmless.exceptions import InvalidArgument
from swarmless.gateway.callbacks import CallbackPolicy
from swarmless.gateway.edge import HOP_BY_HOP, filter_headers, ip, networks
from swarmless.gateway.replicas import peer_url
from swarmless.runtime.handlers import Call
from swarmless.runtime.wsgi import wsgi_environ
from tests.conftest import BUSYBOX, handler_image
from tests.gateway_harness import TOKEN, RunningGateway

pytestmark = pytest.mark.security

ADMIN = "admin-token-0123456789abcdef"
CALLER = "caller-token-ZYXWVUTSRQPONMLK"


def passed(
    headers: list[tuple[str, str]],
    *,
    peer: tuple[str, int] | None = ("203.0.113.7", 40000),
    trusted: tuple[str, ...] = (),
    consumed: frozenset[str] = frozenset(),
) -> Any:
    return filter_headers(
        [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        peer=peer,
        scheme="http",
        server=("127.0.0.1", 8080),
        trusted_proxies=networks(trusted),
        admin_token=ADMIN,
        is_credential=lambda t: t == CALLER,
        consumed=consumed,
    )


def names(p: Any) -> list[str]:
    return [k for k, _ in p.headers]


def value(p: Any, name: str) -> str | None:
    found = [v for k, v in p.headers if k == name]
    assert len(found) <= 1, found
    return found[0] if found else None


# -- the filter ----------------------------------------------------------------------------


def test_the_gateways_credentials_never_pass() -> None:
    basic = base64.b64encode(f"admin:{ADMIN}".encode()).decode()
    for auth in (
        f"Bearer {ADMIN}",
        f"bearer   {ADMIN}",
        f"Basic {basic}",
        f"Token token={ADMIN}",
        f"Bearer {CALLER}",
        f'Digest username="{CALLER}"',
    ):
        p = passed([("Authorization", auth), ("Accept", "*/*")])
        assert "authorization" not in names(p), auth
        assert value(p, "accept") == "*/*"
    # The admin token anywhere else, and the gateway's own X-Swarmless-* headers.
    p = passed(
        [
            ("X-Api-Key", f"k={ADMIN}"),
            ("Cookie", f"session={ADMIN}"),
            ("X-Swarmless-Parent", "c-123"),
            ("X-Swarmless-Forwarded-By", "http://10.0.0.1:8080"),
            ("X-Swarmless-Args", '["a"]'),
        ]
    )
    assert names(p)[:1] == ["x-swarmless-args"]
    assert not any(ADMIN in k or ADMIN in v for k, v in p.headers)
    assert not {"x-api-key", "cookie", "x-swarmless-parent", "x-swarmless-forwarded-by"} & set(
        names(p)
    )


def test_a_users_own_authorization_is_kept() -> None:
    for auth in ("Bearer eyJhbGciOi.user.jwt", "Basic dXNlcjpwYXNz", "Custom abc"):
        p = passed([("Authorization", auth)])
        assert value(p, "authorization") == auth


def test_hop_by_hop_and_proxy_headers_are_dropped() -> None:
    p = passed(
        [
            ("Host", "example.com"),
            ("Connection", "keep-alive, X-Secret-Hop, Host"),
            ("X-Secret-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Trailer", "X-T"),
            ("Transfer-Encoding", "chunked"),
            ("Upgrade", "websocket"),
            ("Proxy-Authorization", "Basic eDp5"),
            ("Proxy-Authenticate", "Basic"),
            ("Proxy-Connection", "keep-alive"),
            ("Proxy", "http://evil.example:3128"),
            ("X-Kept", "yes"),
        ]
    )
    assert value(p, "host") == "example.com"  # Connection cannot remove what the call needs
    assert value(p, "x-kept") == "yes"
    assert not (HOP_BY_HOP | {"x-secret-hop"}) & set(names(p))


def test_ambiguous_or_malformed_headers_are_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"underscore.*send 'X-Foo'"):
        passed([("X-Foo", "a"), ("X_Foo", "b")])
    with pytest.raises(InvalidArgument, match="underscore"):
        passed([("X_Forwarded_For", "1.2.3.4")])
    with pytest.raises(InvalidArgument, match="two Host"):
        passed([("Host", "a"), ("Host", "b")])
    with pytest.raises(InvalidArgument, match="control character"):
        passed([("X-A", "a\x00b")])
    with pytest.raises(InvalidArgument, match="not a valid HTTP field name"):
        passed([("X A", "1")])


def test_forwarded_headers_are_the_gateways() -> None:
    spoof = [
        ("Host", "app.example"),
        ("X-Forwarded-For", "1.2.3.4"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Prefix", "/evil"),
        ("Forwarded", "for=1.2.3.4"),
        ("X-Real-IP", "1.2.3.4"),
    ]
    p = passed(spoof)
    assert (p.client, p.client_port, p.scheme) == ("203.0.113.7", 40000, "http")
    assert value(p, "x-forwarded-for") == "203.0.113.7"
    assert value(p, "x-forwarded-proto") == "http"
    assert value(p, "x-forwarded-host") == "app.example"
    assert not {"x-forwarded-prefix", "forwarded", "x-real-ip"} & set(names(p))
    # From a trusted proxy: its chain, from the client it vouches for.
    p = passed(spoof, peer=("10.0.0.2", 5000), trusted=("10.0.0.0/8",))
    assert (p.client, p.client_port, p.scheme) == ("1.2.3.4", 0, "https")
    assert value(p, "x-forwarded-for") == "1.2.3.4, 10.0.0.2"
    assert value(p, "x-forwarded-host") == "evil.example"
    assert value(p, "x-real-ip") == "1.2.3.4"
    # A client behind the proxy that spoofs: the proxy appended the real one.
    chain = [("X-Forwarded-For", "6.6.6.6, 198.51.100.9, 10.0.0.3")]
    p = passed(chain, peer=("10.0.0.2", 5000), trusted=("10.0.0.0/8",))
    assert value(p, "x-forwarded-for") == "198.51.100.9, 10.0.0.3, 10.0.0.2"
    assert p.client == "198.51.100.9"
    # Garbage in the chain stops the walk at the last proxy that vouched.
    p = passed([("X-Forwarded-For", "unknown")], peer=("10.0.0.2", 1), trusted=("10.0.0.0/8",))
    assert (value(p, "x-forwarded-for"), p.client) == ("10.0.0.2", "10.0.0.2")
    # An IPv4-mapped peer is its IPv4 address; no peer at all: no X-Forwarded-For.
    assert passed([], peer=("::ffff:10.0.0.2", 1)).client == "10.0.0.2"
    p = passed([("X-Forwarded-For", "1.2.3.4")], peer=None)
    assert value(p, "x-forwarded-for") is None
    assert value(p, "x-forwarded-host") == "127.0.0.1:8080"


def test_consumed_headers_do_not_pass() -> None:
    p = passed(
        [("X-Callback-Url", "http://x/"), ("Idempotency-Key", "k")],
        consumed=frozenset({"x-callback-url", "idempotency-key"}),
    )
    assert names(p) == ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"]


def test_cgi_and_wsgi_environments_guard_themselves() -> None:
    headers = [("Proxy", "http://evil:1"), ("X-Foo", "a"), ("X_Foo", "b"), ("X-Bar", "1")]
    env = cgi_environ(
        function="f",
        method="GET",
        path="/",
        query="",
        headers=headers,
        body_length=0,
        remote_addr="10.0.0.1",
        remote_port=1,
        server_name="gw",
        server_port=80,
    )
    assert "HTTP_PROXY" not in env
    assert env["HTTP_X_FOO"] == "a"
    assert env["HTTP_X_BAR"] == "1"
    event = {"method": "GET", "path": "/", "headers": [list(h) for h in headers]}
    environ = wsgi_environ(Call("c", event, b"", None), multithread=False)
    assert "HTTP_PROXY" not in environ
    assert environ["HTTP_X_FOO"] == "a"


# -- properties ----------------------------------------------------------------------------

_INTERESTING_NAMES = [
    "authorization",
    "Authorization",
    "proxy",
    "Proxy",
    "connection",
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-swarmless-parent",
    "x-swarmless-args",
    "te",
    "upgrade",
    "keep-alive",
    "x-foo",
    "x_foo",
    "cookie",
]
_INTERESTING_VALUES = [
    f"Bearer {ADMIN}",
    f"Bearer {CALLER}",
    "Basic " + base64.b64encode(f"u:{ADMIN}".encode()).decode(),
    f"x{ADMIN}y",
    "1.2.3.4, 10.0.0.1",
    "close, x-foo, authorization",
    "https",
]
_name = st.one_of(
    st.sampled_from(_INTERESTING_NAMES).map(str.encode),
    st.binary(max_size=24),
    st.text(alphabet="abcxyz-_", min_size=1, max_size=12).map(str.encode),
)
_value = st.one_of(
    st.sampled_from(_INTERESTING_VALUES).map(str.encode),
    st.binary(max_size=60),
    st.builds(
        lambda a, b: (a + ADMIN + b).encode("latin-1"),
        st.text(max_size=8).map(lambda t: t.encode("latin-1", "replace").decode("latin-1")),
        st.text(max_size=8).map(lambda t: t.encode("latin-1", "replace").decode("latin-1")),
    ),
)
_peer = st.one_of(
    st.none(),
    st.tuples(
        st.sampled_from(["10.0.0.2", "203.0.113.7", "::1", "::ffff:10.0.0.9", "x"]),
        st.integers(0, 65535),
    ),
)
_trusted = st.sampled_from([(), ("10.0.0.0/8",), ("0.0.0.0/0", "::/0")])


@settings(max_examples=400, deadline=None)
@given(headers=st.lists(st.tuples(_name, _value), max_size=12), peer=_peer, trusted=_trusted)
def test_filter_properties(
    headers: list[tuple[bytes, bytes]], peer: tuple[str, int] | None, trusted: tuple[str, ...]
) -> None:
    refused: InvalidArgument | None = None
    try:
        p = filter_headers(
            headers,
            peer=peer,
            scheme="http",
            server=("127.0.0.1", 8080),
            trusted_proxies=networks(trusted),
            admin_token=ADMIN,
            is_credential=lambda t: t == CALLER,
        )
    except InvalidArgument as e:
        refused = e
    if refused is not None:  # a clear 400, never a crash
        assert refused.status_code == 400
        assert refused.message
        return
    out = names(p)
    for k, v in p.headers:
        assert k == k.lower()
        assert k
        assert "_" not in k
        assert k not in HOP_BY_HOP
        assert not k.startswith("x-swarmless-") or k == "x-swarmless-args"
        assert ADMIN not in k
        assert ADMIN not in v
        if k == "authorization":
            assert CALLER not in v.split()
            assert CALLER not in v.replace("=", " ").split()
    assert out.count("x-forwarded-proto") == 1
    assert out.count("x-forwarded-for") <= 1
    assert out.count("x-forwarded-host") <= 1
    xff = value(p, "x-forwarded-for")
    if xff is not None:
        entries = [e.strip() for e in xff.split(",")]
        assert all(ip(e) is not None for e in entries)
        assert p.client == entries[0]
        if not trusted:  # only the connection's peer, whatever the client sent
            assert peer is not None
            assert entries == [str(ip(str(peer[0])))]


@settings(max_examples=200, deadline=None)
@given(headers=st.lists(st.tuples(st.text(max_size=12), st.text(max_size=20)), max_size=10))
def test_environments_never_hold_http_proxy(headers: list[tuple[str, str]]) -> None:
    env = cgi_environ(
        function="f",
        method="GET",
        path="/",
        query="",
        headers=[*headers, ("Proxy", "http://evil:1")],
        body_length=0,
        remote_addr="",
        remote_port=0,
        server_name="",
        server_port=0,
    )
    assert "HTTP_PROXY" not in env
    event = {"headers": [[k, v] for k, v in headers] + [["proxy", "http://evil:1"]]}
    assert "HTTP_PROXY" not in wsgi_environ(Call("c", event, b"", None), multithread=True)


# -- the callback policy -------------------------------------------------------------------


def _forms(addr: ipaddress.IPv4Address) -> list[str]:
    """The spellings of one IPv4 address a resolver would accept."""
    n = int(addr)
    return [str(addr), str(n), hex(n), f"[::ffff:{addr}]", f"0x{n >> 24:x}.{n & 0xFFFFFF}"]


@settings(max_examples=200, deadline=None)
@given(
    addr=st.one_of(
        st.ip_addresses(network="127.0.0.0/8"),
        st.ip_addresses(network="169.254.0.0/16"),
        st.ip_addresses(network="0.0.0.0/8"),
        st.ip_addresses(network="224.0.0.0/4"),
    )
)
def test_callbacks_to_special_addresses_are_refused_in_any_spelling(
    addr: ipaddress.IPv4Address,
) -> None:
    policy = CallbackPolicy(local=set)
    for form in _forms(addr):
        with pytest.raises(InvalidArgument, match="refused"):
            policy.check_url(f"http://{form}:8080/hook")


def test_callback_policy() -> None:
    blocked = [(ipaddress.ip_network("172.30.0.0/16"), "an address of the function network")]
    policy = CallbackPolicy(blocked=blocked, local=lambda: {ipaddress.ip_address("192.0.2.50")})
    refused = {
        "http://127.0.0.1:8080/system/functions": "loopback",
        "http://[::1]/": "loopback",
        "http://169.254.169.254/latest/meta-data/": "link-local",
        "http://[fe80::1]/": "link-local",
        "http://0.0.0.0:8080/": "unspecified",
        "http://[::]/": "unspecified",
        "http://224.0.0.1/": "multicast",
        "http://255.255.255.255/": "reserved",
        "http://100.100.100.200/": "metadata",
        "http://[fd00:ec2::254]/": "metadata",
        "http://[2002:7f00:1::]/": "loopback",  # 6to4 of 127.0.0.1
        "http://172.30.0.5/": "function network",
        "http://192.0.2.50:9/": "gateway's own machine",
        "http://localhost:8080/": "loopback host name",
        "http://app.localhost/": "loopback host name",
        "ftp://example.com/": "http",
        "http:///path": "http",
        "http://a b/": "invalid host",
        "http://" + "a" * 3000 + "/": "longer",
    }
    for url, why in refused.items():
        with pytest.raises(InvalidArgument, match=why):
            policy.check_url(url)
    for url in ("https://hooks.example.com/x", "http://10.1.2.3:9000/", "http://[2001:db8::1]/"):
        assert policy.check_url(url).scheme in ("http", "https")
    # callback_allow: only what it lists; a listed name still passes the default refusals.
    allow = CallbackPolicy(allow=["127.0.0.1", "hooks.example.com"], local=set)
    allow.check_url("http://127.0.0.1:9/")
    allow.check_url("http://HOOKS.example.com./")
    with pytest.raises(InvalidArgument, match="not in callback_allow"):
        allow.check_url("http://10.1.2.3/")
    allow.check_address(ipaddress.ip_address("198.51.100.1"), named=True)
    with pytest.raises(InvalidArgument, match="loopback"):
        allow.check_address(ipaddress.ip_address("127.0.0.2"), named=True)
    with pytest.raises(InvalidArgument, match="not in callback_allow"):
        allow.check_address(ipaddress.ip_address("198.51.100.1"), named=False)
    names_only = CallbackPolicy(allow=["hooks.example.com"], local=set)
    with pytest.raises(InvalidArgument, match="not in callback_allow"):
        names_only.check_url("http://other.example.com/")


def test_a_name_is_checked_on_every_address_it_resolves_to() -> None:
    name = _loopback_name()
    if name is None:
        pytest.skip("no host name here resolves to loopback only (besides localhost)")
    policy = CallbackPolicy(local=set)
    url = policy.check_url(f"http://{name}:9/")  # no lookup at intake: it passes
    with pytest.raises(InvalidArgument, match=r"resolves to .*loopback"):
        asyncio.run(policy.resolve(url))
    with pytest.raises(OSError, match=r"."):  # the name does not resolve: a failed try
        asyncio.run(policy.resolve(policy.check_url("http://no-such-host.invalid/")))
    # An address literal needs no lookup, and is checked all the same.
    assert asyncio.run(policy.resolve(policy.check_url("http://198.51.100.1/"))) == [
        ipaddress.ip_address("198.51.100.1")
    ]


def _loopback_name() -> str | None:
    """A host name that resolves only to loopback addresses, other than ``localhost``
    (which the policy refuses without a lookup): this machine's name or one from
    /etc/hosts; None when there is none."""
    candidates = [socket.gethostname()]
    with contextlib.suppress(OSError):
        for line in Path("/etc/hosts").read_text().splitlines():
            fields = line.split("#", 1)[0].split()
            if len(fields) > 1 and (a := ip(fields[0])) is not None and a.is_loopback:
                candidates.extend(fields[1:])
    for name in candidates:
        if name == "localhost" or name.endswith(".localhost") or ip(name) is not None:
            continue
        try:
            infos = socket.getaddrinfo(name, None)
        except OSError:
            continue
        addrs = {ip(str(i[4][0]).split("%")[0]) for i in infos}
        if addrs and all(a is not None and a.is_loopback for a in addrs):
            return name
    return None


# -- end to end ----------------------------------------------------------------------------

HANDLER = """
import json, os, urllib.request

def handle(event, context):
    return {"headers": event["headers"], "token": os.environ.get("SWARMLESS_TOKEN", "")}

def relay(event, context):
    # A function calling another, as the SDK does: its own token, its call as the parent.
    req = urllib.request.Request(
        os.environ["SWARMLESS_GATEWAY_URL"] + "/function/edge-echo",
        data=b"from a function",
        headers={"Authorization": "Bearer " + os.environ["SWARMLESS_TOKEN"],
                 "X-Swarmless-Parent": context.call_id},
        method="POST",
    )
    seen = json.loads(urllib.request.urlopen(req, timeout=30).read())
    return {"seen": seen["headers"], "token": os.environ["SWARMLESS_TOKEN"]}

def app(environ, start_response):
    keys = ["REMOTE_ADDR", "HTTP_X_FORWARDED_FOR", "HTTP_PROXY", "HTTP_AUTHORIZATION",
            "HTTP_X_FOO", "wsgi.url_scheme", "SERVER_NAME"]
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({k: environ.get(k) for k in keys}).encode()]
"""

CGI_ENV = """#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
env
"""


class Receiver:
    """An HTTP server on loopback that records what is POSTed to it and may redirect."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, bytes]] = []
        self.redirects: dict[str, tuple[int, str]] = {}
        receiver = self
        lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    receiver.posts.append((self.path, body))
                status, location = receiver.redirects.get(self.path, (200, ""))
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def image(build_image: Callable[..., str]) -> str:
    return handler_image(build_image, "edge-echo", HANDLER)


@pytest.fixture(scope="module")
def cgi_image(build_image: Callable[..., str]) -> str:
    return build_image("edge-cgi", f"FROM {BUSYBOX}\nCOPY env.sh /env.sh\n", {"env.sh": CGI_ENV})


@pytest.fixture(scope="module")
def gw(
    engine: docker.DockerClient,
    labels: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    image: str,
    cgi_image: str,
) -> Iterator[RunningGateway]:
    g = RunningGateway(tmp_path_factory.mktemp("gw-edge"), labels).start()
    try:
        client = g.client()
        client.deploy(
            {"name": "edge-echo", "image": image, "mode": "warm", "handler": "handler:handle"}
        )
        client.deploy(
            {"name": "edge-relay", "image": image, "mode": "warm", "handler": "handler:relay"}
        )
        client.deploy(
            {
                "name": "edge-wsgi",
                "image": image,
                "mode": "warm",
                "handler": "handler:app",
                "handler_kind": "wsgi",
            }
        )
        client.deploy(
            {
                "name": "edge-private",
                "image": image,
                "mode": "warm",
                "handler": "handler:handle",
                "private": True,
            }
        )
        client.deploy(
            {"name": "edge-cgi", "image": cgi_image, "mode": "cgi", "command": ["/env.sh"]}
        )
        client.deploy({"name": "edge-once", "image": BUSYBOX, "command": ["echo", "done"]})
        yield g
    finally:
        g.stop(engine)


def _seen(r: httpx.Response) -> dict[str, str]:
    assert r.status_code == 200, r.text
    return dict(r.json()["headers"])


def _assert_clean(headers: dict[str, str], *secrets: str) -> None:
    assert "authorization" not in headers
    assert "x-swarmless-parent" not in headers
    for secret in secrets:
        assert not any(secret in k or secret in v for k, v in headers.items()), secret


def test_a_warm_function_never_sees_the_admin_token(gw: RunningGateway) -> None:
    with gw.http() as http:  # the admin token, on a private and on a public function
        for fn in ("edge-private", "edge-echo"):
            seen = _seen(http.post(f"/function/{fn}", content=b"x", headers={"X-Kept": "1"}))
            _assert_clean(seen, TOKEN)
            assert seen["x-kept"] == "1"
    with gw.http(token=None) as http:  # a user's own Authorization is theirs
        seen = _seen(http.post("/function/edge-echo", headers={"Authorization": "Bearer jwt.1"}))
        assert seen["authorization"] == "Bearer jwt.1"


def test_a_function_calling_another_never_hands_it_its_token(gw: RunningGateway) -> None:
    with gw.http(token=None) as http:
        r = http.post("/function/edge-relay", content=b"go")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["token"]  # the caller had one, and used it
    _assert_clean(out["seen"], out["token"], TOKEN)
    # The gateway knew the call: the callee's record names the relay's call as its parent.
    parent = r.headers["x-call-id"]
    gw.wait_for(
        lambda: any(i.parent == parent for i in gw.client().invocations(function="edge-echo")),
        30,
        "the callee's record",
    )


def test_a_caller_token_from_outside_is_stripped_too(gw: RunningGateway) -> None:
    gw.wait_for(lambda: bool(gw.gateway.callers.grants()), 60, "a warm worker's grant")
    caller = gw.gateway.callers.grants()[0].token
    with gw.http(token=caller) as http:
        seen = _seen(http.post("/function/edge-echo", headers={"X-Swarmless-Parent": "c-x"}))
    _assert_clean(seen, caller)


def test_proxy_header_never_becomes_http_proxy(gw: RunningGateway) -> None:
    with gw.http(token=None) as http:
        r = http.get("/function/edge-cgi/p", headers={"Proxy": "http://evil.example:3128"})
        assert r.status_code == 200, r.text
        env = dict(line.split("=", 1) for line in r.text.splitlines() if "=" in line)
        assert "HTTP_PROXY" not in env
        assert env["HTTP_X_FORWARDED_FOR"] == env["REMOTE_ADDR"] == "127.0.0.1"
        r = http.get("/function/edge-wsgi", headers={"Proxy": "http://evil.example:3128"})
        assert r.json()["HTTP_PROXY"] is None


def test_underscore_names_are_refused_in_every_mode(gw: RunningGateway) -> None:
    headers = [("X-Foo", "a"), ("X_Foo", "b")]
    with gw.http(token=None) as http:
        for path in (
            "/function/edge-echo",
            "/function/edge-wsgi",
            "/function/edge-cgi",
            "/function/edge-once",
            "/async-function/edge-echo",
        ):
            r = http.post(path, headers=headers, content=b"x")
            assert r.status_code == 400, (path, r.text)
            assert "underscore" in r.json()["message"]


def test_a_clients_forwarded_headers_are_not_trusted(gw: RunningGateway) -> None:
    spoof = {
        "X-Forwarded-For": "1.2.3.4",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example",
        "X-Real-IP": "1.2.3.4",
    }
    with gw.http(token=None) as http:
        seen = _seen(http.post("/function/edge-echo", headers=spoof))
        assert seen["x-forwarded-for"] == "127.0.0.1"
        assert seen["x-forwarded-proto"] == "http"
        assert seen["x-forwarded-host"] == gw.url.removeprefix("http://")
        assert "x-real-ip" not in seen
        environ = http.post("/function/edge-wsgi", headers=spoof).json()
        assert environ["REMOTE_ADDR"] == "127.0.0.1"
        assert environ["wsgi.url_scheme"] == "http"
        assert environ["SERVER_NAME"] == "127.0.0.1"
        r = http.get("/function/edge-cgi", headers=spoof)
        env = dict(line.split("=", 1) for line in r.text.splitlines() if "=" in line)
        assert env["HTTP_X_FORWARDED_FOR"] == env["REMOTE_ADDR"] == "127.0.0.1"
        assert env["REQUEST_SCHEME"] == "http"
        assert "HTTP_X_REAL_IP" not in env


def test_an_async_call_stores_what_the_edge_let_through(gw: RunningGateway) -> None:
    with gw.http() as http:
        r = http.post(
            "/async-function/edge-private",
            headers={"X-Forwarded-For": "1.2.3.4", "Idempotency-Key": f"k-{time.time()}"},
        )
        assert r.status_code == 202, r.text
        done = http.get(f"/invocations/{r.headers['x-call-id']}/result", params={"wait": 60})
    seen = _seen(done)
    _assert_clean(seen, TOKEN)
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert "idempotency-key" not in seen


def test_callbacks_to_the_gateways_own_places_are_refused_at_intake(gw: RunningGateway) -> None:
    port = gw.server.port
    own = [
        "http://127.0.0.1:9/",
        f"http://127.0.0.1:{port}/system/functions",
        f"http://[::ffff:127.0.0.1]:{port}/system/functions",
        f"http://2130706433:{port}/",
        "http://localhost/",
        "http://169.254.169.254/latest/meta-data/",
        f"http://{gw.gateway.backend.runtime_host()}:{port}/system/functions",
        peer_url("0.0.0.0", port) + "/system/functions",  # this machine's own address
    ]
    with gw.http() as http:
        for url in own:
            r = http.post("/async-function/edge-once", headers={"X-Callback-Url": url})
            assert r.status_code == 400, (url, r.text)
            assert "refused" in r.json()["message"], url


def _callback_outcome(gw: RunningGateway, call_id: str) -> str:
    found: list[str] = []

    def recorded() -> bool:
        with gw.http() as http:
            found[:] = [http.get(f"/invocations/{call_id}").json().get("callback") or ""]
        return bool(found[0])

    gw.wait_for(recorded, 60, "the callback's outcome on the record")
    return found[0]


def test_a_name_that_resolves_to_loopback_is_refused_at_delivery(gw: RunningGateway) -> None:
    name = _loopback_name()
    if name is None:
        pytest.skip("no host name here resolves to loopback only (besides localhost)")
    receiver = Receiver()
    try:
        with gw.http() as http:
            r = http.post(
                "/async-function/edge-once",
                headers={"X-Callback-Url": f"http://{name}:{receiver.port}/hook"},
            )
            assert r.status_code == 202, r.text  # no DNS lookup at intake
        outcome = _callback_outcome(gw, r.headers["x-call-id"])
        assert outcome.startswith("failed: refused:"), outcome
        assert "loopback" in outcome
        assert receiver.posts == []
    finally:
        receiver.close()


def test_metrics_need_the_admin_token(gw: RunningGateway) -> None:
    with gw.http(token=None) as http:
        r = http.get("/metrics")
        assert r.status_code == 401
        assert "admin token" in r.json()["message"]
        assert "edge-private" not in r.text
    with gw.http() as http:
        r = http.get("/metrics")
        assert r.status_code == 200
        assert 'function="edge-private"' in r.text or "edge-private" in r.text


@pytest.fixture(scope="module")
def gw_allow(
    engine: docker.DockerClient, labels: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    g = RunningGateway(
        tmp_path_factory.mktemp("gw-edge-allow"),
        labels,
        callback_allow="127.0.0.1",
        metrics_public=True,
    ).start()
    try:
        g.client().deploy({"name": "edge-once", "image": BUSYBOX, "command": ["echo", "done"]})
        yield g
    finally:
        g.stop(engine)


def test_callback_allow_and_redirects(gw_allow: RunningGateway) -> None:
    receiver = Receiver()
    receiver.redirects = {
        "/moved": (307, "/final"),
        "/to-metadata": (308, "http://169.254.169.254/latest/meta-data/"),
        "/see-other": (302, "/final"),
        "/loop": (307, "/loop"),
    }
    try:
        with gw_allow.http() as http:

            def spawn(path: str) -> str:
                r = http.post(
                    "/async-function/edge-once",
                    headers={"X-Callback-Url": receiver.url + path},
                )
                assert r.status_code == 202, r.text
                return _callback_outcome(gw_allow, r.headers["x-call-id"])

            assert spawn("/moved").startswith("delivered 200")
            assert [p for p, _ in receiver.posts] == ["/moved", "/final"]
            assert receiver.posts[1][1] == b"done\n"  # a 307 keeps the POST and its body
            outcome = spawn("/to-metadata")
            assert outcome.startswith("failed: refused: redirect to http://169.254.169.254")
            assert "not followed" in spawn("/see-other")
            assert "more than 3 redirects" in spawn("/loop")
            # Only what callback_allow lists.
            r = http.post(
                "/async-function/edge-once", headers={"X-Callback-Url": "http://10.9.8.7/"}
            )
            assert r.status_code == 400
            assert "not in callback_allow" in r.json()["message"]
        with gw_allow.http(token=None) as http:  # metrics_public
            assert http.get("/metrics").status_code == 200
    finally:
        receiver.close()
