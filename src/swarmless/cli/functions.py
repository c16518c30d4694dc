"""Commands on deployed functions: invoke, ls, logs, rm, scale."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import BinaryIO

import click
from rich.table import Table

from swarmless.cli._base import console, err_console, main
from swarmless.config import Settings
from swarmless.exceptions import SwarmlessError
from swarmless.sdk.gateway import GatewayClient


def _gateway() -> GatewayClient:
    settings = Settings.load()
    if not settings.token:
        token_file = settings.data_dir / "token"
        if token_file.is_file():
            settings = Settings.load(token=token_file.read_text().strip())
    return GatewayClient(settings)


@main.command()
@click.argument("name")
@click.option("-d", "--data", help="Request body; @FILE reads a file, @- stdin.")
@click.option("-a", "--arg", "args", multiple=True, help="Argument (oneshot functions).")
@click.option("-X", "--method", default="POST")
@click.option("--path", default="", help="Sub-path after /function/NAME.")
@click.option("-H", "--header", "headers", multiple=True, metavar="NAME:VALUE")
@click.option("-i", "--include", is_flag=True, help="Print the status and call id too.")
@click.option("--async", "is_async", is_flag=True, help="Queue it; print the call id.")
@click.option("--idempotency-key", help="With --async: queue once per key.")
@click.option("--callback-url", help="With --async: POST the result here.")
def invoke(
    name: str,
    data: str | None,
    args: tuple[str, ...],
    method: str,
    path: str,
    headers: tuple[str, ...],
    include: bool,
    is_async: bool,
    idempotency_key: str | None,
    callback_url: str | None,
) -> None:
    """Call a deployed function and print its answer (or, with --async, its call id)."""
    body: bytes | None = None
    if data is not None:
        if data == "@-":
            body = sys.stdin.buffer.read()
        elif data.startswith("@"):
            try:
                body = Path(data[1:]).read_bytes()
            except OSError as e:
                raise click.BadParameter(
                    f"cannot read {data[1:]!r}: {e.strerror or e}", param_hint="-d/--data"
                ) from None
        else:
            body = data.encode()
    hdrs = {}
    for h in headers:
        k, sep, v = h.partition(":")
        if not sep:
            raise click.BadParameter(f"expected NAME:VALUE, got {h!r}", param_hint="-H")
        hdrs[k.strip()] = v.strip()
    if is_async:
        inv = _gateway().spawn(
            name,
            body,
            args=list(args) if args else None,
            path=path,
            headers=hdrs,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
        )
        click.echo(inv.id)
        return
    result = _gateway().invoke(
        name, body, args=list(args) if args else None, method=method, path=path, headers=hdrs
    )
    if include:
        err_console.print(f"HTTP {result.status}  call {result.call_id}")
    sys.stdout.buffer.write(result.body)
    sys.stdout.flush()
    if result.status >= 400:
        sys.exit(1)


@main.command(name="ls")
@click.option("--nodes", is_flag=True, help="Swarm backend: the nodes and what runs on each.")
def ls(nodes: bool) -> None:
    """List deployed functions and their containers."""
    if nodes:
        from swarmless.cli.nodes import print_nodes

        print_nodes(Settings.load())
        return
    rows = _gateway().functions()
    table = Table(show_header=True, header_style="bold")
    for col in (
        "name",
        "mode",
        "image",
        "ver",
        "ready",
        "starting",
        "busy",
        "in flight",
        "queued",
        "async queued",
        "scale",
    ):
        table.add_column(col, no_wrap=col == "name")
    for f in rows:
        c = f.get("containers", {})
        spec = f["spec"]
        scale = f.get("scale") or {}
        note = ""
        if scale.get("pinned") is not None:
            note = f"pinned {scale['pinned']}"
        elif scale.get("desired") is not None:
            note = f"want {scale['desired']}"
        if spec.get("docker") == "host-socket":
            note += " [red]host socket![/red]"
        table.add_row(
            f["name"],
            spec.get("mode", ""),
            spec.get("image") or "",
            str(f["version"]),
            str(c.get("ready", 0)),
            str(c.get("starting", 0)),
            str(c.get("busy", 0)),
            str(c.get("in_flight", 0)),
            str(c.get("queued", 0)),
            str(c.get("async_queued", 0)),
            note,
        )
    console.print(table)


@main.command()
@click.argument("target")
@click.option("-n", "--limit", default=20, help="Records to list for a function.")
def logs(target: str, limit: int) -> None:
    """Logs of one call (CALL_ID), or the latest records of a function (NAME)."""
    gw = _gateway()
    if "-" in target and len(target) >= 20:
        out = gw.logs(target)
        sys.stdout.write(out["stdout"])
        sys.stderr.write(out["stderr"])
        return
    records = gw.invocations(function=target, limit=limit)
    table = Table(show_header=True, header_style="bold")
    for col in ("call id", "status", "http", "cold", "wait ms", "run ms", "container", "error"):
        table.add_column(col, no_wrap=col == "call id")  # an id cut short cannot be used
    for r in records:
        table.add_row(
            r.id,
            r.status,
            str(r.http_status or ""),
            "cold" if r.cold else "",
            f"{r.wait_ms:.1f}" if r.wait_ms is not None else "",
            f"{r.run_ms:.1f}" if r.run_ms is not None else "",
            r.container or "",
            (r.error or "").splitlines()[0][:60] if r.error else "",
        )
    console.print(table)


@main.command()
@click.argument("names", nargs=-1, required=True)
def rm(names: tuple[str, ...]) -> None:
    """Remove deployed functions (their containers drain and go)."""
    gw = _gateway()
    failed = False
    for name in names:
        try:
            gw.remove(name)
            console.print(f"removed {name}")
        except SwarmlessError as e:
            err_console.print(f"[red]error:[/red] {e.message}")
            failed = True
    if failed:
        sys.exit(1)


@main.command()
@click.argument("name")
@click.argument("replicas")
def scale(name: str, replicas: str) -> None:
    """Pin a warm function to REPLICAS containers (`auto` gives it back to the autoscaler)."""
    text = replicas.strip()
    if text != "auto" and not (text.isascii() and text.isdigit() and int(text) <= 1000):
        raise click.BadParameter(
            f"expected a number of containers from 0 to 1000, or 'auto'; got {replicas!r}",
            param_hint="REPLICAS",
        )
    n = None if text == "auto" else int(text)
    _gateway().scale(name, n)
    console.print(f"{name}: {'autoscaled' if n is None else f'pinned to {n}'}")


@main.command()
@click.argument("call_ids", nargs=-1, required=True)
def redrive(call_ids: tuple[str, ...]) -> None:
    """Queue dead async calls again (see `swarmless logs NAME` or status=dead records)."""
    gw = _gateway()
    for call_id in call_ids:
        gw.retry(call_id)
        console.print(f"{call_id}: queued again")


@main.command()
def schedules() -> None:
    """Scheduled functions and when they fire next."""
    table = Table(show_header=True, header_style="bold")
    for col in ("function", "schedule", "timezone", "next fire", "last fired", "error"):
        table.add_column(col)
    for s in _gateway().schedules():
        table.add_row(
            s["function"],
            s["schedule"],
            s["timezone"],
            s.get("next_fire") or "never",
            s.get("last_fired") or "",
            s.get("error") or "",
        )
    console.print(table)


@main.group()
def secret() -> None:
    """Secrets functions mount as /run/secrets/NAME (spec: secrets: [NAME])."""


@secret.command(name="create")
@click.argument("name")
@click.argument("source", type=click.File("rb"), default="-")
def secret_create(name: str, source: BinaryIO) -> None:
    """Create or replace secret NAME from SOURCE (a file, or - for stdin)."""
    _gateway().put_secret(name, source.read())
    console.print(f"secret {name} stored")


@secret.command(name="ls")
def secret_ls() -> None:
    """List secret names."""
    for name in _gateway().secrets():
        click.echo(name)


@secret.command(name="rm")
@click.argument("name")
def secret_rm(name: str) -> None:
    """Remove secret NAME."""
    _gateway().delete_secret(name)
    console.print(f"secret {name} removed")
