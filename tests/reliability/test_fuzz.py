"""Fuzz the gateway's whole API from its own ``/openapi.json`` with schemathesis.

A real gateway on the real engine; schemathesis (its CLI, as a user runs it) reads the
gateway's OpenAPI description and sends thousands of generated requests to every operation:
the schema's examples, boundary values of every field (coverage), random valid and invalid
data (fuzzing), and sequences that follow links (stateful), with the admin token. Every
answer must be documented and conform to its schema; no operation may answer a server error
(5xx), except a function's own failure on a function call (a documented 502/504, see
``fuzz_hooks.filter_failure``); and the gateway must log no unexpected error.

Bounded: ``--max-examples`` per operation and a request timeout. The time goes to the
function calls: of about 3,200 cases (the coverage phase alone about 2,400; at least 2,000
are required) about 300 call a one-shot function the fuzzer deployed, each starting a
container (0.5 to 1 s on the 2-core engine: 85-90% of a run with one worker; every other
request takes a few ms, the fuzzer's own generating most of the rest), and the fuzzing phase
makes them in proportion to ``--max-examples``. So ``WORKERS`` workers (schemathesis'
threads, each taking whole operations) fuzz two operations at once: one's container starts
overlap the other's (the engine starts two in about 1.5 times one's time) and the fuzzer's
generating; the cases are the same, and the gateway also sees its operations interleaved (a
function redeployed or deleted while another operation calls it: its answers must still be
documented). What the fuzzer deploys is steered to cheap values (``fuzz_hooks.steer``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gateway_harness import TOKEN, RunningGateway

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(900)]

#: Cases per operation in the fuzzing phase (the coverage phase adds its own).
MAX_EXAMPLES = int(os.environ.get("SWARMLESS_FUZZ_EXAMPLES", "20"))
#: Operations fuzzed at once (see the module's docstring).
WORKERS = int(os.environ.get("SWARMLESS_FUZZ_WORKERS", "2"))
#: At least this many cases in all, or the run did not test enough.
MIN_CASES = 2000
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "unsupported_method",
    "missing_required_header",
)


class _Errors(logging.Handler):
    """Collects what the gateway logs at ERROR (an unexpected exception is a bug)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_fuzz_every_operation(gateway: RunningGateway, tmp_path: Path) -> None:
    errors = _Errors()
    logger = logging.getLogger("swarmless")
    logger.addHandler(errors)
    report = tmp_path / "report.json"
    schemathesis = Path(sys.executable).with_name("schemathesis")
    try:
        run = subprocess.run(
            [
                str(schemathesis),
                "run",
                f"{gateway.url}/openapi.json",
                "--header",
                f"Authorization: Bearer {TOKEN}",
                "--max-examples",
                str(MAX_EXAMPLES),
                "--checks",
                ",".join(CHECKS),
                "--exclude-tag",
                "undescribed",  # routes of other parts (the UI) without described shapes
                "--workers",
                str(WORKERS),
                "--request-timeout",
                "30",
                "--suppress-health-check",
                "all",
                "--report",
                "json",
                "--report-json-path",
                str(report),
                "--output-truncate",
                "true",
                "--no-color",
            ],
            env={
                **os.environ,
                "SCHEMATHESIS_HOOKS": "tests.reliability.fuzz_hooks",
                "PYTHONPATH": str(Path(__file__).parents[2]),
            },
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=800,
            check=False,
        )
        with gateway.http() as http:  # what the fuzzer deployed goes (its containers with it)
            for f in http.get("/system/functions").json():
                http.delete(f"/system/functions/{f['name']}")
            for name in http.get("/system/secrets").json():
                http.delete(f"/system/secrets/{name}")
    finally:
        logger.removeHandler(errors)
    out = run.stdout[-20000:] + run.stderr[-5000:]
    assert report.is_file(), out
    result = json.loads(report.read_text())
    cases = result["test_cases"]
    print(
        f"schemathesis {result['schemathesis_version']}: {cases['generated']} cases, "
        f"{result['operations']['tested']}/{result['operations']['total']} operations, "
        f"{result['running_time']:.0f}s, seed {result['seed']}"
    )
    assert result["failures"] == [], out
    assert result["errors"] == [], out
    assert cases["with_failures"] == 0, out
    assert cases["errored"] == 0, out
    assert run.returncode == 0, out
    assert cases["generated"] >= MIN_CASES, out
    assert result["operations"]["errored"] == 0, out
    assert result["operations"]["tested"] == result["operations"]["selected"], out
    assert result["operations"]["tested"] >= 30, out
    unexpected = [r.getMessage() for r in errors.records if r.exc_info is not None]
    assert unexpected == [], unexpected
