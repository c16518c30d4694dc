"""``swarmless run IMAGE [ARGS...]``: run an image as a function call."""

from __future__ import annotations

import sys
from typing import BinaryIO

import click

from swarmless.cli._base import err_console, main
from swarmless.exceptions import ContainerError


def _parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="-e/--env")
        env[key] = value
    return env


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("image")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("-d", "--detach", is_flag=True, help="Start and print the container id.")
@click.option("-i", "--input", "input_", type=click.File("rb"), help="File (or -) fed to stdin.")
@click.option("-e", "--env", multiple=True, metavar="KEY=VAL", help="Environment variable.")
@click.option("-t", "--timeout", type=float, envvar="SWARMLESS_RUN_TIMEOUT", help="Seconds.")
@click.option("--memory", help="Memory limit, e.g. 256m.")
@click.option("--cpus", type=float, help="CPU limit, e.g. 0.5.")
@click.option("--network", help="Docker network to join.")
@click.option("--pull", type=click.Choice(["missing", "always", "never"]), default="missing")
def run(
    image: str,
    args: tuple[str, ...],
    detach: bool,
    input_: BinaryIO | None,
    env: tuple[str, ...],
    timeout: float | None,
    memory: str | None,
    cpus: float | None,
    network: str | None,
    pull: str,
) -> None:
    """Run IMAGE with ARGS; print its stdout, propagate its exit status.

    IMAGE may also be SCRIPT.py::FUNCTION (default main): the script's function runs with
    ARGS while the script's swarmless.App apps run (Python-native functions).
    """
    if image.split("::", 1)[0].endswith(".py"):  # no image name ends so: a script
        from swarmless.native.script import run_script

        sys.exit(run_script(image, list(args)))
    # Here, not at the top: ``swarmless run --help`` loads no Docker SDK.
    from swarmless.ownership import run_labels
    from swarmless.sdk.client import from_env
    from swarmless.sdk.run import RunOptions, execute, start_container

    client = from_env()
    stdin = input_.read() if input_ is not None else None
    opts = RunOptions(
        image,
        list(args) or None,
        stdin=stdin,
        env=_parse_env(env),
        timeout=timeout,
        memory=memory,
        cpus=cpus,
        network=network,
        pull=pull,  # type: ignore[arg-type]  # click.Choice checked it
        pull_timeout=client.settings.pull_timeout,
        stderr=sys.stderr.buffer,
        # Detached, the caller owns the container (docker logs / rm); it stays labelled.
        remove=not detach,
        owner=run_labels(client.settings),
    )
    api = client.docker.api
    if detach:
        click.echo(start_container(api, opts).id)
        return
    try:
        outcome = execute(api, opts)
    except ContainerError as e:  # the command could not be started at all
        err_console.print(f"[red]error:[/red] {e.message}", soft_wrap=True, highlight=False)
        sys.exit(e.exit_status)
    # What it printed comes out whatever the exit status, as with `docker run`.
    sys.stdout.buffer.write(outcome.stdout)
    sys.stdout.flush()
    if outcome.timed_out:
        err_console.print(
            f"[red]timeout:[/red] {image} did not finish within {timeout:g}s; "
            "its container was killed"
        )
        sys.exit(124)
    if outcome.status != 0:
        oom = " (OOM-killed: over its memory limit)" if outcome.oom else ""
        err_console.print(f"[red]exit status {outcome.status}{oom}[/red]")
        sys.exit(outcome.status)
