"""OpenFaaS's management API on a real gateway, with the bodies faas-cli sends.

The request bodies are what faas-cli marshals from faas-provider's Go types
(``types.FunctionDeployment``, ``DeleteFunctionRequest``, ``ScaleServiceRequest``), with
OpenFaaS's basic auth (user ``admin``, the token as password); every answer is checked
against the gateway's own ``/openapi.json``. The mapping itself (to_spec, to_status) is
tested on its own first, without a gateway.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import docker
import httpx
import jsonschema_rs
import pytest

from swarmless.exceptions import InvalidArgument, SpecError
from swarmless.gateway.openfaas_mapping import to_spec, to_status
from tests.conftest import BUSYBOX, PYTHON
from tests.gateway_harness import TOKEN, RunningGateway

BASIC = ("admin", TOKEN)


# -- the mapping, on its own ------------------------------------------------------------------


def test_a_faas_cli_deployment_becomes_a_oneshot_spec() -> None:
    spec, origin = to_spec(
        {
            "service": "nodeinfo",
            "image": "functions/nodeinfo:latest",
            "namespace": "openfaas-fn",
            "envProcess": "node main.js --verbose",
            "envVars": {"write_debug": "true"},
            "constraints": ["node.platform.os == linux"],
            "secrets": ["api-key"],
            "labels": {"com.openfaas.scale.max": "3", "team": "a"},
            "annotations": {"topic": "cron-function", "schedule": "*/5 * * * *"},
            "limits": {"memory": "128Mi", "cpu": "500m"},
            "requests": {"memory": "64M", "cpu": "0.1"},
            "readOnlyRootFilesystem": False,
            "registryAuth": "dXNlcjpwYXNzd29yZA==",
            "network": "func_functions",
        }
    )
    assert spec == {
        "name": "nodeinfo",
        "image": "functions/nodeinfo:latest",
        "mode": "oneshot",
        "command": "node main.js --verbose",
        "env": {"write_debug": "true"},
        "placement": ["node.platform.os == linux"],
        "secrets": ["api-key"],
        "memory": 128 * 1024**2,
        "cpus": 0.5,
        "max_containers": 3,
        "schedule": "*/5 * * * *",
        "labels": {
            "com.openfaas.scale.max": "3",
            "team": "a",
            "com.openfaas.annotations.topic": "cron-function",
            "com.openfaas.annotations.schedule": "*/5 * * * *",
        },
    }
    assert origin["command"] == "envProcess"
    assert origin["memory"] == "limits.memory"
    assert origin["max_containers"] == "labels.com.openfaas.scale.max"


def test_swarmless_annotations_set_spec_fields() -> None:
    spec, _ = to_spec(
        {
            "service": "w",
            "image": PYTHON,
            "envProcess": "cat",
            "annotations": {
                "com.swarmless.mode": "warm",
                "com.swarmless.timeout": "2.5",
                "com.swarmless.concurrency": "4",
                "com.swarmless.private": "true",
                "com.swarmless.max_body": "1m",
            },
        }
    )
    assert (spec["mode"], spec["timeout"], spec["concurrency"]) == ("warm", 2.5, 4)
    assert (spec["private"], spec["max_body"]) == (True, "1m")
    assert "labels" not in spec  # consumed, not kept as annotations


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"service": "x"}, "image"),
        ({"service": "x", "image": "i", "name": "x"}, "name"),  # a swarmless field: refused
        ({"service": "x", "image": "i", "readOnlyRootFilesystem": True}, "readOnlyRoot"),
        ({"service": "x", "image": "i", "readOnlyRootFilesystem": 0}, "readOnlyRoot"),
        ({"service": "x", "image": "i", "namespace": "team-a"}, "namespace"),
        ({"service": "x", "image": "i", "envVars": {"N": 1}}, "envVars.N"),
        ({"service": "x", "image": "i", "limits": {"memory": "lots"}}, "limits.memory"),
        ({"service": "x", "image": "i", "limits": {"gpu": "1"}}, "limits.gpu"),
    ],
)
def test_what_is_not_a_function_deployment_is_refused(body: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidArgument, match="not an OpenFaaS FunctionDeployment") as e:
        to_spec(body)
    assert words in e.value.message


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"limits": {"cpu": "2Gi"}}, "limits.cpu"),
        ({"requests": {"cpu": "1Ki"}}, "requests.cpu"),
        ({"labels": {"com.openfaas.scale.min": "many"}}, "labels.com.openfaas.scale.min"),
        ({"labels": {"com.openfaas.annotations.x": "y"}}, "labels.com.openfaas.annotations.x"),
        ({"annotations": {"com.swarmless.build": "."}}, "annotations.com.swarmless.build"),
        ({"annotations": {"com.swarmless.timeout": "soon"}}, "annotations.com.swarmless.timeout"),
        ({"annotations": {"topic": "cron-function"}}, "annotations.schedule"),
        (
            {
                "labels": {"com.openfaas.scale.min": "1"},
                "annotations": {"com.swarmless.min_containers": "2"},
            },
            "annotations.com.swarmless.min_containers",
        ),
    ],
)
def test_bad_values_name_the_openfaas_field(extra: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as e:
        to_spec({"service": "x", "image": "i", **extra})
    assert field in e.value.errors, e.value.errors


def test_a_function_reads_back_as_a_function_status() -> None:
    item = {
        "name": "w",
        "version": 2,
        "spec": {
            "name": "w",
            "image": PYTHON,
            "mode": "warm",
            "handler": "cat -n",
            "handler_kind": "command",
            "env": {"A": "1"},
            "secrets": [],
            "placement": [],
            "labels": {"team": "a", "com.openfaas.annotations.owner": "ops"},
            "memory": 64 * 1024**2,
            "cpus": 0.25,
        },
        "containers": {"ready": 2, "starting": 1, "busy": 1},
        "scale": {"pinned": None, "desired": 3},
    }
    status = to_status(item, calls=7)
    assert status == {
        "name": "w",
        "image": PYTHON,
        "namespace": "openfaas-fn",
        "envProcess": "cat -n",
        "envVars": {"A": "1"},
        "constraints": [],
        "secrets": [],
        "labels": {"team": "a"},
        "annotations": {"owner": "ops", "com.swarmless.mode": "warm"},
        "limits": {"memory": "64Mi", "cpu": "0.25"},
        "invocationCount": 7,
        "replicas": 3,
        "availableReplicas": 2,
    }


# -- against a real gateway -------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(
    engine: docker.DockerClient, labels: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    g = RunningGateway(tmp_path_factory.mktemp("openfaas"), labels).start()
    yield g
    g.stop(engine)
    assert g.containers(engine) == []


@pytest.fixture(scope="module")
def schema(gw: RunningGateway) -> dict[str, Any]:
    with gw.http(token=None) as http:
        return dict(http.get("/openapi.json").json())


def conforms(schema: dict[str, Any], r: httpx.Response, path: str) -> None:
    """The answer is one the gateway's /openapi.json documents, in the shape it says."""
    op = schema["paths"][path][r.request.method.lower()]
    answer = op["responses"].get(str(r.status_code))
    assert answer is not None, f"{r.status_code} is not documented for {path}: {r.text}"
    media = answer.get("content", {}).get("application/json")
    if media is None:
        assert r.content == b"", r.text
        return
    validator = jsonschema_rs.validator_for({**media["schema"], "components": schema["components"]})
    errors = [e.message for e in validator.iter_errors(r.json())]
    assert not errors, (path, errors, r.text)


@pytest.fixture
def faas(gw: RunningGateway) -> Iterator[httpx.Client]:
    """An HTTP client as faas-cli is one: basic auth, user admin, the token as password."""
    with httpx.Client(base_url=gw.url, auth=BASIC, timeout=60) as http:
        yield http


def test_deploy_list_describe_invoke_update_remove(
    faas: httpx.Client, schema: dict[str, Any]
) -> None:
    deployment = {  # what faas-cli deploy --image ... --name of-upper --fprocess ... sends
        "service": "of-upper",
        "image": BUSYBOX,
        "envProcess": "tr a-z A-Z",
        "envVars": {"GREETING": "hi"},
        "labels": {"com.openfaas.scale.max": "2"},
        "annotations": {"owner": "ops", "com.swarmless.timeout": "10"},
        "limits": {"memory": "64Mi"},
        "network": "func_functions",
    }
    r = faas.post("/system/functions", json=deployment)
    assert r.status_code == 202, r.text
    conforms(schema, r, "/system/functions")
    r = faas.post("/function/of-upper", content=b"shout")
    assert (r.status_code, r.text) == (200, "SHOUT")

    r = faas.get("/system/functions")
    conforms(schema, r, "/system/functions")
    item = next(f for f in r.json() if f["name"] == "of-upper")
    # OpenFaaS's FunctionStatus and swarmless's FunctionInfo in one item.
    assert item["image"] == BUSYBOX
    assert item["envProcess"] == "tr a-z A-Z"
    assert item["envVars"] == {"GREETING": "hi"}
    assert item["labels"] == {"com.openfaas.scale.max": "2"}
    assert item["annotations"] == {"owner": "ops", "com.swarmless.mode": "oneshot"}
    assert item["limits"] == {"memory": "64Mi"}
    assert item["invocationCount"] == 1
    assert item["spec"]["max_containers"] == 2
    assert item["spec"]["timeout"] == 10
    assert item["version"] == 1

    r = faas.get("/system/function/of-upper")
    conforms(schema, r, "/system/function/{name}")
    assert r.json()["envProcess"] == "tr a-z A-Z"
    assert "spec" not in r.json()  # OpenFaaS's own path: OpenFaaS's shape only
    assert faas.get("/system/function/of-upper", params={"namespace": "openfaas-fn"}).is_success
    r = faas.get("/system/function/of-upper", params={"namespace": "team-a"})
    assert r.status_code == 400
    assert "namespace" in r.json()["message"]

    r = faas.put("/system/functions", json={**deployment, "envProcess": "rev"})
    assert r.status_code == 202, r.text
    conforms(schema, r, "/system/functions")
    assert faas.post("/function/of-upper", content=b"abc").text.strip() == "cba"
    assert faas.get("/system/function/of-upper").json()["envProcess"] == "rev"

    r = faas.put("/system/functions", json={**deployment, "service": "of-nowhere"})
    assert r.status_code == 404, r.text  # faas-cli then POSTs it
    conforms(schema, r, "/system/functions")

    r = faas.request("DELETE", "/system/functions", json={"functionName": "of-upper"})
    assert r.status_code == 200, r.text
    conforms(schema, r, "/system/functions")
    r = faas.get("/system/function/of-upper")
    assert r.status_code == 404
    conforms(schema, r, "/system/function/{name}")
    r = faas.request("DELETE", "/system/functions", json={"functionName": "of-upper"})
    assert r.status_code == 404  # faas-cli: "No existing function to remove"


def test_scale_a_warm_function(
    faas: httpx.Client, gw: RunningGateway, schema: dict[str, Any]
) -> None:
    r = faas.post(
        "/system/functions",
        json={
            "service": "of-warm",
            "image": PYTHON,
            "envProcess": "cat",
            "annotations": {"com.swarmless.mode": "warm"},
        },
    )
    assert r.status_code == 202, r.text
    try:
        r = faas.post(
            "/system/scale-function/of-warm", json={"serviceName": "of-warm", "replicas": 1}
        )
        assert r.status_code == 202, r.text
        conforms(schema, r, "/system/scale-function/{name}")
        gw.wait_for(
            lambda: faas.get("/system/function/of-warm").json()["availableReplicas"] == 1,
            timeout=60,
            what="one ready container",
        )
        status = faas.get("/system/function/of-warm").json()
        assert status["replicas"] == 1
        assert status["envProcess"] == "cat"  # forked per call in the warm container
        assert faas.post("/function/of-warm", content=b"echo me").text == "echo me"

        r = faas.post(
            "/system/scale-function/of-warm", json={"serviceName": "other", "replicas": 1}
        )
        assert r.status_code == 400
        assert "does not match" in r.json()["message"]
        r = faas.post("/system/scale-function/of-nowhere", json={"replicas": 1})
        assert r.status_code == 404
        conforms(schema, r, "/system/scale-function/{name}")
    finally:
        faas.request("DELETE", "/system/functions", json={"functionName": "of-warm"})


def test_info_and_health(faas: httpx.Client, gw: RunningGateway, schema: dict[str, Any]) -> None:
    r = faas.get("/system/info")
    conforms(schema, r, "/system/info")
    info = r.json()
    assert info["provider"]["provider"] == "swarmless"
    assert info["provider"]["orchestration"] == "docker"
    assert info["version"]["release"] == info["provider"]["version"]["release"]
    assert httpx.get(f"{gw.url}/healthz").json()["status"] == "ok"


def test_bad_bodies_name_what_is_wrong(faas: httpx.Client, schema: dict[str, Any]) -> None:
    r = faas.post("/system/functions", json={"service": "of-bad", "image": BUSYBOX, "x": 1})
    assert r.status_code == 400
    conforms(schema, r, "/system/functions")
    assert "x: Extra inputs are not permitted" in r.json()["message"]
    r = faas.post(
        "/system/functions",
        json={"service": "of-bad", "image": BUSYBOX, "envVars": {"SWARMLESS_X": "1"}},
    )
    assert r.status_code == 422
    conforms(schema, r, "/system/functions")
    assert set(r.json()["fields"]) == {"envVars"}  # OpenFaaS's name for the spec's env
    r = faas.post(
        "/system/functions",
        json={"service": "of-bad", "image": BUSYBOX, "limits": {"memory": "1Ki"}},
    )
    assert r.status_code == 422
    assert set(r.json()["fields"]) == {"limits.memory"}
    r = faas.request("DELETE", "/system/functions", json={"name": "of-bad"})
    assert r.status_code == 400
    assert "functionName" in r.json()["message"]
    assert faas.get("/system/function/of-bad").status_code == 404  # nothing was deployed


def test_swarmless_specs_still_deploy_at_the_same_path(gw: RunningGateway) -> None:
    with gw.http() as http:
        r = http.post(
            "/system/functions", json={"name": "of-native", "image": BUSYBOX, "command": ["cat"]}
        )
        assert r.status_code == 201, r.text
        assert r.json()["spec"]["command"] == ["cat"]  # swarmless's answer, unchanged
        r = http.put("/system/functions", json={"name": "of-native", "image": BUSYBOX})
        assert r.status_code == 200, r.text
        r = http.post("/system/functions", content=b"{not json")
        assert r.status_code == 400
        assert "must be JSON" in r.json()["message"]
        assert http.delete("/system/functions/of-native").status_code == 204


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (_basic("admin", TOKEN), 200),
        (f"Bearer {TOKEN}", 200),
        (f"bearer  {TOKEN}", 200),
        (_basic("admin", "wrong"), 401),
        (_basic("root", TOKEN), 401),  # OpenFaaS's user is admin
        (_basic("admin", ""), 401),
        ("Basic " + base64.b64encode(TOKEN.encode()).decode(), 401),  # no user:password
        ("Basic !!not-base64!!", 401),
        (f"Basic {TOKEN}", 401),
        (f"Token {TOKEN}", 401),
        ("", 401),
    ],
    ids=lambda v: str(v)[:24],
)
def test_basic_auth_is_the_admin_token(gw: RunningGateway, authorization: str, status: int) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    for path in ("/system/functions", "/system/info", "/invocations"):
        r = httpx.get(f"{gw.url}{path}", headers=headers, timeout=30)
        assert r.status_code == status, (path, r.text)
    if status == 401:
        assert "basic auth, user admin" in r.json()["message"]
    # An async call's answer takes the same credentials (an unknown call: 404 once let in).
    r = httpx.get(f"{gw.url}/invocations/no-such-call/result", headers=headers, timeout=30)
    assert r.status_code == (404 if status == 200 else 401), r.text


def test_basic_auth_never_reaches_a_function(
    faas: httpx.Client, gw: RunningGateway, engine: docker.DockerClient
) -> None:
    r = faas.post(
        "/system/functions",
        json={
            "service": "of-env",
            "image": BUSYBOX,
            "envProcess": """sh -c 'printf "Content-Type: text/plain\\n\\n"; env'""",
            "annotations": {"com.swarmless.mode": "cgi"},  # the request's headers as env
        },
    )
    assert r.status_code == 202, r.text
    try:
        r = faas.post("/function/of-env", content=b"")  # httpx sends the basic credentials
        assert r.status_code == 200, r.text
        assert "REQUEST_METHOD=POST" in r.text
        sent = base64.b64encode(f"admin:{TOKEN}".encode()).decode()
        assert TOKEN not in r.text
        assert sent not in r.text
        assert "HTTP_AUTHORIZATION" not in r.text
    finally:
        faas.request("DELETE", "/system/functions", json={"functionName": "of-env"})


def test_openfaas_routes_are_described(schema: dict[str, Any]) -> None:
    paths = schema["paths"]
    for path, method in (
        ("/system/functions", "delete"),
        ("/system/function/{name}", "get"),
        ("/system/scale-function/{name}", "post"),
        ("/system/info", "get"),
    ):
        op = paths[path][method]
        assert op["tags"] == ["openfaas"]
        assert op["security"] == [{"bearer": []}, {"basic": []}]
    body = paths["/system/functions"]["post"]["requestBody"]["content"]["application/json"]
    refs = {s["$ref"].rsplit("/", 1)[1] for s in body["schema"]["oneOf"]}
    assert refs == {"FunctionSpecBody", "FunctionDeployment"}
    assert schema["components"]["securitySchemes"]["basic"]["scheme"] == "basic"
    deployment = schema["components"]["schemas"]["FunctionDeployment"]
    assert set(deployment["required"]) == {"service", "image"}
    assert json.dumps(deployment).count("additionalProperties") >= 1
