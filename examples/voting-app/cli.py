"""The voting app's command line (``run.sh``): up, deploy, status, down.

    examples/voting-app/run.sh up [--mode warm|cgi] [--record spawn|docker] [--style 2016]
    examples/voting-app/run.sh deploy --mode cgi        # switch the running app
    examples/voting-app/run.sh status
    examples/voting-app/run.sh down [--keep-images]
    examples/voting-app/run.sh swarm-up [--mode warm|cgi] [--manager URL]   # on a Swarm
    examples/voting-app/run.sh [--data-dir ~/.local/share/swarmless-vote-swarm] deploy ...
    examples/voting-app/run.sh swarm-down
    examples/voting-app/run.sh --name vote2 --data-dir ~/.local/share/vote2 up   # a second one

``down`` removes only what carries this deployment's ownership labels (its instance and
the owner id in its data directory), set on the object itself: never another deployment's
objects, nor a container that got labels from one of the example's images.

See votingapp.py for what each step makes, and README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import json
import os
import secrets
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console

from swarmless.config import Settings
from swarmless.engine import connect
from swarmless.exceptions import SwarmlessError
from swarmless.gateway.app import Gateway, admin_token
from swarmless.gateway.server import GatewayServer
from swarmless.labels import LABEL_OWNER
from swarmless.ownership import ownership_labels
from swarmless.sdk.gateway import GatewayClient

sys.path.insert(0, str(Path(__file__).resolve().parent))

from votingapp import (
    MODES,
    RECORD_PATHS,
    STYLES,
    Database,
    Images,
    Names,
    build_images,
    container_count,
    data_dir_of,
    deploy,
    ensure_network,
    remove_all,
    specs,
    start_database,
    urls,
)

console = Console(soft_wrap=True, highlight=False)
DEFAULT_NAME = Names().prefix
#: Where ``swarm-up`` keeps its gateway's data (``up`` uses votingapp.data_dir_of()).
SWARM_DATA = data_dir_of().parent / "swarmless-vote-swarm"

# -- the command line ----------------------------------------------------------------------


def _password(data_dir: Path) -> str:
    path = data_dir / "db-password"
    if path.is_file():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(18)
    path.touch(mode=0o600)
    path.write_text(password + "\n")
    return password


def _state(data_dir: Path) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads((data_dir / "state.json").read_text())
    except (OSError, ValueError):
        raise SwarmlessError(
            f"the voting app is not up (no {data_dir / 'state.json'}); start it: run.sh up"
        ) from None
    return state


def _client(state: Mapping[str, Any], data_dir: Path) -> GatewayClient:
    token, _ = admin_token(data_dir)
    return GatewayClient(Settings.load(gateway_url=state["url"], token=token), timeout=60)


def _settings(names: Names, data_dir: Path) -> Settings:
    """The gateway's settings: the instance and network are the deployment's names."""
    return Settings.load(data_dir=data_dir, instance=names.instance, network=names.network)


def cmd_up(args: argparse.Namespace) -> int:
    names = Names(args.name)
    data_dir = data_dir_of(args.data_dir)
    settings = _settings(names, data_dir)
    # The database, its volume and the network carry the instance's ownership labels, as
    # the gateway's containers do: `down` goes by them (and only them).
    own = ownership_labels(settings)
    engine = connect()
    try:
        with console.status("building the images ...") as status:
            images = build_images(engine, say=lambda m: status.update(m), style=args.style)
        built = [tag for tag in dataclasses.asdict(images).values() if tag]
        console.print(f"images ready ({', '.join(built)})")
        ensure_network(engine, names.network, own)
        with console.status(f"starting PostgreSQL ({names.db}) ..."):
            db = start_database(
                engine,
                image=images.postgres,
                names=names,
                password=_password(data_dir),
                labels=own,
            )
        console.print(f"database {names.db} on network {names.network}, volume {names.volume}")
    finally:
        engine.close()
    flags = "" if args.name == DEFAULT_NAME else f"--name {args.name} "
    if args.data_dir:
        flags += f"--data-dir {data_dir} "
    return _serve_app(settings, images, db, args.mode, args.record, flags, args.style)


def cmd_swarm_up(args: argparse.Namespace) -> int:
    from swarm import NAMES, ensure_overlay, load_images, start_database_service, test_cluster

    if args.record != "spawn":
        raise SwarmlessError("on a Swarm votes are recorded by spawn only (no scoped Docker API)")
    data_dir = Path(args.data_dir).expanduser() if args.data_dir else SWARM_DATA
    engine = connect()
    try:
        with console.status("building the images ...") as status:
            images = build_images(engine, say=lambda m: status.update(m))
    finally:
        engine.close()
    manager_url = args.manager
    if not manager_url:
        with console.status("the test Swarm (scripts/swarm-cluster.sh up) ..."):
            manager_url = test_cluster()
        with console.status("loading the images onto its nodes ..."):
            load_images(images)
    console.print(f"Swarm manager {manager_url}; images ready")
    settings = Settings.load(
        data_dir=data_dir,
        instance=NAMES.instance,
        network=NAMES.network,
        backend="swarm",
        docker_host=manager_url,
    )
    own = ownership_labels(settings)  # swarm-down goes by these, as down does
    manager = connect(manager_url)
    try:
        ensure_overlay(manager, NAMES.network, own)
        with console.status(f"starting PostgreSQL (service {NAMES.db}) ..."):
            db = start_database_service(
                manager,
                image=images.postgres,
                names=NAMES,
                password=_password(data_dir),
                labels=own,
            )
        console.print(f"database service {NAMES.db} on the overlay {NAMES.network}")
    finally:
        manager.close()
    return _serve_app(settings, images, db, args.mode, "spawn", f"--data-dir {data_dir} ")


def _serve_app(
    settings: Settings,
    images: Images,
    db: Database,
    mode: str,
    record: str,
    flags: str,
    style: str = "today",
) -> int:
    """Run a gateway in the foreground; once it answers, deploy and print the URLs."""
    data_dir = settings.data_dir
    token, _ = admin_token(data_dir)
    gateway = Gateway(settings, token=token)
    pid_file = data_dir / "gateway.pid"
    down = "swarm-down" if settings.backend == "swarm" else "down"

    def started(gw: Gateway, port: int) -> None:
        url = f"http://{gw.settings.host}:{port}"
        state = {
            "url": url,
            "images": dataclasses.asdict(images),
            "db_url": db.url,
            "backend": settings.backend,
            "docker_host": settings.docker_host,
            "style": style,
            "network": settings.network,
        }
        (data_dir / "state.json").write_text(json.dumps(state, indent=2))
        threading.Thread(
            target=_deploy_and_announce,
            args=(url, token, data_dir, images, db, mode, record, flags, down, style, settings),
            daemon=True,
        ).start()

    pid_file.write_text(str(os.getpid()))
    # uvicorn drains on SIGTERM, then raises it again: end like Ctrl-C, running the finally.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        asyncio.run(_serve(gateway, started))
    except KeyboardInterrupt:
        pass
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise
        console.print(
            f"[red]error:[/red] {settings.host}:{settings.port} is in use (another gateway?); "
            f"stop it, or pick another port: SWARMLESS_PORT={settings.port + 1} run.sh ..."
        )
        return 1
    finally:
        pid_file.unlink(missing_ok=True)
        (data_dir / "state.json").unlink(missing_ok=True)
    console.print(
        "gateway stopped, function containers removed; the database keeps the votes "
        f"(remove everything: examples/voting-app/run.sh {flags}{down})"
    )
    return 0


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


async def _serve(gateway: Gateway, started: Callable[[Gateway, int], None]) -> None:
    await GatewayServer(gateway).serve(started)


def _deploy_and_announce(
    url: str,
    token: str,
    data_dir: Path,
    images: Images,
    db: Database,
    mode: str,
    record: str,
    flags: str,
    down: str,
    style: str,
    settings: Settings,
) -> None:
    gw = GatewayClient(Settings.load(gateway_url=url, token=token), timeout=60)
    try:
        wanted = specs(images, db, mode=mode, record=record, style=style, network=settings.network)
        changed = deploy(gw, wanted)
    except SwarmlessError as e:
        console.print(f"[red]error:[/red] deploying the functions failed: {e.message}")
        return
    finally:
        gw.close()
    console.print(f"deployed: {', '.join(changed) or 'nothing changed'}")
    pages = urls(url, style)
    console.rule("the voting app is up" + (" (the 2016 front ends)" if style == "2016" else ""))
    console.print(f"  vote:    [bold]{pages['vote']}[/bold]")
    console.print(f"  result:  [bold]{pages['result']}[/bold]")
    console.print(
        f"  dashboard: [bold]{url}/ui/[/bold]   (log in with the token: cat {data_dir / 'token'})"
    )
    via = "spawn (async, durable, retried)" if record == "spawn" else "run(detach=True), scoped"
    if style == "2016":
        via = "dockerrun's run(detach=True), a child outliving the page (children_timeout)"
    console.print(f"  mode: {mode}, votes recorded by {via}")
    here = Path(__file__).parent
    other = "cgi" if mode == "warm" else "warm"
    console.print(
        f"\n  switch:  {here}/run.sh {flags}deploy --mode {other}\n"
        f"  load:    .venv/bin/python {here}/load.py {flags}".rstrip()
        + "\n"
        f"  CLI:     export SWARMLESS_GATEWAY_URL={url} "
        f"SWARMLESS_TOKEN=$(cat {data_dir / 'token'}); swarmless ls\n"
        f"  down:    {here}/run.sh {flags}{down}   (Ctrl-C stops the gateway only)"
    )


def cmd_deploy(args: argparse.Namespace) -> int:
    data_dir = data_dir_of(args.data_dir)
    state = _state(data_dir)
    if state.get("backend") == "swarm" and args.record != "spawn":
        raise SwarmlessError("on a Swarm votes are recorded by spawn only (no scoped Docker API)")
    images = Images(**state["images"])
    style = args.style or state.get("style", "today")
    if state.get("backend") == "swarm" and style == "2016":
        raise SwarmlessError("the 2016 front ends need the scoped Docker API: not on a Swarm")
    if style == "2016" and not images.vote2016:
        engine = connect()
        try:
            with console.status("building the 2016 front ends ...") as status:
                images = build_images(engine, say=lambda m: status.update(m), style=style)
        finally:
            engine.close()
    db = Database(container=Names(args.name).db, url=state["db_url"])
    network = state.get("network") or Names(args.name).network
    gw = _client(state, data_dir)
    try:
        wanted = specs(images, db, mode=args.mode, record=args.record, style=style, network=network)
        changed = deploy(gw, wanted)
    finally:
        gw.close()
    state.update(images=dataclasses.asdict(images), style=style)
    (data_dir / "state.json").write_text(json.dumps(state, indent=2))
    console.print(f"deployed: {', '.join(changed) or 'nothing changed'}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    data_dir = data_dir_of(args.data_dir)
    state = _state(data_dir)
    gw = _client(state, data_dir)
    try:
        for name in ("vote", "result", "record-vote"):
            f = gw.function(name)
            running = container_count(f.get("containers") or {}, f["spec"]["mode"])
            page = urls(state["url"], state.get("style", "today")).get(name, "")
            console.print(f"{name:12} {f['spec']['mode']:8} containers={running:<3} {page}")
    finally:
        gw.close()
    return 0


def _stop_gateway(data_dir: Path) -> None:
    """Stop the gateway ``up`` runs (SIGTERM: it drains and removes its containers)."""
    pid_file = data_dir / "gateway.pid"
    if not pid_file.is_file():
        return
    pid = int(pid_file.read_text().strip() or 0)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        console.print(f"stopping the gateway (pid {pid}) ...")
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            os.kill(pid, 0)  # raises ProcessLookupError once it is gone
            time.sleep(0.2)


def _finish(removed: list[str], data_dir: Path) -> int:
    if data_dir.exists():
        shutil.rmtree(data_dir)
        removed.append(f"data directory {data_dir}")
    for item in removed:
        # "(...)" items say what was left, and why.
        console.print(item[1:-1] if item.startswith("(") else f"removed {item}")
    gone = [item for item in removed if not item.startswith("(")]
    console.print("the voting app is gone" if gone else "nothing to remove")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    names = Names(args.name)
    data_dir = data_dir_of(args.data_dir)
    _stop_gateway(data_dir)
    # Only what carries this deployment's instance and the owner id of its data directory,
    # set on the object itself (a container's image cannot lend it those).
    proof = ownership_labels(_settings(names, data_dir), create=False)
    if LABEL_OWNER not in proof:
        proof = {}  # no owner id: nothing here was made with this data directory
    engine = connect()
    try:
        removed = remove_all(engine, names, proof=proof, images=not args.keep_images)
    finally:
        engine.close()
    return _finish(removed, data_dir)


def cmd_swarm_down(args: argparse.Namespace) -> int:
    from swarm import NAMES, remove_swarm, test_cluster

    data_dir = Path(args.data_dir).expanduser() if args.data_dir else SWARM_DATA
    _stop_gateway(data_dir)
    proof = ownership_labels(_settings(NAMES, data_dir), create=False)
    if LABEL_OWNER not in proof:
        proof = {}  # no owner id: nothing there was made with this data directory
    manager = connect(args.manager or test_cluster())
    try:
        removed = remove_swarm(manager, NAMES, proof=proof)
    finally:
        manager.close()
    return _finish(removed, data_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run.sh", description=__doc__.split("\n\n")[0])
    # The instance and data-dir settings of swarmless (SWARMLESS_INSTANCE, SWARMLESS_DATA_DIR)
    # are this deployment's too, unless a flag (or VOTE_NAME) says otherwise.
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("SWARMLESS_DATA_DIR") or None,
        help="default: $SWARMLESS_DATA_DIR, else ~/.local/share/swarmless-vote",
    )
    parser.add_argument(
        "--name",
        default=os.environ.get("VOTE_NAME") or os.environ.get("SWARMLESS_INSTANCE") or DEFAULT_NAME,
        help="prefix of the Docker objects and the gateway instance (default: $VOTE_NAME, "
        f"else $SWARMLESS_INSTANCE, else {DEFAULT_NAME}); one per deployment on a shared "
        "engine, with its own --data-dir",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (
        ("up", "build, start the database and a gateway, deploy, print the URLs"),
        ("deploy", "redeploy on the running app (switch --mode or --record)"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--mode", choices=MODES, default=os.environ.get("VOTE_MODE", "warm"))
        p.add_argument(
            "--record", choices=RECORD_PATHS, default=os.environ.get("VOTE_RECORD", "spawn")
        )
        p.add_argument(
            "--style",
            choices=STYLES,
            default=os.environ.get("VOTE_STYLE") or ("today" if name == "up" else None),
            help="2016: the front ends as written in 2016 (a Flask CGI page firing its task "
            "with dockerrun, a Perl CGI result page), at /vote/ and /result/",
        )
    manager = {"default": os.environ.get("SWARMLESS_DOCKER_HOST"), "metavar": "URL"}
    manager_help = "a Swarm manager's Engine API (default: the test Swarm)"
    p = sub.add_parser("swarm-up", help="the same on a Docker Swarm (see swarm.py)")
    p.add_argument("--mode", choices=MODES, default=os.environ.get("VOTE_MODE", "warm"))
    p.add_argument("--record", choices=RECORD_PATHS, default="spawn")
    p.add_argument("--manager", help=manager_help, **manager)
    p = sub.add_parser("swarm-down", help="remove what swarm-up made on the Swarm")
    p.add_argument("--manager", help=manager_help, **manager)
    sub.add_parser("status", help="the functions and their containers")
    down = sub.add_parser("down", help="remove everything the example made")
    down.add_argument("--keep-images", action="store_true", help="keep the built images")
    args = parser.parse_args(argv)
    command = {
        "up": cmd_up,
        "deploy": cmd_deploy,
        "status": cmd_status,
        "down": cmd_down,
        "swarm-up": cmd_swarm_up,
        "swarm-down": cmd_swarm_down,
    }
    try:
        return command[args.command](args)
    except SwarmlessError as e:
        console.print(f"[red]error:[/red] {e.message}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
