"""``swarmless new`` (scaffold a function folder) and ``swarmless build`` (build its images)."""

from __future__ import annotations

import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import click
import docker
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

from swarmless.build import BuildError, build_function
from swarmless.cli._base import console, err_console, main
from swarmless.config import Settings
from swarmless.engine import connect
from swarmless.exceptions import InvalidArgument, SwarmlessError
from swarmless.spec import FunctionSpec, load_file

__all__ = ["TEMPLATES", "build", "build_spec", "new", "write_template"]

TEMPLATES: tuple[str, ...] = ("python", "python-http", "wsgi", "cgi-shell")
#: Names a function may have (the rule of swarmless.spec: a lower-case DNS label).
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
#: The placeholder a template uses for the function's name (a whole word only, so
#: SERVER_NAME and friends are left alone).
_PLACEHOLDER = re.compile(r"\bNAME\b")
_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")


def _template_root(template: str) -> Traversable:
    if template not in TEMPLATES:
        raise InvalidArgument(f"unknown template {template!r}; choose from {', '.join(TEMPLATES)}")
    return resources.files("swarmless") / "templates" / template


def _copy(src: Traversable, dest: Path, name: str, written: list[Path]) -> None:
    for item in sorted(src.iterdir(), key=lambda t: t.name):
        if item.name == "__pycache__":
            continue
        target = dest / item.name
        if item.is_dir():
            target.mkdir()
            _copy(item, target, name, written)
            continue
        data = item.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            target.write_bytes(data)
        else:
            target.write_text(_PLACEHOLDER.sub(name, text), encoding="utf-8")
        # Installed package data may lose its modes: scripts get theirs back here.
        if data.startswith(b"#!"):
            target.chmod(0o755)
        written.append(target)


def write_template(name: str, template: str, dest: Path) -> list[Path]:
    """Write the ``template`` function folder for function ``name`` into ``dest``.

    ``dest`` must not exist, or be an empty directory: nothing is ever overwritten.
    Returns the files written.
    """
    if not _NAME.match(name):
        raise InvalidArgument(
            f"function name {name!r} must be a lower-case DNS label (a-z, 0-9 and '-', "
            "1 to 63 characters, starting and ending with a letter or digit)"
        )
    root = _template_root(template)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InvalidArgument(f"{dest} already exists and is not empty; refusing to overwrite it")
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    _copy(root, dest, name, written)
    return written


@main.command()
@click.argument("name")
@click.option(
    "--template",
    "-t",
    type=click.Choice(TEMPLATES),
    default="python",
    show_default=True,
    help="What kind of function to start from.",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to create (default: ./NAME).",
)
def new(name: str, template: str, directory: Path | None) -> None:
    """Create a function folder NAME from a template (never overwrites)."""
    dest = directory if directory is not None else Path(name)
    files = write_template(name, template, dest)
    console.print(f"created [bold]{dest}[/bold] ({template}): " + ", ".join(f.name for f in files))
    console.print(f"next: [bold]swarmless build {dest}[/bold]")


def _specs(path: Path) -> tuple[Path, list[FunctionSpec]]:
    yml = path / "swarmless.yml" if path.is_dir() else path
    if not yml.is_file():
        raise InvalidArgument(f"no swarmless.yml in {path}; create one with `swarmless new`")
    specs = [s for s in load_file(yml) if s.build]
    if not specs:
        raise InvalidArgument(f"no function in {yml} has 'build:'; nothing to build")
    return yml, specs


@main.command()
@click.argument("path", default=".", type=click.Path(exists=True, path_type=Path))
@click.option("--tag", help="Image tag (one function only); default: the function's image.")
@click.option(
    "--ca-bundle",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="SWARMLESS_CA_BUNDLE",
    help="CA certificates pip should trust while installing requirements.txt.",
)
@click.option(
    "--base",
    help="Base image (default: settings.base_image in swarmless.yml, SWARMLESS_BASE_IMAGE, "
    "else swarmless/python:bookworm).",
)
def build(path: Path, tag: str | None, ca_bundle: Path | None, base: str | None) -> None:
    """Build the image of every function in PATH/swarmless.yml that has 'build:'."""
    yml, specs = _specs(path)
    if tag and len(specs) > 1:
        raise InvalidArgument(f"--tag names one image, but {yml} builds {len(specs)} functions")
    for spec in specs:
        build_spec(spec, tag=tag, ca_bundle=ca_bundle, base=base, config_file=yml)


def build_spec(
    spec: FunctionSpec,
    *,
    tag: str | None = None,
    ca_bundle: Path | None = None,
    base: str | None = None,
    config_file: Path | None = None,
) -> str:
    """Build ``spec.build`` into ``tag`` (default ``spec.image``) with a progress display.

    The base image is ``base``, else the settings of ``config_file`` (default: the
    swarmless.yml in the build folder, if any), where ``SWARMLESS_BASE_IMAGE`` and the
    file's ``settings: base_image`` apply. Returns the image id.
    """
    if not spec.build:
        raise InvalidArgument(f"function {spec.name!r} has no 'build:' folder")
    folder = Path(spec.build)
    if config_file is None and (folder / "swarmless.yml").is_file():
        config_file = folder / "swarmless.yml"
    settings = Settings.load(config_file, base_image=base)
    image = tag or spec.image or f"swarmless-fn/{spec.name}:latest"
    client = connect(settings.docker_host)
    try:
        image_id = _build_one(spec, image, settings.base_image, ca_bundle, client)
    finally:
        client.close()
    console.print(
        f"[green]built[/green] [bold]{spec.name}[/bold] -> {image} "
        f"[dim]({image_id.removeprefix('sha256:')[:12]}, {spec.mode}, "
        f"FROM {settings.base_image})[/dim]",
        highlight=False,
        soft_wrap=True,
    )
    return image_id


def _build_one(
    spec: FunctionSpec,
    image: str,
    base: str,
    ca_bundle: Path | None,
    client: docker.DockerClient,
) -> str:
    assert spec.build is not None
    columns = (
        SpinnerColumn(),
        TextColumn("[bold]{task.fields[name]}[/bold]"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TextColumn("{task.description}", markup=False),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("starting", name=spec.name, total=None)

        def on_line(line: str) -> None:
            m = _STEP.match(line)
            if m:
                bar.update(task, completed=int(m[1]) - 1, total=int(m[2]), description=m[3][:60])
            elif not line.startswith((" ---> ", "Removing intermediate")):  # builder chatter
                bar.update(task, description=line.strip()[:60])

        try:
            image_id = build_function(
                Path(spec.build),
                tag=image,
                mode=spec.mode,
                client=client,
                base_image=base,
                ca_bundle=ca_bundle,
                progress=on_line,
                function=spec.name,
                command=spec.command,
            )
        except BuildError as e:
            bar.stop()
            if e.output:
                err_console.print(e.output[-4000:], style="dim", markup=False, highlight=False)
            raise SwarmlessError(f"{spec.name}: {e.summary}") from None
        bar.update(task, completed=bar.tasks[0].total or 1)
    return image_id
