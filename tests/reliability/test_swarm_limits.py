"""The single-engine backend's limits, on a Swarm: every function service carries a PIDs
limit, a CPU limit and a log size (the gateway's defaults unless its spec says otherwise),
and a one-shot call's answer is bounded by ``max_output``.

On the shared 3-node test Swarm (the ``cluster`` fixture), through a gateway named
``hrel-...`` whose services carry ``swarmless.test=helper-rel``; what is checked is the
service's spec as the manager holds it, the container as its node's engine made it, and
what a function sees from inside its cgroup.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from swarmless.backends.swarm_limits import ONESHOT_LOG_FACTOR
from tests.conftest import BUSYBOX
from tests.reliability.own_gateway import OwnSwarmGateway
from tests.swarm_harness import Cluster, wait_for

pytestmark = [pytest.mark.swarm, pytest.mark.fault]

MiB = 1024 * 1024

#: Reads its cgroup's PIDs limit; a child shell asks for 100 background processes (it
#: exits at the first fork refused); counts the processes there are then (a glob: no fork
#: needed), ends them all, and says what it saw (the refusal is on its stderr).
FORKS = r"""
max=?
for f in /sys/fs/cgroup/pids.max /sys/fs/cgroup/pids/pids.max; do
  [ -r $f ] && read max < $f
done
sh -c 'i=0; while [ $i -lt 100 ]; do sleep 30 & i=$((i+1)); done'
inner=$?
set -- /proc/[0-9]*
procs=$#
kill -9 -1 2>/dev/null
echo "max=$max procs=$procs inner=$inner"
exit 0
"""


@pytest.fixture(scope="module")
def gw(
    cluster: Cluster, swarm_warm_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OwnSwarmGateway]:
    g = OwnSwarmGateway(cluster, tmp_path_factory.mktemp("hrel-swarm")).start()
    yield g
    g.stop()
    assert g.services() == []


def _limits(service: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    template = service["Spec"]["TaskTemplate"]
    return (template.get("Resources") or {}).get("Limits") or {}, template.get("LogDriver") or {}


def _container(gw: OwnSwarmGateway, service_id: str) -> dict[str, Any]:
    """The container of the service's running task, inspected on its node."""
    node = wait_for(lambda: gw.backend.placement().get(service_id), 60, "the task placed on a node")
    engine = gw.cluster.engine(node)
    flt = {"label": f"com.docker.swarm.service.id={service_id}"}
    found = wait_for(lambda: engine.api.containers(filters=flt), 60, "the task's container")
    return dict(engine.api.inspect_container(found[0]["Id"]))


def test_warm_services_carry_the_default_limits_and_the_specs_own(
    gw: OwnSwarmGateway, swarm_warm_image: str
) -> None:
    s = gw.settings
    assert gw.backend.limits.log_driver == "json-file", gw.backend.limits
    node_cpus = gw.backend.limits.node_cpus
    gw.deploy(
        name="plain", image=swarm_warm_image, mode="warm", handler="handler:where", min_containers=1
    )
    gw.deploy(
        name="tight",
        image=swarm_warm_image,
        mode="warm",
        handler="handler:where",
        min_containers=1,
        pids=64,
        cpus=0.5,
        log_size="2m",
    )
    wait_for(lambda: gw.ready("plain") == 1 and gw.ready("tight") == 1, 120, "both ready")
    with gw.http(token=None) as http:
        for name in ("plain", "tight"):
            assert http.post(f"/function/{name}").status_code == 200
    expected = {
        "plain": (s.function_pids, int(min(s.function_cpus, node_cpus) * 1e9), s.function_log_size),
        "tight": (64, int(0.5e9), 2 * MiB),
    }
    seen = {}
    for name, (pids, nano, log_size) in expected.items():
        (service,) = gw.services(**{"swarmless.function": name})
        limits, log = _limits(service)
        assert limits.get("Pids") == pids, limits
        assert limits.get("NanoCPUs") == nano, limits
        assert log == {
            "Name": "json-file",
            "Options": {"max-size": str(log_size // 2), "max-file": "2"},
        }, log
        host = _container(gw, service["ID"])["HostConfig"]
        assert host["PidsLimit"] == pids, host["PidsLimit"]
        assert host["NanoCpus"] == nano, host["NanoCpus"]
        assert host["LogConfig"]["Config"]["max-size"] == str(log_size // 2), host["LogConfig"]
        seen[name] = (host["PidsLimit"], host["NanoCpus"], host["LogConfig"]["Config"])
    print(f"\n[swarm limits] warm containers on their nodes: {seen}")


def test_a_oneshot_asking_for_more_processes_than_its_limit_is_contained(
    gw: OwnSwarmGateway,
) -> None:
    gw.deploy(
        name="forks",
        image=BUSYBOX,
        mode="oneshot",
        command=["sh", "-c", FORKS],
        pids=32,
        timeout=60,
    )
    with gw.http(token=None, timeout=120) as http:
        r = http.post("/function/forks")
        assert r.status_code == 200, r.text
        out = r.text.strip()
        call = r.headers["x-call-id"]
    fields = dict(part.split("=") for part in out.split())
    assert fields["max"] == "32", out
    assert int(fields["procs"]) <= 32, out  # 100 asked for
    assert fields["inner"] != "0", out  # the shell that asked was refused
    with gw.http() as http:
        stderr = http.get(f"/invocations/{call}/logs").json()["stderr"]
    # The refused forks said so (the script then ended what it had and exited 0).
    assert "fork" in stderr.lower(), stderr
    wait_for(lambda: not gw.services(**{"swarmless.call": call}), 30, "the call's service gone")
    print(
        f"\n[swarm limits] one-shot asking for 100 processes with pids 32: {out}; "
        f"stderr {stderr.strip()!r}"
    )


def test_a_oneshot_answer_is_bounded_by_max_output_on_the_swarm(gw: OwnSwarmGateway) -> None:
    gw.deploy(
        name="flood",
        image=BUSYBOX,
        mode="oneshot",
        command=["sh", "-c", "head -c 3000 /dev/zero | tr '\\0' a"],
        max_output="1k",
        timeout=60,  # as the two below: a task once stayed "preparing" past the default 30 s
    )
    # 200,000 empty lines: 200 kB, under its max_output (256 KiB), but some 14 MB in the
    # json-file log, which rotates at 2 MiB: read back, its beginning would be gone. It is
    # refused, never answered cut.
    gw.deploy(
        name="lines",
        image=BUSYBOX,
        mode="oneshot",
        command=["sh", "-c", "yes '' | head -n 200000"],
        max_output="256k",
        log_size="1m",
        timeout=60,
    )
    # timeout 60 as "lines": the full suite once found its task still "preparing" on a
    # loaded in-container node when the default 30 s ran out.
    gw.deploy(
        name="fits",
        image=BUSYBOX,
        mode="oneshot",
        command=["cat"],
        max_output="256k",
        timeout=60,
    )
    with gw.http(token=None, timeout=120) as http:
        r = http.post("/function/flood")
        assert r.status_code == 502, r.text
        assert "max_output" in r.json()["message"], r.text
        assert "1024" in r.json()["message"], r.text
        r = http.post("/function/lines")
        assert r.status_code == 502, r.text
        assert "max_output" in r.json()["message"], r.text
        lines = r.headers["x-call-id"]
        body = b"x" * 200_000
        r = http.post("/function/fits", content=body)
        assert (r.status_code, len(r.content)) == (200, len(body)), r.text[:200]
    # What the log still held (kept with the call's record) is indeed cut: the case it is.
    with gw.http() as http:
        kept = http.get(f"/invocations/{lines}/logs").json()["stdout"]
    assert len(kept) < 200_000, len(kept)
    for name in ("flood", "lines", "fits"):
        spec, _ = gw.gateway.dispatcher.functions[name]
        size = gw.backend.limits.log_file_size(spec, oneshot=True)
        assert size >= ONESHOT_LOG_FACTOR * spec.max_output, (name, size)
    print(
        "\n[swarm limits] one-shot answers: 3000 B over max_output 1k -> 502; 200,000 empty "
        f"lines whose log rotated (it held {len(kept):,} of them) -> 502; 200,000 B within "
        "256k -> 200, whole"
    )
