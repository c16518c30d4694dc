"""The root command group and the error rendering every command shares."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.console import Console

from swarmless import __version__
from swarmless.exceptions import SwarmlessError

console = Console()
err_console = Console(stderr=True)


class Group(click.Group):
    """A click group that turns swarmless errors into one red line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SwarmlessError as e:
            err_console.print(f"[red]error:[/red] {e.message}", highlight=False, soft_wrap=True)
            sys.exit(1)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/yellow]")
            sys.exit(130)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="swarmless")
def main() -> None:
    """swarmless: serverless functions on Docker."""
