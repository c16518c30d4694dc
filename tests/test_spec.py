"""FunctionSpec: every field's rules, all errors at once, YAML files, round trips, digest."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from swarmless.exceptions import InvalidArgument, SpecError
from swarmless.spec import FunctionSpec, load_file

MiB = 1024 * 1024
BASE: dict[str, Any] = {"name": "fn", "image": "busybox"}


def spec_errors(data: dict[str, Any], **kw: Any) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        FunctionSpec.from_dict(data, **kw)
    return info.value.errors


# -- valid specs --------------------------------------------------------------------------

VALID: list[tuple[dict[str, Any], dict[str, Any]]] = [
    (
        {},
        {
            "mode": "oneshot",
            "command": None,
            "timeout": 30.0,
            "memory": None,
            "concurrency": 1,
            "max_containers": 10,
            "max_body": 10 * MiB,
            "retries": 2,
            "timezone": "UTC",
            "docker": "none",
            "env": {},
            "secrets": (),
            "placement": (),
            "spread": (),
        },
    ),
    ({"spread": "node.labels.zone"}, {"spread": ("node.labels.zone",)}),
    ({"command": "sh -c 'echo hi there'"}, {"command": ["sh", "-c", "echo hi there"]}),
    ({"command": ["sleep", 5]}, {"command": ["sleep", "5"]}),
    ({"memory": "128m"}, {"memory": 128 * MiB}),
    ({"memory": "1g"}, {"memory": 1024 * MiB}),
    ({"memory": "64mb"}, {"memory": 64 * MiB}),
    ({"memory": "1.5g"}, {"memory": 1536 * MiB}),
    ({"memory": "8MiB"}, {"memory": 8 * MiB}),
    ({"memory": "6m"}, {"memory": 6 * MiB}),
    ({"memory": 134217728}, {"memory": 134217728}),
    ({"max_body": "512k"}, {"max_body": 512 * 1024}),
    ({"max_body": 0}, {"max_body": 0}),
    ({"timeout": 3600}, {"timeout": 3600.0}),
    ({"timeout": 0.5}, {"timeout": 0.5}),
    ({"cpus": 2}, {"cpus": 2.0}),
    ({"cpus": 0.25}, {"cpus": 0.25}),
    (
        {"env": {"A": 1, "B": True, "C": 1.5, "D": "x", "lower_ok": ""}},
        {"env": {"A": "1", "B": "true", "C": "1.5", "D": "x", "lower_ok": ""}},
    ),
    ({"env": None, "labels": None}, {"env": {}, "labels": {}}),
    ({"labels": {"team": "web", "tier": 2}}, {"labels": {"team": "web", "tier": "2"}}),
    ({"secrets": ["db-password", "api_key.v2"]}, {"secrets": ("db-password", "api_key.v2")}),
    ({"placement": "node.role == worker"}, {"placement": ("node.role == worker",)}),
    (
        {"placement": ["node.role == worker", "node.labels.ssd != false"]},
        {"placement": ("node.role == worker", "node.labels.ssd != false")},
    ),
    ({"min_containers": 3, "max_containers": 3}, {"min_containers": 3, "max_containers": 3}),
    ({"concurrency": 1000, "queue_size": 0, "buffer": 2}, {"concurrency": 1000, "buffer": 2}),
    ({"idle_timeout": 0, "paused_buffer": True}, {"idle_timeout": 0.0, "paused_buffer": True}),
    ({"retries": 0, "backoff": 0.1, "max_age": 60}, {"retries": 0, "backoff": 0.1}),
    ({"async_concurrency": 4}, {"async_concurrency": 4}),
    ({"schedule": "*/5  * * * *"}, {"schedule": "*/5 * * * *"}),
    ({"schedule": "@hourly", "timezone": "Europe/Paris"}, {"timezone": "Europe/Paris"}),
    ({"docker": "scoped", "private": True}, {"docker": "scoped", "private": True}),
    ({"network": "my-net"}, {"network": "my-net"}),
    ({"mode": "cgi"}, {"mode": "cgi", "handler": None}),
    (
        {"mode": "warm", "handler": "app:handle"},
        {"handler": "app:handle", "handler_kind": "python"},
    ),
    (
        {"mode": "warm", "handler": "pkg.web:app", "handler_kind": "wsgi"},
        {"handler_kind": "wsgi"},
    ),
    (
        {"mode": "warm", "handler": "./run.sh --fast", "handler_kind": "command"},
        {"handler": "./run.sh --fast", "handler_kind": "command"},
    ),
    (
        {"mode": "warm", "command": ["python", "job.py", "a b"]},
        {"handler": "python job.py 'a b'", "handler_kind": "command"},
    ),
]


@pytest.mark.parametrize(("extra", "expected"), VALID)
def test_valid_specs(extra: dict[str, Any], expected: dict[str, Any]) -> None:
    spec = FunctionSpec.from_dict({**BASE, **extra})
    for field, value in expected.items():
        assert getattr(spec, field) == value, field
        assert type(getattr(spec, field)) is type(value), field


@pytest.mark.parametrize(("extra", "expected"), VALID)
def test_round_trip_through_json(extra: dict[str, Any], expected: dict[str, Any]) -> None:
    spec = FunctionSpec.from_dict({**BASE, **extra})
    again = FunctionSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.digest == spec.digest
    assert again.to_dict() == spec.to_dict()


def test_build_only_names_the_image_and_resolves_against_base_dir(tmp_path: Path) -> None:
    spec = FunctionSpec.from_dict({"name": "vote", "build": "./src/../vote"}, base_dir=tmp_path)
    assert spec.build == str(tmp_path / "vote")
    assert spec.image == "swarmless-fn/vote:latest"


def test_build_without_base_dir_is_relative_to_the_working_directory() -> None:
    spec = FunctionSpec.from_dict({"name": "vote", "build": "vote"})
    assert spec.build == os.path.join(os.getcwd(), "vote")


def test_build_and_image_both_keep_the_image(tmp_path: Path) -> None:
    spec = FunctionSpec.from_dict(
        {"name": "vote", "build": str(tmp_path), "image": "me/vote:2"}, base_dir=Path("/elsewhere")
    )
    assert (spec.build, spec.image) == (str(tmp_path), "me/vote:2")


def test_constructor_validates_too() -> None:
    assert FunctionSpec(name="echo", image="busybox", memory="64m").memory == 64 * MiB  # type: ignore[arg-type]
    with pytest.raises(SpecError) as info:
        FunctionSpec(name="echo", image="busybox", timeout=-1)
    assert set(info.value.errors) == {"timeout"}
    with pytest.raises(TypeError):
        FunctionSpec("echo")  # type: ignore[misc]


def test_specs_are_frozen_and_hashable() -> None:
    spec = FunctionSpec.from_dict({**BASE, "env": {"A": "1"}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.timeout = 5  # type: ignore[misc]
    same = FunctionSpec.from_dict({**BASE, "env": {"A": 1}})
    assert spec == same
    assert len({spec, same}) == 1


# -- bad values: one field at a time, the error names the field and the value --------------

BAD: list[tuple[str, Any, str | None]] = [
    ("name", "Vote", None),
    ("name", "-vote", None),
    ("name", "vote-", None),
    ("name", "vo_te", None),
    ("name", "a" * 64, None),
    ("name", "", None),
    ("name", 5, None),
    ("name", None, None),
    ("name", "fn\n", None),
    ("image", "", None),
    ("image", "bad image", None),
    ("image", 5, None),
    ("image", "Upper/Case", None),
    ("image", "a\x00b", None),
    ("image", "busybox:", None),
    ("build", "", None),
    ("build", ["dir"], None),
    ("mode", "hot", None),
    ("mode", None, None),
    ("command", "", None),
    ("command", [], None),
    ("command", "echo 'unclosed", None),
    ("command", [["nested"]], "['nested']"),
    ("command", {"a": 1}, None),
    ("handler", "", None),
    ("handler", "no_colon", None),
    ("handler_kind", "java", None),
    ("env", ["A=1"], None),
    ("env", {"A": [1]}, "[1]"),
    ("env", {"A": None}, "None"),
    ("env", {"A=B": "x"}, "'A=B'"),
    ("env", {"SWARMLESS_TOKEN": "x"}, "'SWARMLESS_TOKEN'"),
    ("env", {1: "x"}, "1"),
    ("env", {"": "x"}, "''"),
    ("env", {"A": "x\x00y"}, "control character"),
    ("env", {"A": "bell\x07"}, "control character"),
    ("env", {"A\x01": "x"}, "control characters"),
    ("secrets", ["UPPER"], "'UPPER'"),
    ("secrets", ["a/b"], "'a/b'"),
    ("secrets", [1], "1"),
    ("secrets", ["a", "a"], None),
    ("secrets", {"a": 1}, None),
    ("timeout", 0, None),
    ("timeout", -1, None),
    ("timeout", 3601, None),
    ("timeout", True, None),
    ("timeout", "30", None),
    ("timeout", float("nan"), None),
    ("timeout", None, None),
    ("memory", "5m", None),
    ("memory", 1024, None),
    ("memory", "lots", None),
    ("memory", "-1g", None),
    ("memory", 1.5e9, None),
    ("memory", True, None),
    ("memory", 10**30, "at most"),
    ("memory", "9" * 25 + "t", None),
    ("memory", "2t", "1 TiB"),
    ("cpus", 0, None),
    ("cpus", 65, None),
    ("cpus", 0.001, None),
    ("cpus", "2", None),
    ("cpus", True, None),
    ("concurrency", 0, None),
    ("concurrency", 1001, None),
    ("concurrency", 2.0, None),
    ("concurrency", True, None),
    ("min_containers", -1, None),
    ("min_containers", True, None),
    ("max_containers", 0, None),
    ("max_containers", 1001, None),
    ("max_containers", False, None),
    ("idle_timeout", -1, None),
    ("idle_timeout", True, None),
    ("buffer", -1, None),
    ("buffer", True, None),
    ("paused_buffer", 1, None),
    ("paused_buffer", "yes", None),
    ("queue_size", -1, None),
    ("queue_size", True, None),
    ("max_body", "10x", None),
    ("max_body", -1, None),
    ("max_body", True, None),
    ("max_body", "2g", "1 GiB"),
    ("private", "true", None),
    ("private", 1, None),
    ("labels", {"swarmless.managed": "x"}, "'swarmless.managed'"),
    ("labels", ["a"], None),
    ("labels", {"a": {"b": 1}}, "{'b': 1}"),
    ("network", "", None),
    ("network", "my net", None),
    ("network", "container:abc", None),
    ("retries", -1, None),
    ("retries", 101, None),
    ("retries", True, None),
    ("backoff", 0, None),
    ("backoff", True, None),
    ("backoff", 1e300, None),
    ("max_age", 1e300, None),
    ("idle_timeout", 1e300, None),
    ("buffer", 10**9, None),
    ("queue_size", 10**9, None),
    ("max_age", 0, None),
    ("max_age", -5, None),
    ("async_concurrency", 0, None),
    ("async_concurrency", True, None),
    ("schedule", "every minute", None),
    ("schedule", "* * * *", None),
    ("schedule", 5, None),
    ("timezone", "Mars/Olympus", None),
    ("timezone", "Europe", None),
    ("timezone", "../etc/passwd", None),
    ("timezone", "", None),
    ("timezone", 5, None),
    ("docker", "yes", None),
    ("docker", True, None),
    ("placement", ["node.role"], "'node.role'"),
    ("placement", [5], "5"),
    ("placement", 5, None),
    ("spread", ["zone"], "'zone'"),
    ("spread", ["node.labels.zone == a"], None),
]


@pytest.mark.parametrize(("field", "value", "shown"), BAD, ids=lambda x: repr(x)[:30])
def test_bad_value_is_named(field: str, value: Any, shown: str | None) -> None:
    data = {**BASE, field: value}
    if field == "handler":
        data["mode"] = "warm"
    errors = spec_errors(data)
    assert set(errors) == {field}, errors
    assert (shown or repr(value)) in errors[field]


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"name": "fn"}, "image", "required"),
        ({**BASE, "min_containers": 5, "max_containers": 2}, "max_containers", "got 2"),
        ({**BASE, "mode": "warm"}, "handler", "required in warm mode"),
        ({**BASE, "mode": "warm", "handler_kind": "wsgi", "command": "x"}, "handler", "required"),
        ({**BASE, "mode": "warm", "handler": "app.handle"}, "handler", "'app.handle'"),
        ({**BASE, "timeot": 3}, "timeot", "unknown field (did you mean 'timeout'?)"),
        ({**BASE, "zzz": 3}, "zzz", "unknown field"),
        ({"image": "busybox"}, "name", "None"),
    ],
)
def test_rules_between_fields(data: dict[str, Any], field: str, words: str) -> None:
    errors = spec_errors(data)
    assert set(errors) == {field}, errors
    assert words in errors[field]


def test_all_errors_are_raised_together() -> None:
    errors = spec_errors(
        {
            "name": "Bad",
            "timeout": True,
            "memory": "1k",
            "env": {"A": [1]},
            "schedule": "nope",
            "color": "blue",
            "min_containers": 4,
            "max_containers": 2,
        }
    )
    assert set(errors) == {
        "name",
        "timeout",
        "memory",
        "env",
        "schedule",
        "color",
        "image",
        "max_containers",
    }


def test_spec_error_is_an_invalid_argument_with_fields() -> None:
    with pytest.raises(InvalidArgument) as info:
        FunctionSpec.from_dict({**BASE, "timeout": -1})
    err = info.value
    assert isinstance(err, SpecError)
    assert err.status_code == 422
    assert "timeout" in str(err)
    assert err.to_dict()["fields"] == {"timeout": "must be a number > 0 and <= 3600, got -1"}


def test_from_dict_refuses_a_non_mapping() -> None:
    assert set(spec_errors(["name", "fn"])) == {"spec"}  # type: ignore[arg-type]


# -- replace and digest ------------------------------------------------------------------


def test_replace_validates_and_leaves_the_original() -> None:
    spec = FunctionSpec.from_dict(BASE)
    faster = spec.replace(timeout=5, memory="64m")
    assert (faster.timeout, faster.memory, spec.timeout) == (5.0, 64 * MiB, 30.0)
    with pytest.raises(SpecError) as info:
        spec.replace(timeout=0, colour="red")
    assert set(info.value.errors) == {"timeout", "colour"}


def test_replace_renames_a_built_image_with_the_function(tmp_path: Path) -> None:
    built = FunctionSpec.from_dict({"name": "vote", "build": str(tmp_path)})
    assert built.replace(name="poll").image == "swarmless-fn/poll:latest"
    tagged = FunctionSpec.from_dict({"name": "vote", "build": str(tmp_path), "image": "me/v:1"})
    assert tagged.replace(name="poll").image == "me/v:1"


def test_digest_is_stable_and_short() -> None:
    one = FunctionSpec.from_dict({**BASE, "env": {"B": "2", "A": "1"}})
    two = FunctionSpec.from_dict({"env": {"A": 1, "B": 2}, **BASE})
    assert one.digest == two.digest
    assert len(one.digest) == 16
    int(one.digest, 16)
    # Saying a default out loud is the same spec.
    assert (
        FunctionSpec.from_dict({**BASE, "timeout": 30}).digest
        == FunctionSpec.from_dict(BASE).digest
    )


@pytest.mark.parametrize(
    "change",
    [
        {"timeout": 31},
        {"image": "busybox:2"},
        {"env": {"A": "2"}},
        {"env": {"A": "1", "B": "1"}},
        {"command": "echo"},
        {"memory": "64m"},
        {"secrets": ["s"]},
        {"private": True},
        {"mode": "cgi"},
        {"placement": ["node.role == worker"]},
    ],
)
def test_digest_changes_with_content(change: dict[str, Any]) -> None:
    spec = FunctionSpec.from_dict({**BASE, "env": {"A": "1"}})
    assert spec.replace(**change).digest != spec.digest


# -- swarmless.yml -----------------------------------------------------------------------

MAPPING_YML = """\
settings:
  gateway_url: http://127.0.0.1:9999
functions:
  vote:
    build: ./vote
    mode: warm
    handler: app:handle
    memory: 128m
    env: {REDIS_HOST: redis, DEBUG: true}
  result:
    image: swarmless/python:bookworm
    mode: cgi
    command: python /app/result.py
  nightly:
    image: example/report:1.2
    schedule: "0 3 * * *"
    timezone: Europe/Paris
"""

LIST_YML = """\
functions:
  - name: vote
    build: vote
    mode: warm
    handler: app:handle
  - name: result
    image: swarmless/python:bookworm
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "project" / "swarmless.yml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_load_mapping_shape(tmp_path: Path) -> None:
    specs = load_file(write(tmp_path, MAPPING_YML))
    assert [s.name for s in specs] == ["vote", "result", "nightly"]
    vote, result, nightly = specs
    assert vote.build == str(tmp_path / "project" / "vote")
    assert vote.image == "swarmless-fn/vote:latest"
    assert vote.memory == 128 * MiB
    assert vote.env == {"REDIS_HOST": "redis", "DEBUG": "true"}
    assert result.command == ["python", "/app/result.py"]
    assert (nightly.schedule, nightly.timezone) == ("0 3 * * *", "Europe/Paris")


def test_load_list_shape(tmp_path: Path) -> None:
    specs = load_file(write(tmp_path, LIST_YML))
    assert [s.name for s in specs] == ["vote", "result"]
    assert specs[0].build == str(tmp_path / "project" / "vote")


def test_both_shapes_give_the_same_specs(tmp_path: Path) -> None:
    as_list = load_file(write(tmp_path, LIST_YML))
    as_map = load_file(
        write(
            tmp_path,
            "functions:\n"
            "  vote: {build: vote, mode: warm, handler: 'app:handle'}\n"
            "  result: {image: 'swarmless/python:bookworm'}\n",
        )
    )
    assert as_list == as_map


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        (
            "functions:\n  vote: {image: x, timeout: -1}\n  ok: {image: x}\n"
            "  result: {image: x, memory: 1k, colour: red}\n",
            {"vote.timeout", "result.memory", "result.colour"},
        ),
        ("functions:\n  vote: {name: other, image: x}\n", {"vote.name"}),
        ("functions:\n  vote:\n", {"vote.image"}),
        ("functions:\n  vote: [1, 2]\n", {"vote"}),
        ("functions:\n  Vote: {image: x}\n", {"Vote.name"}),
        (
            "functions:\n  - {name: vote, image: x, retries: -1}\n  - {image: x}\n  - 7\n",
            {"vote.retries", "functions[1].name", "functions[2]"},
        ),
        ("functions:\n  - {name: a, image: x}\n  - {name: a, image: y}\n", {"a.name"}),
        ("functions: 5\n", {"functions"}),
        ("functions: [\n", {"file"}),
        ("- just a list\n", {"file"}),
    ],
)
def test_file_errors_are_prefixed_with_the_function(
    tmp_path: Path, text: str, fields: set[str]
) -> None:
    with pytest.raises(SpecError) as info:
        load_file(write(tmp_path, text))
    assert set(info.value.errors) == fields


@pytest.mark.parametrize("text", ["", "settings: {port: 9000}\n", "functions:\n"])
def test_a_file_without_functions_has_none(tmp_path: Path, text: str) -> None:
    assert load_file(write(tmp_path, text)) == []


def test_a_missing_file_is_an_invalid_argument(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="cannot read"):
        load_file(tmp_path / "nope.yml")


@pytest.mark.parametrize(
    "image",
    [
        "busybox",
        "swarmless/python:bookworm",
        "registry.example:5000/team/app:1.2",
        "localhost:5000/a_b/c-d__e:Tag.1",
        "[::1]:5000/x",
        "busybox@sha256:" + "a" * 64,
        "ghcr.io/org/app:v1@sha256:" + "0" * 64,
    ],
)
def test_image_references_follow_dockers_grammar(image: str) -> None:
    assert FunctionSpec.from_dict({**BASE, "image": image}).image == image


def test_env_values_may_hold_line_breaks_not_other_control_characters() -> None:
    pem = "-----BEGIN KEY-----\nabc\r\n\tdef\n-----END KEY-----\n"
    assert FunctionSpec.from_dict({**BASE, "env": {"KEY": pem}}).env == {"KEY": pem}
    assert "control" in spec_errors({**BASE, "labels": {"a": "x\ny"}})["labels"]
    assert "argument" in spec_errors({**BASE, "command": ["echo", "a\x00b"]})["command"]
