"""``swarmless deploy``: every function of a swarmless.yml, checked first, then applied.

1. **Build** the image of every function that has ``build:``, untagged: a build that
   fails stops here, and nothing runs the new images yet.
2. **Check** every function with the gateway (``POST /system/functions?dry_run=true``):
   the spec, the engine's capacity, the image (the one just built, by its id), the
   secrets, a name that is not another's. Every problem of every function is printed, and
   nothing is applied.
3. **Apply**: tag each built image, deploy each function. A warm function whose spec or
   image changed is a new version, rolled out before the gateway answers: no call made
   after ``deploy`` returns is served by the old code.

With ``settings.registry`` set, step 1 also pushes the image of every function with
``build:`` to the registry, and steps 2 and 3 check and deploy each such function with its
image's digest reference (``<registry>/<repository>@sha256:...``): every Swarm node pulls
the same bits (swarmless.registry).

``--dry-run`` stops after step 2 and prints what would change.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from swarmless.cli._base import console, err_console, fail, main
from swarmless.exceptions import GatewayUnavailable, SpecError, SwarmlessError, Unauthorized

if TYPE_CHECKING:  # what a command needs is imported when it runs, not for --help
    from swarmless.config import Settings
    from swarmless.sdk.gateway import GatewayClient
    from swarmless.spec import FunctionSpec

__all__ = ["deploy"]

#: Fields a dry run does not list as changes (the image's content is said apart).
_QUIET = frozenset({"image_id"})


def _file(path: str) -> Path:
    file = Path(path)
    if file.is_dir():
        file = file / "swarmless.yml"
    if not file.is_file():
        raise click.BadParameter(f"no swarmless.yml in {path}", param_hint="PATH")
    return file


@main.command()
@click.argument("path", default="swarmless.yml", type=click.Path(exists=True))
@click.option("--build/--no-build", default=True, help="Build functions that have `build:`.")
@click.option("--only", multiple=True, help="Deploy only these functions.")
@click.option("--dry-run", is_flag=True, help="Build and check; print what would change.")
@click.option(
    "--wait",
    type=click.FloatRange(0, 600),
    default=60.0,
    show_default=True,
    help="Seconds to wait for a new version of a warm function to replace the old one.",
)
def deploy(path: str, build: bool, only: tuple[str, ...], dry_run: bool, wait: float) -> None:
    """Deploy the functions of a swarmless.yml (or a folder holding one): build, check
    all, then apply all."""
    from swarmless.spec import load_file

    file = _file(path)
    specs = load_file(file)
    if only:
        unknown = sorted(set(only) - {s.name for s in specs})
        if unknown:
            raise click.BadParameter(
                f"no function {', '.join(unknown)} in {file}", param_hint="--only"
            )
        specs = [s for s in specs if s.name in only]
    if not specs:
        fail(f"no function in {file}; nothing to deploy")
    from swarmless.cli.new import build_spec, gateway
    from swarmless.config import Settings

    built: dict[str, str] = {}
    if build:
        for spec in specs:
            if spec.build:
                built[spec.name] = build_spec(spec, config_file=file, untagged=True)
    tags: list[tuple[str, str]] = []
    settings = Settings.load(file)
    if settings.registry:
        specs, tags = _push(specs, built, settings)
        built = {}  # checked and deployed by their digests in the registry
    gw = gateway()
    previews = _check(gw, specs, built)
    if dry_run:
        for spec in specs:
            _print_preview(previews[spec.name])
        console.print("[dim]dry run: nothing was deployed[/dim]")
        return
    for image_id, image in tags:
        _tag(image_id, image)
    _apply(gw, specs, built, wait)


def _push(
    specs: list[FunctionSpec], built: dict[str, str], settings: Settings
) -> tuple[list[FunctionSpec], list[tuple[str, str]]]:
    """Push the image of every function with ``build:`` (just built, or as tagged here
    with ``--no-build``) to the registry; the specs with their images' digest references
    (and so every function of the file that runs one), and the local tags to give."""
    from swarmless.cli.registry import push
    from swarmless.engine import connect

    refs: dict[str, str] = {}
    tags: list[tuple[str, str]] = []
    client = connect(settings.docker_host)
    try:
        for spec in specs:
            if spec.build and spec.image and spec.image not in refs:
                source = built.get(spec.name)
                refs[spec.image] = push(client, spec.image, settings, source=source)
                if source is not None:
                    tags.append((source, spec.image))
    finally:
        client.close()
    return [s.replace(image=refs[s.image]) if s.image in refs else s for s in specs], tags


def _check(
    gw: GatewayClient, specs: list[FunctionSpec], built: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """Every spec's dry run; every problem printed and nothing applied when there is one."""
    previews: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    # An image built here is checked by its id (its tag is given only once all pass), for
    # the function that builds it and any other of the file that runs it.
    by_image = {s.image: built[s.name] for s in specs if s.name in built and s.image}
    for spec in specs:
        image_id = built.get(spec.name) or by_image.get(spec.image or "")
        candidate = spec.replace(image_id=image_id) if image_id else spec
        try:
            previews[spec.name] = gw.deploy(candidate, dry_run=True)
        except SpecError as e:
            problems += [f"{spec.name}.{field}: {what}" for field, what in e.errors.items()]
        except (GatewayUnavailable, Unauthorized):
            raise
        except SwarmlessError as e:
            problems.append(f"{spec.name}: {e.message}")
    if problems:
        for line in problems:
            err_console.print(f"[red]  {line}[/red]", markup=True, highlight=False)
        fail(
            f"nothing was deployed: {len(problems)} problem(s) in {len(specs)} function(s) "
            "(above); fix them and deploy again"
        )
    return previews


def _print_preview(p: dict[str, Any]) -> None:
    name, action = p["name"], p["action"]
    if action == "create":
        console.print(f"[bold]{name}[/bold]: new, would be version 1", highlight=False)
        return
    if action == "unchanged":
        console.print(f"[bold]{name}[/bold]: unchanged (version {p['version']})", highlight=False)
        return
    what = []
    if "image_id" in p["changes"]:
        what.append("image content (new code)")
    for field, change in p["changes"].items():
        if field not in _QUIET:
            what.append(f"{field} {change['from']!r} -> {change['to']!r}")
    console.print(
        f"[bold]{name}[/bold]: version {p['version']} -> {p['next_version']}: " + "; ".join(what),
        highlight=False,
        soft_wrap=True,
    )


def _tag(image_id: str, image: str) -> None:
    """Give the built image ``image_id`` its tag ``image`` (the spec's)."""
    from docker.utils import parse_repository_tag

    from swarmless.config import Settings
    from swarmless.engine import connect, translate

    repo, tag = parse_repository_tag(image)
    client = connect(Settings.load().docker_host)
    try:
        with translate(image=image):
            client.api.tag(image_id, repo, tag or "latest", force=True)
    finally:
        client.close()


def _apply(
    gw: GatewayClient, specs: list[FunctionSpec], built: dict[str, str], wait: float
) -> None:
    applied: list[str] = []
    troubled = False
    for spec in specs:
        try:
            if spec.name in built and spec.image:
                _tag(built[spec.name], spec.image)
            result = gw.deploy(spec, wait=wait)
        except SwarmlessError as e:
            done = f" ({', '.join(applied)} deployed before it)" if applied else ""
            fail(f"{spec.name}: {e.message}{done}")
        applied.append(spec.name)
        version, before = result["version"], result.get("previous_version")
        if before is None:
            note = "new"
        elif before == version:
            note = "unchanged"
        else:
            note = f"was {before}"
        console.print(
            f"deployed [bold]{spec.name}[/bold] ({spec.mode}) version {version} "
            f"[dim]({note})[/dim]",
            highlight=False,
        )
        rollout = result.get("rollout") or {}
        state = rollout.get("state")
        if state == "done":
            console.print(
                f"  [dim]rolled out in {rollout.get('waited', 0):.1f}s: the old version "
                "takes no more calls[/dim]",
                highlight=False,
            )
        elif state in ("pending", "failed"):
            troubled = troubled or state == "failed"
            err_console.print(
                f"  [yellow]rollout {state}:[/yellow] {rollout.get('reason')}",
                highlight=False,
                soft_wrap=True,
            )
        console.print(f"  curl {gw.settings.gateway_urls[0]}/function/{spec.name}", highlight=False)
    if troubled:
        fail("a new version could not start; the old one serves on (see above)")
