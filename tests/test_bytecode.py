"""The bytecode of the runtime's imports, built once per image and mounted read-only into
its warm containers (swarmless.backends.docker_bytecode, swarmless.runtime.bytecode).

What the copy out of the build container keeps (regular ``.pyc`` files under its folder,
nothing else), that the runtime lets go of the prefix before it loads the handler, and, on
the real engine, that a warm function's containers get the folder (read-only) once it is
built, its handler sees no prefix, and no build container is left.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest

from swarmless.backends.docker_bytecode import _extract
from swarmless.runtime.bytecode import BYTECODE_MOUNT
from tests.conftest import handler_image
from tests.gateway_harness import RunningGateway
from tests.waiting import wait_until

HANDLER = """
import os
import sys
import json

def handle(event, context):
    return json.dumps({
        "prefix": sys.pycache_prefix,
        "env": os.environ.get("PYTHONPYCACHEPREFIX"),
    }).encode()
"""


def _tar(members: list[tuple[str, bytes | None, str]]) -> bytes:
    """A tar of (name, data, kind) with kind file, dir or symlink (data: its target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = (data or b"").decode()
                tar.addfile(info)
            else:
                info.size = len(data or b"")
                tar.addfile(info, io.BytesIO(data or b""))
    return buf.getvalue()


def test_the_copy_keeps_only_pyc_files_under_its_folder(tmp_path: Path) -> None:
    data = _tar(
        [
            ("swarmless-pyc", None, "dir"),
            ("swarmless-pyc/usr/lib/python3.11/json/__init__.cpython-311.pyc", b"ok", "file"),
            ("swarmless-pyc/usr/lib/python3.11/notes.txt", b"no", "file"),
            ("swarmless-pyc/../escape.cpython-311.pyc", b"no", "file"),
            ("/abs/x.cpython-311.pyc", b"no", "file"),
            ("other/x.cpython-311.pyc", b"no", "file"),
            ("swarmless-pyc/link.cpython-311.pyc", b"/etc/passwd", "symlink"),
        ]
    )
    dest = tmp_path / "cache"
    dest.mkdir()
    _extract(data, dest)
    found = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert found == ["usr/lib/python3.11/json/__init__.cpython-311.pyc"]
    kept = dest / found[0]
    assert kept.read_bytes() == b"ok"
    assert oct(kept.stat().st_mode & 0o777) == oct(0o644)
    assert oct((dest / "usr").stat().st_mode & 0o777) == oct(0o755)
    assert not (tmp_path / "escape.cpython-311.pyc").exists()
    assert not any(p.is_symlink() for p in dest.rglob("*"))


@pytest.mark.parametrize(("prefix", "kept"), [(BYTECODE_MOUNT, False), ("/somewhere/else", True)])
def test_release_lets_go_of_our_prefix_only(prefix: str, kept: bool) -> None:
    code = (
        "import os, sys, json\n"
        "from swarmless.runtime.bytecode import release\n"
        "release()\n"
        "print(json.dumps([sys.pycache_prefix, os.environ.get('PYTHONPYCACHEPREFIX')]))\n"
    )
    env = {**os.environ, "PYTHONPYCACHEPREFIX": prefix}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    expected = [prefix, prefix] if kept else [None, None]
    assert json.loads(out) == expected


@pytest.fixture(scope="module")
def gw(
    engine: docker.DockerClient, labels: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    g = RunningGateway(tmp_path_factory.mktemp("gw-bytecode"), labels).start()
    yield g
    g.stop(engine)


def test_warm_containers_get_the_image_bytecode_read_only(
    gw: RunningGateway,
    engine: docker.DockerClient,
    build_image: object,
    labels: dict[str, str],
) -> None:
    image = handler_image(build_image, "bytecode", HANDLER)  # type: ignore[arg-type]
    image_id = engine.images.get(image).id.split(":")[-1]
    folder = gw.settings.data_dir / "bytecode" / image_id[:32]
    gw.client().deploy({"name": "pyc", "image": image, "mode": "warm", "handler": "handler:handle"})
    # Built in the background once the function is deployed; then no build container stays.
    wait_until(lambda: folder.is_dir(), 120, "the image's bytecode folder")
    pycs = [p.name for p in folder.rglob("*.pyc")]
    assert any(name.startswith("client.") for name in pycs), pycs  # http.client
    assert any(name.startswith("loop.") for name in pycs), pycs  # swarmless.runtime.loop
    # The handler kinds' modules too: a container imports its own kind's before release.
    ours = {p.name.split(".")[0] for p in folder.rglob("swarmless/runtime/*.pyc")}
    assert {"loop", "cgi", "command", "wsgi"} <= ours, ours
    flt = {"label": [f"{k}={v}" for k, v in labels.items()] + ["swarmless.kind=bytecode"]}
    wait_until(lambda: not engine.api.containers(all=True, filters=flt), 60, "no build container")

    r = httpx.post(f"{gw.url}/function/pyc", content=b"", timeout=60)
    assert r.status_code == 200, r.text
    # The handler is loaded after the runtime let go of the prefix: its modules, and those
    # of commands it forks, use their own __pycache__.
    assert r.json() == {"prefix": None, "env": None}
    (cid,) = gw.containers(engine, **{"swarmless.function": "pyc"})
    mounts = {m["Destination"]: m for m in engine.api.inspect_container(cid)["Mounts"]}
    mount = mounts[BYTECODE_MOUNT]
    assert mount["Source"] == str(folder)
    assert mount["RW"] is False
    env = engine.api.inspect_container(cid)["Config"]["Env"]
    assert f"PYTHONPYCACHEPREFIX={BYTECODE_MOUNT}" in env
