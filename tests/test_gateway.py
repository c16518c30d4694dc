"""The gateway end to end: real HTTP on loopback, real containers on the real engine."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import httpx
import pytest

import swarmless
from swarmless.config import Settings
from swarmless.sdk.gateway import GatewayClient
from tests.conftest import BUSYBOX, PYTHON, handler_image
from tests.gateway_harness import RunningGateway

HANDLERS = """
import os, sys, time, json

def handle(event, context):
    print("log line for", context.call_id)
    print("to stderr", file=sys.stderr)
    body = event["body"].decode()
    return {"echo": body, "call": context.call_id, "host": os.uname().nodename,
            "method": event["method"], "path": event["path"], "query": event["query"],
            "version": os.environ.get("VERSION", "1")}

def slow(event, context):
    time.sleep(float(event["body"] or b"1"))
    return {"slept": event["body"].decode(), "host": os.uname().nodename}

def fail(event, context):
    raise RuntimeError("boom: " + event["body"].decode())

def teapot(event, context):
    return {"statusCode": 418, "headers": {"X-Tea": "earl grey"}, "body": "short and stout"}
"""

CGI_SH = """#!/bin/sh
body=$(cat)
printf 'Content-Type: text/plain\\r\\nStatus: 201 Created\\r\\nX-Path: %s\\r\\n\\r\\n' "$PATH_INFO"
echo "method=$REQUEST_METHOD query=$QUERY_STRING body=$body gi=$GATEWAY_INTERFACE"
echo "script=$SCRIPT_NAME agent=$HTTP_USER_AGENT call=$SWARMLESS_CALL_ID"
"""

WSGI_CGI = """
from wsgiref.handlers import CGIHandler

def app(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length).decode()
    if environ["PATH_INFO"] == "/missing":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such page"]
    start_response("200 OK", [("Content-Type", "text/html"), ("X-Wsgi", "yes")])
    parts = [environ["REQUEST_METHOD"], environ["PATH_INFO"], environ["QUERY_STRING"], body]
    page = "<p>" + " ".join(parts) + "</p>"
    return [page.encode()]

CGIHandler().run(app)
"""


@pytest.fixture(scope="module")
def images(build_image: Callable[..., str]) -> dict[str, str]:
    return {
        "warm": handler_image(build_image, "gw-warm", HANDLERS),
        "cgi-sh": build_image(
            "gw-cgi-sh", f"FROM {BUSYBOX}\nCOPY cgi.sh /cgi.sh\n", {"cgi.sh": CGI_SH}
        ),
        "wsgi-cgi": build_image(
            "gw-wsgi-cgi", f"FROM {PYTHON}\nCOPY app.py /app.py\n", {"app.py": WSGI_CGI}
        ),
    }


@pytest.fixture(scope="module")
def gw(
    engine: docker.DockerClient, labels: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    g = RunningGateway(tmp_path_factory.mktemp("gw"), labels).start()
    yield g
    g.stop(engine)
    assert g.containers(engine) == []


def deploy(gw: RunningGateway, **spec: object) -> dict[str, object]:
    with gw.http() as http:
        r = http.post("/system/functions", json=spec)
        assert r.status_code in (200, 201), r.text
        return dict(r.json())


# -- modes ------------------------------------------------------------------------------


def test_oneshot_stdin_and_args(gw: RunningGateway, images: dict[str, str]) -> None:
    deploy(gw, name="upper", image=BUSYBOX, mode="oneshot", command=["tr", "a-z", "A-Z"])
    with gw.http(token=None) as http:
        r = http.post("/function/upper", content=b"hello gateway")
        assert r.status_code == 200
        assert r.content == b"HELLO GATEWAY"
        assert r.headers["x-call-id"]
    deploy(gw, name="echoargs", image=BUSYBOX, mode="oneshot", command=["echo"])
    result = gw.client().invoke("echoargs", args=["a b", "c"])
    assert result.body == b"a b c\n"


def test_cgi_shell_script(gw: RunningGateway, images: dict[str, str]) -> None:
    deploy(gw, name="cgish", image=images["cgi-sh"], mode="cgi", command=["/cgi.sh"])
    with gw.http(token=None) as http:
        r = http.post(
            "/function/cgish/some/path?x=1&y=2",
            content=b"payload",
            headers={"User-Agent": "pytest-agent"},
        )
    assert r.status_code == 201
    assert r.headers["content-type"] == "text/plain"
    assert r.headers["x-path"] == "/some/path"
    text = r.text
    assert "method=POST query=x=1&y=2 body=payload gi=CGI/1.1" in text
    assert "script=/function/cgish agent=pytest-agent" in text
    assert f"call={r.headers['x-call-id']}" in text


def test_cgi_python_wsgi(gw: RunningGateway, images: dict[str, str]) -> None:
    deploy(gw, name="wsgicgi", image=images["wsgi-cgi"], mode="cgi", command=["python3", "/app.py"])
    with gw.http(token=None) as http:
        r = http.put("/function/wsgicgi/page?q=1", content=b"data")
        assert r.status_code == 200
        assert r.headers["x-wsgi"] == "yes"
        assert r.text == "<p>PUT /page q=1 data</p>"
        assert http.get("/function/wsgicgi/missing").status_code == 404


def test_warm_function_records_and_logs(gw: RunningGateway, images: dict[str, str]) -> None:
    deploy(gw, name="echo", image=images["warm"], mode="warm", handler="handler:handle")
    with gw.http(token=None) as http:
        r = http.post("/function/echo/sub/path?a=b", content=b"first")
    assert r.status_code == 200, r.text
    body = r.json()
    call_id = r.headers["x-call-id"]
    assert body["echo"] == "first"
    assert body["call"] == call_id
    assert body["path"] == "/sub/path"
    assert body["query"] == "a=b"
    client = gw.client()
    # Records are written behind the answer: wait for them.
    gw.wait_for(lambda: client.invocation(call_id).status == "succeeded", what="record")
    rec = client.invocation(call_id)
    assert rec.function == "echo"
    assert rec.mode == "warm"
    assert rec.cold is True
    assert rec.container
    assert rec.http_status == 200
    assert rec.request_size == len(b"first")
    assert rec.response_size == len(r.content)
    assert rec.queued_at <= (rec.started_at or 0) <= (rec.finished_at or 0)
    gw.wait_for(lambda: client.logs(call_id)["stdout"] != "", what="logs")
    logs = client.logs(call_id)
    assert logs["stdout"] == f"log line for {call_id}\n"
    assert logs["stderr"] == "to stderr\n"
    # A second call is warm.
    r2 = client.invoke("echo", b"second")
    gw.wait_for(lambda: client.invocation(r2.call_id).status == "succeeded", what="record")
    assert client.invocation(r2.call_id).cold is False
    listed = client.invocations(function="echo", limit=10)
    assert {call_id, r2.call_id} <= {x.id for x in listed}


def test_warm_full_http_response(gw: RunningGateway, images: dict[str, str]) -> None:
    deploy(gw, name="teapot", image=images["warm"], mode="warm", handler="handler:teapot")
    with gw.http(token=None) as http:
        r = http.get("/function/teapot")
    assert r.status_code == 418
    assert r.headers["x-tea"] == "earl grey"
    assert r.text == "short and stout"


def test_fifty_concurrent_warm_calls(gw: RunningGateway, images: dict[str, str]) -> None:
    deploy(
        gw,
        name="echo50",
        image=images["warm"],
        mode="warm",
        handler="handler:handle",
        concurrency=4,
        max_containers=4,
    )

    def one(i: int) -> tuple[int, dict[str, object]]:
        with httpx.Client(base_url=gw.url, timeout=60) as http:
            r = http.post("/function/echo50", content=str(i).encode())
            assert r.status_code == 200, r.text
            return i, r.json()

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))
    assert sorted(int(str(b["echo"])) for _, b in results) == list(range(50))
    assert all(str(b["echo"]) == str(i) for i, b in results)
    assert len({b["call"] for _, b in results}) == 50
    assert len({b["host"] for _, b in results}) <= 4


# -- failures ---------------------------------------------------------------------------


def test_unknown_function_is_404(gw: RunningGateway) -> None:
    with gw.http(token=None) as http:
        r = http.post("/function/does-not-exist", content=b"x")
    assert r.status_code == 404
    assert r.json()["error"] == "function_not_found"
    assert "does-not-exist" in r.json()["message"]


def test_invalid_spec_is_422_with_fields(gw: RunningGateway) -> None:
    with gw.http() as http:
        r = http.post(
            "/system/functions",
            json={"name": "Bad Name!", "image": BUSYBOX, "timeout": -3, "mode": "sometimes"},
        )
        assert r.status_code == 422
        fields = r.json()["fields"]
        assert {"name", "timeout", "mode"} <= set(fields)
        assert "-3" in fields["timeout"]
        r = http.post("/system/functions", json={"name": "ghost", "image": "no/such:image"})
        assert r.status_code == 422
        assert "no/such:image" in r.json()["fields"]["image"]


def test_failed_function_is_502_with_record(gw: RunningGateway, images: dict[str, str]) -> None:
    deploy(gw, name="exit3", image=BUSYBOX, command=["sh", "-c", "echo oops >&2; exit 3"])
    with gw.http(token=None) as http:
        r = http.post("/function/exit3")
    assert r.status_code == 502
    call_id = r.headers["x-call-id"]
    assert r.json()["call_id"] == call_id
    assert "status 3" in r.json()["message"]
    client = gw.client()
    gw.wait_for(lambda: client.invocation(call_id).status == "failed", what="record")
    rec = client.invocation(call_id)
    assert rec.exit_code == 3
    assert "oops" in (rec.error or "")
    gw.wait_for(lambda: client.logs(call_id)["stderr"] == "oops\n", what="logs")
    # A warm handler that raises: 502, traceback in the record, not in the answer.
    deploy(gw, name="fail", image=images["warm"], mode="warm", handler="handler:fail")
    with gw.http(token=None) as http:
        r = http.post("/function/fail", content=b"bad input")
    assert r.status_code == 502
    assert "boom: bad input" in r.json()["message"]
    assert "Traceback" not in r.text
    call_id = r.headers["x-call-id"]
    gw.wait_for(lambda: client.invocation(call_id).status == "failed", what="record")
    assert "Traceback" in (client.invocation(call_id).error or "")


def test_timeouts_are_504_and_kill(
    gw: RunningGateway, images: dict[str, str], engine: docker.DockerClient
) -> None:
    deploy(gw, name="sleepy", image=BUSYBOX, command=["sleep", "30"], timeout=1)
    t0 = time.monotonic()
    with gw.http(token=None) as http:
        r = http.post("/function/sleepy")
    assert r.status_code == 504
    assert time.monotonic() - t0 < 10
    assert r.json()["error"] == "timeout"
    gw.wait_for(lambda: gw.containers(engine, **{"swarmless.function": "sleepy"}) == [], 15)
    # min_containers 1: the stuck worker's replacement is the floor's (with no call in
    # flight or queued nothing else starts one).
    deploy(
        gw,
        name="slowwarm",
        image=images["warm"],
        mode="warm",
        handler="handler:slow",
        timeout=1,
        min_containers=1,
    )
    with gw.http(token=None) as http:
        r = http.post("/function/slowwarm", content=b"20")
        assert r.status_code == 504
        # The stuck worker is recycled: a fresh one serves the next call. (Waited for first,
        # the stuck one is never ready again: a start counts against the call's 1 s timeout,
        # and a loaded engine can take more.)
        pool = gw.dispatcher.pools["slowwarm"]
        gw.wait_for(lambda: pool.counts()["ready"] >= 1, 60, "a fresh ready worker")
        r = http.post("/function/slowwarm", content=b"0.1")
        assert r.status_code == 200, r.text


def test_body_over_limit_is_413(gw: RunningGateway) -> None:
    deploy(gw, name="small", image=BUSYBOX, command=["cat"], max_body="1k")
    with gw.http(token=None) as http:
        assert http.post("/function/small", content=b"x" * 1000).status_code == 200
        r = http.post("/function/small", content=b"x" * 5000)
    assert r.status_code == 413
    assert r.json()["error"] == "payload_too_large"


def test_queue_full_is_429(gw: RunningGateway) -> None:
    deploy(
        gw,
        name="narrow",
        image=BUSYBOX,
        command=["sleep", "2"],
        max_containers=1,
        queue_size=1,
        timeout=20,
    )
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(lambda: httpx.post(f"{gw.url}/function/narrow", timeout=30))
            for _ in range(4)
        ]
        codes = sorted(f.result().status_code for f in futures)
    assert codes.count(429) >= 1
    assert codes.count(200) >= 2
    rejected = next(f.result() for f in futures if f.result().status_code == 429)
    assert rejected.headers["retry-after"]


def test_engine_down_is_503(
    engine: docker.DockerClient, labels: dict[str, str], tmp_path: Path
) -> None:
    """The engine goes away behind a running gateway: calls answer 503, clearly."""
    import socket
    import socketserver

    sock_path = tmp_path / "engine.sock"
    open_sockets: list[socket.socket] = []

    class Relay(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect("/var/run/docker.sock")
            open_sockets.extend([upstream, self.request])

            def pump(a: socket.socket, b: socket.socket) -> None:
                # Relay one direction; an EOF is passed on as a half-close, as the
                # engine's hijacked attach streams expect.
                with contextlib.suppress(OSError):
                    while data := a.recv(65536):
                        b.sendall(data)
                with contextlib.suppress(OSError):
                    b.shutdown(socket.SHUT_WR)

            t = threading.Thread(target=pump, args=(upstream, self.request), daemon=True)
            t.start()
            pump(self.request, upstream)
            t.join(5)

    relay = socketserver.ThreadingUnixStreamServer(str(sock_path), Relay)
    relay.daemon_threads = True
    threading.Thread(target=relay.serve_forever, daemon=True).start()
    g = RunningGateway(tmp_path / "data", labels, docker_host=f"unix://{sock_path}").start()
    try:
        deploy(g, name="upper", image=BUSYBOX, command=["tr", "a-z", "A-Z"])
        with g.http(token=None, timeout=30) as http:
            assert http.post("/function/upper", content=b"up").content == b"UP"
            # The engine "goes down": no new connections, and the open ones are cut.
            relay.shutdown()
            relay.server_close()
            sock_path.unlink()
            for s in open_sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
            r = http.post("/function/upper", content=b"down")
        assert r.status_code == 503
        assert r.json()["error"] == "engine_unavailable"
        assert str(sock_path) in r.json()["message"]
    finally:
        g.stop(engine)


# -- auth -------------------------------------------------------------------------------


def test_auth(gw: RunningGateway, images: dict[str, str]) -> None:
    with gw.http(token=None) as http:
        assert http.get("/system/functions").status_code == 401
        assert http.get("/invocations").status_code == 401
        assert (
            http.post("/system/functions", json={"name": "x", "image": BUSYBOX}).status_code == 401
        )
    with gw.http(token="wrong") as http:
        assert http.get("/system/functions").status_code == 401
    deploy(gw, name="secret", image=BUSYBOX, command=["echo", "classified"], private=True)
    with gw.http(token=None) as http:
        assert http.post("/function/secret").status_code == 401
    with gw.http() as http:
        assert http.post("/function/secret").content == b"classified\n"
    # A worker's runtime token is no admin token.
    deploy(gw, name="echo", image=images["warm"], mode="warm", handler="handler:handle")
    gw.client().invoke("echo", b"x")
    worker_token = next(iter(gw.dispatcher.tokens))
    with gw.http(token=worker_token) as http:
        assert http.get("/system/functions").status_code == 401
        assert http.get("/invocations").status_code == 401
    with gw.http(token="not-a-worker") as http:
        assert http.post("/runtime/next").status_code == 401


def test_health_metrics_openapi(gw: RunningGateway) -> None:
    # A call of its own first: the duration histogram has buckets once a call ended.
    deploy(gw, name="metered", image=BUSYBOX, mode="oneshot", command=["true"])
    with gw.http(token=None) as http:
        assert http.post("/function/metered").status_code == 200
    with gw.http() as http:
        metrics = http.get("/metrics").text
    with gw.http(token=None) as http:
        assert http.get("/healthz").json()["status"] == "ok"
        assert "swarmless_invocations_total" in metrics
        assert "swarmless_invocation_duration_seconds_bucket" in metrics
        assert "swarmless_containers" in metrics
        spec = http.get("/openapi.json").json()
        assert "/system/functions" in spec["paths"]
        assert "/function/{name}" in spec["paths"]
        assert http.get("/docs").status_code == 200


def test_sdk_errors_map_to_exceptions(gw: RunningGateway) -> None:
    client = gw.client()
    with pytest.raises(swarmless.FunctionNotFound):
        client.invoke("nope")
    with pytest.raises(swarmless.SpecError) as info:
        client.deploy({"name": "x", "image": BUSYBOX, "timeout": 0})
    assert "timeout" in info.value.errors
    with pytest.raises(swarmless.Unauthorized):
        gw.client(token="bad").functions()
    dead = swarmless.from_env(gateway_url="http://127.0.0.1:9")
    with pytest.raises(swarmless.GatewayUnavailable, match="swarmless up"):
        dead.invoke("anything")
    # Several addresses (replicas): one that refuses is skipped, the next one serves.
    with pytest.raises(swarmless.FunctionNotFound):
        GatewayClient(Settings.load(gateway_url=f"http://127.0.0.1:9/, {gw.url}")).invoke("nope")
    both_dead = Settings.load(gateway_url="http://127.0.0.1:9,http://127.0.0.1:10")
    assert both_dead.gateway_urls == ("http://127.0.0.1:9", "http://127.0.0.1:10")
    with pytest.raises(
        swarmless.GatewayUnavailable, match=r"127\.0\.0\.1:9 or http://127\.0\.0\.1:10"
    ):
        GatewayClient(both_dead).functions()


# -- resilience -------------------------------------------------------------------------


def test_update_under_traffic_has_no_errors(gw: RunningGateway, images: dict[str, str]) -> None:
    spec = {
        "name": "rolling",
        "image": images["warm"],
        "mode": "warm",
        "handler": "handler:handle",
        "env": {"VERSION": "1"},
        "concurrency": 2,
    }
    deploy(gw, **spec)
    errors: list[str] = []
    versions: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            while not stop.is_set():
                r = http.post("/function/rolling", content=b"x")
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text}")
                else:
                    versions.append(r.json()["version"])

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        gw.wait_for(lambda: len(versions) >= 20, 30, "calls served by version 1")
        deploy(gw, **{**spec, "env": {"VERSION": "2"}})
        gw.wait_for(lambda: versions[-1] == "2", 30, "calls served by version 2")
        # Traffic goes on while the old containers drain and go.
        pool = gw.dispatcher.pools["rolling"]
        gw.wait_for(
            lambda: all(w.version == pool.version for w in list(pool.workers.values())),
            30,
            "only containers of version 2",
        )
        served = len(versions)
        gw.wait_for(lambda: len(versions) >= served + 20, 30, "calls served after the update")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert errors == []
    assert "1" in versions
    assert versions[-1] == "2"


def test_worker_killed_while_idle(
    gw: RunningGateway, images: dict[str, str], engine: docker.DockerClient
) -> None:
    deploy(gw, name="victim", image=images["warm"], mode="warm", handler="handler:handle")
    first = gw.client().invoke("victim", b"a").json()
    for cid in gw.containers(engine, **{"swarmless.function": "victim"}):
        engine.api.kill(cid)
    t0 = time.monotonic()
    second = gw.client().invoke("victim", b"b").json()
    assert second["echo"] == "b"
    assert second["host"] != first["host"]
    assert time.monotonic() - t0 < 20


def test_worker_killed_mid_call_is_served_elsewhere(
    gw: RunningGateway, images: dict[str, str], engine: docker.DockerClient
) -> None:
    # Idempotent (retry_sync): the call runs again elsewhere. Without it the caller gets
    # a 502 with the container's exit reason (tests/reliability/test_faults.py).
    deploy(
        gw,
        name="midcall",
        image=images["warm"],
        mode="warm",
        handler="handler:slow",
        timeout=30,
        retry_sync=True,
    )
    gw.client().invoke("midcall", b"0")  # a container is ready
    results: list[httpx.Response] = []
    t = threading.Thread(
        target=lambda: results.append(
            httpx.post(f"{gw.url}/function/midcall", content=b"2", timeout=60)
        )
    )
    t.start()
    pool = gw.dispatcher.pools["midcall"]
    gw.wait_for(lambda: any(w.busy for w in pool.workers.values()), 10, "a busy worker")
    busy = next(w for w in pool.workers.values() if w.busy)
    engine.containers.get(busy.container).kill()
    t.join(60)
    r = results[0]
    assert r.status_code == 200, r.text
    assert r.json()["host"] != busy.container[:12]
    client = gw.client()
    call_id = r.headers["x-call-id"]
    gw.wait_for(lambda: client.invocation(call_id).status == "succeeded", what="record")
    assert client.invocation(call_id).attempt == 2


def test_remove_function(
    gw: RunningGateway, images: dict[str, str], engine: docker.DockerClient
) -> None:
    deploy(gw, name="doomed", image=images["warm"], mode="warm", handler="handler:handle")
    gw.client().invoke("doomed", b"x")
    gw.client().remove("doomed")
    with gw.http(token=None) as http:
        assert http.post("/function/doomed").status_code == 404
    gw.wait_for(lambda: gw.containers(engine, **{"swarmless.function": "doomed"}) == [], 20)


def test_scale_to_zero_and_pin(
    gw: RunningGateway, images: dict[str, str], engine: docker.DockerClient
) -> None:
    deploy(
        gw,
        name="napper",
        image=images["warm"],
        mode="warm",
        handler="handler:handle",
        idle_timeout=1,
    )
    gw.client().invoke("napper", b"x")
    gw.wait_for(lambda: gw.containers(engine, **{"swarmless.function": "napper"}) == [], 30, "zero")
    gw.client().scale("napper", 2)
    gw.wait_for(
        lambda: len(gw.containers(engine, **{"swarmless.function": "napper"})) == 2, 30, "two"
    )
    described = gw.client().function("napper")
    assert described["scale"]["pinned"] == 2
    gw.client().scale("napper", None)


def test_records_survive_json_roundtrip(gw: RunningGateway) -> None:
    with gw.http() as http:
        rows = http.get("/invocations", params={"limit": 5}).json()
        assert isinstance(rows, list)
        assert http.get("/invocations", params={"status": "weird"}).status_code == 400
        assert http.get("/invocations/nope").status_code == 404
        json.dumps(rows)


def test_secrets_are_mounted_and_checked_at_deploy(gw: RunningGateway) -> None:
    client = gw.client()
    client.put_secret("db-password", b"s3cret")
    assert "db-password" in client.secrets()
    deploy(
        gw,
        name="reads-secret",
        image=BUSYBOX,
        command=["cat", "/run/secrets/db-password"],
        secrets=["db-password"],
    )
    with gw.http(token=None) as http:
        assert http.post("/function/reads-secret").content == b"s3cret"
    with gw.http() as http:
        r = http.post(
            "/system/functions",
            json={"name": "no-secret", "image": BUSYBOX, "secrets": ["missing"]},
        )
        assert r.status_code == 422
        assert "missing" in r.json()["fields"]["secrets"]
        assert http.put("/system/secrets/Bad Name", content=b"x").status_code == 400
    client.delete_secret("db-password")
    assert "db-password" not in client.secrets()
