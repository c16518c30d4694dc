"""A bounded load on the voting app: voters ramp up, hold, ramp down, and the vote front end's
containers follow (warm mode: autoscaled up, then back to zero). Prints the timeline.

    .venv/bin/python examples/voting-app/load.py [--peak 8] [--ramp 20] [--hold 20]

Talks to the app that ``run.sh up`` runs (its URL and admin token are read from its data
directory), or to ``--url``/``--token`` (env ``SWARMLESS_GATEWAY_URL``, ``SWARMLESS_TOKEN``).
Every voter is a thread with a cookie of its own (a voter id): it loads the ballot, votes,
waits ``--think`` seconds, and again. The container count is the gateway's own
(``GET /system/functions/vote``), sampled every ``--every`` seconds.

Bounded: ramp up, hold and ramp down take ``2 x ramp + hold`` seconds; then, with no load,
the script waits at most ``--settle`` seconds for the function to be back to zero (warm
mode scales to zero after its ``idle_timeout``; cgi containers are gone with each request).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from votingapp import container_count, data_dir_of  # noqa: E402


class Voters:
    """Voter threads; ``target`` says how many should run."""

    def __init__(self, url: str, think: float) -> None:
        self.url = url
        self.think = think
        self.target = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads: dict[int, threading.Thread] = {}
        self.latencies: list[float] = []
        self.errors = 0
        self.votes = 0

    def set(self, n: int) -> None:
        self.target = n
        for i in range(n):
            if i not in self.threads or not self.threads[i].is_alive():
                self.threads[i] = threading.Thread(target=self._vote, args=(i,), daemon=True)
                self.threads[i].start()

    def _vote(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self.stop.is_set() and index < self.target:
                t0 = time.monotonic()
                try:
                    http.get("/function/vote/").raise_for_status()
                    r = http.post("/function/vote/", data={"vote": random.choice("ab")})
                    r.raise_for_status()
                    ok = True
                except httpx.HTTPError:
                    ok = False
                with self.lock:
                    if ok:
                        self.votes += 1
                        self.latencies.append((time.monotonic() - t0) / 2)
                    else:
                        self.errors += 1
                self.stop.wait(self.think)

    def take(self) -> tuple[list[float], int]:
        with self.lock:
            out, errors = self.latencies, self.errors
            self.latencies, self.errors = [], 0
        return out, errors


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "    -"
    values = sorted(values)
    return f"{values[min(int(q * len(values)), len(values) - 1)] * 1000:5.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("SWARMLESS_GATEWAY_URL"))
    parser.add_argument("--token", default=os.environ.get("SWARMLESS_TOKEN"))
    parser.add_argument("--data-dir", help="of run.sh up (default ~/.local/share/swarmless-vote)")
    parser.add_argument("--peak", type=int, default=8, help="voters at the peak (8)")
    parser.add_argument("--ramp", type=float, default=20, help="seconds up, and down (20)")
    parser.add_argument("--hold", type=float, default=20, help="seconds at the peak (20)")
    parser.add_argument("--settle", type=float, default=120, help="max seconds to zero (120)")
    parser.add_argument("--think", type=float, default=0.2, help="seconds between votes (0.2)")
    parser.add_argument("--every", type=float, default=2, help="seconds between samples (2)")
    args = parser.parse_args(argv)
    if not args.url or not args.token:
        data_dir = data_dir_of(args.data_dir)
        try:
            args.url = args.url or json.loads((data_dir / "state.json").read_text())["url"]
            args.token = args.token or (data_dir / "token").read_text().strip()
        except (OSError, ValueError, KeyError):
            print(f"no app is up (nothing in {data_dir}); start it: run.sh up", file=sys.stderr)
            return 1
    admin = httpx.Client(
        base_url=args.url, headers={"Authorization": f"Bearer {args.token}"}, timeout=10
    )

    def sample() -> tuple[int, dict[str, Any]]:
        f = admin.get("/system/functions/vote").raise_for_status().json()
        return container_count(f["containers"], f["spec"]["mode"]), f

    n, f = sample()
    mode = f["spec"]["mode"]
    print(
        f"load on {args.url}/function/vote/ ({mode}): 0 -> {args.peak} voters in {args.ramp:g}s, "
        f"hold {args.hold:g}s, back to 0 in {args.ramp:g}s; then up to {args.settle:g}s to zero"
    )
    print("     t  voters  containers                    desired  votes/s  p50 ms  p95 ms  errors")
    voters = Voters(args.url, args.think)
    load_end = 2 * args.ramp + args.hold
    t0 = time.monotonic()
    peak = 0
    last_votes = 0
    zero_at: float | None = None
    try:
        while True:
            t = time.monotonic() - t0
            if t < args.ramp:
                want = round(args.peak * t / args.ramp + 0.5)
            elif t < args.ramp + args.hold:
                want = args.peak
            elif t < load_end:
                want = round(args.peak * (load_end - t) / args.ramp)
            else:
                want = 0
            voters.set(min(want, args.peak))
            n, f = sample()
            peak = max(peak, n)
            lat, errors = voters.take()
            rate = (voters.votes - last_votes) / args.every
            last_votes = voters.votes
            scale = f.get("scale") or {}
            desired = "" if scale.get("desired") is None else str(scale["desired"])
            print(
                f"{t:5.0f}s  {voters.target:6}  {n:3} {'#' * min(n, 24):24}  {desired:>7}  "
                f"{rate:7.1f}  {_ms(lat, 0.5)}   {_ms(lat, 0.95)}   {errors:5}",
                flush=True,
            )
            if t >= load_end and n == 0:
                zero_at = t
                break
            if t >= load_end + args.settle:
                break
            time.sleep(max(args.every - (time.monotonic() - t0 - t), 0))
    except KeyboardInterrupt:
        print("interrupted")
    finally:
        voters.stop.set()
        voters.set(0)
        admin.close()
    print(f"\n{voters.votes} votes; vote containers peaked at {peak}", end="")
    if zero_at is not None:
        print(f", back to zero {zero_at - load_end:.0f}s after the load ended")
        return 0
    print(f"; still {n} container(s) {args.settle:g}s after the load ended")
    return 1


if __name__ == "__main__":
    sys.exit(main())
