"""``swarmless describe NAME``: one function, all of it, in one screen.

Its spec (the fields that differ from the defaults, and the ones that always matter), its
version, its containers by state and calls by stage, the autoscaler's last decision and
why (with the recent plans that did something), and its recent failures with their
errors. ``-o json|yaml`` prints the gateway's description whole, with the failures.
"""

from __future__ import annotations

import datetime
import json
import shlex
from typing import Any

import click

from swarmless.cli._base import main
from swarmless.cli._client import function_names, gateway
from swarmless.cli.listing import record_columns
from swarmless.cli.output import details, dump, echo_wrapped, output_option, render

#: Statuses of a call that went wrong.
FAILED = ("failed", "timeout", "dead")
#: Spec fields always shown, in this order; the others only when not their default.
ALWAYS = ("mode", "image", "command", "handler", "timeout", "concurrency")
#: Known top-level fields of a description (others are shown as they come).
KNOWN = {"name", "version", "spec", "containers", "scale"}


def _value(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value) or "-"
    if value is None:
        return "-"
    return str(value)


def _spec_lines(spec: dict[str, Any]) -> list[tuple[str, object]]:
    from swarmless.spec import FunctionSpec

    defaults = FunctionSpec(name="x", image="x").to_dict()
    lines: list[tuple[str, object]] = []
    for key, value in spec.items():
        if key == "name" or (key not in ALWAYS and value == defaults.get(key)):
            continue
        if key == "command" and isinstance(value, list):
            value = shlex.join(value)  # as a shell reads it back
        elif key == "env":  # names only: values may be credentials
            value = sorted(value)
        elif key == "image_id" and isinstance(value, str):
            value = value[:19]  # sha256: and 12 digits, as docker shows an id
        lines.append((key, _value(value)))
    order = {k: i for i, k in enumerate(ALWAYS)}
    return sorted(lines, key=lambda kv: order.get(kv[0], len(order)))


def _at(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return datetime.datetime.fromtimestamp(epoch).strftime("%H:%M:%S")


def _action(a: dict[str, Any]) -> str:
    what = str(a.get("action"))
    if "count" in a:
        what += f" {a['count']}"
    if "worker" in a:
        what += f" {a['worker']}"
    return f"{what}: {a.get('reason', '')}"


def _scaling(spec: dict[str, Any], scale: dict[str, Any]) -> list[tuple[str, object]]:
    if spec.get("mode") != "warm":
        return [("scaling", f"{spec.get('mode')}: a fresh container per call")]
    pinned = scale.get("pinned")
    mode = f"pinned to {pinned}" if pinned is not None else "autoscaled"
    lines: list[tuple[str, object]] = [
        ("scaling", mode),
        ("containers wanted", _value(scale.get("desired"))),
        ("last decision", scale.get("reason") or "- (no plan yet)"),
    ]
    if scale.get("panic"):
        lines.append(("panic mode", "yes (a burst: scaling on the short window)"))
    actions = scale.get("actions") or []
    if actions:
        lines.append(("last plan", "; ".join(_action(a) for a in actions)))
    return lines


@main.command()
@click.argument("name", shell_complete=function_names)
@click.option(
    "--failures",
    default=5,
    show_default=True,
    type=click.IntRange(0, 100),
    help="Recent failed calls to show.",
)
@output_option
def describe(name: str, failures: int, output: str) -> None:
    """Describe a function: spec, version, containers, scaling decisions, recent failures."""
    gw = gateway()
    fn = gw.function(name)
    failed = []
    if failures:
        for status in FAILED:
            failed += gw.invocations(function=name, status=status, limit=failures)
        failed = sorted(failed, key=lambda r: r.queued_at, reverse=True)[:failures]
    if output in ("json", "yaml"):
        dump({**fn, "recent_failures": [r.to_dict() for r in failed]}, output)
        return
    spec: dict[str, Any] = fn.get("spec") or {}
    scale: dict[str, Any] = fn.get("scale") or {}
    counts: dict[str, int] = fn.get("containers") or {}
    states = ("ready", "starting", "busy", "paused", "draining")
    stages = ("in_flight", "queued", "async_queued", "async_running")
    details(
        [
            ("name", fn.get("name", name)),
            ("version", fn.get("version")),
            *(
                (k, v if isinstance(v, str | int | float) else json.dumps(v))
                for k, v in fn.items()
                if k not in KNOWN
            ),
        ]
    )
    click.echo("spec:")
    details(_spec_lines(spec), indent=2)
    click.echo("containers:")
    details(
        [
            ("by state", ", ".join(f"{s} {counts.get(s, 0)}" for s in states)),
            ("calls", ", ".join(f"{s.replace('_', ' ')} {counts.get(s, 0)}" for s in stages)),
        ],
        indent=2,
    )
    click.echo("autoscaler:")
    details(_scaling(spec, scale), indent=2)
    recent = [p for p in scale.get("recent") or [] if p.get("actions")][-5:]
    if recent:
        click.echo("  recent plans:")
    for plan in recent:
        actions = "; ".join(_action(a) for a in plan["actions"])
        wanted = _value(plan.get("desired"))
        echo_wrapped(f"    {_at(plan.get('at'))}  want {wanted}  {actions}", hang=14)
    if not failures:
        return
    click.echo(f"recent failures ({len(failed)}):" if failed else "recent failures: none")
    if failed:
        render(failed, record_columns(False), output)
