"""The inspecting commands (ls, logs, describe, invocations, schedules, secret ls), their
``-o table|wide|json|yaml``, ``logs -f``, shell completion and every command's ``--help``,
against a real gateway.

Functions are deployed through the SDK; the commands run as a user runs them: through
click's runner (stdout not a terminal: plain text), as real processes (exit statuses,
Ctrl-C), and on a real terminal of 80 columns (tests/terminal.py), where tables must fit.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import docker
import pytest
import yaml
from click.testing import CliRunner, Result

from swarmless.cli import _COMMANDS, _EXAMPLES, main
from swarmless.exceptions import ContainerError
from swarmless.sdk.gateway import GatewayClient
from tests.conftest import BUSYBOX, PYTHON, SESSION
from tests.gateway_harness import TOKEN, RunningGateway
from tests.terminal import run_in_terminal
from tests.waiting import wait_until

CALL_ID = re.compile(r"[0-9a-f]{12}-[0-9a-f]{12}")
SWARMLESS = str(Path(sys.executable).with_name("swarmless"))
LONG_IMAGE = f"swarmless-test-cli/a/deeply/nested/repository/for/an/image:{SESSION}-a-long-tag"

Cli = Callable[..., Result]


@pytest.fixture(scope="module")
def gw(
    engine: docker.DockerClient, labels: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    engine.images.get(BUSYBOX).tag(LONG_IMAGE)
    g = RunningGateway(tmp_path_factory.mktemp("cli-inspect"), labels).start()
    try:
        yield g
    finally:
        g.stop(engine)
        with contextlib.suppress(docker.errors.DockerException):
            engine.images.remove(LONG_IMAGE)


@pytest.fixture(scope="module")
def client(gw: RunningGateway) -> Iterator[GatewayClient]:
    with gw.client() as c:
        yield c


@pytest.fixture(scope="module")
def deployed(client: GatewayClient) -> dict[str, str]:
    """Functions to look at, and one call of each: their ids by function."""
    client.deploy({"name": "ci-upper", "image": BUSYBOX, "command": ["tr", "a-z", "A-Z"]})
    client.deploy(
        {
            "name": "ci-fails",
            "image": BUSYBOX,
            "command": ["sh", "-c", "echo to stdout; echo to stderr >&2; exit 3"],
        }
    )
    client.deploy(
        {"name": "ci-long-image-and-a-long-name-too", "image": LONG_IMAGE, "command": ["cat"]}
    )
    calls = {"ci-upper": client.invoke("ci-upper", "shout").call_id}
    with pytest.raises(ContainerError) as e:
        client.invoke("ci-fails", "x")
    assert e.value.invocation is not None
    calls["ci-fails"] = e.value.invocation
    return calls


@pytest.fixture
def env(gw: RunningGateway) -> dict[str, str]:
    return {
        **os.environ,
        "SWARMLESS_GATEWAY_URL": gw.url,
        "SWARMLESS_TOKEN": TOKEN,
        "NO_COLOR": "1",
    }


@pytest.fixture
def cli(env: dict[str, str]) -> Cli:
    """A command through click's runner: stdout is not a terminal (plain text)."""

    def run(*args: str) -> Result:
        return CliRunner(env={**env, "COLUMNS": "80"}).invoke(
            main, list(args), catch_exceptions=False
        )

    return run


# -- ls ---------------------------------------------------------------------------------------


def test_ls_piped_is_plain_text_nothing_cut(cli: Cli, deployed: dict[str, str]) -> None:
    r = cli("ls")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAME", "MODE", "VER", "READY", "BUSY", "QUEUED", "SCALE", "IMAGE"]
    row = next(line.split() for line in lines if line.startswith("ci-long-image"))
    # One row per line, every cell a word (empty ones are '-'), the image whole though the
    # line is longer than COLUMNS: what awk and grep read.
    want = ["ci-long-image-and-a-long-name-too", "oneshot", "1", "0", "0", "0", "-"]
    assert row == [*want, LONG_IMAGE]
    assert not set("│┃─━…") & set(r.stdout)


def test_ls_wide_json_yaml(cli: Cli, deployed: dict[str, str]) -> None:
    wide = cli("ls", "-o", "wide").stdout.splitlines()[0].split()
    assert {"STARTING", "PAUSED", "ASYNC", "DOCKER"} <= set(wide)
    items = json.loads(cli("ls", "-o", "json").stdout)
    upper = next(f for f in items if f["name"] == "ci-upper")
    assert upper["spec"]["command"] == ["tr", "a-z", "A-Z"]  # the gateway's answer, whole
    assert yaml.safe_load(cli("ls", "-o", "yaml").stdout) == items
    r = cli("ls", "-o", "xml")
    assert r.exit_code == 2
    assert "table" in r.stderr


def test_tables_fit_a_terminal_of_80_columns(env: dict[str, str], deployed: dict[str, str]) -> None:
    for args in (["ls"], ["invocations"], ["logs", "ci-fails"], ["describe", "ci-fails"]):
        status, text = run_in_terminal([SWARMLESS, *args], env, columns=80)
        assert status == 0, text
        for line in text.splitlines():
            assert len(line) <= 80, f"{args}: {len(line)} columns: {line!r}"
    status, text = run_in_terminal([SWARMLESS, "ls"], env, columns=80)
    row = next(line for line in text.splitlines() if "ci-long-image" in line)
    assert "ci-long-image-and-a-long-name-too " in row  # a name is never cut...
    assert row.endswith("…")  # ...an image is, to fit
    status, text = run_in_terminal([SWARMLESS, "invocations"], env, columns=80)
    assert deployed["ci-fails"] in text  # a call id is never cut
    status, text = run_in_terminal([SWARMLESS, "ls"], env, columns=200)
    assert LONG_IMAGE in text  # room enough: nothing cut


# -- logs ---------------------------------------------------------------------------------------


def test_logs_of_a_failed_call_say_how_it_ended(cli: Cli, deployed: dict[str, str]) -> None:
    r = cli("logs", deployed["ci-fails"])
    assert r.exit_code == 0, r.output
    assert r.stdout == "to stdout\n"
    assert r.stderr.startswith("to stderr\n")
    assert f"call {deployed['ci-fails']} failed, exit status 3, HTTP 502" in r.stderr
    assert "exited with status 3" in r.stderr
    data = json.loads(cli("logs", deployed["ci-fails"], "-o", "json").stdout)
    assert (data["status"], data["exit_code"], data["stdout"]) == ("failed", 3, "to stdout\n")
    data = yaml.safe_load(cli("logs", deployed["ci-fails"], "-o", "yaml").stdout)
    assert data["stderr"] == "to stderr\n"


def test_logs_of_a_function_and_invocations(cli: Cli, deployed: dict[str, str]) -> None:
    r = cli("logs", "ci-fails")
    assert r.exit_code == 0, r.output
    row = next(line for line in r.stdout.splitlines() if deployed["ci-fails"] in line)
    assert row.split()[:3] == [deployed["ci-fails"], "failed", "502"]
    assert "exited with status 3" in row
    records = json.loads(cli("logs", "ci-upper", "-o", "json").stdout)
    assert [r["id"] for r in records] == [deployed["ci-upper"]]
    r = cli("logs", "ci-nothing")
    assert r.exit_code == 1
    assert "'ci-nothing' is not deployed" in r.stderr
    failed = json.loads(cli("invocations", "-s", "failed", "-o", "json").stdout)
    assert deployed["ci-fails"] in {f["id"] for f in failed}
    assert all(f["status"] == "failed" for f in failed)
    r = cli("invocations", "-f", "ci-upper")
    assert deployed["ci-upper"] in r.stdout
    assert deployed["ci-fails"] not in r.stdout
    r = cli("logs")
    assert r.exit_code == 2
    assert "CALL_ID or a function NAME" in r.stderr


class Lines:
    """The lines a process writes to one of its pipes, read as they come."""

    def __init__(self, pipe: Any) -> None:
        self.fd = pipe.fileno()
        self.lines: list[str] = []
        self._partial = b""

    def read(self) -> list[str]:
        """Read what is there (without waiting); all the complete lines so far."""
        while select.select([self.fd], [], [], 0)[0]:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                break
            *complete, self._partial = (self._partial + chunk).split(b"\n")
            self.lines += [c.decode() for c in complete]
        return self.lines

    def wait_for(self, done: Callable[[list[str]], bool], what: str) -> None:
        """Read until ``done(lines)`` (60 s at most)."""
        wait_until(lambda: done(self.read()), 60, what, interval=0.1)


def _follow(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[bytes], Lines, Lines]:
    """``swarmless logs -f ARGS...`` running, once it has read the calls already done (it
    says so on stderr): only calls that finish from then on are printed."""
    proc = subprocess.Popen(
        [SWARMLESS, "logs", "-f", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    err.wait_for(lambda lines: any("Ctrl-C" in x for x in lines), "logs -f to start")
    return proc, out, err


def _stop(proc: subprocess.Popen[bytes], out: Lines, err: Lines) -> None:
    """Ctrl-C, as a person stops it; then read what is left."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    out.read()
    err.read()


def test_logs_follow_prints_calls_as_they_finish(
    env: dict[str, str], client: GatewayClient, deployed: dict[str, str]
) -> None:
    proc, out, err = _follow(env)
    try:
        assert "following the calls of every function" in err.lines[0]
        first = client.invoke("ci-upper", "one").call_id
        with pytest.raises(ContainerError) as e:
            client.invoke("ci-fails", "x")
        second = e.value.invocation
        assert second is not None
        out.wait_for(lambda lines: "to stdout" in lines, "the calls printed")
    finally:
        _stop(proc, out, err)
    assert proc.returncode == 0, err.lines
    headers = [line for line in out.lines if line.startswith("==> ")]
    assert headers[0].startswith(f"==> {first} ci-upper succeeded 200"), out.lines
    assert headers[1].startswith(f"==> {second} ci-fails failed 502"), out.lines
    assert deployed["ci-upper"] not in "\n".join(out.lines)  # done before -f started
    assert any(f"call {second} failed, exit status 3" in x for x in err.lines), err.lines


def test_logs_follow_json_is_one_object_per_line(
    env: dict[str, str], client: GatewayClient, deployed: dict[str, str]
) -> None:
    proc, out, err = _follow(env, "ci-upper", "-o", "json")
    try:
        ids = [client.invoke("ci-upper", w).call_id for w in ("a", "b")]
        out.wait_for(lambda lines: len(lines) >= 2, "two calls printed")
    finally:
        _stop(proc, out, err)
    objects = [json.loads(line) for line in out.lines]
    assert [o["id"] for o in objects] == ids
    assert {o["function"] for o in objects} == {"ci-upper"}
    assert [o["stdout"] for o in objects] == ["A", "B"]  # what each call printed


def test_logs_follow_a_call_waits_for_it(env: dict[str, str], client: GatewayClient) -> None:
    client.deploy(
        {"name": "ci-slow", "image": BUSYBOX, "command": ["sh", "-c", "sleep 1; echo done"]}
    )
    call = client.spawn("ci-slow", b"")
    p = subprocess.run(
        [SWARMLESS, "logs", "-f", call.id], env=env, capture_output=True, text=True, timeout=120
    )
    assert (p.returncode, p.stdout) == (0, "done\n"), p.stderr


# -- describe -----------------------------------------------------------------------------------


def test_describe_a_warm_function(cli: Cli, client: GatewayClient, gw: RunningGateway) -> None:
    client.deploy(
        {
            "name": "ci-warm",
            "image": PYTHON,
            "mode": "warm",
            "command": ["cat"],
            "env": {"SECRET_KEY": "do-not-print-me"},
            "max_containers": 3,
        }
    )
    client.scale("ci-warm", 1)
    gw.wait_for(
        lambda: client.function("ci-warm")["containers"].get("ready") == 1,
        timeout=60,
        what="one ready container",
    )
    r = cli("describe", "ci-warm")
    assert r.exit_code == 0, r.output
    text = r.stdout
    for words in (
        "name:",
        "version:  1",
        "mode:",
        "warm",
        "handler:",
        "max_containers:",
        "by state:  ready 1",
        "scaling:",
        "pinned to 1",
        "last decision:",
        "pinned to 1",
        "recent failures: none",
    ):
        assert words in text, (words, text)
    assert "SECRET_KEY" in text
    assert "do-not-print-me" not in text  # names of the environment only
    data = json.loads(cli("describe", "ci-warm", "-o", "json").stdout)
    assert data["scale"]["pinned"] == 1
    assert data["recent_failures"] == []
    client.remove("ci-warm")


def test_describe_lists_recent_failures(cli: Cli, deployed: dict[str, str]) -> None:
    r = cli("describe", "ci-fails")
    assert r.exit_code == 0, r.output
    assert re.search(r"^recent failures \(\d\):$", r.stdout, re.M), r.stdout
    assert deployed["ci-fails"] in r.stdout
    assert "command:" in r.stdout
    assert "sh -c 'echo to stdout; echo to stderr >&2; exit 3'" in r.stdout  # as a shell reads
    data = yaml.safe_load(cli("describe", "ci-fails", "-o", "yaml").stdout)
    assert deployed["ci-fails"] in [f["id"] for f in data["recent_failures"]]
    assert {f["status"] for f in data["recent_failures"]} == {"failed"}
    r = cli("describe", "ci-nothing")
    assert r.exit_code == 1
    assert "not deployed" in r.stderr


# -- schedules, secrets -----------------------------------------------------------------------


def test_schedules_and_secrets_listings(cli: Cli, client: GatewayClient) -> None:
    client.deploy(
        {"name": "ci-nightly", "image": BUSYBOX, "command": ["true"], "schedule": "0 3 1 1 *"}
    )
    try:
        rows = json.loads(cli("schedules", "-o", "json").stdout)
        assert any(s["function"] == "ci-nightly" for s in rows)
        assert "ci-nightly" in cli("schedules").stdout
    finally:
        client.remove("ci-nightly")
    name = f"ci-secret-{SESSION}"
    assert cli("secret", "create", name, "-").exit_code == 0
    try:
        assert name in json.loads(cli("secret", "ls", "-o", "json").stdout)
        assert name in cli("secret", "ls").stdout.split()
    finally:
        assert cli("secret", "rm", name).exit_code == 0


# -- completion ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(shell: str, env: dict[str, str]) -> None:
    p = subprocess.run(
        [SWARMLESS, "completion", shell], env=env, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    assert "_SWARMLESS_COMPLETE" in p.stdout
    if shell == "bash":  # the script is valid bash and installs the completion
        check = subprocess.run(
            [
                "bash",
                "--norc",
                "-c",
                f'eval "$({shlex.quote(SWARMLESS)} completion bash)"; complete -p swarmless',
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "_swarmless_completion" in check.stdout, check.stderr


def _complete(env: dict[str, str], words: str) -> list[str]:
    p = subprocess.run(
        [SWARMLESS],
        env={
            **env,
            "_SWARMLESS_COMPLETE": "bash_complete",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split(" ")) - 1),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    return [line.partition(",")[2] for line in p.stdout.splitlines() if line]


def test_completion_of_commands_options_and_function_names(
    env: dict[str, str], deployed: dict[str, str]
) -> None:
    assert _complete(env, "swarmless des") == ["describe"]
    assert "--follow" in _complete(env, "swarmless logs --f")
    assert set(_complete(env, "swarmless describe ci-")) >= set(deployed)
    assert _complete(env, "swarmless rm ci-up") == ["ci-upper"]
    started = time.monotonic()
    away = {**env, "SWARMLESS_GATEWAY_URL": "http://127.0.0.1:9"}
    assert _complete(away, "swarmless describe ci-") == []  # no gateway: no names, no error
    assert time.monotonic() - started < 10


# -- help ---------------------------------------------------------------------------------------


def _examples_parse(name: str, line: str) -> None:
    """The command line of an example parses: its options exist, its arguments are enough
    (whether a file it names exists here is not checked)."""
    with contextlib.suppress(click.BadParameter):
        _parse(name, line)


def _parse(name: str, line: str) -> None:
    words = shlex.split(line.split("#")[0].split("|")[0].split(">")[0])
    args = words[words.index("swarmless") + 1 :]
    assert args[0] == name, line
    ctx = click.Context(main, info_name="swarmless")
    command = main.get_command(ctx, name)
    assert command is not None
    rest = args[1:]
    if isinstance(command, click.Group):  # secret create ...: the subcommand's options
        command, rest = command.commands[rest[0]], rest[1:]
    command.make_context(name, list(rest), parent=ctx)


@pytest.mark.parametrize("name", sorted(_COMMANDS))
def test_every_help_ends_with_examples_that_parse(name: str) -> None:
    r = CliRunner(env={"COLUMNS": "100"}).invoke(main, [name, "--help"])
    assert r.exit_code == 0, r.output
    assert "\n  Examples:\n" in r.stdout, r.stdout
    examples = _EXAMPLES[name]
    for line in examples:
        assert line in r.stdout  # kept whole, not rewrapped
        assert len(line) + 4 <= 80, f"wider than a terminal once indented: {line}"
        if "$" not in line and "swarmless " in line and not line.startswith(("eval", "echo")):
            _examples_parse(name, line)


def test_every_command_has_examples() -> None:
    assert set(_EXAMPLES) == set(_COMMANDS)
    for module in {m for m, _ in _COMMANDS.values()}:
        importlib.import_module(module)
    for name, command in main.commands.items():
        if isinstance(command, click.Group):
            for sub in command.commands.values():
                assert "Example" in (sub.help or ""), f"swarmless {name} {sub.name}"


#: What `--help` of a command must not load: the gateway's stack, the Docker SDK, httpx.
HEAVY = ("asyncio", "docker", "httpx", "pydantic", "sqlalchemy", "starlette", "uvicorn", "yaml")


@pytest.mark.parametrize("name", sorted(_COMMANDS))
def test_help_loads_nothing_heavy(name: str) -> None:
    code = (
        "import sys, json\n"
        "from swarmless.cli import main\n"
        "try:\n"
        f"    main([{name!r}, '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    loaded = set(json.loads(p.stdout.strip().splitlines()[-1]))
    assert not loaded & set(HEAVY), f"swarmless {name} --help loads {sorted(loaded & set(HEAVY))}"


def test_a_closed_pipe_is_no_error(env: dict[str, str], deployed: dict[str, str]) -> None:
    p = subprocess.run(
        f"{shlex.quote(SWARMLESS)} describe ci-fails | head -1",
        shell=True,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.stdout.startswith("name:")
    assert "error" not in p.stderr, p.stderr
