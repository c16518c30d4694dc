"""The bytecode folders' upkeep (swarmless.backends.docker_bytecode), on the real engine:
one build per image however many ask at once (by tag and by id), a folder without its mark
is never used (rebuilt whole), and the prune at start removes the folders of images the
engine no longer holds, a crashed build's leftovers and the least recently used beyond
``bytecode_keep``, never one of an image a container exists of, nor one used lately.

Everything here is named or labelled ``h5rel``: an instance ``h5rel-...``, its network,
containers labelled ``swarmless.test=h5rel``, images tagged ``swarmless-test/h5rel-...``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from swarmless.backends.docker import DockerBackend
from swarmless.backends.docker_bytecode import _MARK, RECENT_USE
from swarmless.config import Settings
from swarmless.spec import FunctionSpec
from tests.conftest import BUSYBOX, PYTHON
from tests.networks import remove_network

LABELS = {"swarmless.test": "h5rel"}


@pytest.fixture
def settings(tmp_path: Path, engine: docker.DockerClient) -> Iterator[Settings]:
    instance = f"h5rel-{uuid.uuid4().hex[:8]}"
    yield Settings.load(
        data_dir=tmp_path / "data",
        instance=instance,
        network=f"swarmless-{instance}",
        bytecode_keep=1,
    )
    flt = {"label": [f"swarmless.instance={instance}", "swarmless.test=h5rel"]}
    for c in engine.api.containers(all=True, filters=flt):
        with contextlib.suppress(docker.errors.DockerException):
            engine.api.remove_container(c["Id"], force=True)
    remove_network(engine, f"swarmless-{instance}")


def _short(image_id: str) -> str:
    return image_id.split(":")[-1][:32]


def _builds(engine: docker.DockerClient, instance: str, since: float) -> int:
    """Build containers of ``instance`` created since ``since`` (the engine's events)."""
    until = time.time() + 1
    flt = {
        "type": "container",
        "event": "create",
        "label": ["swarmless.kind=bytecode", f"swarmless.instance={instance}"],
    }
    events = engine.api.events(since=int(since) - 1, until=int(until), filters=flt, decode=True)
    return sum(1 for _ in events)


async def _started(settings: Settings) -> DockerBackend:
    backend = DockerBackend(settings, labels=LABELS)
    await backend.start()
    return backend


def test_one_build_per_image_asked_by_tag_and_by_id(
    settings: Settings, engine: docker.DockerClient
) -> None:
    image_id = str(engine.images.get(PYTHON).id)
    folder = settings.data_dir / "bytecode" / _short(image_id)
    by_tag = FunctionSpec(name="a", image=PYTHON, mode="warm", handler="h:handle")
    by_id = FunctionSpec(name="b", image=PYTHON, image_id=image_id, mode="warm", handler="h:h")

    async def scenario() -> float:
        backend = await _started(settings)
        try:
            since = time.time()
            await backend.prepare_worker(by_tag)
            await backend.prepare_worker(by_id)
            await asyncio.wait_for(asyncio.gather(*backend._bytecode_builds.values()), 180)
            return since
        finally:
            await backend.close()

    since = asyncio.run(scenario())
    assert (folder / _MARK).is_file()
    assert any(folder.rglob("*.pyc"))
    assert _builds(engine, settings.instance, since) == 1
    # No half-built folder left beside it.
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]


def test_a_folder_without_its_mark_is_not_used_and_is_built_whole(
    settings: Settings, engine: docker.DockerClient
) -> None:
    image_id = str(engine.images.get(PYTHON).id)
    folder = settings.data_dir / "bytecode" / _short(image_id)
    folder.mkdir(parents=True)  # what the engine makes for a bind whose folder went
    spec = FunctionSpec(name="a", image=PYTHON, image_id=image_id, mode="warm", handler="h:h")

    async def scenario() -> tuple[dict[str, str], dict[str, str]]:
        backend = await _started(settings)
        try:
            backend._bytecode[image_id] = folder  # as if found before the folder emptied
            before = backend._bytecode_binds(spec, {})
            backend._bytecode.clear()
            await backend.prepare_worker(spec)
            await asyncio.wait_for(asyncio.gather(*backend._bytecode_builds.values()), 180)
            return before, backend._bytecode_binds(spec, {})
        finally:
            await backend.close()

    before, after = asyncio.run(scenario())
    assert before == {}
    assert after == {str(folder): "/opt/swarmless-pyc"}
    assert (folder / _MARK).is_file()
    assert any(folder.rglob("*.pyc"))


def _folder(root: Path, name: str, age: float) -> Path:
    """A whole bytecode folder ``name`` last used ``age`` seconds ago."""
    d = root / name
    (d / "usr").mkdir(parents=True)
    (d / "usr" / "x.cpython-311.pyc").write_bytes(b"pyc")
    (d / _MARK).touch()
    when = time.time() - age
    os.utime(d, (when, when))
    return d


def test_the_prune_at_start_keeps_what_is_in_use_and_bounds_the_rest(
    settings: Settings,
    engine: docker.DockerClient,
    build_image: Callable[..., str],
) -> None:
    images = {
        n: str(
            engine.images.get(
                build_image(f"h5rel-prune-{n}", f"FROM {BUSYBOX}\nLABEL h5rel={n}")
            ).id
        )
        for n in ("used", "older", "old", "recent")
    }
    root = settings.data_dir / "bytecode"
    hour = 3600.0
    folders = {
        # The oldest, but a container of its image exists (not even running): kept.
        "used": _folder(root, _short(images["used"]), 3 * hour),
        # Beyond bytecode_keep=1, the least recently used goes ...
        "older": _folder(root, _short(images["older"]), 2 * hour),
        "old": _folder(root, _short(images["old"]), hour),
        # ... but not one used within RECENT_USE.
        "recent": _folder(root, _short(images["recent"]), RECENT_USE / 2),
        # An image the engine no longer holds: goes, however recent.
        "gone": _folder(root, "0" * 32, 0),
        # A crashed build's leftovers go; a build going on now stays.
        "crashed": _folder(root, ".0123456789ab-crash", 2 * hour),
        "building": _folder(root, ".0123456789ab-now", 0),
    }
    labels: dict[str, Any] = {**LABELS, "swarmless.instance": settings.instance}
    engine.api.create_container(
        images["used"], command=["true"], labels=labels, name=f"{settings.instance}-used"
    )

    async def scenario() -> None:
        backend = await _started(settings)
        try:
            assert backend._bytecode_prune is not None
            await asyncio.wait_for(backend._bytecode_prune, 120)
        finally:
            await backend.close()

    asyncio.run(scenario())
    left = {k for k, d in folders.items() if d.exists()}
    assert left == {"used", "old", "recent", "building"}
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".gone-")) == []


def _build_containers(engine: docker.DockerClient, instance: str) -> list[str]:
    flt = {"label": ["swarmless.kind=bytecode", f"swarmless.instance={instance}"]}
    return [c["Id"] for c in engine.api.containers(all=True, filters=flt)]


@pytest.mark.parametrize("lifted", ["by-the-retry", "at-close"])
def test_a_build_container_the_engine_would_not_remove_is_removed_later(
    settings: Settings, engine: docker.DockerClient, lifted: str
) -> None:
    """The engine fails the removal of the build container (as one too slow to answer
    within ``engine_timeout`` would): the cache is still used, and the container goes all
    the same, by the background retry (the engine answers again after two failures) or,
    when the engine keeps failing, when the gateway stops. Checked on the engine."""
    image_id = str(engine.images.get(PYTHON).id)
    spec = FunctionSpec(name="a", image=PYTHON, image_id=image_id, mode="warm", handler="h:h")
    failures = {"left": 2 if lifted == "by-the-retry" else 10**6}

    async def scenario() -> tuple[list[str], list[str], dict[str, str]]:
        backend = await _started(settings)
        remove = backend.client.api.remove_container

        def failing(cid: str, **kwargs: Any) -> None:
            if cid in backend._bytecode_containers and failures["left"] > 0:
                failures["left"] -= 1
                raise docker.errors.APIError("injected: the engine did not answer in time")
            remove(cid, **kwargs)

        backend.client.api.remove_container = failing  # type: ignore[method-assign]
        try:
            await backend.prepare_worker(spec)
            await asyncio.wait_for(asyncio.gather(*backend._bytecode_builds.values()), 180)
            left_after_build = _build_containers(engine, settings.instance)
            binds = backend._bytecode_binds(spec, {})
            if lifted == "by-the-retry":
                deadline = time.monotonic() + 60
                while _build_containers(engine, settings.instance):
                    assert time.monotonic() < deadline, "the retry did not remove it in 60 s"
                    await asyncio.sleep(0.1)
            else:
                assert backend._bytecode_removals, "no retry was scheduled"
                failures["left"] = 0  # the engine answers again, the retry waits its pause
        finally:
            await backend.close()
        return left_after_build, _build_containers(engine, settings.instance), binds

    left_after_build, left_at_end, binds = asyncio.run(scenario())
    assert len(left_after_build) == 1  # the removal did fail
    assert binds == {str(settings.data_dir / "bytecode" / _short(image_id)): "/opt/swarmless-pyc"}
    assert left_at_end == []
    assert failures["left"] == 0


def test_a_gateway_that_stops_during_a_build_leaves_no_build_container(
    settings: Settings, engine: docker.DockerClient
) -> None:
    """The gateway stops while a build's thread is creating its container (the engine
    slow to answer): the stop waits for the build, which sees the gateway closing, starts
    nothing and removes what it made; no build container is left when the stop returns.
    Before, the stop removed only the containers it knew of, and the thread's container
    stayed (a session's leftovers, found by its last teardown)."""
    image_id = str(engine.images.get(PYTHON).id)
    spec = FunctionSpec(name="a", image=PYTHON, image_id=image_id, mode="warm", handler="h:h")
    creating = threading.Event()

    async def scenario() -> list[str]:
        backend = await _started(settings)
        create = backend.client.api.create_container

        def slow(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get("labels", {}).get("swarmless.kind") == "bytecode":
                creating.set()
                backend._closing.wait(60)  # the engine answers once the stop has begun
            return create(*args, **kwargs)

        backend.client.api.create_container = slow  # type: ignore[method-assign]
        try:
            await backend.prepare_worker(spec)
            deadline = time.monotonic() + 60
            while not creating.is_set():
                assert time.monotonic() < deadline, "the build did not begin in 60 s"
                await asyncio.sleep(0.02)
        finally:
            await backend.close()
        # None is left, and none comes: no build goes on behind the stop (before, the
        # thread made its container just after, and it stayed at least while it ran).
        seen = set(_build_containers(engine, settings.instance))
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            seen.update(_build_containers(engine, settings.instance))
            await asyncio.sleep(0.05)
        return sorted(seen)

    assert asyncio.run(scenario()) == []


def test_a_build_container_a_killed_gateway_left_is_removed_by_the_next(
    settings: Settings, engine: docker.DockerClient, tmp_path: Path
) -> None:
    """A gateway killed during a build leaves its build container (nothing else removes
    it: function containers are found by their gateway label, which it does not carry).
    The next active gateway of the instance removes it; never one of another instance,
    nor one that carries the instance's labels only through its image."""
    mine = _fake_build(engine, settings)
    other_settings = Settings.load(
        data_dir=tmp_path / "other", instance=f"h5rel-{uuid.uuid4().hex[:8]}"
    )
    other = _fake_build(engine, other_settings)
    try:

        async def scenario() -> int:
            backend = await _started(settings)
            try:
                return await backend.remove_leftovers()
            finally:
                await backend.close()

        assert asyncio.run(scenario()) == 1
        left = {c["Id"] for c in engine.api.containers(all=True, filters={"id": [mine, other]})}
        assert left == {other}
    finally:
        for cid in (mine, other):
            with contextlib.suppress(docker.errors.DockerException):
                engine.api.remove_container(cid, force=True)


def _fake_build(engine: docker.DockerClient, settings: Settings) -> str:
    """A build container as a gateway of ``settings`` makes it, still running."""
    from swarmless.engine import managed_labels
    from swarmless.ownership import ownership_labels

    labels = {**LABELS, **ownership_labels(settings), **managed_labels("bytecode")}
    created = engine.api.create_container(
        image=BUSYBOX, command=["sleep", "60"], labels=labels, network_disabled=True
    )
    engine.api.start(created["Id"])
    return str(created["Id"])
