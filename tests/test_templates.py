"""The templates of ``swarmless new``: each README's commands are real ones, and the Node.js
and Go functions build on their local Debian bases, deploy and answer.

The Node.js and Go tests are ``slow``: the first run builds swarmless/node:bookworm and
swarmless/golang:bookworm (Debian's nodejs and golang-go), which later runs reuse.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from pathlib import Path

import click
import docker
import httpx
import pytest
import yaml
from click.testing import CliRunner

from swarmless.build import dockerfile_bases
from swarmless.cli import main
from swarmless.cli.new import ALIASES, TEMPLATES, write_template
from tests.gateway_harness import RunningGateway
from tests.test_rollout import cli, images  # noqa: F401  (fixtures)

TEMPLATE_DIR = Path(__file__).parent.parent / "src" / "swarmless" / "templates"


def _commands(readme: str) -> list[list[str]]:
    """The ``swarmless ...`` command lines of a README's sh blocks (split at ``&&``)."""
    found = []
    for block in re.findall(r"```sh\n(.*?)```", readme, re.DOTALL):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words[:1] == ["swarmless"]:
                    found.append(words[1:])
    return found


@pytest.mark.parametrize("template", TEMPLATES)
def test_readme_commands_parse(tmp_path: Path, template: str) -> None:
    """Every ``swarmless`` line of a template's README is a command line the CLI takes."""
    write_template("hello-t", template, tmp_path / "hello-t")
    commands = _commands((tmp_path / "hello-t" / "README.md").read_text())
    assert commands, f"the {template} README shows no swarmless command"
    for args in commands:
        name = args[0]
        command = main.get_command(click.Context(main), name)
        assert command is not None, f"{template} README: no command {name!r}"
        try:
            command.make_context(name, list(args[1:]), resilient_parsing=False)
        except click.UsageError as e:
            pytest.fail(f"{template} README: `swarmless {shlex.join(args)}` fails: {e}")
        assert "-d" in args or name != "invoke" or len(args) == 2, args


def test_new_takes_language_names(tmp_path: Path) -> None:
    for alias, template in ALIASES.items():
        result = CliRunner().invoke(
            main, ["new", f"a-{alias}", "-t", alias, "--dir", str(tmp_path / alias)]
        )
        assert result.exit_code == 0, result.output
        assert f"({template})" in result.output
    assert "swarmless deploy" in result.output
    go = (tmp_path / "golang" / "Dockerfile").read_text()
    assert dockerfile_bases(go) == ["swarmless/golang:bookworm", "scratch"]
    assert (tmp_path / "golang" / "go.mod").read_text().startswith("module a-golang\n")
    assert (tmp_path / "nodejs" / "handler.js").stat().st_mode & 0o111
    assert sorted(p.name for p in TEMPLATE_DIR.iterdir() if p.is_dir()) == sorted(TEMPLATES)


def _deployable(tmp_path: Path, template: str, name: str, image: str) -> Path:
    folder = tmp_path / name
    write_template(name, template, folder)
    doc = yaml.safe_load((folder / "swarmless.yml").read_text())
    doc["functions"][name]["image"] = image
    (folder / "swarmless.yml").write_text(yaml.safe_dump(doc))
    return folder


Deployed = Callable[[str, str], tuple[str, str, str]]


@pytest.fixture
def deployed(
    tmp_path: Path,
    gateway: RunningGateway,
    images: Callable[[str], str],  # noqa: F811
) -> Deployed:
    """Deploys a template through the CLI: the deploy's output, the function's URL, its
    image."""

    def deploy(template: str, name: str) -> tuple[str, str, str]:
        image = images(name)
        folder = _deployable(tmp_path, template, name, image)
        result = cli(gateway, "deploy", str(folder))
        assert result.exit_code == 0, result.output
        return result.output, f"{gateway.url}/function/{name}", image

    return deploy


@pytest.mark.slow
def test_a_node_function_is_deployed_and_called(deployed: Deployed) -> None:
    output, url, _ = deployed("node", "hello-node-t")
    assert "FROM swarmless/node:bookworm" in output
    r = httpx.get(url, params={"name": "Ada"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.text.startswith("Hello, Ada! (GET from Node.js v")
    r = httpx.post(url, content=b"some text", timeout=60)
    assert "You sent 9 bytes: some text" in r.text


@pytest.mark.slow
def test_a_go_function_is_deployed_and_called(
    deployed: Deployed, engine: docker.DockerClient
) -> None:
    output, url, image = deployed("go", "hello-go-t")
    assert "FROM scratch, built with swarmless/golang:bookworm" in output
    r = httpx.get(url, params={"name": "Ada"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.text.startswith("Hello, Ada! (GET from Go go1.")
    r = httpx.post(url, content=b"some text", timeout=60)
    assert "You sent 9 bytes: some text" in r.text
    # FROM scratch: the binary and nothing else (a few MB).
    assert engine.api.inspect_image(image)["Size"] < 20 * 2**20
