"""The arena of the attack battery: images, decoys, and what the engine must still look like.

- :func:`probe_image`: swarmless/python with the Docker SDK, the swarmless SDK, the docker
  CLI of Debian's ``docker.io`` (the one the issue attacked with) and ``tests/security/probe.py``
  as ``/app/probe.py``;
- :func:`forged_image`: busybox whose image config carries forged ``swarmless.*`` labels;
- :func:`child_problems`: why a container is not a well-formed child of the attacker (the
  rules every child must keep, whatever the proxy let through);
- :class:`EngineView`: the objects of this run on the engine (by name prefix and label), and
  the engine's events, read back after the battery.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import docker
import docker.errors

from tests.security.probe import MARK
from tests.test_proxy import PACKAGES, SITE, VENV_SITE

PROBE = Path(__file__).with_name("probe.py")

#: Options a tmpfs may carry (anything else: exec, suid, dev, rbind... is an escape).
TMPFS_OPTIONS = {"noexec", "nosuid", "nodev", "ro", "rw"}
TMPFS_VALUED = {"size", "mode"}
SAFE_SECURITY_OPTS = {"no-new-privileges", "no-new-privileges:true", "no-new-privileges=true"}


def debian_docker_cli() -> Path:
    """The docker CLI of Debian's docker.io when installed, else the one on PATH."""
    candidates = [Path("/usr/bin/docker")]
    found = shutil.which("docker")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if not path.is_file():
            continue
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, check=False)
        if "dfsg" in out.stdout or path == candidates[-1]:
            return path
    raise RuntimeError("no docker CLI on this machine: install Debian's docker.io")


def _add_text(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o755
    tar.addfile(info, io.BytesIO(data))


def probe_image(engine: docker.DockerClient, tag: str, base: str, labels: dict[str, str]) -> str:
    buf = io.BytesIO()

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if "__pycache__" in info.name else info

    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in PACKAGES:
            tar.add(VENV_SITE / name, arcname=f"site/{name}", filter=clean)
        tar.add(SITE / "swarmless", arcname="site/swarmless", filter=clean)
        tar.add(str(debian_docker_cli()), arcname="docker")
        _add_text(tar, "app/probe.py", PROBE.read_bytes())
        dockerfile = (
            f"FROM {base}\n"
            "COPY site/ /usr/local/lib/python3.11/dist-packages/\n"
            "COPY docker /usr/local/bin/docker\n"
            "COPY app/ /app/\n"
            "WORKDIR /app\n"
        )
        _add_text(tar, "Dockerfile", dockerfile.encode())
    buf.seek(0)
    engine.images.build(
        fileobj=buf, custom_context=True, tag=tag, rm=True, forcerm=True, labels=labels
    )
    return tag


#: What the forged image claims (the proxy must override every one of them on a child).
FORGED_LABELS = {
    "swarmless.gateway": "another-instance",
    "swarmless.parent": "xyz",
    "swarmless.kind": "gateway",
    "swarmless.managed": "false",
    "swarmless.function": "keeper",
    "swarmless.worker": "forged-worker",
    "swarmless.call": "forged-call",
    "swarmless.instance": "another-instance",
    "swarmless.owner": "forged-owner",
}


def forged_image(engine: docker.DockerClient, tag: str, base: str, labels: dict[str, str]) -> str:
    lines = " ".join(f'{k}="{v}"' for k, v in FORGED_LABELS.items())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add_text(tar, "Dockerfile", f"FROM {base}\nLABEL {lines}\n".encode())
    buf.seek(0)
    engine.images.build(fileobj=buf, custom_context=True, tag=tag, rm=True, labels=labels)
    return tag


def _tmpfs_problems(value: Any) -> list[str]:
    out = []
    for target, opts in (value or {}).items():
        for opt in filter(None, str(opts).split(",")):
            key = opt.split("=", 1)[0]
            if not (opt in TMPFS_OPTIONS or ("=" in opt and key in TMPFS_VALUED)):
                out.append(f"tmpfs {target} option {opt!r}")
    return out


def child_problems(
    child: dict[str, Any],
    *,
    parent: str,
    instance: str,
    network: str,
    session: str,
    forbidden_aliases: Iterable[str],
    memory_cap: int,
    cpu_cap: float,
) -> list[str]:
    """What is wrong with ``child`` (the probe's :func:`essentials` of an inspect)."""
    out: list[str] = []
    labels = child.get("Labels") or {}
    want = {
        "swarmless.parent": parent,
        "swarmless.kind": "child",
        "swarmless.gateway": instance,
        "swarmless.managed": "true",
        "swarmless.test": session,
    }
    for key, value in want.items():
        if labels.get(key) != value:
            out.append(f"label {key}={labels.get(key)!r}, not {value!r}")
    for key, value in FORGED_LABELS.items():
        if key not in want and labels.get(key) == value:
            out.append(f"label {key}={value!r} inherited from a forged image")
    hc = child.get("HostConfig") or {}
    if hc.get("Privileged"):
        out.append("privileged")
    if hc.get("Binds"):
        out.append(f"binds {hc['Binds']}")
    for m in hc.get("Mounts") or []:
        if m.get("Type") != "tmpfs":
            out.append(f"mount {m}")
        extra = set(m.get("TmpfsOptions") or {}) - {"SizeBytes", "Mode"}
        if extra:
            out.append(f"tmpfs mount options {sorted(extra)}")
    for m in child.get("EngineMounts") or []:
        if m.get("Type") in ("bind", "volume"):
            out.append(f"engine mount {m.get('Type')} {m.get('Source')}")
    out += _tmpfs_problems(hc.get("Tmpfs"))
    if hc.get("NetworkMode") not in (network, "none"):
        out.append(f"network mode {hc.get('NetworkMode')!r}")
    # CgroupnsMode is left out: "host" is the engine's default on cgroup v1.
    for field in ("PidMode", "IpcMode", "UTSMode", "UsernsMode"):
        value = str(hc.get(field) or "")
        if value == "host" or value.startswith("container:"):
            out.append(f"{field}={value}")
    for field in ("CapAdd", "Devices", "DeviceRequests", "Sysctls", "PortBindings", "VolumesFrom"):
        if hc.get(field):
            out.append(f"{field}={hc[field]}")
    if hc.get("PublishAllPorts"):
        out.append("PublishAllPorts")
    if set(hc.get("SecurityOpt") or []) - SAFE_SECURITY_OPTS:
        out.append(f"SecurityOpt={hc['SecurityOpt']}")
    if (hc.get("RestartPolicy") or {}).get("Name") not in (None, "", "no"):
        out.append(f"restart policy {hc['RestartPolicy']}")
    if hc.get("Runtime") not in (None, "", "runc"):
        out.append(f"runtime {hc['Runtime']}")
    if hc.get("CgroupParent") or hc.get("OomKillDisable") or hc.get("Ulimits"):
        out.append("cgroup parent, OOM kill disabled or ulimits")
    memory = int(hc.get("Memory") or 0)
    if not 0 < memory <= memory_cap:
        out.append(f"memory {memory} outside (0, {memory_cap}]")
    cpus = int(hc.get("NanoCpus") or 0)
    if not 0 < cpus <= int(cpu_cap * 1e9):
        out.append(f"NanoCpus {cpus} outside (0, {cpu_cap:g} CPUs]")
    if int(hc.get("PidsLimit") or 0) <= 0:
        out.append(f"PidsLimit {hc.get('PidsLimit')} (unlimited)")
    forbidden = {a.lower().rstrip(".") for a in forbidden_aliases}
    for net, aliases in (child.get("Aliases") or {}).items():
        bad = [a for a in aliases if a.lower().rstrip(".") in forbidden]
        if bad:
            out.append(f"aliases {bad} on {net}")
    return out


def essentials_of(engine: docker.DockerClient, cid: str) -> dict[str, Any] | None:
    """The probe's view of a child, read from the engine directly."""
    from tests.security.probe import essentials

    try:
        return essentials(engine.api.inspect_container(cid))
    except docker.errors.NotFound:
        return None


class EngineView:
    """Objects of one run on the engine: names under ``prefix``, containers marked ``run``."""

    def __init__(self, engine: docker.DockerClient, prefix: str, run: str) -> None:
        self.engine, self.prefix, self.run = engine, prefix, run

    def marked(self) -> list[dict[str, Any]]:
        rows = self.engine.api.containers(all=True, filters={"label": MARK})
        return [r for r in rows if str(r["Labels"].get(MARK, "")).startswith(f"{self.run}:")]

    def networks(self) -> set[str]:
        return {n["Name"] for n in self.engine.api.networks() if n["Name"].startswith(self.prefix)}

    def volumes(self) -> set[str]:
        vols = self.engine.api.volumes().get("Volumes") or []
        return {v["Name"] for v in vols if v["Name"].startswith(self.prefix)}

    def images(self) -> set[str]:
        return {
            t for i in self.engine.api.images() for t in i.get("RepoTags") or [] if self.prefix in t
        }

    def clean(self, keep_images: Iterable[str] = ()) -> None:
        """Remove what the battery left: marked containers, networks, volumes, images."""
        for row in self.marked():
            with contextlib.suppress(docker.errors.DockerException):
                self.engine.api.remove_container(row["Id"], force=True)
        for name in self.networks():
            if self.run in name:
                with contextlib.suppress(docker.errors.DockerException):
                    self.engine.api.remove_network(name)
        for name in self.volumes():
            if self.run in name:
                with contextlib.suppress(docker.errors.DockerException):
                    self.engine.api.remove_volume(name, force=True)
        keep = set(keep_images)
        for tag in self.images():
            if self.run in tag and tag not in keep:
                with contextlib.suppress(docker.errors.DockerException):
                    self.engine.api.remove_image(tag, force=True)


class EventLog:
    """Every engine event from ``since`` on, followed live (the engine keeps only the last
    few hundred for a later ``since`` query: a long battery would outrun them)."""

    def __init__(self, engine: docker.DockerClient, since: int, sentinel_image: str) -> None:
        self.engine, self.sentinel_image = engine, sentinel_image
        self.events: list[dict[str, Any]] = []
        self._stream = engine.events(since=since, decode=True)
        self._thread = threading.Thread(target=self._follow, daemon=True, name="engine-events")
        self._thread.start()

    def _follow(self) -> None:
        with contextlib.suppress(Exception):  # the stream ends when closed
            for event in self._stream:
                self.events.append(event)

    def stop(self, timeout: float = 30) -> list[dict[str, Any]]:
        """Stop once every event so far has arrived: a tag of our own is the last one."""
        repo = f"{self.sentinel_image.rsplit(':', 1)[0]}-sentinel"
        self.engine.api.tag(self.sentinel_image, repo, "end")
        deadline = time.monotonic() + timeout
        try:
            while not any(
                e.get("Action") == "tag"
                and ((e.get("Actor") or {}).get("Attributes") or {}).get("name") == f"{repo}:end"
                for e in self.events
            ):
                if time.monotonic() > deadline:
                    raise AssertionError(f"the engine's events stopped ({len(self.events)})")
                time.sleep(0.05)
        finally:
            self.engine.api.remove_image(f"{repo}:end")
        self._stream.close()
        self._thread.join(10)
        return list(self.events)
