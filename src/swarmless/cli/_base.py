"""The root command group and the error rendering every command shares.

A user error is one red line on stderr and a non-zero exit status, never a traceback:
swarmless errors (exit 1), usage errors and bad parameters (exit 2, with the command's
``--help`` to read), files that cannot be read (exit 1), an interrupt (exit 130). A bug of
ours is one line too, saying so; ``SWARMLESS_DEBUG=1`` shows its traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape

from swarmless import __version__
from swarmless.exceptions import SwarmlessError

console = Console()
err_console = Console(stderr=True)


def fail(message: str, status: int = 1) -> NoReturn:
    """Print ``error: message`` (one line, on stderr) and exit with ``status``."""
    err_console.print("[red]error:[/red] " + escape(message), highlight=False, soft_wrap=True)
    sys.exit(status)


class Group(click.Group):
    """A click group whose every failure is one red line and a non-zero exit status.

    Its commands may be registered lazily (:meth:`add_lazy_commands`): their module is
    imported only when the command runs or shows its own help, so ``swarmless --help`` and
    ``swarmless run`` do not import the gateway, SQLAlchemy or httpx.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Commands not imported yet: name -> (the module that registers it, its help line).
        self.lazy_commands: dict[str, tuple[str, str]] = {}
        #: Example command lines of each command, shown at the end of its ``--help``.
        self.examples: dict[str, tuple[str, ...]] = {}

    def add_lazy_commands(
        self,
        commands: Mapping[str, tuple[str, str]],
        examples: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """Commands by name: the module whose import registers each, and its help line;
        and the examples each command's ``--help`` ends with."""
        self.lazy_commands.update(commands)
        self.examples.update({k: tuple(v) for k, v in (examples or {}).items()})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy_commands:
            importlib.import_module(self.lazy_commands[cmd_name][0])
        cmd = super().get_command(ctx, cmd_name)
        examples = self.examples.get(cmd_name)
        if cmd is not None and examples and not cmd.epilog:
            # \b: click keeps these lines as they are (no rewrapping).
            cmd.epilog = "\b\nExamples:\n" + "\n".join(f"  {line}" for line in examples)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click's own listing, but a command not imported yet shows its help line from the
        # table instead of being imported for it.
        rows: list[tuple[str, click.Command]] = []
        for name in self.list_commands(ctx):
            cmd = self.commands.get(name)
            if cmd is None and name in self.lazy_commands:
                cmd = click.Command(name, help=self.lazy_commands[name][1])
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd))
        if rows:
            limit = formatter.width - 6 - max(len(name) for name, _ in rows)
            with formatter.section("Commands"):
                formatter.write_dl([(name, cmd.get_short_help_str(limit)) for name, cmd in rows])

    def main(  # type: ignore[override]  # always as standalone: it exits
        self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any
    ) -> NoReturn:
        extra.pop("standalone_mode", None)
        try:
            # Not standalone: the errors come here, to be written as one line; an Exit
            # (--help, ctx.exit(n)) comes back as its status.
            status = super().main(args, prog_name, standalone_mode=False, **extra)
        except click.UsageError as e:
            hint = f" (see: {e.ctx.command_path} --help)" if e.ctx is not None else ""
            fail(e.format_message() + hint, e.exit_code)
        except click.ClickException as e:
            fail(e.format_message(), e.exit_code)
        except click.Abort:
            err_console.print("[yellow]interrupted[/yellow]")
            sys.exit(130)
        sys.exit(status if isinstance(status, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SwarmlessError as e:
            fail(e.message)
        except BrokenPipeError:  # `swarmless ... | head`: the reader has read enough
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # nothing more to flush at exit
            sys.exit(141)  # 128 + SIGPIPE, as a shell reports it
        except OSError as e:  # a file named on the command line: missing, unreadable...
            where = f"{e.filename}: " if e.filename else ""
            fail(f"{where}{e.strerror or e}")
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/yellow]")
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:
            if os.environ.get("SWARMLESS_DEBUG"):
                raise
            fail(
                f"unexpected {type(e).__name__}: {e} (a bug in swarmless: please report it; "
                "SWARMLESS_DEBUG=1 shows the traceback)"
            )


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="swarmless")
def main() -> None:
    """swarmless: serverless functions on Docker."""
