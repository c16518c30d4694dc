"""The checks of a :class:`~swarmless.spec.FunctionSpec`: one per field, then the rules
between fields.

:func:`validate` checks every field on its own (with the checks of
:mod:`swarmless.spec_values`), then the rules that tie fields together (an image or a build
folder; a warm function's handler; ``min_containers <= max_containers``), only over fields
that are valid. It returns the normalised values and every problem at once, field by field.
"""

from __future__ import annotations

import os
import re
import shlex
from typing import Any

from swarmless.spec_values import (
    CONTROL,
    CONTROL_IN_VALUE,
    DOCKER_ACCESS,
    HANDLER_KINDS,
    MAX_BODY,
    MAX_MEMORY,
    MIN_CPUS,
    MODES,
    BadValue,
    Check,
    MiB,
    arguments,
    byte_size,
    inside,
    integer_in,
    is_cron,
    is_number,
    is_zone,
    one_of,
    optional,
    route_list,
    rule,
    string_list,
    string_map,
)

__all__ = ["CHECKS", "validate"]

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_SECRET = re.compile(r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$")
_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
#: An image reference, after the grammar of Docker's distribution/reference:
#: ``[domain[:port]/]path[/path...][:tag][@algorithm:hex]``, path components lower-case.
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:]+\])(?::[0-9]{{1,5}})?"
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(
    rf"(?:{_DOMAIN}/)?{_PATH}(?:/{_PATH})*"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
)
#: An image's id on an engine (its configuration's digest).
_IMAGE_ID = re.compile(r"[a-z0-9]{1,16}:[0-9a-f]{32,128}")
#: A Docker network name (what the engine accepts).
_NETWORK = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")

_BOOL = rule(lambda v: isinstance(v, bool), "true or false")
CHECKS: dict[str, Check] = {
    "name": rule(
        lambda v: isinstance(v, str) and _NAME.fullmatch(v),
        "a lower-case DNS label (a-z, 0-9 and '-', 1 to 63 characters, "
        "starting and ending with a letter or digit)",
    ),
    "image": optional(
        rule(
            lambda v: isinstance(v, str) and len(v) <= 512 and _IMAGE.fullmatch(v),
            "an image reference like 'busybox', 'swarmless/python:bookworm' or "
            "'registry.example:5000/team/app:1.2' (lower-case repository)",
        )
    ),
    "image_id": optional(
        rule(
            lambda v: isinstance(v, str) and _IMAGE_ID.fullmatch(v),
            "an image id like 'sha256:<64 hex digits>'",
        )
    ),
    "build": optional(
        rule(lambda v: isinstance(v, str) and v.strip() and "\0" not in v, "a directory")
    ),
    "dockerfile": optional(
        rule(
            lambda v: isinstance(v, str) and inside(v),
            "a relative path inside the build folder, like 'Dockerfile.prod'",
        )
    ),
    "mode": one_of(MODES),
    "command": optional(arguments),
    "handler": optional(
        rule(
            lambda v: isinstance(v, str) and v.strip() and not CONTROL.search(v),
            "a non-empty string without control characters",
        )
    ),
    "handler_kind": one_of(HANDLER_KINDS),
    "env": string_map(
        " without '=' and not SWARMLESS_* (reserved); values may hold tabs and line breaks, "
        "no other control character",
        lambda k: "=" not in k and not k.startswith("SWARMLESS_"),
        CONTROL_IN_VALUE,
    ),
    "env_file": string_list(inside, "relative paths of .env files, like '.env'"),
    "secrets": string_list(_SECRET.fullmatch, "secret names (a-z, 0-9, '-', '_', '.')"),
    "timeout": rule(lambda v: is_number(v) and 0 < v <= 3600, "a number > 0 and <= 3600", float),
    "memory": optional(byte_size(6 * MiB, MAX_MEMORY)),
    "cpus": optional(
        rule(lambda v: is_number(v) and MIN_CPUS <= v <= 64, "a number from 0.01 to 64", float)
    ),
    "concurrency": integer_in(1, 1000),
    "min_containers": integer_in(0, 1000),
    "max_containers": integer_in(1, 1000),
    "idle_timeout": rule(
        lambda v: is_number(v) and 0 <= v <= 7 * 86400, "a number from 0 to 604800 (a week)", float
    ),
    "buffer": integer_in(0, 1000),
    "paused_buffer": _BOOL,
    "queue_size": integer_in(0, 1_000_000),
    "max_body": byte_size(0, MAX_BODY),
    "max_output": byte_size(0, MAX_BODY),
    "pids": optional(integer_in(16, 4_194_304)),
    "log_size": optional(byte_size(MiB, 1024**3)),
    "private": _BOOL,
    "labels": string_map(
        " not starting with 'swarmless.' (reserved)", lambda k: k[:10] != "swarmless.", CONTROL
    ),
    "network": optional(
        rule(
            lambda v: isinstance(v, str) and _NETWORK.fullmatch(v),
            "a Docker network name (letters, digits, '_', '.', '-')",
        )
    ),
    "retries": integer_in(0, 100),
    "backoff": rule(
        lambda v: is_number(v) and 0 < v <= 86400, "a number > 0 and <= 86400 (a day)", float
    ),
    "max_age": rule(
        lambda v: is_number(v) and 0 < v <= 366 * 86400,
        "a number > 0 and <= 31622400 (a year)",
        float,
    ),
    "async_concurrency": optional(integer_in(1, 1000)),
    "retry_sync": _BOOL,
    "schedule": optional(
        rule(
            is_cron,
            "a cron expression like '*/5 * * * *' or '@hourly'",
            lambda v: " ".join(v.split()),
        )
    ),
    "timezone": rule(is_zone, "an IANA time zone like 'UTC' or 'Europe/Paris'"),
    "docker": one_of(DOCKER_ACCESS),
    "children_timeout": rule(
        lambda v: is_number(v) and 0 <= v <= 3600, "a number of seconds from 0 to 3600", float
    ),
    "routes": route_list,
    "placement": string_list(
        lambda s: ("==" in s or "!=" in s) and not CONTROL.search(s),
        "constraints like 'node.role == worker'",
    ),
    "spread": string_list(
        lambda s: re.fullmatch(r"(node|engine)\.labels\.[^\s=]+", s) is not None,
        "node label names like 'node.labels.zone'",
    ),
}


def validate(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Each field on its own, then the rules between fields (only over valid fields)."""
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for field, check in CHECKS.items():
        try:
            values[field] = check(raw[field])
        except BadValue as e:
            errors[field] = str(e)

    def valid(*fields: str) -> bool:
        return all(f in values for f in fields)

    if valid("image", "build") and values["image"] is None and values["build"] is None:
        errors["image"] = "required: give an image, a build directory, or both; got neither"
    if valid("build", "dockerfile") and values["dockerfile"] and values["build"] is None:
        errors["dockerfile"] = "needs 'build:' (the folder it builds), got no build folder"
    if valid("build") and values["build"] is not None:
        values["build"] = os.path.normpath(os.path.abspath(os.path.expanduser(values["build"])))
        if valid("name", "image") and values["image"] is None:
            values["image"] = f"swarmless-fn/{values['name']}:latest"
    if valid("min_containers", "max_containers"):
        low, high = values["min_containers"], values["max_containers"]
        if high < low:
            errors["max_containers"] = f"must be >= min_containers ({low}), got {high}"
    if valid("mode", "command", "handler", "handler_kind"):
        handler, kind, command = values["handler"], values["handler_kind"], values["command"]
        if handler is None and values["mode"] == "warm":
            if command is not None and kind != "wsgi":
                values["handler"] = shlex.join(command)
                values["handler_kind"] = "cgi" if kind == "cgi" else "command"
            else:
                errors["handler"] = (
                    "required in warm mode: 'module:callable' (python, wsgi) or a command "
                    "line (handler_kind: command or cgi), or give a command; got None"
                )
        elif (
            handler is not None
            and kind not in ("command", "cgi")
            and not _CALLABLE.fullmatch(handler)
        ):
            errors["handler"] = (
                f"must be 'module:callable' for handler_kind {kind}, got {handler!r}"
            )
    return values, errors
