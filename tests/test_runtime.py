"""The warm-container runtime, run for real against a small runtime API server.

:class:`FakeGateway` is the gateway's side of docs/runtime-api.md and nothing more: a queue
of calls, long polls that answer 200/204/410/401, results taken from the next poll, logs.
The runtime runs as a real process (``python -m swarmless.runtime``) from a directory that
holds exactly what a warm image holds (an empty ``swarmless/__init__.py`` and the runtime),
so an import of anything else from swarmless would fail here too. The last test runs it in a
container built by ``build_function``.
"""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import itertools
import json
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from swarmless.build import build_function, runtime_files
from tests.conftest import PYTHON
from tests.waiting import wait_until

TOKEN = "worker-token-b"
TEST_LABEL = {"swarmless.test": "helper-b"}


class FakeGateway:
    """The runtime API side of a gateway, on a real socket."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, poll_window: float = 0.5):
        self.token = TOKEN
        self.poll_window = poll_window
        self.retired = False
        self.calls: queue.Queue[dict[str, Any]] = queue.Queue()
        self.cond = threading.Condition()
        self.results: dict[str, dict[str, Any]] = {}
        self.logs: dict[str, dict[str, str]] = {}
        #: (kind, client port, detail): ("next", port, (carried id, answer, handed id)),
        #: ("logs", port, call id); in arrival order.
        self.events: list[tuple[str, int, Any]] = []
        #: When the first /runtime/next arrived (epoch seconds).
        self.first_poll_at: float | None = None
        #: Long polls held open now: pollers waiting for a call (an idle runtime holds one
        #: per poller).
        self.holding = 0
        gateway = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                gateway.handle(self)

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- the test's side ---------------------------------------------------------------

    def submit(
        self,
        body: bytes | str = b"",
        *,
        method: str = "POST",
        path: str = "/",
        query: str = "",
        headers: list[list[str]] | None = None,
        timeout: float = 30.0,
        prefix: str | None = None,
    ) -> str:
        call_id = uuid.uuid4().hex[:12]
        event: dict[str, Any] = {
            "method": method,
            "path": path,
            "query": query,
            "headers": headers or [],
        }
        if prefix is not None:
            event["prefix"] = prefix
        self.calls.put(
            {
                "id": call_id,
                "event": event,
                "body": body.encode() if isinstance(body, str) else body,
                "deadline": int((time.time() + timeout) * 1000),
            }
        )
        return call_id

    def result(self, call_id: str, timeout: float = 15.0) -> dict[str, Any]:
        with self.cond:
            if not self.cond.wait_for(lambda: call_id in self.results, timeout):
                raise AssertionError(f"no result for {call_id} within {timeout}s: {self.events}")
            return self.results[call_id]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                raise AssertionError(f"condition not met within {timeout}s: {self.events}")

    def polls(self) -> list[tuple[str, int, Any]]:
        return [e for e in self.events if e[0] == "next"]

    # -- the server's side -------------------------------------------------------------

    def _record(self, kind: str, port: int, detail: Any) -> None:
        with self.cond:
            self.events.append((kind, port, detail))
            self.cond.notify_all()

    def _hold(self, change: int) -> None:
        with self.cond:
            self.holding += change
            self.cond.notify_all()

    def handle(self, req: http.server.BaseHTTPRequestHandler) -> None:
        if self.first_poll_at is None and req.path == "/runtime/next":
            self.first_poll_at = time.time()
        body = req.rfile.read(int(req.headers.get("Content-Length") or 0))
        port = req.client_address[1]
        if req.headers.get("Authorization") != f"Bearer {self.token}":
            self._reply(req, 401, b"bad token")
            return
        if req.path.startswith("/runtime/logs/"):
            call_id = req.path.rsplit("/", 1)[1]
            with self.cond:
                self.logs[call_id] = json.loads(body)
            self._record("logs", port, call_id)
            self._reply(req, 204)
            return
        if req.path != "/runtime/next":
            self._reply(req, 404, b"no such route")
            return
        carried = req.headers.get("X-Swarmless-Result-For")
        if carried:
            headers = req.headers.get("X-Swarmless-Result-Headers")
            code = req.headers.get("X-Swarmless-Exit-Code")
            with self.cond:
                self.results[carried] = {
                    "status": int(req.headers.get("X-Swarmless-Result-Status") or 200),
                    "headers": json.loads(headers) if headers else [],
                    "error": req.headers.get("X-Swarmless-Error"),
                    "exit_code": None if code is None else int(code),
                    "body": body,
                    "logs_first": carried in self.logs,
                }
        end = time.monotonic() + self.poll_window
        call = None
        self._hold(+1)
        try:
            while not self.retired and time.monotonic() < end:
                try:
                    call = self.calls.get(timeout=0.02)
                    break
                except queue.Empty:
                    continue
        finally:
            self._hold(-1)
        if self.retired and call is None:
            self._record("next", port, (carried, 410, None))
            self._reply(req, 410)
            return
        if call is None:
            self._record("next", port, (carried, 204, None))
            self._reply(req, 204)
            return
        self._record("next", port, (carried, 200, call["id"]))
        self._reply(
            req,
            200,
            call["body"],
            {
                "X-Swarmless-Call-Id": call["id"],
                "X-Swarmless-Deadline": str(call["deadline"]),
                "X-Swarmless-Event": json.dumps(call["event"]),
            },
        )

    @staticmethod
    def _reply(
        req: http.server.BaseHTTPRequestHandler,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> None:
        req.send_response(status)
        for k, v in (headers or {}).items():
            req.send_header(k, v)
        if status != 204:
            req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        if body and status != 204:
            req.wfile.write(body)


def assert_one_round_trip(gw: FakeGateway) -> None:
    """Every call handed out on a connection is answered by that connection's next poll."""
    by_port: dict[int, list[tuple[Any, int, Any]]] = {}
    for _, port, detail in gw.polls():
        by_port.setdefault(port, []).append(detail)
    for seq in by_port.values():
        for this, following in itertools.pairwise(seq):
            handed = this[2]
            assert following[0] == handed, f"result of {handed} not on the next poll: {seq}"


# -- running the runtime ------------------------------------------------------------------


@pytest.fixture(scope="session")
def runtime_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory laid out like /opt/swarmless in a warm image."""
    root = tmp_path_factory.mktemp("opt-swarmless")
    for name, data in runtime_files().items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


class RuntimeProcess:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, started: float) -> None:
        self.proc = proc
        self.log = log
        self.started = started

    def wait(self, timeout: float = 10.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"runtime still running; its log:\n{self.output()}") from None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def gateway() -> Iterator[FakeGateway]:
    gw = FakeGateway()
    yield gw
    gw.close()


@pytest.fixture
def start_runtime(runtime_root: Path, tmp_path: Path) -> Iterator[Callable[..., RuntimeProcess]]:
    started: list[RuntimeProcess] = []

    def start(
        api: str,
        *,
        handler: str = "handler:handle",
        kind: str = "python",
        concurrency: int = 1,
        files: dict[str, str] | None = None,
        token: str = TOKEN,
        env: dict[str, str] | None = None,
    ) -> RuntimeProcess:
        workdir = tmp_path / f"function{len(started)}"
        workdir.mkdir()
        for name, text in (files or {}).items():
            (workdir / name).write_text(textwrap.dedent(text))
        log = tmp_path / f"runtime{len(started)}.log"
        environ = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(runtime_root),
            "PYTHONDONTWRITEBYTECODE": "1",
            "SWARMLESS_RUNTIME_API": api,
            "SWARMLESS_WORKER_TOKEN": token,
            "SWARMLESS_FUNCTION": "fn-b",
            "SWARMLESS_HANDLER": handler,
            "SWARMLESS_HANDLER_KIND": kind,
            "SWARMLESS_CONCURRENCY": str(concurrency),
            "SWARMLESS_WORKDIR": str(workdir),
            **(env or {}),
        }
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "swarmless.runtime"],
                env=environ,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        rp = RuntimeProcess(proc, log, time.monotonic())
        started.append(rp)
        return rp

    yield start
    for rp in started:
        if rp.proc.poll() is None:
            rp.proc.kill()
            rp.proc.wait()


ECHO = """
    import threading, time

    def handle(event, context):
        data = event["json"] or {}
        if data.get("sleep"):
            time.sleep(data["sleep"])
        if data.get("print"):
            print("out of", context.call_id)
            import sys
            print("err of", context.call_id, file=sys.stderr)
        if data.get("raise"):
            raise ValueError(data["raise"])
        if data.get("exit"):
            raise SystemExit(data["exit"])
        return {
            "method": event["method"],
            "path": event["path"],
            "query": event["query"],
            "headers": event["headers"],
            "json": event["json"],
            "size": len(event["body"]),
            "call_id": context.call_id,
            "function": context.function,
            "remaining": context.remaining(),
            "thread": threading.current_thread().name,
        }
"""


# -- python handlers ----------------------------------------------------------------------


def test_python_round_trip_one_connection(
    gateway: FakeGateway, start_runtime: Callable[..., RuntimeProcess]
) -> None:
    start_runtime(gateway.url(), files={"handler.py": ECHO})
    ids = [
        gateway.submit(
            json.dumps({"n": i}),
            method="PUT",
            path="/items/7",
            query="a=1&b=2",
            headers=[["Content-Type", "application/json"], ["X-Trace", "t1"], ["x-trace", "t2"]],
            timeout=20,
        )
        for i in range(3)
    ]
    for i, call_id in enumerate(ids):
        res = gateway.result(call_id)
        assert res["status"] == 200
        assert res["error"] is None
        assert ["Content-Type", "application/json"] in res["headers"]
        out = json.loads(res["body"])
        assert out["method"] == "PUT"
        assert out["path"] == "/items/7"
        assert out["query"] == "a=1&b=2"
        assert out["headers"]["x-trace"] == "t1, t2"
        assert out["json"] == {"n": i}
        assert out["size"] == len(json.dumps({"n": i}))
        assert out["call_id"] == call_id
        assert out["function"] == "fn-b"
        assert 0 < out["remaining"] <= 20
        assert not res["logs_first"]  # a silent call costs one round trip, no logs request
    assert_one_round_trip(gateway)
    assert len({port for _, port, _ in gateway.polls()}) == 1, "one keep-alive connection"
    assert not gateway.logs


def test_logs_are_sent_before_the_result(
    gateway: FakeGateway, start_runtime: Callable[..., RuntimeProcess]
) -> None:
    start_runtime(gateway.url(), files={"handler.py": ECHO})
    loud = gateway.submit(json.dumps({"print": True}))
    res = gateway.result(loud)
    assert res["logs_first"]
    assert gateway.logs[loud] == {"stdout": f"out of {loud}\n", "stderr": f"err of {loud}\n"}
    quiet = gateway.submit(json.dumps({}))
    gateway.result(quiet)
    assert quiet not in gateway.logs


def test_logging_set_up_at_import_is_captured_per_call(
    gateway: FakeGateway, start_runtime: Callable[..., RuntimeProcess]
) -> None:
    handler = """
        import logging

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        log = logging.getLogger("fn")

        def handle(event, context):
            log.info("call %s", context.call_id)
            return "ok"
    """
    start_runtime(gateway.url(), files={"handler.py": handler}, concurrency=2)
    ids = [gateway.submit() for _ in range(4)]
    for call_id in ids:
        assert gateway.result(call_id)["body"] == b"ok"
        assert gateway.logs[call_id] == {"stdout": "", "stderr": f"INFO call {call_id}\n"}


def test_concurrency_four_distinct_results_and_logs(
    gateway: FakeGateway, start_runtime: Callable[..., RuntimeProcess]
) -> None:
    start_runtime(gateway.url(), files={"handler.py": ECHO}, concurrency=4)
    gateway.wait_for(lambda: len({port for _, port, _ in gateway.polls()}) >= 4)
    t0 = time.monotonic()
    ids = [gateway.submit(json.dumps({"sleep": 0.5, "print": True})) for _ in range(8)]
    results = {call_id: gateway.result(call_id) for call_id in ids}
    elapsed = time.monotonic() - t0
    assert elapsed < 2.5, f"8 calls of 0.5 s on 4 pollers took {elapsed:.2f}s"
    bodies = {call_id: json.loads(r["body"]) for call_id, r in results.items()}
    assert {b["call_id"] for b in bodies.values()} == set(ids)
    assert len({b["thread"] for b in bodies.values()}) == 4
    for call_id in ids:
        # Each call's log holds its own prints and nobody else's.
        assert gateway.logs[call_id] == {
            "stdout": f"out of {call_id}\n",
            "stderr": f"err of {call_id}\n",
        }
    assert_one_round_trip(gateway)
    assert len({port for _, port, _ in gateway.polls()}) == 4, "one connection per poller"


def test_async_handler_and_its_deadline(
    gateway: FakeGateway, start_runtime: Callable[..., RuntimeProcess]
) -> None:
    handler = """
        import asyncio

        async def handle(event, context):
            await asyncio.sleep(float(event["query"] or 0))
            return "async " + context.call_id
    """
    start_runtime(gateway.url(), files={"handler.py": handler}, concurrency=2)
    call_id = gateway.submit(query="0.05")
    res = gateway.result(call_id)
    assert res["body"] == f"async {call_id}".encode()
    assert ["Content-Type", "text/plain; charset=utf-8"] in res["headers"]
    slow = gateway.submit(query="10", timeout=0.5)
    t0 = time.monotonic()
    res = gateway.result(slow)
    assert time.monotonic() - t0 < 3
    assert res["error"].startswith("TimeoutError"), res
    # The loop survives a cancelled call.
    again = gateway.submit(query="0")
    assert gateway.result(again)["body"] == f"async {again}".encode()


def test_status_code_dict_is_a_full_response(
    gateway: FakeGateway, start_runtime: Callable[..., RuntimeProcess]
) -> None:
    handler = """
        def handle(event, context):
            if event["path"] == "/bytes":
                return b"\\x00\\x01"
            if event["path"] == "/none":
                return None
            return {"statusCode": 201, "headers": {"X-A": "1"}, "body": "<p>made</p>"}
    """
    start_runtime(gateway.url(), files={"handler.py": handler})
    res = gateway.result(gateway.submit())
    assert res["status"] == 201
    assert res["body"] == b"<p>made</p>"
    assert ["X-A", "1"] in res["headers"]
    res = gateway.result(gateway.submit(path="/bytes"))
    assert res["status"] == 200
    assert res["body"] == b"\x00\x01"
    assert res["headers"] == []
    res = gateway.result(gateway.submit(path="/none"))
    assert res["status"] == 200
    assert res["body"] == b""


def test_exceptions_become_error_results(
    gateway: FakeGateway, start_runtime: Callable[..., RuntimeProcess]
) -> None:
    start_runtime(gateway.url(), files={"handler.py": ECHO})
    res = gateway.result(gateway.submit(json.dumps({"raise": "boom\nsecond line"})))
    assert res["error"] == "ValueError: boom second line"
    assert res["status"] == 500
    text = res["body"].decode()
    assert "Traceback" in text
    assert 'handler.py", line 13, in handle' in text
    assert 'raise ValueError(data["raise"])' in text
    assert "swarmless/runtime" not in text  # the runtime's own frames are left out
    res = gateway.result(gateway.submit(json.dumps({"exit": 3})))
    assert res["error"] == "SystemExit: 3"
    ok = gateway.submit(json.dumps({}))
    assert gateway.result(ok)["status"] == 200  # still serving


def test_a_handler_that_cannot_load_fails_each_call(
    gateway: FakeGateway, start_runtime: Callable[..., RuntimeProcess]
) -> None:
    rp = start_runtime(gateway.url(), handler="nowhere:handle")
    for _ in range(2):
        res = gateway.result(gateway.submit())
        assert res["status"] == 500
        assert "could not be loaded" in res["error"]
        assert "ModuleNotFoundError" in res["error"]
        assert b"No module named 'nowhere'" in res["body"]
    assert rp.proc.poll() is None


def test_only_the_handler_kind_in_use_is_imported() -> None:
    """A python handler's runtime loads no fork, CGI or WSGI machinery (each warm start
    pays for what it imports); each other kind's module comes with ``import_kind``, which
    the runtime calls before it lets go of the image's bytecode cache."""
    kinds = ("swarmless.runtime.cgi", "swarmless.runtime.command", "swarmless.runtime.wsgi")
    probe = (
        "import json, sys\n"
        "import swarmless.runtime.loop\n"
        "from swarmless.runtime.handlers import import_kind\n"
        f"kinds = {kinds!r}\n"
        "seen = {'python': [k for k in kinds if k in sys.modules]}\n"
        "for kind in ('wsgi', 'cgi'):\n"
        "    import_kind(kind)\n"
        "    seen[kind] = [k for k in kinds if k in sys.modules]\n"
        "print(json.dumps(seen))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    seen = json.loads(done.stdout)
    assert seen["python"] == []
    assert seen["wsgi"] == ["swarmless.runtime.wsgi"]
    assert set(seen["cgi"]) == set(kinds)  # a cgi script is forked as a command is


# -- wsgi ---------------------------------------------------------------------------------

WSGI_APP = """
    import json

    def app(environ, start_response):
        keys = ["REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE",
                "CONTENT_LENGTH", "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL",
                "HTTP_HOST", "HTTP_X_CUSTOM", "HTTP_COOKIE", "wsgi.url_scheme",
                "wsgi.multithread", "wsgi.run_once"]
        seen = {k: environ.get(k) for k in keys}
        seen["version"] = list(environ["wsgi.version"])
        seen["input"] = environ["wsgi.input"].read().decode()
        seen["no_http_content_type"] = "HTTP_CONTENT_TYPE" not in environ
        environ["wsgi.errors"].write("wsgi says hi\\n")
        start_response("201 Created", [("Content-Type", "application/json"), ("X-Env", "yes")])
        return [json.dumps(seen).encode(), b"\\n"]
"""


def test_wsgi_environ_and_response(
    gateway: FakeGateway, start_runtime: Callable[..., RuntimeProcess]
) -> None:
    start_runtime(gateway.url(), kind="wsgi", handler="app:app", files={"app.py": WSGI_APP})
    call_id = gateway.submit(
        b"hello",
        method="post",
        path="/caf\u00e9/x",
        query="a=1&b=%20",
        headers=[
            ["Content-Type", "text/plain"],
            ["Host", "example.com:8443"],
            ["X-Custom", "a"],
            ["X-Custom", "b"],
            ["Cookie", "c=1"],
            ["Cookie", "d=2"],
            ["X-Forwarded-Proto", "https"],
        ],
    )
    res = gateway.result(call_id)
    assert res["status"] == 201
    assert res["error"] is None
    assert res["headers"] == [["Content-Type", "application/json"], ["X-Env", "yes"]]
    env = json.loads(res["body"])
    assert env == {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/caf\u00e9/x".encode().decode("latin-1"),  # PEP 3333 native string
        "QUERY_STRING": "a=1&b=%20",
        "CONTENT_TYPE": "text/plain",
        "CONTENT_LENGTH": "5",
        "SERVER_NAME": "example.com",
        "SERVER_PORT": "8443",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "example.com:8443",
        "HTTP_X_CUSTOM": "a, b",
        "HTTP_COOKIE": "c=1; d=2",
        "wsgi.url_scheme": "https",
        "wsgi.multithread": False,
        "wsgi.run_once": False,
        "version": [1, 0],
        "input": "hello",
        "no_http_content_type": True,
    }
    assert gateway.logs[call_id] == {"stdout": "", "stderr": "wsgi says hi\n"}


def test_wsgi_errors_and_missing_host(
    gateway: FakeGateway, start_runtime: Callable[..., RuntimeProcess]
) -> None:
    app = """
        def app(environ, start_response):
            if environ["PATH_INFO"] == "/boom":
                raise RuntimeError("wsgi boom")
            start_response("200 OK", [])
            return [environ["SERVER_NAME"].encode(), b":", environ["SERVER_PORT"].encode()]
    """
    start_runtime(gateway.url(), kind="wsgi", handler="app:app", files={"app.py": app})
    assert gateway.result(gateway.submit(method="GET"))["body"] == b"localhost:80"
    res = gateway.result(gateway.submit(method="GET", path="/boom"))
    assert res["error"] == "RuntimeError: wsgi boom"
    assert b"app.py" in res["body"]


# -- command ------------------------------------------------------------------------------


def test_command_handler(
    gateway: FakeGateway, start_runtime: Callable[..., RuntimeProcess]
) -> None:
    command = 'cat; echo "err line" >&2; printf " %s %s" "$SWARMLESS_CALL_ID" "$QUERY_STRING"'
    start_runtime(gateway.url(), kind="command", handler=command, env={"KEEP": "1"})
    call_id = gateway.submit(b"input", query="q=1")
    res = gateway.result(call_id)
    assert res["error"] is None
    assert res["exit_code"] == 0
    assert res["status"] == 200
    assert res["body"] == f"input {call_id} q=1".encode()
    assert gateway.logs[call_id] == {"stdout": "", "stderr": "err line\n"}
    assert res["logs_first"]


def test_command_failure_carries_stderr_and_exit_code(
    gateway: FakeGateway, start_runtime: Callable[..., RuntimeProcess]
) -> None:
    command = (
        'echo partial; echo "bad input" >&2; [ -z "$SWARMLESS_WORKER_TOKEN" ] || exit 9; exit 3'
    )
    start_runtime(gateway.url(), kind="command", handler=command)
    res = gateway.result(gateway.submit(b"x"))
    # Exit 3, not 9: the worker token is not passed on to forked commands.
    assert res["exit_code"] == 3
    assert res["error"] == "the command exited with status 3"
    assert res["body"] == b"bad input\n"


def test_command_is_killed_at_its_deadline(
    gateway: FakeGateway,
    start_runtime: Callable[..., RuntimeProcess],
    tmp_path: Path,
) -> None:
    pidfile = tmp_path / "sleeper.pid"
    command = f"sleep 30 & echo $! > {pidfile}; wait"
    start_runtime(gateway.url(), kind="command", handler=command)
    t0 = time.monotonic()
    res = gateway.result(gateway.submit(timeout=1.0))
    elapsed = time.monotonic() - t0
    assert 0.8 < elapsed < 4, elapsed
    assert res["status"] == 504
    assert res["exit_code"] == 137
    assert res["error"].startswith("deadline passed: the command was killed")
    pid = int(pidfile.read_text())

    # The whole process group went, not just sh: the background sleep is gone (or a zombie).
    def ended() -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]
        except FileNotFoundError:
            return True
        return state == "Z"

    wait_until(ended, 3, f"the background sleep {pid} to end with the command")


# -- cgi ----------------------------------------------------------------------------------

CGI_SCRIPT = r"""#!/bin/sh
body=$(cat)
printf 'Status: 201 Created\r\n'
printf 'Content-Type: text/plain\r\n'
printf 'X-Script: %s\r\n' "$SCRIPT_NAME"
printf '\r\n'
for v in GATEWAY_INTERFACE REQUEST_METHOD SCRIPT_NAME PATH_INFO QUERY_STRING REQUEST_URI \
         SERVER_NAME SERVER_PORT REMOTE_ADDR HTTPS CONTENT_TYPE CONTENT_LENGTH HTTP_X_CUSTOM \
         HTTP_AUTHORIZATION HTTP_PROXY SWARMLESS_WORKER_TOKEN; do
  eval "printf '%s=%s\n' $v \"\${$v-unset}\""
done
printf 'call=%s body=%s\n' "$SWARMLESS_CALL_ID" "$body"
echo "cgi log line" >&2
"""


def test_cgi_handler_forks_a_cgi_script_per_call(
    gateway: FakeGateway, start_runtime: Callable[..., RuntimeProcess]
) -> None:
    start_runtime(
        gateway.url(),
        kind="cgi",
        handler="sh ./page.cgi",
        files={"page.cgi": CGI_SCRIPT},
        env={"PATH_INFO": "from-the-container", "HTTP_X_CUSTOM": "from-the-container"},
    )
    call_id = gateway.submit(
        b"a=1",
        method="post",
        path="/votes",
        query="x=1",
        prefix="/result",
        headers=[
            ["Content-Type", "application/x-www-form-urlencoded"],
            ["Host", "gw.example:8080"],
            ["X-Custom", "a"],
            ["X-Custom", "b"],
            ["Authorization", "Basic dXNlcjpwdw=="],
            ["X-Forwarded-For", "10.1.2.3, 10.0.0.1"],
            ["X-Forwarded-Proto", "https"],
            ["X-Forwarded-Host", "vote.example"],
        ],
    )
    res = gateway.result(call_id)
    assert res["error"] is None, res
    assert res["status"] == 201
    assert res["headers"] == [["Content-Type", "text/plain"], ["X-Script", "/result"]]
    seen = dict(line.split("=", 1) for line in res["body"].decode().splitlines()[:-1])
    assert seen == {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "/result",
        "PATH_INFO": "/votes",
        "QUERY_STRING": "x=1",
        "REQUEST_URI": "/result/votes?x=1",
        "SERVER_NAME": "vote.example",
        "SERVER_PORT": "443",
        "REMOTE_ADDR": "10.1.2.3",
        "HTTPS": "on",
        "CONTENT_TYPE": "application/x-www-form-urlencoded",
        "CONTENT_LENGTH": "3",
        "HTTP_X_CUSTOM": "a, b",
        "HTTP_AUTHORIZATION": "unset",
        "HTTP_PROXY": "unset",
        "SWARMLESS_WORKER_TOKEN": "unset",
    }
    assert res["body"].decode().splitlines()[-1] == f"call={call_id} body=a=1"
    assert gateway.logs[call_id] == {"stdout": "", "stderr": "cgi log line\n"}
    # Without a prefix (an older gateway): SCRIPT_NAME is empty, PATH_INFO the path.
    res = gateway.result(gateway.submit(method="GET", path="/"))
    assert res["status"] == 201
    assert b"SCRIPT_NAME=\nPATH_INFO=/\n" in res["body"]


@pytest.mark.parametrize(
    ("script", "status", "error"),
    [
        ("printf 'Location: /elsewhere\\n\\n'", 302, None),
        ("printf 'Status: 204 No Content\\n\\nignored'", 204, None),
        ("echo no headers here", 502, "malformed CGI response: no blank line"),
        ("printf 'Status: 99 odd\\n\\n'", 502, "malformed CGI Status header"),
        ("echo oops >&2; exit 4", 500, "the command exited with status 4"),
    ],
)
def test_cgi_responses_and_failures(
    gateway: FakeGateway,
    start_runtime: Callable[..., RuntimeProcess],
    script: str,
    status: int,
    error: str | None,
) -> None:
    start_runtime(gateway.url(), kind="cgi", handler=script)
    res = gateway.result(gateway.submit())
    assert res["status"] == status, res
    if error is None:
        assert res["error"] is None
        assert res["body"] == b""
    else:
        assert res["error"].startswith(error), res["error"]
    if status == 302:
        assert res["headers"] == [["Location", "/elsewhere"]]


def test_cgi_script_is_killed_at_its_deadline(
    gateway: FakeGateway, start_runtime: Callable[..., RuntimeProcess]
) -> None:
    start_runtime(gateway.url(), kind="cgi", handler="sleep 30")
    res = gateway.result(gateway.submit(timeout=1.0))
    assert res["status"] == 504
    assert res["exit_code"] == 137


# -- the protocol's answers ---------------------------------------------------------------


def test_204_polls_again_on_the_same_connection(
    start_runtime: Callable[..., RuntimeProcess],
) -> None:
    gw = FakeGateway(poll_window=0.1)
    try:
        start_runtime(gw.url(), files={"handler.py": ECHO})
        gw.wait_for(lambda: sum(1 for e in gw.polls() if e[2][1] == 204) >= 3)
        call_id = gw.submit(json.dumps({}))
        assert json.loads(gw.result(call_id)["body"])["call_id"] == call_id
        assert len({port for _, port, _ in gw.polls()}) == 1
    finally:
        gw.close()


def test_410_drains_then_exits_0(
    gateway: FakeGateway, start_runtime: Callable[..., RuntimeProcess]
) -> None:
    rp = start_runtime(gateway.url(), files={"handler.py": ECHO}, concurrency=2)
    gateway.wait_for(lambda: len({port for _, port, _ in gateway.polls()}) >= 2)
    call_id = gateway.submit(json.dumps({"sleep": 1.0}))
    gateway.wait_for(lambda: any(e[2][2] == call_id for e in gateway.polls()))
    gateway.retired = True
    assert rp.wait(10) == 0, rp.output()
    # The call in hand was finished and delivered before the process left.
    assert json.loads(gateway.result(call_id, timeout=0.1)["body"])["call_id"] == call_id
    assert "retiring" in rp.output()


def test_401_exits_1(gateway: FakeGateway, start_runtime: Callable[..., RuntimeProcess]) -> None:
    rp = start_runtime(gateway.url(), files={"handler.py": ECHO}, token="wrong", concurrency=3)
    assert rp.wait(10) == 1
    assert "refused the worker token" in rp.output()


def test_sigterm_drains_and_exits_0(
    gateway: FakeGateway, start_runtime: Callable[..., RuntimeProcess]
) -> None:
    rp = start_runtime(gateway.url(), files={"handler.py": ECHO})
    gateway.wait_for(lambda: len(gateway.polls()) >= 1)
    rp.proc.send_signal(signal.SIGTERM)
    assert rp.wait(5) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DeadEnd:
    """A port where every connection is reset at once, as a gateway that is not up yet:
    it counts them, so that a test waits for the runtime's retries, not for a while."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.05)
        self.port = int(self._sock.getsockname()[1])
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            # SO_LINGER 0: closing sends a reset, the way a refused connection fails.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            self.connections += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


def test_retries_until_the_gateway_answers(start_runtime: Callable[..., RuntimeProcess]) -> None:
    dead_end = DeadEnd()
    port = dead_end.port
    try:
        rp = start_runtime(f"http://127.0.0.1:{port}", files={"handler.py": ECHO})
        wait_until(lambda: dead_end.connections >= 4, 15, "4 tries of the runtime, with backoff")
        assert rp.proc.poll() is None, rp.output()
    finally:
        dead_end.close()
    # The port is closed now (connections refused) until the gateway listens on it.
    gw = FakeGateway(port=port)
    try:
        call_id = gw.submit(json.dumps({}))
        assert gw.result(call_id)["status"] == 200
    finally:
        gw.close()


def test_gives_up_without_contact(start_runtime: Callable[..., RuntimeProcess]) -> None:
    port = _free_port()
    rp = start_runtime(
        f"http://127.0.0.1:{port}",
        files={"handler.py": ECHO},
        concurrency=2,
        env={"SWARMLESS_RUNTIME_GIVE_UP": "1.5"},
    )
    assert rp.wait(8) == 1
    assert time.monotonic() - rp.started >= 1.5
    assert "no contact with" in rp.output()


def test_bad_settings_exit_1_with_a_reason(start_runtime: Callable[..., RuntimeProcess]) -> None:
    rp = start_runtime("not a url", files={"handler.py": ECHO})
    assert rp.wait(5) == 1
    assert "SWARMLESS_RUNTIME_API must be an http(s) URL" in rp.output()


# -- inside a container -------------------------------------------------------------------


@pytest.fixture(scope="module", name="helper_engine")
def helper_engine_fixture() -> Iterator[docker.DockerClient]:
    """The engine, for these tests; at the end, removes and reports our leftover containers.

    Deliberately not conftest's ``engine``: its session teardown removes every swarmless
    container on the engine, those of other test sessions running at the same time too.
    Ours carry ``swarmless.managed=true`` as well, so a whole-suite run still checks them.
    """
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as e:
        pytest.exit(f"no Docker Engine answers ({e})", 2)
    yield client
    leaked = client.containers.list(all=True, filters={"label": "swarmless.test=helper-b"})
    for c in leaked:
        c.remove(force=True)
    client.close()
    assert not leaked, f"containers left behind: {[c.name for c in leaked]}"


def bridge_gateway_ip(engine: docker.DockerClient) -> str:
    """The host's address on the default bridge, which containers on it can reach."""
    config = engine.networks.get("bridge").attrs["IPAM"]["Config"][0]
    if config.get("Gateway"):
        return str(config["Gateway"])
    # Engines that leave it out use the subnet's first address (docker0's own).
    return str(next(ipaddress.ip_network(config["Subnet"]).hosts()))


@pytest.fixture
def container_gateway(helper_engine: docker.DockerClient) -> Iterator[tuple[FakeGateway, str]]:
    ip = bridge_gateway_ip(helper_engine)
    try:
        gw = FakeGateway(host=ip)
    except OSError:  # the bridge address is not bindable here: listen everywhere
        gw = FakeGateway(host="0.0.0.0")
    yield gw, gw.url(ip)
    gw.close()


@pytest.fixture(scope="module")
def python_template_image(
    helper_engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    from swarmless.cli.new import write_template

    folder = tmp_path_factory.mktemp("tpl") / "hello-b"
    write_template("hello-b", "python", folder)
    tag = f"swarmless-test-b/runtime-hello:{uuid.uuid4().hex[:8]}"
    build_function(
        folder,
        tag=tag,
        mode="warm",
        client=helper_engine,
        base_image=PYTHON,
        labels=dict(TEST_LABEL),
    )
    yield tag
    with contextlib.suppress(docker.errors.DockerException):
        helper_engine.images.remove(tag, force=True)


def start_worker(
    engine: docker.DockerClient, image: str, api: str, *, concurrency: int = 1, **kwargs: Any
) -> Any:
    return engine.containers.run(
        image,
        detach=True,
        environment={
            "SWARMLESS_RUNTIME_API": api,
            "SWARMLESS_WORKER_TOKEN": TOKEN,
            "SWARMLESS_FUNCTION": "hello-b",
            "SWARMLESS_HANDLER": "handler:handle",
            "SWARMLESS_HANDLER_KIND": "python",
            "SWARMLESS_CONCURRENCY": str(concurrency),
        },
        labels={**TEST_LABEL, "swarmless.managed": "true", "swarmless.kind": "worker"},
        **kwargs,
    )


def test_runtime_in_a_container_built_from_the_python_template(
    helper_engine: docker.DockerClient,
    python_template_image: str,
    container_gateway: tuple[FakeGateway, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    gw, api = container_gateway
    # date prints the exec time; the first poll's arrival tells how long the runtime took.
    container = start_worker(
        helper_engine,
        python_template_image,
        api,
        command=["sh", "-c", "date +%s%N; exec python3 -m swarmless.runtime"],
    )
    try:
        gw.wait_for(lambda: len(gw.polls()) >= 1, timeout=30)
        assert gw.first_poll_at is not None
        started_ns = int(container.logs(stdout=True, stderr=False).split()[0])
        call_id = gw.submit(
            json.dumps({"name": "Ada"}), headers=[["Content-Type", "application/json"]]
        )
        res = gw.result(call_id, timeout=20)
        body = json.loads(res["body"])
        assert body == {"message": "Hello, Ada!", "function": "hello-b", "call_id": call_id}
        assert gw.logs[call_id] == {"stdout": "greeting Ada\n", "stderr": ""}
        gw.retired = True
        assert container.wait(timeout=20)["StatusCode"] == 0
        with capsys.disabled():
            ms = (gw.first_poll_at - started_ns / 1e9) * 1000
            print(f"\n[runtime] in-container start (exec -> first poll): {ms:.0f} ms")
    finally:
        container.remove(force=True)
