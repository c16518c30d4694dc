"""What importing swarmless costs: which libraries come with it (issue 15).

A CGI front end imports swarmless on every request, so ``import swarmless`` (and building a
client that is not used yet) must not import the Docker SDK, httpx, SQLAlchemy, Rich or the
gateway's web stack. Each check runs in a fresh interpreter and reads its ``sys.modules``:
what was imported, not how long it took (the timing is in ``bench/cgi_import.py``, where a
loaded machine cannot make a test flaky).
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import click
import pytest

import swarmless

#: Libraries that cost a CGI request tens to hundreds of milliseconds each.
HEAVY = (
    "asyncio",
    "click",
    "croniter",
    "docker",
    "h11",
    "httpx",
    "jinja2",
    "requests",
    "rich",
    "sqlalchemy",
    "starlette",
    "urllib3",
    "uvicorn",
    "yaml",
)


def imported_by(code: str) -> set[str]:
    """The top-level packages in ``sys.modules`` after running ``code`` in a new interpreter."""
    probe = (
        "import sys, json\n"
        "try:\n" + "".join(f"    {line}\n" for line in code.splitlines()) + "except SystemExit:\n"
        "    pass\n"
        "sys.stdout.flush()\n"
        "print('\\n' + json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    ("code", "allowed"),
    [
        ("import swarmless", ()),
        ("import swarmless.sdk", ()),
        ("import swarmless.compat", ()),
        # The 2016 front end's module-level lines (what every CGI request runs).
        ("from swarmless.compat import dockerrun\nc = dockerrun.from_env(version='1.24')", ()),
        # A client not used yet reads its settings (swarmless.yml: YAML), nothing more.
        ("import swarmless\nc = swarmless.from_env()", ("yaml",)),
        ("from swarmless import ContainerError, InvalidArgument, SwarmlessError", ()),
        ("from swarmless import Client, from_env", ("yaml",)),
        # The CLI's help: click and Rich, none of what the commands use.
        ("from swarmless.cli import main\nmain(['--help'])", ("click", "rich")),
    ],
    ids=[
        "swarmless",
        "sdk",
        "compat",
        "dockerrun-front-end",
        "from_env",
        "errors",
        "client",
        "cli-help",
    ],
)
def test_import_brings_nothing_heavy(code: str, allowed: tuple[str, ...]) -> None:
    brought = imported_by(code) & set(HEAVY)
    assert brought <= set(allowed), f"{code!r} imported {sorted(brought - set(allowed))}"


@pytest.mark.parametrize(
    "code",
    [
        "import swarmless",
        "from swarmless.compat import dockerrun\nc = dockerrun.from_env(version='1.24')",
    ],
    ids=["swarmless", "dockerrun-front-end"],
)
def test_nothing_beyond_its_own_modules(code: str) -> None:
    """Not even typing, re or importlib: what an empty script imports, and swarmless."""
    extra = imported_by(code) - imported_by("pass")
    assert extra <= {"swarmless", "__future__"}, sorted(extra)


def test_what_runs_a_container_is_imported_when_it_runs() -> None:
    brought = imported_by(
        "import swarmless\nswarmless.from_env().run('swarmless/busybox', ['true'])"
    )
    assert "docker" in brought
    assert not brought & {"httpx", "sqlalchemy", "starlette", "rich", "asyncio"}


def test_star_import_gives_every_public_name() -> None:
    code = (
        "from swarmless import *\n"
        "import swarmless\n"
        "missing = [n for n in swarmless.__all__ if n not in globals()]\n"
        "assert not missing, missing\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("package", ["swarmless", "swarmless.sdk"])
def test_lazy_names_are_the_real_objects(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        value = getattr(module, name)
        if name == "__version__":
            continue
        home = importlib.import_module(value.__module__)
        assert getattr(home, name) is value, f"{package}.{name}"
    assert set(module.__all__) <= set(dir(module))


def test_a_name_that_is_not_there_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'Cliennt'"):
        swarmless.Cliennt  # type: ignore[attr-defined]  # noqa: B018
    assert not hasattr(swarmless.sdk, "nothing_here")


def test_cli_help_table_matches_the_commands() -> None:
    from swarmless.cli import _COMMANDS, main

    # What `swarmless --help` shows from the table, before any command is imported...
    lazy = subprocess.run(
        [
            sys.executable,
            "-c",
            "from swarmless.cli import main; main(prog_name='swarmless')",
            "--help",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "100", "PATH": "/usr/bin:/bin"},
    )
    assert lazy.returncode == 0, lazy.stderr
    # ...is what the commands themselves say, once all are imported.
    for module in {m for m, _ in _COMMANDS.values()}:
        importlib.import_module(module)
    registered = {
        name: cmd.callback.__module__
        for name, cmd in main.commands.items()
        if cmd.callback is not None
    }
    assert registered == {name: module for name, (module, _) in _COMMANDS.items()}, (
        "swarmless.cli._COMMANDS must list every command with the module that registers it"
    )
    for name, (_, line) in _COMMANDS.items():
        cmd = main.commands[name]
        assert cmd.get_short_help_str(1000) == click.Command(name, help=line).get_short_help_str(
            1000
        ), f"the help line of {name!r} in swarmless.cli._COMMANDS is not its docstring's"
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib, sys\n"
            "from swarmless.cli import _COMMANDS, main\n"
            "for m, _ in _COMMANDS.values(): importlib.import_module(m)\n"
            "main(['--help'], prog_name='swarmless')\n",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "100", "PATH": "/usr/bin:/bin"},
    )
    assert lazy.stdout == loaded.stdout
