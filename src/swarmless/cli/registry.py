"""``swarmless registry up|down|status`` (a local registry), and the push that ``build``
and ``deploy`` make when ``settings.registry`` is set."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from swarmless.cli._base import console, err_console, main

if TYPE_CHECKING:
    import docker

    from swarmless.config import Settings

__all__ = ["push", "registry"]


def push(
    client: docker.DockerClient, image: str, settings: Settings, *, source: str | None = None
) -> str:
    """Push ``source`` (default ``image``) under ``image``'s name to the settings'
    registry, with a progress line; returns the digest reference nodes pull."""
    from rich.progress import Progress, SpinnerColumn, TextColumn

    from swarmless.registry import push_image, registry_reference

    target = registry_reference(image, settings.registry_push or settings.registry)
    columns = (SpinnerColumn(), TextColumn("{task.description}", markup=False))
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(f"pushing {target}")

        def on_line(line: str) -> None:
            bar.update(task, description=f"pushing {target}: {line[:60]}")

        ref = push_image(client, image, settings=settings, source=source, progress=on_line)
    console.print(f"[green]pushed[/green] {target} -> {ref}", highlight=False, soft_wrap=True)
    return ref


@main.group()
def registry() -> None:
    """A registry on this engine, for Swarm nodes to pull function images from."""


_NAME = click.option(
    "--name", help="Container name (default: swarmless-registry[-INSTANCE]).", default=None
)


@registry.command(name="up")
@click.option(
    "--listen",
    "listen",
    multiple=True,
    default=("127.0.0.1:5000",),
    show_default=True,
    help="IP:PORT to publish it on (repeat: one the nodes reach, too).",
)
@click.option("--image", help="Registry image (default: swarmless/registry:bookworm, built).")
@click.option(
    "--htpasswd",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="bcrypt credentials (htpasswd -Bbn USER PASSWORD) the registry asks for.",
)
@_NAME
def registry_up(
    listen: tuple[str, ...], image: str | None, htpasswd: Path | None, name: str | None
) -> None:
    """Run a registry (Debian's docker-registry) on this engine; idempotent.

    \b
    Examples:
      swarmless registry up
      swarmless registry up --listen 127.0.0.1:5000 --listen 10.0.0.5:5000
    """
    from swarmless.config import Settings
    from swarmless.engine import connect
    from swarmless.registry_local import up

    settings = Settings.load()
    client = connect(settings.docker_host)
    try:
        with console.status("starting the registry") as shown:
            reg = up(
                client,
                settings,
                listen=listen,
                name=name,
                image=image,
                htpasswd=htpasswd,
                progress=lambda line: shown.update(f"registry: {line[:70]}"),
            )
    finally:
        client.close()
    console.print(
        f"registry [bold]{reg.name}[/bold] {reg.state} on {', '.join(reg.listen)}",
        highlight=False,
    )
    local = [a for a in reg.listen if a.startswith("127.")]
    others = [a for a in reg.listen if not a.startswith("127.")]
    if others and local:  # nodes pull from the other name, this engine pushes to 127.0.0.1
        console.print(
            f"  export SWARMLESS_REGISTRY={others[0]} SWARMLESS_REGISTRY_PUSH={local[0]}",
            highlight=False,
        )
    else:
        console.print(f"  export SWARMLESS_REGISTRY={reg.listen[0]}", highlight=False)
    if others:
        console.print(
            f'  [dim]engines must trust {others[0]}: "insecure-registries": ["{others[0]}"] '
            "in their daemon.json (docs/swarm-production.md)[/dim]",
            highlight=False,
        )


@registry.command(name="down")
@click.option("--volumes", is_flag=True, help="Remove its stored images too.")
@_NAME
def registry_down(volumes: bool, name: str | None) -> None:
    """Remove this instance's registry (only what carries its labels); idempotent.

    \b
    Examples:
      swarmless registry down
      swarmless registry down --volumes
    """
    from swarmless.config import Settings
    from swarmless.engine import connect
    from swarmless.registry_local import container_name, down

    settings = Settings.load()
    client = connect(settings.docker_host)
    try:
        removed = down(client, settings, name=name, volume=volumes)
    finally:
        client.close()
    if removed:
        console.print(f"removed {', '.join(removed)}", highlight=False)
    else:
        console.print(f"no registry {name or container_name(settings)}", highlight=False)


@registry.command(name="status")
@_NAME
def registry_status(name: str | None) -> None:
    """Whether this instance's registry runs, and where.

    \b
    Example:
      swarmless registry status
    """
    from swarmless.config import Settings
    from swarmless.engine import connect
    from swarmless.registry_local import status

    settings = Settings.load()
    client = connect(settings.docker_host)
    try:
        reg = status(client, settings, name=name)
    finally:
        client.close()
    if reg.state == "absent":
        console.print(f"registry {reg.name}: absent (swarmless registry up)", highlight=False)
        return
    auth = ", asks for credentials" if reg.auth else ""
    console.print(
        f"registry {reg.name}: {reg.state} on {', '.join(reg.listen)}{auth}\n"
        f"  image {reg.image}, data on volume {reg.volume}",
        highlight=False,
    )
    if settings.registry:
        console.print(f"  settings.registry: {settings.registry}", highlight=False)
