"""Every benchmark in one run, one report: ``make bench`` (full) and ``make bench-quick``.

    .venv/bin/python bench/report.py [--quick] [--out DIR] [--no-extras]

Runs the three core benchmarks, each in its own process with its own gateway, one after
the other (never two at once: they would share 2 cores):

- ``gateway.py``: throughput and p99 against concurrency (1, 4, 8, 16, 64) beside the same
  handler in one uvicorn process, with the whole machine's CPU per call; open-loop latency
  at fixed rates; the first call of a warm function vs ``run()``; cgi vs ``run()``;
- ``async.py``: async drain vs sync drain on the client's clock, enqueue-to-start;
- ``scaling.py``: zero to ten beside the engine's parallel start (timeline), first calls
  from a paused buffer vs cold, idle memory, a step load;

then (full run only, unless ``--no-extras``) the smaller benchmarks whose target lines it
collects as printed (``run_overhead.py``, ``cli_help.py``, ``cgi_import.py``,
``python_native.py``, ``retention.py``), and the async drain again on PostgreSQL
(``async.py --drain-only --store=postgres``: issue 16's drain target holds on both stores),
with the server of ``scripts/postgres.sh`` (started if need be; when it cannot be, the
report says why under "Not run").

Writes ``OUT/<UTC timestamp>.json`` (every number, every sample and the container states
each sample was checked against), ``OUT/report.md`` and its PNG plots (matplotlib, Agg;
left out, and said so, when matplotlib is not installed). ``OUT`` is ``bench/results``
for a full run and a temporary directory for ``--quick``.

Exit status: 2 when a benchmark failed or a number is missing (the only check of
``--quick``, which CI runs), 1 when a full run missed a target, else 0. Each benchmark has
a deadline (``--quick``: 240 s; full: 1,800 s) after which it is stopped with SIGTERM (it
then removes what it made).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import (  # noqa: E402
    STEAL_MAX,
    STEAL_TRIES,
    environment,
    host_steal,
    pct,
    stolen_share,
)
from scaling import cpu_line  # noqa: E402

CORE: dict[str, dict[str, list[str]]] = {
    "gateway": {
        "full": [],
        "quick": [
            "--duration=1",
            "--reps=1",
            "--cold-samples=2",
            "--cgi-samples=2",
            "--rates=100",
            "--ol-duration=1",
            "--ol-reps=1",
        ],
    },
    "async": {
        "full": [],
        "quick": [
            "--calls=200",
            "--rounds=1",
            "--start-samples=10",
            "--enqueue-rounds=1",
            "--enqueue-seconds=1",
        ],
    },
    "scaling": {
        "full": [],
        "quick": ["--reps=1", "--samples=2", "--step-seconds=3"],
    },
}
EXTRAS: dict[str, list[str]] = {
    "run_overhead": ["--runs=20"],
    "cli_help": ["--runs=7"],
    "cgi_import": ["--requests=20", "--imports=15"],
    "python_native": ["--fresh=10", "--inputs=20000"],
    "retention": ["--seconds=40"],
}
#: Extras that run another script than their name, and extras that need PostgreSQL.
EXTRA_SCRIPTS = {"async_postgres": "async"}
NEEDS_POSTGRES = {"async_postgres"}
#: The async drain on PostgreSQL: issue 16's target holds on both stores.
EXTRAS["async_postgres"] = ["--drain-only", "--store=postgres", "--rounds=5"]
NOT_RUN = {
    "soak.py": "30 minutes by default (tests/reliability runs a bounded soak)",
    "swarm.py": "needs the 3-node test Swarm (kept by the lead), minutes per round",
    "replicas.py": "a failover benchmark on PostgreSQL, minutes per round",
}
TARGET_LINE = re.compile(
    r"^(\S+) (ratio|ms|MB|calls/s) (\S+) \(target (<=|>=) (\S+): (PASS|FAIL)\)$"
)


# -- running ----------------------------------------------------------------------------------

#: The 1-minute load average when each benchmark started and ended.
LOADS: dict[str, list[float]] = {}
#: Per benchmark: the share of the machine's CPU time the hypervisor gave to other guests
#: while it ran (``steal`` of /proc/stat; 0 on bare metal).
STEAL: dict[str, float] = {}


def postgres() -> str | None:
    """Why PostgreSQL cannot be had for the benchmarks that need it (None: it runs, started
    by ``scripts/postgres.sh`` if need be, at the URL ``bench/async.py`` uses by default)."""
    script = HERE.parent / "scripts" / "postgres.sh"
    try:
        done = subprocess.run(
            ["bash", str(script)], capture_output=True, text=True, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"scripts/postgres.sh did not run: {e}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return f"scripts/postgres.sh failed (exit {done.returncode}): {last}"
    return None


def run_bench(name: str, args: list[str], log: Path, deadline: float) -> tuple[int, str, float]:
    """Run one benchmark, its output shown and kept; (exit status, output, seconds)."""
    cmd = [sys.executable, str(HERE / f"{EXTRA_SCRIPTS.get(name, name)}.py"), *args]
    print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.monotonic()
    LOADS[name] = [os.getloadavg()[0]]
    steal0 = host_steal()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=HERE.parent)
        shown = 0
        while proc.poll() is None:
            time.sleep(0.5)
            text = log.read_text(errors="replace")
            sys.stdout.write(text[shown:])
            sys.stdout.flush()
            shown = len(text)
            if time.monotonic() - t0 > deadline:
                print(f"\n{name}: over {deadline:g} s, stopping it (SIGTERM)", flush=True)
                proc.terminate()
                try:
                    proc.wait(120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(30)
    text = log.read_text(errors="replace")
    sys.stdout.write(text[shown:])
    took = time.monotonic() - t0
    LOADS[name].append(os.getloadavg()[0])
    STEAL[name] = stolen_share(steal0, host_steal())
    print(
        f"=== {name}: exit {proc.returncode} after {took:.0f} s"
        f" (CPU time stolen by the hypervisor: {STEAL[name]:.1%})",
        flush=True,
    )
    return proc.returncode, text, took


def parse_targets(text: str) -> list[dict[str, Any]]:
    found = []
    for line in text.splitlines():
        m = TARGET_LINE.match(line.strip())
        if m:
            name, unit, value, op, goal, verdict = m.groups()
            found.append(
                {
                    "name": name,
                    "unit": unit,
                    "value": float(value.replace(",", "")),
                    "op": op,
                    "target": float(goal),
                    "pass": verdict == "PASS",
                }
            )
    return found


def verdict_lines(text: str) -> list[str]:
    """The lines of a smaller benchmark that say a target was met or not."""
    return [
        ln.strip() for ln in text.splitlines() if re.search(r"\btarget\b|\bPASS\b|\bFAIL\b", ln)
    ]


# -- checking that every number was produced ------------------------------------------------


def missing_numbers(core: dict[str, Any]) -> list[str]:
    """What a core benchmark should have produced and did not (empty: all there)."""
    missing: list[str] = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            missing.append(what)

    def number(x: Any) -> bool:
        return isinstance(x, int | float) and math.isfinite(x)

    expected = {
        "gateway": [
            "gateway-throughput-c8",
            "gateway-throughput-c16",
            "gateway-first-call-vs-run",
            "gateway-cgi-vs-run",
            "gateway-containers-vs-one",
        ],
        "async": ["async-enqueue-rate", "async-enqueue-to-start-p50", "async-drain-vs-sync"],
        "scaling": ["scaling-zero-to-ten", "scaling-paused-vs-cold", "scaling-idle-rss"],
    }
    for bench, names in expected.items():
        data = core.get(bench)
        if not isinstance(data, dict):
            missing.append(f"{bench}: no results")
            continue
        have = {t["name"]: t for t in data.get("targets", [])}
        for n in names:
            need(n in have and number(have[n]["value"]), f"{bench}: target {n}")
        if bench == "gateway":
            need(any(n.startswith("gateway-added-latency") for n in have), "gateway: added latency")
            for row in data.get("closed_loop", []):
                for r in row["runs"]:
                    need(number(r["rps"]) and r["rps"] > 0, f"gateway: rps {row['target']}")
                    need(
                        all(number(v) for v in r["cpu"].values()),
                        f"gateway: CPU per call {row['target']} c={row['connections']}",
                    )
            conns = {row["connections"] for row in data.get("closed_loop", [])}
            need({1, 4, 16, 64} <= conns, "gateway: connections 1, 4, 16, 64")
            need(bool(data.get("open_loop")), "gateway: open-loop latencies")
            need(bool(data["first_calls"]["cold"]), "gateway: checked cold samples")
        if bench == "async":
            need(bool(data["start_delays_ms"]["async"]), "async: enqueue-to-start samples")
            need(bool(data["drains"]["sync"]), "async: sync drains")
            if shutil.which("wrk"):
                light = data.get("light_drains") or {}
                need(bool(light.get("async")) and bool(light.get("sync")), "async: light drains")
                need(number(data["summary"].get("drain_light_ratio")), "async: light ratio")
        if bench == "scaling":
            tl = data.get("zero_to_ten", {}).get("timelines", {})
            need(bool(tl.get("ours")) and bool(tl.get("engine")), "scaling: timelines")
            fc = data.get("first_calls", {})
            need(bool(fc.get("paused")) and bool(fc.get("cold")), "scaling: checked samples")
    return missing


def rounded(value: Any) -> Any:
    """Floats to 6 decimals (seconds to the microsecond): the samples stay, the file shrinks."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v) for v in value]
    return value


# -- plots ------------------------------------------------------------------------------------


def cdf(ax: Any, samples: list[float], label: str, **kw: Any) -> None:
    xs = sorted(x * 1000 for x in samples)
    ys = [(i + 1) / len(xs) for i in range(len(xs))]
    ax.step(xs, ys, where="post", label=f"{label} (n={len(xs)})", **kw)


def verdict(core: dict[str, Any], bench: str, prefix: str) -> str:
    """``ratio X (target OP Y: PASS)`` of the first target of ``bench`` named ``prefix...``."""
    for t in (core.get(bench) or {}).get("targets", []):
        if t["name"].startswith(prefix):
            v = f"{t['value']:.2f}" if t["unit"] == "ratio" else f"{t['value']:,.1f} {t['unit']}"
            ok = "PASS" if t["pass"] else "FAIL"
            unit = "ratio " if t["unit"] == "ratio" else ""
            return f"{unit}{v} (target {t['op']} {t['target']:g}: {ok})"
    return "no figure"


def plots(core: dict[str, Any], out: Path) -> dict[str, str]:
    """The report's figures as PNGs in ``out``; {figure: file name}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    plt.rcParams.update({"font.size": 8, "axes.grid": True, "grid.alpha": 0.3})

    def plain(axis: Any) -> None:
        """Log-scale ticks as plain numbers (10, 100), no minor labels."""
        lo, hi = axis.get_view_interval()
        wide = lo <= 0 or math.log10(hi / lo) > 2.5
        axis.set_major_locator(LogLocator(base=10, subs=(1.0,) if wide else (1.0, 2.0, 5.0)))
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(NullFormatter())

    made: dict[str, str] = {}
    gw, asy, sc = core.get("gateway"), core.get("async"), core.get("scaling")

    if gw and sc:
        fig, axes = plt.subplots(1, 3, figsize=(10, 3.0), dpi=80)
        ax = axes[0]
        cdf(ax, gw["first_calls"]["cold"], "first call, gateway (cold)")
        cdf(ax, gw["first_calls"]["run"], "run() of the image", linestyle="--")
        ax.set_title("cold: first call vs run()\n" + verdict(core, "gateway", "gateway-first-call"))
        ax = axes[1]
        rates = sorted(gw["open_loop"].items(), key=lambda kv: float(kv[0]))
        for (rate, sides), style in zip(rates, ("-", ":", "-.", "--"), strict=False):
            for side, color in (("gateway", "C0"), ("direct", "C1")):
                lat = [x for r in sides[side] for x in r["latencies"]]
                cdf(ax, lat, f"{side} {float(rate):g}/s", linestyle=style, color=color)
        ax.set_title(
            "warm: open loop, gateway vs direct\nadded p50 "
            + verdict(core, "gateway", "gateway-added-latency")
        )
        ax.set_xscale("log")
        ax = axes[2]
        cdf(ax, sc["first_calls"]["paused"], "from a paused buffer")
        cdf(ax, sc["first_calls"]["cold"], "from zero (cold)", linestyle="--")
        ax.set_xscale("log")
        ax.set_title(
            "paused: thaw vs cold first call\n" + verdict(core, "scaling", "scaling-paused")
        )
        for ax in axes:
            ax.set_xlabel("latency, ms")
            ax.legend(fontsize=6)
            if ax.get_xscale() == "log":
                plain(ax.xaxis)
        axes[0].set_ylabel("fraction of calls")
        fig.tight_layout()
        fig.savefig(out / "latency_cdf.png")
        plt.close(fig)
        made["latency"] = "latency_cdf.png"

    if gw:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.3), dpi=80)
        for side, style in (("gateway", "o-"), ("direct", "s--")):
            rows = sorted(
                (r for r in gw["closed_loop"] if r["target"] == side),
                key=lambda r: r["connections"],
            )
            cs = [r["connections"] for r in rows]
            rps = [sorted(x["rps"] for x in r["runs"])[len(r["runs"]) // 2] for r in rows]
            p99 = [sorted(x["p99"] for x in r["runs"])[len(r["runs"]) // 2] * 1000 for r in rows]
            axes[0].plot(cs, rps, style, label=side)
            axes[1].plot(cs, p99, style, label=side)
        axes[0].set_ylabel("requests/s (median of runs)")
        axes[1].set_ylabel("p99 latency, ms (closed loop)")
        axes[1].set_yscale("log")
        plain(axes[1].yaxis)
        for ax in axes:
            ax.set_xscale("log", base=2)
            ax.set_xticks(cs, [str(c) for c in cs])
            ax.set_xlabel("connections")
            ax.legend()
        axes[0].set_title(
            "throughput (closed loop)\nc=8: "
            + verdict(core, "gateway", "gateway-throughput-c8")
            + "\nc=16: "
            + verdict(core, "gateway", "gateway-throughput-c16")
        )
        axes[1].set_title("p99 vs concurrency (closed loop)\n\n")
        fig.tight_layout()
        fig.savefig(out / "throughput.png")
        plt.close(fig)
        made["throughput"] = "throughput.png"

    if sc:
        fig, ax = plt.subplots(figsize=(6, 3.0), dpi=80)
        tl = sc["zero_to_ten"]["timelines"]
        for kind, style, label in (
            ("ours", "-", "swarmless: ready (asked for work)"),
            ("engine", "--", "engine: 10 create+start in parallel"),
        ):
            for i, times in enumerate(tl[kind]):
                xs = [0.0, *times]
                ys = list(range(len(xs)))
                ax.step(
                    xs,
                    ys,
                    style,
                    where="post",
                    color="C0" if kind == "ours" else "C1",
                    alpha=0.8,
                    label=label if i == 0 else None,
                )
        ax.set_xlabel("seconds from the scale request")
        ax.set_ylabel("containers")
        ax.set_title(
            "scale-up from zero to 10, each round\n" + verdict(core, "scaling", "scaling-zero")
        )
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "scaleup.png")
        plt.close(fig)
        made["scaleup"] = "scaleup.png"

    if asy:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.0), dpi=80)
        d = asy["start_delays_ms"]
        cdf(axes[0], [x / 1000 for x in d["async"]], "async: enqueue to start")
        cdf(axes[0], [x / 1000 for x in d["sync"]], "sync: queue to start", linestyle="--")
        axes[0].set_xlabel("ms (records' timestamps, ms resolution)")
        axes[0].set_ylabel("fraction of calls")
        axes[0].set_title(
            "async enqueue-to-start\np50 " + verdict(core, "async", "async-enqueue-to-start")
        )
        axes[0].legend(fontsize=7)
        dr = asy["drains"]
        n = max(len(dr["async"]), len(dr["sync"]))
        xs = list(range(1, n + 1))
        axes[1].bar(
            [x - 0.2 for x in xs[: len(dr["async"])]],
            [r["client_seconds"] for r in dr["async"]],
            0.4,
            label="async",
        )
        axes[1].bar(
            [x + 0.2 for x in xs[: len(dr["sync"])]],
            [r["client_seconds"] for r in dr["sync"]],
            0.4,
            label="sync",
        )
        axes[1].set_xlabel("round (order alternates)")
        axes[1].set_ylabel("drain, s (client clock)")
        axes[1].set_title(
            "drain of the same calls, async vs sync\n" + verdict(core, "async", "async-drain")
        )
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "async.png")
        plt.close(fig)
        made["async"] = "async.png"
    return made


# -- the report -------------------------------------------------------------------------------


def ms(s: float) -> str:
    return f"{s * 1000:.2f} ms" if s < 0.1 else f"{s * 1000:.0f} ms"


def fmt_target(t: dict[str, Any]) -> str:
    v = f"{t['value']:.3g}" if t["unit"] == "ratio" else f"{t['value']:,.1f} {t['unit']}"
    verdict = "**PASS**" if t["pass"] else "**FAIL**"
    return f"| `{t['name']}` | {v} | {t['op']} {t['target']:g} | {verdict} |"


def redone(core: dict[str, Any], tries: int) -> str:
    """What the report says of the load samples run again because the hypervisor stole more
    than ``STEAL_MAX`` of the machine's CPU time during them (``_common.calm``)."""
    parts, kept = [], []
    for name, got in (
        ("gateway samples (load pairs, cgi)", (core.get("gateway") or {})),
        ("async drain rounds", (core.get("async") or {})),
        ("zero-to-ten round pairs", (core.get("scaling") or {}).get("zero_to_ten") or {}),
    ):
        if "stolen" not in got:
            continue
        gone = [float(d["stolen"]) for d in got.get("discarded", [])]
        kept += got["stolen"]
        shares = ", ".join(f"{x:.0%}" for x in gone)
        parts.append(
            f"{name}: {len(got['stolen'])} kept, {len(gone)} discarded"
            + (f" ({shares} stolen)" if gone else "")
        )
    if not parts:
        return "No sample was checked for stolen time."
    return (
        f"A sample (both sides of an interleaved pair) during which more than {STEAL_MAX:.0%} "
        f"of the machine's CPU time was stolen is run again, {tries} tries at most, the "
        f"calmest kept: {'; '.join(parts)}. The most stolen during a sample kept: "
        f"{max(kept, default=0):.1%}."
    )


def markdown(result: dict[str, Any], figures: dict[str, str], plot_error: str | None) -> str:
    env = result["environment"]
    core = result["core"]
    lines = [
        f"# Benchmark report — {result['started']}",
        "",
        f"`{result['command']}` ({'quick' if result['quick'] else 'full'} run, "
        f"{result['seconds'] / 60:.1f} min). Every number below is in "
        f"`{result['json']}`, with every sample and the container states it was checked against.",
        "",
        "## Environment",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {env.get('cpu')} ({env.get('cores')} cores) |",
        f"| kernel | {env.get('kernel')} |",
        f"| Docker Engine | {env.get('docker')} |",
        f"| runc | {env.get('runc')} |",
        f"| storage driver | {env.get('storage_driver')} |",
        f"| cgroups | {env.get('cgroup')} |",
        f"| Python | {env.get('python')} |",
        f"| code measured | commit {str(env.get('commit')).split(' ', 1)[0]}; files under "
        "src/ differing from it in the "
        f"work tree: {', '.join(env.get('src_modified') or []) or 'none'} |",
        f"| load average (1, 5, 15 min) at start | "
        f"{', '.join(f'{x:.2f}' for x in env.get('loadavg', []))} |",
        f"| load average at end | {', '.join(f'{x:.2f}' for x in result['loadavg_end'])} |",
        f"| CPU time stolen by the hypervisor during the run | {result.get('steal', 0):.1%} |",
        "",
        "The machine is shared: other agents' builds and test suites run on the same 2 cores "
        "during the run (the load averages above), which moves every absolute figure. The "
        "ratios compare sides measured in the same run, interleaved, so that load weighs on "
        "both; the whole machine's CPU per call includes other tenants' work under *other*. "
        "On a virtual machine the hypervisor also gives part of the cores' time to other "
        "guests (*stolen*, above and per benchmark under Durations): that time is not "
        "counted as busy, but it slows both sides. "
        "The gateway runs from this checkout (an editable install): the code measured is the "
        "commit above plus the work-tree changes listed (other sessions' work in progress).",
        "",
        redone(core, int(result.get("steal_tries", STEAL_TRIES))),
        "",
        "## Targets",
        "",
        "| target | measured | goal | |",
        "|---|---|---|---|",
    ]
    for bench in ("gateway", "async", "scaling"):
        for t in (core.get(bench) or {}).get("targets", []):
            lines.append(fmt_target(t))
    for ex in result["extras"].values():
        for t in ex["targets"]:
            lines.append(fmt_target(t))
    lines.append("")
    if result["missing"]:
        lines += ["**Missing numbers:** " + "; ".join(result["missing"]), ""]
    if plot_error:
        lines += [f"Plots left out: {plot_error}.", ""]

    gw, asy, sc = core.get("gateway"), core.get("async"), core.get("scaling")
    if gw and sc:
        lines += ["## Latency: cold, warm, paused", ""]
        if "latency" in figures:
            lines += [f"![latency CDFs]({figures['latency']})", ""]
        fc = gw["first_calls"]
        recs = fc["records"]
        lines += [
            "- **cold** (left): the first call of a warm function with no container, through "
            "the gateway, vs `run()` of the same image running the same handler once, "
            f"alternating. {len(fc['cold'])} of {len(recs)} first calls were checked cold: "
            "no container of the function in the engine before the call, and the call's "
            "record says `cold`. Containers alive after each first call: "
            + str(
                [
                    sum(1 for v in r.get("engine_after", {}).values() if v in ("running", "paused"))
                    for r in recs
                ]
            )
            + ".",
        ]
        warm_ok = sum(1 for c in gw["warm_checks"] if c["warm"])
        lines += [
            "- **warm** (middle): open-loop load at fixed rates (each request's latency counted "
            "from its due time, so queueing behind a stall is not hidden), gateway and direct "
            f"runs alternating. {warm_ok} of {len(gw['warm_checks'])} gateway runs (closed and "
            "open loop, and both sides of the more-containers comparison) were checked "
            "warm: the same containers, all `running` in the engine, "
            "before and after the run.",
        ]
        for rate, sides in sorted(gw["open_loop"].items(), key=lambda kv: float(kv[0])):
            g = [x for r in sides["gateway"] for x in r["latencies"]]
            d = [x for r in sides["direct"] for x in r["latencies"]]
            achieved = min(r["achieved_rate"] for r in sides["gateway"])
            behind = ": it could not keep up, its queue grew"
            lines.append(
                f"  - {float(rate):g}/s (the gateway's slowest run completed"
                f" {achieved:.0f}/s{behind if achieved < 0.95 * float(rate) else ''}):"
                f" gateway p50 {ms(pct(g, 50))} p99 {ms(pct(g, 99))} | "
                f"direct p50 {ms(pct(d, 50))} p99 {ms(pct(d, 99))} | p50 ratio "
                f"{pct(g, 50) / pct(d, 50):.1f}x, p99 ratio {pct(g, 99) / pct(d, 99):.1f}x"
            )
        samples = sc["first_calls"]["samples"]
        seen = {}
        for s in samples:
            seen.setdefault((s["asked"], s["was"]), 0)
            seen[(s["asked"], s["was"])] += 1
        lines += [
            "- **paused** (right): the first call when every container of the function is "
            "`paused` in the engine (a paused buffer), vs a cold first call, alternating. "
            "Each sample's kind as checked (asked → was: count): "
            + ", ".join(f"{a} → {w}: {n}" for (a, w), n in sorted(seen.items()))
            + ". A paused sample counts only when the engine showed every container of the "
            "function paused (none running) before it and its record names one of those "
            "containers and says not cold; a sample that was something else is left out.",
            "",
        ]
    if gw:
        lines += ["## Throughput and p99 against concurrency", ""]
        if "throughput" in figures:
            lines += [f"![throughput]({figures['throughput']})", ""]
        lines += [
            f"Closed loop ({gw['loadgen']}), {gw['containers']} warm containers x concurrency "
            f"{gw['concurrency']}, vs the same handler in one uvicorn process. Median of the "
            "runs; CPU per call in µs: the whole machine (`/proc/stat`), of which the server "
            "process, the worker containers (cgroup CPU usage), the load generator, and "
            "*other* (the engine, the kernel's loopback, other tenants).",
            "",
            "| conns | gateway req/s | direct req/s | ratio | gateway p99 | direct p99 "
            "| gateway CPU/call: machine (gw, workers, load, other) "
            "| direct CPU/call: machine (server, load, other) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        rows: dict[tuple[str, int], dict[str, Any]] = {}
        for row in gw["closed_loop"]:
            runs = row["runs"]
            med = {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in ("rps", "p50", "p99")}
            med["cpu"] = {
                k: sorted(r["cpu"][k] for r in runs)[len(runs) // 2] for k in runs[0]["cpu"]
            }
            rows[(row["target"], row["connections"])] = med
        for c in sorted({c for _, c in rows}):
            g, d = rows[("gateway", c)], rows[("direct", c)]
            gc, dc = g["cpu"], d["cpu"]
            lines.append(
                f"| {c} | {g['rps']:,.0f} | {d['rps']:,.0f} | {g['rps'] / d['rps']:.2f} "
                f"| {ms(g['p99'])} | {ms(d['p99'])} "
                f"| {gc['machine'] * 1e6:.0f} ({gc['server'] * 1e6:.0f}, "
                f"{gc['workers'] * 1e6:.0f}, {gc['loadgen'] * 1e6:.0f}, "
                f"{gc['other'] * 1e6:.0f}) "
                f"| {dc['machine'] * 1e6:.0f} ({dc['server'] * 1e6:.0f}, "
                f"{dc['loadgen'] * 1e6:.0f}, {dc['other'] * 1e6:.0f}) |"
            )
        fewer = gw.get("fewer_containers") or {}
        if fewer.get("many") and fewer.get("one"):
            many, one = (sorted(r["rps"] for r in fewer[k]) for k in ("many", "one"))
            cpu = {
                k: sorted(r["cpu"]["workers"] for r in fewer[k])[len(fewer[k]) // 2] * 1e6
                for k in ("many", "one")
            }
            lines += [
                "",
                f"More warm containers, same load ({fewer['connections']} connections, runs "
                f"alternating): {gw['containers']} containers {many[len(many) // 2]:,.0f} req/s "
                f"(runs {', '.join(f'{x:,.0f}' for x in many)}) vs 1 container with as many "
                f"slots {one[len(one) // 2]:,.0f} req/s (runs "
                f"{', '.join(f'{x:,.0f}' for x in one)}); the worker containers' CPU per call "
                f"{cpu['many']:.0f} vs {cpu['one']:.0f} µs. "
                + verdict(core, "gateway", "gateway-containers-vs-one"),
            ]
        cg = gw["cgi"]
        lines += [
            "",
            f"cgi (a fresh container per request) vs `run()` of the same image, alternating: "
            f"cgi p50 {ms(sorted(cg['cgi'])[len(cg['cgi']) // 2])}, run() p50 "
            f"{ms(sorted(cg['run'])[len(cg['run']) // 2])}, run() on the gateway's function "
            f"network p50 {ms(sorted(cg['run-net'])[len(cg['run-net']) // 2])}.",
            "",
        ]
    if sc:
        z = sc["zero_to_ten"]
        lines += ["## Scale-up from zero", ""]
        if "scaleup" in figures:
            lines += [f"![scale-up]({figures['scaleup']})", ""]
        lines += [
            "Ten containers of one warm function (`POST /system/scale` with `wait`: the "
            "gateway answers once all ten have asked for work; the timeline samples the ready "
            "count every 100 ms) vs the engine creating and starting ten containers of the "
            "same image in parallel on the same network; rounds alternate. Ours: "
            + ", ".join(ms(x) for x in z["ours"])
            + "; engine: "
            + ", ".join(ms(x) for x in z["engine"])
            + (
                ". CPU seconds per round (medians), ours / engine: " + cpu_line(z["cpu"])
                if "cpu" in z
                else ""
            )
            + f". Idle warm container: runtime RSS {sc['idle_memory']['rss_mb']:.1f} MB, "
            f"cgroup {sc['idle_memory']['cgroup_mb']:.1f} MB. Step load 1 → 32 clients: "
            f"steady p99 {ms(sc['step']['steady_p99'])}, "
            + (
                f"p99 back under 2x after {sc['step']['recovered_after']:.1f} s"
                if sc["step"]["recovered_after"] is not None
                else "p99 not back under 2x within the step's window"
            )
            + f", {sc['step']['containers']} containers ready at the end.",
            "",
        ]
    if asy:
        s = asy["summary"]
        lines += ["## Async", ""]
        if "async" in figures:
            lines += [f"![async]({figures['async']})", ""]
        lines += [
            "Left: enqueue-to-start of single async calls with a free warm container beside "
            "sync calls' queue-to-start, alternating (`started_at - queued_at` of their "
            "records). Right: the drain of the same number of calls, async and sync, rounds "
            "alternating, both timed on the client's monotonic clock from the first request "
            "to the moment the client knows the last call finished (async: none queued nor "
            "running left in the store, polled every 5 ms after the last call's result).",
            "",
            f"Drain medians: async {s['drain_async_s']:.2f} s, sync {s['drain_sync_s']:.2f} s "
            f"(ratio {s['drain_async_s'] / s['drain_sync_s']:.2f}; by the records' own "
            f"timestamps {s['drain_ratio_records']:.2f}). Enqueue-to-start p50: async "
            f"{s['start_async_p50_ms']:.1f} ms, sync {s['start_sync_p50_ms']:.1f} ms.",
            "",
        ]
        if s.get("drain_light_ratio") is not None:
            cpu = s["drain_light_gateway_cpu_us"]
            lines += [
                "The same drain rounds with a light client (`wrk -t1`, the same connections, "
                "no target): the Python client's threads spend about as much CPU per call as "
                "the gateway, on the same cores, and hide part of the gateway's own cost. "
                f"Async {s['drain_light_async_s']:.2f} s, sync {s['drain_light_sync_s']:.2f} s: "
                f"**ratio {s['drain_light_ratio']:.2f}**; the gateway's CPU per call async "
                f"{cpu['async']:.0f} µs, sync {cpu['sync']:.0f} µs.",
                "",
            ]
        if "enqueue_held_per_s" in s:
            run, held = s["enqueue_cpu_us"], s["enqueue_held_cpu_us"]
            lines += [
                f"Accepted durably (load: {s.get('enqueue_loadgen', 'wrk -t1')}, keep-alive "
                "connections; rounds of the two kinds alternating; every call answered 202 "
                "then found in the store, in its queue or recorded): "
                f"**{s['enqueue_held_per_s']:,.0f}/s** when the function is busy and the "
                "calls wait in the queue (the intake alone: the target), CPU per call "
                f"accepted: machine {held['machine']:.0f} µs (gateway {held['gateway']:.0f}, "
                f"load generator {held['load']:.0f}); {s['enqueue_per_s']:,.0f}/s while the "
                "4 warm containers run the calls as they come: machine "
                f"{run['machine']:.0f} µs (gateway {run['gateway']:.0f}, workers "
                f"{run['workers']:.0f}, load generator {run['load']:.0f}).",
                "",
            ]
            if "enqueue_run_ceiling_per_s" in s:
                lines += [
                    "Why the intake is the target: accepting and running calls as they come "
                    "is bound by the running. At the machine's CPU per call accepted and run "
                    f"above, these cores run at most {s['enqueue_run_ceiling_per_s']:,.0f} "
                    "calls/s, and the same machine drained sync no-op calls at "
                    f"{s['sync_drain_per_s']:,.0f}/s in this run: 3,000 calls/s accepted "
                    "*and run* would take more CPU than the machine has. What the queue is for "
                    "is taking a burst faster than it can be run; the intake's rate is that.",
                    "",
                ]
    if result["extras"]:
        lines += ["## The smaller benchmarks", ""]
        for name, ex in result["extras"].items():
            status = "" if ex["exit"] == 0 else f" (exit {ex['exit']})"
            script = EXTRA_SCRIPTS.get(name, name)
            lines.append(
                f"- `bench/{script}.py {' '.join(ex['args'])}`{status}, {ex['seconds']:.0f} s:"
            )
            for ln in ex["lines"] or ["(no verdict line)"]:
                lines.append(f"  - `{ln}`")
        lines.append("")
    lines += ["## Not run by `make bench`", ""]
    lines += [f"- `bench/{k}`: {v}." for k, v in result.get("not_run", NOT_RUN).items()]
    lines += [
        "",
        "## Durations",
        "",
        "Each benchmark's time, the 1-minute load average when it started and ended, and the "
        "share of the machine's CPU time the hypervisor gave other guests meanwhile: "
        + ", ".join(
            f"{k} {v:.0f} s (load {' → '.join(f'{x:.1f}' for x in result['loads'].get(k, []))}"
            f", stolen {result.get('steals', {}).get(k, 0):.1%})"
            for k, v in result["durations"].items()
        )
        + ".",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small counts: a few minutes")
    parser.add_argument("--out", type=Path, help="where the report goes")
    parser.add_argument("--no-extras", action="store_true", help="the three core ones only")
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="only redraw report.md and the plots of a run"
    )
    args = parser.parse_args()
    if args.render:
        result = json.loads(args.render.read_text())
        out = args.out or args.render.parent
        figures = plots(result["core"], out)
        (out / "report.md").write_text(markdown(result, figures, None))
        print(f"report: {out / 'report.md'}")
        return
    quick = args.quick
    if quick:  # every number produced is all it checks: no sample is run again for steal
        os.environ["SWARMLESS_BENCH_STEAL_TRIES"] = "1"
    out = args.out or (
        Path(tempfile.mkdtemp(prefix="swarmless-bench-quick-")) if quick else HERE / "results"
    )
    out.mkdir(parents=True, exist_ok=True)
    deadline = 240.0 if quick else 1800.0
    started = datetime.datetime.now(datetime.UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    env = environment()
    steal0 = host_steal()
    t0 = time.monotonic()
    core: dict[str, Any] = {}
    durations: dict[str, float] = {}
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="swarmless-bench-") as tmp:
        for name, modes in CORE.items():
            js = Path(tmp) / f"{name}.json"
            bench_args = [*modes["quick" if quick else "full"], f"--json={js}"]
            rc, text, took = run_bench(name, bench_args, Path(tmp) / f"{name}.log", deadline)
            durations[name] = took
            if not quick:
                (out / f"{stamp}-{name}.log").write_text(text)
            if rc != 0 or not js.exists():
                failures.append(f"{name}: exit {rc}")
                continue
            core[name] = json.loads(js.read_text())
        extras: dict[str, Any] = {}
        if not quick and not args.no_extras:
            no_pg = postgres() if NEEDS_POSTGRES & EXTRAS.keys() else None
            for name, extra_args in EXTRAS.items():
                if name in NEEDS_POSTGRES and no_pg is not None:
                    script = f"{EXTRA_SCRIPTS.get(name, name)}.py {' '.join(extra_args)}"
                    NOT_RUN[script] = f"needs PostgreSQL: {no_pg}"
                    print(f"\n=== {name}: not run: {no_pg}", flush=True)
                    continue
                rc, text, took = run_bench(name, extra_args, Path(tmp) / f"{name}.log", 900)
                durations[name] = took
                extras[name] = {
                    "args": extra_args,
                    "exit": rc,
                    "seconds": took,
                    "lines": verdict_lines(text),
                    "targets": parse_targets(text),
                }
    missing = failures + missing_numbers(core)
    failures = []
    json_name = f"{stamp}.json"
    result = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": "make bench-quick" if quick else "make bench",
        "quick": quick,
        "json": json_name,
        "seconds": time.monotonic() - t0,
        "environment": env,
        "loadavg_end": list(os.getloadavg()),
        "steal": stolen_share(steal0, host_steal()),
        "durations": durations,
        "loads": LOADS,
        "steals": STEAL,
        "steal_tries": int(os.environ.get("SWARMLESS_BENCH_STEAL_TRIES") or STEAL_TRIES),
        "core": core,
        "extras": extras,
        "not_run": NOT_RUN,
        "missing": missing,
    }
    (out / json_name).write_text(json.dumps(rounded(result), indent=1, default=float))
    figures: dict[str, str] = {}
    plot_error = None
    try:
        figures = plots(core, out)
    except ImportError as exc:
        plot_error = f"matplotlib is not installed ({exc})"
    except Exception as exc:  # a plot must not hide the numbers
        plot_error = f"{type(exc).__name__}: {exc}"
        failures.append(f"plots: {plot_error}")
    (out / "report.md").write_text(markdown(result, figures, plot_error))
    print(f"\nreport: {out / 'report.md'} (numbers: {out / json_name})")
    targets = [t for b in core.values() for t in b.get("targets", [])]
    targets += [t for ex in extras.values() for t in ex["targets"]]
    for t in targets:
        v = f"{t['value']:.3g}"
        print(
            f"  {t['name']:<34} {v:>8} {t['unit']:<8} {t['op']} {t['target']:g}  "
            f"{'PASS' if t['pass'] else 'FAIL'}"
        )
    if missing or failures:
        print("missing: " + "; ".join(missing + failures), file=sys.stderr)
        sys.exit(2)
    if not quick and not all(t["pass"] for t in targets):
        print("some targets were missed (see the report)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
