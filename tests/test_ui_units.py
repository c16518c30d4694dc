"""The dashboard's pure parts: numbers from records, sessions and CSRF tokens, the
``next`` of the login form, spec parsing (no Docker, no browser)."""

from __future__ import annotations

import pytest

from swarmless.exceptions import SpecError
from swarmless.gateway.ui.actions import parse_spec
from swarmless.gateway.ui.auth import Forbidden, Sessions, safe_next
from swarmless.gateway.ui.stats import (
    ContainerHistory,
    container_states,
    function_stats,
    percentile,
    recent_failures,
    series,
)
from swarmless.records import InvocationRecord

NOW = 1_700_000_000_000


def rec(
    i: int,
    *,
    fn: str = "f",
    ago: int,
    took: int | None,
    status: str = "succeeded",
    cold: bool = False,
) -> InvocationRecord:
    queued = NOW - ago
    return InvocationRecord(
        id=f"{i:04d}",
        function=fn,
        mode="warm",
        status=status,  # type: ignore[arg-type]
        queued_at=queued,
        finished_at=None if took is None else queued + took,
        cold=cold,
    )


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile([7.0], 99) == 7
    assert percentile([], 50) is None


def test_function_stats_cover_the_last_hour() -> None:
    records = [
        rec(1, ago=10_000, took=100, cold=True),
        rec(2, ago=20_000, took=300),
        rec(3, ago=30_000, took=None, status="running"),
        rec(4, ago=120_000, took=5000, status="failed"),
        rec(5, ago=2 * 3_600_000, took=1, status="failed"),  # older than an hour: not counted
        rec(6, fn="g", ago=5_000, took=50, status="timeout"),
    ]
    stats = function_stats(records, NOW)
    f = stats["f"]
    assert f.calls_per_min == 3  # arrived in the last minute, the running one too
    assert f.calls_hour == 4
    assert f.finished_hour == 3
    assert f.error_rate == pytest.approx(1 / 3)
    assert f.p50_ms == 300
    assert f.p99_ms == 5000
    assert f.cold_share == pytest.approx(1 / 3)
    assert stats["g"].error_rate == 1
    failed = recent_failures(records, NOW)
    assert [r.id for r in failed] == ["0006"]


def test_series_has_one_bucket_per_minute() -> None:
    records = [rec(1, ago=0, took=10), rec(2, ago=30_000, took=30, status="dead")]
    s = series(records, NOW, minutes=60)
    assert len(s["t"]) == len(s["calls"]) == 60
    assert sum(s["calls"]) == 2
    assert sum(s["errors"]) == 1
    assert s["t"][-1] <= NOW < s["t"][-1] + 60_000
    assert [v for v in s["p99"] if v is not None]


def test_container_states_and_history() -> None:
    counts = {"ready": 3, "busy": 2, "starting": 1, "paused": 1, "queued": 4}
    assert container_states(counts) == {"starting": 1, "busy": 2, "idle": 1, "paused": 1}
    h = ContainerHistory(keep=2)
    for i in range(3):
        h.add(NOW + i, {"a": counts, "b": {"ready": 1}})
    all_ = h.since(NOW)
    assert all_["t"] == [NOW + 1, NOW + 2]  # bounded: the oldest went
    assert all_["idle"] == [2, 2]
    assert h.since(NOW, function="b")["idle"] == [1, 1]


def test_csrf_tokens_belong_to_their_session() -> None:
    sessions = Sessions()
    a, b = sessions.create(), sessions.create()
    sessions.check_csrf(a, a.csrf)
    for sent in (None, "", b.csrf, a.csrf[:-1], a.csrf + "0"):
        with pytest.raises(Forbidden):
            sessions.check_csrf(a, sent)
    other = Sessions()  # another gateway process: another secret
    with pytest.raises(Forbidden):
        other.check_csrf(a, other.create().csrf)


def test_login_form_tokens_expire_and_are_bound_to_their_cookie() -> None:
    sessions = Sessions()
    nonce = sessions.login_nonce()
    sessions.check_login_csrf(nonce, sessions.login_csrf(nonce))
    with pytest.raises(Forbidden):
        sessions.check_login_csrf(sessions.login_nonce(), sessions.login_csrf(nonce))
    with pytest.raises(Forbidden):
        sessions.check_login_csrf(None, sessions.login_csrf(nonce))
    old = "1000." + nonce.split(".", 1)[1]
    with pytest.raises(Forbidden, match="expired"):
        sessions.check_login_csrf(old, sessions.login_csrf(old))


def test_sessions_are_bounded() -> None:
    sessions = Sessions(limit=3)
    made = [sessions.create() for _ in range(5)]
    assert len({s.id for s in made}) == 5
    assert len(sessions._sessions) == 3


@pytest.mark.parametrize(
    ("given", "goes"),
    [
        ("/ui/invocations?status=dead", "/ui/invocations?status=dead"),
        ("/ui", "/ui"),
        ("https://evil.example/ui/", "/ui/"),
        ("//evil.example/ui/", "/ui/"),
        ("/uix", "/ui/"),
        ("/ui/\\evil", "/ui/"),
        ("/ui/\nx", "/ui/"),
        ("/system/functions", "/ui/"),
        (None, "/ui/"),
    ],
)
def test_login_goes_on_to_dashboard_paths_only(given: str | None, goes: str) -> None:
    assert safe_next(given) == goes


def test_specs_from_the_deploy_form() -> None:
    spec = parse_spec('{"name": "a", "image": "busybox", "command": ["cat"]}')
    assert (spec.name, spec.mode) == ("a", "oneshot")
    spec = parse_spec("functions:\n  b:\n    image: busybox\n    mode: cgi\n")
    assert (spec.name, spec.mode) == ("b", "cgi")
    for text, field in (
        ("- a\n- b\n", "spec"),
        ("name: [unclosed\n", "spec"),
        ("functions:\n  a: {image: x}\n  b: {image: y}\n", "functions"),
        ("name: c\nbuild: ./c\n", "build"),
        ("name: d\nimage: x\nmode: lukewarm\n", "mode"),
        ("x" * 70_000, "spec"),
    ):
        with pytest.raises(SpecError) as e:
            parse_spec(text)
        assert field in e.value.errors, (text[:40], e.value.errors)
