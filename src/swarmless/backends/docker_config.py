"""What every container of a function gets on one Docker Engine, part of
:class:`swarmless.backends.docker.DockerBackend`: its limits (CPUs, processes, log size),
its network and memory, its binds (secrets, the engine's socket when asked for), and the
gateway's own runtime package, copied for warm containers to mount read-only."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from swarmless.backends.base import EngineBackend
from swarmless.engine import endpoint
from swarmless.exceptions import SwarmlessError
from swarmless.runtime.package import INIT as PACKAGE_INIT
from swarmless.spec import FunctionSpec

__all__ = ["RUNTIME_MOUNT", "ContainerConfig", "runtime_package_dir"]

RUNTIME_MOUNT = "/opt/swarmless"


def runtime_package_dir(data_dir: Path) -> Path:
    """Copy the runtime package (and an empty ``swarmless/__init__.py``) under ``data_dir``.

    Only ``swarmless.runtime`` goes into containers: it needs nothing but the standard
    library, and the rest of the package (docker, starlette, ...) is not installed there.
    """
    import swarmless.runtime as runtime

    src = Path(runtime.__file__).parent
    root = data_dir / "runtime"
    dest = root / "swarmless" / "runtime"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (root / "swarmless" / "__init__.py").write_text(_STUB)
    return root


#: The mounted package's ``__init__`` (swarmless/runtime/package.py): an installed swarmless
#: (the full SDK) if the image has one, else the in-function client (``from_env()``,
#: invoke, spawn, result), while ``swarmless.runtime`` stays the gateway's own.
_STUB = PACKAGE_INIT


class ContainerConfig(EngineBackend):
    """The containers' configuration of :class:`swarmless.backends.docker.DockerBackend`
    (which reads the engine's facts at start)."""

    #: The engine's CPUs and default log driver (read at start): a default CPU limit
    #: is never over the host's, and log sizes apply only to drivers that take them.
    _host_cpus: float
    _log_driver: str

    def limits(self, spec: FunctionSpec) -> dict[str, Any]:
        """The limits every container of ``spec`` gets, as Engine API ``HostConfig``
        entries: CPUs, processes and threads, log size. Each is the spec's, else the
        gateway's default (``function_cpus``, ``function_pids``, ``function_log_size``;
        0 there: none). A log size applies to the json-file and local drivers (two files of
        half the size each); another driver is left as the engine's operator set it."""
        s = self.settings
        out: dict[str, Any] = {}
        cpus = spec.cpus if spec.cpus is not None else min(s.function_cpus, self._host_cpus)
        if cpus:
            out["NanoCpus"] = int(cpus * 1e9)
        pids = spec.pids if spec.pids is not None else s.function_pids
        if pids:
            out["PidsLimit"] = pids
        size = spec.log_size if spec.log_size is not None else s.function_log_size
        if size and self._log_driver in ("json-file", "local"):
            out["LogConfig"] = {
                "Type": self._log_driver,
                "Config": {"max-size": str(max(size // 2, 1024)), "max-file": "2"},
            }
        return out

    def _host_config(self, spec: FunctionSpec, **extra: Any) -> dict[str, Any]:
        cfg: dict[str, Any] = {"network_mode": spec.network or self.settings.network}
        if spec.memory is not None:
            cfg["mem_limit"] = spec.memory
        if spec.cpus is not None:
            cfg["nano_cpus"] = int(spec.cpus * 1e9)
        binds = self._secret_binds(spec)
        if binds:
            cfg["binds"] = binds
        cfg.update(extra)
        return cfg

    def _socket_binds(self, spec: FunctionSpec) -> list[str]:
        """``docker: host-socket``: the engine's own socket, on purpose (root on the host)."""
        if spec.docker != "host-socket":
            return []
        path = endpoint(self.settings.docker_host).socket or "/var/run/docker.sock"
        return [f"{path}:/var/run/docker.sock"]

    def _secret_binds(self, spec: FunctionSpec) -> list[str]:
        return [f"{self._secret_path(name)}:/run/secrets/{name}:ro" for name in spec.secrets]

    def _secret_path(self, name: str) -> Path:
        path = self.settings.data_dir / "secrets" / name
        if not path.is_file():
            raise SwarmlessError(
                f"secret {name!r} does not exist; create it: swarmless secret create {name} FILE"
            )
        return path
