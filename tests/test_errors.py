"""Errors round-trip: each class writes exactly its own fields and reads them back.

And the SDK tells "not sent" (no gateway took the request: nothing ran) from "sent, no
answer" (it may have run), against real sockets on loopback.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import swarmless
from swarmless.config import Settings
from swarmless.exceptions import (
    ContainerError,
    EngineUnavailable,
    FunctionFailed,
    FunctionNotFound,
    GatewayUnavailable,
    ImageNotFound,
    InvalidArgument,
    InvocationNotFound,
    InvocationTimeout,
    NoAnswer,
    NotFound,
    OOMKilled,
    PayloadTooLarge,
    QueueFull,
    RunTimeout,
    SpecError,
    SwarmlessError,
    Unauthorized,
    WaitTimeout,
    error_from_status,
)
from swarmless.sdk.gateway import AsyncGatewayClient, GatewayClient

#: One instance of every class, each field set (optional ones too) and a call id.
SAMPLES: list[SwarmlessError] = [
    SwarmlessError("something broke", invocation="c1"),
    InvalidArgument("limit must be > 0"),
    SpecError({"timeout": "must be > 0", "image": "required"}),
    Unauthorized("wrong token"),
    NotFound("no secret named 'x'"),
    FunctionNotFound("resize"),
    InvocationNotFound("0193-abc"),
    ImageNotFound("no/such:image", "pull access denied"),
    PayloadTooLarge("request body is over the limit of 10 bytes"),
    QueueFull("queue of 'resize' is full", retry_after=2.5),
    EngineUnavailable("unix:///var/run/docker.sock", "ConnectionRefused"),
    GatewayUnavailable("no replica is active yet", retry_after=3.0),
    GatewayUnavailable("no gateway answers", address="http://127.0.0.1:9"),
    NoAnswer(address="http://127.0.0.1:8080", request="POST /function/x", reason="ReadTimeout"),
    FunctionFailed("function 'x' failed: boom", invocation="c2"),
    ContainerError(
        image="swarmless/busybox",
        command=["sh", "-c", "exit 3"],
        exit_status=3,
        stderr=b"oops\n",
        container="abc123",
        invocation="c3",
    ),
    ContainerError(function="exit3", exit_status=3, stderr=b"\xff\xfe not utf-8", invocation="c4"),
    OOMKilled(function="hog", exit_status=137, stderr=b"OOM-killed"),
    InvocationTimeout("did not answer within 1s", timeout=1.0, invocation="c5"),
    RunTimeout(image="swarmless/busybox", timeout=2.0, container="def456"),
    WaitTimeout("call c6 is still running after 0.5s", timeout=0.5, invocation="c6"),
]


def _fields(err: SwarmlessError) -> dict[str, Any]:
    return {name: getattr(err, name) for name in err.fields()}


def _id(err: SwarmlessError) -> str:
    return type(err).__name__


@pytest.mark.parametrize("err", SAMPLES, ids=_id)
def test_round_trip_through_json(err: SwarmlessError) -> None:
    body = json.loads(json.dumps(err.to_dict()))
    back = SwarmlessError.from_dict(body, status=err.status_code)
    assert type(back) is type(err)
    assert _fields(back) == _fields(err)
    assert str(back) == str(err)
    assert back.status_code == err.status_code
    # Exactly its own fields: nothing of another class's bag.
    assert set(vars(back)) == set(err.fields())


@pytest.mark.parametrize("err", SAMPLES, ids=_id)
def test_round_trip_through_pickle(err: SwarmlessError) -> None:
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert _fields(back) == _fields(err)


@pytest.mark.parametrize("err", SAMPLES, ids=_id)
def test_body_has_exactly_the_class_fields(err: SwarmlessError) -> None:
    body = err.to_dict()
    wire = {"message": "message", "invocation": "call_id", "errors": "fields"}
    expected = {"error"} | {
        wire.get(name, name) for name in err.fields() if getattr(err, name) is not None
    }
    assert set(body) == expected
    assert body["error"] == err.code


def test_every_public_error_has_a_sample_and_its_own_code() -> None:
    # Through __all__, not vars(): the package loads its names on first use, so vars()
    # holds only those some earlier test happened to touch.
    exported = [getattr(swarmless, name) for name in swarmless.__all__]
    classes = {obj for obj in exported if isinstance(obj, type) and issubclass(obj, SwarmlessError)}
    assert classes == {type(e) for e in SAMPLES}
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes)), "two classes share a code"


def test_bytes_travel_as_text_when_they_are_text() -> None:
    err = ContainerError(function="f", exit_status=1, stderr="ünïcode\n".encode())
    assert err.to_dict()["stderr"] == "ünïcode\n"
    raw = ContainerError(function="f", exit_status=1, stderr=b"\x00\xff")
    assert raw.to_dict()["stderr"] == {"base64": "AP8="}


def test_missing_fields_fall_back_to_the_parent_class() -> None:
    # A container_error without its exit status is a FunctionFailed: nothing invented.
    err = error_from_status(502, {"error": "container_error", "message": "exited"})
    assert type(err) is FunctionFailed
    assert not hasattr(err, "exit_status")
    # A field of the wrong type is not taken either.
    body = {"error": "queue_full", "message": "full", "retry_after": "soon"}
    assert type(error_from_status(429, body)) is SwarmlessError
    bad_b64 = {"error": "container_error", "message": "m", "exit_status": 1}
    bad_b64["stderr"] = {"base64": "***"}
    assert type(error_from_status(502, bad_b64)) is FunctionFailed


def test_unknown_codes_go_by_status() -> None:
    err = error_from_status(404, {"error": "http_error", "message": "Not Found"})
    assert type(err) is NotFound
    assert str(err) == "Not Found"
    # A status whose class needs fields the body lacks: the root, with the message.
    gone = error_from_status(503, {"message": "upstream went away"})
    assert type(gone) is SwarmlessError
    assert str(gone) == "upstream went away"
    assert str(error_from_status(500, {})) == "HTTP 500"


def test_a_subclass_restores_only_its_family() -> None:
    body = ContainerError(function="f", exit_status=2, stderr=b"").to_dict()
    assert type(FunctionFailed.from_dict(body)) is ContainerError
    with pytest.raises(ValueError, match="not a ContainerError body"):
        ContainerError.from_dict(FunctionFailed("x").to_dict())


def test_invalid_argument_is_still_a_value_error() -> None:
    back = SwarmlessError.from_dict(SpecError({"name": "bad"}).to_dict())
    assert isinstance(back, ValueError)
    assert isinstance(back, InvalidArgument)


# -- not sent, or sent without an answer ---------------------------------------------------


class Silent:
    """A TCP server on loopback that reads requests and never answers (or hangs up)."""

    def __init__(self, *, hang_up: bool = False) -> None:
        self.hang_up = hang_up
        self.requests = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            try:
                if conn.recv(65536):
                    self.requests += 1
            except OSError:
                pass
            if self.hang_up:
                conn.close()
            else:
                self._conns.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        for c in self._conns:
            c.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    s = Silent()
    yield s
    s.close()


@pytest.fixture
def hangs_up() -> Iterator[Silent]:
    s = Silent(hang_up=True)
    yield s
    s.close()


def _refused_url() -> str:
    with socket.socket() as s:  # bound, never listening: connections are refused
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_refused_is_gateway_unavailable_and_nothing_ran() -> None:
    url = _refused_url()
    with (
        GatewayClient(Settings.load(gateway_url=url)) as gw,
        pytest.raises(GatewayUnavailable) as info,
    ):
        gw.invoke("anything")
    err = info.value
    assert err.address == url
    assert "swarmless up" in str(err)
    assert not isinstance(err, EngineUnavailable)


def test_read_timeout_is_no_answer_and_not_sent_twice(silent: Silent) -> None:
    # The silent gateway first, a second address after it: a request that was delivered is
    # never sent again elsewhere (it may have run).
    other = Silent()
    try:
        settings = Settings.load(gateway_url=f"{silent.url},{other.url}")
        with GatewayClient(settings, timeout=0.5) as gw, pytest.raises(NoAnswer) as info:
            gw.invoke("resize", b"img")
        err = info.value
        assert err.address == silent.url
        assert err.request == "POST /function/resize"
        assert "ReadTimeout" in err.reason
        assert "may have run" in str(err)
        assert (silent.requests, other.requests) == (1, 0)
    finally:
        other.close()


def test_hang_up_after_the_request_is_no_answer(hangs_up: Silent) -> None:
    with GatewayClient(Settings.load(gateway_url=hangs_up.url)) as gw, pytest.raises(NoAnswer):
        gw.functions()


def test_refused_address_is_skipped_for_the_next(silent: Silent) -> None:
    # Nothing reached the first address: the second is tried (and here answers nothing).
    settings = Settings.load(gateway_url=f"{_refused_url()},{silent.url}")
    with GatewayClient(settings, timeout=0.5) as gw, pytest.raises(NoAnswer) as info:
        gw.functions()
    assert info.value.address == silent.url


def test_async_face_raises_the_same(silent: Silent) -> None:
    async def main() -> tuple[SwarmlessError, SwarmlessError]:
        dead = AsyncGatewayClient(Settings.load(gateway_url=_refused_url()))
        mute = AsyncGatewayClient(Settings.load(gateway_url=silent.url), timeout=0.5)
        async with dead, mute:
            with pytest.raises(GatewayUnavailable) as a:
                await dead.invoke("x")
            with pytest.raises(NoAnswer) as b:
                await mute.spawn("x", b"data")
        return a.value, b.value

    refused, no_answer = asyncio.run(main())
    assert "swarmless up" in str(refused)
    assert isinstance(no_answer, NoAnswer)
    assert no_answer.request == "POST /async-function/x"


def test_bad_names_are_refused_before_sending() -> None:
    with GatewayClient(Settings.load(gateway_url=_refused_url())) as gw:
        for name in ("", "a/b", "../system", "a?b", " a"):
            with pytest.raises(InvalidArgument):
                gw.invoke(name)
        with pytest.raises(InvalidArgument):
            gw.logs("x/../../system/functions")
        with pytest.raises(InvalidArgument):
            gw.scale("f", -1)
        with pytest.raises(InvalidArgument):
            gw.invoke("f", b"x", json={"a": 1})
