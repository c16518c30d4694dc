"""The gateway against baselines measured in the same run, on loopback (issue 3, Benchmark).

    .venv/bin/python bench/gateway.py [--duration 5] [--reps 3] [--containers 4]
                                      [--concurrency 4] [--cold-samples 10] [--cgi-samples 20]
                                      [--loadgen auto|wrk|python] [--strict]

Four ratios, each printed with the absolute p50/p99 of both sides:

1. **throughput**: a warm no-op function through the gateway vs the same handler served
   directly by uvicorn in one process (same uvicorn settings as the gateway: httptools,
   asyncio loop), at 8 and 16 connections. Load: ``wrk`` (keep-alive, fixed duration) when
   installed, else a keep-alive asyncio client in a separate process. Target >= 0.3x.
2. **added latency** at one connection: gateway p50 - direct p50. Target <= 1 ms.
3. **first call** of a warm function with no container vs ``run()`` of the same image
   running the same handler once. Target <= 1.5x.
4. **cgi** per-request latency vs ``run()`` of the same image. Target <= 1.2x.

Load runs are interleaved (direct, gateway, gateway, direct, ...) and the medians over the
repetitions are reported; container samples alternate too. Beside the ratios it prints the
CPU time each server process spent per request and how busy the machine was, which is
where a bottleneck shows.

The gateway and the direct server run in their own processes (``gateway_processes.py``
beside this file), so neither shares an interpreter with the load or the benchmark. It
builds its two images, labels everything it starts ``swarmless.bench=<run id>`` and removes
every container, network and image it created on every exit path.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gateway_processes import (
    BODY,
    HANDLER,
    WRK_SCRIPT,
    Load,
    Server,
    pct,
    python_load,
    start_server,
    wrk_load,
)

#: What run() executes in the warm image: the same handler, once.
RUN_ONCE = "import sys; from handler import handle; sys.stdout.buffer.write(handle({}, None))"
CGI_SCRIPT = "#!/bin/sh\ncat >/dev/null\nprintf 'Content-Type: text/plain\\r\\n\\r\\nok\\n'\n"
BUSYBOX = "swarmless/busybox:latest"
DEFAULT_BASE = "swarmless/python:bookworm"


# -- statistics ---------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms" if seconds < 0.1 else f"{seconds * 1000:.0f} ms"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def expect(ok: bool, what: object) -> None:
    """A check that stays on under ``python -O``."""
    if not ok:
        raise RuntimeError(f"unexpected answer: {what!r}")


# -- CPU accounting -----------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def host_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return (total - idle) / _TICK, total / _TICK


# -- the benchmark ------------------------------------------------------------------------


class Bench:
    """Everything one run creates, so that ``close()`` can remove all of it."""

    def __init__(self, args: argparse.Namespace) -> None:
        import docker
        import httpx

        import swarmless

        self.args = args
        self.run_id = secrets.token_hex(4)
        self.label = ("swarmless.bench", f"gateway-{self.run_id}")
        self.labels = dict([self.label])
        self.instance = f"bench-{self.run_id}"
        self.token = secrets.token_urlsafe(24)
        self.engine = docker.from_env()
        self.client = swarmless.from_env()
        self.tmp = Path(tempfile.mkdtemp(prefix="swarmless-bench-"))
        self.images: list[str] = []
        self.servers: list[Server] = []
        self.gateway: Server | None = None
        self.direct: Server | None = None
        self.http: httpx.Client | None = None
        self._httpx = httpx

    # -- set-up ------------------------------------------------------------------------

    def build_images(self) -> tuple[str, str]:
        from swarmless.build import build_function

        base = os.environ.get("SWARMLESS_BASE_IMAGE", DEFAULT_BASE)
        warm_dir = self.tmp / "noop"
        warm_dir.mkdir()
        (warm_dir / "handler.py").write_text(HANDLER)
        cgi_dir = self.tmp / "cgi"
        cgi_dir.mkdir()
        script = cgi_dir / "handler.sh"
        script.write_text(CGI_SCRIPT)
        script.chmod(0o755)
        warm = f"swarmless-bench/noop:{self.run_id}"
        cgi = f"swarmless-bench/cgi:{self.run_id}"
        self.images += [warm, cgi]
        build_function(
            warm_dir,
            tag=warm,
            mode="warm",
            client=self.engine,
            base_image=base,
            labels=self.labels,
            function="noop",
        )
        build_function(
            cgi_dir,
            tag=cgi,
            mode="cgi",
            client=self.engine,
            base_image=BUSYBOX,
            labels=self.labels,
            function="cgi",
            command=["/function/handler.sh"],
        )
        return warm, cgi

    def start_servers(self) -> None:
        self.direct = start_server("direct", ["direct"], self.tmp / "direct.log", {})
        self.servers.append(self.direct)
        self.gateway = start_server(
            "gateway",
            ["gateway", str(self.tmp / "data"), self.instance, "=".join(self.label)],
            self.tmp / "gateway.log",
            {"SWARMLESS_BENCH_TOKEN": self.token},
        )
        self.servers.append(self.gateway)
        self.http = self._httpx.Client(
            base_url=self.gateway.url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=120,
        )

    def deploy(self, **spec: Any) -> None:
        assert self.http is not None
        r = self.http.post("/system/functions", json=spec)
        if r.status_code not in (200, 201):
            raise RuntimeError(f"deploy {spec['name']} failed: {r.status_code} {r.text}")

    def remove(self, name: str) -> None:
        assert self.http is not None
        self.http.delete(f"/system/functions/{name}")
        self.wait(lambda: not self.containers(name), 30, f"the containers of {name} to go")

    def containers(self, function: str | None = None) -> list[str]:
        flt = [f"swarmless.gateway={self.instance}"]
        if function is not None:
            flt.append(f"swarmless.function={function}")
        return [c["Id"] for c in self.engine.api.containers(all=True, filters={"label": flt})]

    def ready(self, name: str) -> int:
        assert self.http is not None
        r = self.http.get(f"/system/functions/{name}")
        return int(r.json()["containers"].get("ready", 0))

    @staticmethod
    def wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(0.1)

    # -- measurements --------------------------------------------------------------------

    def load(self, server: Server, path: str, connections: int, duration: float) -> Load:
        cpu0, (busy0, total0) = proc_cpu(server.proc.pid), host_cpu()
        if self.args.loadgen == "wrk":
            result = wrk_load(server.url + path, connections, duration, self.tmp / "post.lua")
        else:
            result = python_load(server.url + path, connections, duration)
        cpu1, (busy1, total1) = proc_cpu(server.proc.pid), host_cpu()
        result.server_cpu = (cpu1 - cpu0) / max(result.requests, 1)
        result.host_busy = (busy1 - busy0) / max(total1 - total0, 1e-9)
        if result.errors:
            raise RuntimeError(f"{server.name}: {result.errors} failed requests at c={connections}")
        return result

    def throughput(self) -> dict[tuple[str, int], list[Load]]:
        """Interleaved fixed-duration runs: {(target, connections): [Load per repetition]}."""
        assert self.gateway is not None
        assert self.direct is not None
        targets = {"direct": (self.direct, "/"), "gateway": (self.gateway, "/function/noop")}
        # A short warm-up of both paths (connections, caches, the pollers' first calls).
        for server, path in targets.values():
            self.load(server, path, 16, 1)
        before = set(self.containers("noop"))
        results: dict[tuple[str, int], list[Load]] = {}
        order = ["direct", "gateway"]
        for rep in range(self.args.reps):
            for connections in (1, 8, 16):
                for name in order:
                    server, path = targets[name]
                    got = self.load(server, path, connections, self.args.duration)
                    results.setdefault((name, connections), []).append(got)
                    print(
                        f"  rep {rep + 1} c={connections:<2} {name:<7} {got.rps:8.0f} req/s  "
                        f"p50 {ms(got.p50)}  p99 {ms(got.p99)}  "
                        f"cpu {got.server_cpu * 1e6:.0f} us/req  host busy {got.host_busy:.0%}",
                        flush=True,
                    )
                order.reverse()
        if set(self.containers("noop")) != before:
            print(
                "warning: warm containers were replaced during the runs (removed from outside?): "
                "the gateway numbers include restarts",
                flush=True,
            )
        return results

    def first_calls(self, image: str) -> tuple[list[float], list[float], list[dict[str, Any]]]:
        """First call of a warm function with no container vs run() of the same image."""
        assert self.http is not None
        cold: list[float] = []
        run: list[float] = []
        records: list[dict[str, Any]] = []
        cmd = ["python3", "-c", RUN_ONCE]
        out = self.client.run(image, cmd, labels=self.labels)  # warm the page cache
        expect(out == b"ok", out)
        for i in range(self.args.cold_samples):
            for kind in ("run", "cold") if i % 2 else ("cold", "run"):
                if kind == "run":
                    t0 = time.perf_counter()
                    out = self.client.run(image, cmd, labels=self.labels)
                    run.append(time.perf_counter() - t0)
                    expect(out == b"ok", out)
                    continue
                name = f"cold-{i}"
                self.deploy(
                    name=name,
                    image=image,
                    mode="warm",
                    handler="handler:handle",
                    min_containers=0,
                    max_containers=1,
                )
                t0 = time.perf_counter()
                r = self.http.post(f"/function/{name}", content=BODY)
                cold.append(time.perf_counter() - t0)
                expect(r.status_code == 200 and r.content == b"ok", (r.status_code, r.text))
                records.append(self.record(r.headers["x-call-id"]))
                self.remove(name)
        return cold, run, records

    def record(self, call_id: str) -> dict[str, Any]:
        """An invocation's record (written behind: ask again until it is there)."""
        assert self.http is not None
        deadline = time.monotonic() + 5
        while True:
            r = self.http.get(f"/invocations/{call_id}")
            if r.status_code == 200 and r.json().get("status") == "succeeded":
                return dict(r.json())
            if time.monotonic() > deadline:
                return {}
            time.sleep(0.05)

    def cgi_calls(self, image: str) -> dict[str, list[float]]:
        """cgi per-request latency vs run() of the same image with the same input.

        A third series, run() on the gateway's own function network, tells the cost of
        that network apart from the gateway's.
        """
        assert self.http is not None
        self.deploy(name="cgi", image=image, mode="cgi", command=["/function/handler.sh"])
        env = {"REQUEST_METHOD": "POST", "CONTENT_LENGTH": str(len(BODY))}
        cmd = ["/function/handler.sh"]
        networks = {"run": None, "run-net": f"swarmless-{self.instance}"}
        samples: dict[str, list[float]] = {"cgi": [], "run": [], "run-net": []}
        self.http.post("/function/cgi", content=BODY)  # warm both paths once
        self.client.run(image, cmd, stdin=BODY, env=env, labels=self.labels)
        kinds = list(samples)
        for _ in range(self.args.cgi_samples):
            for kind in kinds:
                t0 = time.perf_counter()
                if kind == "cgi":
                    r = self.http.post("/function/cgi", content=BODY)
                    samples[kind].append(time.perf_counter() - t0)
                    expect(r.status_code == 200 and r.content == b"ok\n", (r.status_code, r.text))
                else:
                    out = self.client.run(
                        image, cmd, stdin=BODY, env=env, labels=self.labels, network=networks[kind]
                    )
                    samples[kind].append(time.perf_counter() - t0)
                    expect(out.endswith(b"ok\n"), out)
            kinds.reverse()
        self.remove("cgi")
        return samples

    # -- clean-up ------------------------------------------------------------------------

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
        for server in reversed(self.servers):
            server.stop()
        with contextlib.suppress(Exception):
            flt = {"label": "=".join(self.label)}
            for c in self.engine.api.containers(all=True, filters=flt):
                self.engine.api.remove_container(c["Id"], force=True)
            for cid in self.containers():
                self.engine.api.remove_container(cid, force=True)
        with contextlib.suppress(Exception):
            self.engine.networks.get(f"swarmless-{self.instance}").remove()
        for image in self.images:
            with contextlib.suppress(Exception):
                self.engine.images.remove(image, force=True)
        with contextlib.suppress(Exception):
            left = self.engine.api.containers(all=True, filters={"label": "=".join(self.label)})
            if left:
                print(f"warning: {len(left)} container(s) could not be removed", file=sys.stderr)
        self.client.close()
        self.engine.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def median_load(runs: list[Load]) -> Load:
    return Load(
        rps=statistics.median(r.rps for r in runs),
        p50=statistics.median(r.p50 for r in runs),
        p99=statistics.median(r.p99 for r in runs),
        requests=sum(r.requests for r in runs),
        errors=sum(r.errors for r in runs),
        server_cpu=statistics.median(r.server_cpu for r in runs),
        host_busy=statistics.median(r.host_busy for r in runs),
    )


def side(name: str, samples: list[float]) -> str:
    return f"{name} p50 {ms(statistics.median(samples))} p99 {ms(pct(samples, 99))}"


def report(
    args: argparse.Namespace,
    loads: dict[tuple[str, int], list[Load]],
    cold: tuple[list[float], list[float], list[dict[str, Any]]],
    cgi: dict[str, list[float]],
) -> bool:
    ok = True
    print()
    print(f"== results (medians over {args.reps} interleaved runs of {args.duration:g} s) ==")
    for c in (8, 16):
        gw, d = median_load(loads[("gateway", c)]), median_load(loads[("direct", c)])
        ratio = gw.rps / d.rps
        ok &= ratio >= 0.3
        print(
            f"throughput c={c:<2}     ratio {ratio:.2f}x  (target >= 0.30: {verdict(ratio >= 0.3)})"
            f"  gateway {gw.rps:,.0f} req/s p50 {ms(gw.p50)} p99 {ms(gw.p99)}"
            f" | direct {d.rps:,.0f} req/s p50 {ms(d.p50)} p99 {ms(d.p99)}"
        )
        print(
            f"                    server CPU per request: gateway {gw.server_cpu * 1e6:.0f} us,"
            f" direct {d.server_cpu * 1e6:.0f} us; machine busy: gateway run"
            f" {gw.host_busy:.0%}, direct run {d.host_busy:.0%}"
        )
    gw1, d1 = median_load(loads[("gateway", 1)]), median_load(loads[("direct", 1)])
    added = gw1.p50 - d1.p50
    ok &= added <= 0.001
    print(
        f"added latency c=1   {added * 1000:+.2f} ms  (target <= 1 ms: {verdict(added <= 0.001)})"
        f"  gateway p50 {ms(gw1.p50)} p99 {ms(gw1.p99)} ({gw1.rps:,.0f} req/s)"
        f" | direct p50 {ms(d1.p50)} p99 {ms(d1.p99)} ({d1.rps:,.0f} req/s)"
    )
    cold_s, run_s, records = cold
    ratio = statistics.median(cold_s) / statistics.median(run_s)
    ok &= ratio <= 1.5
    print(
        f"first warm call     ratio {ratio:.2f}x  (target <= 1.50: {verdict(ratio <= 1.5)})"
        f"  {side('first call', cold_s)} | {side('run()', run_s)}  (n={len(cold_s)} each)"
    )
    waits = [r["wait_ms"] / 1000 for r in records if r.get("wait_ms") is not None]
    runs = [r["run_ms"] / 1000 for r in records if r.get("run_ms") is not None]
    if waits and runs:
        print(
            f"                    of which waiting for the container (start, runtime import,"
            f" first poll) p50 {ms(statistics.median(waits))}, handler run p50"
            f" {ms(statistics.median(runs))}"
        )
    cgi_s, cgi_run, run_net = cgi["cgi"], cgi["run"], cgi["run-net"]
    ratio = statistics.median(cgi_s) / statistics.median(cgi_run)
    ok &= ratio <= 1.2
    print(
        f"cgi request         ratio {ratio:.2f}x  (target <= 1.20: {verdict(ratio <= 1.2)})"
        f"  {side('cgi', cgi_s)} | {side('run()', cgi_run)}  (n={len(cgi_s)} each)"
    )
    print(
        f"                    on the gateway's function network: {side('run()', run_net)}"
        f" ({statistics.median(run_net) / statistics.median(cgi_run):.2f}x plain run())"
    )
    return ok


@contextlib.contextmanager
def interrupt_as_exit() -> Iterator[None]:
    """SIGTERM ends the run through the same clean-up as Ctrl-C."""

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load run")
    parser.add_argument("--reps", type=int, default=3, help="load runs per point")
    parser.add_argument("--containers", type=int, default=4, help="warm containers (pinned)")
    parser.add_argument("--concurrency", type=int, default=4, help="calls per warm container")
    parser.add_argument("--cold-samples", type=int, default=10)
    parser.add_argument("--cgi-samples", type=int, default=20)
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    for name in ("duration", "reps", "containers", "concurrency", "cold_samples", "cgi_samples"):
        if not 0 < getattr(args, name) <= 1000:
            parser.error(f"--{name.replace('_', '-')} must be between 1 and 1000")
    if args.loadgen == "auto":
        args.loadgen = "wrk" if shutil.which("wrk") else "python"
    if args.loadgen == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install -y wrk), use --loadgen python")

    bench = Bench(args)
    ok = False
    try:
        with interrupt_as_exit():
            (bench.tmp / "post.lua").write_text(WRK_SCRIPT % BODY.decode())
            loadgen = "wrk -t1 (keep-alive)" if args.loadgen == "wrk" else "asyncio keep-alive"
            load1 = os.getloadavg()[0]
            print(
                f"bench/gateway.py  run {bench.run_id}: loopback, {os.cpu_count()} CPUs"
                f" (load average {load1:.1f} at start), load {loadgen},"
                f" {args.duration:g} s x {args.reps} runs per point"
            )
            print(
                f"warm no-op function: {args.containers} containers (pinned: min = max) x "
                f"concurrency {args.concurrency}; direct: the same handler in one uvicorn "
                "process (httptools, asyncio loop, as the gateway)"
            )
            t0 = time.monotonic()
            warm, cgi_image = bench.build_images()
            bench.start_servers()
            print(f"images built, servers up in {time.monotonic() - t0:.1f} s", flush=True)
            bench.deploy(
                name="noop",
                image=warm,
                mode="warm",
                handler="handler:handle",
                concurrency=args.concurrency,
                min_containers=args.containers,
                max_containers=args.containers,
            )
            n = args.containers
            bench.wait(lambda: bench.ready("noop") >= n, 120, f"{n} ready containers")
            assert bench.http is not None
            r = bench.http.post("/function/noop", content=BODY)
            expect(r.content == b"ok", r.text)
            loads = bench.throughput()
            bench.remove("noop")
            print("first calls of a warm function with no container ...", flush=True)
            cold = bench.first_calls(warm)
            print("cgi requests ...", flush=True)
            cgi = bench.cgi_calls(cgi_image)
            ok = report(args, loads, cold, cgi)
    except KeyboardInterrupt:
        print("interrupted: removing what the run created", file=sys.stderr)
        sys.exit(130)
    finally:
        bench.close()
    sys.exit(1 if args.strict and not ok else 0)


if __name__ == "__main__":
    main()
