"""Run the self-scaling database (``run.sh`` calls this).

    examples/self-scaling-db/run.sh up [--replicas N] [--port 8080]
    examples/self-scaling-db/run.sh deploy --gateway URL [--push] [--replicas N]
    examples/self-scaling-db/run.sh rm --gateway URL

``up`` builds the image (once: the apt step reaches Debian's mirror), starts a gateway on
loopback in this process (instance and network ``swarmless-selfdb``, data in
``~/.local/share/swarmless-selfdb``), deploys ``selfdb`` (the primary) and ``selfdb-front``,
waits until the replicas stream, prints what to try, and shows the primary's events until
Ctrl-C, which stops the gateway: the primary, its replicas and the front end go with it
(the data too: it lives in the containers, see the README's production notes).

``deploy`` puts the two functions on a gateway that runs already, e.g. one with the
``swarm`` backend (``SWARMLESS_TOKEN``: its admin token): the image is built here and,
with ``--push``, pushed to the registry of the ``SWARMLESS_REGISTRY*`` settings, the
functions (and the replicas) then use its digest reference, which every node pulls
(without ``--push`` the nodes must have the image already). A redeploy keeps the
database password of the deployed primary (a changed spec would roll it: a new, empty
primary). ``rm`` removes both functions; the replicas go with the primary.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path

import docker
import selfscaling as db
import votingapp

from swarmless.config import default_data_dir


def up(args: argparse.Namespace) -> int:
    engine = docker.from_env()
    image = db.build_image(engine, say=print)
    names = votingapp.Names(args.name)
    data_dir = (
        Path(args.data_dir).expanduser()
        if args.data_dir
        else (default_data_dir().parent / args.name)
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    labels = {"swarmless.example": "self-scaling-db"}
    # The network made here with this run's labels, so that it is removed by them at the end.
    own = {**labels, "swarmless.instance": names.instance}
    votingapp.ensure_network(engine, names.network, own)
    try:
        return _serve(args, image, names, data_dir, labels)
    finally:
        network = engine.networks.get(names.network)
        if all(network.attrs.get("Labels", {}).get(k) == v for k, v in own.items()):
            try:
                network.remove()
            except docker.errors.APIError as e:  # still in use: say so, leave it
                print(f"network {names.network} left: {e}", file=sys.stderr)


def _serve(
    args: argparse.Namespace,
    image: str,
    names: votingapp.Names,
    data_dir: Path,
    labels: dict[str, str],
) -> int:
    with votingapp.background_gateway(data_dir, names, labels=labels, port=args.port) as (
        url,
        token,
        _,
    ):
        from swarmless.config import Settings
        from swarmless.sdk.gateway import GatewayClient

        client = GatewayClient(Settings.load(gateway_url=url, token=token))
        try:
            db.deploy(client, db.specs(image, secrets.token_hex(16), replicas=args.replicas))
        finally:
            client.close()
        import httpx

        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
            print(f"gateway at {url}; waiting for {args.replicas} streaming replicas")
            db.wait_for(
                http,
                lambda v: len(db.streaming(v)) >= args.replicas,
                300,
                "the replicas to stream",
            )
            front = f"{url}/function/{db.FRONT}"
            print(
                "\nTry:\n"
                f"  curl -s -X POST --data hello {front}/write\n"
                f"  curl -s '{front}/read?after=<lsn from the write>'\n"
                f"  curl -s {front}/status\n"
                "  docker kill <a selfdb-replica-... container>   # and watch it be replaced\n"
                "Ctrl-C stops everything.\n"
            )
            shown = 0
            try:
                while True:
                    events = db.status(http).get("events", [])
                    if len(events) < shown:
                        shown = 0
                    for line in events[shown:]:
                        print(line)
                    shown = len(events)
                    time.sleep(1)
            except KeyboardInterrupt:
                print("stopping: the gateway removes the primary, its replicas, the front end")
    return 0


def deploy(args: argparse.Namespace) -> int:
    import httpx

    from swarmless.config import Settings
    from swarmless.exceptions import FunctionNotFound
    from swarmless.registry import push_image
    from swarmless.sdk.gateway import GatewayClient

    engine = docker.from_env()
    image = db.build_image(engine, say=print)
    settings = Settings.load(gateway_url=args.gateway)
    if args.push:
        image = push_image(engine, image, settings=settings, progress=None)
        print(f"pushed: {image}")
    with GatewayClient(settings) as client:
        try:
            env = client.function(db.PRIMARY)["spec"].get("env") or {}
            password = str(env.get("SELFDB_PASSWORD") or secrets.token_hex(16))
        except FunctionNotFound:
            password = secrets.token_hex(16)
        db.deploy(client, db.specs(image, password, replicas=args.replicas))
    headers = {"Authorization": f"Bearer {settings.token}"} if settings.token else {}
    with httpx.Client(base_url=args.gateway, headers=headers) as http:
        print(f"deployed; waiting for {args.replicas} streaming replicas")
        view = db.wait_for(
            http, lambda v: v if len(db.streaming(v)) >= args.replicas else None, 300, "replicas"
        )
    for line in view["events"]:
        print(line)
    print(f"front end: {args.gateway.rstrip('/')}/function/{db.FRONT}/")
    return 0


def remove(args: argparse.Namespace) -> int:
    from swarmless.config import Settings
    from swarmless.exceptions import FunctionNotFound
    from swarmless.sdk.gateway import GatewayClient

    with GatewayClient(Settings.load(gateway_url=args.gateway)) as client:
        for name in (db.FRONT, db.PRIMARY):
            try:
                client.remove(name)
                print(f"removed {name}")
            except FunctionNotFound:
                print(f"{name}: not deployed")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run.sh", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("up", help="build, start a gateway, deploy; Ctrl-C removes it all")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--name", default="swarmless-selfdb", help="instance and network name")
    p.add_argument("--data-dir", help="the gateway's data (default ~/.local/share/NAME)")
    p = sub.add_parser("deploy", help="deploy on a running gateway (a Swarm's too)")
    p.add_argument("--gateway", required=True, help="the gateway's URL")
    p.add_argument("--push", action="store_true", help="push to SWARMLESS_REGISTRY first")
    p.add_argument("--replicas", type=int, default=2)
    p = sub.add_parser("rm", help="remove the two functions from a gateway")
    p.add_argument("--gateway", required=True, help="the gateway's URL")
    args = parser.parse_args(argv)
    commands = {"up": up, "deploy": deploy, "rm": remove}
    try:
        return commands[args.command](args)
    except Exception as e:  # a short message for the command line
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
