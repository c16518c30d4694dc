"""An idle gateway's CPU: what keeping it running costs when nothing is called.

    .venv/bin/python bench/idle.py [--functions 0,10] [--seconds 15] [--rounds 4]
                                   [--baseline-src PATH]

A gateway (``_common.gateway``: this checkout's code, SQLite store) with N warm functions
deployed and never called (so no container), left alone for ``--settle`` seconds (its
start-up work: bytecode, first plans), then measured: the gateway process's CPU (user and
system, every thread, from ``/proc``) over ``--rounds`` windows of ``--seconds`` each,
printed in ms of CPU per second of wall time, for each N of ``--functions``.

With ``--baseline-src`` (a source tree, say ``git worktree add /tmp/base <rev>`` and
``/tmp/base/src``) a second gateway runs that code beside the first, with the same
functions, each under an instance name of its own; every window measures both at once (the
machine's load weighs on both), and the line ``idle-cpu-N ratio X`` compares the medians
(this checkout / the baseline; no target: issue 16's targets are the user-facing paths).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import docker
import httpx

from _common import gateway, proc_cpu

IMAGE = "swarmless/python:bookworm"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--functions", default="0,10", help="comma-separated counts")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds per window")
    parser.add_argument("--rounds", type=int, default=4, help="windows per count")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds before measuring")
    parser.add_argument("--baseline-src", help="a source tree to run a baseline gateway from")
    args = parser.parse_args()
    counts = [int(x) for x in args.functions.split(",") if x.strip()]
    if not counts or not all(0 <= n <= 200 for n in counts):
        parser.error("--functions: counts from 0 to 200")
    if not (1 <= args.seconds <= 120 and 1 <= args.rounds <= 20 and 0 <= args.settle <= 120):
        parser.error("--seconds 1..120, --rounds 1..20, --settle 0..120")
    if args.baseline_src and not os.path.isdir(os.path.join(args.baseline_src, "swarmless")):
        parser.error(f"--baseline-src {args.baseline_src!r} holds no swarmless package")
    engine = docker.from_env()
    sides = {"ours": None, "baseline": args.baseline_src} if args.baseline_src else {"ours": None}
    for n in counts:
        with contextlib.ExitStack() as stack:
            pids: dict[str, int] = {}
            for side, src in sides.items():
                gw = stack.enter_context(
                    gateway(engine, f"idle-{side}", env={"PYTHONPATH": src} if src else None)
                )
                http = stack.enter_context(
                    httpx.Client(base_url=gw.url, headers=gw.headers, timeout=60)
                )
                for i in range(n):
                    body = {"name": f"idle{i}", "image": IMAGE, "mode": "warm"}
                    r = http.post("/system/functions", json={**body, "handler": "h:handle"})
                    r.raise_for_status()
                pids[side] = gw.pid
            time.sleep(args.settle)  # its start-up work, not what idling costs
            got: dict[str, list[float]] = {side: [] for side in sides}
            for _ in range(args.rounds):
                before = {side: proc_cpu(pid) for side, pid in pids.items()}
                t0 = time.monotonic()
                time.sleep(args.seconds)  # the window measured: nothing else runs in it
                took = time.monotonic() - t0
                for side, pid in pids.items():
                    got[side].append((proc_cpu(pid) - before[side]) / took * 1000)
            for side, values in got.items():
                print(
                    f"{n} functions, {side}: {statistics.median(values):.1f} ms of CPU per s"
                    f" (windows: {', '.join(f'{v:.1f}' for v in values)})",
                    flush=True,
                )
            if "baseline" in got:
                ratio = statistics.median(got["ours"]) / statistics.median(got["baseline"])
                print(f"idle-cpu-{n} ratio {ratio:.2f} (no target)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
