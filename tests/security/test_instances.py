"""Two instances on one engine cannot remove each other's containers, with any command.

Instances A and B (plain ``run()``s, each with its own name and data directory, so its own
owner id), a gateway G with a warm container, and two *forged* containers: made (not by
swarmless) from images whose ``LABEL`` lines claim A's and B's instance, owner id,
gateway and ``swarmless.managed`` - as if their authors had read the ids off the engine.
Containers inherit their image's labels, so on ``docker inspect`` the forged ones look
exactly like A's and B's own. Then ``swarmless gc`` (as a real process, with
``SWARMLESS_INSTANCE``/``SWARMLESS_DATA_DIR`` of one instance) and the voting app's
``run.sh down`` (``--name``/``--data-dir`` of one instance; no images are built, it goes by
labels only) must remove that instance's containers and nothing else, either way round.

Every container here carries ``swarmless.test=<session>`` and this module's run label,
set explicitly; images are tagged ``swarmless-test-instances/...`` and removed after.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

import swarmless
from swarmless.config import Settings
from swarmless.labels import LABEL_GATEWAY, LABEL_INSTANCE, LABEL_MANAGED, LABEL_OWNER
from swarmless.ownership import OWNER_FILE
from tests.conftest import BUSYBOX, SESSION, handler_image
from tests.gateway_harness import RunningGateway

pytestmark = pytest.mark.security

ROOT = Path(__file__).resolve().parents[2]
RUN_SH = ROOT / "examples" / "voting-app" / "run.sh"
#: On every container this module makes itself (its cleanup goes by it).
RUN = {"swarmless.test": SESSION, "swarmless.test-instances": uuid.uuid4().hex[:8]}
HANDLER = "def handle(event, context):\n    return {'ok': True}\n"


@dataclasses.dataclass
class Instance:
    """One swarmless instance: a name and a data directory (which holds its owner id)."""

    name: str
    data_dir: Path

    @property
    def settings(self) -> Settings:
        return Settings.load(instance=self.name, data_dir=self.data_dir)

    @property
    def owner(self) -> str:
        return (self.data_dir / OWNER_FILE).read_text().strip()

    def run_exited(self) -> str:
        """A detached plain run that has exited and stays (what ``gc`` is for)."""
        with swarmless.Client(settings=self.settings) as client:
            handle = client.run(BUSYBOX, ["true"], detach=True, remove=False, labels=RUN)
            assert handle.wait(timeout=60) == 0
            return handle.id

    def run_running(self) -> str:
        """A detached plain run that keeps running (``gc`` leaves it, ``down`` does not)."""
        with swarmless.Client(settings=self.settings) as client:
            handle = client.run(BUSYBOX, ["sleep", "300"], detach=True, remove=False, labels=RUN)
            return handle.id

    def env(self) -> dict[str, str]:
        return {"SWARMLESS_INSTANCE": self.name, "SWARMLESS_DATA_DIR": str(self.data_dir)}


def _context(dockerfile: str) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


@dataclasses.dataclass
class World:
    engine: docker.DockerClient
    a: Instance
    b: Instance
    #: The gateway's warm container (running; made by G, carries G's ownership labels).
    warm: str
    gateway: RunningGateway
    images: list[str] = dataclasses.field(default_factory=list)

    def forge(self, victim: Instance) -> str:
        """An exited container whose image claims to be ``victim``'s (made by docker)."""
        labels = {
            LABEL_MANAGED: "true",
            "swarmless.kind": "run",
            LABEL_INSTANCE: victim.name,
            LABEL_OWNER: victim.owner,
            LABEL_GATEWAY: victim.name,
        }
        tag = f"swarmless-test-instances/forged-{victim.name}:{SESSION}"
        if tag not in self.images:
            lines = " ".join(f'"{k}"="{v}"' for k, v in labels.items())
            self.engine.images.build(
                fileobj=_context(f"FROM {BUSYBOX}\nLABEL {lines}\n"),
                custom_context=True,
                tag=tag,
                rm=True,
                forcerm=True,
            )
            self.images.append(tag)
        cid = str(self.engine.api.create_container(tag, ["true"], labels=RUN)["Id"])
        self.engine.api.start(cid)
        assert self.engine.api.wait(cid, timeout=60)["StatusCode"] == 0
        got = self.engine.api.inspect_container(cid)["Config"]["Labels"]
        assert {k: got.get(k) for k in labels} == labels  # the forgery is complete
        return cid

    def exists(self, cid: str) -> bool:
        try:
            self.engine.api.inspect_container(cid)
        except docker.errors.NotFound:
            return False
        return True


@pytest.fixture(scope="module")
def gateway(
    engine: docker.DockerClient,
    labels: dict[str, str],
    build_image: Callable[..., str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningGateway, str]]:
    """Gateway G with one warm container (``min_containers=1``)."""
    image = handler_image(build_image, "instances-warm", HANDLER)
    gw = RunningGateway(tmp_path_factory.mktemp("inst-gw"), labels).start()
    try:
        with gw.http() as http:
            spec = {
                "name": "keep",
                "image": image,
                "mode": "warm",
                "handler": "handler:handle",
                "min_containers": 1,
            }
            r = http.post("/system/functions", json=spec)
            assert r.status_code in (200, 201), r.text
        found: list[str] = []

        def running() -> bool:
            rows = engine.api.containers(
                filters={"label": [f"{LABEL_GATEWAY}={gw.instance}", "swarmless.function=keep"]}
            )
            found[:] = [c["Id"] for c in rows if c["State"] == "running"]
            return bool(found)

        gw.wait_for(running, 90, "the warm container of G")
        yield gw, found[0]
    finally:
        gw.stop(engine)


@pytest.fixture
def world(
    engine: docker.DockerClient,
    gateway: tuple[RunningGateway, str],
    tmp_path: Path,
) -> Iterator[World]:
    tag = uuid.uuid4().hex[:6]
    w = World(
        engine=engine,
        a=Instance(f"test-inst-a-{SESSION}-{tag}", tmp_path / "a"),
        b=Instance(f"test-inst-b-{SESSION}-{tag}", tmp_path / "b"),
        gateway=gateway[0],
        warm=gateway[1],
    )
    try:
        yield w
    finally:
        flt = [f"{k}={v}" for k, v in RUN.items()]
        for c in engine.api.containers(all=True, filters={"label": flt}):
            with contextlib.suppress(docker.errors.DockerException):
                engine.api.remove_container(c["Id"], force=True, v=True)
        for image in w.images:
            with contextlib.suppress(docker.errors.DockerException):
                engine.images.remove(image)


def _swarmless(inst: Instance, *args: str) -> str:
    code = "import sys; from swarmless.cli import main; sys.exit(main())"
    p = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", **inst.env()},
        check=False,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def _down(inst: Instance) -> str:
    p = subprocess.run(
        [
            "bash",
            str(RUN_SH),
            "--name",
            inst.name,
            "--data-dir",
            str(inst.data_dir),
            "down",
            "--keep-images",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SWARMLESS_PYTHON": sys.executable, "COLUMNS": "200"},
        check=False,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def _listed(out: str) -> set[str]:
    """The short ids a removing command printed, one per line."""
    return {line.split()[0] for line in out.splitlines() if line.startswith("  ")}


def _short(*ids: str) -> set[str]:
    return {i[:12] for i in ids}


def test_every_container_carries_its_instance_and_owner(world: World) -> None:
    a_run = world.a.run_exited()
    labels = world.engine.api.inspect_container(a_run)["Config"]["Labels"]
    assert labels[LABEL_INSTANCE] == world.a.name
    assert labels[LABEL_OWNER] == world.a.owner
    assert len(world.a.owner) == 32
    assert (world.a.data_dir / OWNER_FILE).stat().st_mode & 0o077 == 0
    gw = world.gateway
    warm = world.engine.api.inspect_container(world.warm)["Config"]["Labels"]
    assert warm[LABEL_GATEWAY] == gw.instance
    assert warm[LABEL_INSTANCE] == gw.instance
    assert warm[LABEL_OWNER] == (gw.settings.data_dir / OWNER_FILE).read_text().strip()
    # A second client of the same instance finds the same id (it is kept, not remade).
    second = world.engine.api.inspect_container(world.a.run_exited())["Config"]["Labels"]
    assert second[LABEL_OWNER] == labels[LABEL_OWNER]


def test_gc_removes_its_own_instance_only_either_way_round(world: World) -> None:
    a_runs = [world.a.run_exited(), world.a.run_exited()]
    b_runs = [world.b.run_exited(), world.b.run_exited()]
    forged = [world.forge(world.a), world.forge(world.b)]

    # --all --dry-run: every instance's own exited containers, never a forged one.
    out = _swarmless(world.b, "gc", "--all", "--dry-run")
    assert "--all" in out
    assert _short(*a_runs, *b_runs) <= _listed(out), out
    assert not _listed(out) & _short(*forged, world.warm), out
    assert all(world.exists(c) for c in [*a_runs, *b_runs, *forged])

    out = _swarmless(world.b, "gc")
    assert _listed(out) == _short(*b_runs), out
    assert f"instance {world.b.name!r}" in out
    assert "left alone" in out
    assert "from their image" in out
    assert not any(world.exists(c) for c in b_runs)
    assert all(world.exists(c) for c in [*a_runs, *forged, world.warm])

    out = _swarmless(world.a, "gc")
    assert _listed(out) == _short(*a_runs), out
    assert not any(world.exists(c) for c in a_runs)
    assert all(world.exists(c) for c in [*forged, world.warm])

    # Nothing of either is left; the forged ones still are, and stay.
    assert _listed(_swarmless(world.a, "gc")) == set()
    assert all(world.exists(c) for c in [*forged, world.warm])


def test_gc_of_an_instance_that_made_nothing_removes_nothing(world: World) -> None:
    a_run = world.a.run_exited()
    forged = world.forge(world.a)
    fresh = Instance(f"test-inst-c-{SESSION}", world.a.data_dir.parent / "c")
    out = _swarmless(fresh, "gc")
    assert "no owner id" in out
    assert _listed(out) == set()
    assert not (fresh.data_dir / OWNER_FILE).exists()  # gc does not make one
    # Same name as A, another data directory: another owner, nothing of A's is its.
    twin = Instance(world.a.name, world.a.data_dir.parent / "twin")
    twin_run = twin.run_exited()
    out = _swarmless(twin, "gc")
    assert _listed(out) == _short(twin_run), out
    assert world.exists(a_run)
    assert world.exists(forged)


def test_voting_app_down_removes_its_own_instance_only_either_way_round(world: World) -> None:
    a = [world.a.run_exited(), world.a.run_running()]
    b = [world.b.run_exited(), world.b.run_running()]
    forged = [world.forge(world.a), world.forge(world.b)]

    out = _down(world.b)
    assert not any(world.exists(c) for c in b), out
    assert all(world.exists(c) for c in [*a, *forged, world.warm]), out
    assert "its labels come from its image" in out
    assert not world.b.data_dir.exists()

    out = _down(world.a)
    assert not any(world.exists(c) for c in a), out
    assert all(world.exists(c) for c in [*forged, world.warm]), out

    # Its own network, volume and database container: gone; a same-named one of anyone
    # else's (here: no ownership labels): left alone.
    c = Instance(f"test-inst-d-{SESSION}", world.a.data_dir.parent / "d")
    own = {"swarmless.test": SESSION, **_ownership(c)}
    net = world.engine.networks.create(c.name, driver="bridge", labels=own)
    other = world.engine.volumes.create(f"{c.name}-data", labels={"swarmless.test": SESSION})
    try:
        out = _down(c)
        assert "removed network" in out, out
        assert "left alone: volume" in out, out
        with pytest.raises(docker.errors.NotFound):
            world.engine.networks.get(net.id)
        assert world.engine.volumes.get(other.name)
    finally:
        with contextlib.suppress(docker.errors.DockerException):
            net.remove()
        with contextlib.suppress(docker.errors.DockerException):
            other.remove()


def _ownership(inst: Instance) -> dict[str, str]:
    from swarmless.ownership import ownership_labels

    return ownership_labels(inst.settings)


def test_owner_id_is_made_once_even_by_racing_processes(tmp_path: Path) -> None:
    from swarmless.ownership import owner_id

    code = "import sys; from pathlib import Path; from swarmless.ownership import owner_id; "
    code += "print(owner_id(Path(sys.argv[1])))"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / "d")], stdout=subprocess.PIPE, text=True
        )
        for _ in range(6)
    ]
    deadline = time.monotonic() + 60
    ids = {p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0].strip() for p in procs}
    assert len(ids) == 1
    assert ids == {owner_id(tmp_path / "d", create=False)}
    # A file that holds something else than an id proves nothing: no owner.
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / OWNER_FILE).write_text("default\n")
    assert owner_id(tmp_path / "e") is None


def test_plain_runs_through_the_scoped_api_leave_ownership_to_the_proxy(tmp_path: Path) -> None:
    """Behind the scoped Docker API (an engine address with a path) the SDK sends no
    ownership labels: the proxy refuses ``swarmless.*`` labels it does not expect, and
    forces its gateway's own on the child."""
    from swarmless.ownership import run_labels

    scoped = Settings.load(
        docker_host="tcp://10.0.0.1:2375/_swarmless/token", data_dir=tmp_path / "s"
    )
    assert run_labels(scoped) == {}
    assert not (tmp_path / "s").exists()
    plain = Settings.load(docker_host="tcp://10.0.0.1:2375", data_dir=tmp_path / "p")
    labels = run_labels(plain)
    assert labels[LABEL_INSTANCE] == plain.instance
    assert labels[LABEL_OWNER] == (tmp_path / "p" / OWNER_FILE).read_text().strip()


def test_a_gateway_start_leaves_containers_whose_gateway_label_is_their_images(
    engine: docker.DockerClient, labels: dict[str, str], tmp_path: Path
) -> None:
    """At start-up a gateway removes what an earlier one of its instance left; a container
    that carries the instance's labels only through its image is not that, and stays."""
    gw = RunningGateway(tmp_path / "gw", labels)
    forged_labels = {
        LABEL_MANAGED: "true",
        LABEL_GATEWAY: gw.instance,
        "swarmless.function": "victim",
        "swarmless.kind": "worker",
    }
    tag = f"swarmless-test-instances/forged-gw-{gw.instance}:{SESSION}"
    lines = " ".join(f'"{k}"="{v}"' for k, v in forged_labels.items())
    engine.images.build(
        fileobj=_context(f"FROM {BUSYBOX}\nLABEL {lines}\n"), custom_context=True, tag=tag, rm=True
    )
    cid = ""
    try:
        cid = str(engine.api.create_container(tag, ["sleep", "300"], labels=RUN)["Id"])
        engine.api.start(cid)
        gw.start()  # removes its instance's leftovers before it serves
        try:
            with gw.http() as http:
                assert http.get("/healthz").status_code == 200
            state = engine.api.inspect_container(cid)["State"]
            assert state["Running"], state
        finally:
            gw.stop()  # the gateway's own shutdown (not the harness's clean-up by label)
        assert engine.api.inspect_container(cid)["State"]["Running"]
        with contextlib.suppress(docker.errors.DockerException):
            engine.networks.get(gw.settings.network).remove()
    finally:
        if cid:
            with contextlib.suppress(docker.errors.DockerException):
                engine.api.remove_container(cid, force=True)
        with contextlib.suppress(docker.errors.DockerException):
            engine.images.remove(tag)
