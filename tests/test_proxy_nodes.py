"""GET /nodes and classic Swarm placement through the scoped Docker API (pure parts).

The Swarm end to end is tests/test_swarm_children.py; here the policy's reading of
``constraint:`` entries, the node rows and filters, a checked create made a service, and
``GET /nodes`` and placement through the scoped API of one engine, from a function.
"""

from __future__ import annotations

import json

import docker
import pytest

from swarmless.proxy import Caller, ProxyRequest, check
from swarmless.proxy.nodes import (
    constraints,
    engine_node,
    filtered,
    node_row,
    single_engine_placement,
)
from swarmless.proxy.rules import Refused
from swarmless.proxy.swarm_spec import LABEL_STATE, Child, inspect_shape, task_spec
from tests.conftest import BUSYBOX, SESSION
from tests.gateway_harness import RunningGateway
from tests.test_proxy import deploy, invoke, sdk_image  # noqa: F401  (the SDK image)

IMAGES = {"docker.io/library/busybox:latest": "busybox"}
CALLER = Caller(container="p" * 25, function="fn", network="net")


def _create(env: list[str]) -> tuple[bool, int, str, tuple[tuple[str, str], ...], dict]:
    body = json.dumps({"Image": "busybox", "Cmd": ["true"], "Env": env}).encode()
    v = check(ProxyRequest("POST", "/v1.41/containers/create", "", body, CALLER, images=IMAGES))
    sent = json.loads(v.body) if v.body else {}
    return v.allowed, v.status, v.message, v.placement, sent


def test_constraints_are_consumed_and_placed() -> None:
    allowed, _, _, placement, sent = _create(
        ["A=1", "constraint:node==node-2", "constraint:node!=node-3"]
    )
    assert allowed
    assert placement == (("==", "node-2"), ("!=", "node-3"))
    assert sent["Env"] == ["A=1"]  # the child never sees them
    assert constraints(placement) == ["node.hostname==node-2", "node.hostname!=node-3"]


@pytest.mark.parametrize(
    "entry",
    [
        "constraint:node==~node-2",  # classic Swarm's soft constraint
        "constraint:storage==ssd",
        "constraint:node==a,node.role==manager",
        "constraint:node==a node.role==manager",
        "constraint:node==a\nnode.role==manager",
        "constraint:node==",
        "Constraint:node.role==manager",
        "affinity:container==db",
        "affinity:image==busybox",
    ],
)
def test_other_placement_syntax_is_refused_not_ignored(entry: str) -> None:
    allowed, status, message, _, _ = _create([entry])
    assert not allowed
    assert status == 400
    assert "(rule constraint)" in message


def test_nodes_show_six_fields_and_filter() -> None:
    full = {
        "ID": "abc123",
        "Description": {"Hostname": "n1", "Engine": {"Labels": {"secret": "x"}}, "TLSInfo": {}},
        "Status": {"State": "ready", "Addr": "10.0.0.1", "Message": "m"},
        "Spec": {"Availability": "active", "Role": "worker", "Labels": {"zone": "a"}},
        "ManagerStatus": {"Leader": True},
    }
    row = node_row(full)
    assert row == {
        "ID": "abc123",
        "Description": {"Hostname": "n1"},
        "Status": {"State": "ready", "Addr": "10.0.0.1"},
        "Spec": {"Availability": "active", "Role": "worker"},
    }
    engine = engine_node({"ID": "E:N:G", "Name": "host-a"}, "172.18.0.1")
    assert engine["Description"]["Hostname"] == "host-a"
    assert (engine["Status"]["State"], engine["Spec"]["Role"]) == ("ready", "manager")
    rows = [row, engine]
    assert filtered(rows, "") == rows
    assert filtered(rows, "filters=" + json.dumps({"role": ["manager"]})) == [engine]
    assert filtered(rows, "filters=" + json.dumps({"name": {"n1": True}})) == [row]
    with pytest.raises(Refused):
        filtered(rows, "filters=" + json.dumps({"node.label": ["zone=a"]}))


def test_single_engine_placement() -> None:
    assert single_engine_placement((("==", "host-a"),), "host-a") is None
    assert single_engine_placement((("!=", "other"),), "host-a") is None
    assert single_engine_placement((("==", "other"),), "host-a")
    assert single_engine_placement((("!=", "host-a"),), "host-a")


def test_a_checked_create_becomes_a_service_and_reads_back_as_a_container() -> None:
    allowed, _, _, placement, sent = _create(["A=1", "constraint:node==n2"])
    assert allowed
    template, labels = task_spec(sent, network="net", constraints=constraints(placement))
    spec = template["ContainerSpec"]
    assert spec["Env"] == ["A=1"]
    assert spec["Labels"]["swarmless.parent"] == CALLER.container
    assert template["RestartPolicy"]["Condition"] == "none"
    assert template["Placement"]["Constraints"] == ["node.hostname==n2"]
    assert template["Resources"]["Limits"]["MemoryBytes"] == CALLER.memory
    assert template["Resources"]["Limits"]["Pids"] == CALLER.pids
    assert labels[LABEL_STATE] == "created"
    service = {
        "ID": "s" * 25,
        "CreatedAt": "2026-12-01T12:00:00.123456789Z",
        "Spec": {"Name": "fn-x", "Labels": labels, "TaskTemplate": dict(template)},
    }
    shown = inspect_shape(Child(service, None))
    assert shown["State"]["Status"] == "created"
    assert "swarmless.child-state" not in shown["Config"]["Labels"]
    assert shown["HostConfig"]["LogConfig"]["Type"] == "json-file"
    assert shown["Config"]["Tty"] is False


@pytest.mark.parametrize(
    ("field", "value"),
    [("Tty", True), ("OpenStdin", True), ("Healthcheck", {"Test": ["CMD", "true"]})],
)
def test_fields_without_a_swarm_equivalent_are_refused(field: str, value: object) -> None:
    allowed, _, _, _, sent = _create([])
    assert allowed
    with pytest.raises(Refused) as e:
        task_spec({**sent, field: value}, network="net", constraints=[])
    assert e.value.rule == "swarm"


# -- on one engine, end to end ------------------------------------------------------------

ONE_ENGINE = r"""
import json, os
import docker, docker.errors
c = docker.from_env(version="1.41")
rows = c.api._result(c.api._get(c.api._url("/nodes")), json=True)
me = rows[0]["Description"]["Hostname"]
out = {"nodes": rows}
out["here"] = c.containers.run(
    os.environ["CHILD_IMAGE"], ["sh", "-c", "echo $A; env | grep -c constraint || true"],
    environment=["A=placed", f"constraint:node=={me}"], remove=True).decode()
for name, env in {"elsewhere": f"constraint:node==not-{me}", "not here": f"constraint:node!={me}",
                  "soft": f"constraint:node==~{me}"}.items():
    try:
        c.containers.create(os.environ["CHILD_IMAGE"], ["true"], environment=[env])
        out[name] = None
    except docker.errors.APIError as e:
        out[name] = [e.status_code, str(e.explanation)]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_nodes_and_placement_on_one_engine(
    engine: docker.DockerClient,
    labels: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    sdk_image: str,  # noqa: F811
) -> None:
    g = RunningGateway(
        tmp_path_factory.mktemp("proxy-nodes"),
        labels,
        network=f"swarmless-test-nodes-{SESSION}",
        proxy_images=(BUSYBOX,),
    ).start()
    try:
        deploy(
            g,
            name="placer",
            image=sdk_image,
            command=["python3", "-c", ONE_ENGINE],
            env={"CHILD_IMAGE": BUSYBOX},
            docker="scoped",
            timeout=120,
        )
        out = json.loads(invoke(g, "placer").text)
        (node,) = out["nodes"]
        assert node["Description"]["Hostname"] == engine.info()["Name"]
        assert (node["Status"]["State"], node["Spec"]["Role"]) == ("ready", "manager")
        assert set(node) == {"ID", "Description", "Status", "Spec"}
        assert out["here"] == "placed\n0\n"  # run, and the constraint was not passed on
        for name in ("elsewhere", "not here", "soft"):
            assert out[name] is not None, name
            assert out[name][0] == 400, out[name]
            assert "rule constraint" in out[name][1]
    finally:
        g.stop(engine)
    assert g.containers(engine) == []
