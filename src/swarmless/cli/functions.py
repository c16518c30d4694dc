"""Commands on deployed functions: invoke, rm, scale, redrive.

The listing and inspecting ones (ls, logs, describe, invocations, schedules, secret) are in
:mod:`swarmless.cli.listing`, :mod:`~swarmless.cli.logs` and :mod:`~swarmless.cli.describe`.
What a command needs (httpx, the spec's rules) is imported when it runs, not for ``--help``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from swarmless.cli._base import console, err_console, main
from swarmless.cli._client import function_names
from swarmless.cli._client import gateway as _gateway
from swarmless.exceptions import SwarmlessError


@main.command()
@click.argument("name", shell_complete=function_names)
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


@main.command()
@click.argument("names", nargs=-1, required=True, shell_complete=function_names)
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
@click.argument("name", shell_complete=function_names)
@click.argument("replicas")
@click.option(
    "--wait",
    "wait",
    type=click.FloatRange(0, 3600, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Return once exactly REPLICAS containers run, all ready (at most SECONDS).",
)
def scale(name: str, replicas: str, wait: float | None) -> None:
    """Pin a warm function to REPLICAS containers (`auto` gives it back to the autoscaler)."""
    text = replicas.strip()
    if text != "auto" and not (text.isascii() and text.isdigit() and int(text) <= 1000):
        raise click.BadParameter(
            f"expected a number of containers from 0 to 1000, or 'auto'; got {replicas!r}",
            param_hint="REPLICAS",
        )
    n = None if text == "auto" else int(text)
    if wait is not None and n is None:
        raise click.BadParameter("--wait needs a number of containers, not 'auto'")
    _gateway().scale(name, n, wait=wait)
    if n is None:
        console.print(f"{name}: autoscaled")
    else:
        console.print(f"{name}: pinned to {n}" + (", all ready" if wait is not None else ""))


@main.command()
@click.argument("call_ids", nargs=-1, required=True)
def redrive(call_ids: tuple[str, ...]) -> None:
    """Queue dead async calls again (see `swarmless logs NAME` or status=dead records)."""
    gw = _gateway()
    for call_id in call_ids:
        gw.retry(call_id)
        console.print(f"{call_id}: queued again")
