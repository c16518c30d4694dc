"""The soak, 3 minutes: ``bench/soak.py`` as it is, judged on what it reports.

Mixed load (warm, async, oneshot, cgi) on a gateway process of its own, sampled every
10 s. Nothing may grow past warm-up (RSS, open fds, threads, containers: the second half's
median not above the first half's highest value by more than a margin, so a plateau, a
slow start or a lone spike does not count, a steady climb does), no call may fail, every
accepted call has a final record, and no container is left once the warm ones have been
idle. The 30-minute run is ``.venv/bin/python bench/soak.py``; tests/reliability/README.md
keeps its figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from tests.conftest import SESSION

pytestmark = [pytest.mark.soak, pytest.mark.timeout(900)]

BENCH = Path(__file__).resolve().parents[2] / "bench"
MINUTES = 3


def test_three_minutes_of_mixed_load_leak_nothing(
    engine: docker.DockerClient, tmp_path: Path
) -> None:
    out = tmp_path / "soak.json"
    instance = f"test-{SESSION}-soak"
    proc = subprocess.run(
        [
            sys.executable,
            "soak.py",
            "--minutes",
            str(MINUTES),
            "--interval",
            "10",
            "--instance",
            instance,
            "--json",
            str(out),
        ],
        cwd=BENCH,
        capture_output=True,
        text=True,
        timeout=MINUTES * 60 + 600,
        check=False,
    )
    print(proc.stdout[-6000:])
    left = engine.api.containers(all=True, filters={"label": f"swarmless.gateway={instance}"})
    assert not left, f"the soak left containers: {[c['Names'] for c in left]}"
    assert out.exists(), f"no report (exit {proc.returncode}): {proc.stderr[-3000:]}"
    report = json.loads(out.read_text())
    assert len(report["samples"]) >= MINUTES * 6, report["samples"]
    assert report["failures"] == [], report["failures"]
    for kind, acc in report["accounting"].items():
        assert acc["accepted"] > 0, (kind, report["outcomes"])
        assert acc["unaccounted_count"] == 0, (kind, acc)
    assert report["leaks"] == [], json.dumps(report["verdict"], indent=1)
    assert report["containers_after_idle"] == 0
    assert report["ok"], proc.stdout[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
