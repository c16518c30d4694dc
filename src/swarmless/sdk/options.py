"""docker-py's names for :meth:`swarmless.Client.run` options, so code moving from it works.

``client.run(image, cmd, network_mode="net", environment={"A": "1"}, working_dir="/w")``
means what it means to ``docker.from_env().containers.run``: each name below is turned into
the swarmless option it stands for. A name that is neither is refused with a
:class:`TypeError` that names it (and, for a docker-py option ``run()`` does not offer,
says so). Standard library only: the translation is pure and checked before anything runs.

=================  ==========================================================
docker-py name     swarmless option
=================  ==========================================================
``environment``    ``env`` (a dict, or a list of ``"KEY=value"``)
``network_mode``   ``network`` (a network name, ``bridge``, ``host``, ``none``)
``working_dir``    ``workdir``
``mem_limit``      ``memory``
``nano_cpus``      ``cpus`` (billionths of a CPU)
``volumes``        bind mounts: ``["/src:/dst:ro", "/anonymous"]`` or
                   ``{"/src": {"bind": "/dst", "mode": "ro"}}``
``entrypoint``     the container's entrypoint (a string is split as a shell would)
``name``           the container's name
``hostname``       the container's host name
``auto_remove``    the engine removes the container when it exits (``--rm``)
=================  ==========================================================

``user``, ``labels``, ``detach``, ``remove``, ``stdout`` and ``stderr`` already have
docker-py's names and meaning; ``user`` may also be a number (a uid), ``labels`` a list of
names (each with an empty value).
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict

from swarmless.exceptions import InvalidArgument

__all__ = ["DockerOptions", "docker_options", "split_command"]


class DockerOptions(TypedDict, total=False):
    """The docker-py names :meth:`swarmless.Client.run` takes (all optional)."""

    environment: Mapping[str, str | int | float] | Sequence[str]
    network_mode: str
    working_dir: str
    mem_limit: int | str
    nano_cpus: int
    volumes: Mapping[str, Mapping[str, Any] | str] | Sequence[str]
    entrypoint: str | Sequence[str]
    name: str
    hostname: str
    auto_remove: bool


#: docker-py's name -> the swarmless option it fills.
_SAME_AS = {
    "environment": "env",
    "network_mode": "network",
    "working_dir": "workdir",
    "mem_limit": "memory",
    "nano_cpus": "cpus",
    "volumes": "binds",
}

#: Options of docker-py's ``containers.run`` that ``run()`` leaves out on purpose.
_NOT_OFFERED = frozenset(
    {
        "blkio_weight",
        "cap_add",
        "cap_drop",
        "cgroup_parent",
        "cpu_count",
        "cpu_percent",
        "cpu_period",
        "cpu_quota",
        "cpu_shares",
        "cpuset_cpus",
        "cpuset_mems",
        "device_requests",
        "devices",
        "dns",
        "dns_search",
        "domainname",
        "extra_hosts",
        "group_add",
        "healthcheck",
        "init",
        "ipc_mode",
        "links",
        "log_config",
        "mac_address",
        "mem_reservation",
        "memswap_limit",
        "mounts",
        "network_disabled",
        "networking_config",
        "oom_kill_disable",
        "pid_mode",
        "pids_limit",
        "platform",
        "ports",
        "privileged",
        "publish_all_ports",
        "read_only",
        "restart_policy",
        "runtime",
        "security_opt",
        "shm_size",
        "stdin_open",
        "stop_signal",
        "stream",
        "sysctls",
        "tmpfs",
        "tty",
        "ulimits",
        "userns_mode",
        "uts_mode",
        "volume_driver",
        "volumes_from",
    }
)


def split_command(command: str, what: str = "command") -> list[str]:
    """A command line split into arguments as a POSIX shell would (docker-py does this)."""
    try:
        return shlex.split(command)
    except ValueError as e:
        raise InvalidArgument(f"{what} {command!r} cannot be split into arguments: {e}") from None


def docker_options(
    given: Mapping[str, Any],
    *,
    taken: Mapping[str, object] | None = None,
    accepted: Sequence[str] = (),
    function: str = "run()",
) -> dict[str, Any]:
    """The swarmless options that docker-py's names in ``given`` stand for.

    ``taken`` holds the swarmless options the caller set itself (one given both ways is
    refused); ``accepted`` are the names the caller takes besides these (for the error
    message and its suggestions). Raises :class:`TypeError` naming every name that is
    not an option.
    """
    unknown = sorted(set(given) - set(DockerOptions.__annotations__))
    if unknown:
        raise TypeError(_unknown_message(unknown, accepted, function))
    out: dict[str, Any] = {}
    for name, value in given.items():
        if value is None:
            continue  # docker-py's default for each of them: not set
        option = _SAME_AS.get(name, name)
        if taken is not None and taken.get(option) is not None:
            raise InvalidArgument(f"{function}: give {option} or {name}, not both")
        out[option] = _CONVERT.get(name, _as_is)(name, value)
    return out


def _unknown_message(unknown: list[str], accepted: Sequence[str], function: str) -> str:
    names = ", ".join(repr(n) for n in unknown)
    plural = "s" if len(unknown) > 1 else ""
    parts = [f"{function} got unexpected keyword argument{plural} {names}"]
    everything = sorted({*accepted, *DockerOptions.__annotations__})
    for name in unknown:
        if name in _NOT_OFFERED:
            parts.append(f"{name!r} is a docker-py option that swarmless's run() does not offer")
            continue
        close = difflib.get_close_matches(name, everything, n=1)
        if close:
            parts.append(f"{name!r}: did you mean {close[0]!r}")
    parts.append("it takes " + ", ".join(everything))
    return "; ".join(parts)


def _as_is(name: str, value: Any) -> Any:
    return value


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{name} must be a non-empty string, got {value!r}")
    return value


def _environment(name: str, value: Any) -> dict[str, str]:
    env: dict[str, str] = {}
    if isinstance(value, Mapping):
        for key, val in value.items():
            if not isinstance(key, str) or isinstance(val, bool):
                raise InvalidArgument(f"{name}: {key!r}={val!r} is not NAME=string")
            if not isinstance(val, str | int | float):
                raise InvalidArgument(f"{name}: the value of {key!r} must be a string, not {val!r}")
            env[key] = str(val)
        return env
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise InvalidArgument(f"{name} must be a dict or a list of 'KEY=value', got {value!r}")
    for entry in value:
        key, sep, val = entry.partition("=") if isinstance(entry, str) else ("", "", "")
        if not sep or not key:
            raise InvalidArgument(f"{name}: {entry!r} is not 'KEY=value'")
        env[key] = val
    return env


def _nano_cpus(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidArgument(f"{name} must be a positive integer (1e9 is one CPU), got {value!r}")
    return value / 1e9


def _volumes(name: str, value: Any) -> list[str]:
    """Bind mounts as the engine's ``Binds`` strings (``src:dst[:mode]``, or ``dst``)."""
    binds: list[str] = []
    if isinstance(value, Mapping):
        for source, target in value.items():
            if not isinstance(source, str) or not source:
                raise InvalidArgument(f"{name}: {source!r} is not a path or a volume name")
            if isinstance(target, str):
                binds.append(f"{source}:{_text(name, target)}:rw")
                continue
            if not isinstance(target, Mapping) or not isinstance(target.get("bind"), str):
                raise InvalidArgument(
                    f"{name}: {source!r} must map to a path or to {{'bind': path, 'mode': 'rw'}}, "
                    f"got {target!r}"
                )
            if "ro" in target and "mode" in target:
                raise InvalidArgument(f"{name}: {source!r} has both 'ro' and 'mode'")
            mode = ("ro" if target["ro"] else "rw") if "ro" in target else target.get("mode", "rw")
            binds.append(f"{source}:{_text(name, target['bind'])}:{_text(name, mode)}")
        return binds
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise InvalidArgument(
            f"{name} must be a list of 'source:target[:mode]' or a dict, got {value!r}"
        )
    for entry in value:
        binds.append(_text(name, entry))
    return binds


def _entrypoint(name: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return split_command(value, name)
    if isinstance(value, Sequence) and all(isinstance(a, str) for a in value):
        return list(value)
    raise InvalidArgument(f"{name} must be a string or a list of strings, got {value!r}")


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{name} must be True or False, got {value!r}")
    return value


_CONVERT: dict[str, Callable[[str, Any], Any]] = {
    "environment": _environment,
    "network_mode": _text,
    "working_dir": _text,
    "nano_cpus": _nano_cpus,
    "volumes": _volumes,
    "entrypoint": _entrypoint,
    "name": _text,
    "hostname": _text,
    "auto_remove": _flag,
}
