"""Functions at their own routes (``routes: ["/result", "vote.example"]``): the spec's rules,
the route table, and a real gateway serving cgi, warm WSGI and warm cgi apps written for the
web root, with the prefix passed on as ``SCRIPT_NAME``."""

from __future__ import annotations

import contextlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from swarmless.exceptions import SpecError
from swarmless.gateway.routing import find_route
from swarmless.spec import RESERVED_PATHS, FunctionSpec
from tests.conftest import PYTHON, SESSION
from tests.gateway_harness import RunningGateway


def spec(name: str, *routes: str) -> FunctionSpec:
    return FunctionSpec(name=name, image="busybox", routes=list(routes))


# -- the spec -------------------------------------------------------------------------------


def test_routes_are_normalised() -> None:
    assert spec("a", "/result/", "Vote.Example.com", "/a/b.c_~-d").routes == (
        "/result",
        "vote.example.com",
        "/a/b.c_~-d",
    )
    assert FunctionSpec.from_dict({"name": "a", "image": "b", "routes": "/x"}).routes == ("/x",)
    assert FunctionSpec(name="a", image="b").routes == ()


@pytest.mark.parametrize(
    ("routes", "why"),
    [
        (["/"], "'/' alone is the gateway's"),
        (["/a//b"], "segments of letters"),
        (["/a/../b"], "no '.' or '..' segment"),
        (["/a b"], "segments of letters"),
        (["/%2e%2e"], "segments of letters"),
        (["vote.example:8080"], "no port"),
        (["under_score.example"], "neither a path prefix"),
        (["/x", "/x/"], "must not repeat"),
        ([f"/r{i}" for i in range(17)], "at most 16"),
        (["/" + "a" * 300], "path prefixes or host names"),
        ([5], "path prefixes or host names"),
        *[([r], "under the gateway's own") for r in RESERVED_PATHS],
        *[([r + "/deeper"], "under the gateway's own") for r in RESERVED_PATHS],
    ],
)
def test_bad_routes_are_refused(routes: list[object], why: str) -> None:
    with pytest.raises(SpecError) as e:
        FunctionSpec(name="a", image="b", routes=routes)  # type: ignore[arg-type]
    assert why in e.value.errors["routes"], e.value.errors


def test_children_timeout_is_bounded() -> None:
    assert FunctionSpec(name="a", image="b").children_timeout == 60.0
    assert FunctionSpec(name="a", image="b", children_timeout=0).children_timeout == 0.0
    for bad in (-1, 3601, "1", True, float("nan")):
        with pytest.raises(SpecError) as e:
            FunctionSpec(name="a", image="b", children_timeout=bad)  # type: ignore[arg-type]
        assert "from 0 to 3600" in e.value.errors["children_timeout"]


def test_cgi_handler_kind() -> None:
    s = FunctionSpec(name="a", image="b", mode="warm", handler_kind="cgi", command="perl x.cgi")
    assert (s.handler, s.handler_kind) == ("perl x.cgi", "cgi")
    s = FunctionSpec(name="a", image="b", mode="warm", handler_kind="cgi", handler="./page.sh")
    assert s.handler == "./page.sh"
    # A command alone is still a command handler.
    assert FunctionSpec(name="a", image="b", mode="warm", command="cat").handler_kind == "command"


# -- the table --------------------------------------------------------------------------------


def table(*specs: FunctionSpec) -> dict[str, tuple[FunctionSpec, int]]:
    return {s.name: (s, 1) for s in specs}


HOST = [(b"host", b"Vote.Example:8080")]


@pytest.mark.parametrize(
    ("path", "headers", "found"),
    [
        ("/result", [], ("result", "/result", "")),
        ("/result/", [], ("result", "/result", "/")),
        ("/result/votes", [], ("result", "/result", "/votes")),
        ("/result/live/votes", [], ("live", "/result/live", "/votes")),  # longest prefix
        ("/results", [], None),  # segment by segment
        ("/", [], None),
        ("/other", [], None),
        ("/", HOST, ("site", "", "/")),  # a host name takes its every path ...
        ("/result/votes", HOST, ("site", "", "/result/votes")),  # ... before prefixes
        ("/function/result", HOST, None),  # ... but never the gateway's own
        ("/system/functions", HOST, None),
        ("/healthz", HOST, None),
    ],
)
def test_find_route(path: str, headers: list[tuple[bytes, bytes]], found: object) -> None:
    functions = table(
        spec("result", "/result"),
        spec("live", "/result/live"),
        spec("site", "vote.example"),
        spec("plain"),
    )
    r = find_route(functions, path, headers)
    assert (None if r is None else (r.function, r.prefix, r.path)) == found


# -- a real gateway -----------------------------------------------------------------------

PAGE_CGI = """\
#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
printf 'cgi script=%s path=%s uri=%s\\n' "$SCRIPT_NAME" "$PATH_INFO" "$REQUEST_URI"
"""
WSGI_APP = """\
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"wsgi script={environ['SCRIPT_NAME']} path={environ['PATH_INFO']}\\n".encode()]
"""


@pytest.fixture(scope="module")
def page_image(engine: docker.DockerClient) -> Iterator[str]:
    tag = f"swarmless-test-routes/page:{SESSION}"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in {
            "Dockerfile": f"FROM {PYTHON}\nCOPY page.cgi app.py /function/\nWORKDIR /function\n",
            "page.cgi": PAGE_CGI,
            "app.py": WSGI_APP,
        }.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(text.encode()), 0o755
            tar.addfile(info, io.BytesIO(text.encode()))
    buf.seek(0)
    engine.images.build(
        fileobj=buf, custom_context=True, tag=tag, rm=True, labels={"swarmless.test": SESSION}
    )
    yield tag
    with contextlib.suppress(docker.errors.DockerException):
        engine.images.remove(tag, force=True)


def test_a_gateway_serves_functions_at_their_routes(
    engine: docker.DockerClient, labels: dict[str, str], page_image: str, tmp_path: Path
) -> None:
    gw = RunningGateway(tmp_path, labels).start()
    try:
        with gw.http() as http:
            for body in (
                {"name": "page", "mode": "cgi", "command": "sh /function/page.cgi"},
                {
                    "name": "warmcgi",
                    "mode": "warm",
                    "handler_kind": "cgi",
                    "handler": "sh /function/page.cgi",
                    "routes": ["/w/cgi"],
                },
                {"name": "site", "mode": "warm", "handler_kind": "wsgi", "handler": "app:app"},
            ):
                r = http.post("/system/functions", json={"image": page_image, **body})
                assert r.status_code in (200, 201), r.text
            cgi = {"image": page_image, "mode": "cgi", "command": "sh /function/page.cgi"}
            r = http.put("/system/functions/page", json={**cgi, "routes": ["/page"]})
            assert r.status_code == 200, r.text
            r = http.put(
                "/system/functions/site",
                json={
                    "image": page_image,
                    "mode": "warm",
                    "handler_kind": "wsgi",
                    "handler": "app:app",
                    "routes": ["/site", "site.example"],
                },
            )
            assert r.status_code == 200, r.text
            # A route another function holds, and one under the gateway's own paths: 422.
            taken = http.post(
                "/system/functions",
                json={"name": "thief", "image": page_image, "routes": ["/page"]},
            )
            assert taken.status_code == 422, taken.text
            assert "already function 'page'" in taken.json()["fields"]["routes"]
            reserved = http.post(
                "/system/functions",
                json={"name": "thief", "image": page_image, "routes": ["/system/x"]},
            )
            assert reserved.status_code == 422, reserved.text

        with gw.http(token=None) as http:
            expect = {
                "/page/votes?x=1": "cgi script=/page path=/votes uri=/page/votes?x=1\n",
                "/function/page/votes": "cgi script=/function/page path=/votes "
                "uri=/function/page/votes\n",
                "/w/cgi/a/b": "cgi script=/w/cgi path=/a/b uri=/w/cgi/a/b\n",
                "/function/warmcgi/": "cgi script=/function/warmcgi path=/ "
                "uri=/function/warmcgi/\n",
                "/site/x": "wsgi script=/site path=/x\n",
                "/function/site/x": "wsgi script=/function/site path=/x\n",
            }
            for url, text in expect.items():
                r = http.get(url)
                assert (r.status_code, r.text) == (200, text), url
                assert r.headers["x-call-id"]
            r = http.get("/anything", headers={"Host": "site.example:8080"})
            assert r.text == "wsgi script= path=/anything\n"
            assert http.get("/healthz", headers={"Host": "site.example"}).json()["status"] == "ok"
            assert http.get("/pages").status_code == 404
    finally:
        gw.stop(engine)
