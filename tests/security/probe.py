"""The attacker: runs INSIDE a deployed ``docker: scoped`` function container.

Copied into the test image as ``/app/probe.py`` and served as the warm handler
``probe:handle`` (and ``probe:make_child`` for the neighbour function); it needs only the
standard library, the Docker SDK for Python and the ``docker`` CLI of the image. The test
module imports it for :data:`ATTEMPTS` (the names and classes of the attempts) and
:func:`evidence_name`, never runs it.

Every attempt is one named function of a :class:`Probe`; the battery runs them all in one
call and answers a JSON report: the status and message the attacker saw, what the proxy let
it see of the children the attempt left (the engine's own inspect), whether the proxy still
answers. Whatever an attempt tries to create carries the label ``swarmless-attack=<run>:<slug>``
(containers) or is named :func:`evidence_name` (networks, volumes), so the test finds it on
the engine even when it was created behind the proxy's back.

Expectations (checked by the test, from the report and the engine):

- ``refused``: a 4xx, no child left, nothing created;
- ``http``: malformed HTTP, answered 400 (any 4xx) or the connection closed, and the proxy
  still answers the next connection;
- ``smuggle``: bytes sent after a request (pipelined, after a hijack that did not happen)
  are never executed unchecked: no 2xx for them, nothing created;
- ``contained``: refused, or allowed with every child within the rules;
- ``ok``: the attempt checks itself (a working path, an oracle that must not answer).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import docker
import docker.errors
import docker.types

BUSYBOX = "swarmless/busybox:latest"
#: Label key on every container an attempt tries to create: ``<run>:<slug>``.
MARK = "swarmless-attack"
API = "/v1.41"
SEQ_LINES = 200_000


def slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:80]


def evidence_name(prefix: str, run: str, slug: str) -> str:
    """The name of a network or volume an attempt tries to create."""
    return f"{prefix}-{run}-{hashlib.sha256(slug.encode()).hexdigest()[:10]}"


@dataclasses.dataclass(frozen=True)
class Attempt:
    cls: str
    name: str
    expect: str
    fn: Callable[[Probe], Any]

    @property
    def slug(self) -> str:
        return f"{self.cls}-{slugify(self.name)}"


ATTEMPTS: list[Attempt] = []


def table(cls: str, expect: str, rows: dict[str, Callable[[Probe], Any]]) -> None:
    for name, fn in rows.items():
        ATTEMPTS.append(Attempt(cls, name, expect, fn))


def attempt(cls: str, name: str, expect: str) -> Callable[[Callable[[Probe], Any]], Any]:
    def register(fn: Callable[[Probe], Any]) -> Callable[[Probe], Any]:
        ATTEMPTS.append(Attempt(cls, name, expect, fn))
        return fn

    return register


@dataclasses.dataclass
class Resp:
    """What a raw exchange (or the CLI) got back."""

    status: int | None
    message: str
    statuses: list[int] = dataclasses.field(default_factory=list)
    closed: bool = True


@dataclasses.dataclass
class Check:
    """An attempt that judged itself."""

    ok: bool
    detail: str
    status: int | None = None


# -- raw HTTP ------------------------------------------------------------------------------

_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")


def _dechunk(body: bytes) -> bytes:
    out, rest = b"", body
    while rest:
        line, sep, rest = rest.partition(b"\r\n")
        try:
            size = int(line.split(b";")[0], 16)
        except ValueError:
            return out
        if size == 0 or not sep:
            return out
        out, rest = out + rest[:size], rest[size + 2 :]
    return out


def _complete(data: bytes) -> bool:
    """Whether ``data`` holds one whole response (head, and a body of known length)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    lines = head.lower().split(b"\r\n")
    m = _STATUS.match(head)
    if m and (m[1].startswith(b"1") or m[1] in (b"204", b"304")):
        return m[1] != b"101"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip() == b"content-length" and value.strip().isdigit():
            return len(body) >= int(value.strip())
        if name.strip() == b"transfer-encoding" and b"chunked" in value:
            return body.endswith(b"0\r\n\r\n")
    return False


def first_message(data: bytes) -> str:
    head, _, body = data.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    try:
        return str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        return body[:300].decode("latin-1")


class Conn:
    """One raw TCP connection to the scoped API."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.data = b""
        self.closed = False

    def send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(data)

    def read(self, *, until: Callable[[bytes], bool], idle: float, total: float) -> None:
        end = time.monotonic() + total
        while not self.closed and not until(self.data) and time.monotonic() < end:
            self.sock.settimeout(max(0.05, min(idle, end - time.monotonic())))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return
            except OSError:
                self.closed = True
                return
            if not chunk:
                self.closed = True
                return
            self.data += chunk

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def resp(self) -> Resp:
        statuses = [int(s) for s in _STATUS.findall(self.data)]
        status = statuses[0] if statuses and self.data.startswith(b"HTTP/") else None
        message = first_message(self.data) if status else self.data[:200].decode("latin-1")
        return Resp(status, message, statuses, self.closed)


# -- the probe ----------------------------------------------------------------------------


def outcome(fn: Callable[[], Any]) -> dict[str, Any]:
    try:
        got = fn()
    except docker.errors.APIError as e:
        return {"status": e.status_code, "message": str(e.explanation)[:600]}
    except Exception as e:
        return {"status": None, "message": f"{type(e).__name__}: {e}"[:600]}
    if isinstance(got, Resp):
        return {
            "status": got.status,
            "message": got.message[:600],
            "statuses": got.statuses,
            "closed": got.closed,
        }
    if isinstance(got, Check):
        return {"status": got.status, "ok": got.ok, "message": got.detail[:2000]}
    return {"status": 200, "message": f"ALLOWED: {got!r}"[:600]}


_CHILD_KEYS = [
    "Privileged",
    "Binds",
    "Mounts",
    "Tmpfs",
    "NetworkMode",
    "PidMode",
    "IpcMode",
    "UTSMode",
    "UsernsMode",
    "CgroupnsMode",
    "CapAdd",
    "Devices",
    "DeviceRequests",
    "SecurityOpt",
    "Sysctls",
    "PortBindings",
    "PublishAllPorts",
    "Memory",
    "MemorySwap",
    "NanoCpus",
    "PidsLimit",
    "VolumesFrom",
    "RestartPolicy",
    "Runtime",
    "CgroupParent",
    "OomKillDisable",
    "Ulimits",
]


def essentials(info: dict[str, Any]) -> dict[str, Any]:
    """What the test checks of a child (the engine's inspect, relayed by the proxy)."""
    hc = info.get("HostConfig") or {}
    cfg = info.get("Config") or {}
    nets = (info.get("NetworkSettings") or {}).get("Networks") or {}
    return {
        "Id": info.get("Id"),
        "Name": info.get("Name"),
        "Image": cfg.get("Image"),
        "Labels": cfg.get("Labels") or {},
        "HostConfig": {k: hc.get(k) for k in _CHILD_KEYS},
        "EngineMounts": info.get("Mounts") or [],
        "Aliases": {n: (v or {}).get("Aliases") or [] for n, v in nets.items()},
    }


class Probe:
    def __init__(self, ctx: dict[str, Any]) -> None:
        self.ctx = ctx
        self.run = str(ctx.get("run", "run"))
        self.prefix_name = str(ctx.get("prefix", "swarmless-test-sec"))
        self.client = docker.from_env(timeout=60)
        self.api = self.client.api
        url = os.environ["DOCKER_HOST"][len("tcp://") :]
        hostport, _, path = url.partition("/")
        host, _, port = hostport.rpartition(":")
        self.host, self.port = host, int(port)
        self.token_path = f"/{path}" if path else ""
        self.slug = "setup"
        self.setup_ids: set[str] = set()
        self.kid = ""
        self.exited = ""

    # -- helpers ---------------------------------------------------------------------

    def mark(self) -> dict[str, str]:
        return {MARK: f"{self.run}:{self.slug}"}

    def evidence(self) -> str:
        return evidence_name(self.prefix_name, self.run, self.slug)

    def children(self) -> list[str]:
        """The own children as listed, those of another instance left out (never removed)."""
        rows = self.api.containers(all=True)
        instance = self.ctx.get("instance")
        return [
            c["Id"] for c in rows if (c.get("Labels") or {}).get("swarmless.gateway") == instance
        ]

    def create(self, image: str = BUSYBOX, cmd: Any = None, **kw: Any) -> Any:
        kw["labels"] = {**(kw.get("labels") or {}), **self.mark()}
        return self.client.containers.create(image, cmd or ["sleep", "60"], **kw)

    def body(self, extra: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {"Image": BUSYBOX, "Cmd": ["sleep", "60"], **extra}
        body["Labels"] = {**(body.get("Labels") or {}), **self.mark()}
        return body

    def post_create(self, extra: dict[str, Any], params: dict[str, str] | None = None) -> Any:
        url = self.api._url("/containers/create")
        return self.api._result(
            self.api._post_json(url, data=self.body(extra), params=params), json=True
        )

    def host_config(self, **hc: Any) -> Any:
        return self.post_create({"HostConfig": hc})

    def post_text(self, text: str, path: str = "/containers/create") -> Any:
        url = self.api._url(path)
        headers = {"Content-Type": "application/json"}
        r = self.api._post(url, data=text.encode("utf-8"), headers=headers)
        return self.api._result(r, json=True)

    def labels_json(self) -> str:
        return json.dumps(self.mark())

    def connect(self) -> Conn:
        return Conn(self.host, self.port)

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: tuple[str, ...] = (),
        *,
        token: bool = True,
        length: bool = True,
        close: bool = False,
    ) -> bytes:
        target = (self.token_path if token else "") + path
        head = [f"{method} {target} HTTP/1.1", "Host: docker", *headers]
        if body and length:
            head.append(f"Content-Length: {len(body)}")
        if close:
            head.append("Connection: close")
        return ("\r\n".join(head) + "\r\n\r\n").encode("utf-8") + body

    def raw(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: tuple[str, ...] = (),
        *,
        token: bool = True,
    ) -> Resp:
        """One request on its own connection (``Connection: close``)."""
        conn = self.connect()
        conn.send(self.request(method, path, body, headers, token=token, close=True))
        conn.read(until=_complete, idle=5, total=15)
        conn.close()
        return conn.resp()

    def exchange(self, data: bytes, *, idle: float = 2.0, total: float = 8.0) -> Resp:
        """Send bytes as they are; read everything until close or ``idle`` s of silence."""
        conn = self.connect()
        conn.send(data)
        conn.read(until=lambda _d: False, idle=idle, total=total)
        conn.close()
        return conn.resp()

    def smuggle(self, first: bytes, then: bytes, *, wait: bool = False) -> Resp:
        """``first``, then ``then`` on the same connection (in one write, or after the
        head of the first answer)."""
        conn = self.connect()
        if wait:
            conn.send(first)
            conn.read(until=lambda d: b"\r\n\r\n" in d, idle=5, total=10)
            conn.send(then)
        else:
            conn.send(first + then)
        conn.read(until=lambda _d: False, idle=2.0, total=8.0)
        conn.close()
        return conn.resp()

    def engine_create(self, hc: dict[str, Any] | None = None, *, chunked: bool = False) -> bytes:
        """A create for the ENGINE (no token): what a smuggled request looks like."""
        body = json.dumps(
            {
                "Image": BUSYBOX,
                "Cmd": ["true"],
                "Labels": self.mark(),
                "HostConfig": hc or {"Privileged": True, "Binds": ["/:/host"]},
            }
        ).encode()
        if chunked:
            data = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
            return self.request(
                "POST",
                f"{API}/containers/create",
                data,
                ("Content-Type: application/json", "Transfer-Encoding: chunked"),
                token=False,
                length=False,
            )
        return self.request(
            "POST",
            f"{API}/containers/create",
            body,
            ("Content-Type: application/json",),
            token=False,
        )

    def engine_network(self) -> bytes:
        body = json.dumps({"Name": self.evidence(), "Labels": self.mark()}).encode()
        return self.request(
            "POST",
            f"{API}/networks/create",
            body,
            ("Content-Type: application/json",),
            token=False,
        )

    def engine_volume(self) -> bytes:
        body = json.dumps({"Name": self.evidence(), "Labels": self.mark()}).encode()
        return self.request(
            "POST",
            f"{API}/volumes/create",
            body,
            ("Content-Type: application/json",),
            token=False,
        )

    def exec_id(self, container: str | None = None, cmd: Any = None) -> str:
        return str(self.api.exec_create(container or self.kid, cmd or ["true"])["Id"])

    def exec_start_bytes(
        self, exec_id: str, body: dict[str, Any] | str, *, upgrade: str | None = "tcp"
    ) -> bytes:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        headers: tuple[str, ...] = ("Content-Type: application/json",)
        if upgrade:
            headers += ("Connection: Upgrade", f"Upgrade: {upgrade}")
        return self.request("POST", f"{API}/exec/{exec_id}/start", data, headers)

    def alive(self) -> bool:
        try:
            r = self.raw("GET", "/_ping")
        except OSError:
            return False
        return r.status == 200

    def cli(
        self, *args: str, stdin: bytes | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[bytes]:
        env = {**os.environ, "DOCKER_CONFIG": "/tmp/.docker-probe"}
        return subprocess.run(
            ["docker", *args],
            input=stdin,
            capture_output=True,
            timeout=timeout,
            env=env,
            check=False,
        )

    def cli_resp(self, *args: str) -> Resp:
        """A docker CLI command as a response: 0 -> 200, a daemon error -> its status."""
        done = self.cli(*args)
        err = done.stderr.decode("utf-8", "replace")
        if done.returncode == 0:
            return Resp(200, f"ALLOWED: {done.stdout[:200]!r}")
        m = re.search(r"Error response from daemon: (.*)", err)
        if m:
            return Resp(403 if "(rule " in err else 400, m[1][:500])
        return Resp(None, f"rc={done.returncode}: {err[-500:]}")

    def gateway(self, method: str, path: str, token: str | None, body: Any = None) -> Resp:
        url = os.environ["SWARMLESS_GATEWAY_URL"].rstrip("/") + path
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=20) as r:
                return Resp(r.status, r.read()[:300].decode("latin-1"))
        except urllib.error.HTTPError as e:
            return Resp(e.code, e.read()[:300].decode("latin-1"))

    # -- running -------------------------------------------------------------------------

    def setup(self) -> None:
        for cid in self.children():
            with contextlib.suppress(docker.errors.APIError):
                self.api.remove_container(cid, force=True)
        self.slug = "setup"
        self.kid = self.create(cmd=["sleep", "600"]).id
        self.api.start(self.kid)
        ex = self.create(cmd=["true"])
        ex.start()
        ex.wait(timeout=30)
        self.exited = ex.id

    def run_attempt(self, a: Attempt) -> dict[str, Any]:
        self.slug = a.slug
        self.setup_ids = set()
        before = set(self.children())
        started = time.monotonic()
        got = outcome(lambda: a.fn(self))
        got.update(cls=a.cls, name=a.name, expect=a.expect, slug=a.slug)
        got["secs"] = round(time.monotonic() - started, 2)
        try:
            new = [c for c in self.children() if c not in before and c not in self.setup_ids]
            got["children"] = [essentials(self.api.inspect_container(c)) for c in new]
            for c in set(self.children()) - before:
                with contextlib.suppress(docker.errors.APIError):
                    self.api.remove_container(c, force=True)
        except docker.errors.APIError as e:
            got["children"] = []
            got["children_error"] = str(e)[:300]
        got["alive"] = self.alive()
        return got

    def battery(self, names: list[str] | None) -> list[dict[str, Any]]:
        self.setup()
        chosen = [a for a in ATTEMPTS if names is None or a.name in names]
        return [self.run_attempt(a) for a in chosen]


# -- attempts ------------------------------------------------------------------------------
# Names are stable: the test reports and parametrizes on them.


def _live(p: Probe) -> int:
    """Own children that have not exited (what every reading of the cap counts)."""
    rows = p.api.containers(all=True)
    mine = [
        r for r in rows if (r.get("Labels") or {}).get("swarmless.gateway") == p.ctx["instance"]
    ]
    return sum(1 for r in mine if r.get("State") not in ("exited", "dead"))


def _fill_to_cap(p: Probe, *, exited: bool = False) -> list[str]:
    """Children (created, or run to their exit) until the proxy says no (bounded)."""
    made: list[str] = []
    for _ in range(2 * int(p.ctx["cap"]) + 5):
        try:
            c = p.create(cmd=["true"] if exited else ["sleep", "60"])
        except docker.errors.APIError:
            break
        made.append(c.id)
        p.setup_ids.add(c.id)
        if exited:
            c.start()
            c.wait(timeout=30)
    return made


def _parallel_at_cap(p: Probe) -> Check:
    made = _fill_to_cap(p)
    p.api.remove_container(made[-1], force=True)
    conns = [p.connect() for _ in range(10)]
    body = json.dumps(p.body({"Cmd": ["sleep", "60"]})).encode()
    req = p.request("POST", f"{API}/containers/create", body, ("Content-Type: application/json",))
    for c in conns:
        c.send(req)
    for c in conns:
        c.read(until=_complete, idle=10, total=30)
        c.close()
    codes = [c.resp().status for c in conns]
    won = codes.count(201)
    live = _live(p)
    return Check(
        won <= 1 and live <= int(p.ctx["cap"]),
        f"{won} of 10 parallel creates one below the cap succeeded; {live} live children: {codes}",
    )


def _free_slot(p: Probe, *, exited: bool) -> Check:
    made = _fill_to_cap(p, exited=exited)
    over = outcome(lambda: p.create())
    p.api.remove_container(made[-1], force=True)
    again = outcome(lambda: p.create())
    return Check(
        over["status"] in range(400, 500) and again["status"] == 200,
        f"{len(made)} made; at the cap: {over}; after removing one: {again}",
    )


def _over_cap(p: Probe) -> Any:
    made = _fill_to_cap(p)
    live = _live(p)
    if live > int(p.ctx["cap"]):
        return Resp(200, f"{len(made)} creates went through: {live} live children")
    return p.create()


table(
    "limits",
    "ok",
    {
        "parallel creates at the cap give at most one more": _parallel_at_cap,
        "removing a child frees its slot": lambda p: _free_slot(p, exited=False),
        "removing an exited child frees its slot": lambda p: _free_slot(p, exited=True),
    },
)


table(
    "limits",
    "refused",
    {
        "a create over the cap is refused": _over_cap,
        "memory over the cap": lambda p: p.create(mem_limit=1024**4),
        "64 CPUs": lambda p: p.create(nano_cpus=64 * 10**9),
        "negative memory": lambda p: p.host_config(Memory=-1),
        "unlimited swap (MemorySwap -1)": lambda p: p.host_config(MemorySwap=-1),
        "memory as a float": lambda p: p.host_config(Memory=1e20),
        "memory over 2**64": lambda p: p.host_config(Memory=2**64 + 1),
        "PidsLimit over the cap": lambda p: p.host_config(PidsLimit=10**9),
        "CpuQuota unlimited": lambda p: p.host_config(CpuQuota=-1, CpuPeriod=100000),
        "CpuRealtimeRuntime": lambda p: p.host_config(CpuRealtimeRuntime=950000),
        "CpuShares over 1024": lambda p: p.host_config(CpuShares=262144),
        "ShmSize of 1 TB": lambda p: p.host_config(ShmSize=1024**4),
        "MemoryReservation over the cap": lambda p: p.host_config(MemoryReservation=1024**4),
        "ulimits nofile 1M": lambda p: p.host_config(
            Ulimits=[{"Name": "nofile", "Soft": 1 << 20, "Hard": 1 << 20}]
        ),
        "KernelMemory": lambda p: p.host_config(KernelMemory=1024**3),
        "OomKillDisable": lambda p: p.host_config(OomKillDisable=True),
        "a negative OomScoreAdj": lambda p: p.host_config(OomScoreAdj=-1000),
        "StorageOpt size": lambda p: p.host_config(StorageOpt={"size": "1T"}),
        "blkio write limits on a device": lambda p: p.host_config(
            BlkioDeviceWriteBps=[{"Path": "/dev/sda", "Rate": 1}]
        ),
    },
)
table(
    "limits",
    "contained",
    {
        "PidsLimit -1 (unlimited)": lambda p: p.host_config(PidsLimit=-1),
        "Memory 0 (unlimited) said explicitly": lambda p: p.host_config(Memory=0, NanoCpus=0),
    },
)


# -- hijack and pipelining -----------------------------------------------------------------


def _detach_then(p: Probe, then: Callable[[Probe], bytes], **kw: Any) -> Resp:
    first = p.exec_start_bytes(p.exec_id(), {"Detach": True, "Tty": False})
    return p.smuggle(first, then(p), **kw)


def _paused_exec(p: Probe) -> Resp:
    c = p.create(cmd=["sleep", "60"])
    p.setup_ids.add(c.id)
    c.start()
    ex = p.exec_id(c.id)
    c.pause()
    try:
        return p.smuggle(p.exec_start_bytes(ex, {"Detach": False}), p.engine_create())
    finally:
        c.unpause()


def _ran_exec(p: Probe) -> Resp:
    ex = p.exec_id()
    p.api.exec_start(ex)
    return p.smuggle(p.exec_start_bytes(ex, {"Detach": False}), p.engine_create())


def _paused_attach(p: Probe) -> Resp:
    c = p.create(cmd=["sleep", "60"])
    p.setup_ids.add(c.id)
    c.start()
    c.pause()
    try:
        first = p.request(
            "POST",
            f"{API}/containers/{c.id}/attach?stream=1&stdout=1&stderr=1",
            b"",
            ("Connection: Upgrade", "Upgrade: tcp"),
        )
        return p.smuggle(first, p.engine_create())
    finally:
        c.unpause()


def _attach(p: Probe, cid: str, *, upgrade: bool, stdin: bool = False) -> bytes:
    headers = ("Connection: Upgrade", "Upgrade: tcp") if upgrade else ()
    query = "stream=1&stdout=1&stderr=1" + ("&stdin=1" if stdin else "")
    return p.request("POST", f"{API}/containers/{cid}/attach?{query}", b"", headers)


def _running_attach(p: Probe) -> Resp:
    c = p.create(cmd=["cat"], stdin_open=True)
    p.setup_ids.add(c.id)
    c.start()
    return p.smuggle(_attach(p, c.id, upgrade=True, stdin=True), p.engine_create(), wait=True)


def _pipelined_pings(p: Probe) -> Check:
    ping = p.request("GET", "/_ping")
    r = p.exchange(ping + ping)
    good = r.statuses[:1] == [200] and (
        len(r.statuses) == 1 or (len(r.statuses) == 2 and r.statuses[1] in (200, 400, 403))
    )
    return Check(good, f"statuses {r.statuses}")


def _short_length(p: Probe) -> Resp:
    inner = json.dumps(p.body({})).encode()
    smuggled = p.engine_create()
    data = p.request(
        "POST",
        f"{API}/containers/create",
        inner + smuggled,
        ("Content-Type: application/json", f"Content-Length: {len(inner)}"),
        length=False,
    )
    return p.exchange(data)


def _wait_then(p: Probe) -> Resp:
    first = p.request("POST", f"{API}/containers/{p.exited}/wait")
    return p.smuggle(first, p.engine_create())


table(
    "hijack",
    "smuggle",
    {
        "exec start Detach:true + Upgrade, then a privileged create (one write)": lambda p: (
            _detach_then(p, lambda q: q.engine_create())
        ),
        "exec start Detach:true + Upgrade, then a privileged create after the answer": lambda p: (
            _detach_then(p, lambda q: q.engine_create(), wait=True)
        ),
        "exec start Detach:true without Upgrade, then a privileged create": lambda p: p.smuggle(
            p.exec_start_bytes(p.exec_id(), {"Detach": True}, upgrade=None), p.engine_create()
        ),
        "exec start Detach:true, then a network create": lambda p: _detach_then(
            p, lambda q: q.engine_network()
        ),
        "exec start Detach:true, then a volume create": lambda p: _detach_then(
            p, lambda q: q.engine_volume()
        ),
        "exec start Detach:true, then a kill of another container": lambda p: _detach_then(
            p, lambda q: q.request("POST", f"{API}/containers/{q.ctx['victim']}/kill", token=False)
        ),
        "exec start Detach:true, then an exec into the gateway": lambda p: _detach_then(
            p,
            lambda q: q.request(
                "POST",
                f"{API}/containers/{q.ctx['gateway']}/exec",
                b'{"Cmd": ["id"]}',
                ("Content-Type: application/json",),
                token=False,
            ),
        ),
        "exec start Detach:true, then a chunked privileged create": lambda p: _detach_then(
            p, lambda q: q.engine_create(chunked=True)
        ),
        "exec start Detach:true Tty:true, then a privileged create": lambda p: p.smuggle(
            p.exec_start_bytes(p.exec_id(), {"Detach": True, "Tty": True}), p.engine_create()
        ),
        "exec start Detach:true, then a create carrying the token path": lambda p: _detach_then(
            p,
            lambda q: q.request(
                "POST",
                f"{API}/containers/create",
                json.dumps(q.body({"HostConfig": {"Privileged": True}})).encode(),
                ("Content-Type: application/json",),
            ),
        ),
        "exec start with a body the engine rejects, then a privileged create": lambda p: p.smuggle(
            p.exec_start_bytes(p.exec_id(), '{"Detach": "yes"}'), p.engine_create()
        ),
        "exec start Upgrade: h2c, then a privileged create": lambda p: p.smuggle(
            p.exec_start_bytes(p.exec_id(), {"Detach": True}, upgrade="h2c"), p.engine_create()
        ),
        "exec start in a paused child, then a privileged create": _paused_exec,
        "exec start of an exec that already ran, then a create": _ran_exec,
        "attach to a paused child, then a privileged create": _paused_attach,
        "attach to a running child: later bytes are its stdin only": _running_attach,
        "attach without Upgrade to an exited child, then a create": lambda p: p.smuggle(
            _attach(p, p.exited, upgrade=False), p.engine_create()
        ),
        "attach with Upgrade to an exited child, then a create": lambda p: p.smuggle(
            _attach(p, p.exited, upgrade=True), p.engine_create(), wait=True
        ),
        "pipelined: ping, then a privileged create": lambda p: p.smuggle(
            p.request("GET", "/_ping"), p.engine_create()
        ),
        "pipelined: container list, then a privileged create": lambda p: p.smuggle(
            p.request("GET", f"{API}/containers/json"), p.engine_create()
        ),
        "pipelined: a Content-Length that stops short, the rest a create": _short_length,
        "pipelined: wait on a child, then a privileged create": _wait_then,
        "pipelined: logs of a child, then a privileged create": lambda p: p.smuggle(
            p.request("GET", f"{API}/containers/{p.exited}/logs?stdout=1"), p.engine_create()
        ),
        "pipelined: exec resize, then a privileged create": lambda p: p.smuggle(
            p.request("POST", f"{API}/exec/{p.exec_id()}/resize?h=10&w=10"), p.engine_create()
        ),
        "HTTP/1.0 keep-alive: ping, then a privileged create": lambda p: p.smuggle(
            f"GET {p.token_path}/_ping HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode(),
            p.engine_create(),
        ),
        "Upgrade: tcp on an ordinary route, then a privileged create": lambda p: p.smuggle(
            p.request(
                "GET", f"{API}/containers/json", b"", ("Connection: Upgrade", "Upgrade: tcp")
            ),
            p.engine_create(),
        ),
    },
)
table(
    "hijack",
    "ok",
    {"pipelined: two pings answered in order or the second refused": _pipelined_pings},
)


# -- stdio: the allowed paths work, byte-exact ---------------------------------------------


def _seq_bytes() -> bytes:
    return "".join(f"{i}\n" for i in range(1, SEQ_LINES + 1)).encode()


def _cli_echo(p: Probe) -> Check:
    n = int(p.ctx.get("cli_runs", 30))
    bad = []
    for i in range(n):
        done = p.cli("run", "--rm", BUSYBOX, "echo", "hi")
        if done.returncode != 0 or done.stdout != b"hi\n":
            bad.append((i, done.returncode, done.stdout[:50], done.stderr[-200:]))
    return Check(not bad, f"{len(bad)} of {n} runs wrong: {bad[:5]!r}")


def _cli_seq(p: Probe) -> Check:
    done = p.cli("run", "--rm", BUSYBOX, "seq", "1", str(SEQ_LINES), timeout=120)
    want = _seq_bytes()
    return Check(
        done.returncode == 0 and done.stdout == want,
        f"rc={done.returncode}, {len(done.stdout)} of {len(want)} bytes, equal: "
        f"{done.stdout == want}; {done.stderr[-200:]!r}",
    )


def _cli_stdin(p: Probe) -> Check:
    done = p.cli("run", "-i", "--rm", BUSYBOX, "cat", stdin=b"data\n")
    return Check(done.stdout == b"data\n", f"rc={done.returncode} {done.stdout!r}")


def _cli_stdin_big(p: Probe) -> Check:
    data = os.urandom(1 << 20)
    done = p.cli("run", "-i", "--rm", BUSYBOX, "md5sum", stdin=data)
    want = hashlib.md5(data).hexdigest()
    return Check(done.stdout.split()[:1] == [want.encode()], f"{done.stdout[:80]!r} want {want}")


def _cli_exec(p: Probe) -> Check:
    run = p.cli("run", "-d", BUSYBOX, "sleep", "60")
    cid = run.stdout.decode().strip()
    try:
        done = p.cli("exec", cid, "echo", "exec-ok")
        logs = p.cli("logs", cid)
    finally:
        p.cli("rm", "-f", cid)
    return Check(
        done.stdout == b"exec-ok\n" and logs.returncode == 0,
        f"run: {run.returncode} {run.stderr[-200:]!r}; exec: {done.stdout!r} "
        f"{done.stderr[-200:]!r}",
    )


def _cli_ps(p: Probe) -> Check:
    done = p.cli("ps", "-a", "-q", "--no-trunc")
    ids = set(done.stdout.decode().split())
    mine = {c["Id"] for c in p.api.containers(all=True)}
    return Check(done.returncode == 0 and ids == mine, f"cli {sorted(ids)} sdk {sorted(mine)}")


def _demux(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {1: b"", 2: b""}
    while len(data) >= 8:
        kind, size = data[0], int.from_bytes(data[4:8], "big")
        out[kind] = out.get(kind, b"") + data[8 : 8 + size]
        data = data[8 + size :]
    return out


def _read_all(sock: Any, timeout: float = 60) -> bytes:
    raw = getattr(sock, "_sock", sock)
    raw.settimeout(timeout)
    got = b""
    while chunk := raw.recv(65536):
        got += chunk
    return got


def _sdk_attach_seq(p: Probe) -> Check:
    c = p.create(cmd=["seq", "1", str(SEQ_LINES)])
    sock = p.api.attach_socket(c.id, params={"stdout": 1, "stderr": 1, "stream": 1})
    c.start()
    got = _demux(_read_all(sock))[1]
    sock.close()
    want = _seq_bytes()
    return Check(got == want, f"{len(got)} of {len(want)} bytes, equal: {got == want}")


def _sdk_attach_stdin(p: Probe) -> Check:
    c = p.create(cmd=["cat"], stdin_open=True)
    sock = p.api.attach_socket(c.id, params={"stdin": 1, "stdout": 1, "stream": 1})
    c.start()
    raw = sock._sock
    raw.sendall(b"ping through attach\n")
    raw.shutdown(socket.SHUT_WR)
    got = _demux(_read_all(sock))[1]
    return Check(got == b"ping through attach\n", repr(got[:200]))


def _sdk_exec_stdin(p: Probe) -> Check:
    ex = p.api.exec_create(p.kid, ["cat"], stdin=True)["Id"]
    sock = p.api.exec_start(ex, socket=True)
    raw = sock._sock
    raw.sendall(b"stdin of an exec\n")
    raw.shutdown(socket.SHUT_WR)
    got = _demux(_read_all(sock))[1]
    return Check(got == b"stdin of an exec\n", repr(got[:200]))


def _sdk_run_many(p: Probe) -> Check:
    bad = []
    for i in range(5):
        out = p.client.containers.run(BUSYBOX, ["echo", "hi"], remove=True, labels=p.mark())
        if out != b"hi\n":
            bad.append((i, out[:50]))
    return Check(not bad, repr(bad))


def _raw_exec_output_check(p: Probe) -> Check:
    ex = p.exec_id(cmd=["echo", "raw-exec-ok"])
    conn = p.connect()
    conn.send(p.exec_start_bytes(ex, {"Detach": False}))
    conn.read(until=lambda d: b"raw-exec-ok" in d, idle=5, total=20)
    conn.close()
    return Check(b"raw-exec-ok\n" in conn.data, repr(conn.data[:300]))


table(
    "stdio",
    "ok",
    {
        "cli: docker run --rm echo hi, every run exactly 'hi'": _cli_echo,
        "cli: seq 1 200000 relayed byte-exact": _cli_seq,
        "cli: stdin piped through (echo data | docker run -i cat)": _cli_stdin,
        "cli: 1 MiB of stdin through attach": _cli_stdin_big,
        "cli: docker exec with output, docker logs": _cli_exec,
        "cli: docker ps -a lists exactly the own children": _cli_ps,
        "sdk: containers.run echo hi, 5 runs": _sdk_run_many,
        "sdk: attach, seq 1 200000 byte-exact": _sdk_attach_seq,
        "sdk: stdin through an attach socket and its half-close": _sdk_attach_stdin,
        "sdk: stdin of an exec and its half-close": _sdk_exec_stdin,
        "sdk: exec_run with output": lambda p: Check(
            (out := p.client.containers.get(p.kid).exec_run(["echo", "exec ok"]).output)
            == b"exec ok\n",
            repr(out),
        ),
        "raw: exec start without Detach relays the output": _raw_exec_output_check,
    },
)


# -- free-form values inside allowed fields --------------------------------------------------


def _alias(p: Probe, alias: str, network: str | None = None) -> Any:
    net = network or p.ctx["network"]
    return p.post_create(
        {
            "HostConfig": {"NetworkMode": net},
            "NetworkingConfig": {"EndpointsConfig": {net: {"Aliases": [alias]}}},
        }
    )


def _resolve(name: str) -> set[str]:
    try:
        return {str(a[4][0]) for a in socket.getaddrinfo(name, None, socket.AF_INET)}
    except socket.gaierror:
        return set()


def _named_db(p: Probe) -> Check:
    got = outcome(lambda: p.create(name="db"))
    if got["status"] != 200:
        return Check(got["status"] in range(400, 500), f"refused: {got}")
    p.client.containers.get("db").start()
    deadline = time.monotonic() + 5
    seen: set[str] = set()
    while time.monotonic() < deadline:
        seen |= _resolve("db")
        if seen - {p.ctx["db_ip"]}:
            break
        time.sleep(0.2)
    return Check(seen <= {p.ctx["db_ip"]}, f"'db' resolves to {sorted(seen)}")


def _forged_labels(p: Probe, via_cli: bool = False) -> Check:
    if via_cli:
        done = p.cli(
            "run", "-d", "--label", f"{MARK}={p.run}:{p.slug}", p.ctx["forged"], "sleep", "60"
        )
        cid = done.stdout.decode().strip()
        if done.returncode != 0:
            return Check(False, f"refused: {done.stderr[-300:]!r}")
    else:
        cid = p.create(p.ctx["forged"]).id
    labels = p.api.inspect_container(cid)["Config"]["Labels"]
    swarmless = {k: v for k, v in labels.items() if k.startswith("swarmless.")}
    want = {
        "swarmless.parent": p.ctx["me"],
        "swarmless.kind": "child",
        "swarmless.gateway": p.ctx["instance"],
        "swarmless.managed": "true",
    }
    wrong = {k: v for k, v in want.items() if swarmless.get(k) != v}
    forged = {k: v for k, v in p.ctx["forged_labels"].items() if k not in want}
    kept = {k: v for k, v in forged.items() if swarmless.get(k) == v}
    return Check(not wrong and not kept, f"swarmless labels on the child: {swarmless}")


def _tmpfs(opts: str) -> Callable[[Probe], Any]:
    return lambda p: p.host_config(Tmpfs={"/t": opts})


def _tmpfs_mount(**m: Any) -> Callable[[Probe], Any]:
    return lambda p: p.host_config(Mounts=[{"Type": "tmpfs", "Target": "/t", **m}])


def _endpoint(**ep: Any) -> Callable[[Probe], Any]:
    def run(p: Probe) -> Any:
        net = p.ctx["network"]
        return p.post_create(
            {
                "HostConfig": {"NetworkMode": net},
                "NetworkingConfig": {"EndpointsConfig": {net: ep}},
            }
        )

    return run


table(
    "values",
    "refused",
    {
        "network alias 'db' (the database's name)": lambda p: _alias(p, "db"),
        "network alias 'DB'": lambda p: _alias(p, "DB"),
        "network alias 'db.' (trailing dot)": lambda p: _alias(p, "db."),
        "network alias: the gateway container's name": lambda p: _alias(p, p.ctx["gateway_name"]),
        "network alias: the neighbour worker's short id": lambda p: _alias(p, p.ctx["worker"][:12]),
        "network alias: the neighbour's child's short id": lambda p: _alias(
            p, p.ctx["sibling"][:12]
        ),
        "network alias through the docker CLI (--network-alias db)": lambda p: p.cli_resp(
            "create", "--network", p.ctx["network"], "--network-alias", "db", BUSYBOX, "true"
        ),
        "network alias on the 'default' endpoint key": lambda p: p.post_create(
            {"NetworkingConfig": {"EndpointsConfig": {"default": {"Aliases": ["db"]}}}}
        ),
        "tmpfs option rbind": _tmpfs("rbind"),
        "tmpfs options dev,suid,exec": _tmpfs("dev,suid,exec"),
        "tmpfs options size=1g,exec": _tmpfs("size=1g,exec"),
        "tmpfs option exec": _tmpfs("exec"),
        "tmpfs option suid": _tmpfs("suid"),
        "tmpfs option dev": _tmpfs("dev"),
        "tmpfs option bind": _tmpfs("bind"),
        "tmpfs options mode=4777,uid=0": _tmpfs("mode=4777,uid=0"),
        "tmpfs option nr_inodes=0": _tmpfs("nr_inodes=0"),
        "tmpfs through the docker CLI (--tmpfs /t:rbind,exec)": lambda p: p.cli_resp(
            "create", "--tmpfs", "/t:rbind,exec", BUSYBOX, "true"
        ),
        "tmpfs mount with TmpfsOptions.Options": _tmpfs_mount(
            TmpfsOptions={"SizeBytes": 1 << 20, "Options": [["exec"]]}
        ),
        "tmpfs mount with a Source": _tmpfs_mount(Source="/"),
        "tmpfs mount with bind propagation": _tmpfs_mount(BindOptions={"Propagation": "rshared"}),
        "a mount of type npipe": lambda p: p.host_config(
            Mounts=[{"Type": "npipe", "Source": "/var/run/docker.sock", "Target": "/s"}]
        ),
        "a mount of type cluster": lambda p: p.host_config(
            Mounts=[{"Type": "cluster", "Source": "x", "Target": "/s"}]
        ),
        "an unknown query parameter on create": lambda p: p.post_create({}, {"foo": "bar"}),
        "create query parameter 'name' twice": lambda p: p.raw(
            "POST",
            f"{API}/containers/create?name=a{p.run}&name=b{p.run}",
            json.dumps(p.body({})).encode(),
            ("Content-Type: application/json",),
        ),
        "endpoint with a fixed IP (IPAMConfig)": _endpoint(IPAMConfig={"IPv4Address": "10.0.0.2"}),
        "endpoint with Links": _endpoint(Links=["db:db"]),
        "endpoint with a MAC address": _endpoint(MacAddress="02:42:ac:11:00:99"),
        "endpoint with driver options": _endpoint(DriverOpts={"com.docker.network.x": "1"}),
        "endpoint on the default bridge": lambda p: p.post_create(
            {"NetworkingConfig": {"EndpointsConfig": {"bridge": {}}}}
        ),
        "an image off the list, by id": lambda p: p.create(p.ctx["other_image_id"]),
        "an image off the list, through a registry host": lambda p: p.create(
            "localhost:5000/swarmless/busybox:latest"
        ),
        "a privileged exec, key in lower case": lambda p: p.post_text(
            '{"Cmd": ["id"], "privileged": true}', f"/containers/{p.kid}/exec"
        ),
        "a privileged exec, as an integer": lambda p: p.post_text(
            '{"Cmd": ["id"], "Privileged": 1}', f"/containers/{p.kid}/exec"
        ),
        "an exec with an unknown field": lambda p: p.post_text(
            '{"Cmd": ["id"], "Capabilities": ["CAP_SYS_ADMIN"]}', f"/containers/{p.kid}/exec"
        ),
        "labels with a non-string value": lambda p: p.post_create({"Labels": {"a": 1}}),
        "a swarmless.* label in the body": lambda p: p.create(labels={"swarmless.worker": "x"}),
    },
)
table(
    "values",
    "ok",
    {
        "a child named 'db' does not take the database's DNS name": _named_db,
        "an image's forged swarmless labels are overridden": _forged_labels,
        "an image's forged swarmless labels are overridden (docker CLI)": lambda p: _forged_labels(
            p, via_cli=True
        ),
    },
)
table(
    "values",
    "contained",
    {
        "tmpfs with the allowed options": _tmpfs("size=1m,mode=1777,noexec,nosuid,nodev"),
        "a label key SWARMLESS.PARENT in upper case": lambda p: p.create(
            labels={"SWARMLESS.PARENT": "x"}
        ),
    },
)


# -- leaks -------------------------------------------------------------------------------------


def _unknown_id() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


def _oracle(
    p: Probe,
    call: Callable[[str], Any],
    other: str,
    unknown: str | None = None,
    real_id: str | None = None,
) -> Check:
    """A container that is not the caller's and one that does not exist look the same: same
    status (404), same message but for the reference sent, no id the caller did not send."""
    unknown = unknown or _unknown_id()
    a, b = outcome(lambda: call(other)), outcome(lambda: call(unknown))

    def shape(o: dict[str, Any], ref: str) -> str:
        return str(o["message"]).replace(ref, "<ref>")

    real = real_id or other
    leak = real[:12] in shape(a, other)
    same = a["status"] == b["status"] == 404 and shape(a, other) == shape(b, unknown)
    return Check(same and not leak, f"other: {a}  unknown: {b}")


def _oracles() -> dict[str, Callable[[Probe], Any]]:
    def gw(p: Probe) -> str:
        return str(p.ctx["gateway"])

    return {
        "oracle: inspect": lambda p: _oracle(p, p.api.inspect_container, gw(p)),
        "oracle: kill": lambda p: _oracle(p, p.api.kill, gw(p)),
        "oracle: remove": lambda p: _oracle(p, p.api.remove_container, gw(p)),
        "oracle: logs": lambda p: _oracle(p, p.api.logs, gw(p)),
        "oracle: start": lambda p: _oracle(p, p.api.start, gw(p)),
        "oracle: wait": lambda p: _oracle(p, lambda c: p.api.wait(c, timeout=5), gw(p)),
        "oracle: top": lambda p: _oracle(p, p.api.top, gw(p)),
        "oracle: exec create": lambda p: _oracle(p, lambda c: p.api.exec_create(c, ["id"]), gw(p)),
        "oracle: archive": lambda p: _oracle(p, lambda c: p.api.get_archive(c, "/etc"), gw(p)),
        "oracle: attach": lambda p: _oracle(
            p, lambda c: p.api.attach_socket(c, params={"stdout": 1, "stream": 1}), gw(p)
        ),
        "oracle: by name": lambda p: _oracle(
            p, p.api.inspect_container, p.ctx["gateway_name"], f"no-such-{p.run}", gw(p)
        ),
        "oracle: by id prefix": lambda p: _oracle(
            p, p.api.inspect_container, gw(p)[:16], _unknown_id()[:16], gw(p)
        ),
        "oracle: exec inspect of another container's exec": lambda p: _oracle(
            p, p.api.exec_inspect, p.ctx["gateway_exec"]
        ),
        "oracle: exec start of another container's exec": lambda p: _oracle(
            p, lambda e: p.api.exec_start(e, detach=True), p.ctx["gateway_exec"]
        ),
        "oracle: another instance's child that names me as parent": lambda p: _oracle(
            p, p.api.inspect_container, p.ctx["foreign_child"]
        ),
    }


def _no_id(p: Probe, fn: Callable[[], Any]) -> Check:
    got = outcome(fn)
    gw = str(p.ctx["gateway"])
    leak = gw[:12] in str(got["message"])
    return Check(got["status"] in range(400, 500) and not leak, str(got))


def _no_images(p: Probe, fn: Callable[[], Any]) -> Check:
    got = outcome(fn)
    secret = str(p.ctx["secret_image"]).split(":")[0]
    return Check(got["status"] in range(400, 500) and secret not in str(got["message"]), str(got))


def _rename_onto(p: Probe) -> Check:
    c = p.create()
    p.setup_ids.add(c.id)
    return _no_id(p, lambda: p.api.rename(c.id, p.ctx["gateway_name"]))


def _own_only(rows: list[dict[str, Any]], p: Probe) -> Check:
    bad = [
        r["Id"][:12]
        for r in rows
        if (r.get("Labels") or {}).get("swarmless.parent") != p.ctx["me"]
        or (r.get("Labels") or {}).get("swarmless.gateway") != p.ctx["instance"]
    ]
    return Check(not bad, f"{len(rows)} listed, not mine: {bad}")


def _events_own_only(p: Probe) -> Check:
    since = int(p.ctx["t0"])
    until = int(time.time()) + 1
    events = list(p.api.events(since=since, until=until, decode=True))
    others = {p.ctx[k] for k in ("gateway", "sibling", "worker", "foreign_child", "victim", "db")}
    bad = [
        e
        for e in events
        if (e.get("Actor") or {}).get("ID") in others
        or e.get("Type") != "container"
        or ((e.get("Actor") or {}).get("Attributes") or {}).get("swarmless.parent") != p.ctx["me"]
    ]
    return Check(not bad, f"{len(events)} events, not mine: {bad[:3]}")


def _image_oracle(p: Probe) -> Check:
    a = outcome(lambda: p.api.inspect_image(p.ctx["other_image"]))
    b = outcome(lambda: p.api.inspect_image(f"no-such-image-{p.run}:latest"))
    return Check(a["status"] == b["status"] and a["status"] in range(400, 500), f"{a} / {b}")


table(
    "leaks",
    "ok",
    {
        **_oracles(),
        "a name conflict does not reveal the other container's id": lambda p: _no_id(
            p, lambda: p.create(name=p.ctx["gateway_name"])
        ),
        "a rename onto another's name does not reveal its id": _rename_onto,
        "a refused create does not list other functions' images": lambda p: _no_images(
            p, lambda: p.create(p.ctx["other_image"])
        ),
        "a refused pull does not list other functions' images": lambda p: _no_images(
            p, lambda: p.api.pull("alpine", tag="3")
        ),
        "a refused image inspect does not list other functions' images": lambda p: _no_images(
            p, lambda: p.api.inspect_image(p.ctx["other_image"])
        ),
        "image inspect: off the list and absent answer alike": _image_oracle,
        "container list shows only own children": lambda p: _own_only(
            p.api.containers(all=True), p
        ),
        "a list filtered by kind=child shows only own children": lambda p: _own_only(
            p.api.containers(all=True, filters={"label": "swarmless.kind=child"}), p
        ),
        "a list filtered by another container's id is empty": lambda p: _own_only(
            p.api.containers(all=True, filters={"id": p.ctx["gateway"]}), p
        ),
        "a list filtered by another parent shows only own children": lambda p: _own_only(
            p.api.containers(all=True, filters={"label": f"swarmless.parent={p.ctx['worker']}"}),
            p,
        ),
        "a list with a raw label filter object shows only own children": lambda p: _own_only(
            json.loads(
                p.api._result(
                    p.api._get(
                        p.api._url("/containers/json"),
                        params={
                            "all": "1",
                            "filters": json.dumps({"label": {"swarmless.kind=child": True}}),
                        },
                    )
                )
            ),
            p,
        ),
        "events show only own children": _events_own_only,
    },
)


# -- another instance's containers -------------------------------------------------------------


def _not_listed(p: Probe, *ids: str) -> Check:
    listed = {c["Id"] for c in p.api.containers(all=True)}
    return Check(not listed & set(ids), f"listed: {sorted(listed & set(ids))}")


table(
    "instances",
    "refused",
    {
        "inspect another instance's child that names me as parent": lambda p: (
            p.api.inspect_container(p.ctx["foreign_child"])
        ),
        "exec into another instance's child that names me as parent": lambda p: p.api.exec_create(
            p.ctx["foreign_child"], ["id"]
        ),
        "kill another instance's child that names me as parent": lambda p: p.api.kill(
            p.ctx["foreign_child"]
        ),
        "logs of another instance's child that names me as parent": lambda p: p.api.logs(
            p.ctx["foreign_child"]
        ),
        "start another instance's exited child that names me as parent": lambda p: p.api.start(
            p.ctx["foreign_exited"]
        ),
        "remove another instance's exited child that names me as parent": lambda p: (
            p.api.remove_container(p.ctx["foreign_exited"], force=True)
        ),
        "kill a container of another instance": lambda p: p.api.kill(p.ctx["victim"]),
        "kill the database container": lambda p: p.api.kill(p.ctx["db"]),
    },
)
table(
    "instances",
    "ok",
    {
        "another instance's child that names me is not in my list": lambda p: _not_listed(
            p, p.ctx["foreign_child"], p.ctx["foreign_exited"]
        ),
    },
)


# -- classic escapes ----------------------------------------------------------------------------


def _vol_mount(p: Probe) -> Any:
    m = docker.types.Mount(
        "/v",
        p.evidence(),
        type="volume",
        driver_config=docker.types.DriverConfig(
            "local", {"type": "none", "o": "bind", "device": "/"}
        ),
    )
    return p.create(mounts=[m])


def _build(p: Probe) -> Any:
    import io

    return p.client.images.build(
        fileobj=io.BytesIO(b"FROM swarmless/busybox\n"), tag=f"{p.evidence()}:built"
    )


def _old_start(p: Probe, version: str) -> Resp:
    c = p.create(cmd=["true"])
    p.setup_ids.add(c.id)
    return p.raw(
        "POST",
        f"{'/' + version if version else ''}/containers/{c.id}/start",
        b'{"Privileged": true, "Binds": ["/:/host"]}',
        ("Content-Type: application/json",),
    )


def _put_archive(p: Probe) -> Any:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("pwned")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"x\n"))
    return p.api.put_archive(p.ctx["gateway"], "/tmp", buf.getvalue())


def _json_raw(p: Probe, host_config: str) -> Any:
    """A create body written by hand: ``host_config`` is the HostConfig's JSON text."""
    text = f'{{"Image": "{BUSYBOX}", "Labels": {p.labels_json()}, "HostConfig": {host_config}}}'
    return p.post_text(text)


table(
    "escapes",
    "refused",
    {
        "privileged": lambda p: p.create(privileged=True),
        "cap_add SYS_ADMIN": lambda p: p.create(cap_add=["SYS_ADMIN"]),
        "cap_add ALL": lambda p: p.create(cap_add=["ALL"]),
        "Capabilities field": lambda p: p.host_config(Capabilities=["CAP_SYS_ADMIN"]),
        "bind-mount /": lambda p: p.create(volumes={"/": {"bind": "/host", "mode": "rw"}}),
        "bind-mount the engine socket": lambda p: p.create(
            volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}}
        ),
        "bind-mount /etc read-only": lambda p: p.create(
            volumes={"/etc": {"bind": "/h", "mode": "ro"}}
        ),
        "bind mount through Mounts": lambda p: p.create(
            mounts=[docker.types.Mount("/host", "/", type="bind")]
        ),
        "bind mount through Mounts, read-only": lambda p: p.create(
            mounts=[docker.types.Mount("/host", "/", type="bind", read_only=True)]
        ),
        "a named volume mount": lambda p: p.create(
            mounts=[docker.types.Mount("/v", p.evidence(), type="volume")]
        ),
        "a volume with driver options": lambda p: p.client.volumes.create(
            p.evidence(), driver_opts={"type": "none", "o": "bind", "device": "/"}
        ),
        "a volume mount with driver options": _vol_mount,
        "an anonymous volume (Volumes)": lambda p: p.post_create({"Volumes": {"/v": {}}}),
        "a volume driver": lambda p: p.host_config(VolumeDriver="local"),
        "host network": lambda p: p.create(network_mode="host"),
        "host PID": lambda p: p.create(pid_mode="host"),
        "host IPC": lambda p: p.create(ipc_mode="host"),
        "host UTS": lambda p: p.create(uts_mode="host"),
        "host user namespace": lambda p: p.create(userns_mode="host"),
        "host cgroup namespace": lambda p: p.host_config(CgroupnsMode="host"),
        "a device": lambda p: p.create(devices=["/dev/kmsg:/dev/kmsg:rwm"]),
        "a device cgroup rule": lambda p: p.host_config(DeviceCgroupRules=["a *:* rwm"]),
        "all GPUs": lambda p: p.create(
            device_requests=[docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
        ),
        "security-opt apparmor=unconfined": lambda p: p.create(
            security_opt=["apparmor=unconfined"]
        ),
        "security-opt seccomp=unconfined": lambda p: p.create(security_opt=["seccomp=unconfined"]),
        "security-opt label=disable": lambda p: p.create(security_opt=["label=disable"]),
        "security-opt systempaths=unconfined": lambda p: p.create(
            security_opt=["systempaths=unconfined"]
        ),
        "sysctls": lambda p: p.create(sysctls={"net.ipv4.ip_forward": "1"}),
        "publish a port on the host": lambda p: p.create(ports={"80/tcp": 18099}),
        "publish all ports": lambda p: p.create(publish_all_ports=True),
        "restart always": lambda p: p.create(restart_policy={"Name": "always"}),
        "restart on-failure": lambda p: p.create(
            restart_policy={"Name": "on-failure", "MaximumRetryCount": 5}
        ),
        "volumes_from the gateway's container": lambda p: p.create(volumes_from=[p.ctx["gateway"]]),
        "join the gateway's network namespace": lambda p: p.create(
            network_mode=f"container:{p.ctx['gateway']}"
        ),
        "join the gateway's PID namespace": lambda p: p.create(
            pid_mode=f"container:{p.ctx['gateway']}"
        ),
        "join the gateway's IPC namespace": lambda p: p.create(
            ipc_mode=f"container:{p.ctx['gateway']}"
        ),
        "the default bridge network": lambda p: p.create(network_mode="bridge"),
        "links to the gateway": lambda p: p.create(links={p.ctx["gateway_name"]: "gw"}),
        "forge the parent label": lambda p: p.create(labels={"swarmless.parent": p.ctx["worker"]}),
        "forge the gateway label": lambda p: p.create(labels={"swarmless.gateway": "other"}),
        "a syslog log driver": lambda p: p.host_config(
            LogConfig={"Type": "syslog", "Config": {"syslog-address": "tcp://10.0.0.1:514"}}
        ),
        "json-file log options": lambda p: p.host_config(
            LogConfig={"Type": "json-file", "Config": {"max-size": "1t"}}
        ),
        "another runtime": lambda p: p.host_config(Runtime="runsc"),
        "a cgroup parent": lambda p: p.host_config(CgroupParent="/"),
        "unmask /proc (MaskedPaths [])": lambda p: p.host_config(MaskedPaths=[]),
        "writable /proc/sys (ReadonlyPaths [])": lambda p: p.host_config(ReadonlyPaths=[]),
        "an image not on the list": lambda p: p.create(p.ctx["other_image"]),
        "pull an image not on the list": lambda p: p.client.images.pull("alpine", tag="latest"),
        "import an image (images/create fromSrc)": lambda p: p.raw(
            "POST", f"{API}/images/create?fromSrc=-&repo={p.evidence()}", b"x"
        ),
        "load an image": lambda p: p.raw("POST", f"{API}/images/load", b"not a tar"),
        "tag an image": lambda p: p.api.tag(BUSYBOX, p.evidence(), "tagged"),
        "remove an image": lambda p: p.api.remove_image(p.ctx["forged"]),
        "push an image": lambda p: p.api.push(p.ctx["forged"]),
        "save an image": lambda p: p.raw("GET", f"{API}/images/get?names={BUSYBOX}"),
        "build an image": _build,
        "commit a container to an image": lambda p: p.api.commit(
            p.ctx["gateway"], repository=p.evidence()
        ),
        "create a service": lambda p: p.client.services.create(
            BUSYBOX, ["true"], name=p.evidence()
        ),
        "swarm init": lambda p: p.api.init_swarm(),
        "swarm join": lambda p: p.api.join_swarm(["10.0.0.1:2377"], "SWMTKN-1-x"),
        "create a network": lambda p: p.client.networks.create(p.evidence()),
        "connect the gateway to a network": lambda p: p.api.connect_container_to_network(
            p.ctx["gateway"], p.ctx["network"]
        ),
        "connect a child to the default bridge": lambda p: p.api.connect_container_to_network(
            p.kid, "bridge"
        ),
        "disconnect the gateway from its network": lambda p: (
            p.api.disconnect_container_from_network(p.ctx["gateway"], p.ctx["network"])
        ),
        "prune containers": lambda p: p.client.containers.prune(),
        "prune images": lambda p: p.client.images.prune(),
        "prune volumes": lambda p: p.client.volumes.prune(),
        "prune networks": lambda p: p.client.networks.prune(),
        "prune the build cache": lambda p: p.raw("POST", f"{API}/build/prune"),
        "raise a child's limits (update)": lambda p: p.api.update_container(
            p.kid, mem_limit=1024**4
        ),
        "list every image": lambda p: p.client.images.list(),
        "list every volume": lambda p: p.client.volumes.list(),
        "list every network": lambda p: p.client.networks.list(),
        "engine info": lambda p: p.client.info(),
        "disk usage (system df)": lambda p: p.client.df(),
        "plugins": lambda p: p.raw("GET", f"{API}/plugins"),
        "install a plugin": lambda p: p.raw("POST", f"{API}/plugins/pull?remote=x/y", b"[]"),
        "create a secret": lambda p: p.raw(
            "POST", f"{API}/secrets/create", b'{"Name": "s", "Data": "eA=="}'
        ),
        "create a config": lambda p: p.raw(
            "POST", f"{API}/configs/create", b'{"Name": "c", "Data": "eA=="}'
        ),
        # GET /nodes itself is answered (a few fields of each node: docs/security.md).
        "inspect a node": lambda p: p.raw("GET", f"{API}/nodes/self"),
        "update a node": lambda p: p.raw("POST", f"{API}/nodes/self/update?version=1", b"{}"),
        "list tasks": lambda p: p.raw("GET", f"{API}/tasks"),
        "auth against a registry": lambda p: p.raw(
            "POST", f"{API}/auth", b'{"username": "u", "password": "p"}'
        ),
        "distribution inspect": lambda p: p.raw("GET", f"{API}/distribution/busybox/json"),
        "a build session": lambda p: p.raw("POST", f"{API}/session"),
        "inspect the gateway's container": lambda p: p.client.containers.get(p.ctx["gateway"]),
        "kill the gateway's container": lambda p: p.api.kill(p.ctx["gateway"]),
        "restart the gateway's container": lambda p: p.api.restart(p.ctx["gateway"], timeout=0),
        "pause the gateway's container": lambda p: p.api.pause(p.ctx["gateway"]),
        "rename the gateway's container": lambda p: p.api.rename(p.ctx["gateway"], p.evidence()),
        "resize the gateway's tty": lambda p: p.api.resize(p.ctx["gateway"], 10, 10),
        "export the gateway's container": lambda p: p.raw(
            "GET", f"{API}/containers/{p.ctx['gateway']}/export"
        ),
        "stats of the gateway's container": lambda p: p.api.stats(p.ctx["gateway"], stream=False),
        "changes of the gateway's container": lambda p: p.api.diff(p.ctx["gateway"]),
        "copy a file into the gateway's container": _put_archive,
        "exec into the gateway's container": lambda p: p.api.exec_create(p.ctx["gateway"], ["id"]),
        "exec into the neighbour's worker": lambda p: p.api.exec_create(p.ctx["worker"], ["id"]),
        "exec into the neighbour's child": lambda p: p.api.exec_create(p.ctx["sibling"], ["id"]),
        "start the gateway's exec": lambda p: p.api.exec_start(p.ctx["gateway_exec"]),
        "resize the gateway's exec": lambda p: p.api.exec_resize(
            p.ctx["gateway_exec"], height=10, width=10
        ),
        "stop the neighbour's worker": lambda p: p.api.stop(p.ctx["worker"], timeout=0),
        "kill the neighbour's child": lambda p: p.api.kill(p.ctx["sibling"]),
        "remove the neighbour's child": lambda p: p.api.remove_container(
            p.ctx["sibling"], force=True
        ),
        "read the neighbour's child's logs": lambda p: p.api.logs(p.ctx["sibling"]),
        "attach to the neighbour's child": lambda p: p.api.attach_socket(
            p.ctx["sibling"], params={"stdin": 1, "stream": 1}
        ),
        "a privileged exec into an own child": lambda p: p.api.exec_create(
            p.kid, ["id"], privileged=True
        ),
        "duplicate JSON keys": lambda p: _json_raw(p, '{"Privileged": false, "Privileged": true}'),
        "a JSON key in another case": lambda p: _json_raw(p, '{"privileged": true}'),
        "a key that folds to Binds (long s)": lambda p: _json_raw(p, '{"Bind\\u017f": ["/:/h"]}'),
        "a key that folds to Sysctls (long s)": lambda p: _json_raw(
            p, '{"\\u017fysctls": {"kernel.shmmax": "1"}}'
        ),
        "a key that folds to Links (Kelvin sign)": lambda p: _json_raw(
            p, '{"Lin\\u212as": ["x:y"]}'
        ),
        "a key that folds to Binds, raw UTF-8": lambda p: _json_raw(p, '{"Bind\u017f": ["/:/h"]}'),
        "a privileged body behind a UTF-8 BOM": lambda p: p.post_text(
            "\ufeff" + json.dumps(p.body({"HostConfig": {"Privileged": True}}))
        ),
        "a privileged body in UTF-16": lambda p: p.raw(
            "POST",
            f"{API}/containers/create",
            json.dumps(p.body({"HostConfig": {"Privileged": True}})).encode("utf-16"),
            ("Content-Type: application/json",),
        ),
        "Privileged at the top level": lambda p: p.post_create({"Privileged": True}),
        "Binds at the top level": lambda p: p.post_create({"Binds": ["/:/host"]}),
        "a HostConfig 2000 levels deep": lambda p: p.post_text(
            f'{{"Image": "{BUSYBOX}", "HostConfig": ' + '{"a": ' * 2000 + "1" + "}" * 2001
        ),
        "a chunked privileged body": lambda p: p.api._result(
            p.api._post(
                p.api._url("/containers/create"),
                data=iter(
                    [
                        b'{"Image": "swarmless/busybox", ',
                        b'"Labels": ' + p.labels_json().encode() + b", ",
                        b'"HostConfig": {"Privileged": true}}',
                    ]
                ),
                headers={"Content-Type": "application/json"},
            ),
            json=True,
        ),
        "old API v1.23: HostConfig at start": lambda p: _old_start(p, "v1.23"),
        "old API v1.12: HostConfig at start": lambda p: _old_start(p, "v1.12"),
        "unversioned start with a HostConfig": lambda p: _old_start(p, ""),
        "old API v1.18 create with top-level host fields": lambda p: p.raw(
            "POST",
            "/v1.18/containers/create",
            json.dumps(p.body({"Privileged": True, "Binds": ["/:/h"]})).encode(),
            ("Content-Type: application/json",),
        ),
        "a version with a third part (v1.41.0)": lambda p: p.raw(
            "GET", f"/v1.41.0/containers/{p.ctx['gateway']}/json"
        ),
        "path trick /v1.41/../containers": lambda p: p.raw(
            "GET", f"/v1.41/../containers/{p.ctx['gateway']}/json"
        ),
        "path trick: a child, then ..": lambda p: p.raw(
            "GET", f"{API}/containers/{p.kid}/../{p.ctx['gateway']}/json"
        ),
        "URL-encoded slashes": lambda p: p.raw(
            "POST", f"{API}/containers%2F{p.ctx['gateway']}%2Fkill"
        ),
        "encoded dot segments": lambda p: p.raw(
            "GET", f"{API}/containers/%2e%2e/{p.ctx['gateway']}/json"
        ),
        "a double slash": lambda p: p.raw("GET", f"{API}//containers/{p.ctx['gateway']}/json"),
        "a backslash": lambda p: p.raw("GET", f"{API}/containers\\{p.ctx['gateway']}/json"),
        "a semicolon parameter": lambda p: p.raw(
            "GET", f"{API}/containers/{p.ctx['gateway']};x/json"
        ),
        "an encoded NUL": lambda p: p.raw("GET", f"{API}/containers/{p.ctx['gateway']}%00/json"),
        "upper-case Containers": lambda p: p.raw(
            "GET", f"{API}/Containers/{p.ctx['gateway']}/json"
        ),
        "an encoded question mark on create": lambda p: p.raw(
            "POST",
            f"{API}/containers/create%3Fname=x",
            json.dumps(p.body({"HostConfig": {"Privileged": True}})).encode(),
            ("Content-Type: application/json",),
        ),
    },
)


# -- the gateway's tokens ----------------------------------------------------------------------


def _chain(p: Probe) -> Resp:
    """The attack of the issue: mount the host, read the admin token, deploy as admin."""
    c = p.create(cmd=["cat", f"/host{p.ctx['data_dir']}/token"], volumes={"/": {"bind": "/host"}})
    c.start()
    c.wait(timeout=30)
    token = c.logs(stdout=True, stderr=False).decode().strip()
    body = {"name": f"stolen-{p.run}", "image": BUSYBOX, "docker": "host-socket"}
    return p.gateway("POST", "/system/functions", token, body)


def _token_variant(p: Probe, path: str) -> Resp:
    return p.raw("GET", path + f"{API}/containers/json", token=False)


# -- the runtime API's HELLO (swarmless.runtime.frames: a 9-byte head, type then lengths) ---

_HELLO, _REFUSED = 4, 14


def _frame(kind: int, meta: bytes = b"", body: bytes = b"") -> bytes:
    return struct.pack(">BII", kind, len(meta), len(body)) + meta + body


def _hello(p: Probe, raw: bytes, answer: int | None) -> Check:
    """``raw`` as the first bytes of a connection to the gateway's runtime API: the gateway
    must answer one frame of type ``answer`` (None: nothing at all) and close, and still
    answer a call afterwards."""
    api = urllib.parse.urlsplit(os.environ["SWARMLESS_RUNTIME_API"])
    got = b""
    with socket.create_connection((api.hostname or "", api.port or 80), timeout=20) as s:
        s.sendall(raw)
        while len(got) < 65536:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    want = b"" if answer is None else _frame(answer)
    after = p.gateway("GET", "/healthz", None)
    return Check(
        got == want and after.status == 200,
        f"answered {got[:120]!r} (want {want!r}); /healthz then: {after.status}",
    )


table(
    "tokens",
    "ok",
    {
        "a HELLO with a guessed worker token is refused": lambda p: _hello(
            p, _frame(_HELLO, json.dumps({"token": "x" * 43}).encode()), _REFUSED
        ),
        "a HELLO with the function's caller token is refused": lambda p: _hello(
            p,
            _frame(_HELLO, json.dumps({"token": os.environ.get("SWARMLESS_TOKEN")}).encode()),
            _REFUSED,
        ),
        "a HELLO claiming 4 GiB of meta is closed unanswered": lambda p: _hello(
            p, struct.pack(">BII", _HELLO, 0xFFFFFFFF, 0) + b"{" * 4096, None
        ),
        "a HELLO with a body and HTTP behind it is closed, the HTTP not run": lambda p: _hello(
            p,
            _frame(_HELLO, b'{"token": "x"}', b"x")
            + b"GET /system/functions HTTP/1.1\r\nHost: gw\r\n\r\n",
            None,
        ),
        "a HELLO whose meta is not an object is closed unanswered": lambda p: _hello(
            p, _frame(_HELLO, b'["token"]'), None
        ),
    },
)

table(
    "tokens",
    "refused",
    {
        "bind the gateway's data dir to read its admin token": lambda p: p.create(
            volumes={p.ctx["data_dir"]: {"bind": "/d", "mode": "ro"}}
        ),
        "the data dir through a bind mount": lambda p: p.create(
            mounts=[docker.types.Mount("/d", p.ctx["data_dir"], type="bind", read_only=True)]
        ),
        "copy the token out of the gateway's container": lambda p: p.api.get_archive(
            p.ctx["gateway"], "/etc/hostname"
        ),
        "mount /, read the admin token, deploy a function": _chain,
        "deploy a function with the function's own token": lambda p: p.gateway(
            "POST",
            "/system/functions",
            os.environ.get("SWARMLESS_TOKEN"),
            {"name": f"stolen2-{p.run}", "image": BUSYBOX},
        ),
        "deploy a function with the worker token": lambda p: p.gateway(
            "POST",
            "/system/functions",
            os.environ.get("SWARMLESS_WORKER_TOKEN"),
            {"name": f"stolen3-{p.run}", "image": BUSYBOX},
        ),
        "list the functions with the function's own token": lambda p: p.gateway(
            "GET", "/system/functions", os.environ.get("SWARMLESS_TOKEN")
        ),
        "no token in the path": lambda p: _token_variant(p, ""),
        "a guessed token": lambda p: _token_variant(p, "/_swarmless/" + "x" * 32),
        "the token in another case": lambda p: _token_variant(
            p, "/_swarmless/" + p.token_path.rsplit("/", 1)[-1].swapcase()
        ),
        "the token with a suffix": lambda p: _token_variant(p, p.token_path + "x"),
        "the token, then ..": lambda p: p.raw("GET", f"/../{API}/containers/json"),
        "the token in the query string": lambda p: p.raw(
            "GET",
            f"{API}/containers/json?token={p.token_path.rsplit('/', 1)[-1]}",
            token=False,
        ),
        "the parent's DOCKER_HOST used from a child": lambda p: _token_from_child(p),
    },
)


def _token_from_child(p: Probe) -> Resp:
    script = (
        "import docker, sys; c = docker.DockerClient(base_url=sys.argv[1], version='1.41')\n"
        "try:\n    c.containers.list(all=True); print(200)\n"
        "except docker.errors.APIError as e:\n    print(e.status_code, e.explanation)\n"
    )
    c = p.create(p.ctx["self_image"], ["python3", "-c", script, os.environ["DOCKER_HOST"]])
    p.setup_ids.add(c.id)
    c.start()
    c.wait(timeout=60)
    out = c.logs(stdout=True, stderr=True).decode().strip()
    code, _, message = out.partition(" ")
    return Resp(int(code) if code.isdigit() else None, message or out)


# -- malformed HTTP ---------------------------------------------------------------------------


def _http(head: list[str] | bytes, body: bytes = b"") -> Callable[[Probe], Resp]:
    """Malformed HTTP: ``TOKEN`` becomes the token path, ``SMUGGLE`` a privileged create
    for the engine (what a misread body would let through)."""

    def run(p: Probe) -> Resp:
        data = head if isinstance(head, bytes) else ("\r\n".join(head) + "\r\n\r\n").encode()
        data = (data + body).replace(b"TOKEN", p.token_path.encode())
        return p.exchange(data.replace(b"SMUGGLE", p.engine_create()), idle=3, total=8)

    return run


def _create_head(*extra: str) -> list[str]:
    return [
        f"POST TOKEN{API}/containers/create HTTP/1.1",
        "Host: docker",
        "Content-Type: application/json",
        *extra,
    ]


table(
    "http",
    "http",
    {
        "Content-Length of an Arabic-Indic digit (U+0663)": _http(
            _create_head("Content-Length: \u0663"), b"{}\nSMUGGLE"
        ),
        "Content-Length of a superscript two (latin-1 0xB2)": _http(
            f"POST TOKEN{API}/containers/create HTTP/1.1\r\nHost: docker\r\n".encode()
            + b"Content-Length: \xb2\r\n\r\n",
            b"{}SMUGGLE",
        ),
        "Content-Length of a fullwidth digit (U+FF13)": _http(
            _create_head("Content-Length: \uff13"), b"{}\nSMUGGLE"
        ),
        "Content-Length and chunked together": _http(
            _create_head("Transfer-Encoding: chunked", "Content-Length: 5"),
            b"0\r\n\r\nSMUGGLE",
        ),
        "two different Content-Lengths": _http(
            _create_head("Content-Length: 2", "Content-Length: 40"), b"{}SMUGGLE"
        ),
        "a negative Content-Length": _http(_create_head("Content-Length: -1"), b"{}SMUGGLE"),
        "a Content-Length with a plus sign": _http(
            _create_head("Content-Length: +2"), b"{}SMUGGLE"
        ),
        "a Content-Length in hex": _http(_create_head("Content-Length: 0x2"), b"{}SMUGGLE"),
        "a Content-Length with trailing junk": _http(
            _create_head("Content-Length: 2x"), b"{}SMUGGLE"
        ),
        "a Content-Length of 30 digits": _http(
            _create_head("Content-Length: " + "9" * 30), b"{}SMUGGLE"
        ),
        "a body announced over the limit, never sent": _http(
            _create_head("Content-Length: 1000000000")
        ),
        "Transfer-Encoding: chunked, identity": _http(
            _create_head("Transfer-Encoding: chunked, identity"), b"0\r\n\r\nSMUGGLE"
        ),
        "Transfer-Encoding: xchunked": _http(
            _create_head("Transfer-Encoding: xchunked"), b"0\r\n\r\nSMUGGLE"
        ),
        "Transfer-Encoding twice": _http(
            _create_head("Transfer-Encoding: chunked", "Transfer-Encoding: chunked"),
            b"0\r\n\r\nSMUGGLE",
        ),
        "Transfer-Encoding after a vertical tab": _http(
            _create_head("Transfer-Encoding:\x0bchunked", "Content-Length: 5"),
            b"0\r\n\r\nSMUGGLE",
        ),
        "a chunk size with 0x": _http(
            _create_head("Transfer-Encoding: chunked"), b"0x2\r\n{}\r\n0\r\n\r\nSMUGGLE"
        ),
        "a negative chunk size": _http(
            _create_head("Transfer-Encoding: chunked"), b"-2\r\n{}\r\n0\r\n\r\nSMUGGLE"
        ),
        "a chunk size of 30 hex digits": _http(
            _create_head("Transfer-Encoding: chunked"), b"f" * 30 + b"\r\n{}\r\nSMUGGLE"
        ),
        "a chunk without its CRLF": _http(
            _create_head("Transfer-Encoding: chunked"), b"2\r\n{}XX0\r\n\r\nSMUGGLE"
        ),
        "a chunk size followed by junk": _http(
            _create_head("Transfer-Encoding: chunked"), b"2 z\r\n{}\r\n0\r\n\r\nSMUGGLE"
        ),
        "an obs-fold header continuation": _http(
            _create_head("Content-Length: 2", " 0"), b"{}SMUGGLE"
        ),
        "a NUL in a header value": _http(_create_head("X-A: a\x00b", "Content-Length: 2"), b"{}"),
        "a NUL in the request target": _http(
            [f"GET TOKEN{API}/containers/json\x00/../x HTTP/1.1", "Host: docker"]
        ),
        "a bare CR in a header value": _http(
            _create_head("X-A: a\rContent-Length: 900", "Content-Length: 2"), b"{}SMUGGLE"
        ),
        "bare LF line endings": _http(
            f"POST TOKEN{API}/containers/create HTTP/1.1\nHost: docker\n".encode()
            + b"Content-Length: 2\n\n",
            b"{}SMUGGLE",
        ),
        "a space before the colon": _http(
            _create_head("Content-Length : 2", "Transfer-Encoding : chunked"), b"{}SMUGGLE"
        ),
        "a header line without a colon": _http(_create_head("Content-Length 2"), b"{}SMUGGLE"),
        "an empty header name": _http(_create_head(": x", "Content-Length: 2"), b"{}"),
        "a header name with a space": _http(_create_head("Content Length: 2"), b"{}SMUGGLE"),
        "a 70 KB header": _http(_create_head("X-Big: " + "a" * 70_000, "Content-Length: 2"), b"{}"),
        "10,000 header lines": _http(
            _create_head(*[f"X-{i}: a" for i in range(10_000)], "Content-Length: 2"), b"{}"
        ),
        "an absolute-form request target": _http(
            [
                f"POST http://dockerTOKEN{API}/containers/create HTTP/1.1",
                "Host: docker",
                "Content-Length: 2",
            ],
            b"{}SMUGGLE",
        ),
        "an HTTP/2 preface": _http(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"SMUGGLE"),
        "an HTTP/0.9 request line": _http(b"GET TOKEN/_ping\r\n\r\n"),
        "a lower-case method": _http([f"get TOKEN{API}/containers/json HTTP/1.1", "Host: docker"]),
        "the CONNECT method": _http(["CONNECT /var/run/docker.sock HTTP/1.1", "Host: docker"]),
        "two spaces in the request line": _http(
            [f"GET  TOKEN{API}/containers/json HTTP/1.1", "Host: docker"]
        ),
        "a fragment in the request target": _http(
            [f"GET TOKEN{API}/containers/json#x HTTP/1.1", "Host: docker"]
        ),
    },
)


# -- phases -------------------------------------------------------------------------------


def race(ctx: dict[str, Any]) -> dict[str, Any]:
    """2 x cap creates at once, raw (one burst of sockets) or through SDK threads."""
    p = Probe(ctx)
    p.slug = "race"
    for cid in p.children():
        p.api.remove_container(cid, force=True)
    n = 2 * int(ctx["cap"])
    if ctx.get("kind") == "sdk":
        codes: list[int | None] = [None] * n
        barrier = threading.Barrier(n)

        def one(i: int) -> None:
            client = docker.from_env(timeout=60)
            try:
                barrier.wait(30)
                client.containers.create(BUSYBOX, ["sleep", "60"], labels=p.mark())
                codes[i] = 201
            except docker.errors.APIError as e:
                codes[i] = e.status_code
            finally:
                client.close()

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
    else:
        body = json.dumps(p.body({"Cmd": ["sleep", "60"]})).encode()
        req = p.request(
            "POST", f"{API}/containers/create", body, ("Content-Type: application/json",)
        )
        conns = [p.connect() for _ in range(n)]
        for c in conns:
            c.send(req)
        for c in conns:
            c.read(until=_complete, idle=20, total=60)
            c.close()
        codes = [c.resp().status for c in conns]
    return {"codes": codes, "listed": len(p.children())}


def cli_repeat(ctx: dict[str, Any]) -> dict[str, Any]:
    p = Probe(ctx)
    got = _cli_echo(p)
    return {"ok": got.ok, "detail": got.detail}


def handle(event: dict[str, Any], context: Any) -> Any:
    """The warm handler of the attacker function: one phase per call."""
    ctx = event.get("json") or {}
    phase = ctx.get("phase")
    if phase == "whoami":
        return {"hostname": os.environ["HOSTNAME"]}
    if phase == "race":
        return race(ctx)
    if phase == "cli-repeat":
        return cli_repeat(ctx)
    if phase == "cleanup":
        p = Probe(ctx)
        for cid in p.children():
            with contextlib.suppress(docker.errors.APIError):
                p.api.remove_container(cid, force=True)
        return {"left": len(p.children())}
    if phase == "battery":
        return Probe(ctx).battery(ctx.get("names"))
    raise ValueError(f"unknown phase {phase!r}")


def make_child(event: dict[str, Any], context: Any) -> Any:
    """The neighbour function: starts one child and keeps it."""
    c = docker.from_env()
    kid = c.containers.run(BUSYBOX, ["sleep", "600"], detach=True)
    return {"child": kid.id, "me": os.environ["HOSTNAME"]}
