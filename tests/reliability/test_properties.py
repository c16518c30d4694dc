"""Property tests: the spec parser and cron handling on arbitrary input.

Whatever a client sends as a function spec, :meth:`FunctionSpec.from_dict` either returns a
spec that round-trips, or raises :class:`InvalidArgument` (a :class:`SpecError` naming
fields) — never another exception. A spec that validates has values the engine and the
store can hold (no NUL in the environment, finite bounded numbers).
Whatever cron expression a spec holds, the scheduler's helpers answer a slot or
:class:`NeverFires`, never another exception.
"""

from __future__ import annotations

import math
import string
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from swarmless.dispatch.scheduler import due_slot
from swarmless.exceptions import InvalidArgument, SpecError
from swarmless.spec import MAX_BODY, MAX_MEMORY, FunctionSpec, NeverFires, next_fire

FIELDS = [
    "name",
    "image",
    "build",
    "mode",
    "command",
    "handler",
    "handler_kind",
    "env",
    "secrets",
    "timeout",
    "memory",
    "cpus",
    "concurrency",
    "min_containers",
    "max_containers",
    "idle_timeout",
    "buffer",
    "paused_buffer",
    "queue_size",
    "max_body",
    "private",
    "labels",
    "network",
    "retries",
    "backoff",
    "max_age",
    "async_concurrency",
    "schedule",
    "timezone",
    "docker",
    "placement",
    "spread",
]

#: Text that reaches the corners: control characters, NUL, non-ASCII, size suffixes.
TEXT = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=string.printable + "\x00\x0b€é", max_size=30),
    st.sampled_from(
        [
            "",
            "fn",
            "busybox",
            "swarmless/python:bookworm",
            "warm",
            "oneshot",
            "cgi",
            "wsgi",
            "command",
            "app:handle",
            "128m",
            "1e400",
            "9" * 30 + "t",
            "0 0 30 2 *",
            "*/5 * * * *",
            "@hourly",
            "UTC",
            "Europe/Paris",
            "../etc/passwd",
            "scoped",
            "host-socket",
            "node.role == worker",
            "node.labels.zone",
            "a\x00b",
            "fn\n",
        ]
    ),
)
SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
)
JSON = st.recursive(
    SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=10,
)
SPEC = st.dictionaries(
    st.one_of(st.sampled_from(FIELDS), TEXT),
    JSON,
    max_size=10,
)


def _parse(data: Any) -> FunctionSpec | SpecError:
    """The spec, or the SpecError it raised (any other exception propagates: a failure)."""
    try:
        return FunctionSpec.from_dict(data)
    except SpecError as e:
        return e


def _check_valid(spec: FunctionSpec) -> None:
    """What every spec that validated promises to the engine and the store."""
    assert spec.image
    for key, value in spec.env.items():
        assert "\0" not in key + value
        assert "=" not in key
    for arg in spec.command or []:
        assert "\0" not in arg
    for number in (spec.timeout, spec.idle_timeout, spec.backoff, spec.max_age):
        assert math.isfinite(number)
    assert spec.memory is None or 6 * 1024**2 <= spec.memory <= MAX_MEMORY
    assert 0 <= spec.max_body <= MAX_BODY
    assert spec.cpus is None or 0.01 <= spec.cpus <= 64
    again = FunctionSpec.from_dict(spec.to_dict())
    assert again == spec
    assert again.digest == spec.digest


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=SPEC)
@example(data={"name": "fn", "image": "busybox", "memory": "9" * 25 + "t"})
@example(data={"name": "fn", "image": "busybox", "env": {"A": "x\x00y"}})
@example(data={"name": "fn\n", "image": "busybox"})
@example(data={"name": "fn", "image": "busybox", "cpus": 1e-9})
@example(data={"name": "fn", "image": "busybox", "backoff": 1e300})
def test_any_dict_is_a_spec_or_names_its_fields(data: dict[Any, Any]) -> None:
    got = _parse(data)
    if isinstance(got, SpecError):
        assert got.errors, "a SpecError names at least one field"
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in got.errors.items())
        assert isinstance(got, InvalidArgument)
        assert got.status_code == 422
    else:
        _check_valid(got)


VALID_BASE = {"name": "fn", "image": "busybox"}


@settings(max_examples=800, deadline=None, suppress_health_check=list(HealthCheck))
@given(field=st.sampled_from(FIELDS), value=JSON)
def test_one_field_at_a_time_names_that_field(field: str, value: Any) -> None:
    """A valid spec with one field changed: valid, or an error about that very field (or
    the one a rule between fields names)."""
    got = _parse({**VALID_BASE, field: value})
    if isinstance(got, SpecError):
        between = {"image", "handler", "max_containers", "schedule"}
        assert set(got.errors) <= {field} | between, got.errors
        assert field in got.errors or set(got.errors) & between, got.errors
    else:
        _check_valid(got)


FIELD = st.one_of(
    st.just("*"),
    st.integers(0, 70).map(str),
    st.builds(lambda a, b: f"{a}-{b}", st.integers(0, 40), st.integers(0, 40)),
    st.builds(lambda a: f"*/{a}", st.integers(0, 70)),
    st.sampled_from(["L", "?", "W", "#", "1#5", "MON", "FEB", "last", ""]),
)
CRON = st.one_of(
    st.lists(FIELD, min_size=1, max_size=7).map(" ".join),
    st.sampled_from(["@hourly", "@daily", "@yearly", "@reboot", "0 0 30 2 *", "0 0 31 4 *"]),
    st.text(max_size=20),
)
ZONES = st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Asia/Kathmandu"])
#: Instants from 2000 to 2090, in ms.
INSTANT = st.integers(946_684_800_000, 3_786_912_000_000)


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(cron=CRON, tz=ZONES, after=INSTANT, span=st.integers(0, 10 * 86_400_000))
@example(cron="0 0 30 2 *", tz="UTC", after=1_700_000_000_000, span=1000)
@example(cron="0 0 29 2 *", tz="Europe/Paris", after=1_700_000_000_000, span=10**10)
def test_cron_answers_a_slot_or_never_fires(cron: str, tz: str, after: int, span: int) -> None:
    """A schedule the spec accepts gives the scheduler a slot in range, None, or
    NeverFires (``0 0 30 2 *`` is a valid expression that never fires: the gateway refuses
    it at deploy, the scheduler skips one already stored) — never another exception."""
    got = _parse({**VALID_BASE, "schedule": cron, "timezone": tz})
    if isinstance(got, SpecError):
        assert set(got.errors) == {"schedule"}, got.errors
        return
    assert got.schedule is not None
    try:
        slot = next_fire(got.schedule, tz, after)
    except NeverFires:
        slot = None
    assert slot is None or slot > after
    try:
        due = due_slot(got.schedule, tz, after, after + span)
    except NeverFires:
        assert slot is None
        return
    assert due is None or after < due <= after + span
    assert due is None or (slot is not None and slot <= due)
