"""The gateway's API description: complete, true to the code, and readable offline.

``/openapi.json`` describes every route the gateway serves (the admin routes, the raw-ASGI
hot paths, health and metrics) with its parameters, body, answers and security; its models
hold exactly the fields of the classes they describe; ``/docs`` shows them with a try-it
form and loads nothing from elsewhere.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import docker
import httpx
import jsonschema_rs
import pytest
from starlette.routing import Route

from swarmless.gateway.schemas import (
    OPERATIONS,
    FunctionSpecBody,
    FunctionSpecModel,
    InvocationModel,
    SpecUpdateBody,
)
from swarmless.records import InvocationRecord
from swarmless.spec import FunctionSpec
from tests.conftest import BUSYBOX
from tests.gateway_harness import TOKEN, RunningGateway


@pytest.fixture(scope="module")
def gw(
    engine: docker.DockerClient, labels: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    g = RunningGateway(tmp_path_factory.mktemp("openapi"), labels).start()
    yield g
    g.stop(engine)


def test_every_admin_route_is_described(gw: RunningGateway) -> None:
    with gw.http(token=None) as http:
        spec = http.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    served = {
        (route.path, method.lower())
        for route in gw.gateway.app.routes
        if isinstance(route, Route) and route.include_in_schema
        for method in route.methods or ()
        if method != "HEAD"
    }
    for path, method in served:
        if path.startswith(("/system", "/invocations")):
            assert (path, method) in OPERATIONS, (path, method)
    for (path, method), op in OPERATIONS.items():
        described = spec["paths"][path][method]
        assert described["summary"], (path, method)
        assert described["responses"], (path, method)
        for name in re.findall(r"{(\w+)}", path):
            params = {p["name"] for p in described.get("parameters", []) if p["in"] == "path"}
            assert name in params, (path, method, name)
        if op.auth == "admin":  # the token as bearer, or basic auth as OpenFaaS has it
            assert described["security"] == [{"bearer": []}, {"basic": []}]
            assert "401" in described["responses"]
        for status, answer in described["responses"].items():
            if status.startswith(("4", "5")):
                schema = answer["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}
    for raw in ("/function/{name}", "/async-function/{name}", "/runtime/next"):
        assert raw in spec["paths"]
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["components"]["securitySchemes"]["basic"]["scheme"] == "basic"
    error = spec["components"]["schemas"]["ErrorBody"]
    assert set(error["required"]) == {"error", "message"}


def test_models_hold_the_fields_of_what_they_describe() -> None:
    fields = {f.name for f in dataclasses.fields(FunctionSpec)}
    assert set(FunctionSpecModel.model_fields) == fields
    assert set(FunctionSpecBody.model_fields) == fields
    assert set(SpecUpdateBody.model_fields) == fields
    record = {f.name for f in dataclasses.fields(InvocationRecord)}
    assert record <= set(InvocationModel.model_fields)
    spec = FunctionSpec(name="fn", image="busybox", memory="64m", command="echo hi")
    assert FunctionSpecModel.model_validate(spec.to_dict()).model_dump() == spec.to_dict()


def test_docs_page_lists_every_operation_offline(gw: RunningGateway) -> None:
    with gw.http(token=None) as http:
        r = http.get("/docs")
        spec = http.get("/openapi.json").json()
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    page = r.text
    for methods in spec["paths"].values():
        for op in methods.values():
            assert f"id='{op['operationId']}'" in page or "undescribed" in op.get("tags", [])
    assert "class='try'" in page
    assert "FunctionSpecBody" in page
    # Nothing loaded from elsewhere: no src= or stylesheet link to another host.
    assert not re.search(r"""(src|href)=['"]?(https?:)?//""", page), "external resource"


def _conforms(spec: dict[str, Any], r: httpx.Response, path: str) -> None:
    """``r`` is an answer ``spec`` documents for ``path``, in the shape it gives."""
    op = spec["paths"][path][r.request.method.lower()]
    answer = op["responses"].get(str(r.status_code))
    assert answer is not None, f"{r.request.method} {path}: {r.status_code} undocumented: {r.text}"
    media = answer.get("content", {}).get("application/json")
    if media is None:
        assert r.content == b"", (path, r.text)
        return
    validator = jsonschema_rs.validator_for({**media["schema"], "components": spec["components"]})
    errors = [e.message for e in validator.iter_errors(r.json())]
    assert not errors, (r.request.method, path, errors, r.text)


def test_openfaas_answers_are_as_described(gw: RunningGateway) -> None:
    """Every OpenFaaS route, its successes and its errors, against /openapi.json."""
    with gw.http(token=None) as anon:
        spec = anon.get("/openapi.json").json()
    deployment = {"service": "oa-rev", "image": BUSYBOX, "envProcess": "rev"}
    with httpx.Client(base_url=gw.url, auth=("admin", TOKEN), timeout=60) as faas:
        calls: list[tuple[httpx.Response, str]] = [
            (faas.post("/system/functions", json=deployment), "/system/functions"),
            (faas.put("/system/functions", json=deployment), "/system/functions"),
            (faas.get("/system/functions"), "/system/functions"),
            (faas.get("/system/function/oa-rev"), "/system/function/{name}"),
            (faas.get("/system/function/oa-none"), "/system/function/{name}"),
            (faas.get("/system/info"), "/system/info"),
            (
                faas.post("/system/scale-function/oa-rev", json={"replicas": 1}),
                "/system/scale-function/{name}",
            ),
            (
                faas.post("/system/functions", json={**deployment, "limits": {"memory": "1"}}),
                "/system/functions",
            ),
            (faas.post("/system/functions", json={**deployment, "x": 1}), "/system/functions"),
            (
                faas.request("DELETE", "/system/functions", json={"functionName": "oa-rev"}),
                "/system/functions",
            ),
            (
                faas.request("DELETE", "/system/functions", json={"functionName": "oa-rev"}),
                "/system/functions",
            ),
        ]
    with httpx.Client(base_url=gw.url, auth=("admin", "wrong"), timeout=60) as wrong:
        calls.append((wrong.get("/system/info"), "/system/info"))
    statuses = [r.status_code for r, _ in calls]
    assert statuses == [202, 202, 200, 200, 404, 200, 400, 422, 400, 200, 404, 401], statuses
    for r, path in calls:
        _conforms(spec, r, path)
