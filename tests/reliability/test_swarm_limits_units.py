"""The Swarm backend's limits as pure functions (no Swarm needed): what a service's task
template gets from a spec and the gateway's defaults, and when a one-shot's log may have
lost its beginning. The Swarm itself is in test_swarm_limits.py."""

from __future__ import annotations

import math

from swarmless.backends.swarm_limits import ONESHOT_LOG_FACTOR, SwarmLimits, may_be_cut
from swarmless.config import Settings
from swarmless.spec import FunctionSpec

MiB = 1024 * 1024


def spec(**fields: object) -> FunctionSpec:
    return FunctionSpec.from_dict({"name": "f", "image": "busybox", **fields})


def defaults(**kw: object) -> SwarmLimits:
    values: dict[str, object] = {"node_cpus": 4.0, "log_driver": "json-file", **kw}
    return SwarmLimits.of(Settings.load(), **values)  # type: ignore[arg-type]


def test_defaults_limit_pids_cpus_and_logs() -> None:
    s = Settings.load()
    res = defaults().resources(spec())
    assert res == {"Limits": {"NanoCPUs": int(s.function_cpus * 1e9), "Pids": s.function_pids}}
    log = defaults().log_config(spec(), oneshot=False)
    assert log == {
        "Name": "json-file",
        "Options": {"max-size": str(s.function_log_size // 2), "max-file": "2"},
    }


def test_the_specs_own_values_win_and_cpus_it_asks_for_are_reserved() -> None:
    res = defaults().resources(spec(pids=64, cpus=0.5, memory="64m"))
    assert res == {
        "Limits": {"NanoCPUs": 500_000_000, "MemoryBytes": 64 * MiB, "Pids": 64},
        "Reservations": {"NanoCPUs": 500_000_000, "MemoryBytes": 64 * MiB},
    }
    log = defaults().log_config(spec(log_size="4m"), oneshot=False)
    assert log is not None
    assert log["Options"]["max-size"] == str(2 * MiB)


def test_a_default_cpu_limit_never_passes_the_smallest_node() -> None:
    settings = Settings.load(function_cpus=8)
    small = SwarmLimits.of(settings, node_cpus=2.0, log_driver="local")
    assert small.resources(spec())["Limits"]["NanoCPUs"] == 2_000_000_000  # type: ignore[index]
    unknown = SwarmLimits.of(settings, node_cpus=math.inf, log_driver="local")
    assert unknown.resources(spec())["Limits"]["NanoCPUs"] == 8_000_000_000  # type: ignore[index]


def test_zero_means_no_limit_of_ours_and_other_drivers_are_left_alone() -> None:
    none = SwarmLimits.of(
        Settings.load(function_cpus=0, function_pids=0, function_log_size=0),
        node_cpus=4.0,
        log_driver="json-file",
    )
    assert none.resources(spec()) is None
    assert none.log_config(spec(), oneshot=True) is None
    assert defaults(log_driver="journald").log_config(spec(), oneshot=False) is None
    assert defaults(log_driver="").log_file_size(spec(), oneshot=True) == 0


def test_a_oneshot_log_holds_several_times_its_max_output() -> None:
    limits = defaults()
    assert limits.log_file_size(spec(max_output="1m"), oneshot=True) >= 8 * MiB
    big = spec(max_output="64m")
    assert limits.log_file_size(big, oneshot=True) == ONESHOT_LOG_FACTOR * 64 * MiB
    assert limits.log_file_size(big, oneshot=False) < ONESHOT_LOG_FACTOR * 64 * MiB


def test_may_be_cut_only_when_what_was_read_could_fill_a_log_file() -> None:
    size = 8 * MiB
    assert not may_be_cut(b"x" * MiB, b"", size)  # 1 MiB of text in 8 MiB files: whole
    assert not may_be_cut(b"line\n" * 10_000, b"oops\n", size)
    assert may_be_cut(b"\n" * 200_000, b"", size)  # as many lines as fill a file
    assert may_be_cut(b"x" * (2 * MiB), b"", size)  # a byte may take 6 in the file
    assert may_be_cut(b"", b"e" * (2 * MiB), size)  # stderr shares the file
    assert not may_be_cut(b"\n" * 200_000, b"", 0)  # no rotation: nothing is cut
