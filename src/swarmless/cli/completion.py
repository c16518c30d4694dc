"""``swarmless completion bash|zsh|fish``: the shell's completion script.

The script asks ``swarmless`` itself at each TAB (click's shell completion, through
``_SWARMLESS_COMPLETE``): commands, options, files, and the names of deployed functions
(asked of the gateway, two seconds at most; nothing when it does not answer).
"""

from __future__ import annotations

import click

from swarmless.cli._base import main

#: The shells click writes completion scripts for.
SHELLS = ("bash", "fish", "zsh")


@main.command()
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL (bash, zsh or fish)."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None  # the choice allows only the shells click knows
    script = cls(main, {}, "swarmless", "_SWARMLESS_COMPLETE").source()
    click.echo(script)
