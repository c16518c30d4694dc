"""Requests that wait (a result's ``?wait=``, a scale's ``wait``, a deploy's rollout) are
dropped when their client goes away, against a real gateway and engine.

Each wait is held open by a raw socket until ``/metrics`` counts it, the socket is closed,
and the gateway must give the wait up: ``swarmless_gateway_waits_in_progress`` back to 0
and ``swarmless_gateway_waits_abandoned_total`` up by one, long before the wait's own end
(a minute to ten). The same waits, kept, still answer as before. And attacked from inside
a container: a function that holds 40 waits with its own token and drops them at once.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import handler_image
from tests.gateway_harness import TOKEN, RunningGateway
from tests.waiting import wait_until

HANDLERS = """
import json, os, signal, socket, struct, time, urllib.error, urllib.parse, urllib.request

if os.environ.get("HANG_AT_IMPORT"):  # a container that never gets ready (and stops at once)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    time.sleep(3600)

def slow(event, context):
    time.sleep(float(event["body"] or b"0"))
    return "slept"

_held = []  # the waits a waiter opened and did not close yet (one container, one process)

def _status(url, token, data=None):
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                 headers={"Authorization": "Bearer " + token,
                                          "Content-Type": "application/json"})
    try:
        return urllib.request.urlopen(req, timeout=30).status
    except urllib.error.HTTPError as e:
        return e.code

def maker(event, context):
    # Makes a call of its own (the callee slow), then stays in flight for a while.
    order = event["json"]
    base, token = os.environ["SWARMLESS_GATEWAY_URL"], os.environ["SWARMLESS_TOKEN"]
    req = urllib.request.Request(base + "/async-function/" + order["callee"], data=b"600",
                                 method="POST",
                                 headers={"Authorization": "Bearer " + token,
                                          "X-Swarmless-Parent": context.call_id})
    urllib.request.urlopen(req, timeout=30).read()
    time.sleep(order["hold"])
    return "made"

def snoop(event, context):
    # Another function's container reads the result of a call it did not make.
    base, token = os.environ["SWARMLESS_GATEWAY_URL"], os.environ["SWARMLESS_TOKEN"]
    return {"status": _status(base + "/invocations/%s/result" % event["json"]["call"], token)}

def waiter(event, context):
    # A hostile function: from its own container, with its own token, it holds as many
    # waits on the gateway as it can, then drops them all at once (RST, no FIN).
    order = event["json"]
    base, token = os.environ["SWARMLESS_GATEWAY_URL"], os.environ["SWARMLESS_TOKEN"]
    if order.get("peek"):  # what the gateway answered on each wait so far (diagnosis)
        seen = []
        for s in _held:
            s.setblocking(False)
            try:
                seen.append(s.recv(300, socket.MSG_PEEK).split(b"\\r\\n")[0].decode())
            except BlockingIOError:
                seen.append("")
            s.setblocking(True)
        return {"answers": seen}
    if order.get("close"):
        for s in _held:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        closed = len(_held)
        _held.clear()
        return {"closed": closed}
    # A long call of its own: the waits wait for its result (a function may read those).
    req = urllib.request.Request(base + "/async-function/" + order["callee"], data=b"600",
                                 method="POST",
                                 headers={"Authorization": "Bearer " + token,
                                          "X-Swarmless-Parent": context.call_id})
    child = json.loads(urllib.request.urlopen(req, timeout=30).read())["call_id"]
    url = urllib.parse.urlsplit(base)
    for _ in range(order["n"]):
        s = socket.create_connection((url.hostname, url.port), timeout=10)
        s.sendall(("GET /invocations/%s/result?wait=60 HTTP/1.1\\r\\nHost: gw\\r\\n"
                   "Authorization: Bearer %s\\r\\n\\r\\n" % (child, token)).encode())
        _held.append(s)
    # Waits it may not hold: another's call's result, a scale's wait, a rollout's.
    spec = json.dumps({"name": order["callee"], "image": "x", "mode": "warm"}).encode()
    return {
        "child": child,
        "foreign": _status(base + "/invocations/%s/result?wait=60" % order["foreign"], token),
        "scale": _status(base + "/system/scale/" + order["callee"], token,
                         json.dumps({"replicas": 1, "wait": 600}).encode()),
        "rollout": _status(base + "/system/functions?wait=600", token, spec),
    }
"""


@pytest.fixture(scope="module")
def image(build_image: Callable[..., str]) -> str:
    return handler_image(build_image, "waits-gone", HANDLERS)


def waits(gw: RunningGateway) -> dict[tuple[str, str], float]:
    """``(metric, kind) -> value`` of the two metrics of held requests."""
    with gw.http() as http:
        text = http.get("/metrics").raise_for_status().text
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in (
                "swarmless_gateway_waits_in_progress",
                "swarmless_gateway_waits_abandoned_total",
            ):
                out[(s.name.removeprefix("swarmless_gateway_waits_"), s.labels["kind"])] = s.value
    return out


def held(gw: RunningGateway, method: str, path: str, body: object = None) -> socket.socket:
    """A request sent on a socket of its own, whose answer is never read."""
    data = b"" if body is None else json.dumps(body).encode()
    host, port = gw.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    sock.sendall(head.encode() + data)
    return sock


def give_up(gw: RunningGateway, sock: socket.socket, kind: str) -> None:
    """Once the gateway holds ``sock``'s request, close it; the wait must be dropped."""
    seen = wait_until(
        lambda: waits(gw), 30, f"a {kind} wait held", ok=lambda w: w.get(("in_progress", kind)) == 1
    )
    before = seen.get(("abandoned_total", kind), 0)
    sock.close()
    wait_until(
        lambda: waits(gw),
        30,
        f"the {kind} wait dropped once its client left",
        ok=lambda w: (
            w.get(("in_progress", kind)) == 0 and w.get(("abandoned_total", kind)) == before + 1
        ),
    )


def test_a_result_wait_is_dropped_when_its_client_leaves(
    gateway: RunningGateway, image: str
) -> None:
    client = gateway.client()
    client.deploy({"name": "slow", "image": image, "mode": "warm", "handler": "handler:slow"})
    with gateway.http() as http:
        busy = http.post("/async-function/slow", content=b"600").raise_for_status()
        call_id = busy.json()["call_id"]
        give_up(gateway, held(gateway, "GET", f"/invocations/{call_id}/result?wait=60"), "result")
        # A wait that is kept still gets its answer, and is not counted as abandoned.
        quick = http.post("/async-function/slow", content=b"0").raise_for_status()
        got = http.get(f"/invocations/{quick.json()['call_id']}/result?wait=60")
        assert got.status_code == 200, got.text
        assert got.text == "slept"
    after = waits(gateway)
    assert after[("in_progress", "result")] == 0
    assert after[("abandoned_total", "result")] == 1


def test_scale_and_rollout_waits_are_dropped_when_their_client_leaves(
    gateway: RunningGateway, image: str
) -> None:
    client = gateway.client()
    base = {"image": image, "mode": "warm", "handler": "handler:slow", "max_containers": 2}
    client.deploy({"name": "hang", **base, "env": {"HANG_AT_IMPORT": "1"}})
    give_up(
        gateway, held(gateway, "POST", "/system/scale/hang", {"replicas": 1, "wait": 600}), "scale"
    )

    client.deploy({"name": "roll", **base, "min_containers": 1}, wait=60)
    gateway.wait_for(lambda: gateway.dispatcher.snapshot()["roll"]["ready"] == 1, 60, "roll ready")
    spec = {"name": "roll", **base, "min_containers": 1, "env": {"HANG_AT_IMPORT": "1"}}
    give_up(gateway, held(gateway, "PUT", "/system/functions/roll?wait=600", spec), "rollout")

    # Kept, a scale's wait still answers once its containers are ready.
    client.deploy({"name": "fine", **base})
    with gateway.http() as http:
        ok = http.post("/system/scale/fine", json={"replicas": 2, "wait": 60})
        assert ok.status_code == 200, ok.text
    after = waits(gateway)
    assert after[("in_progress", "scale")] == after[("in_progress", "rollout")] == 0
    assert after[("abandoned_total", "scale")] == after[("abandoned_total", "rollout")] == 1


@pytest.mark.security
def test_a_function_that_drops_the_waits_it_holds_leaves_nothing_held(
    gateway: RunningGateway, image: str
) -> None:
    """Attacked from inside a container: a function, with its own token, holds 40 result
    waits on a call it made, and drops them all at once (RST). The gateway gives every one
    up (counted as abandoned), and the waits a function may not hold (another's result, a
    scale's, a rollout's) are refused at once, never counted as held."""
    client = gateway.client()
    base = {"image": image, "mode": "warm", "max_containers": 1}
    client.deploy({"name": "waiter", **base, "handler": "handler:waiter", "concurrency": 1})
    client.deploy({"name": "sleeper", **base, "handler": "handler:slow", "concurrency": 4})
    n = 40
    with gateway.http(timeout=120) as http:
        foreign = http.post("/async-function/sleeper", content=b"0").raise_for_status()
        before = waits(gateway)
        order = {"n": n, "callee": "sleeper", "foreign": foreign.json()["call_id"]}
        r = http.post("/function/waiter", json=order)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["foreign"] == 401, out
        assert out["scale"] == 401, out
        assert out["rollout"] == 401, out
        try:
            held_now = wait_until(
                lambda: waits(gateway),
                60,
                f"the function's {n} result waits held",
                ok=lambda w: w.get(("in_progress", "result"), 0) >= n,
            )
        except AssertionError as e:
            peek = http.post("/function/waiter", json={"peek": True}).json()
            raise AssertionError(f"{e}; the waits' answers so far: {peek}") from None
        assert held_now.get(("in_progress", "scale"), 0) == 0, held_now
        assert held_now.get(("in_progress", "rollout"), 0) == 0, held_now
        r = http.post("/function/waiter", json={"close": True})
        assert r.status_code == 200, r.text
        assert r.json() == {"closed": n}
        gone = before.get(("abandoned_total", "result"), 0) + n
        wait_until(
            lambda: waits(gateway),
            30,  # the waits' own end is 60 s away (MAX_WAIT)
            f"the {n} waits the function dropped given up",
            ok=lambda w: (
                w.get(("in_progress", "result")) == 0
                and w.get(("abandoned_total", "result")) == gone
            ),
        )
        # The gateway serves on, and a wait that is kept still gets its answer.
        quick = http.post("/async-function/sleeper", content=b"0").raise_for_status()
        got = http.get(f"/invocations/{quick.json()['call_id']}/result?wait=60")
        assert got.status_code == 200, got.text
        assert got.text == "slept"


@pytest.mark.security
def test_a_function_cannot_read_the_result_of_a_call_another_function_made_while_it_runs(
    gateway: RunningGateway, image: str
) -> None:
    """A call made by function ``maker`` whose own call is still in flight here (the
    gateway knows it by function: ``Dispatcher.in_flight``): function ``snoop``, with its
    own token, from its container, is refused its result (401) while the maker's call
    runs."""
    client = gateway.client()
    base = {"image": image, "mode": "warm", "max_containers": 1}
    for name in ("maker", "snoop"):
        client.deploy({"name": name, **base, "handler": f"handler:{name}"})
    client.deploy({"name": "sleeper", **base, "handler": "handler:slow", "concurrency": 4})
    with gateway.http(timeout=120) as http:
        made = http.post("/async-function/maker", json={"callee": "sleeper", "hold": 20})
        maker = made.raise_for_status().json()["call_id"]

        def child() -> str | None:
            rows = http.get("/invocations", params={"function": "sleeper"}).json()
            mine = [r["id"] for r in rows if r.get("parent") == maker]
            return mine[0] if mine else None

        call = wait_until(child, 60, "the maker's call of its own", ok=lambda c: c is not None)
        assert gateway.dispatcher.in_flight(maker) == "maker"
        got = http.post("/function/snoop", json={"call": call})
        assert got.status_code == 200, got.text
        assert got.json() == {"status": 401}
