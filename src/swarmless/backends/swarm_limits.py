"""The limits of a function's containers on a Swarm, part of the Swarm backend.

The same defaults as the single-engine backend's
(:meth:`swarmless.backends.docker.DockerBackend.limits`), said the way a service's task
template says them:

- **processes and threads**: ``Resources.Limits.Pids`` (Engine API 1.41, Docker 20.10),
  the spec's ``pids``, else the gateway's ``function_pids`` (a fork bomb stops there);
- **CPUs**: ``Resources.Limits.NanoCPUs``, the spec's ``cpus`` (then also reserved, so that
  Swarm places the task where they are free), else ``function_cpus``, never more than
  the smallest node has (a limit over a node's CPUs fails the task there);
- **memory**: the spec's, limited and reserved (as before);
- **log size**: the ``json-file`` and ``local`` drivers (the Swarm's default one, as the
  manager reports it) get ``max-size`` and ``max-file``: two files of half the spec's
  ``log_size``, else of ``function_log_size``. Another driver is left as its operator set it.

A one-shot call's answer is read from its service's log once the task ended, so that log
must hold the answer: its files hold at least :data:`ONESHOT_LOG_FACTOR` times the spec's
``max_output`` each, what is read is bounded by ``max_output``, and an answer that may have
lost its beginning to the log's rotation (:func:`may_be_cut`) is refused like one over
``max_output``, never handed over cut. The stdout of a one-shot call past ``max_output`` is
found once the task has ended (its timeout bounds it), not at once as on one engine.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import docker.types

from swarmless.config import Settings
from swarmless.spec import FunctionSpec

__all__ = ["ONESHOT_LOG_FACTOR", "SwarmLimits", "may_be_cut", "swarm_facts"]

#: Each log file of a one-shot service holds at least this many times its ``max_output``.
ONESHOT_LOG_FACTOR = 8
#: Log drivers that take ``max-size`` and ``max-file``.
_SIZED_DRIVERS = ("json-file", "local")
#: The most a log driver adds to a line it stores (json-file: the JSON object, its stream
#: and timestamp), and to each 16 KiB piece of a longer line; a byte may take 6 (``\\u0000``).
_LINE_OVERHEAD = 128
_PIECE = 16 * 1024


@dataclasses.dataclass(frozen=True, kw_only=True)
class SwarmLimits:
    """The gateway's defaults and what the Swarm allows (read at the backend's start)."""

    #: The gateway's defaults (0: none): ``function_cpus``, ``function_pids``,
    #: ``function_log_size``.
    cpus: float = 0.0
    pids: int = 0
    log_size: int = 0
    #: CPUs of the smallest node (inf: unknown).
    node_cpus: float = math.inf
    #: The Swarm's default log driver ("" unknown: no log options).
    log_driver: str = ""

    @classmethod
    def of(cls, settings: Settings, *, node_cpus: float, log_driver: str) -> SwarmLimits:
        return cls(
            cpus=settings.function_cpus,
            pids=settings.function_pids,
            log_size=settings.function_log_size,
            node_cpus=node_cpus,
            log_driver=log_driver,
        )

    def resources(self, spec: FunctionSpec) -> docker.types.Resources | None:
        """``Resources`` of a task of ``spec``: CPUs, memory, processes (None: no limit)."""
        cpus = spec.cpus if spec.cpus is not None else min(self.cpus, self.node_cpus)
        nano = int(cpus * 1e9) if cpus else None
        reserved = int(spec.cpus * 1e9) if spec.cpus is not None else None
        pids = spec.pids if spec.pids is not None else self.pids
        if nano is None and spec.memory is None and not pids:
            return None
        resources = docker.types.Resources(
            cpu_limit=nano,
            mem_limit=spec.memory,
            cpu_reservation=reserved,
            mem_reservation=spec.memory,
        )
        if pids:  # docker-py's Resources has no pids: the Engine API's name, as it is
            limits: dict[str, Any] = resources.setdefault("Limits", {})
            limits["Pids"] = pids
        return resources

    def log_file_size(self, spec: FunctionSpec, *, oneshot: bool) -> int:
        """Bytes of each of the two log files of a task of ``spec`` (0: not limited)."""
        size = spec.log_size if spec.log_size is not None else self.log_size
        if not size or self.log_driver not in _SIZED_DRIVERS:
            return 0
        half = max(size // 2, 1024)
        return max(half, ONESHOT_LOG_FACTOR * spec.max_output) if oneshot else half

    def log_config(self, spec: FunctionSpec, *, oneshot: bool) -> docker.types.DriverConfig | None:
        """The task's log driver with its size options; None: the Swarm's default as is."""
        size = self.log_file_size(spec, oneshot=oneshot)
        if not size:
            return None
        return docker.types.DriverConfig(self.log_driver, {"max-size": str(size), "max-file": "2"})


def may_be_cut(stdout: bytes, stderr: bytes, file_size: int) -> bool:
    """Whether a one-shot task's log, of which ``stdout`` and ``stderr`` were read, may
    have rotated (and lost its beginning): what was read may take ``file_size`` bytes or
    more in the log file (bounded from above: every byte escaped, every line's overhead).
    Only a log that filled a file rotates, and what is left of it then fills one at least.
    """
    if not file_size:
        return False
    stored = 0
    for data in (stdout, stderr):
        pieces = data.count(b"\n") + len(data) // _PIECE + 1
        stored += 6 * len(data) + _LINE_OVERHEAD * pieces
    return stored >= file_size


def swarm_facts(api: Any) -> tuple[float, str]:
    """(CPUs of the smallest ready node, the manager's default log driver)."""
    cpus = [
        int(((n.get("Description") or {}).get("Resources") or {}).get("NanoCPUs") or 0) / 1e9
        for n in api.nodes()
        if ((n.get("Status") or {}).get("State")) == "ready"
    ]
    node_cpus = min((c for c in cpus if c > 0), default=math.inf)
    return node_cpus, str(api.info().get("LoggingDriver") or "")
