"""How the listing commands print: ``-o table|wide|json|yaml``, the same way everywhere.

- ``table`` (the default): on a terminal, the columns that matter, fitted to its width (80
  columns fit): a cell that may be shortened (an image, an error) ends in ``…``; an id or a
  name is never cut (a shortened id cannot be pasted into the next command). Piped or
  redirected, plain text instead: one row per line, columns aligned with two spaces, an
  empty cell written ``-``, nothing cut, no colour, so that ``grep``, ``awk`` and ``sort``
  read it (what kubectl prints).
- ``wide``: every column.
- ``json`` and ``yaml``: the gateway's answer, whole, for scripts (``jq``, ``yq``).

``SWARMLESS_OUTPUT`` sets the default. This module imports nothing heavy: YAML is loaded
when it is asked for.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
from rich.text import Text

from swarmless.cli._base import console

__all__ = [
    "FORMATS",
    "Column",
    "details",
    "dump",
    "echo_err",
    "echo_wrapped",
    "ms",
    "output_option",
    "render",
    "status_style",
    "terminal",
    "when",
]

FORMATS = ("table", "wide", "json", "yaml")
F = TypeVar("F", bound=Callable[..., Any])
#: Separator between columns.
GAP = "  "


def output_option(fn: F) -> F:
    """The ``-o/--output`` option of a listing command."""
    return click.option(
        "-o",
        "--output",
        type=click.Choice(FORMATS),
        default="table",
        envvar="SWARMLESS_OUTPUT",
        show_default=True,
        help="table (fits the terminal; plain text when piped), wide, json or yaml.",
    )(fn)


@dataclasses.dataclass(frozen=True)
class Column:
    """One column: its header, the cell of a row, and how it may be shown."""

    header: str
    cell: Callable[[Any], object]
    #: Shown only by ``-o wide``.
    wide: bool = False
    #: May be shortened (with ``…``) to fit a terminal; ids and names may not.
    shrink: bool = False
    #: Right-aligned (numbers).
    right: bool = False
    #: A Rich style for the cell's text, from it (``status_style``).
    style: Callable[[str], str] | None = None
    #: Left out of a terminal too narrow for the table (the highest first); 0: never.
    optional: int = 0


def status_style(status: str) -> str:
    """The colour of a call's status."""
    if status == "succeeded":
        return "green"
    if status in ("failed", "timeout", "dead", "cancelled"):
        return "red"
    return "yellow"


def terminal() -> bool:
    """Whether stdout is a terminal a person reads (else: plain text for programs)."""
    return console.is_terminal


def dump(data: Any, fmt: str) -> None:
    """``data`` as JSON or YAML on stdout."""
    if fmt == "yaml":
        import yaml

        class Dumper(yaml.SafeDumper):
            """Text of several lines as a block (``|``), as a person writes it."""

        def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
            style = "|" if "\n" in value else None  # (YAML picks another if it must)
            return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

        Dumper.add_representer(str, text)
        click.echo(yaml.dump(data, Dumper=Dumper, sort_keys=False, allow_unicode=True), nl=False)
    else:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _text(value: object) -> str:
    if value is None:
        return ""
    text = str(value)
    return text.splitlines()[0] if "\n" in text else text


def _fit(widths: list[int], columns: Sequence[Column], room: int) -> list[int | None]:
    """Widths that fit ``room`` characters (None: a column left out). In turn, until it fits:
    shrinkable cells down to 20 characters, then optional columns left out (the most
    optional first), then shrinkable cells down to their header (8 at least). A row that
    still does not fit runs over: an id or a name is never cut."""
    fitted: list[int | None] = list(widths)

    def excess() -> int:
        shown = [w for w in fitted if w is not None]
        return sum(shown) + len(GAP) * (len(shown) - 1) - room

    def shrink(floor_of: Callable[[Column], int]) -> None:
        over = excess()
        for i in sorted(
            (i for i, c in enumerate(columns) if c.shrink), key=lambda i: -(fitted[i] or 0)
        ):
            width = fitted[i]
            if over <= 0 or width is None:
                break
            cut = min(over, max(width - floor_of(columns[i]), 0))
            fitted[i] = width - cut
            over -= cut

    shrink(lambda c: max(len(c.header), 20))
    for i in sorted(
        (i for i, c in enumerate(columns) if c.optional), key=lambda i: -columns[i].optional
    ):
        if excess() <= 0:
            break
        fitted[i] = None
    shrink(lambda c: max(len(c.header), 8))
    for i, c in enumerate(columns):  # room left by the columns left out: give it back
        width = fitted[i]
        if c.shrink and width is not None and excess() < 0:
            fitted[i] = min(widths[i], width - excess())
    return fitted


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def render(rows: Sequence[Any], columns: Sequence[Column], fmt: str, data: Any = None) -> None:
    """Print ``rows`` in ``fmt``; json and yaml print ``data`` (the whole answer) instead."""
    if fmt in ("json", "yaml"):
        dump(rows if data is None else data, fmt)
        return
    shown = [c for c in columns if fmt == "wide" or not c.wide]
    cells = [[_text(c.cell(row)) for c in shown] for row in rows]
    headers = [c.header.upper() for c in shown]
    pretty = terminal()
    if not pretty:
        cells = [[v or "-" for v in line] for line in cells]
    natural = [max([len(h), *(len(line[i]) for line in cells)]) for i, h in enumerate(headers)]
    widths = _fit(natural, shown, console.width) if pretty else list(natural)
    last = max(i for i, w in enumerate(widths) if w is not None)

    def line(values: list[str], styles: list[str | None]) -> Text:
        out = Text(no_wrap=True, overflow="ignore")
        for i, (value, width) in enumerate(zip(values, widths, strict=True)):
            if width is None:
                continue
            value = _cut(value, width) if shown[i].shrink else value
            padded = value.rjust(width) if shown[i].right else value.ljust(width)
            out.append(padded.rstrip() if i == last else padded, style=styles[i] or "")
            if i < last:
                out.append(GAP)
        return out

    if not pretty:
        for values in [headers, *cells]:
            click.echo(line(values, [None] * len(values)).plain)
        return
    console.print(line(headers, ["bold"] * len(headers)), soft_wrap=True)
    for values in cells:
        styles = [c.style(v) if c.style and v else None for c, v in zip(shown, values, strict=True)]
        console.print(line(values, styles), soft_wrap=True)
    if not rows:
        console.print("[dim](none)[/dim]")


def details(pairs: Sequence[tuple[str, object]], indent: int = 0) -> None:
    """``key: value`` lines, the values aligned (what ``describe`` prints)."""
    if not pairs:
        return
    width = max(len(k) for k, _ in pairs) + 1
    pad = " " * indent
    room = console.width - indent - width - 2 if terminal() else 0
    for key, value in pairs:
        text = str(value)
        if room >= 20 and len(text) > room:  # on a terminal: wrapped under itself
            import textwrap

            hang = "\n" + " " * (indent + width + 2)
            text = hang.join(textwrap.wrap(text, room, break_on_hyphens=False))
        click.echo(f"{pad}{(key + ':').ljust(width)}  {text}".rstrip())


def echo_wrapped(text: str, hang: int) -> None:
    """A line; on a terminal, wrapped to its width with the rest indented by ``hang``."""
    if terminal() and len(text) > console.width:
        import textwrap

        lead = len(text) - len(text.lstrip())
        lines = textwrap.wrap(
            text.strip(),
            console.width,
            initial_indent=" " * lead,
            subsequent_indent=" " * hang,
            break_on_hyphens=False,
        )
        text = "\n".join(lines)
    click.echo(text)


def ms(value: float | None) -> str:
    """Milliseconds for a table cell."""
    return "" if value is None else f"{value:.1f}"


def when(epoch_ms: int | None) -> str:
    """A record's time, local, to the second."""
    if not epoch_ms:
        return ""
    import datetime

    return datetime.datetime.fromtimestamp(epoch_ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def echo_err(text: str) -> None:
    """One line on stderr, as is."""
    sys.stderr.write(text if text.endswith("\n") else text + "\n")
    sys.stderr.flush()
