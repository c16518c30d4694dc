"""``make demo``: a gateway with two functions, and the lines to call them.

    python -m swarmless.demo

1. one image run like a function call (``client.run``), the library without a gateway;
2. builds ``swarmless-demo/hello:latest`` from the ``python`` template, if it is missing;
3. starts the gateway in the foreground (what ``swarmless up`` does; ``SWARMLESS_PORT``,
   ``SWARMLESS_HOST`` and ``SWARMLESS_DATA_DIR`` apply); once it answers, deploys ``hello``
   (warm Python) and ``upper`` (oneshot: busybox ``tr a-z A-Z``), unless the same specs are
   deployed already, and prints the ``curl`` lines to call them;
4. Ctrl-C stops the gateway and the containers it started.

Run it again and nothing is rebuilt or redeployed: the image and the deployed functions
(kept in the data directory's store) are reused.
"""

from __future__ import annotations

import errno
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console

import swarmless
from swarmless.build import build_function
from swarmless.config import Settings
from swarmless.engine import connect, translate
from swarmless.exceptions import FunctionNotFound, ImageNotFound, SwarmlessError
from swarmless.gateway.app import Gateway, admin_token
from swarmless.gateway.server import run
from swarmless.sdk.gateway import GatewayClient
from swarmless.spec import FunctionSpec

__all__ = ["DEMO_FUNCTIONS", "HELLO_IMAGE", "demo_specs", "ensure_hello_image", "main"]

BUSYBOX = "swarmless/busybox:latest"
HELLO_IMAGE = "swarmless-demo/hello:latest"
#: The demo functions and how to call each one (the body ``curl -d`` sends).
DEMO_FUNCTIONS: dict[str, str] = {"hello": '{"name":"Ada"}', "upper": "shout this"}

console = Console(soft_wrap=True)


def demo_specs() -> list[FunctionSpec]:
    """``hello`` (warm, the python template) and ``upper`` (oneshot, busybox tr)."""
    return [
        FunctionSpec(
            name="hello",
            image=HELLO_IMAGE,
            mode="warm",
            handler="handler:handle",
            handler_kind="python",
        ),
        FunctionSpec(name="upper", image=BUSYBOX, mode="oneshot", command=["tr", "a-z", "A-Z"]),
    ]


def ensure_hello_image(settings: Settings) -> bool:
    """Build :data:`HELLO_IMAGE` from the ``python`` template unless it exists; True if built."""
    from swarmless.cli.new import write_template

    client = connect(settings.docker_host)
    try:
        try:
            with translate(image=HELLO_IMAGE):
                client.images.get(HELLO_IMAGE)
            return False
        except ImageNotFound:
            pass
        with (
            tempfile.TemporaryDirectory(prefix="swarmless-demo-") as tmp,
            console.status(f"building {HELLO_IMAGE} from the python template ..."),
        ):
            folder = Path(tmp) / "hello"
            write_template("hello", "python", folder)
            build_function(
                folder,
                tag=HELLO_IMAGE,
                mode="warm",
                client=client,
                base_image=settings.base_image,
                function="hello",
            )
        return True
    finally:
        client.close()


def _deploy_all(url: str, token: str, settings: Settings) -> None:
    """Deploy the demo functions through the gateway's own API and say how to call them."""
    gw = GatewayClient(Settings.load(gateway_url=url, token=token), timeout=60)
    try:
        for spec in demo_specs():
            try:
                current = FunctionSpec.from_dict(gw.function(spec.name)["spec"])
            except FunctionNotFound:
                current = None
            result = gw.deploy(spec)  # the same spec and image again: the same version
            if current is not None and result.get("previous_version") == result["version"]:
                console.print(f"[dim]{spec.name} ({spec.mode}) is deployed already[/dim]")
                continue
            console.print(f"deployed [bold]{spec.name}[/bold] ({spec.mode}) v{result['version']}")
        console.print("\ncall them:")
        for name, body in DEMO_FUNCTIONS.items():
            console.print(f"  curl -d {shlex.quote(body)} {url}/function/{name}", highlight=False)
        token_file = settings.data_dir / "token"
        console.print("\nor with the CLI, in another shell:", highlight=False)
        console.print(
            f"  export SWARMLESS_GATEWAY_URL={url} SWARMLESS_TOKEN=$(cat {token_file})\n"
            '  swarmless invoke hello -d \'{"name":"Bob"}\'; swarmless ls; swarmless logs hello',
            highlight=False,
        )
        console.print("\n[dim]Ctrl-C stops the gateway and its containers.[/dim]")
    except SwarmlessError as e:
        console.print(f"[red]error:[/red] deploying the demo functions failed: {e.message}")
    finally:
        gw.close()


def main() -> int:
    """Entry point of ``python -m swarmless.demo``; the process's exit status."""
    settings = Settings.load()
    console.rule("swarmless demo")
    try:
        client = swarmless.from_env()
        t0 = time.perf_counter()
        out = client.run(BUSYBOX, ["echo", "hello from a container"], text=True)
        client.close()
        ms = (time.perf_counter() - t0) * 1000
        console.print(f"client.run(busybox, ['echo', ...]) -> {out!r}  ({ms:.0f} ms)")
        if ensure_hello_image(settings):
            console.print(f"built {HELLO_IMAGE} from the python template")
    except SwarmlessError as e:
        console.print(f"[red]error:[/red] {e.message}")
        return 1

    token, new = admin_token(settings.data_dir)
    gateway = Gateway(settings, token=token)

    def started(gw: Gateway, port: int) -> None:
        url = f"http://{gw.settings.host}:{port}"
        console.print(f"[green]gateway[/green] on {url}  (data: {settings.data_dir})")
        if new:
            console.print(f"admin token (kept in {settings.data_dir / 'token'}): {token}")
        threading.Thread(
            target=_deploy_all, args=(url, token, settings), name="demo-deploy", daemon=True
        ).start()

    try:
        run(gateway, started=started)  # swarmless up's event loop (uvloop's)
    except KeyboardInterrupt:
        pass
    except SwarmlessError as e:
        console.print(f"[red]error:[/red] {e.message}")
        return 1
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise
        console.print(
            f"[red]error:[/red] {settings.host}:{settings.port} is in use (another gateway?); "
            f"stop it, or pick another port: SWARMLESS_PORT={settings.port + 1} make up"
        )
        return 1
    console.print("gateway stopped; its containers are gone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
