"""How long ``swarmless COMMAND --help`` takes, for every command, against ``python -c pass``.

    .venv/bin/python bench/cli_help.py [--runs 15]

Each command's ``--help`` runs as a user runs it (the ``swarmless`` console script, a new
process each time), interleaved with ``python -c pass`` and ``swarmless --help`` so that
the load of a shared machine weighs on all of them alike; the figure is the median of
``--runs`` runs. Target: every ``--help`` under 300 ms. The last line is the verdict::

    cli_help slowest 'up' 92.1 ms (target 300 ms: PASS)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_MS = 300.0


def _time(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - started) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="runs of each (the median counts)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from swarmless.cli import _COMMANDS

    swarmless = str(Path(sys.executable).with_name("swarmless"))
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "swarmless --help": [swarmless, "--help"],
        **{f"{name} --help": [swarmless, name, "--help"] for name in sorted(_COMMANDS)},
    }
    times: dict[str, list[float]] = {case: [] for case in cases}
    for run in range(args.runs):
        order = list(cases) if run % 2 == 0 else list(reversed(cases))
        for case in order:
            times[case].append(_time(cases[case]))
    medians = {case: statistics.median(t) for case, t in times.items()}
    baseline = medians["python -c pass"]
    for case, ms in medians.items():
        print(f"{case:24} {ms:7.1f} ms  (+{ms - baseline:6.1f} ms over python -c pass)")
    slowest = max((c for c in medians if c.endswith(" --help")), key=lambda c: medians[c])
    ms = medians[slowest]
    verdict = "PASS" if ms < TARGET_MS else "FAIL"
    name = slowest.split()[0]
    print(f"cli_help slowest {name!r} {ms:.1f} ms (target {TARGET_MS:.0f} ms: {verdict})")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
