"""Shared pieces of the benchmarks: a gateway process, a function image, percentiles, the
target lines, CPU accounting (machine, process, container cgroup) and the environment."""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import docker
import httpx

T = TypeVar("T")

PYTHON = os.environ.get("SWARMLESS_BASE_IMAGE", "swarmless/python:bookworm")


def build_image(engine: docker.DockerClient, tag: str, handler: str, label: str) -> str:
    """An image FROM the Python base with ``handler`` as /function/handler.py."""
    dockerfile = f"FROM {PYTHON}\nCOPY handler.py /function/handler.py\nWORKDIR /function\n"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("Dockerfile", dockerfile.encode()), ("handler.py", handler.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    engine.images.build(
        fileobj=buf, custom_context=True, tag=tag, rm=True, labels={"swarmless.bench": label}
    )
    return tag


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


class Gateway:
    """A ``swarmless up`` process with its own data dir, network and instance name."""

    def __init__(
        self, url: str, token: str, instance: str, pid: int = 0, data: Path | None = None
    ) -> None:
        self.url, self.token, self.instance = url, token, instance
        #: The gateway's process id and data dir (its SQLite store is ``data/swarmless.db``).
        self.pid, self.data = pid, data

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@contextlib.contextmanager
def gateway(
    engine: docker.DockerClient,
    name: str,
    *,
    instance: str | None = None,
    env: dict[str, str] | None = None,
    launch: list[str] | None = None,
) -> Iterator[Gateway]:
    """Start a gateway process; on exit stop it and remove all it created (its data dir
    too, unless the run failed: then it stays, with the gateway's log). ``instance``
    replaces the default ``bench-NAME-PID``; ``env`` is added to the gateway's environment
    (a store URL, say); ``launch`` replaces ``python -m swarmless`` (the program that is
    given ``up --log-level warning``)."""
    instance = instance or f"bench-{name}-{os.getpid()}"
    data = Path(tempfile.mkdtemp(prefix=f"swarmless-bench-{name}-"))
    port = free_port()
    env = {
        **os.environ,
        "SWARMLESS_DATA_DIR": str(data),
        "SWARMLESS_INSTANCE": instance,
        "SWARMLESS_NETWORK": f"swarmless-{instance}",
        "SWARMLESS_PORT": str(port),
        **(env or {}),
    }
    log = open(data / "gateway.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [*(launch or [sys.executable, "-m", "swarmless"]), "up", "--log-level", "warning"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    started_fine = False
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"gateway did not start; see {data / 'gateway.log'}")
            time.sleep(0.1)
        yield Gateway(url, (data / "token").read_text().strip(), instance, proc.pid, data)
        started_fine = True
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        flt = {"label": f"swarmless.gateway={instance}"}
        for c in engine.api.containers(all=True, filters=flt):
            with contextlib.suppress(docker.errors.DockerException):
                engine.api.remove_container(c["Id"], force=True)
        with contextlib.suppress(docker.errors.DockerException):
            engine.networks.get(f"swarmless-{instance}").remove()
        log.close()
        if started_fine:  # a run that failed keeps its data dir and gateway.log to read
            shutil.rmtree(data, ignore_errors=True)
        else:
            print(f"  ({instance}: log {data / 'gateway.log'})", flush=True)


# -- what every benchmark reports ---------------------------------------------------------

OPS = {"<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b}


def target(name: str, value: float, op: str, goal: float, unit: str = "ratio") -> dict[str, object]:
    """Print the one line of a target (``NAME ratio X (target <= Y: PASS)``); its record."""
    ok = bool(OPS[op](value, goal))
    shown = f"{value:.3g}" if unit == "ratio" else f"{value:,.1f}"
    print(f"{name} {unit} {shown} (target {op} {goal:g}: {'PASS' if ok else 'FAIL'})", flush=True)
    return {"name": name, "unit": unit, "value": value, "op": op, "target": goal, "pass": ok}


def write_json(path: str | None, data: dict[str, object]) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=1, default=float))


# -- CPU accounting: whole machine, processes, containers -----------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_stat() -> list[int]:
    return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def host_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (all cores, /proc/stat). Time
    stolen by the hypervisor (a virtual machine's ``steal``) is in the total, not busy: it
    is no one's work here (see :func:`host_steal`)."""
    values = _proc_stat()
    idle = values[3] + values[4] + values[7]  # idle + iowait + steal
    total = sum(values[:8])  # guest time is already counted in user
    return (total - idle) / _TICK, total / _TICK


def host_steal() -> tuple[float, float]:
    """(stolen, total) CPU seconds so far: the time this virtual machine's cores were ready
    to run and the hypervisor ran another guest (0 on bare metal)."""
    values = _proc_stat()
    return values[7] / _TICK, sum(values[:8]) / _TICK


def stolen_share(before: tuple[float, float], after: tuple[float, float]) -> float:
    """The share of the machine's CPU time stolen between two :func:`host_steal` readings."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


#: A sample (both sides of an interleaved pair) during which the hypervisor stole more than
#: this share of the machine's CPU time measured the other guests as much as this code: it
#: is run again, and the calmest try kept (:func:`calm`).
STEAL_MAX = 0.05
#: Tries of one sample at most: the calmest one is kept, whatever was stolen during it
#: (``$SWARMLESS_BENCH_STEAL_TRIES``; ``make bench-quick``, which only checks that every
#: number is produced, runs each sample once).
STEAL_TRIES = max(1, int(os.environ.get("SWARMLESS_BENCH_STEAL_TRIES") or 3))


def calm(
    run: Callable[[], T],
    what: str,
    discarded: list[dict[str, Any]],
    tries: int = STEAL_TRIES,
    steal: Callable[[], tuple[float, float]] | None = None,
) -> tuple[T, float]:
    """``run()`` (one sample: both sides of an interleaved pair, so that a discarded one
    takes both with it), again while the hypervisor stole more than :data:`STEAL_MAX` of
    the machine's CPU time during it, ``tries`` times at most (the time a benchmark takes
    stays bounded); the calmest try is kept (the first one under :data:`STEAL_MAX`, else
    the one during which the least was stolen: what is chosen on is the other guests'
    load, never the numbers measured). Returns (what the kept try returned, the share
    stolen during it); each try not kept is appended to ``discarded`` (``what`` and the
    share stolen) and printed, for the report. ``steal`` reads (stolen, total) CPU
    seconds (:func:`host_steal` by default)."""
    read = steal or host_steal
    done: list[tuple[float, T]] = []
    for attempt in range(1, tries + 1):
        before = read()
        got = run()
        share = stolen_share(before, read())
        done.append((share, got))
        if share <= STEAL_MAX:
            break
        if attempt < tries:
            print(
                f"  {what}: the hypervisor stole {share:.0%} of the machine's CPU time during"
                " it (another guest's load, not ours); again",
                flush=True,
            )
    kept = min(range(len(done)), key=lambda i: done[i][0])
    for i, (share, _) in enumerate(done):
        if i != kept:
            discarded.append({"what": what, "stolen": share})
    share, got = done[kept]
    if len(done) > 1:
        print(
            f"  {what}: kept try {kept + 1} of {len(done)} ({share:.0%} of the CPU time stolen)",
            flush=True,
        )
    return got, share


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children (the load generators)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def container_cpu(engine: docker.DockerClient, cid: str) -> float:
    """CPU seconds a container's cgroup has used (cgroup v1 or v2; else the engine's stats)."""
    for path, scale in (
        (f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage", 1e-9),
        (f"/sys/fs/cgroup/cpu,cpuacct/docker/{cid}/cpuacct.usage", 1e-9),
        (f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat", 1e-6),
        (f"/sys/fs/cgroup/docker/{cid}/cpu.stat", 1e-6),
    ):
        with contextlib.suppress(OSError):
            text = Path(path).read_text()
            if path.endswith("cpu.stat"):
                usage = next(ln for ln in text.splitlines() if ln.startswith("usage_usec"))
                return int(usage.split()[1]) * scale
            return int(text) * scale
    stats = engine.api.stats(cid, stream=False)
    return float(stats["cpu_stats"]["cpu_usage"]["total_usage"]) * 1e-9


def container_states(engine: docker.DockerClient, labels: list[str]) -> dict[str, str]:
    """{short id: engine state} of every container carrying all ``labels`` (``paused``,
    ``running``, ``created``, ``exited``...): what the engine itself says, not the gateway."""
    found = engine.api.containers(all=True, filters={"label": labels})
    return {c["Id"][:12]: str(c["State"]) for c in found}


# -- the machine a run was on ---------------------------------------------------------------


def environment(engine: docker.DockerClient | None = None) -> dict[str, object]:
    """CPU model, cores, kernel, Docker, runc, storage driver, load average."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    env: dict[str, object] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "loadavg": list(os.getloadavg()),
    }
    with contextlib.suppress(Exception):
        engine = engine or docker.from_env()
        info = engine.info()
        env["docker"] = info.get("ServerVersion")
        env["storage_driver"] = info.get("Driver")
        env["cgroup"] = f"v{info.get('CgroupVersion')} ({info.get('CgroupDriver')})"
        env["runc"] = (info.get("RuncCommit") or {}).get("ID")
    with contextlib.suppress(Exception):
        out = subprocess.run(["runc", "--version"], capture_output=True, text=True, timeout=10)
        env["runc"] = out.stdout.splitlines()[0].removeprefix("runc version ").strip()
    # The code measured: the commit, and what of src/ differed from it in the work tree.
    root = Path(__file__).resolve().parent.parent
    with contextlib.suppress(Exception):
        git = ["git", "-C", str(root)]
        head = subprocess.run(
            [*git, "log", "-1", "--format=%h %s"], capture_output=True, text=True, timeout=10
        )
        env["commit"] = head.stdout.strip()[:100]
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "src"], capture_output=True, text=True, timeout=10
        )
        env["src_modified"] = [ln[3:] for ln in dirty.stdout.splitlines()]
    return env


def check(ok: bool, what: object) -> None:
    """A check that stays on under ``python -O``: the run stops with ``what``."""
    if not ok:
        raise SystemExit(f"unexpected: {what!r}")


def exit_on_sigterm() -> None:
    """SIGTERM unwinds like an error (SystemExit), so every ``finally`` removes what the run
    made: ``bench/report.py`` stops a benchmark that overruns its time with SIGTERM."""

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
