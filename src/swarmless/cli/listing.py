"""Listing commands: ``ls``, ``invocations``, ``schedules``, ``secret``; each prints with
``-o table|wide|json|yaml`` (:mod:`swarmless.cli.output`)."""

from __future__ import annotations

from typing import Any, BinaryIO

import click

from swarmless.cli._base import console, main
from swarmless.cli._client import gateway
from swarmless.cli.output import Column, ms, output_option, render, status_style, when

#: Statuses a record can have (swarmless.records.STATUSES, without importing it).
STATUSES = ("queued", "running", "succeeded", "failed", "timeout", "dead", "cancelled")


def _count(key: str) -> Column:
    return Column(
        key.replace("_", " "),
        lambda f: (f.get("containers") or {}).get(key, 0),
        wide=True,
        right=True,
    )


def _scale(f: dict[str, Any]) -> str:
    """``pinned=2``, ``auto=3`` (what the autoscaler wants), ``auto``; ``-`` off warm."""
    if (f.get("spec") or {}).get("mode") != "warm":
        return ""
    scale = f.get("scale") or {}
    if scale.get("pinned") is not None:
        return f"pinned={scale['pinned']}"
    if scale.get("desired") is not None:
        return f"auto={scale['desired']}"
    return "auto"


def _mode(f: dict[str, Any]) -> str:
    """The mode; ``,host-socket`` when the function has the engine's socket (root)."""
    spec = f.get("spec") or {}
    return str(spec.get("mode", "")) + (
        ",host-socket" if spec.get("docker") == "host-socket" else ""
    )


def _queued(f: dict[str, Any]) -> int:
    c = f.get("containers") or {}
    return int(c.get("queued", 0)) + int(c.get("async_queued", 0))


FUNCTION_COLUMNS = (
    Column("name", lambda f: f["name"]),
    Column("mode", _mode, style=lambda v: "red bold" if "host-socket" in v else ""),
    Column("ver", lambda f: f.get("version"), right=True, optional=3),
    Column("ready", lambda f: (f.get("containers") or {}).get("ready", 0), right=True),
    Column("busy", lambda f: (f.get("containers") or {}).get("busy", 0), right=True, optional=1),
    Column("queued", _queued, right=True, optional=2),
    Column("scale", _scale),
    _count("starting"),
    _count("paused"),
    _count("in_flight"),
    _count("async_queued"),
    _count("async_running"),
    Column("docker", lambda f: (f.get("spec") or {}).get("docker"), wide=True),
    Column("image", lambda f: (f.get("spec") or {}).get("image"), shrink=True),
)


@main.command(name="ls")
@click.option("--nodes", is_flag=True, help="Swarm backend: the nodes and what runs on each.")
@output_option
def ls(nodes: bool, output: str) -> None:
    """List deployed functions and their containers."""
    if nodes:
        if output not in ("table", "wide"):
            raise click.UsageError("ls --nodes prints a table only (-o table or wide)")
        from swarmless.cli.nodes import print_nodes
        from swarmless.config import Settings

        print_nodes(Settings.load())
        return
    functions = gateway().functions()
    render(functions, FUNCTION_COLUMNS, output)


def record_columns(with_function: bool) -> tuple[Column, ...]:
    """The columns of a list of call records (``logs NAME``, ``invocations``)."""
    return (
        Column("call id", lambda r: r.id),
        *((Column("function", lambda r: r.function),) if with_function else ()),
        Column("status", lambda r: r.status, style=status_style),
        Column("http", lambda r: r.http_status, right=True, optional=1),
        Column("cold", lambda r: "cold" if r.cold else "", optional=2),
        Column("wait ms", lambda r: ms(r.wait_ms), right=True, wide=with_function),
        Column("run ms", lambda r: ms(r.run_ms), right=True),
        Column("kind", lambda r: r.kind, wide=True),
        Column("attempt", lambda r: r.attempt, right=True, wide=True),
        Column("queued at", lambda r: when(r.queued_at), wide=True),
        Column("container", lambda r: r.container, wide=True),
        Column("exit", lambda r: r.exit_code, right=True, wide=True),
        Column("error", lambda r: r.error, shrink=True),
    )


@main.command()
@click.option("-f", "--function", help="Only the calls of this function.")
@click.option("-s", "--status", type=click.Choice(STATUSES), help="Only calls with this status.")
@click.option("-n", "--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@output_option
def invocations(function: str | None, status: str | None, limit: int, output: str) -> None:
    """The latest call records of every function, newest first."""
    records = gateway().invocations(function=function, status=status, limit=limit)
    render(records, record_columns(True), output, data=[r.to_dict() for r in records])


@main.command()
@output_option
def schedules(output: str) -> None:
    """Scheduled functions and when they fire next."""
    columns = (
        Column("function", lambda s: s["function"]),
        Column("schedule", lambda s: s["schedule"]),
        Column("timezone", lambda s: s["timezone"], wide=True),
        Column("next fire", lambda s: s.get("next_fire") or "never"),
        Column("last fired", lambda s: s.get("last_fired")),
        Column("error", lambda s: s.get("error"), shrink=True),
    )
    render(gateway().schedules(), columns, output)


@main.group()
def secret() -> None:
    """Secrets functions mount as /run/secrets/NAME (spec: secrets: [NAME])."""


@secret.command(name="create")
@click.argument("name")
@click.argument("source", type=click.File("rb"), default="-")
def secret_create(name: str, source: BinaryIO) -> None:
    """Create or replace secret NAME from SOURCE (a file, or - for stdin).

    \b
    Examples:
      swarmless secret create db-password ./password.txt
      printf %s "$TOKEN" | swarmless secret create api-token
    """
    gateway().put_secret(name, source.read())
    console.print(f"secret {name} stored")


@secret.command(name="ls")
@output_option
def secret_ls(output: str) -> None:
    """List secret names (never their values).

    \b
    Examples:
      swarmless secret ls
      swarmless secret ls -o json
    """
    names = gateway().secrets()
    render([{"name": n} for n in names], (Column("name", lambda s: s["name"]),), output, names)


@secret.command(name="rm")
@click.argument("name")
def secret_rm(name: str) -> None:
    """Remove secret NAME.

    \b
    Example:
      swarmless secret rm db-password
    """
    gateway().delete_secret(name)
    console.print(f"secret {name} removed")
