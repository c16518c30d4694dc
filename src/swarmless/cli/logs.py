"""``swarmless logs``: what calls printed, and how they ended.

- ``logs CALL_ID``: that call's stdout (on stdout) and stderr (on stderr); a call that did
  not succeed ends with its status and error on stderr (exit status, timeout, OOM kill...),
  so a failed call never prints nothing;
- ``logs NAME``: the function's latest call records, newest first (``-o`` as any listing);
- ``logs -f [NAME]``: every call of NAME (or of any function) that finishes from now on, a
  header line then what it printed, until Ctrl-C; ``logs -f CALL_ID`` waits for that call.

Following reads the records every half second (the gateway keeps them); with ``-o json``
it prints one JSON object per call and line (``jq`` reads the stream).
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from swarmless.cli._base import console, main
from swarmless.cli._client import function_names, gateway
from swarmless.cli.listing import record_columns
from swarmless.cli.output import dump, echo_err, ms, output_option, render

if TYPE_CHECKING:
    from swarmless.records import InvocationRecord
    from swarmless.sdk.gateway import GatewayClient

#: A call id: time in ms then random, both 12 hex digits (swarmless.records.new_call_id).
CALL_ID = re.compile(r"[0-9a-f]{12}-[0-9a-f]{12}")
#: Statuses a call ends in.
FINISHED = frozenset({"succeeded", "failed", "timeout", "dead", "cancelled"})
#: Seconds between two reads of the records when following.
INTERVAL = 0.5
#: Records read per poll when following.
PAGE = 100


def _summary(rec: InvocationRecord) -> str:
    parts = [rec.id, rec.function, rec.status]
    if rec.http_status:
        parts.append(str(rec.http_status))
    if rec.cold is not None:
        parts.append("cold" if rec.cold else "warm")
    if rec.run_ms is not None:
        parts.append(f"{ms(rec.run_ms)} ms")
    return " ".join(parts)


def _failure(rec: InvocationRecord) -> str | None:
    """How a call that did not succeed ended, in one paragraph (None if it succeeded)."""
    if rec.status == "succeeded":
        return None
    if rec.status not in FINISHED:
        return f"call {rec.id} is {rec.status}: it has not finished (logs -f waits for it)"
    how: list[str] = [rec.status]
    if rec.exit_code is not None:
        how.append(f"exit status {rec.exit_code}")
    if rec.http_status:
        how.append(f"HTTP {rec.http_status}")
    error = f": {rec.error.strip()}" if rec.error else ""
    return f"call {rec.id} {', '.join(how)}{error}"


def _print_call(gw: GatewayClient, rec: InvocationRecord, output: str, header: bool) -> None:
    out = gw.logs(rec.id)
    if output in ("json", "yaml"):
        data = {**rec.to_dict(), "stdout": out["stdout"], "stderr": out["stderr"]}
        if output == "json" and header:  # a stream: one object per line
            click.echo(json.dumps(data, ensure_ascii=False))
        else:
            if header:
                click.echo("---")
            dump(data, output)
        sys.stdout.flush()
        return
    if header:  # on stdout, as tail -f has it: a file of the stream says which call
        console.print(f"[bold]==> {_summary(rec)} <==[/bold]", highlight=False, soft_wrap=True)
    sys.stdout.write(out["stdout"])
    if header and out["stdout"] and not out["stdout"].endswith("\n"):
        sys.stdout.write("\n")  # the next header on a line of its own
    sys.stdout.flush()
    sys.stderr.write(out["stderr"])
    failure = _failure(rec)
    if failure is not None:
        if out["stderr"] and not out["stderr"].endswith("\n"):
            sys.stderr.write("\n")
        echo_err(failure)
    sys.stderr.flush()


def _wait(gw: GatewayClient, call_id: str) -> InvocationRecord:
    """The record of ``call_id`` once the call has finished."""
    while True:
        rec = gw.invocation(call_id)
        if rec.status in FINISHED:
            return rec
        time.sleep(INTERVAL)


def _follow(gw: GatewayClient, function: str | None, output: str) -> None:
    """Print each call that finishes from now on, until Ctrl-C."""
    from swarmless.exceptions import GatewayUnavailable

    printed: set[str] | None = None  # ids already done when we looked (first: all of them)
    previous: set[str] = set()
    away = False
    while True:
        try:
            records = gw.invocations(function=function, limit=PAGE)
        except GatewayUnavailable as e:
            if not away:
                echo_err(f"({e.message}; still trying)")
            away = True
            time.sleep(INTERVAL * 4)
            continue
        away = False
        page = {r.id for r in records}
        if printed is None:
            printed = {r.id for r in records if r.status in FINISHED}
            whose = f"function {function}" if function else "every function"
            echo_err(f"(following the calls of {whose} as they finish; Ctrl-C stops)")
        elif len(records) == PAGE and previous and not page & previous:
            echo_err(f"(more than {PAGE} calls within {INTERVAL} s: some are not shown)")
        for rec in reversed(records):  # oldest first
            if rec.status in FINISHED and rec.id not in printed:
                _print_call(gw, rec, output, header=True)
                printed.add(rec.id)
        printed &= page  # only this page's ids can come again: the set stays bounded
        previous = page
        time.sleep(INTERVAL)


@main.command()
@click.argument("target", required=False, shell_complete=function_names)
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    help="Print the calls that finish from now on (of NAME, or of any function) with "
    "their output, until Ctrl-C; with CALL_ID, wait for that call to finish.",
)
@click.option(
    "-n",
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Records to list for a function.",
)
@output_option
def logs(target: str | None, follow: bool, limit: int, output: str) -> None:
    """Logs of one call (CALL_ID), or the latest records of a function (NAME).

    A call that failed prints what it printed, then how it ended (exit status, timeout,
    error) on stderr.
    """
    gw = gateway()
    is_call = target is not None and CALL_ID.fullmatch(target) is not None
    try:
        if follow and not is_call:
            _follow(gw, target, output)
            return
    except KeyboardInterrupt:  # how following ends
        return
    if target is None:
        raise click.UsageError("give a CALL_ID or a function NAME (or -f: every function)")
    if is_call:
        try:
            rec = _wait(gw, target) if follow else gw.invocation(target)
        except KeyboardInterrupt:
            return
        _print_call(gw, rec, output, header=False)
        return
    records = gw.invocations(function=target, limit=limit)
    if not records and output in ("table", "wide"):
        gw.function(target)  # not deployed: say so, rather than an empty table
    data: Any = [r.to_dict() for r in records]
    render(records, record_columns(False), output, data=data)
