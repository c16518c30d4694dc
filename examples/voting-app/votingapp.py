"""The serverless voting app on swarmless, as building blocks (``cli.py`` composes them).

``run.sh up`` builds the images (each tagged with a hash of its build context, so a second ``up``
builds nothing), starts PostgreSQL (container ``swarmless-vote-db``, data on the volume
``swarmless-vote-data``) on the gateway's function network (``swarmless-vote``), runs a
gateway in the foreground (instance ``swarmless-vote``, data in
``~/.local/share/swarmless-vote``), deploys ``vote``, ``result`` and ``record-vote`` and
prints the two URLs. Ctrl-C stops the gateway and every function container; the database
and its votes stay until ``down``, which removes everything the example made: containers,
volume, network, images (unless ``--keep-images``) and the data directory.

What ``down`` removes is decided by labels set on the objects themselves, never by an
image's: the database, its volume and the network carry the gateway instance's ownership
labels (``swarmless.instance``, and ``swarmless.owner`` from the data directory; see
``swarmless.ownership``), as the function containers do, so ``down`` of one deployment
touches no other deployment's objects, nor any container made from the example's images.

The steps are functions (:func:`build_images`, :func:`start_database`, :func:`specs`,
:func:`deploy`, :func:`remove_all`) that the tests, ``load.py`` and ``measure.py`` reuse
with their own names and labels.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import docker.errors

import swarmless
from swarmless.config import Settings, default_data_dir
from swarmless.engine import managed_labels
from swarmless.exceptions import FunctionNotFound, SwarmlessError
from swarmless.gateway.app import Gateway, admin_token
from swarmless.gateway.server import GatewayServer
from swarmless.ownership import remove_containers, select_containers
from swarmless.sdk.gateway import GatewayClient
from swarmless.spec import FunctionSpec

HERE = Path(__file__).resolve().parent
#: Every object the example makes itself carries this label (functions carry the gateway's);
#: it is set on the objects, never on the images (containers would inherit it).
LABEL = "swarmless.example"
EXAMPLE = "voting-app"
IMAGE_REPO = "swarmless-vote"
PYTHON = os.environ.get("SWARMLESS_BASE_IMAGE", "swarmless/python:bookworm")
MODES = ("warm", "cgi")
RECORD_PATHS = ("spawn", "docker")
FRONT_ENDS = ("vote", "result")
#: ``today``: the front ends of this folder; ``2016``: as the 2016 app wrote them
#: (``style2016.py``: a Flask CGI page with dockerrun, a Perl CGI result page).
STYLES = ("today", "2016")


@dataclasses.dataclass(frozen=True)
class Names:
    """Names of the Docker objects of one deployment of the example."""

    prefix: str = "swarmless-vote"

    @property
    def network(self) -> str:
        return self.prefix

    @property
    def db(self) -> str:
        return f"{self.prefix}-db"

    @property
    def volume(self) -> str:
        return f"{self.prefix}-data"

    @property
    def instance(self) -> str:
        return self.prefix


@dataclasses.dataclass(frozen=True)
class Images:
    """The example's image tags."""

    base: str
    postgres: str
    vote: str
    record_vote: str
    result: str
    #: The 2016 front ends (built only for ``--style 2016``).
    vote2016: str | None = None
    result2016: str | None = None


@dataclasses.dataclass(frozen=True)
class Database:
    """The running PostgreSQL: its container and the URL functions use (by container name)."""

    container: str
    url: str


# -- images ---------------------------------------------------------------------------------


def _files(folder: Path, prefix: str = "") -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and "__pycache__" not in rel.parts and path.suffix != ".pyc":
            out[f"{prefix}{rel.as_posix()}"] = path.read_bytes()
    return out


def _runtime_files() -> dict[str, bytes]:
    """The runtime at /opt/swarmless in the front ends' images: the swarm backend runs warm
    containers from the image (the docker backend mounts the gateway's own copy there)."""
    from swarmless.build import runtime_files

    return {f"runtime/{path}": data for path, data in runtime_files().items()}


def _sdk_files() -> dict[str, bytes]:
    """The swarmless package as this process runs it (vote's ``docker`` path imports it)."""
    files = _files(Path(swarmless.__file__).parent, "swarmless/")
    return {k: v for k, v in files.items() if not k.startswith("swarmless/templates/")}


def _tar(files: Mapping[str, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def _tag(name: str, files: Mapping[str, bytes], args: Mapping[str, str]) -> str:
    h = hashlib.sha256(json.dumps(sorted(args.items())).encode())
    for path, data in sorted(files.items()):
        h.update(path.encode() + b"\0" + hashlib.sha256(data).digest())
    return f"{IMAGE_REPO}/{name}:{h.hexdigest()[:12]}"


def _build(
    engine: docker.DockerClient,
    name: str,
    files: Mapping[str, bytes],
    args: Mapping[str, str],
    say: Callable[[str], None],
) -> str:
    tag = _tag(name, files, args)
    with contextlib.suppress(docker.errors.ImageNotFound):
        engine.images.get(tag)
        return tag
    say(f"building {tag}")
    t0 = time.monotonic()
    log: list[str] = []
    for chunk in engine.api.build(
        fileobj=_tar(files),
        custom_context=True,
        tag=tag,
        buildargs=dict(args),
        rm=True,
        forcerm=True,
        decode=True,
    ):
        log.append(str(chunk.get("stream", "")))
        if "error" in chunk:
            tail = "".join(log)[-2000:].strip()
            raise SwarmlessError(f"building {tag} failed: {chunk['error'].strip()}\n{tail}")
    say(f"built {tag} in {time.monotonic() - t0:.0f}s")
    return tag


def build_images(
    engine: docker.DockerClient,
    *,
    python: str = PYTHON,
    say: Callable[[str], None] = lambda _msg: None,
    style: str = "today",
) -> Images:
    """Build what is missing (two steps reach Debian's mirror: base and postgres; for
    ``style`` 2016 two more, the 2016 front ends')."""
    try:
        engine.images.get(python)
    except docker.errors.ImageNotFound:
        raise SwarmlessError(
            f"the base image {python} is missing; build it: bash scripts/base-images.sh"
        ) from None
    images = HERE / "images"
    with ThreadPoolExecutor(max_workers=3) as pool:
        base_job = pool.submit(
            _build, engine, "base", _files(images / "base"), {"PYTHON": python}, say
        )
        pg_job = pool.submit(
            _build, engine, "postgres", _files(images / "postgres"), {"PYTHON": python}, say
        )
        base = base_job.result()
        parts = [
            ("record-vote", _files(HERE / "record-vote")),
            ("vote", {**_files(HERE / "vote"), **_sdk_files(), **_runtime_files()}),
            ("result", {**_files(HERE / "result"), **_runtime_files()}),
        ]
        if style == "2016":
            parts += [
                ("vote2016", {**_files(HERE / "vote2016"), **_sdk_files(), **_runtime_files()}),
                ("result2016", {**_files(HERE / "result2016"), **_runtime_files()}),
            ]
        jobs = {
            name: pool.submit(_build, engine, name, files, {"BASE": base}, say)
            for name, files in parts
        }
        return Images(
            base=base,
            postgres=pg_job.result(),
            vote=jobs["vote"].result(),
            record_vote=jobs["record-vote"].result(),
            result=jobs["result"].result(),
            vote2016=jobs["vote2016"].result() if "vote2016" in jobs else None,
            result2016=jobs["result2016"].result() if "result2016" in jobs else None,
        )


# -- network and database -------------------------------------------------------------------


def ensure_network(engine: docker.DockerClient, name: str, labels: Mapping[str, str]) -> None:
    """The gateway's function network, made here so the database can join it first."""
    try:
        engine.networks.get(name)
    except docker.errors.NotFound:
        with contextlib.suppress(docker.errors.APIError):  # made meanwhile by the gateway
            engine.networks.create(
                name,
                driver="bridge",
                attachable=True,
                labels={**managed_labels("network"), LABEL: EXAMPLE, **labels},
            )


def start_database(
    engine: docker.DockerClient,
    *,
    image: str,
    names: Names,
    password: str,
    labels: Mapping[str, str] | None = None,
    args: tuple[str, ...] = (),
    timeout: float = 90.0,
) -> Database:
    """Start PostgreSQL on ``names.network`` (or reuse it) and wait until it answers."""
    labels = {LABEL: EXAMPLE, **(labels or {})}
    try:
        container = engine.containers.get(names.db)
        if container.status != "running":
            container.start()
    except docker.errors.NotFound:
        with contextlib.suppress(docker.errors.APIError):
            engine.volumes.create(names.volume, labels=labels)
        container = engine.containers.run(
            image,
            list(args),
            name=names.db,
            detach=True,
            network=names.network,
            environment={"POSTGRES_PASSWORD": password},
            volumes={names.volume: {"bind": "/var/lib/postgresql/data", "mode": "rw"}},
            labels=labels,
            mem_limit="512m",
        )
    wait_for_database(engine, names.db, timeout)
    return Database(
        container=names.db,
        url=f"postgresql://postgres:{password}@{names.db}:5432/votes",
    )


def wait_for_database(engine: docker.DockerClient, name: str, timeout: float = 90.0) -> None:
    """Until ``pg_isready`` says the server takes connections (initdb first on a new volume)."""
    deadline = time.monotonic() + timeout
    container = engine.containers.get(name)
    while True:
        container.reload()
        if container.status == "exited":
            tail = container.logs(tail=20).decode("utf-8", "replace")
            raise SwarmlessError(f"the database container {name} exited:\n{tail}")
        if container.status == "running":
            code, _ = container.exec_run(
                ["pg_isready", "-q", "-h", "127.0.0.1", "-d", "votes", "-U", "postgres"]
            )
            if code == 0:
                return
        if time.monotonic() > deadline:
            raise SwarmlessError(f"the database {name} did not answer within {timeout:.0f}s")
        time.sleep(0.3)


# -- functions -----------------------------------------------------------------------------


def specs(
    images: Images,
    db: Database,
    *,
    mode: str = "warm",
    record: str = "spawn",
    idle_timeout: float = 30.0,
    max_containers: int = 10,
    retries: int = 4,
    backoff: float = 1.0,
    labels: Mapping[str, str] | None = None,
    private_record: bool = True,
    style: str = "today",
    network: str | None = None,
    children_timeout: float = 60.0,
) -> list[FunctionSpec]:
    """record-vote (oneshot, retried), then vote and result in ``mode`` (cgi or warm).

    ``private_record``: only the admin and function containers (their own token) may queue
    a vote (on both backends: every function container gets a token of its own).
    ``style`` 2016: the 2016 front ends (``style2016.py``; they record by the 2016 call
    only, its task joining ``network``, the gateway's function network, and having
    ``children_timeout`` seconds to finish once the page that fired it has exited).
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if record not in RECORD_PATHS:
        raise ValueError(f"record must be one of {', '.join(RECORD_PATHS)}, got {record!r}")
    extra = {"example": EXAMPLE, **(labels or {})}
    options = {"OPTION_A": "Cats", "OPTION_B": "Dogs"}
    record_vote = FunctionSpec(
        name="record-vote",
        image=images.record_vote,
        mode="oneshot",
        env={"DATABASE_URL": db.url},
        timeout=30,
        retries=retries,
        backoff=backoff,
        max_containers=max_containers,
        private=private_record,
        labels=extra,
    )
    front: dict[str, Any] = {"mode": mode, "timeout": 30, "labels": extra}
    if style == "2016":
        from style2016 import specs_2016

        if not images.vote2016 or not images.result2016 or not network:
            raise ValueError("style 2016 needs its images (build_images(style='2016')), a network")
        if mode == "warm":
            front.update(idle_timeout=idle_timeout)
        return [
            record_vote,
            *specs_2016(
                vote_image=images.vote2016,
                result_image=images.result2016,
                record_image=images.record_vote,
                database_url=db.url,
                network=network,
                mode=mode,
                front={**front, "max_containers": max_containers},
                options=options,
                children_timeout=children_timeout,
            ),
        ]
    if mode == "warm":
        front.update(
            handler="app:app",
            handler_kind="wsgi",
            idle_timeout=idle_timeout,
            max_containers=max_containers,
        )
    else:
        front.update(command=["python3", "/function/serve_cgi.py"], max_containers=max_containers)
    vote_env = {**options, "RECORD_PATH": record, "RECORD_FUNCTION": "record-vote"}
    if record == "docker":
        vote_env.update(RECORD_IMAGE=images.record_vote, DATABASE_URL=db.url)
    vote = FunctionSpec(
        name="vote",
        image=images.vote,
        env=vote_env,
        docker="scoped" if record == "docker" else "none",
        concurrency=1,
        **front,
    )
    result = FunctionSpec(
        name="result",
        image=images.result,
        env={**options, "DATABASE_URL": db.url},
        concurrency=4 if mode == "warm" else 1,
        **front,
    )
    return [record_vote, vote, result]


def deploy(gateway: GatewayClient, wanted: list[FunctionSpec]) -> list[str]:
    """Deploy the specs that differ from what runs; returns what changed, for the log."""
    changed = []
    for spec in wanted:
        try:
            current = FunctionSpec.from_dict(gateway.function(spec.name)["spec"])
        except FunctionNotFound:
            current = None
        if current != spec:
            gateway.deploy(spec)
            changed.append(f"{spec.name} ({spec.mode})")
    return changed


def container_count(counts: Mapping[str, int], mode: str) -> int:
    """Containers of a function from the gateway's counts (``GET /system/functions/NAME``):
    a warm pool's containers, or the one-shot containers running now (one per call)."""
    if mode == "warm":
        return sum(counts.get(k, 0) for k in ("ready", "starting", "draining", "paused"))
    return counts.get("busy", 0)


def urls(gateway_url: str, style: str = "today") -> dict[str, str]:
    """The two pages of the app (the 2016 style's at their own routes, /vote/ and /result/)."""
    if style == "2016":
        return {name: f"{gateway_url}/{name}/" for name in FRONT_ENDS}
    return {name: f"{gateway_url}/function/{name}/" for name in FRONT_ENDS}


# -- teardown -----------------------------------------------------------------------------


def remove_all(
    engine: docker.DockerClient,
    names: Names,
    *,
    proof: Mapping[str, str],
    images: bool = False,
) -> list[str]:
    """Remove the objects of one deployment; returns what was removed or left (for the log).

    ``proof``: labels that only this deployment's objects carry, set on them (the gateway
    instance's ownership labels, or a test session's). A container is removed only when
    they are its own, not its image's; the volume and the network only when they carry
    them. Images (``images=True``) are the example's tags, removed only when no container
    uses them.
    """
    removed: list[str] = []
    if proof:
        found = select_containers(engine.api, proof)
        for c, why in remove_containers(engine.api, found.owned, force=True):
            removed.append(f"container {c.name}" if why is None else f"(container {c.name}: {why})")
        for c in found.inherited:
            removed.append(f"(left alone: container {c.name}, its labels come from its image)")
        gone = {c.name for c in found.owned}
    else:
        removed.append("(no ownership labels to go by: no container, volume or network removed)")
        gone = set()
    if names.db not in gone:
        with contextlib.suppress(docker.errors.NotFound):
            engine.containers.get(names.db)
            removed.append(f"(left alone: container {names.db}, not this deployment's)")
    with contextlib.suppress(docker.errors.NotFound):
        volume = engine.volumes.get(names.volume)
        if not _carries(volume.attrs.get("Labels"), proof):
            removed.append(f"(left alone: volume {names.volume}, not this deployment's)")
        else:
            try:
                volume.remove()
                removed.append(f"volume {names.volume}")
            except docker.errors.APIError:  # mounted by a container that is not ours
                removed.append(f"(volume {names.volume} still in use: left)")
    with contextlib.suppress(docker.errors.NotFound):
        network = engine.networks.get(names.network)
        if not _carries(network.attrs.get("Labels"), proof):
            removed.append(f"(left alone: network {names.network}, not this deployment's)")
        else:
            try:
                network.remove()
                removed.append(f"network {names.network}")
            except docker.errors.APIError:  # others' containers still on it
                removed.append(f"(network {names.network} still in use: left)")
    if images:
        removed += remove_images(engine)
    return removed


def _carries(labels: Mapping[str, str] | None, proof: Mapping[str, str]) -> bool:
    return bool(proof) and all((labels or {}).get(k) == v for k, v in proof.items())


def remove_images(engine: docker.DockerClient) -> list[str]:
    """Untag the example's images (``swarmless-vote/<part>:<hash>``) that no container uses."""
    parts = {f"{IMAGE_REPO}/{f.name.replace('_', '-')}" for f in dataclasses.fields(Images)}
    out: list[str] = []
    for image in engine.images.list(filters={"reference": f"{IMAGE_REPO}/*"}):
        for tag in image.tags:
            if tag.rpartition(":")[0] not in parts:
                continue
            try:
                engine.images.remove(tag)  # no force: the engine keeps an image in use
                out.append(f"image {tag}")
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError:
                out.append(f"(image {tag} in use by a container: kept)")
    return out


# -- a gateway in a thread (measure.py, load.py's self-contained mode) ----------------------


@contextlib.contextmanager
def background_gateway(
    data_dir: Path, names: Names, *, labels: Mapping[str, str] | None = None, port: int = 0
) -> Iterator[tuple[str, str, Gateway]]:
    """A gateway on loopback in a thread: yields (url, admin token, gateway); stops it after."""
    from swarmless.backends.docker import DockerBackend

    settings = Settings.load(
        data_dir=data_dir,
        host="127.0.0.1",
        port=port,
        instance=names.instance,
        network=names.network,
    )
    token, _ = admin_token(data_dir)
    backend = DockerBackend(settings, labels=dict(labels or {}))
    gateway = Gateway(settings, backend=backend, token=token, drain_timeout=10)
    server = GatewayServer(gateway)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(server.serve())
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True, name=f"gateway-{names.instance}")
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if errors or not thread.is_alive() or time.monotonic() > deadline:
            raise SwarmlessError(f"the gateway did not start: {errors[0] if errors else '?'}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.port}", token, gateway
    finally:
        server.stop()
        thread.join(60)


def data_dir_of(arg: str | None = None) -> Path:
    """Where ``up`` keeps its store, token, database password and state."""
    return Path(arg).expanduser() if arg else default_data_dir().parent / "swarmless-vote"
