"""The ``swarmless`` command line against a real gateway and the real engine.

Gateway commands run through click's CliRunner in this process, against a
:class:`RunningGateway` on a free port (``SWARMLESS_GATEWAY_URL`` / ``SWARMLESS_TOKEN``, as a
user sets them). ``swarmless run`` and ``doctor`` run as real processes, so that their exit
status is the one a shell sees. Images are tagged ``swarmless-test-cli/...`` and removed.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest
from click.testing import CliRunner, Result

from swarmless.cli import main
from tests.conftest import BUSYBOX, PYTHON, SESSION
from tests.gateway_harness import TOKEN, RunningGateway

CALL_ID = re.compile(r"HTTP (\d+)\s+call (\S+)")

Cli = Callable[..., Result]


@pytest.fixture(scope="module")
def gw(
    engine: docker.DockerClient, labels: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    g = RunningGateway(tmp_path_factory.mktemp("cli-gw"), labels).start()
    yield g
    g.stop(engine)
    assert g.containers(engine) == []


@pytest.fixture(scope="module")
def tags(engine: docker.DockerClient) -> Iterator[Callable[[str], str]]:
    """Image tags under swarmless-test-cli/, removed at the end of the module."""
    made: list[str] = []

    def tag(name: str) -> str:
        made.append(f"swarmless-test-cli/{name}:{SESSION}")
        return made[-1]

    yield tag
    for image in made:
        with contextlib.suppress(docker.errors.DockerException):
            engine.images.remove(image, force=True)


@pytest.fixture
def cli(gw: RunningGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """``cli("invoke", "hello")``: one command against the test gateway, from ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    env = {
        "SWARMLESS_GATEWAY_URL": gw.url,
        "SWARMLESS_TOKEN": TOKEN,
        "SWARMLESS_DATA_DIR": str(gw.settings.data_dir),
        "COLUMNS": "200",
    }

    def run(*args: str, input: bytes | str | None = None, **more_env: str) -> Result:
        return CliRunner(env={**env, **more_env}).invoke(
            main, list(args), input=input, catch_exceptions=False
        )

    return run


def _set_image(folder: Path, image: str) -> None:
    """Point the scaffolded swarmless.yml at a test tag (the template builds swarmless-fn/)."""
    yml = folder / "swarmless.yml"
    text = yml.read_text()
    assert "    build: .\n" in text
    yml.write_text(text.replace("    build: .\n", f"    build: .\n    image: {image}\n", 1))


def _swarmless(
    *args: str, input: bytes | None = None, **env: str
) -> subprocess.CompletedProcess[bytes]:
    """The CLI as a real process (``python -m swarmless.cli``'s console script)."""
    code = "import sys; from swarmless.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        input=input,
        capture_output=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", **env},
        check=False,
    )


# -- new, build, deploy, invoke, ls, logs, scale, rm ---------------------------------------


def test_warm_function_lifecycle(
    cli: Cli,
    gw: RunningGateway,
    engine: docker.DockerClient,
    tags: Callable[[str], str],
    tmp_path: Path,
) -> None:
    r = cli("new", "cli-hello")
    assert r.exit_code == 0, r.output
    folder = tmp_path / "cli-hello"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "handler.py", "swarmless.yml"]
    assert "swarmless deploy cli-hello" in r.stdout
    again = cli("new", "cli-hello")
    assert again.exit_code == 1
    assert "refusing to overwrite" in again.stderr
    assert "Traceback" not in again.output

    image = tags("cli-hello")
    _set_image(folder, image)
    r = cli("build", "cli-hello", "--base", PYTHON)
    assert r.exit_code == 0, r.output
    assert f"cli-hello -> {image}" in r.stdout
    assert engine.images.get(image).labels["swarmless.function"] == "cli-hello"

    r = cli("deploy", "cli-hello", "--no-build")
    assert r.exit_code == 0, r.output
    assert "deployed cli-hello (warm) version 1" in r.stdout
    assert f"curl {gw.url}/function/cli-hello" in r.stdout

    r = cli("invoke", "cli-hello", "-i", "-d", '{"name": "Ada"}')
    assert r.exit_code == 0, r.output
    assert '"message": "Hello, Ada!"' in r.stdout
    m = CALL_ID.search(r.stderr)
    assert m, r.stderr
    assert m[1] == "200"
    call_id = m[2]
    assert f'"call_id": "{call_id}"' in r.stdout

    r = cli("invoke", "cli-hello", "-X", "GET", "--path", "anything", "-H", "X-Test: 1")
    assert r.exit_code == 0, r.output
    assert '"message": "Hello, world!"' in r.stdout

    r = cli("ls")
    assert r.exit_code == 0, r.output
    row = next(line for line in r.stdout.splitlines() if "cli-hello" in line)
    assert "warm" in row
    assert image in row

    r = cli("logs", "cli-hello")
    assert r.exit_code == 0, r.output
    assert call_id in r.stdout  # in full: an id cut short could not be passed to `logs`
    assert "succeeded" in r.stdout

    r = cli("logs", call_id)
    assert r.exit_code == 0, r.output
    assert r.stdout == "greeting Ada\n"

    r = cli("scale", "cli-hello", "2")
    assert r.exit_code == 0, r.output
    assert "cli-hello: pinned to 2" in r.stdout
    client = gw.client()
    gw.wait_for(
        lambda: client.function("cli-hello")["containers"].get("ready") == 2,
        timeout=60,
        what="two ready containers",
    )
    assert "pinned=2" in cli("ls").stdout
    r = cli("scale", "cli-hello", "auto")
    assert r.exit_code == 0, r.output
    assert "cli-hello: autoscaled" in r.stdout
    assert client.function("cli-hello")["scale"]["pinned"] is None

    r = cli("rm", "cli-hello")
    assert r.exit_code == 0, r.output
    assert "removed cli-hello" in r.stdout
    r = cli("invoke", "cli-hello")
    assert r.exit_code == 1
    assert "not deployed" in r.stderr
    assert "Traceback" not in r.output
    gw.wait_for(
        lambda: not gw.containers(engine, **{"swarmless.function": "cli-hello"}),
        timeout=30,
        what="the containers of cli-hello to go",
    )


def test_cgi_template_and_oneshot_from_yml(
    cli: Cli, tags: Callable[[str], str], tmp_path: Path
) -> None:
    assert cli("new", "cli-cgi", "--template", "cgi-shell", "--dir", "cgi").exit_code == 0
    _set_image(tmp_path / "cgi", tags("cli-cgi"))
    # The template's own settings build it on busybox; `deploy` builds it first.
    r = cli("deploy", "cgi")
    assert r.exit_code == 0, r.output
    assert "FROM swarmless/busybox:latest" in r.stdout
    assert "deployed cli-cgi (cgi) version 1" in r.stdout
    r = cli("invoke", "cli-cgi", "-X", "GET", "--path", "x")
    assert r.exit_code == 0, r.output
    assert r.stdout == "Hello, world! (GET from a shell CGI)\n"
    r = cli("invoke", "cli-cgi", "-d", "@-", input="from stdin")
    assert "You sent 10 bytes: from stdin" in r.stdout

    (tmp_path / "swarmless.yml").write_text(
        "functions:\n"
        "  cli-upper:\n"
        f"    image: {BUSYBOX}\n"
        "    command: [tr, a-z, A-Z]\n"
        "  cli-echo:\n"
        f"    image: {BUSYBOX}\n"
        "    command: [echo]\n"
    )
    r = cli("deploy")  # ./swarmless.yml
    assert r.exit_code == 0, r.output
    assert "deployed cli-upper (oneshot)" in r.stdout
    assert "deployed cli-echo (oneshot)" in r.stdout
    assert cli("invoke", "cli-upper", "-d", "shout").stdout == "SHOUT"
    (tmp_path / "body.txt").write_text("from a file")
    assert cli("invoke", "cli-upper", "-d", "@body.txt").stdout == "FROM A FILE"
    assert cli("invoke", "cli-echo", "-a", "a b", "-a", "c").stdout == "a b c\n"

    r = cli("invoke", "cli-upper", "-i", "-d", "x")
    call_id = CALL_ID.search(r.stderr)
    assert call_id, r.stderr
    r = cli("logs", call_id[2])
    assert r.exit_code == 0, r.output

    r = cli("scale", "cli-upper", "2")
    assert r.exit_code == 1
    assert "only warm functions scale" in r.stderr

    r = cli("rm", "cli-cgi", "cli-upper", "cli-echo", "cli-nope")
    assert r.exit_code == 1
    assert "removed cli-echo" in r.stdout
    assert "cli-nope" in r.stderr
    assert "cli-upper" not in cli("ls").stdout


def test_gateway_commands_without_a_gateway(cli: Cli) -> None:
    r = cli("ls", SWARMLESS_GATEWAY_URL="http://127.0.0.1:9")
    assert r.exit_code == 1
    assert "no gateway answers at http://127.0.0.1:9" in r.stderr
    assert "Traceback" not in r.output


def test_wrong_token_is_one_clear_line(cli: Cli) -> None:
    r = cli("ls", SWARMLESS_TOKEN="not-the-token")
    assert r.exit_code == 1
    assert r.stderr.startswith("error:")
    assert "Traceback" not in r.output


# -- user errors: one clear line, never a traceback (real processes) -----------------------

#: Commands a user gets wrong, and words the one line must hold. No gateway answers
#: (port 9): the errors that need none come first, the others say no gateway answers.
USER_ERRORS: list[tuple[list[str], str]] = [
    (["scale", "fn", "abc"], "REPLICAS"),
    (["scale", "fn", "-1"], "-1"),
    (["scale", "fn", "1001"], "0 to 1000"),
    (["scale"], "Missing argument"),
    (["invoke", "fn", "-d", "@missing-file"], "cannot read 'missing-file'"),
    (["invoke", "fn", "-H", "nocolon"], "NAME:VALUE"),
    (["deploy", "missing.yml"], "does not exist"),
    (["deploy", "bad.yml"], "x.timeout"),
    (["deploy", "broken.yml"], "not valid YAML (line"),
    (["logs", "fn", "-n", "x"], "not a valid integer"),
    (["secret", "create", "s", "missing-file"], "No such file"),
    (["run"], "Missing argument 'IMAGE'"),
    (["run", "-e", "NOEQ", BUSYBOX], "KEY=VALUE"),
    (["run", "--cpus", "abc", BUSYBOX], "not a valid float"),
    (["new", "Bad Name"], "DNS label"),
    (["build", "nowhere"], "does not exist"),
    (["gc", "--bogus"], "No such option"),
    (["nosuchcommand"], "No such command"),
    (["up", "--port", "abc"], "not a valid integer"),
    (["ls"], "no gateway answers"),
    (["schedules"], "no gateway answers"),
    (["redrive", "x"], "no gateway answers"),
]


@pytest.mark.parametrize(("args", "words"), USER_ERRORS, ids=lambda a: " ".join(a)[:40])
def test_user_errors_are_one_line(args: list[str], words: str, tmp_path: Path) -> None:
    (tmp_path / "bad.yml").write_text("functions:\n  x: {image: busybox, timeout: -1}\n")
    (tmp_path / "broken.yml").write_text("functions: [\n")
    code = (
        "import os, sys; os.chdir(sys.argv.pop(1)); "
        "from swarmless.cli import main; sys.exit(main())"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), *args],
        capture_output=True,
        timeout=120,
        env={
            **os.environ,
            "COLUMNS": "300",
            "SWARMLESS_GATEWAY_URL": "http://127.0.0.1:9",
            "SWARMLESS_DATA_DIR": str(tmp_path / "data"),
        },
        check=False,
    )
    err = p.stderr.decode()
    assert p.returncode in (1, 2), (p.returncode, err)
    assert "Traceback" not in err + p.stdout.decode()
    assert err.startswith("error: "), err
    assert err.count("\n") == 1, err
    assert words in err, err


def test_environment_errors_are_one_line(tmp_path: Path) -> None:
    p = _swarmless("ls", SWARMLESS_PORT="abc", SWARMLESS_DATA_DIR=str(tmp_path))
    err = p.stderr.decode()
    assert p.returncode == 1
    assert err.startswith("error: ")
    assert "port" in err
    assert "Traceback" not in err


# -- run and doctor, as real processes ------------------------------------------------------


def test_run_propagates_the_exit_status(engine: docker.DockerClient) -> None:
    p = _swarmless("run", BUSYBOX, "echo", "hi")
    assert (p.returncode, p.stdout) == (0, b"hi\n"), p.stderr
    p = _swarmless("run", BUSYBOX, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert p.returncode == 3
    assert p.stdout == b"out\n"
    assert b"err" in p.stderr
    assert b"exit status 3" in p.stderr
    p = _swarmless("run", "-i", "-", BUSYBOX, "tr", "a-z", "A-Z", input=b"piped")
    assert (p.returncode, p.stdout) == (0, b"PIPED")
    p = _swarmless("run", "-e", "WHO=Ada", BUSYBOX, "sh", "-c", "echo $WHO")
    assert p.stdout == b"Ada\n"
    p = _swarmless("run", "--timeout", "1", BUSYBOX, "sleep", "30")
    assert p.returncode == 124
    assert b"timeout" in p.stderr
    p = _swarmless("run", BUSYBOX, "no-such-command")
    assert p.returncode == 127
    assert b"no-such-command" in p.stderr
    p = _swarmless("run", "--pull", "never", f"swarmless-test-cli/missing:{SESSION}")
    assert p.returncode == 1
    assert b"error:" in p.stderr
    assert b"Traceback" not in p.stderr


def test_doctor(engine: docker.DockerClient) -> None:
    p = _swarmless("doctor")
    out = p.stdout.decode()
    # Exit 1 is possible when another session left exited containers: only that may fail.
    assert p.returncode in (0, 1), out + p.stderr.decode()
    engine_row = next(line for line in out.splitlines() if line.lstrip("│┃ ").startswith("engine"))
    assert " ok " in engine_row
    assert "Docker" in engine_row
    for image in (PYTHON, BUSYBOX):
        assert f"image {image}" in out
    if p.returncode == 1:
        failing = [line for line in out.splitlines() if "!!" in line]
        assert all("containers" in line for line in failing), out
    p = _swarmless("doctor", SWARMLESS_GATEWAY_URL="http://127.0.0.1:9")
    assert "none answers at http://127.0.0.1:9" in p.stdout.decode()

    p = _swarmless("doctor", DOCKER_HOST="tcp://127.0.0.1:9")
    out = p.stdout.decode()
    assert p.returncode == 1
    assert "tcp://127.0.0.1:9" in out
    assert "scripts/engine.sh" in out
    assert "Traceback" not in out + p.stderr.decode()
