"""The attack battery: a hostile function tries to leave its box through the scoped Docker API.

One attacker function (warm, ``docker: scoped``) runs every attempt of
:mod:`tests.security.probe` from inside its real container, with raw sockets, the Docker SDK
for Python and the docker CLI of Debian's docker.io; the test then reads the engine itself.
Around it, the arena: a neighbour function with a child of its own and an image of its own,
a stand-in for the gateway's container (with an exec), a database reachable as ``db`` on the
function network, and containers of "another instance", two of which name the attacker as
their parent.

Each attempt is one test item (``test_attempt[<class>-<name>]``), judged on what the
attacker saw AND on the engine: nothing it created outside the rules (found by the label
``swarmless-attack=<run>:<attempt>`` or the attempt's evidence name, on the engine's
events, even if it was removed since), every child it left within the rules. Then the whole
engine: the neighbours untouched (state and events), no new network, volume or image, the
children cap held under a burst of 2 x cap parallel creates, no Swarm, no function deployed
with a stolen token.

Run: ``.venv/bin/pytest tests/security -m security -q`` (``-m "security and not slow"``
skips the 200 CLI runs in a row).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from tests.conftest import BUSYBOX, PYTHON, SESSION
from tests.gateway_harness import RunningGateway
from tests.security.attack_harness import (
    FORGED_LABELS,
    EngineView,
    EventLog,
    child_problems,
    essentials_of,
    forged_image,
    probe_image,
)
from tests.security.probe import ATTEMPTS, MARK, Attempt, evidence_name

pytestmark = [pytest.mark.security, pytest.mark.timeout(900)]

PREFIX = "swarmless-test-sec"
RUN = uuid.uuid4().hex[:8]
#: Children one caller may have at once (the policy's default cap).
CAP = 20
#: ``docker run --rm busybox echo hi`` runs in the battery; the slow test runs 200 in a row.
#: When the slow test is selected too, the battery's attempt runs only a few: the same
#: check (``probe._cli_echo``) on the same arena, whose 200 runs follow.
CLI_RUNS = 30
CLI_RUNS_WITH_SLOW = 3
CLI_RUNS_SLOW = 200
SLOW_CLI_TEST = "test_the_docker_cli_runs_200_times_in_a_row"
MEMORY_CAP = 256 * 1024**2
CPU_CAP = 1.0
OTHER_INSTANCE = f"other-{SESSION}"
BY_NAME = {a.name: a for a in ATTEMPTS}


@dataclasses.dataclass
class Arena:
    gw: RunningGateway
    engine: docker.DockerClient
    view: EngineView
    ctx: dict[str, Any]
    probe_id: str
    watched: dict[str, str]
    before: dict[str, Any]
    results: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    races: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    evidence: dict[str, list[str]] = dataclasses.field(default_factory=lambda: defaultdict(list))
    after: dict[str, Any] = dataclasses.field(default_factory=dict)
    log: list[str] = dataclasses.field(default_factory=list)

    def invoke(self, name: str, body: dict[str, Any], timeout: float = 400) -> Any:
        with self.gw.http(token=None, timeout=timeout) as http:
            r = http.post(f"/function/{name}", content=json.dumps(body).encode())
        assert r.status_code == 200, f"{name} {body.get('phase')}: {r.status_code} {r.text[:2000]}"
        return r.json()

    def phase(self, phase: str, **extra: Any) -> Any:
        return self.invoke("attacker", {**self.ctx, **extra, "phase": phase})

    def children(self) -> list[str]:
        # Another instance's containers that name the attacker are decoys, not children.
        flt = {
            "label": [
                f"swarmless.parent={self.probe_id}",
                f"swarmless.gateway={self.gw.instance}",
            ]
        }
        return [c["Id"] for c in self.engine.api.containers(all=True, filters=flt)]

    def problems(self, child: dict[str, Any]) -> list[str]:
        return child_problems(
            child,
            parent=self.probe_id,
            instance=self.gw.instance,
            network=self.gw.settings.network,
            session=SESSION,
            forbidden_aliases=self.ctx["forbidden_aliases"],
            memory_cap=MEMORY_CAP,
            cpu_cap=CPU_CAP,
        )


def _state(engine: docker.DockerClient, cid: str) -> tuple[str, str] | None:
    try:
        s = engine.api.inspect_container(cid)["State"]
    except docker.errors.NotFound:
        return None
    return s["Status"], s["StartedAt"]


def _wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _deploy(gw: RunningGateway, **spec: Any) -> None:
    with gw.http() as http:
        r = http.post("/system/functions", json=spec)
        assert r.status_code in (200, 201), r.text


def _decoy(
    engine: docker.DockerClient, name: str, labels: dict[str, str], cmd: list[str], **kw: Any
) -> str:
    c = engine.api.create_container(
        BUSYBOX, cmd, name=f"{PREFIX}-{name}-{SESSION}", labels=labels, **kw
    )
    engine.api.start(c["Id"])
    return str(c["Id"])


def _read_evidence(arena: Arena) -> None:
    """Attribute what the engine saw created during the battery to the attempts."""
    engine, run = arena.engine, RUN
    by_evidence = {evidence_name(PREFIX, run, a.slug): a.slug for a in ATTEMPTS}
    for e in arena.events:
        kind, action = e.get("Type"), str(e.get("Action") or e.get("status") or "")
        actor = e.get("Actor") or {}
        attrs = actor.get("Attributes") or {}
        if kind == "container" and action == "create":
            mark = str(attrs.get(MARK, ""))
            parent = attrs.get("swarmless.parent")
            if not mark.startswith(f"{run}:") and parent != arena.probe_id:
                continue
            slug = mark.partition(":")[2] or "unmarked child"
            wrong = {
                k: attrs.get(k)
                for k, v in {
                    "swarmless.parent": arena.probe_id,
                    "swarmless.kind": "child",
                    "swarmless.gateway": arena.gw.instance,
                    "swarmless.managed": "true",
                }.items()
                if attrs.get(k) != v
            }
            if wrong:
                arena.evidence[slug].append(
                    f"the engine created container {actor.get('ID', '')[:12]} "
                    f"({attrs.get('image')}) without the child labels: {wrong}"
                )
        name = str(attrs.get("name") or actor.get("ID") or "")
        for evidence, slug in by_evidence.items():
            if evidence in name and action in (
                "create",
                "tag",
                "import",
                "commit",
                "pull",
                "rename",
            ):
                arena.evidence[slug].append(f"the engine did {kind} {action} {name}")
    for row in arena.view.marked():
        slug = str(row["Labels"].get(MARK, "")).partition(":")[2]
        child = essentials_of(engine, row["Id"])
        if child is not None and (wrong := arena.problems(child)):
            arena.evidence[slug].append(f"container {row['Id'][:12]} on the engine: {wrong}")


@pytest.fixture(scope="module")
def arena(
    engine: docker.DockerClient,
    labels: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Arena]:
    slow_cli = any(item.name == SLOW_CLI_TEST for item in request.session.items)
    view = EngineView(engine, PREFIX, RUN)
    image_labels = {"swarmless.test": SESSION}
    attacker_image = probe_image(engine, f"{PREFIX}/probe-{RUN}:{SESSION}", PYTHON, image_labels)
    secret_image = f"{PREFIX}/tenant-b-secret-{RUN}:{SESSION}"
    engine.images.get(attacker_image).tag(secret_image)
    forged = forged_image(engine, f"{PREFIX}/forged-{RUN}:{SESSION}", BUSYBOX, image_labels)
    images = (attacker_image, secret_image, forged)
    data_dir = tmp_path_factory.mktemp("security")
    gw = RunningGateway(
        data_dir,
        labels,
        network=f"{PREFIX}-{RUN}-{SESSION}",
        proxy_images=(BUSYBOX, forged),
    )
    decoys: list[str] = []
    try:
        gw.start()
        network = gw.settings.network
        other = {
            "swarmless.managed": "true",
            "swarmless.kind": "child",
            "swarmless.gateway": OTHER_INSTANCE,
            "swarmless.test": SESSION,
        }
        standin = _decoy(
            engine,
            "gateway",
            {"swarmless.managed": "true", "swarmless.kind": "gateway", "swarmless.test": SESSION},
            ["sleep", "900"],
        )
        decoys.append(standin)
        standin_exec = engine.api.exec_create(standin, ["true"])["Id"]
        endpoint = engine.api.create_endpoint_config(aliases=["db"])
        db = _decoy(
            engine,
            "db",
            {"swarmless.test": SESSION},
            ["sleep", "900"],
            host_config=engine.api.create_host_config(network_mode=network),
            networking_config=engine.api.create_networking_config({network: endpoint}),
        )
        decoys.append(db)
        db_ip = engine.api.inspect_container(db)["NetworkSettings"]["Networks"][network][
            "IPAddress"
        ]
        victim = _decoy(engine, "victim", {**other, "swarmless.parent": "x" * 64}, ["sleep", "900"])
        decoys.append(victim)
        _deploy(
            gw,
            name="neighbour",
            image=secret_image,
            mode="warm",
            handler="probe:make_child",
            docker="scoped",
            # One container kept up through the whole battery (longer than the scale-to-zero
            # window on a loaded machine), never a second one whose scale-down could retire
            # the one that served: only an attack may change it, never the autoscaler.
            min_containers=1,
            max_containers=1,
        )
        _deploy(
            gw,
            name="attacker",
            image=attacker_image,
            mode="warm",
            handler="probe:handle",
            docker="scoped",
            timeout=600,
            max_containers=1,
        )
        with gw.http(token=None, timeout=120) as http:
            r = http.post("/function/neighbour", content=b"{}")
            assert r.status_code == 200, r.text
            kept = r.json()
        sibling = kept["child"]
        worker = engine.api.inspect_container(kept["me"])["Id"]
        ctx: dict[str, Any] = {
            "run": RUN,
            "prefix": PREFIX,
            "instance": gw.instance,
            "cap": CAP,
            "cli_runs": CLI_RUNS_WITH_SLOW if slow_cli else CLI_RUNS,
            "network": network,
        }
        arena = Arena(gw, engine, view, ctx, "", {}, {})
        hostname = arena.phase("whoami")["hostname"]
        probe_id = str(engine.api.inspect_container(hostname)["Id"])
        foreign = _decoy(
            engine, "foreign", {**other, "swarmless.parent": probe_id}, ["sleep", "900"]
        )
        decoys.append(foreign)
        foreign_exited = _decoy(
            engine, "foreign-exited", {**other, "swarmless.parent": probe_id}, ["true"]
        )
        decoys.append(foreign_exited)
        _wait_until(
            lambda: (_state(engine, foreign_exited) or ("",))[0] == "exited", 30, "exited decoy"
        )
        standin_name = f"{PREFIX}-gateway-{SESSION}"
        ctx.update(
            me=probe_id,
            gateway=standin,
            gateway_name=standin_name,
            gateway_exec=standin_exec,
            sibling=sibling,
            worker=worker,
            victim=victim,
            db=db,
            db_ip=db_ip,
            foreign_child=foreign,
            foreign_exited=foreign_exited,
            forged=forged,
            forged_labels=FORGED_LABELS,
            other_image=PYTHON,
            other_image_id=engine.images.get(PYTHON).id,
            secret_image=secret_image,
            self_image=attacker_image,
            data_dir=str(Path(data_dir).resolve()),
            forbidden_aliases=["db", standin_name, worker[:12], sibling[:12], hostname],
        )
        arena.probe_id = probe_id
        arena.watched = {
            "gateway stand-in": standin,
            "database": db,
            "another instance's container": victim,
            "another instance's child naming the attacker": foreign,
            "another instance's exited child naming the attacker": foreign_exited,
            "neighbour's worker": worker,
            "neighbour's child": sibling,
        }
        arena.before = {
            "states": {k: _state(engine, v) for k, v in arena.watched.items()},
            "networks": view.networks(),
            "volumes": view.volumes(),
            "images": view.images(),
        }
        t0 = int(time.time()) + 1
        _wait_until(lambda: time.time() >= t0, 3, "the next second")  # events: whole seconds
        ctx["t0"] = t0
        log = EventLog(engine, t0, forged)
        for kind in ("raw", "sdk"):
            got = arena.phase("race", kind=kind)
            got["engine"] = len(arena.children())
            arena.races[kind] = got
        started = time.monotonic()
        for row in arena.phase("battery"):
            arena.results[row["name"]] = row
        arena.log.append(f"battery: {time.monotonic() - started:.1f}s")
        arena.phase("cleanup")
        arena.events = log.stop()
        _read_evidence(arena)
        arena.after = {
            "states": {k: _state(engine, v) for k, v in arena.watched.items()},
            "networks": view.networks(),
            "volumes": view.volumes(),
            "images": view.images(),
            "children": arena.children(),
            "swarm": engine.info()["Swarm"]["LocalNodeState"],
        }
        with gw.http() as http:
            arena.after["functions"] = sorted(
                f["name"] for f in http.get("/system/functions").json()
            )
        _print_report(arena)
        yield arena
    finally:
        gw.stop(engine)
        for cid in decoys:
            with contextlib.suppress(docker.errors.DockerException):
                engine.api.remove_container(cid, force=True)
        view.clean()
        for tag in images:
            with contextlib.suppress(docker.errors.DockerException):
                engine.images.remove(tag, force=True)


def _print_report(arena: Arena) -> None:
    lines = [
        f"{len(arena.results)} attempts, {len(arena.events)} engine events; {'; '.join(arena.log)}"
    ]
    for name, row in arena.results.items():
        problems = judge(BY_NAME[name], row, arena)
        flag = "FAIL" if problems else "ok  "
        lines.append(
            f"{flag} {row['cls']:9} {row.get('status')!s:4} {row['secs']:5.1f}s {name[:70]:70} "
            f"{str(row.get('message'))[:90]!r}"
        )
    print("\n".join(lines))


def judge(a: Attempt, got: dict[str, Any], arena: Arena) -> list[str]:
    """Why attempt ``a`` went wrong (empty: it was contained)."""
    out: list[str] = []
    status = got.get("status")
    message = str(got.get("message"))
    refused = isinstance(status, int) and 400 <= status < 500
    children = got.get("children") or []
    secret = str(arena.ctx["secret_image"]).split(":")[0]
    if secret in message:
        out.append(f"the answer names another function's image: {message[:300]}")
    if not got.get("alive", False):
        out.append("the proxy no longer answers a ping after this attempt")
    if got.get("children_error"):
        out.append(f"could not list the children after it: {got['children_error']}")
    if a.expect in ("refused", "http") and children:
        made = [f"{c['Id'][:12]} {arena.problems(c) or 'well-formed'}" for c in children]
        out.append(f"it left children: {made}")
    if a.expect in ("ok", "contained", "smuggle"):
        for c in children:
            if wrong := arena.problems(c):
                out.append(f"child {c['Id'][:12]}: {wrong}")
    out += [f"engine: {e}" for e in arena.evidence.get(a.slug, [])]
    if a.expect == "refused" and not refused:
        out.append(f"not refused: {status} {message[:300]}")
    elif a.expect == "http":
        # 501: a transfer coding the server does not implement (RFC 9112, 6.1).
        if not (status is None and got.get("closed")) and not refused and status != 501:
            out.append(f"not a 4xx nor a closed connection: {status} closed={got.get('closed')}")
        if any(200 <= s < 300 for s in got.get("statuses") or []):
            out.append(f"a 2xx came back: {got.get('statuses')}")
    elif a.expect == "smuggle":
        later = (got.get("statuses") or [])[1:]
        if any(200 <= s < 300 for s in later):
            out.append(f"the bytes after the first request were answered: {got.get('statuses')}")
    elif a.expect == "ok" and not got.get("ok"):
        out.append(f"check failed: {message[:1500]}")
    elif a.expect == "contained" and not refused and status != 200:
        out.append(f"neither refused nor allowed: {status} {message[:300]}")
    return out


# -- one item per attempt ---------------------------------------------------------------


@pytest.mark.parametrize("name", [a.name for a in ATTEMPTS], ids=[a.slug for a in ATTEMPTS])
def test_attempt(arena: Arena, name: str) -> None:
    got = arena.results.get(name)
    assert got is not None, f"the battery did not run {name!r}"
    problems = judge(BY_NAME[name], got, arena)
    assert not problems, f"{name}:\n  " + "\n  ".join(problems) + f"\n  seen: {got}"


def test_the_battery_is_broad() -> None:
    classes = Counter(a.cls for a in ATTEMPTS)
    assert len(ATTEMPTS) >= 110, classes
    for cls in ("hijack", "limits", "values", "leaks", "escapes", "http", "stdio", "tokens"):
        assert classes[cls] >= 5, classes


# -- the engine after the whole battery ---------------------------------------------------


@pytest.mark.parametrize("kind", ["raw", "sdk"])
def test_children_cap_holds_under_parallel_creates(arena: Arena, kind: str) -> None:
    race = arena.races[kind]
    made = race["codes"].count(201)
    assert made <= CAP, f"{made} of {2 * CAP} parallel creates succeeded (cap {CAP}): {race}"
    assert race["engine"] <= CAP, f"{race['engine']} children on the engine (cap {CAP})"
    assert race["listed"] <= CAP
    assert made >= 1, f"no create succeeded at all: {race}"
    assert not arena.evidence.get("race"), arena.evidence["race"]


def test_neighbours_are_untouched(arena: Arena) -> None:
    before, after = arena.before["states"], arena.after["states"]
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert not changed, f"containers that are not the attacker's changed: {changed}"
    events = [
        f"{e.get('Type')} {e.get('Action')} {k}"
        for e in arena.events
        for k, v in arena.watched.items()
        if (e.get("Actor") or {}).get("ID") == v or e.get("id") == v
    ]
    assert not events, f"engine events on containers that are not the attacker's: {events}"


def test_nothing_new_on_the_engine(arena: Arena) -> None:
    for what in ("networks", "volumes", "images"):
        new = arena.after[what] - arena.before[what]
        assert not new, f"new {what}: {sorted(new)}"
    assert arena.after["swarm"] == "inactive"
    assert arena.after["functions"] == ["attacker", "neighbour"]


def test_children_left_are_well_formed_and_within_the_cap(arena: Arena) -> None:
    assert len(arena.after["children"]) <= CAP
    wrong = {}
    for cid in arena.after["children"]:
        child = essentials_of(arena.engine, cid)
        if child is not None and (problems := arena.problems(child)):
            wrong[cid[:12]] = problems
    assert not wrong
    unmarked = arena.evidence.get("unmarked child", [])
    assert not unmarked, unmarked


@pytest.mark.slow
def test_the_docker_cli_runs_200_times_in_a_row(arena: Arena) -> None:
    got = arena.phase("cli-repeat", cli_runs=CLI_RUNS_SLOW)
    assert got["ok"], got["detail"]
