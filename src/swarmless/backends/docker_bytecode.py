"""The bytecode of the runtime's imports, once per image, part of
:class:`swarmless.backends.docker.DockerBackend` (see :mod:`swarmless.runtime.bytecode`).

A warm container of an image whose standard library ships no ``.pyc`` compiles every
module the runtime imports before it can ask for work: most of what a first call from
zero spends beyond ``run()`` of the same image, and ten times that CPU when ten start at
once. So when a warm function is deployed (or loaded), :meth:`prepare_worker` runs one
container of its image, in the background (:func:`swarmless.runtime.bytecode.main`), with
no network and no host path writable, which writes the bytecode inside the container; it
is copied out (regular ``.pyc`` files only, bounded in size) to
``<data_dir>/bytecode/<image id>`` and mounted read-only into the image's warm containers
from then on (:meth:`_bytecode_binds`). Trust stays where it was: the bytecode is what the
image's own Python compiled from the image's own files, read only by containers of that
image, and Python checks each file against its source (a stale one is compiled again,
never run). An image without Python, or one that sets ``PYTHONPYCACHEPREFIX`` itself, gets
no cache (its containers start as before); a build that ran and failed is not tried again
by this gateway, one that could not run (the engine away) is tried at the next start.

One build per image at a time: a function deployed by tag and another by the image's id,
or a first call racing the deploy's build, wait for the one build and use its folder. The
folder is built beside its place and renamed in with its mark (:data:`_MARK`) written
last: a start mounts a whole folder or none (a folder without the mark is not used).

Nothing grows without bound (:meth:`_prune_bytecode`, at start and after each build): the
folder of an image the engine no longer holds goes (unless a container of it still
exists), a crashed build's leftovers go, and of the rest, beyond those of images a
container exists of or one started within :data:`RECENT_USE` seconds, at most
``bytecode_keep`` stay (the least recently used go first). A folder leaves by a rename
out of its place, then is deleted: a start never sees a half-deleted one.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import docker.errors
import requests.exceptions

from swarmless.backends.base import EngineBackend
from swarmless.backends.docker_config import RUNTIME_MOUNT
from swarmless.engine import managed_labels
from swarmless.labels import LABEL_KIND, LABEL_MANAGED
from swarmless.ownership import ownership_labels, select_containers
from swarmless.runtime.bytecode import BYTECODE_MOUNT
from swarmless.spec import FunctionSpec

__all__ = ["BUILD_TIMEOUT", "BYTECODE_LIMIT", "RECENT_USE", "WorkerBytecode"]

log = logging.getLogger("swarmless.backend")

#: Seconds the build container may run.
BUILD_TIMEOUT = 60.0
#: Bytes of bytecode copied out at most (the runtime's imports take about 2 MB).
BYTECODE_LIMIT = 32 << 20
#: Seconds a folder is kept after a container of its image last started with it.
RECENT_USE = 600.0
#: Written last into a folder before it is renamed in place: a folder without it is not
#: used (a bind the engine created on its own for a folder deleted meanwhile, say).
_MARK = ".complete"
#: Seconds after which a hidden folder (a build's or a deletion's) is a crashed one's.
_STALE = 4 * BUILD_TIMEOUT
#: Where the build container writes the bytecode (inside itself).
_INSIDE = "/tmp/swarmless-pyc"
_ENV = "PYTHONPYCACHEPREFIX"
#: The build's command (``-c``: ``-m`` would import the module twice, as the package's and
#: as ``__main__``).
_BUILD = "import sys; from swarmless.runtime.bytecode import main; sys.exit(main())"


class WorkerBytecode(EngineBackend):
    """The per-image bytecode of :class:`swarmless.backends.docker.DockerBackend`."""

    _runtime_dir: Path | None
    #: Image reference -> the bytecode folder (None: the image gets none).
    _bytecode: dict[str, Path | None]
    _bytecode_builds: dict[str, asyncio.Task[None]]
    #: Build containers running now (removed by :meth:`_stop_bytecode_builds` at close).
    _bytecode_containers: set[str]
    #: Image id -> (its build's lock, how many hold or wait for it): one build per image.
    _bytecode_locks: dict[str, tuple[threading.Lock, int]]
    _bytecode_guard: threading.Lock
    _bytecode_prune: asyncio.Task[None] | None
    #: Removals of build containers tried again in the background (see :meth:`_build`).
    _bytecode_removals: set[asyncio.Task[None]]
    #: Folders built by this gateway (a build that installed one prunes after it).
    _bytecode_built: int
    #: Builds running in a thread now (:meth:`_bytecode_of`): the gateway's stop waits for
    #: them, so that none creates a container after the stop removed those it knew of.
    _bytecode_running: int
    _closing: threading.Event

    def _init_bytecode(self) -> None:
        self._bytecode = {}
        self._bytecode_builds = {}
        self._bytecode_containers = set()
        self._bytecode_locks = {}
        self._bytecode_guard = threading.Lock()
        self._bytecode_prune = None
        self._bytecode_removals = set()
        self._bytecode_built = 0
        self._bytecode_running = 0

    def _start_bytecode_upkeep(self) -> None:
        """The backend started: prune the bytecode folders once, in the background."""
        self._bytecode_prune = asyncio.get_running_loop().create_task(self._prune())

    async def _prune(self) -> None:
        try:
            removed = await self._call(self._prune_bytecode)
        except Exception as e:  # housekeeping: tried again after the next build
            log.warning("bytecode folders not pruned: %s", e)
            return
        if removed:
            log.info("bytecode folders removed: %s", ", ".join(removed))

    async def _stop_bytecode_builds(self) -> None:
        """The gateway stops: no build goes on, no build container stays.

        A build runs in a thread, which its task's cancellation does not stop: one may be
        creating its container right now, or wait for it, and its own removal would come
        after the engine's client is closed (the container left behind). So the build
        containers known are removed (which ends their waits), then the builds still in a
        thread are waited for (``engine_timeout`` at most, not at all for an engine known
        not to answer: a build that sees the gateway closing creates nothing more and
        removes what it made), then what they made is removed too."""
        tasks = [*self._bytecode_builds.values(), *self._bytecode_removals, self._bytecode_prune]
        for task in tasks:
            if task is not None:
                task.cancel()
        deadline = time.monotonic() + self.settings.engine_timeout
        while True:
            for cid in list(self._bytecode_containers):
                with contextlib.suppress(Exception):
                    await self._call(self._remove_build_container, cid)
            with self._bytecode_guard:
                running = self._bytecode_running
            # Not for an engine known not to answer: its calls would wait their timeout.
            if not running or self.engine_down is not None or time.monotonic() > deadline:
                if running:
                    log.warning("%d bytecode build(s) still running at the stop", running)
                return
            await asyncio.sleep(0.05)

    async def remove_leftovers(self) -> int:
        """Build containers of this instance (its ownership labels, on the container
        itself) that no build of this gateway runs: a previous gateway was killed during
        its build (nothing else removes them; function containers are found by their
        gateway label, which a build container does not carry)."""

        def leftovers() -> int:
            found = select_containers(
                self.client.api,
                ownership_labels(self.settings),
                where={LABEL_MANAGED: "true", LABEL_KIND: "bytecode"},
            )
            if found.inherited:
                log.warning(
                    "%d build container(s) carry this instance's labels only through their "
                    "image: left alone",
                    len(found.inherited),
                )
            gone = 0
            for c in found.owned:
                if c.id not in self._bytecode_containers and self._remove_build_container(c.id):
                    gone += 1
            return gone

        try:
            removed = await self._call(leftovers)
        except Exception as e:  # housekeeping: the next start looks again
            log.warning("bytecode build containers left by a previous gateway: %s", e)
            return 0
        if removed:
            log.info("removed %d bytecode build container(s) left by a previous gateway", removed)
        return removed

    async def prepare_worker(self, spec: FunctionSpec) -> None:
        """Build the bytecode of the runtime's imports for ``spec``'s image, in the
        background, unless it is there (or failed) already."""
        key = spec.image_id or spec.image or ""
        if not key or key in self._bytecode or key in self._bytecode_builds:
            return
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._build_bytecode(key))
        self._bytecode_builds[key] = task

    async def _build_bytecode(self, image: str) -> None:
        built = self._bytecode_built
        try:
            found = await self._call(self._bytecode_of, image)
        except docker.errors.APIError as e:  # the engine's answer (no python3 there, ...)
            log.info("no bytecode cache for image %s: %s", image, e.explanation or e)
            found = None
        except Exception as e:  # an optimisation: never the reason a function fails
            # Not the image's answer (the engine away): the next start asks again.
            log.warning("no bytecode cache for image %s (yet): %s", image, e)
            return
        finally:
            self._bytecode_builds.pop(image, None)
        self._bytecode[image] = found
        if self._bytecode_built != built:
            await self._prune()

    def _bytecode_binds(self, spec: FunctionSpec, env: Mapping[str, str]) -> dict[str, str]:
        """The bind of the bytecode folder of ``spec``'s image, ``{host path: mount}`` (empty
        while it is not built, or when the function sets ``PYTHONPYCACHEPREFIX``)."""
        folder = self._bytecode.get(spec.image_id or spec.image or "")
        if folder is None or _ENV in env or not _complete(folder):
            return {}
        with contextlib.suppress(OSError):  # its last use: the prune keeps it a while
            os.utime(folder)
        return {str(folder): BYTECODE_MOUNT}

    @contextlib.contextmanager
    def _one_build(self, image_id: str) -> Iterator[None]:
        """Held while ``image_id``'s folder is looked for or built: one build at a time."""
        with self._bytecode_guard:
            lock, n = self._bytecode_locks.get(image_id, (threading.Lock(), 0))
            self._bytecode_locks[image_id] = (lock, n + 1)
        try:
            with lock:
                yield
        finally:
            with self._bytecode_guard:
                lock, n = self._bytecode_locks[image_id]
                if n > 1:
                    self._bytecode_locks[image_id] = (lock, n - 1)
                else:
                    del self._bytecode_locks[image_id]

    # -- in a thread -------------------------------------------------------------------

    def _bytecode_of(self, image: str) -> Path | None:
        """The bytecode folder of ``image``: found on disk, or built; None if it gets none."""
        api = self.client.api
        info = api.inspect_image(image)
        if any(str(e).startswith(f"{_ENV}=") for e in (info.get("Config") or {}).get("Env") or []):
            return None  # the image's own setting: left alone
        image_id = str(info["Id"]).split(":")[-1]
        root = self.settings.data_dir / "bytecode"
        dest = root / image_id[:32]
        with self._bytecode_guard:
            self._bytecode_running += 1
        try:
            with self._one_build(image_id):
                if _complete(dest):
                    return dest
                if self._closing.is_set():  # the gateway stops: no container made now
                    return None
                return self._build(image, str(info["Id"]), dest)
        finally:
            with self._bytecode_guard:
                self._bytecode_running -= 1

    def _build(self, image: str, image_id: str, dest: Path) -> Path | None:
        """Run the build container of ``image`` and install its bytecode at ``dest``."""
        api = self.client.api
        assert self._runtime_dir is not None
        # The instance's ownership labels (its `swarmless gc` finds it), not the gateway's
        # label of function containers: this one is no function's.
        labels = {**self.extra_labels, **managed_labels("bytecode")}
        host_config = api.create_host_config(
            network_mode="none",
            binds=[f"{self._runtime_dir}:{RUNTIME_MOUNT}:ro"],
            mem_limit="256m",
            nano_cpus=int(1e9),
            pids_limit=64,
        )
        created = api.create_container(
            image=image_id,
            command=["python3", "-c", _BUILD],
            environment={"PYTHONPATH": RUNTIME_MOUNT, _ENV: _INSIDE},
            labels=labels,
            host_config=host_config,
            network_disabled=True,
        )
        cid = str(created["Id"])
        self._bytecode_containers.add(cid)
        try:
            if self._closing.is_set():  # the stop began meanwhile: removed, not run
                return None
            api.start(cid)
            try:
                status = int(api.wait(cid, timeout=BUILD_TIMEOUT).get("StatusCode", -1))
            except requests.exceptions.RequestException:
                log.warning("image %s: the bytecode build ran over %gs", image, BUILD_TIMEOUT)
                return None
            if status != 0:
                log.info("image %s: no bytecode cache (the build exited %d)", image, status)
                return None
            try:
                stream, _ = api.get_archive(cid, _INSIDE)
            except docker.errors.NotFound:
                return None
            data = _read_bounded(stream, BYTECODE_LIMIT)
            if data is None:
                log.warning("image %s: bytecode over %d bytes: not cached", image, BYTECODE_LIMIT)
                return None
            # In place before the build container goes: once it is gone, the cache is there.
            installed = _install(data, dest)
            with self._bytecode_guard:
                self._bytecode_built += 1
            return installed
        finally:
            # Forgotten only once it is gone: a removal that failed (an engine too slow to
            # answer within engine_timeout, say) is tried again in the background, and at
            # the latest when the gateway stops.
            if not self._remove_build_container(cid):
                loop = self._loop
                if loop is not None and not loop.is_closed():
                    loop.call_soon_threadsafe(self._retry_removal, cid)

    def _remove_build_container(self, cid: str) -> bool:
        """Remove a build container (in a thread): True once it is gone."""
        try:
            self.client.api.remove_container(cid, force=True)
        except docker.errors.NotFound:
            pass
        except Exception as e:
            log.warning("bytecode build container %s: not removed yet: %s", cid[:12], e)
            return False
        self._bytecode_containers.discard(cid)
        return True

    def _retry_removal(self, cid: str) -> None:
        task = asyncio.get_running_loop().create_task(self._removal_retried(cid))
        self._bytecode_removals.add(task)
        task.add_done_callback(self._bytecode_removals.discard)

    async def _removal_retried(self, cid: str) -> None:
        """Try the removal again: after 1 s, then doubling to 16 s, for about a minute
        (then it waits for the gateway's stop)."""
        pause = 1.0
        for _ in range(6):
            await asyncio.sleep(pause)
            if cid not in self._bytecode_containers:
                return
            with contextlib.suppress(Exception):
                if await self._call(self._remove_build_container, cid):
                    return
            pause = min(pause * 2, 16.0)

    # -- pruning (in a thread) -----------------------------------------------------------

    def _prune_bytecode(self) -> list[str]:
        """Remove the bytecode folders no longer wanted (see the module's docstring);
        returns their names."""
        root = self.settings.data_dir / "bytecode"
        if not root.is_dir():
            return []
        api = self.client.api
        held = {_short(i) for i in api.images(all=True, quiet=True)}
        # Any container of the image (running or not, ours or not): its folder may be
        # mounted, or be again at its restart.
        in_use = {_short(c.get("ImageID")) for c in api.containers(all=True)}
        now = time.time()
        removed: list[str] = []
        spare: list[tuple[float, Path]] = []
        for entry in root.iterdir():
            try:
                st = entry.lstat()
            except OSError:
                continue
            if entry.name.startswith("."):  # a build's or a deletion's, crashed
                if now - st.st_mtime > _STALE:
                    _remove(entry)
                    removed.append(entry.name)
                continue
            if not entry.is_dir() or entry.is_symlink() or entry.name in in_use:
                continue
            if entry.name not in held:
                _remove(entry)
                removed.append(entry.name)
            elif now - st.st_mtime >= RECENT_USE:
                spare.append((st.st_mtime, entry))
        spare.sort()
        for _, entry in spare[: max(0, len(spare) - self.settings.bytecode_keep)]:
            _remove(entry)
            removed.append(entry.name)
        gone = set(removed)
        for key, folder in list(self._bytecode.items()):
            if folder is not None and folder.name in gone:
                self._bytecode.pop(key, None)  # built again at its next start
        return removed


def _short(image_id: object) -> str:
    """The folder name of an image id (``sha256:`` dropped, 32 hex digits)."""
    return str(image_id or "").split(":")[-1][:32]


def _complete(folder: Path) -> bool:
    """Whether ``folder`` is a whole bytecode folder (renamed in with its mark)."""
    return (folder / _MARK).is_file()


def _remove(entry: Path) -> None:
    """Delete ``entry``: renamed out of its place first (atomic), then removed."""
    if entry.name.startswith("."):
        gone = entry
    else:
        gone = entry.with_name(f".gone-{entry.name[:12]}-{os.urandom(4).hex()}")
        try:
            os.replace(entry, gone)
        except OSError:
            return
    if gone.is_dir() and not gone.is_symlink():
        shutil.rmtree(gone, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            gone.unlink()


def _install(data: bytes, dest: Path) -> Path:
    """The archive's bytecode at ``dest``, whole or not at all (a folder renamed in, its
    mark written last)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name[:12]}-", dir=dest.parent))
    try:
        _extract(data, tmp)
        (tmp / _MARK).touch(mode=0o644)
        tmp.chmod(0o755)
        if dest.exists() and not _complete(dest):
            _remove(dest)  # not a whole folder (one the engine made for a bind, say)
        try:
            os.replace(tmp, dest)
        except OSError:  # built meanwhile by another gateway on this data dir
            if not _complete(dest):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _read_bounded(stream: Any, limit: int) -> bytes | None:
    """The bytes of ``stream``, or None past ``limit``."""
    buf = io.BytesIO()
    for chunk in stream:
        buf.write(chunk)
        if buf.tell() > limit:
            return None
    return buf.getvalue()


def _extract(data: bytes, dest: Path) -> None:
    """The ``.pyc`` files of the archive (under its top folder) into ``dest``: regular files
    only, no absolute path, no ``..``; readable by any user, writable by none but us."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts
            top = PurePosixPath(_INSIDE).name
            if len(parts) < 2 or parts[0] != top or ".." in parts or member.name.startswith("/"):
                continue
            if not (member.isfile() and parts[-1].endswith(".pyc")):
                continue
            source = tar.extractfile(member)
            if source is None:
                continue
            target = dest.joinpath(*parts[1:])
            for folder in reversed(target.relative_to(dest).parents):
                d = dest / folder
                if not d.is_dir():
                    d.mkdir()
                    d.chmod(0o755)
            with open(target, "wb") as out:
                shutil.copyfileobj(source, out)
            target.chmod(0o644)
