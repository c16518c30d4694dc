"""``swarmless gc``: remove this instance's exited containers, and nothing else.

A container is this instance's when it carries ``swarmless.instance=<instance>`` and
``swarmless.owner=<the id in the data directory>`` set on the container itself, not
inherited from its image (:mod:`swarmless.ownership`). ``--all`` widens that to every
instance on the engine, still only to containers swarmless made.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from swarmless.cli._base import console, err_console, main
from swarmless.labels import LABEL_INSTANCE, LABEL_MANAGED, LABEL_OWNER

if TYPE_CHECKING:  # the Docker SDK is loaded when the command runs, not for --help
    from swarmless.ownership import Found


def _say(line: str) -> None:
    console.print(line, highlight=False, soft_wrap=True)


@main.command()
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Every swarmless instance's exited containers on this engine, not only this one's.",
)
@click.option("--dry-run", "-n", is_flag=True, help="Print what would go; remove nothing.")
def gc(everything: bool, dry_run: bool) -> None:
    """Remove this instance's exited containers (left by detached runs and crashes).

    Only containers this instance made (SWARMLESS_INSTANCE, SWARMLESS_DATA_DIR): labels a
    container got from its image never count. Prints one line per container.
    """
    from swarmless.config import Settings
    from swarmless.engine import connect
    from swarmless.ownership import EXITED, managed_without_owner, owner_id, select_containers

    settings = Settings.load()
    owner = owner_id(settings.data_dir, create=False)
    client = connect(settings.docker_host)
    try:
        api = client.api
        anyone = select_containers(
            api, {LABEL_OWNER: None}, where={LABEL_MANAGED: "true"}, states=EXITED
        )
        if everything:
            scope = "of every swarmless instance on this engine (--all; made by swarmless only)"
            chosen = anyone.owned
        elif owner is None:
            scope = f"of instance {settings.instance!r}"
            chosen = []
            _say(
                f"instance {settings.instance!r} has no owner id in {settings.data_dir} "
                "(nothing was made with this data directory): nothing of it to remove"
            )
        else:
            scope = f"of instance {settings.instance!r} (data: {settings.data_dir})"
            chosen = [
                c
                for c in anyone.owned
                if c.labels.get(LABEL_OWNER) == owner
                and c.labels.get(LABEL_INSTANCE) == settings.instance
            ]
        failed = _remove(api, chosen, scope, dry_run)
        others = len(anyone.owned) - len(chosen)
        if others:
            _say(
                f"left alone: {others} exited container(s) of other swarmless instances "
                "(swarmless gc --all removes those too)"
            )
        if anyone.inherited:
            _say(
                f"left alone: {len(anyone.inherited)} container(s) whose owner label comes "
                "from their image (or whose image is gone): not provably made by swarmless"
            )
        legacy = managed_without_owner(api)
        if legacy:
            _say(
                f"left alone: {len(legacy)} exited container(s) labelled swarmless.managed=true "
                "without an owner label (an older swarmless, made by hand, or inherited "
                "from an image); `docker rm` those that are yours"
            )
    finally:
        client.close()
    if failed:
        sys.exit(1)


def _remove(api: object, chosen: list[Found], scope: str, dry_run: bool) -> int:
    """Remove (or list) ``chosen``, one line each; returns how many could not be removed."""
    if dry_run:
        _say(f"would remove {len(chosen)} exited container(s) {scope}" + (":" if chosen else ""))
        for c in chosen:
            _say(f"  {c.line()}")
        return 0
    from swarmless.ownership import remove_containers

    results = remove_containers(api, chosen)
    removed = [c for c, why in results if why is None]
    _say(f"removed {len(removed)} exited container(s) {scope}" + (":" if removed else ""))
    for c in removed:
        _say(f"  {c.line()}")
    failed = [(c, why) for c, why in results if why is not None]
    for c, why in failed:
        err_console.print(
            f"[red]not removed:[/red] {c.line()}: {why}", highlight=False, soft_wrap=True
        )
    return len(failed)
