"""``swarmless new`` (scaffold a function folder) and ``swarmless build`` (build its images)."""

from __future__ import annotations

import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from swarmless.cli._base import console, err_console, main
from swarmless.cli._client import gateway
from swarmless.exceptions import FunctionNotFound, InvalidArgument, SwarmlessError

# What builds (the Docker SDK, the spec's YAML, Rich's progress bar) is imported by the
# commands that build, never by ``--help``.
if TYPE_CHECKING:
    import docker

    from swarmless.spec import FunctionSpec

__all__ = ["TEMPLATES", "build", "build_spec", "gateway", "new", "write_template"]

TEMPLATES: tuple[str, ...] = ("python", "python-http", "wsgi", "cgi-shell", "node", "go")
#: Other names ``new -t`` takes for a template.
ALIASES = {"shell": "cgi-shell", "sh": "cgi-shell", "nodejs": "node", "js": "node", "golang": "go"}
#: Names a function may have (the rule of swarmless.spec: a lower-case DNS label).
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
#: The placeholder a template uses for the function's name (a whole word only, so
#: SERVER_NAME and friends are left alone).
_PLACEHOLDER = re.compile(r"\bNAME\b")
_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")


def _template_root(template: str) -> Traversable:
    template = ALIASES.get(template, template)
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
    type=click.Choice([*TEMPLATES, *ALIASES], case_sensitive=False),
    default="python",
    show_default=True,
    help="What kind of function to start from: python (warm), python-http, wsgi, cgi-shell, "
    "node (Node.js CGI), go (a static Go binary FROM scratch, CGI).",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to create (default: ./NAME).",
)
def new(name: str, template: str, directory: Path | None) -> None:
    """Create a function folder NAME from a template (never overwrites)."""
    template = ALIASES.get(template.lower(), template.lower())
    dest = directory if directory is not None else Path(name)
    files = write_template(name, template, dest)
    console.print(f"created [bold]{dest}[/bold] ({template}): " + ", ".join(f.name for f in files))
    console.print(
        f"next: [bold]swarmless deploy {dest}[/bold] (builds it, then deploys), then "
        f"[bold]swarmless invoke {name}[/bold]; {dest / 'README.md'} says more",
        highlight=False,
        soft_wrap=True,
    )


def _specs(target: str) -> tuple[Path | None, list[FunctionSpec]]:
    """What ``swarmless build TARGET`` builds: a folder (its swarmless.yml) or a file, else a
    function's name: declared in ./swarmless.yml, else deployed (its build folder)."""
    from swarmless.spec import FunctionSpec, load_file

    path = Path(target)
    if path.exists():
        yml = path / "swarmless.yml" if path.is_dir() else path
        if not yml.is_file():
            raise InvalidArgument(f"no swarmless.yml in {path}; create one with `swarmless new`")
        specs = [s for s in load_file(yml) if s.build]
        if not specs:
            raise InvalidArgument(f"no function in {yml} has 'build:'; nothing to build")
        return yml, specs
    here = Path("swarmless.yml")
    if here.is_file():
        for spec in load_file(here):
            if spec.name == target:
                if not spec.build:
                    raise InvalidArgument(f"function {target!r} in {here} has no 'build:' folder")
                return here, [spec]
    declared = f"no function of {here}" if here.is_file() else "no ./swarmless.yml"
    if not _NAME.match(target):
        raise InvalidArgument(f"{target!r} does not exist: no such folder or file")
    try:
        deployed = FunctionSpec.from_dict(gateway().function(target)["spec"])
    except FunctionNotFound:
        raise InvalidArgument(
            f"{target!r} does not exist: no such folder or file, {declared}, and no "
            "function deployed on the gateway by that name"
        ) from None
    except SwarmlessError as e:
        raise InvalidArgument(
            f"{target!r} does not exist: no such folder or file, {declared}, and the gateway "
            f"could not be asked about a function of that name ({e.message})"
        ) from None
    if not deployed.build or not Path(deployed.build).is_dir():
        raise InvalidArgument(
            f"function {target!r} is deployed from image {deployed.image}, not from a build "
            "folder on this machine: build its folder (swarmless build PATH)"
        )
    yml = Path(deployed.build) / "swarmless.yml"
    return (yml if yml.is_file() else None), [deployed.replace(image_id=None)]


@main.command()
@click.argument("target", default=".")
@click.option("--tag", help="Image tag (one function only); default: the function's image.")
@click.option(
    "--ca-bundle",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="SWARMLESS_CA_BUNDLE",
    help="CA certificates pip trusts while installing requirements.txt (default: this "
    "machine's own bundle).",
)
@click.option(
    "--base",
    help="Base image (default: settings.base_image in swarmless.yml, SWARMLESS_BASE_IMAGE, "
    "else swarmless/python:bookworm).",
)
def build(target: str, tag: str | None, ca_bundle: Path | None, base: str | None) -> None:
    """Build the images of TARGET: a folder or swarmless.yml (every function with 'build:'),
    or a function's name (declared in ./swarmless.yml, or deployed from a folder here)."""
    yml, specs = _specs(target)
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
    untagged: bool = False,
) -> str:
    """Build ``spec.build`` into ``tag`` (default ``spec.image``) with a progress display.

    The base image is ``base``, else the settings of ``config_file`` (default: the
    swarmless.yml in the build folder, if any), where ``SWARMLESS_BASE_IMAGE`` and the
    file's ``settings: base_image`` apply. pip trusts ``ca_bundle``, else this machine's
    CA bundle. ``untagged``: no tag at all (``swarmless deploy`` tags the image once every
    function of its file has passed its checks). With ``settings.registry`` set, a tagged
    image is pushed there (:func:`swarmless.cli.registry.push`). Returns the image id.
    """
    from swarmless.build import base_of, system_ca_bundle
    from swarmless.config import Settings
    from swarmless.engine import connect

    if not spec.build:
        raise InvalidArgument(f"function {spec.name!r} has no 'build:' folder")
    folder = Path(spec.build)
    if not folder.is_dir():
        raise InvalidArgument(f"function {spec.name!r}: its build folder {folder} does not exist")
    if config_file is None and (folder / "swarmless.yml").is_file():
        config_file = folder / "swarmless.yml"
    settings = Settings.load(config_file, base_image=base)
    image = None if untagged else tag or spec.image or f"swarmless-fn/{spec.name}:latest"
    final, images = base_of(folder, base_image=settings.base_image, dockerfile=spec.dockerfile)
    ca = ca_bundle or system_ca_bundle()
    client = connect(settings.docker_host)
    try:
        image_id = _build_one(spec, image, settings.base_image, ca, client)
        if settings.registry and image is not None:  # deploy pushes what it built itself
            from swarmless.cli.registry import push

            push(client, image, settings)
    finally:
        client.close()
    stages = [i for i in images if i != final]
    shown_base = f"FROM {final}" + (f", built with {', '.join(stages)}" if stages else "")
    console.print(
        f"[green]built[/green] [bold]{spec.name}[/bold]"
        + (f" -> {image}" if image else "")
        + f" [dim]({image_id.removeprefix('sha256:')[:12]}, {spec.mode}, {shown_base})[/dim]",
        highlight=False,
        soft_wrap=True,
    )
    return image_id


def _build_one(
    spec: FunctionSpec,
    image: str | None,
    base: str,
    ca_bundle: Path | None,
    client: docker.DockerClient,
) -> str:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

    from swarmless.build import BuildError, build_function

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
                dockerfile=spec.dockerfile,
            )
        except BuildError as e:
            bar.stop()
            if e.output:
                err_console.print(e.output[-4000:], style="dim", markup=False, highlight=False)
            raise SwarmlessError(f"{spec.name}: {e.summary}") from None
        bar.update(task, completed=bar.tasks[0].total or 1)
    return image_id
